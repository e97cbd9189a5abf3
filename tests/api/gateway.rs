//! What the gateway layers do to every request: rate limits, request ids, CORS and
//! compression, through a real server.

use crate::common::{TestApp, metric, problem};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn a_burst_over_the_limit_gets_429_with_retry_after_and_the_limit_recovers() {
    let app = TestApp::spawn_with(|s| {
        s.rate_limits.reads.per_minute = 60;
        s.rate_limits.reads.burst = 5;
    })
    .await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..8 {
        let response = app.get("/v1/images/random").await;
        if response.status() == 429 {
            retry_after = Some(
                response.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap(),
            );
            problem(response, 429).await;
            statuses.push(429);
        } else {
            statuses.push(response.status().as_u16());
        }
    }
    assert_eq!(&statuses[..5], [200; 5]);
    assert!(statuses[5..].contains(&429), "{statuses:?}");
    let wait = retry_after.unwrap();
    assert!((1..=2).contains(&wait), "retry after {wait}s");
    // A signed-in user has a bucket of their own.
    assert_eq!(
        app.authed(Method::GET, "/v1/images/random")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Probes are never limited.
    assert_eq!(app.get("/readyz").await.status(), 200);
    tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
    assert_eq!(app.get("/v1/images/random").await.status(), 200);
}

/// Reads `/v1/images/random` as `forwarded_for` until refused; returns the statuses.
async fn reads_as(app: &TestApp, forwarded_for: &str, n: usize) -> Vec<reqwest::Response> {
    let mut responses = Vec::new();
    for _ in 0..n {
        let response = app
            .client
            .get(app.url("/v1/images/random"))
            .header("x-forwarded-for", forwarded_for)
            .send()
            .await
            .unwrap();
        responses.push(response);
    }
    responses
}

fn statuses(responses: &[reqwest::Response]) -> Vec<u16> {
    responses.iter().map(|r| r.status().as_u16()).collect()
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket() {
    let tight = |s: &mut corral::config::Settings| {
        s.rate_limits.reads.per_minute = 6;
        s.rate_limits.reads.burst = 3;
    };
    let app = TestApp::spawn_with(|s| {
        tight(s);
        s.http.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let first = reads_as(&app, "203.0.113.1", 4).await;
    assert_eq!(statuses(&first), [200, 200, 200, 429]);
    // The headers say which bucket applied and what is left of it.
    let h = first[0].headers();
    assert_eq!(h["ratelimit-policy"], r#""reads";q=3;w=30"#);
    assert_eq!(h["ratelimit"], r#""reads";r=2;t=10"#);
    let refused = first.into_iter().next_back().unwrap();
    let h = refused.headers().clone();
    assert_eq!(h["ratelimit-policy"], r#""reads";q=3;w=30"#);
    assert!(
        h["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with(r#""reads";r=0;t="#)
    );
    let wait: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=10).contains(&wait), "retry after {wait}");
    let body = problem(refused, 429).await;
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("reads") && detail.contains(&format!("wait {wait} s")),
        "{detail}"
    );
    // Another client behind the same proxy is not held back by the first one.
    assert_eq!(statuses(&reads_as(&app, "203.0.113.2", 1).await), [200]);
    // The right-most hop the proxy vouches for counts, not what the client claimed.
    assert_eq!(
        statuses(&reads_as(&app, "198.51.100.7, 203.0.113.1", 1).await),
        [429]
    );

    // Without trusted proxies the header is ignored: every client shares the peer's bucket.
    let app = TestApp::spawn_with(tight).await;
    let limited = || metric(&app, "corral_rate_limited_total", "class=\"reads\"");
    let before = limited().await;
    assert_eq!(
        statuses(&reads_as(&app, "203.0.113.1", 4).await),
        [200, 200, 200, 429]
    );
    assert_eq!(statuses(&reads_as(&app, "203.0.113.2", 1).await), [429]);
    assert!(limited().await >= before + 2.0, "counted by class");
}

#[tokio::test]
async fn request_ids_are_generated_or_echoed() {
    let app = TestApp::spawn().await;
    let generated = app.get("/healthz").await;
    let id = generated.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    // The id answered when the request carries `sent`.
    let answered = async |sent: &str| {
        let response = app
            .client
            .get(app.url("/healthz"))
            .header("x-request-id", sent)
            .send()
            .await
            .unwrap();
        response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(answered("trace-me-42").await, "trace-me-42");
    // Too long, or with spaces: replaced by a new one, not echoed.
    for unusable in ["x".repeat(129), "two words".to_owned()] {
        let id = answered(&unusable).await;
        assert_eq!(id.len(), 36, "a new UUID instead of {unusable:?}: {id}");
    }
    let longest = "y".repeat(128);
    assert_eq!(answered(&longest).await, longest);
}

#[tokio::test]
async fn login_attempts_are_limited_tighter_than_reads_by_default() {
    let defaults = corral::config::Settings::load(None, &Default::default())
        .unwrap()
        .rate_limits;
    assert!(
        defaults.auth.burst < defaults.reads.burst
            && defaults.auth.per_minute < defaults.reads.per_minute
    );
    let app = TestApp::spawn_with(|s| s.rate_limits.auth = defaults.auth).await;
    let attempt = || {
        app.client
            .post(app.url("/v1/sessions"))
            .json(&json!({"login": "tester", "password": "guess-guess"}))
            .send()
    };
    let mut statuses = Vec::new();
    for _ in 0..defaults.auth.burst + 1 {
        statuses.push(attempt().await.unwrap().status().as_u16());
    }
    // The harness's own sign-up and login drew from the same bucket first.
    let first_limited = statuses
        .iter()
        .position(|s| *s == 429)
        .expect("limited within the burst");
    assert!(
        first_limited >= 1 && statuses[..first_limited].iter().all(|s| *s == 401),
        "{statuses:?}"
    );
    assert!(
        statuses[first_limited..].iter().all(|s| *s == 429),
        "{statuses:?}"
    );
    // Reads from the same client are unaffected.
    assert_eq!(app.get("/v1/images/random").await.status(), 200);
}

#[tokio::test]
async fn cors_follows_the_configured_origins() {
    let app =
        TestApp::spawn_with(|s| s.http.cors_origins = vec!["https://app.example.org".into()]).await;
    let preflight = |origin: &'static str| {
        app.client
            .request(Method::OPTIONS, app.url("/v1/users/me"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let allowed = preflight("https://app.example.org").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example.org"
    );
    let refused = preflight("https://evil.example.com").await.unwrap();
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    // With no origins configured, no CORS headers at all.
    let closed = TestApp::spawn().await;
    let response = closed
        .client
        .get(closed.url("/healthz"))
        .header("origin", "https://app.example.org")
        .send()
        .await
        .unwrap();
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[tokio::test]
async fn json_responses_are_compressed_for_clients_that_accept_gzip() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .get(app.url("/openapi.json"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-encoding"], "gzip");
    let gz = response.bytes().await.unwrap();
    assert_eq!(&gz[..2], [0x1f, 0x8b], "a gzip stream");
    let plain = app.get("/openapi.json").await;
    assert!(plain.headers().get("content-encoding").is_none());
}
