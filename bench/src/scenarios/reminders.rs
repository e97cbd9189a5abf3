//! The `reminders` scenario: many reminders due within a window, delivered by SMTP.

use super::*;

/// Seed 003: reminders all due within one minute, delivered by SMTP to a sink on
/// loopback; lateness is from each reminder's time to the sink accepting its mail.
pub async fn reminders(sizes: Sizes, command: &str) -> anyhow::Result<Report> {
    use std::collections::HashMap;
    use std::sync::Mutex;

    let mut report = report("reminders", command);
    let sink = crate::smtp::SmtpSink::start().await;
    let env = [
        ("CORRAL_MAIL__TRANSPORT", "smtp".to_owned()),
        (
            "CORRAL_MAIL__FROM",
            "Corral <corral@example.org>".to_owned(),
        ),
        ("CORRAL_MAIL__SMTP__HOST", "127.0.0.1".to_owned()),
        ("CORRAL_MAIL__SMTP__PORT", sink.port().to_string()),
        ("CORRAL_MAIL__SMTP__TLS", "none".to_owned()),
    ];
    let corral = servers::corral(&env).await?;
    let addr = corral.addr;
    let token = Arc::new(admin_token(addr).await?);
    let starts = chrono::Utc::now() + chrono::Duration::days(2);
    let (status, event) = json_call(
        addr,
        "POST",
        "/v1/events",
        Some(&token),
        json!({
            "title": "Bench gala", "topics": ["bench"], "starts_at": starts.to_rfc3339(),
            "ends_at": (starts + chrono::Duration::hours(1)).to_rfc3339(),
            "location": {"name": "hall", "lat": 48.85, "lon": 2.35},
        }),
    )
    .await?;
    if status != 201 {
        bail!("creating the event answered {status}: {event}");
    }
    let event = Arc::new(event["id"].as_str().context("event id")?.to_owned());
    // How fast reminders can be created decides how far ahead their minute must start.
    let n = sizes.reminders as u64;
    let window_ms = sizes.reminder_window.as_millis() as i64;
    let due: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let window = Arc::new(Mutex::new((
        chrono::Utc::now() + chrono::Duration::days(1),
        Instant::now(),
    )));
    let make: Work = {
        let (due, window) = (due.clone(), window.clone());
        Arc::new(move |conn, i, intended, tally| {
            let (due, window, token, event) =
                (due.clone(), window.clone(), token.clone(), event.clone());
            Box::pin(async move {
                let (start, _) = *window.lock().expect("window");
                let offset = chrono::Duration::milliseconds(
                    (i % n.max(1)) as i64 * window_ms / n.max(1) as i64,
                );
                let at = start + offset;
                let body = Bytes::from(
                    json!({"event_id": *event, "remind_at": at.to_rfc3339()}).to_string(),
                );
                let out = conn
                    .send(request("POST", addr, "/v1/reminders", Some(&token), body))
                    .await;
                tally.record(intended, &out);
                if let Ok(r) = &out
                    && r.status() == 201
                    && let Ok(v) = serde_json::from_slice::<Value>(r.body())
                    && let Some(id) = v["id"].as_str()
                {
                    let when =
                        Instant::now() + (at - chrono::Utc::now()).to_std().unwrap_or_default();
                    due.lock().expect("due").insert(id.to_owned(), when);
                }
            })
        })
    };
    let closed = Mode::Closed {
        connections: 32.min(sizes.connections.max(1)),
    };
    // A pilot batch (a day ahead; they never fire here) measures the creation rate.
    let pilot = (n / 20).clamp(1, 500);
    let t = Instant::now();
    load::run(
        addr,
        closed,
        Duration::from_secs(600),
        Some(pilot),
        make.clone(),
    )
    .await;
    let rate = pilot as f64 / t.elapsed().as_secs_f64();
    due.lock().expect("due").clear();
    let lead = Duration::from_secs_f64(n as f64 / rate * 1.5 + 2.0);
    {
        let mut w = window.lock().expect("window");
        *w = (
            chrono::Utc::now() + chrono::Duration::from_std(lead)?,
            Instant::now() + lead,
        );
    }
    let created = load::run(addr, closed, lead + Duration::from_secs(600), Some(n), make).await;
    let (_, window_start) = *window.lock().expect("window");
    if Instant::now() > window_start {
        report
            .notes
            .push("creating the reminders took longer than planned; some were set late".into());
    }
    // Wait for the minute to pass and the mail to drain.
    let me = std::process::id();
    let (server_before, me_before) = (corral.cpu_seconds(), servers::proc_cpu(me));
    let expected = due.lock().expect("due").len();
    let deadline = window_start + sizes.reminder_window + Duration::from_secs(120);
    let reminder_mails = |sink: &crate::smtp::SmtpSink| {
        sink.received()
            .into_iter()
            .filter(|m| {
                m.header("Subject")
                    .is_some_and(|s| s.starts_with("Reminder:"))
            })
            .collect::<Vec<_>>()
    };
    while reminder_mails(&sink).len() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let server_cpu = corral.cpu_seconds() - server_before;
    let my_cpu = servers::proc_cpu(me) - me_before;
    corral.stop().await;

    let mails = reminder_mails(&sink);
    let due = due.lock().expect("due").clone();
    let mut tally = load::Tally::new();
    let mut seen = std::collections::HashSet::new();
    let mut duplicates = 0;
    for m in &mails {
        let id = m.header("Message-ID").unwrap_or_default();
        // Message-IDs read <reminder.{id}@domain>.
        let rid = id
            .trim_start_matches('<')
            .trim_start_matches("reminder.")
            .split('@')
            .next()
            .unwrap_or_default()
            .to_owned();
        let Some(&when) = due.get(&rid) else {
            continue;
        };
        if !seen.insert(rid) {
            duplicates += 1;
            continue;
        }
        let late =
            m.at.saturating_duration_since(when)
                .as_micros()
                .clamp(1, 60_000_000) as u64;
        let _ = tally.latency_us.record(late);
        tally.ok += 1;
    }
    tally.errors = (expected - seen.len().min(expected)) as u64 + duplicates;
    let span = match (
        mails.iter().map(|m| m.at).min(),
        mails.iter().map(|m| m.at).max(),
    ) {
        (Some(a), Some(b)) if b > a => b - a,
        _ => Duration::from_secs(1),
    };
    let run = load::Run {
        tally,
        elapsed: span,
    };
    let mut m = Measured::of(
        "corral reminders -> SMTP sink",
        closed,
        &run,
        server_cpu,
        my_cpu,
    );
    let waited = (span + sizes.reminder_window).as_secs_f64().max(1.0);
    m.server_cpu_pct = 100.0 * server_cpu / waited;
    m.generator_cpu_pct = 100.0 * my_cpu / waited;
    report.notes.push(format!(
        "{} reminders created at {:.0}/s ({} errors); {} mails arrived, {} duplicates, {} missing; req/s is mails a second while they arrived; latencies are lateness",
        expected,
        created.tally.ok as f64 / created.elapsed.as_secs_f64(),
        created.tally.errors + created.tally.unavailable,
        mails.len(),
        duplicates,
        expected - seen.len().min(expected),
    ));
    report.results.push(m);
    Ok(report)
}
