//! `GET /v1/ws` with real WebSocket clients (tokio-tungstenite): new uploads reach
//! `images` subscribers, `images.random` ticks from the pool, reminder updates reach only
//! their owner, refusals are error frames on a connection that stays open, a client that
//! stops reading lags without growing the server's queue, 1,000 clients each get a
//! broadcast, and the connection limit, heartbeat and frame size limit hold.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::common::{TestApp, png};
use chrono::Utc;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn request(
    app: &TestApp,
    token: Option<&str>,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut request = format!("ws://{}/v1/ws", app.addr)
        .into_client_request()
        .unwrap();
    if let Some(token) = token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

async fn connect(app: &TestApp, token: Option<&str>) -> Ws {
    let (ws, response) = tokio_tungstenite::connect_async(request(app, token))
        .await
        .expect("websocket handshake");
    assert_eq!(response.status(), 101);
    ws
}

async fn send(ws: &mut Ws, msg: Value) {
    ws.send(Message::text(msg.to_string())).await.unwrap();
}

/// The next JSON frame within `wait`, or None.
async fn next_within(ws: &mut Ws, wait: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next()).await.ok()??;
        match msg.expect("websocket read") {
            Message::Text(text) => return Some(serde_json::from_str(&text).expect("JSON frame")),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

async fn next(ws: &mut Ws) -> Value {
    next_within(ws, Duration::from_secs(10))
        .await
        .expect("a frame within 10 s")
}

/// Subscribes and waits for the acknowledgement.
async fn subscribe(ws: &mut Ws, topic: &str) {
    send(ws, json!({"op": "subscribe", "topic": topic})).await;
    let ack = next(ws).await;
    assert_eq!(ack, json!({"topic": topic, "event": "subscribed"}));
}

fn quiet(s: &mut corral::config::Settings) {
    s.rate_limits.enabled = false;
}

#[tokio::test]
async fn an_upload_reaches_an_images_subscriber_within_a_second() {
    let app = TestApp::spawn_with(quiet).await;
    let mut ws = connect(&app, None).await;
    subscribe(&mut ws, "images").await;

    let started = Instant::now();
    let image = app.upload_png(png(12, 9, 1)).await;
    let pushed = next(&mut ws).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(pushed["topic"], "images");
    assert_eq!(pushed["event"], "created");
    assert_eq!(
        pushed["data"], image,
        "the push shows the image as the API does"
    );

    // The same bytes again are another upload (its own record, the same file).
    let again: Value = app
        .upload_raw(png(12, 9, 1), "image/png")
        .await
        .json()
        .await
        .unwrap();
    let pushed = next(&mut ws).await;
    assert_eq!(pushed["data"]["id"], again["id"]);
    assert_ne!(again["id"], image["id"]);
    assert_eq!(pushed["data"]["name"], image["name"]);

    // Unsubscribed, nothing more arrives.
    send(&mut ws, json!({"op": "unsubscribe", "topic": "images"})).await;
    assert_eq!(
        next(&mut ws).await,
        json!({"topic": "images", "event": "unsubscribed"})
    );
    app.upload_png(png(12, 9, 2)).await;
    assert_eq!(next_within(&mut ws, Duration::from_millis(500)).await, None);
}

#[tokio::test]
async fn a_draft_reaches_images_subscribers_only_once_attached() {
    let app = TestApp::spawn_with(quiet).await;
    let mut ws = connect(&app, None).await;
    subscribe(&mut ws, "images").await;
    let draft: Value = app
        .authed(reqwest::Method::POST, "/v1/images?draft=true")
        .header("content-type", "image/png")
        .body(png(10, 10, 1890))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(draft["state"], "draft");
    assert_eq!(next_within(&mut ws, Duration::from_millis(500)).await, None);
    let attached = app
        .authed(reqwest::Method::POST, "/v1/images/attach")
        .json(&json!({"images": [{"id": draft["id"]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(attached.status(), 200);
    let attached: Value = attached.json().await.unwrap();
    let pushed = next(&mut ws).await;
    assert_eq!(
        (&pushed["topic"], &pushed["event"]),
        (&json!("images"), &json!("created"))
    );
    assert_eq!(pushed["data"], attached["images"][0]);
    assert_eq!(pushed["data"]["state"], "published");
    // Attaching it again publishes nothing new, so nothing is pushed.
    let again = app
        .authed(reqwest::Method::POST, "/v1/images/attach")
        .json(&json!({"images": [{"id": draft["id"]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(next_within(&mut ws, Duration::from_millis(500)).await, None);
}

#[tokio::test]
async fn images_random_ticks_at_its_interval_with_images_from_the_pool() {
    let app = TestApp::spawn_with(quiet).await;
    let mut ids = HashSet::new();
    for seed in 0..3 {
        ids.insert(
            app.upload_png(png(8, 8, seed)).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let mut ws = connect(&app, None).await;

    send(
        &mut ws,
        json!({"op": "subscribe", "topic": "images.random", "interval_ms": 50}),
    )
    .await;
    let refused = next(&mut ws).await;
    assert_eq!(refused["event"], "error");
    assert!(
        refused["detail"].as_str().unwrap().contains("100"),
        "{refused}"
    );

    send(
        &mut ws,
        json!({"op": "subscribe", "topic": "images.random", "interval_ms": 200}),
    )
    .await;
    assert_eq!(next(&mut ws).await["event"], "subscribed");
    let started = Instant::now();
    let mut arrivals = Vec::new();
    for _ in 0..5 {
        let tick = next(&mut ws).await;
        arrivals.push(started.elapsed());
        assert_eq!(tick["topic"], "images.random");
        assert_eq!(tick["event"], "image");
        let id = tick["data"]["id"].as_str().unwrap();
        assert!(ids.contains(id), "{id} is one of the uploaded images");
        assert!(tick["data"]["url"].as_str().unwrap().starts_with("/i/"));
    }
    // Five ticks 200 ms apart: the first after ~200 ms, the fifth after ~1 s.
    assert!(arrivals[0] >= Duration::from_millis(150), "{arrivals:?}");
    assert!(arrivals[4] >= Duration::from_millis(950), "{arrivals:?}");
    assert!(arrivals[4] < Duration::from_millis(2000), "{arrivals:?}");

    send(
        &mut ws,
        json!({"op": "unsubscribe", "topic": "images.random"}),
    )
    .await;
    assert_eq!(next(&mut ws).await["event"], "unsubscribed");
    assert_eq!(next_within(&mut ws, Duration::from_millis(500)).await, None);
}

/// Sets a reminder of `event` at `at` for the holder of `token`.
async fn remind(
    app: &TestApp,
    token: &str,
    event: &str,
    at: chrono::DateTime<Utc>,
) -> reqwest::Response {
    app.client
        .post(app.url("/v1/reminders"))
        .bearer_auth(token)
        .json(&json!({"event_id": event, "remind_at": at.to_rfc3339()}))
        .send()
        .await
        .unwrap()
}

/// Reads until the server's close frame (within 5 s); returns its code.
async fn close_code(ws: &mut Ws) -> CloseCode {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(frame))) => return frame.expect("a close code").code,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn reminder_updates_reach_their_owner_and_no_one_else() {
    let app = TestApp::spawn_with(|s| {
        quiet(s);
        s.reminders.tick_ms = 100;
    })
    .await;
    let event = app
        .create_event("Llama parade", Utc::now() + chrono::Duration::days(365))
        .await;
    let alice = app.new_user("alice").await;
    let bob = app.new_user("bob").await;

    // Alice signs in with the upgrade's header, Bob with the auth message.
    let mut a = connect(&app, Some(&alice)).await;
    subscribe(&mut a, "reminders").await;
    let mut b = connect(&app, None).await;
    send(&mut b, json!({"op": "auth", "token": bob})).await;
    let who = next(&mut b).await;
    assert_eq!(who["event"], "authenticated");
    assert_eq!(who["data"]["username"], "bob");
    subscribe(&mut b, "reminders").await;

    let at = Utc::now() + chrono::Duration::seconds(1);
    let created = remind(&app, &alice, &event, at).await;
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.unwrap()["id"].clone();

    let scheduled = next(&mut a).await;
    assert_eq!(
        (&scheduled["topic"], &scheduled["event"]),
        (&json!("reminders"), &json!("scheduled"))
    );
    assert_eq!(scheduled["data"]["id"], id);
    let sent = next(&mut a).await;
    assert_eq!(sent["event"], "sent", "{sent}");
    assert_eq!(sent["data"]["id"], id);
    assert_eq!(sent["data"]["state"], "sent");
    assert!(
        sent["data"].get("user_id").is_none(),
        "pushes show what the API shows"
    );

    assert_eq!(
        next_within(&mut b, Duration::from_millis(500)).await,
        None,
        "Bob hears nothing of Alice's reminder"
    );

    // Bob's own reminder, moved and then deleted, reaches Bob only.
    let at = Utc::now() + chrono::Duration::hours(1);
    let created = remind(&app, &bob, &event, at).await;
    let bobs = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(next(&mut b).await["event"], "scheduled");
    let path = app.url(&format!("/v1/reminders/{bobs}"));
    let later = (at + chrono::Duration::hours(1)).to_rfc3339();
    let moved = app
        .client
        .patch(&path)
        .bearer_auth(&bob)
        .json(&json!({"remind_at": later}))
        .send()
        .await
        .unwrap();
    assert_eq!(moved.status(), 200);
    assert_eq!(next(&mut b).await["event"], "rescheduled");
    let deleted = app
        .client
        .delete(&path)
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let cancelled = next(&mut b).await;
    assert_eq!(cancelled["event"], "cancelled");
    assert_eq!(cancelled["data"]["id"], bobs);
    assert_eq!(next_within(&mut a, Duration::from_millis(300)).await, None);
}

#[tokio::test]
async fn signing_in_as_someone_else_switches_the_reminders_feed() {
    let app = TestApp::spawn_with(quiet).await;
    let event = app
        .create_event("Shearing day", Utc::now() + chrono::Duration::days(365))
        .await;
    let alice = app.new_user("alice").await;
    let carol = app.new_user("carol").await;
    let at = Utc::now() + chrono::Duration::hours(1);

    let mut ws = connect(&app, Some(&alice)).await;
    subscribe(&mut ws, "reminders").await;
    assert_eq!(remind(&app, &alice, &event, at).await.status(), 201);
    assert_eq!(
        next(&mut ws).await["event"],
        "scheduled",
        "Alice's feed first"
    );

    send(&mut ws, json!({"op": "auth", "token": carol})).await;
    let who = next(&mut ws).await;
    assert_eq!(who["event"], "authenticated");
    assert_eq!(who["data"]["username"], "carol");

    assert_eq!(remind(&app, &alice, &event, at).await.status(), 201);
    assert_eq!(
        next_within(&mut ws, Duration::from_millis(500)).await,
        None,
        "Alice's reminders no longer reach the socket"
    );
    let created = remind(&app, &carol, &event, at).await;
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.unwrap()["id"].clone();
    let pushed = next(&mut ws).await;
    assert_eq!(pushed["event"], "scheduled", "{pushed}");
    assert_eq!(pushed["data"]["id"], id, "Carol's reminder follows");
}

#[tokio::test]
async fn refusals_are_error_frames_and_the_connection_stays() {
    let app = TestApp::spawn_with(quiet).await;
    let mut ws = connect(&app, None).await;

    send(&mut ws, json!({"op": "subscribe", "topic": "reminders"})).await;
    let refused = next(&mut ws).await;
    assert_eq!(refused["event"], "error");
    assert_eq!(refused["topic"], "reminders");
    assert!(
        refused["detail"].as_str().unwrap().contains("sign in"),
        "{refused}"
    );

    for bad in [
        Message::text("not json"),
        Message::text(r#"{"op": "dance"}"#),
        Message::text(r#"{"op": "subscribe"}"#),
        Message::text(r#"{"op": "subscribe", "topic": "llamas"}"#),
        Message::text(r#"{"op": "auth", "token": "nope"}"#),
        Message::binary(Bytes::from_static(b"\x00\x01")),
    ] {
        ws.send(bad.clone()).await.unwrap();
        let reply = next(&mut ws).await;
        assert_eq!(reply["event"], "error", "{bad:?} -> {reply}");
        assert!(!reply["detail"].as_str().unwrap().is_empty());
    }
    // Still open and serving.
    subscribe(&mut ws, "images").await;

    // A message over ws.max_message_bytes closes the connection with 1009.
    ws.send(Message::text("x".repeat(10_000))).await.unwrap();
    assert_eq!(close_code(&mut ws).await, CloseCode::Size);

    // Over HTTP: a bad token is 401 before the upgrade; a plain GET is 400.
    let refused = tokio_tungstenite::connect_async(request(&app, Some("nope"))).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401)
        }
        other => panic!("expected 401, got {other:?}"),
    }
    let plain = app.get("/v1/ws").await;
    assert_eq!(plain.status(), 400);
    assert_eq!(plain.headers()["content-type"], "application/problem+json");
}

#[tokio::test]
async fn a_message_at_the_size_limit_is_read_whole() {
    let limit = 4096;
    let app = TestApp::spawn_with(|s| {
        quiet(s);
        s.ws.max_message_bytes = limit;
    })
    .await;
    let mut ws = connect(&app, None).await;
    // JSON may carry any amount of whitespace: pad a subscribe to exactly the limit, larger
    // than the server's read buffer, so the buffer must grow to take it in.
    let bare = r#"{"op": "subscribe", "topic": "images"}"#;
    let padded = format!("{bare}{}", " ".repeat(limit - bare.len()));
    assert_eq!(padded.len(), limit);
    for _ in 0..3 {
        ws.send(Message::text(padded.clone())).await.unwrap();
        assert_eq!(
            next(&mut ws).await,
            json!({"topic": "images", "event": "subscribed"})
        );
        // And a small one after it, from what is left in the buffer.
        subscribe(&mut ws, "images").await;
    }
    // One byte more is too big.
    ws.send(Message::text(format!("{padded} "))).await.unwrap();
    assert_eq!(close_code(&mut ws).await, CloseCode::Size);
}

#[tokio::test]
async fn a_client_that_stops_reading_lags_and_its_queue_stays_bounded() {
    const QUEUE: usize = 16;
    const BATCH: u32 = 100;
    let app = TestApp::spawn_with(|s| {
        quiet(s);
        s.ws.queue = QUEUE;
    })
    .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    let stream = socket.connect(app.addr).await.unwrap();
    let (mut ws, _) =
        tokio_tungstenite::client_async(request(&app, None), MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
    subscribe(&mut ws, "images").await;

    // The client reads nothing while images are uploaded, until the server has had to
    // drop frames for it: first the kernel's socket buffers fill (they grow to a few MB;
    // 32 long tags make each frame ~2.5 KB), then its queue.
    let tags = (0..32)
        .map(|i| format!("{i:02}{}", "t".repeat(62)))
        .collect::<Vec<_>>()
        .join(",");
    let path = format!("/v1/images?tags={tags}");
    let lagged = || async {
        let metrics = app.get("/metrics").await.text().await.unwrap();
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("corral_ws_lagged_total "))
            .expect("corral_ws_lagged_total exported")
            .parse::<f64>()
            .unwrap()
    };
    let mut uploaded = 0u32;
    let mut batches_after_lag = 0;
    while batches_after_lag < 2 {
        assert!(
            uploaded < 8000,
            "no frame was dropped after {uploaded} uploads"
        );
        futures_util::stream::iter(uploaded..uploaded + BATCH)
            .for_each_concurrent(4, |seed| {
                let request = app
                    .authed(reqwest::Method::POST, &path)
                    .header("content-type", "image/png")
                    .body(png(4, 4, 10_000 + seed));
                async move { assert_eq!(request.send().await.unwrap().status(), 201) }
            })
            .await;
        uploaded += BATCH;
        if lagged().await > 0.0 {
            batches_after_lag += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Reading again: the frames the kernel held, the count of those dropped, then at
    // most QUEUE frames, which is all the server kept for this client.
    let (mut created, mut missed, mut since_lagged) = (0u64, 0u64, 0usize);
    while let Some(frame) = next_within(&mut ws, Duration::from_secs(1)).await {
        match frame["event"].as_str().unwrap() {
            "created" => {
                created += 1;
                since_lagged += 1;
            }
            "lagged" => {
                missed += frame["data"]["missed"].as_u64().unwrap();
                since_lagged = 0;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(missed > 0, "the client is told it lagged");
    assert_eq!(
        created + missed,
        u64::from(uploaded),
        "every upload is either received or counted as missed"
    );
    assert!(
        since_lagged <= QUEUE,
        "{since_lagged} frames were queued for the client (bound {QUEUE})"
    );
}

#[tokio::test]
async fn a_thousand_clients_each_receive_one_broadcast() {
    const CLIENTS: usize = 1000;
    let app = TestApp::spawn_with(quiet).await;
    let clients = futures_util::stream::iter(0..CLIENTS)
        .map(|_| async {
            let mut ws = connect(&app, None).await;
            subscribe(&mut ws, "images").await;
            ws
        })
        .buffer_unordered(50)
        .collect::<Vec<_>>()
        .await;

    let image = app.upload_png(png(10, 10, 7)).await;
    let received = futures_util::future::join_all(clients.into_iter().map(|mut ws| async move {
        let frame = next(&mut ws).await;
        frame["data"]["id"].clone()
    }))
    .await;
    assert_eq!(received.len(), CLIENTS);
    assert!(received.iter().all(|id| *id == image["id"]));
}

#[tokio::test]
async fn the_connection_limit_and_the_heartbeat_hold() {
    let app = TestApp::spawn_with(|s| {
        quiet(s);
        s.ws.max_connections = 2;
        s.ws.ping_secs = 1;
        s.ws.idle_secs = 2;
    })
    .await;
    let mut reader = connect(&app, None).await;
    let mut silent = connect(&app, None).await;
    match tokio_tungstenite::connect_async(request(&app, None)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            assert!(response.headers().contains_key("retry-after"));
        }
        other => panic!("expected 503, got {other:?}"),
    }

    // A client that keeps reading answers the pings and stays; one that neither reads
    // nor sends is closed as idle.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        assert_eq!(
            next_within(&mut reader, Duration::from_millis(200)).await,
            None
        );
    }
    assert_eq!(close_code(&mut silent).await, CloseCode::Away);
    subscribe(&mut reader, "images").await;

    // The idle client's place is free again.
    drop(silent);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio_tungstenite::connect_async(request(&app, None)).await {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("the freed place was not reusable: {e}"),
        }
    }
}

#[tokio::test]
async fn a_restarted_hub_is_joined_again_and_a_signed_out_session_stops_its_pushes() {
    let app = TestApp::spawn_with(|s| {
        quiet(s);
        s.ws.ping_secs = 1;
        s.ws.idle_secs = 5;
    })
    .await;
    let token = app.new_user("carol").await;
    let mut ws = connect(&app, Some(&token)).await;
    subscribe(&mut ws, "images").await;
    subscribe(&mut ws, "reminders").await;

    // The hub dies; the supervisor starts a new one, which the connection joins.
    let old = app.actors.hub.get().expect("hub running");
    old.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    while app
        .actors
        .hub
        .get()
        .is_none_or(|hub| hub.get_id() == old.get_id())
    {
        assert!(Instant::now() < deadline, "the hub was not restarted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Within a heartbeat the connection is subscribed again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let image = app.upload_png(png(6, 6, 99)).await;
    let pushed = next(&mut ws).await;
    assert_eq!(pushed["data"]["id"], image["id"], "{pushed}");

    // Signing out ends the connection's session at the next heartbeat.
    let out = app
        .client
        .delete(app.url("/v1/sessions"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    let ended = next(&mut ws).await;
    assert_eq!(ended["event"], "error", "{ended}");
    assert_eq!(ended["topic"], "reminders");
    assert!(ended["detail"].as_str().unwrap().contains("session ended"));
}

#[tokio::test]
async fn shutting_down_closes_websockets_with_1001() {
    let mut app = TestApp::spawn_with(quiet).await;
    let mut ws = connect(&app, None).await;
    subscribe(&mut ws, "images").await;
    app.request_stop();
    assert_eq!(close_code(&mut ws).await, CloseCode::Away);
}

#[tokio::test]
async fn a_reminder_whose_mail_is_refused_is_pushed_as_failed() {
    let sink = crate::common::smtp::SmtpSink::start().await;
    let port = sink.port();
    let app = TestApp::spawn_with(move |s| {
        quiet(s);
        s.reminders.tick_ms = 100;
        s.mail.transport = corral::config::MailTransportKind::Smtp;
        s.mail.smtp.host = "127.0.0.1".into();
        s.mail.smtp.port = port;
        s.mail.smtp.tls = corral::config::SmtpTls::None;
    })
    .await;
    let event = app
        .create_event("Llama parade", Utc::now() + chrono::Duration::days(365))
        .await;
    let token = app.new_user("dora").await;
    sink.reject("dora@example.com");
    let mut ws = connect(&app, Some(&token)).await;
    subscribe(&mut ws, "reminders").await;

    let at = Utc::now() + chrono::Duration::seconds(1);
    let created = remind(&app, &token, &event, at).await;
    assert_eq!(created.status(), 201);
    assert_eq!(next(&mut ws).await["event"], "scheduled");
    let failed = next(&mut ws).await;
    assert_eq!(failed["event"], "failed", "{failed}");
    assert_eq!(failed["data"]["state"], "failed");
    assert!(
        failed["data"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("550")),
        "{failed}"
    );
}

// Like the `corral` binary, so the server process below allocates as it does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Where [`serve_in_a_child_process`] keeps its data, and the address it serves on (not
/// `CORRAL_*`: those are settings).
const SERVE_DIR: &str = "WS_TEST_SERVE_DIR";
const SERVE_BIND: &str = "WS_TEST_SERVE_BIND";

/// Not a test: the server of [`ServerProcess`], in a process of its own (a default
/// runtime, as `corral serve` has). Without its variables set it returns at once.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "the server process that an_idle_connection_costs_the_server_at_most_32_kib starts"]
async fn serve_in_a_child_process() {
    let (Ok(dir), Ok(bind)) = (std::env::var(SERVE_DIR), std::env::var(SERVE_BIND)) else {
        return;
    };
    let bind: std::net::SocketAddr = bind.parse().unwrap();
    let overrides = corral::config::Overrides {
        bind: Some(bind),
        data_dir: Some(dir.into()),
    };
    let mut settings = corral::config::Settings::load(None, &overrides).unwrap();
    quiet(&mut settings);
    let listener = TcpListener::bind(bind).await.unwrap();
    corral::run(settings, listener, std::future::pending())
        .await
        .unwrap();
}

/// A server in a child process ([`serve_in_a_child_process`]); killed when dropped.
struct ServerProcess {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    _data_dir: tempfile::TempDir,
}

impl ServerProcess {
    async fn start() -> Self {
        let data_dir = tempfile::TempDir::new().unwrap();
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        // This test binary again, running only `serve_in_a_child_process`. (Not the
        // `corral` binary: a build of another checkout sharing the target dir may
        // replace it at any moment; this executable is this build's own.)
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "ws::serve_in_a_child_process", "--ignored"])
            .env(SERVE_DIR, data_dir.path())
            .env(SERVE_BIND, addr.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start the server process");
        let mut server = Self {
            child,
            addr,
            _data_dir: data_dir,
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("the server exited during start-up: {status}");
            }
            let ready = client
                .get(format!("http://{addr}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "the server never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    /// VmRSS, in KiB.
    fn rss_kib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the server's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// The `corral_ws_connections` gauge.
    async fn open_websockets(&self) -> f64 {
        let text = reqwest::get(format!("http://{}/metrics", self.addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("corral_ws_connections "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    async fn wait_for_open(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.open_websockets().await != n as f64 {
            assert!(
                Instant::now() < deadline,
                "the server never counted {n} open WebSockets"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What an idle connection (subscribed to `images`, nothing published) costs the server:
/// its resident memory before and after a thousand connections, the server in a child
/// process so that the clients' memory is not counted. The bench's `ws-idle` measures the
/// same at 3,000 on a release build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_costs_the_server_at_most_32_kib() {
    const CONNECTIONS: usize = 1000;
    const MAX_KIB: f64 = 32.0;
    let server = ServerProcess::start().await;
    let url = format!("ws://{}/v1/ws", server.addr);
    // One connection first, so what every server allocates once is in the baseline.
    let (mut first, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    subscribe(&mut first, "images").await;
    server.wait_for_open(1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.rss_kib();

    let clients = futures_util::stream::iter(0..CONNECTIONS)
        .map(|_| async {
            let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
            subscribe(&mut ws, "images").await;
            ws
        })
        .buffer_unordered(50)
        .collect::<Vec<_>>()
        .await;
    server.wait_for_open(CONNECTIONS + 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = server.rss_kib();
    let each = (after - before) / CONNECTIONS as f64;
    eprintln!(
        "server RSS {before} -> {after} KiB at {CONNECTIONS} idle connections: {each:.1} KiB each"
    );
    assert!(
        each <= MAX_KIB,
        "an idle connection costs the server {each:.1} KiB (RSS {before} -> {after} KiB at {CONNECTIONS} connections); at most {MAX_KIB} KiB"
    );
    drop(clients);
}

#[tokio::test]
async fn a_websocket_on_one_node_hears_what_another_node_sharing_its_store_did() {
    let a = TestApp::spawn_with(|s| {
        quiet(s);
        s.reminders.tick_ms = 100;
    })
    .await;
    let b = TestApp::spawn_sharing(&a, |s| {
        quiet(s);
        s.reminders.tick_ms = 100;
    })
    .await;
    let event = a
        .create_event("Llama parade", Utc::now() + chrono::Duration::days(365))
        .await;
    let alice = a.new_user("alice").await;
    // Alice listens on B; everything below happens on A.
    let mut on_b = connect(&b, Some(&alice)).await;
    subscribe(&mut on_b, "reminders").await;
    subscribe(&mut on_b, "images").await;
    let mut on_a = connect(&a, None).await;
    subscribe(&mut on_a, "images").await;

    // A reminder made on A, and its mail sent by A (or B, whichever leased the bucket).
    let created = remind(
        &a,
        &alice,
        &event,
        Utc::now() + chrono::Duration::seconds(1),
    )
    .await;
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.unwrap()["id"].clone();
    let scheduled = next(&mut on_b).await;
    assert_eq!(
        (
            &scheduled["topic"],
            &scheduled["event"],
            &scheduled["data"]["id"]
        ),
        (&json!("reminders"), &json!("scheduled"), &id)
    );
    let sent = next(&mut on_b).await;
    assert_eq!((&sent["event"], &sent["data"]["id"]), (&json!("sent"), &id));

    // An image uploaded on A reaches B's subscribers and B's random sample.
    let image = a.upload_png(png(12, 9, 1)).await;
    let created = next(&mut on_b).await;
    assert_eq!(
        (&created["topic"], &created["event"]),
        (&json!("images"), &json!("created"))
    );
    assert_eq!(created["data"], image, "shown as the API shows it");
    let image_id = image["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !crate::common::random_ids(&b, "count=10")
        .await
        .contains(&image_id)
    {
        assert!(Instant::now() < deadline, "B's sample never took the image");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Deleted on A, it leaves B's sample too.
    let deleted = a
        .authed(reqwest::Method::DELETE, &format!("/v1/images/{image_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    while crate::common::random_ids(&b, "count=10")
        .await
        .contains(&image_id)
    {
        assert!(
            Instant::now() < deadline,
            "B's sample kept the deleted image"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Each was told once: A hears its own upload once (not again from the feed), and
    // B nothing more, past several reads of the feed and their overlap.
    let own = next(&mut on_a).await;
    assert_eq!(own["data"]["id"], json!(image_id));
    let quiet_for = corral::actors::relay::OVERLAP + Duration::from_secs(1);
    assert_eq!(next_within(&mut on_a, quiet_for).await, None);
    assert_eq!(
        next_within(&mut on_b, Duration::from_millis(100)).await,
        None
    );
    b.stop().await;
}
