//! Reminders end to end, with a real SMTP server on loopback: on time to the chosen
//! address, rescheduling and cancelling, catch-up after a restart, retries while SMTP is
//! down, dead letters, two schedulers sharing one store, the welcome mail, and the 4xx
//! answers to bad input.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::common::smtp::{Received, SmtpSink};
use crate::common::{TestApp, metric, problem};
use chrono::{DateTime, TimeZone, Utc};
use corral::App;
use corral::config::{MailTransportKind, Overrides, Settings, SmtpTls};
use corral::domain::{Email, EventId, Reminder, ReminderId, ReminderState, UserId};
use mail_parser::MimeHeaders;
use reqwest::Method;
use serde_json::{Value, json};

/// Mail to `sink`, quick retries and ticks, no rate limits (tests make many requests).
/// What the test servers call themselves in links (the tests reach them by their port).
const PUBLIC_URL: &str = "https://corral.example";

/// A received mail as a MIME parser reads it.
fn parsed(mail: &Received) -> mail_parser::Message<'_> {
    mail_parser::MessageParser::default()
        .parse(mail.data.as_bytes())
        .expect("a mail a MIME parser can read")
}

fn via(port: u16) -> impl Fn(&mut Settings) + Copy {
    move |s: &mut Settings| {
        s.mail.transport = MailTransportKind::Smtp;
        s.mail.from = "Corral <corral@example.org>".into();
        s.http.public_url = PUBLIC_URL.into();
        s.mail.smtp.host = "127.0.0.1".into();
        s.mail.smtp.port = port;
        s.mail.smtp.tls = SmtpTls::None;
        s.mail.smtp.timeout_secs = 5;
        s.mail.retry_initial_ms = 100;
        s.mail.retry_max_ms = 300;
        s.mail.max_attempts = 50;
        s.reminders.tick_ms = 200;
        s.rate_limits.enabled = false;
    }
}

fn starts() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2031, 6, 1, 18, 0, 0).unwrap()
}

async fn send(
    app: &TestApp,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = app.client.request(method, app.url(path)).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

/// Sets a reminder `ahead` from now; returns (id, the Instant it is due).
async fn remind(
    app: &TestApp,
    token: &str,
    event: &str,
    ahead: Duration,
    email: Option<&str>,
) -> (String, Instant) {
    let due = Instant::now() + ahead;
    let at = Utc::now() + chrono::Duration::from_std(ahead).unwrap();
    let mut body = json!({"event_id": event, "remind_at": at.to_rfc3339()});
    if let Some(email) = email {
        body["email"] = json!(email);
    }
    let response = send(app, token, Method::POST, "/v1/reminders", Some(body)).await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let reminder: Value = response.json().await.unwrap();
    assert_eq!(reminder["state"], "scheduled");
    (reminder["id"].as_str().unwrap().to_owned(), due)
}

async fn state_of(app: &TestApp, token: &str, id: &str) -> Value {
    let response = send(
        app,
        token,
        Method::GET,
        &format!("/v1/reminders/{id}"),
        None,
    )
    .await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Polls until the reminder reaches `state`.
async fn wait_state(app: &TestApp, token: &str, id: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reminder = state_of(app, token, id).await;
        if reminder["state"] == state {
            return reminder;
        }
        assert!(
            Instant::now() < deadline,
            "reminder never became {state}: {reminder}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Mails whose Message-ID names this reminder.
fn mails_for(sink: &SmtpSink, id: &str) -> Vec<Received> {
    sink.received()
        .into_iter()
        .filter(|m| m.header("Message-ID").is_some_and(|h| h.contains(id)))
        .collect()
}

async fn add_email(app: &TestApp, token: &str, email: &str) {
    let response = send(
        app,
        token,
        Method::POST,
        "/v1/users/me/emails",
        Some(json!({"email": email})),
    )
    .await;
    assert_eq!(response.status(), 201);
}

#[tokio::test]
async fn a_reminder_mail_is_well_formed_and_its_one_click_link_removes_the_reminder() {
    let sink = SmtpSink::start().await;
    let app = TestApp::spawn_with(via(sink.port())).await;
    let event = app
        .create_event("Opera <Night> & \"Friends\"", starts())
        .await;
    let (id, _) = remind(&app, &app.token, &event, Duration::from_millis(500), None).await;
    let mail = sink
        .wait_for(Duration::from_secs(5), |m| {
            m.header("Message-ID").is_some_and(|h| h.contains(&id))
        })
        .await
        .expect("the reminder arrives");
    let message = parsed(&mail);
    let header = |name: &str| {
        message
            .header_raw(name)
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no {name} header in\n{}", mail.data))
    };
    assert_eq!(header("MIME-Version"), "1.0");
    assert!(message.date().is_some(), "a Date header");
    assert_eq!(
        message.message_id(),
        Some(format!("reminder.{id}@example.org").as_str())
    );
    assert_eq!(header("Auto-Submitted"), "auto-generated");
    assert_eq!(
        header("List-Unsubscribe-Post"),
        "List-Unsubscribe=One-Click"
    );
    let unsubscribe = header("List-Unsubscribe");
    let url = unsubscribe
        .strip_prefix('<')
        .and_then(|u| u.strip_suffix('>'))
        .unwrap_or_else(|| panic!("List-Unsubscribe is not <url>: {unsubscribe}"));
    assert!(
        url.starts_with(&format!("{PUBLIC_URL}/v1/unsubscribe/")),
        "{url}"
    );
    // multipart/alternative: a text and an HTML part, each naming the event and linking
    // to it and to the unsubscribe URL; the HTML escapes the title.
    let content_type = message.content_type().expect("a Content-Type");
    assert_eq!(
        (content_type.ctype(), content_type.subtype()),
        ("multipart", Some("alternative"))
    );
    let text = message.body_text(0).expect("a text part");
    let html = message.body_html(0).expect("an HTML part");
    let event_url = format!("{PUBLIC_URL}/v1/events/{event}");
    assert!(text.contains("Opera <Night> & \"Friends\""), "{text}");
    assert!(text.contains(&event_url) && text.contains(url), "{text}");
    assert!(
        html.contains("Opera &lt;Night&gt; &amp; &quot;Friends&quot;"),
        "{html}"
    );
    assert!(html.contains(&event_url) && html.contains(url), "{html}");

    // Opening the link shows a page and changes nothing; the one-click POST removes it.
    let path = url.strip_prefix(PUBLIC_URL).unwrap();
    let page = app.get(path).await;
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        page.text()
            .await
            .unwrap()
            .contains("<form method=\"post\">")
    );
    let reminder = format!("/v1/reminders/{id}");
    assert_eq!(
        app.authed(Method::GET, &reminder)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let clicked = app
        .client
        .post(app.url(path))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(clicked.status(), 200);
    assert!(clicked.text().await.unwrap().contains("removed"));
    assert_eq!(
        app.authed(Method::GET, &reminder)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    // Again: still fine. A token changed by one character, or made up: 404.
    assert_eq!(
        app.client
            .post(app.url(path))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let mut forged: Vec<char> = path.chars().collect();
    let at = forged.len() - 10;
    forged[at] = if forged[at] == 'A' { 'B' } else { 'A' };
    let forged: String = forged.into_iter().collect();
    problem(app.client.post(app.url(&forged)).send().await.unwrap(), 404).await;
    problem(app.get("/v1/unsubscribe/made-up").await, 404).await;
    app.stop().await;
}

#[test]
fn the_server_will_not_send_smtp_mail_from_localhost() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = crate::common::child::run(
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "serve",
            "--bind",
            "127.0.0.1:0",
        ],
        &[("CORRAL_MAIL__TRANSPORT", "smtp")],
    );
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("mail.from") && said.contains("real domain") && said.contains("localhost"),
        "{said}"
    );
}

#[tokio::test]
async fn a_reminder_arrives_on_time_by_smtp_at_the_chosen_address_naming_the_event() {
    let sink = SmtpSink::start().await;
    let app = TestApp::spawn_with(via(sink.port())).await;
    let event = app.create_event("Llama Parade", starts()).await;
    add_email(&app, &app.token, "tester.alt@example.com").await;
    let zone = send(
        &app,
        &app.token,
        Method::PATCH,
        "/v1/users/me",
        Some(json!({"time_zone": "Asia/Tokyo"})),
    )
    .await;
    assert_eq!(zone.status(), 200);
    let me: Value = zone.json().await.unwrap();
    assert_eq!(me["time_zone"], "Asia/Tokyo");

    let (id, due) = remind(
        &app,
        &app.token,
        &event,
        Duration::from_secs(2),
        Some("tester.alt@example.com"),
    )
    .await;
    let mail = sink
        .wait_for(Duration::from_secs(5), |m| {
            m.header("Message-ID").is_some_and(|h| h.contains(&id))
        })
        .await
        .expect("the reminder arrives");
    let late = mail.at.saturating_duration_since(due);
    assert!(
        mail.at + Duration::from_millis(50) >= due,
        "sent {:?} early",
        due - mail.at
    );
    assert!(
        late <= Duration::from_secs(1),
        "arrived {late:?} after its time"
    );
    assert_eq!(mail.to, vec!["tester.alt@example.com"]);
    // The envelope sender is the configured `mail.from` address (bounces go there).
    assert_eq!(mail.from, "corral@example.org");
    let message = parsed(&mail);
    assert_eq!(message.subject(), Some("Reminder: Llama Parade"));
    let text = message.body_text(0).expect("a text part");
    assert!(text.contains("Llama Parade"), "{text}");
    // 18:00 UTC is 03:00 the next day in Tokyo.
    assert!(text.contains("Monday 2 June 2031, 03:00 JST"), "{text}");
    assert!(text.contains("Champ de Mars"), "{text}");

    let reminder = wait_state(&app, &app.token, &id, "sent").await;
    assert_eq!(reminder["email"], "tester.alt@example.com");
    // A sent reminder can no longer be moved.
    let moved = send(
        &app,
        &app.token,
        Method::PATCH,
        &format!("/v1/reminders/{id}"),
        Some(json!({"remind_at": (Utc::now() + chrono::Duration::hours(1)).to_rfc3339()})),
    )
    .await;
    assert_eq!(moved.status(), 409);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(mails_for(&sink, &id).len(), 1, "sent exactly once");
    app.stop().await;
}

#[tokio::test]
async fn rescheduling_changing_the_address_and_deleting_are_honoured() {
    let sink = SmtpSink::start().await;
    let app = TestApp::spawn_with(via(sink.port())).await;
    let event = app.create_event("Night Market", starts()).await;
    add_email(&app, &app.token, "tester.alt@example.com").await;
    let path = |id: &str| format!("/v1/reminders/{id}");
    let message_of =
        |id: String| move |m: &Received| m.header("Message-ID").is_some_and(|h| h.contains(&id));

    // Delayed by three seconds and sent elsewhere.
    let (delayed, old_due) = remind(&app, &app.token, &event, Duration::from_secs(4), None).await;
    let new_due = Instant::now() + Duration::from_secs(7);
    let later = Utc::now() + chrono::Duration::seconds(7);
    let patch = json!({"remind_at": later.to_rfc3339(), "email": "tester.alt@example.com"});
    let r = send(
        &app,
        &app.token,
        Method::PATCH,
        &path(&delayed),
        Some(patch),
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert!(
        Instant::now() < old_due,
        "the change landed before the old time"
    );
    // Brought forward from a minute away.
    let (earlier, _) = remind(&app, &app.token, &event, Duration::from_secs(60), None).await;
    let sooner_due = Instant::now() + Duration::from_secs(3);
    let sooner = Utc::now() + chrono::Duration::seconds(3);
    let r = send(
        &app,
        &app.token,
        Method::PATCH,
        &path(&earlier),
        Some(json!({"remind_at": sooner.to_rfc3339()})),
    )
    .await;
    assert_eq!(r.status(), 200);
    // Cancelled.
    let (cancelled, cancelled_due) =
        remind(&app, &app.token, &event, Duration::from_secs(3), None).await;
    let r = send(&app, &app.token, Method::DELETE, &path(&cancelled), None).await;
    assert_eq!(r.status(), 204);
    assert!(Instant::now() < cancelled_due, "deleted before its time");
    assert_eq!(
        send(&app, &app.token, Method::GET, &path(&cancelled), None)
            .await
            .status(),
        404
    );

    let forward = sink
        .wait_for(Duration::from_secs(10), message_of(earlier.clone()))
        .await
        .expect("the brought-forward reminder is sent");
    assert_eq!(forward.to, vec!["tester@example.com"]);
    assert!(forward.at + Duration::from_millis(50) >= sooner_due);
    let moved = sink
        .wait_for(Duration::from_secs(15), message_of(delayed.clone()))
        .await
        .expect("the delayed reminder is sent");
    assert_eq!(moved.to, vec!["tester.alt@example.com"]);
    assert!(
        moved.at + Duration::from_millis(50) >= new_due,
        "sent at its new time, not the old one"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        mails_for(&sink, &delayed).len(),
        1,
        "the delayed reminder is sent once"
    );
    assert_eq!(mails_for(&sink, &earlier).len(), 1);
    assert!(
        mails_for(&sink, &cancelled).is_empty(),
        "a deleted reminder is not sent"
    );
    app.stop().await;
}

#[tokio::test]
async fn reminders_due_while_the_server_was_down_are_sent_once_after_restart() {
    let sink = SmtpSink::start().await;
    let app = TestApp::spawn_with(via(sink.port())).await;
    let event = app.create_event("Harbour Swim", starts()).await;
    let (first, due) = remind(&app, &app.token, &event, Duration::from_secs(3), None).await;
    let (second, _) = remind(&app, &app.token, &event, Duration::from_secs(3), None).await;
    let token = app.token.clone();
    let dir = app.stop().await;
    assert!(
        Instant::now() < due,
        "the server stopped before the reminders fell due"
    );
    tokio::time::sleep(due.saturating_duration_since(Instant::now()) + Duration::from_millis(500))
        .await;
    assert!(mails_for(&sink, &first).is_empty() && mails_for(&sink, &second).is_empty());

    let app = TestApp::spawn_in(dir, via(sink.port())).await;
    for id in [&first, &second] {
        sink.wait_for(Duration::from_secs(5), |m| {
            m.header("Message-ID")
                .is_some_and(|h| h.contains(id.as_str()))
        })
        .await
        .expect("an overdue reminder is caught up");
        wait_state(&app, &token, id, "sent").await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(mails_for(&sink, &first).len(), 1);
    assert_eq!(mails_for(&sink, &second).len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn with_smtp_down_the_mail_is_retried_and_delivered_when_it_returns() {
    let mut sink = SmtpSink::start().await;
    sink.stop();
    let app = TestApp::spawn_with(via(sink.port())).await;
    let event = app.create_event("Rooftop Cinema", starts()).await;
    let retries_before = metric(&app, "corral_mail_retries_total", "kind=\"reminder\"").await;
    let (id, _) = remind(&app, &app.token, &event, Duration::from_millis(500), None).await;

    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&app, "corral_mail_retries_total", "kind=\"reminder\"").await
        < retries_before + 3.0
    {
        assert!(Instant::now() < deadline, "the mailer never retried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state_of(&app, &app.token, &id).await["state"], "sending");
    assert!(sink.received().is_empty());

    sink.restart().await;
    sink.wait_for(Duration::from_secs(5), |m| {
        m.header("Message-ID").is_some_and(|h| h.contains(&id))
    })
    .await
    .expect("delivered once SMTP is back");
    wait_state(&app, &app.token, &id, "sent").await;
    // The welcome mail queued while SMTP was down gets through too.
    sink.wait_for(Duration::from_secs(5), |m| {
        m.to == ["tester@example.com"]
            && m.header("Subject").as_deref() == Some("Welcome to Corral")
    })
    .await
    .expect("the welcome mail is retried as well");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(mails_for(&sink, &id).len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_permanently_refused_address_ends_as_a_dead_letter() {
    let sink = SmtpSink::start().await;
    sink.reject("doomed@example.com");
    let app = TestApp::spawn_with(via(sink.port())).await;
    let event = app.create_event("Kite Festival", starts()).await;
    add_email(&app, &app.token, "doomed@example.com").await;
    let (id, _) = remind(
        &app,
        &app.token,
        &event,
        Duration::from_millis(500),
        Some("doomed@example.com"),
    )
    .await;

    let failed = wait_state(&app, &app.token, &id, "failed").await;
    assert!(
        failed["detail"].as_str().unwrap().contains("550"),
        "{failed}"
    );
    assert!(sink.to("doomed@example.com").is_empty());

    let admin = app.log_in("root").await;
    let dead: Value = send(&app, &admin, Method::GET, "/v1/admin/mail/dead", None)
        .await
        .json()
        .await
        .unwrap();
    let letters = dead["dead_letters"].as_array().unwrap();
    let letter = letters
        .iter()
        .find(|l| l["reminder_id"] == id.as_str())
        .expect("listed as dead");
    assert_eq!(letter["to"], "doomed@example.com");
    assert_eq!(letter["kind"], "reminder");
    assert_eq!(letter["attempts"], 1, "a permanent refusal is not retried");
    assert!(letter["reason"].as_str().unwrap().contains("550"));
    assert!(metric(&app, "corral_mails_dead_total", "kind=\"reminder\"").await >= 1.0);
    let forbidden = send(&app, &app.token, Method::GET, "/v1/admin/mail/dead", None).await;
    assert_eq!(forbidden.status(), 403);
    app.stop().await;
}

#[tokio::test]
async fn two_schedulers_sharing_one_store_send_each_of_1000_reminders_exactly_once() {
    const COUNT: usize = 1000;
    let sink = SmtpSink::start().await;
    let app = TestApp::spawn_with(via(sink.port())).await;
    let other_dir = tempfile::TempDir::new().unwrap();
    let overrides = Overrides {
        bind: None,
        data_dir: Some(other_dir.path().to_owned()),
    };
    let mut settings = Settings::load(None, &overrides).unwrap();
    via(sink.port())(&mut settings);
    settings.node.id = "node-b".into();
    let other = App::start_sharing(settings, app.store.clone())
        .await
        .expect("second node starts");

    let event: EventId = app
        .create_event("Marathon", starts())
        .await
        .parse()
        .unwrap();
    let me: Value = send(&app, &app.token, Method::GET, "/v1/users/me", None)
        .await
        .json()
        .await
        .unwrap();
    let user: UserId = me["id"].as_str().unwrap().parse().unwrap();
    // Written straight to the store, so neither scheduler hears of them by message: both
    // find them in the due buckets. Whichever ticked first would lease every bucket, so
    // the shards start out leased half to each node (as if each had claimed them first):
    // both then have work, and neither may touch the other's.
    let node_a = std::fs::read_to_string(app.data_dir.path().join("node_id")).unwrap();
    let first_due = Utc::now() + chrono::Duration::seconds(2);
    let minute = corral::domain::reminder::minute_of(first_due);
    for shard in 0..corral::domain::reminder::DUE_SHARDS {
        let node = if shard % 2 == 0 {
            "node-b"
        } else {
            node_a.trim()
        };
        for minute in [minute, minute + 1] {
            let bucket = corral::domain::Bucket { minute, shard };
            let now = Utc::now();
            let lease = now + chrono::Duration::seconds(30);
            let claim = app
                .store
                .claim_bucket(bucket, node, lease, now)
                .await
                .unwrap();
            assert!(matches!(claim, corral::store::Claim::Granted { .. }));
        }
    }
    for i in 0..COUNT {
        let now = Utc::now();
        let reminder = Reminder {
            id: ReminderId::new(),
            user_id: user,
            event_id: event,
            remind_at: first_due + chrono::Duration::milliseconds((i % 100) as i64 * 10),
            email: Email::parse(&format!("runner{i}@example.com")).unwrap(),
            state: ReminderState::Scheduled,
            detail: None,
            created_at: now,
            updated_at: now,
        };
        app.store.insert_reminder(&reminder).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let reminders = || {
        sink.received()
            .into_iter()
            .filter(|m| {
                m.header("Subject")
                    .is_some_and(|s| s.starts_with("Reminder:"))
            })
            .collect::<Vec<_>>()
    };
    while reminders().len() < COUNT {
        assert!(
            Instant::now() < deadline,
            "only {} of {COUNT} mails arrived",
            reminders().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mails = reminders();
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for m in &mails {
        *per_id.entry(m.header("Message-ID").unwrap()).or_default() += 1;
    }
    assert_eq!(mails.len(), COUNT, "exactly one mail per reminder");
    assert_eq!(per_id.len(), COUNT);
    // Both nodes worked buckets.
    let mut holders: HashMap<String, usize> = HashMap::new();
    let probe_at = Utc::now();
    let horizon = corral::domain::reminder::minute_of(probe_at) + 2;
    for bucket in app.store.due_buckets(horizon).await.unwrap() {
        let until = probe_at + chrono::Duration::milliseconds(1);
        if let corral::store::Claim::Held { by } = app
            .store
            .claim_bucket(bucket, "probe", until, probe_at)
            .await
            .unwrap()
        {
            *holders.entry(by).or_default() += 1;
        }
    }
    eprintln!("buckets held per node: {holders:?}");
    assert!(holders.contains_key("node-b") && holders.contains_key(node_a.trim()));
    other.shutdown().await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn the_welcome_mail_arrives_on_sign_up() {
    let sink = SmtpSink::start().await;
    let app = TestApp::spawn_with(via(sink.port())).await;
    let response = app.sign_up("newcomer").await;
    assert_eq!(response.status(), 201);
    let user: Value = response.json().await.unwrap();
    let mail = sink
        .wait_for(Duration::from_secs(5), |m| m.to == ["newcomer@example.com"])
        .await
        .expect("a welcome mail");
    assert_eq!(mail.header("Subject").as_deref(), Some("Welcome to Corral"));
    assert!(
        mail.header("Message-ID")
            .unwrap()
            .contains(user["id"].as_str().unwrap())
    );
    assert!(mail.data.contains("newcomer"));
    app.stop().await;

    // With the default settings the mail lands as an .eml file in data/outbox.
    let app = TestApp::spawn().await;
    let outbox = app.data_dir.path().join("outbox");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let welcome = std::fs::read_dir(&outbox)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|f| std::fs::read_to_string(f.path()).ok())
            .any(|text| {
                text.contains("Subject: Welcome to Corral") && text.contains("tester@example.com")
            });
        if welcome {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no welcome mail in {}",
            outbox.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn bad_reminders_get_4xx_problem_json() {
    let app = TestApp::spawn_with(|s| s.rate_limits.enabled = false).await;
    let event = app.create_event("Jazz Night", starts()).await;
    let post = |body: Value| send(&app, &app.token, Method::POST, "/v1/reminders", Some(body));
    let soon = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();

    let past = (Utc::now() - chrono::Duration::seconds(1)).to_rfc3339();
    let p = problem(
        post(json!({"event_id": event, "remind_at": past})).await,
        422,
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("future"));
    let p = problem(
        post(json!({"event_id": EventId::new().to_string(), "remind_at": soon})).await,
        422,
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("no event"));
    problem(
        post(json!({"event_id": "nope", "remind_at": soon})).await,
        422,
    )
    .await;
    let p = problem(
        post(json!({"event_id": event, "remind_at": soon, "email": "stranger@example.com"})).await,
        422,
    )
    .await;
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("not one of your addresses")
    );
    problem(
        post(json!({"event_id": event, "remind_at": soon, "email": "not an address"})).await,
        400,
    )
    .await;
    problem(
        post(json!({"event_id": event, "remind_at": "tomorrow"})).await,
        400,
    )
    .await;
    problem(post(json!({"event_id": event})).await, 400).await;
    problem(
        app.client
            .post(app.url("/v1/reminders"))
            .json(&json!({"event_id": event, "remind_at": soon}))
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;

    // With an offset, stored in UTC.
    let local = (Utc::now() + chrono::Duration::hours(2))
        .with_timezone(&chrono::FixedOffset::east_opt(5 * 3600 + 1800).unwrap());
    let r = post(json!({"event_id": event, "remind_at": local.to_rfc3339()})).await;
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    let stored: DateTime<Utc> = created["remind_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(stored.timestamp_millis(), local.timestamp_millis());
    assert!(created["remind_at"].as_str().unwrap().ends_with('Z'));
    let id = created["id"].as_str().unwrap();

    // Someone else's reminder does not exist for you; and more bad input.
    let other = app.new_user("other").await;
    let mine = format!("/v1/reminders/{id}");
    let cases: Vec<(&str, Method, &str, Option<Value>, u16)> = vec![
        (&other, Method::GET, &mine, None, 404),
        (&other, Method::DELETE, &mine, None, 404),
        (
            &other,
            Method::PATCH,
            &mine,
            Some(json!({"remind_at": soon})),
            404,
        ),
        (
            &app.token,
            Method::GET,
            "/v1/reminders/not-an-id",
            None,
            404,
        ),
        (&app.token, Method::PATCH, &mine, Some(json!({})), 400),
        (
            &app.token,
            Method::PATCH,
            &mine,
            Some(json!({"remind_at": past})),
            422,
        ),
        (
            &app.token,
            Method::GET,
            "/v1/reminders?cursor=garbage",
            None,
            400,
        ),
        (&app.token, Method::GET, "/v1/reminders?limit=0", None, 400),
        (
            &app.token,
            Method::PATCH,
            "/v1/users/me",
            Some(json!({"time_zone": "Mars/Olympus"})),
            400,
        ),
        (
            &app.token,
            Method::PATCH,
            "/v1/users/me",
            Some(json!({})),
            400,
        ),
    ];
    for (token, method, path, body, status) in cases {
        problem(send(&app, token, method, path, body).await, status).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn my_reminders_page_by_time_and_go_with_my_account() {
    let app = TestApp::spawn_with(|s| s.rate_limits.enabled = false).await;
    let event = app.create_event("Book Fair", starts()).await;
    let token = app.new_user("planner").await;
    let mut ids = Vec::new();
    // Created out of time order; listed in it.
    for hours in [5, 1, 4, 2, 3] {
        let (id, _) = remind(
            &app,
            &token,
            &event,
            Duration::from_secs(hours * 3600),
            None,
        )
        .await;
        ids.push((hours, id));
    }
    ids.sort();
    remind(&app, &app.token, &event, Duration::from_secs(3600), None).await;
    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/reminders?limit=2&cursor={c}"),
            None => "/v1/reminders?limit=2".to_owned(),
        };
        let page: Value = send(&app, &token, Method::GET, &path, None)
            .await
            .json()
            .await
            .unwrap();
        listed.extend(
            page["reminders"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_owned()),
        );
        match page["next"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        listed,
        ids.iter().map(|(_, id)| id.clone()).collect::<Vec<_>>()
    );

    assert_eq!(
        send(&app, &token, Method::DELETE, "/v1/users/me", None)
            .await
            .status(),
        204
    );
    for (_, id) in &ids {
        let id: ReminderId = id.parse().unwrap();
        assert!(
            app.store.get_reminder(id).await.unwrap().is_none(),
            "reminders go with the account"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_dead_nodes_leases_expire_and_another_node_takes_over() {
    let sink = SmtpSink::start().await;
    let app = TestApp::spawn_with(via(sink.port())).await;
    let event: EventId = app
        .create_event("Relay Race", starts())
        .await
        .parse()
        .unwrap();
    let me: Value = send(&app, &app.token, Method::GET, "/v1/users/me", None)
        .await
        .json()
        .await
        .unwrap();
    let now = Utc::now();
    let reminder = Reminder {
        id: ReminderId::new(),
        user_id: me["id"].as_str().unwrap().parse().unwrap(),
        event_id: event,
        remind_at: now + chrono::Duration::milliseconds(500),
        email: Email::parse("tester@example.com").unwrap(),
        state: ReminderState::Scheduled,
        detail: None,
        created_at: now,
        updated_at: now,
    };
    // A node that died holding the reminder's bucket: its lease runs 2.5 s more.
    let lease_end = Instant::now() + Duration::from_millis(2500);
    let claim = app
        .store
        .claim_bucket(
            reminder.due().bucket,
            "dead-node",
            now + chrono::Duration::milliseconds(2500),
            now,
        )
        .await
        .unwrap();
    assert_eq!(claim, corral::store::Claim::Granted { taken_over: false });
    let takeovers = metric(&app, "corral_reminder_lease_takeovers_total", "").await;
    app.store.insert_reminder(&reminder).await.unwrap();

    let id = reminder.id.to_string();
    let mail = sink
        .wait_for(Duration::from_secs(6), |m| {
            m.header("Message-ID").is_some_and(|h| h.contains(&id))
        })
        .await
        .expect("sent once the dead node's lease expired");
    assert!(
        mail.at >= lease_end,
        "sent {:?} before the lease expired",
        lease_end - mail.at
    );
    assert!(metric(&app, "corral_reminder_lease_takeovers_total", "").await > takeovers);
    app.stop().await;
}

#[tokio::test]
async fn a_mail_queued_but_not_delivered_at_shutdown_goes_out_after_restart() {
    let mut sink = SmtpSink::start().await;
    sink.stop();
    let app = TestApp::spawn_with(via(sink.port())).await;
    let event = app.create_event("Lantern Walk", starts()).await;
    let (id, _) = remind(&app, &app.token, &event, Duration::from_millis(300), None).await;
    // Fired, its mail queued, and SMTP down: it waits for a retry.
    wait_state(&app, &app.token, &id, "sending").await;
    let token = app.token.clone();
    let dir = app.stop().await;

    sink.restart().await;
    let app = TestApp::spawn_in(dir, via(sink.port())).await;
    sink.wait_for(Duration::from_secs(5), |m| {
        m.header("Message-ID").is_some_and(|h| h.contains(&id))
    })
    .await
    .expect("the queued mail is delivered after the restart");
    wait_state(&app, &token, &id, "sent").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(mails_for(&sink, &id).len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_reminder_made_on_one_node_in_a_bucket_another_holds_fires_on_time() {
    let sink = SmtpSink::start().await;
    let port = sink.port();
    // Neither node ticks again for 100 s once started: a reminder is loaded on time only
    // if the node holding its bucket hears of it.
    let slow = move |s: &mut Settings| {
        via(port)(s);
        s.reminders.tick_ms = 100_000;
        s.reminders.lookahead_secs = 120;
        s.reminders.lease_secs = 300;
    };
    let a = TestApp::spawn_with(slow).await;
    let b = TestApp::spawn_sharing(&a, |s| {
        slow(s);
        s.node.id = "node-b".into();
    })
    .await;
    let event = a.create_event("Marathon", starts()).await;
    let ahead = Duration::from_secs(6);
    // B holds every bucket of the minute the reminder falls in (and the next, should it
    // cross one), as if it had claimed them first.
    let minute = corral::domain::reminder::minute_of(Utc::now() + ahead);
    for shard in 0..corral::domain::reminder::DUE_SHARDS {
        for minute in [minute, minute + 1] {
            let now = Utc::now();
            let until = now + chrono::Duration::seconds(300);
            let bucket = corral::domain::Bucket { minute, shard };
            let claim = a.store.claim_bucket(bucket, "node-b", until, now).await;
            assert!(matches!(claim, Ok(corral::store::Claim::Granted { .. })));
        }
    }

    let (id, due) = remind(&a, &a.token, &event, ahead, None).await;
    let mail = |m: &Received| m.header("Message-ID").is_some_and(|h| h.contains(&id));
    let deadline = due + Duration::from_secs(5);
    while !sink.received().iter().any(mail) {
        assert!(
            Instant::now() < deadline,
            "the reminder did not fire within 5 s of its time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        Instant::now() + Duration::from_millis(500) >= due,
        "not early"
    );
    let id: ReminderId = id.parse().unwrap();
    while a.store.get_reminder(id).await.unwrap().map(|r| r.state) != Some(ReminderState::Sent) {
        assert!(Instant::now() < deadline, "never recorded as sent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.stop().await;
}
