//! Supervision, metrics, health and readiness, through a real server.

use std::time::{Duration, Instant};

use crate::common::{TestApp, png};
use chrono::Utc;
use corral::actors::ImagePoolMsg;
use corral::domain::{Image, ImageFormat, ImageId, Tags};
use prometheus_parse::{Scrape, Value};

async fn scrape(app: &TestApp) -> Scrape {
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("valid Prometheus text exposition")
}

/// The metrics recorder is global to this process, so tests that crash actors take turns:
/// each then sees exactly its own restarts in `corral_actor_restarts_total`.
static CRASH_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn value(scrape: &Scrape, metric: &str, label: (&str, &str)) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && s.labels.get(label.0) == Some(label.1))
        .find_map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            _ => None,
        })
}

#[tokio::test]
async fn a_panicking_image_pool_is_restarted_with_its_sample_rebuilt_from_the_store() {
    let _turn = CRASH_TURN.lock().await;
    let app = TestApp::spawn().await;
    for seed in 0..3 {
        app.upload_png(png(5, 5, 300 + seed)).await;
    }
    // A row the pool never heard of, as if another node had written it.
    let foreign = Image {
        id: ImageId::new(),
        name: format!("{}.png", "f".repeat(40)),
        sha1: "f".repeat(40),
        format: ImageFormat::Png,
        width: 1,
        height: 1,
        bytes: 1,
        tags: Tags::default(),
        owner: None,
        blurhash: None,
        created_at: Utc::now(),
        draft: None,
    };
    app.store.insert_image(&foreign).await.unwrap();
    let restarts_before = value(
        &scrape(&app).await,
        "corral_actor_restarts_total",
        ("actor", "image_pool"),
    )
    .unwrap_or(0.0);

    let old = app.actors.image_pool.get().expect("image_pool runs");
    old.cast(ImagePoolMsg::Crash).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let new = loop {
        match app.actors.image_pool.get() {
            Some(new) if new.get_id() != old.get_id() => break new,
            _ if Instant::now() > deadline => panic!("image_pool was not restarted"),
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    // The new actor rebuilds the sample from the store, the foreign row included.
    while app.actors.sample.len() != 4 {
        assert!(
            Instant::now() < deadline,
            "the sample was not rebuilt from the store"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let all: serde_json::Value = app
        .get("/v1/images/random?count=100")
        .await
        .json()
        .await
        .unwrap();
    assert!(
        all["images"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["id"] == foreign.id.to_string())
    );

    // The new actor keeps working, and the restart was counted.
    app.upload_png(png(5, 5, 399)).await;
    assert_eq!(app.actors.sample.len(), 5);
    assert!(
        app.actors
            .image_pool
            .get()
            .is_some_and(|r| r.get_id() == new.get_id())
    );
    let restarts = value(
        &scrape(&app).await,
        "corral_actor_restarts_total",
        ("actor", "image_pool"),
    )
    .unwrap();
    assert_eq!(restarts, restarts_before + 1.0);
    assert_eq!(app.get("/readyz").await.status(), 200);
}

#[tokio::test]
async fn metrics_are_valid_prometheus_text_with_the_server_s_series() {
    let app = TestApp::spawn().await;
    app.upload_png(png(9, 9, 400)).await;
    assert_eq!(
        app.upload_raw(b"%PDF-1.4".to_vec(), "image/png")
            .await
            .status(),
        415
    );
    app.get("/v1/images/random?count=3").await;
    let scrape = scrape(&app).await;

    let requests = value(
        &scrape,
        "corral_http_requests_total",
        ("route", "/v1/images/random"),
    )
    .unwrap();
    assert!(requests >= 1.0);
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "corral_http_requests_total"
                && s.labels.get("route") == Some("/v1/images")
                && s.labels.get("status") == Some("201"))
    );
    let histogram = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "corral_http_request_duration_seconds"
                && s.labels.get("route") == Some("/v1/images/random")
        })
        .expect("latency histogram");
    assert!(
        matches!(histogram.value, Value::Histogram(_)),
        "{:?}",
        histogram.value
    );
    assert!(value(&scrape, "corral_uploads_total", ("outcome", "created")).unwrap() >= 1.0);
    assert!(value(&scrape, "corral_uploads_total", ("outcome", "unsupported")).unwrap() >= 1.0);
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "corral_upload_bytes_total")
    );
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "corral_reservoir_size")
    );
    assert!(value(&scrape, "corral_actor_restarts_total", ("actor", "uploads")).is_some());
}

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = TestApp::spawn().await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    let ready: serde_json::Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["status"], "ready");
}

#[tokio::test]
async fn a_child_that_exhausts_its_restart_budget_stays_down_and_readiness_says_so() {
    let _turn = CRASH_TURN.lock().await;
    let app = TestApp::spawn_with(|s| s.actors.max_restarts = 1).await;
    for round in 0..2 {
        let old = app.actors.image_pool.get().expect("image_pool runs");
        old.cast(ImagePoolMsg::Crash).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let current = app.actors.image_pool.get();
            let restarted = current.as_ref().is_some_and(|r| r.get_id() != old.get_id());
            if (round == 0 && restarted) || (round == 1 && current.is_none()) {
                break;
            }
            assert!(Instant::now() < deadline, "round {round}: unexpected state");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 503);
    // Only that child is down: uploads still work.
    app.upload_png(png(5, 5, 450)).await;
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    // Liveness is about the process, which still answers.
    assert_eq!(app.get("/healthz").await.status(), 200);
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_upload_finish_and_then_closes_the_store() {
    let mut app = TestApp::spawn().await;
    let bytes = png(16, 16, 500);
    let (tx, upload) = app.start_held_upload(bytes[..10].to_vec()).await;

    app.request_stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // New connections are refused once shutdown starts...
    assert!(tokio::net::TcpStream::connect(app.addr).await.is_err());
    // ...but the upload already under way completes.
    tx.send(Ok(bytes[10..].to_vec())).await.unwrap();
    drop(tx);
    let response = upload.await.unwrap().unwrap();
    assert_eq!(response.status(), 201);
    let dir = app.stop().await;

    // The store was closed cleanly: it reopens with the upload in it.
    let store = corral::store::EmbeddedStore::open(dir.path()).unwrap();
    use corral::store::ImageStore;
    assert_eq!(store.scan_images(None, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn promtool_finds_nothing_to_warn_about_and_dashboards_have_their_series_from_the_start() {
    // The real binary: the recorder is one per process, and this one must be fresh.
    let dir = tempfile::tempdir().unwrap();
    let mut corral = crate::common::child::Corral::new(dir.path());
    let server = corral.start().await;
    let client = crate::common::child::client();
    let scrape = || async {
        let response = client.get(server.url("/metrics")).send().await.unwrap();
        response.text().await.unwrap()
    };
    let fresh = scrape().await;
    // Before any such event: the series are there at 0, every metric has HELP, and the
    // process and build are described.
    for line in [
        "corral_rate_limited_total{class=\"auth\"} 0",
        "corral_uploads_total{outcome=\"too_slow\"} 0",
        "corral_mails_dead_total{kind=\"reminder\"} 0",
        "corral_ws_subscriptions{topic=\"images\"} 0",
        "corral_http_connections_shed_total{reason=\"per_address\"} 0",
        "corral_reminders_pending 0",
        "corral_file_cache_bytes 0",
        "corral_build_info{version=\"",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "# HELP corral_http_request_duration_seconds ",
    ] {
        assert!(fresh.contains(line), "no {line:?} in\n{fresh}");
    }
    let random = client
        .get(server.url("/v1/images/random"))
        .send()
        .await
        .unwrap();
    assert_eq!(random.status(), 200);
    let text = scrape().await;
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split(' ').nth(2).unwrap();
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no HELP"
        );
    }
    // The latency buckets start below a millisecond.
    assert!(
        text.contains("corral_http_request_duration_seconds_bucket{method=\"GET\",route=\"/v1/images/random\",le=\"0.00005\"}"),
        "{text}"
    );
    server.stop(std::time::Duration::from_secs(10)).await;

    let Some(promtool) = crate::common::tool("promtool", "apt-get install prometheus") else {
        return;
    };
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics ({}):\n{said}",
        out.status
    );
}
