//! What outsiders send: stalled and idle connections, more connections than the server
//! allows, upload bodies that trickle, one client holding many uploads, altered tokens,
//! odd names under `/i/`. Each test talks to a real server over real sockets.

use std::time::{Duration, Instant};

use crate::common::{TestApp, png};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes the connection (EOF or reset) or `deadline` passes;
/// returns what was read and whether the server closed it.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (seen, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (seen, true),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.addr).await.expect("connect")
}

#[tokio::test]
async fn clients_stalled_mid_request_head_are_disconnected_while_others_are_served() {
    let app = TestApp::spawn_with(|s| {
        s.http.header_read_timeout_secs = 1;
        s.http.idle_timeout_secs = 30;
    })
    .await;
    // Half a request line each, then nothing (slowloris); and some that send nothing.
    let mut stalled = Vec::new();
    for n in 0..200 {
        let mut s = connect(&app).await;
        if n % 4 != 0 {
            s.write_all(b"GET /healthz HT").await.unwrap();
        }
        stalled.push(s);
    }
    let started = Instant::now();
    // A normal client is served all along.
    let mut served = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        assert_eq!(app.get("/v1/images/random").await.status(), 200);
        served += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served > 5);
    for s in &mut stalled {
        let (_, closed) = read_until_closed(s, Duration::from_secs(5)).await;
        assert!(closed, "a stalled connection was still open");
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "stalled connections closed only after {took:?}"
    );
}

#[tokio::test]
async fn a_request_head_dripped_byte_by_byte_is_cut_off_at_the_header_timeout() {
    let app = TestApp::spawn_with(|s| {
        s.http.header_read_timeout_secs = 1;
        s.http.idle_timeout_secs = 30;
    })
    .await;
    let mut s = connect(&app).await;
    let started = Instant::now();
    let head = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-a: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut cut = false;
    for byte in head {
        // Keeps the connection busy (never idle) but never finishes the head in time.
        if s.write_all(&[*byte]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if started.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    if !cut {
        let (seen, closed) = read_until_closed(&mut s, Duration::from_secs(3)).await;
        cut = closed && seen.is_empty();
    }
    assert!(cut, "the dripped head was not cut off");
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_the_idle_timeout_not_before() {
    let app = TestApp::spawn_with(|s| {
        s.http.header_read_timeout_secs = 1;
        s.http.idle_timeout_secs = 3;
    })
    .await;
    let mut s = connect(&app).await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let answered = Instant::now();
    // Past the header timeout the idle connection is still open and usable...
    tokio::time::sleep(Duration::from_millis(1800)).await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "the keep-alive connection was closed after {:?}",
        answered.elapsed()
    );
    // ...and once idle for the idle timeout, the server closes it.
    let idle_from = Instant::now();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(6)).await;
    assert!(closed, "the idle connection was never closed");
    let idle = idle_from.elapsed();
    assert!(
        idle >= Duration::from_millis(2500),
        "closed after only {idle:?}"
    );
}

#[tokio::test]
async fn past_the_connection_cap_new_connections_get_503_at_once() {
    let app = TestApp::spawn_with(|s| {
        s.http.max_connections = 20;
        s.http.header_read_timeout_secs = 30;
    })
    .await;
    // The harness's own client may hold a keep-alive connection or two; fill the rest.
    let mut held = Vec::new();
    let mut refused = None;
    for _ in 0..40 {
        let mut s = connect(&app).await;
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let started = Instant::now();
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .expect("a connection over the cap was left hanging")
            .unwrap_or(0);
        let answer = String::from_utf8_lossy(&buf[..n]).to_string();
        if answer.starts_with("HTTP/1.1 503") {
            assert!(answer.to_ascii_lowercase().contains("retry-after: 1"));
            assert!(answer.contains("application/problem+json"));
            assert!(started.elapsed() < Duration::from_secs(1));
            refused = Some(held.len());
            break;
        }
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        held.push(s);
    }
    let at = refused.expect("no connection was refused");
    assert!((18..=20).contains(&at), "refused after {at} connections");
    // Once some close, new connections are served again.
    held.truncate(5);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ok = reqwest::Client::new()
            .get(app.url("/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "the server never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_upload_slower_than_the_minimum_rate_gets_408_and_leaves_nothing() {
    let app = TestApp::spawn_with(|s| {
        s.uploads.min_bytes_per_sec = 1000;
        s.uploads.min_rate_window_secs = 1;
    })
    .await;
    let bytes = png(64, 64, 1);
    let (held, upload) = app.start_held_upload(bytes[..20].to_vec()).await;
    // 10 bytes every 200 ms: 50 bytes a second, far below the minimum.
    let drip = tokio::spawn(async move {
        for chunk in bytes[20..].chunks(10) {
            if held.send(Ok(chunk.to_vec())).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    // Meanwhile a normal upload goes through.
    assert_eq!(
        app.upload_raw(png(8, 8, 2), "image/png").await.status(),
        201
    );
    let started = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(5), upload)
        .await
        .expect("the slow upload was not ended")
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 408);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    drip.abort();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !app.files_under("tmp").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the slow upload's temp file stayed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app.files_under("images").len(), 1);
}

#[tokio::test]
async fn one_client_cannot_hold_more_than_its_share_of_the_upload_pool() {
    let app = TestApp::spawn_with(|s| s.uploads.max_in_flight_per_client = 2).await;
    let (a, _ua) = app.start_held_upload(png(4, 4, 1)[..10].to_vec()).await;
    let (b, _ub) = app.start_held_upload(png(4, 4, 2)[..10].to_vec()).await;
    let refused = app.upload_raw(png(4, 4, 3), "image/png").await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
    // Another user still gets in.
    let other = app.new_user("other").await;
    let response = app
        .client
        .post(app.url("/v1/images"))
        .bearer_auth(&other)
        .header("content-type", "image/png")
        .body(png(4, 4, 4))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    drop((a, b));
    // With its uploads done, the first client may upload again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = app.upload_raw(png(4, 4, 5), "image/png").await.status();
        if status == 201 {
            break;
        }
        assert_eq!(status, 429);
        assert!(Instant::now() < deadline, "the client's slots never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A token with `user`'s id half and `secret_of`'s secret half.
fn spliced(user: &str, secret_of: &str) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let user = URL_SAFE_NO_PAD.decode(user).unwrap();
    let secret = URL_SAFE_NO_PAD.decode(secret_of).unwrap();
    let mut token = user[..16].to_vec();
    token.extend_from_slice(&secret[16..]);
    URL_SAFE_NO_PAD.encode(token)
}

#[tokio::test]
async fn a_token_must_match_as_a_whole_even_while_its_session_is_cached() {
    let app = TestApp::spawn().await;
    let ann = app.new_user("ann").await;
    let bob = app.new_user("bob").await;
    let me = |token: &str| {
        app.client
            .get(app.url("/v1/users/me"))
            .bearer_auth(token)
            .send()
    };
    // Ann's session is now cached.
    assert_eq!(me(&ann).await.unwrap().status(), 200);
    let forged = spliced(&bob, &ann);
    assert_eq!(me(&forged).await.unwrap().status(), 401);
    let logout = app
        .client
        .delete(app.url("/v1/sessions"))
        .bearer_auth(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 401);
    // Nothing changed: both real sessions still work.
    let body: serde_json::Value = me(&ann).await.unwrap().json().await.unwrap();
    assert_eq!(body["username"], "ann");
    assert_eq!(me(&bob).await.unwrap().status(), 200);
}

#[tokio::test]
async fn every_answer_under_i_says_nosniff_and_echoes_little_of_the_name() {
    let app = TestApp::spawn().await;
    let image = app.upload_png(png(8, 8, 1)).await;
    let url = image["url"].as_str().unwrap();
    let long = format!("/i/{}<script>.png", "a".repeat(5000));
    for (path, range, status) in [
        (url.to_owned(), None, 200),
        (url.to_owned(), Some("bytes=0-3"), 206),
        (url.to_owned(), Some("bytes=99999-"), 416),
        (format!("/i/{}.png", "0".repeat(40)), None, 404),
        ("/i/nonsense".to_owned(), None, 404),
        (long, None, 404),
    ] {
        let mut request = app.client.get(app.url(&path));
        if let Some(range) = range {
            request = request.header("range", range);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{path}");
        assert_eq!(
            response.headers()["x-content-type-options"],
            "nosniff",
            "{path} {status}"
        );
        let body = response.bytes().await.unwrap();
        if status >= 400 {
            assert!(body.len() < 400, "a {status} body of {} bytes", body.len());
            assert!(!String::from_utf8_lossy(&body).contains("<script>"));
        }
    }
}

#[tokio::test]
async fn problem_details_stay_short_whatever_was_sent() {
    let app = TestApp::spawn().await;
    let long = "k".repeat(50_000);
    let unknown_field = format!(r#"{{"{long}": 1}}"#);
    for response in [
        app.get(&format!("/v1/events?from={long}")).await,
        app.client
            .post(app.url("/v1/users"))
            .header("content-type", "application/json")
            .body(unknown_field)
            .send()
            .await
            .unwrap(),
        // Not UTF-8 once decoded: a problem too, not axum's plain-text rejection.
        app.get("/i/%FF").await,
        app.get("/v1/images/%FF").await,
    ] {
        assert_eq!(response.status(), 400);
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let body = response.bytes().await.unwrap();
        assert!(body.len() < 600, "a problem of {} bytes", body.len());
    }
}

#[tokio::test]
async fn a_png_cut_anywhere_after_its_pixels_is_refused_too() {
    let app = TestApp::spawn().await;
    let whole = png(8, 8, 1);
    for cut in 1..=12 {
        let response = app
            .upload_raw(whole[..whole.len() - cut].to_vec(), "image/png")
            .await;
        assert_eq!(response.status(), 422, "cut {cut} bytes from the end");
    }
    assert!(app.files_under("images").is_empty());
    assert_eq!(app.upload_raw(whole, "image/png").await.status(), 201);
}

#[tokio::test]
async fn one_address_cannot_take_every_connection_when_capped() {
    let app = TestApp::spawn_with(|s| {
        s.http.max_connections_per_address = 5;
        s.http.header_read_timeout_secs = 30;
    })
    .await;
    // The server listens on 127.0.0.1; these clients come from 127.0.0.2.
    let from = |ip: [u8; 4]| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind((std::net::Ipv4Addr::from(ip), 0).into())
            .unwrap();
        socket.connect(app.addr).await.expect("connect")
    };
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(from([127, 0, 0, 2]).await);
    }
    let mut sixth = from([127, 0, 0, 2]).await;
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(2), sixth.read(&mut buf))
        .await
        .expect("the sixth connection was left hanging")
        .unwrap_or(0);
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 503"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    // Another address is served meanwhile.
    let mut other = from([127, 0, 0, 3]).await;
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let n = other.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // Once one of the first address's connections closes, it may open another.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = from([127, 0, 0, 2]).await;
        again
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let n = again.read(&mut buf).await.unwrap_or(0);
        if buf[..n].starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "the address's place never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
