//! The `events` scenario: catalogue reads and admin writes at rising connection counts.

use super::*;

/// Seed 003: 75 % reads (the list and single events) and 25 % POST → PATCH → DELETE
/// cycles by an admin, at several connection counts.
pub async fn events(sizes: Sizes, command: &str) -> anyhow::Result<Report> {
    let mut report = report("events", command);
    let corral = servers::corral(&[]).await?;
    let addr = corral.addr;
    let token = Arc::new(admin_token(addr).await?);
    let starts = chrono::Utc::now() + chrono::Duration::days(1);
    let event = move |n: usize| {
        let at = starts + chrono::Duration::minutes(n as i64 * 7);
        let topic = ["music", "sport", "food"][n % 3];
        json!({
            "title": format!("event {n}"),
            "topics": [topic],
            "starts_at": at.to_rfc3339(),
            "ends_at": (at + chrono::Duration::hours(2)).to_rfc3339(),
            "location": {"name": "hall", "lat": 48.85 + (n % 50) as f64 * 0.001, "lon": 2.35},
        })
    };
    let mut ids = Vec::new();
    for n in 0..sizes.events {
        let (status, body) = json_call(addr, "POST", "/v1/events", Some(&token), event(n)).await?;
        if status != 201 {
            bail!("seeding an event answered {status}: {body}");
        }
        ids.push(body["id"].as_str().context("event id")?.to_owned());
    }
    let ids = Arc::new(ids);
    let work: Work = Arc::new(move |conn, i, intended, tally| {
        let (ids, token) = (ids.clone(), token.clone());
        Box::pin(async move {
            match i % 4 {
                0 => {
                    let topic = ["music", "sport", "food"][(i / 4 % 3) as usize];
                    let path = format!("/v1/events?topic={topic}&limit=20");
                    let out = conn.send(load::get(addr, &path)).await;
                    tally.record(intended, &out);
                }
                1 | 2 => {
                    let path = format!("/v1/events/{}", ids[(i as usize) % ids.len()]);
                    let out = conn.send(load::get(addr, &path)).await;
                    tally.record(intended, &out);
                }
                _ => {
                    let body = Bytes::from(event(i as usize).to_string());
                    let out = conn
                        .send(request("POST", addr, "/v1/events", Some(&token), body))
                        .await;
                    tally.record(intended, &out);
                    let Some(id) = out.ok().and_then(|r| {
                        let v: Value = serde_json::from_slice(r.body()).ok()?;
                        v["id"].as_str().map(String::from)
                    }) else {
                        return;
                    };
                    let path = format!("/v1/events/{id}");
                    let start = Instant::now();
                    let patch = Bytes::from(json!({"title": format!("renamed {i}")}).to_string());
                    let out = conn
                        .send(request("PATCH", addr, &path, Some(&token), patch))
                        .await;
                    tally.record(start, &out);
                    let start = Instant::now();
                    let out = conn
                        .send(request("DELETE", addr, &path, Some(&token), Bytes::new()))
                        .await;
                    tally.record(start, &out);
                }
            }
        })
    });
    for &connections in sizes.event_levels {
        let mode = Mode::Closed { connections };
        let label = format!("corral, {connections} connections");
        report
            .results
            .push(measure(&corral, &label, mode, &sizes, work.clone()).await);
    }
    corral.stop().await;
    report.notes.push(format!(
        "{} events seeded; each level runs {:?}, closed loop; writes fsync (embedded store)",
        sizes.events, sizes.duration
    ));
    Ok(report)
}
