//! The test harness: a real Corral on a random port with a fresh data dir, and a real
//! HTTP client, shared by every test module.

pub mod child;
pub mod smtp;

use std::io::Cursor;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use corral::App;
use corral::actors::Actors;
use corral::config::{Overrides, Settings};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The feeding end of a held upload's body.
pub type HeldBody = tokio::sync::mpsc::Sender<std::io::Result<Vec<u8>>>;

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub actors: Actors,
    pub store: corral::store::SharedStore,
    pub data_dir: TempDir,
    /// A session of the user every app signs up at start (`tester`).
    pub token: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), corral::AppError>>>,
}

impl TestApp {
    /// A server with the default settings on a fresh data dir.
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// A server whose settings `tweak` adjusts first.
    pub async fn spawn_with(tweak: impl FnOnce(&mut Settings)) -> Self {
        Self::spawn_in(TempDir::new().expect("temp dir"), tweak).await
    }

    /// A server on an existing data dir (to show what survives a restart).
    pub async fn spawn_in(data_dir: TempDir, tweak: impl FnOnce(&mut Settings)) -> Self {
        Self::spawn_on(data_dir, None, tweak).await
    }

    /// A second node over `first`'s store, as a node sharing one Scylla cluster would
    /// be: its own data dir (so its own `node.id`), server and actors.
    pub async fn spawn_sharing(first: &TestApp, tweak: impl FnOnce(&mut Settings)) -> Self {
        let dir = TempDir::new().expect("temp dir");
        Self::spawn_on(dir, Some(first.store.clone()), tweak).await
    }

    async fn spawn_on(
        data_dir: TempDir,
        store: Option<corral::store::SharedStore>,
        tweak: impl FnOnce(&mut Settings),
    ) -> Self {
        let overrides = Overrides {
            bind: Some("127.0.0.1:0".parse().unwrap()),
            data_dir: Some(data_dir.path().to_owned()),
        };
        let mut settings = Settings::load(None, &overrides).expect("default settings load");
        // Tests sign many users up and in; the tight default auth bucket has a test of
        // its own (and reads/writes/uploads keep their defaults).
        settings.rate_limits.auth.burst = 1000;
        // No variants made in the background (whatever the time of day) unless asked.
        settings.optimizer.window = corral::config::Window::Never;
        tweak(&mut settings);
        let listener = tokio::net::TcpListener::bind(settings.http.bind)
            .await
            .expect("bind");
        let addr = listener.local_addr().unwrap();
        let app = match store {
            Some(store) => App::start_sharing(settings, store).await,
            None => App::start(settings).await,
        }
        .expect("app starts");
        let actors = app.actors().clone();
        let store = app.store();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(app.serve(listener, async {
            let _ = stopped.await;
        }));
        let mut app = Self {
            addr,
            client: reqwest::Client::new(),
            actors,
            store,
            data_dir,
            token: String::new(),
            stop: Some(stop),
            task: Some(task),
        };
        // Like an orchestrator, wait for readiness (the sample fills in the background).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while app.get("/readyz").await.status() != 200 {
            assert!(
                std::time::Instant::now() < deadline,
                "the app never became ready"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // On a reused data dir the user exists already; signing up then answers 409.
        app.sign_up("tester").await;
        app.token = app.log_in("tester").await;
        app
    }

    /// POSTs `body` as JSON, anonymously.
    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// Signs up `<name>` with email `<name>@example.com` and password `password-<name>`.
    pub async fn sign_up(&self, name: &str) -> reqwest::Response {
        let body = serde_json::json!({"username": name, "email": format!("{name}@example.com"), "password": format!("password-{name}")});
        self.client
            .post(self.url("/v1/users"))
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    /// Logs `<name>` in (see `sign_up`) and returns the bearer token.
    pub async fn log_in(&self, name: &str) -> String {
        let body = serde_json::json!({"login": name, "password": format!("password-{name}")});
        let response = self
            .client
            .post(self.url("/v1/sessions"))
            .json(&body)
            .send()
            .await
            .expect("request");
        assert_eq!(
            response.status(),
            201,
            "log in as {name}: {}",
            response.text().await.unwrap()
        );
        let session: serde_json::Value = response.json().await.unwrap();
        session["token"].as_str().expect("token").to_owned()
    }

    /// Signs a new user up and returns its token.
    pub async fn new_user(&self, name: &str) -> String {
        assert_eq!(self.sign_up(name).await.status(), 201);
        self.log_in(name).await
    }

    /// Signs up `root`, makes it an admin through the store, and returns its token.
    pub async fn admin(&self) -> String {
        assert_eq!(self.sign_up("root").await.status(), 201);
        let before = self
            .store
            .find_user("root")
            .await
            .unwrap()
            .expect("root exists");
        let mut after = before.clone();
        after.admin = true;
        self.store.update_user(&before, &after).await.unwrap();
        self.log_in("root").await
    }

    /// Creates an event (as the admin `root`, made on first use) starting at `starts`;
    /// returns its id.
    pub async fn create_event(&self, title: &str, starts: chrono::DateTime<chrono::Utc>) -> String {
        let admin = match self.store.find_user("root").await.unwrap() {
            Some(_) => self.log_in("root").await,
            None => self.admin().await,
        };
        let response = self
            .client
            .post(self.url("/v1/events"))
            .bearer_auth(admin)
            .json(&serde_json::json!({
                "title": title,
                "description": "Bring a hat.",
                "topics": ["parade"],
                "starts_at": starts.to_rfc3339(),
                "ends_at": (starts + chrono::Duration::hours(2)).to_rfc3339(),
                "location": {"name": "Champ de Mars", "lat": 48.8556, "lon": 2.2986},
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        let body: serde_json::Value = response.json().await.unwrap();
        body["id"].as_str().unwrap().to_owned()
    }

    /// A request builder carrying the session `token`.
    pub fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
    ) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(token)
    }

    /// A request builder carrying the `tester` session.
    pub fn authed(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(&self.token)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Shuts the server down in order and hands back its data dir.
    /// Signals shutdown (as SIGTERM would) without waiting for it.
    pub fn request_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub async fn stop(mut self) -> TempDir {
        self.request_stop();
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("clean shutdown");
        }
        let dir = TempDir::new().unwrap();
        std::mem::replace(&mut self.data_dir, dir)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
    }

    /// Uploads `bytes` as a raw body with the given content type.
    pub async fn upload_raw(&self, bytes: Vec<u8>, content_type: &str) -> reqwest::Response {
        self.authed(reqwest::Method::POST, "/v1/images")
            .header("content-type", content_type)
            .body(bytes)
            .send()
            .await
            .expect("request")
    }

    /// Uploads a streamed PNG body (no Content-Length).
    pub async fn upload_body(&self, body: reqwest::Body) -> reqwest::Response {
        self.authed(reqwest::Method::POST, "/v1/images")
            .header("content-type", "image/png")
            .body(body)
            .send()
            .await
            .expect("request")
    }

    /// Starts a PNG upload whose body is fed by hand: send chunks on the returned sender,
    /// drop it to end the body. Returns once the server is streaming it to a temp file.
    pub async fn start_held_upload(
        &self,
        first: Vec<u8>,
    ) -> (HeldBody, JoinHandle<reqwest::Result<reqwest::Response>>) {
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(1);
        tx.send(Ok(first)).await.expect("first chunk");
        let body =
            futures_util::stream::unfold(rx, |mut rx| async { rx.recv().await.map(|c| (c, rx)) });
        let request = self
            .authed(reqwest::Method::POST, "/v1/images")
            .header("content-type", "image/png")
            .body(reqwest::Body::wrap_stream(body))
            .send();
        let upload = tokio::spawn(request);
        while self.files_under("tmp").is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        (tx, upload)
    }

    /// Uploads a PNG and returns the created image's JSON.
    pub async fn upload_png(&self, bytes: Vec<u8>) -> serde_json::Value {
        let response = self.upload_raw(bytes, "image/png").await;
        assert_eq!(
            response.status(),
            201,
            "upload refused: {}",
            response.text().await.unwrap()
        );
        response.json().await.unwrap()
    }

    /// Every regular file below `<data>/<sub>`.
    pub fn files_under(&self, sub: &str) -> Vec<PathBuf> {
        files_under(&self.data_dir.path().join(sub))
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The first of `names` found on PATH.
pub fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// An outside tool the tests check the server with (a validator, promtool), if it is on
/// PATH. Without it the test says so and passes, unless `REQUIRE_TOOLS=1` (which
/// `.ci/run` sets, after installing them) makes a missing tool a failure.
pub fn tool(name: &str, install: &str) -> Option<PathBuf> {
    let found = on_path(&[name]);
    if found.is_none() {
        let required = std::env::var("REQUIRE_TOOLS").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "REQUIRE_TOOLS=1 but {name} is not on PATH ({install})"
        );
        eprintln!("skipping a check by {name}: it is not on PATH ({install})");
    }
    found
}

/// The sum of the `/metrics` samples of `name` whose labels include `label`. The
/// recorder is one per process, so in-process tests compare before and after.
pub async fn metric(app: &TestApp, name: &str, label: &str) -> f64 {
    let text = app.get("/metrics").await.text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The ids `/v1/images/random?<query>` answers with, in order.
pub async fn random_ids(app: &TestApp, query: &str) -> Vec<String> {
    let response = app.get(&format!("/v1/images/random?{query}")).await;
    assert_eq!(response.status(), 200, "{query}");
    let body: serde_json::Value = response.json().await.unwrap();
    body["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Asserts `response` is a problem+json with `status` and a detail, and returns it.
pub async fn problem(response: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(response.status(), status);
    let ct = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(ct, "application/problem+json");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], status);
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
    body
}

pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// A real PNG whose pixels depend on `seed`, so different seeds give different content.
pub fn png(width: u32, height: u32, seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        let v = seed
            .wrapping_mul(2_654_435_761)
            .wrapping_add(x * 31 + y * 17);
        image::Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encode png");
    out.into_inner()
}

/// A real JPEG.
pub fn jpeg(width: u32, height: u32, seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x + seed) as u8, y as u8, seed as u8])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg)
        .expect("encode jpeg");
    out.into_inner()
}

/// A PNG chunk: length, type, data, CRC.
pub fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
    out
}

/// A small valid PNG whose IHDR is rewritten to claim `width` x `height` (a decompression
/// bomb's header: tiny file, huge canvas).
pub fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let real = png(1, 1, 7);
    // Signature (8) + IHDR length (4) + type (4) + data (13) + CRC (4).
    let mut ihdr = real[16..29].to_vec();
    ihdr[0..4].copy_from_slice(&width.to_be_bytes());
    ihdr[4..8].copy_from_slice(&height.to_be_bytes());
    let mut out = real[..8].to_vec();
    out.extend(png_chunk(b"IHDR", &ihdr));
    out.extend_from_slice(&real[33..]);
    out
}

pub fn sha1_hex(bytes: &[u8]) -> String {
    use sha1::Digest;
    hex::encode(sha1::Sha1::digest(bytes))
}
