//! The seeds' load scenarios. Each starts what it measures on loopback, seeds it, runs the
//! load against Corral and a reference side by side, and returns the report.

use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::load::{self, Conn, Mode, Work, request};
use crate::report::{Measured, Report, machine};
use crate::servers::{self, ADMIN, Server};

/// Sizes for one invocation.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub duration: Duration,
    pub images: usize,
    pub events: usize,
    /// Connections for the read scenarios.
    pub connections: usize,
    /// Connection levels of the events scenario.
    pub event_levels: &'static [usize],
}

impl Sizes {
    pub fn default_run() -> Self {
        Self {
            duration: Duration::from_secs(10),
            images: 200,
            events: 500,
            connections: 256,
            event_levels: &[10, 100, 1000],
        }
    }

    /// The seeds' sizes.
    pub fn full() -> Self {
        Self {
            duration: Duration::from_secs(30),
            images: 1000,
            events: 5000,
            ..Self::default_run()
        }
    }

    /// Just enough to show every step works (the smoke test).
    pub fn smoke() -> Self {
        Self {
            duration: Duration::from_millis(300),
            images: 3,
            events: 3,
            connections: 2,
            event_levels: &[2],
        }
    }
}

async fn json_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> anyhow::Result<(u16, Value)> {
    let mut conn = Conn::new(addr);
    let body = if body.is_null() {
        Bytes::new()
    } else {
        Bytes::from(body.to_string())
    };
    let response = conn.send(request(method, addr, path, token, body)).await?;
    let status = response.status().as_u16();
    let value = serde_json::from_slice(response.body()).unwrap_or(Value::Null);
    Ok((status, value))
}

/// Signs the bench admin in; returns the token.
async fn admin_token(addr: SocketAddr) -> anyhow::Result<String> {
    let (status, body) = json_call(
        addr,
        "POST",
        "/v1/sessions",
        None,
        json!({"login": ADMIN.0, "password": ADMIN.1}),
    )
    .await?;
    if status != 201 {
        bail!("admin login answered {status}: {body}");
    }
    body["token"].as_str().map(String::from).context("no token")
}

/// A distinct small PNG per `n` (a gradient keyed by n).
fn png(n: usize) -> Vec<u8> {
    let img = image::RgbImage::from_fn(48, 48, |x, y| {
        image::Rgb([
            (x as usize * 5 + n) as u8,
            (y as usize * 5) as u8,
            (n / 256) as u8,
        ])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encode a PNG in memory");
    out.into_inner()
}

/// Uploads `count` distinct images; returns their names.
async fn seed_images(addr: SocketAddr, token: &str, count: usize) -> anyhow::Result<Vec<String>> {
    let mut conn = Conn::new(addr);
    let mut names = Vec::with_capacity(count);
    for n in 0..count {
        let mut req = request("POST", addr, "/v1/images", Some(token), Bytes::from(png(n)));
        req.headers_mut()
            .insert("content-type", "image/png".parse().expect("header"));
        let response = conn.send(req).await?;
        if response.status() != 201 {
            bail!("seeding an image answered {}", response.status());
        }
        let body: Value = serde_json::from_slice(response.body())?;
        names.push(body["name"].as_str().context("image name")?.to_owned());
    }
    Ok(names)
}

/// Runs `work` against `server`, measuring both processes' CPU.
async fn measure(server: &Server, label: &str, mode: Mode, sizes: &Sizes, work: Work) -> Measured {
    let me = std::process::id();
    let (server_before, me_before) = (server.cpu_seconds(), servers::proc_cpu(me));
    let run = load::run(server.addr, mode, sizes.duration, None, work).await;
    let server_cpu = server.cpu_seconds() - server_before;
    let my_cpu = servers::proc_cpu(me) - me_before;
    Measured::of(label, mode, &run, server_cpu, my_cpu)
}

fn report(scenario: &str, command: &str) -> Report {
    Report {
        scenario: scenario.into(),
        started_at: chrono::Utc::now().to_rfc3339(),
        machine: machine(),
        command: command.into(),
        results: Vec::new(),
        ratios: Vec::new(),
        notes: Vec::new(),
    }
}

fn ratio(report: &mut Report, a: usize, b: usize, what: &str) {
    let (x, y) = (&report.results[a], &report.results[b]);
    if y.rps > 0.0 {
        let name = format!("{} / {} ({what})", x.target, y.target);
        let value = x.rps / y.rps;
        report.ratios.push((name, value));
    }
}

/// Seed 000: `GET /v1/images/random?count=25`, against a bare axum handler answering the
/// same bytes from memory.
pub async fn random(sizes: Sizes, command: &str) -> anyhow::Result<Report> {
    let mut report = report("random", command);
    let corral = servers::corral(&[]).await?;
    let token = admin_token(corral.addr).await?;
    seed_images(corral.addr, &token, sizes.images).await?;
    let path = "/v1/images/random?count=25";
    let sample = Conn::new(corral.addr)
        .send(load::get(corral.addr, path))
        .await?;
    let body_file = tempfile::NamedTempFile::new()?;
    std::fs::write(body_file.path(), sample.body())?;
    let mode = Mode::Closed {
        connections: sizes.connections,
    };
    let work = load::gets(vec![path.to_owned()]);
    report
        .results
        .push(measure(&corral, "corral", mode, &sizes, work.clone()).await);
    // Open loop at a fixed rate, latency from each request's intended send time.
    let rate = if sizes.connections > 16 { 5000 } else { 100 };
    let open = Mode::Open {
        connections: sizes.connections,
        rate,
    };
    let label = format!("corral, open loop {rate}/s");
    report
        .results
        .push(measure(&corral, &label, open, &sizes, work.clone()).await);
    corral.stop().await;

    let reference = servers::reference(body_file.path(), "application/json").await?;
    report
        .results
        .push(measure(&reference, "bare axum handler", mode, &sizes, work).await);
    reference.stop().await;
    ratio(&mut report, 0, 2, "req/s");
    report.notes.push(format!(
        "{} images seeded; {} connections, closed loop, {:?} each; server and generator share the machine",
        sizes.images, sizes.connections, sizes.duration
    ));
    Ok(report)
}

/// `GET /i/{name}` of seeded images, against nginx serving the same files.
pub async fn files(sizes: Sizes, command: &str) -> anyhow::Result<Report> {
    let mut report = report("files", command);
    let corral = servers::corral(&[]).await?;
    let token = admin_token(corral.addr).await?;
    let names = seed_images(corral.addr, &token, sizes.images).await?;
    let paths: Vec<String> = names.iter().map(|n| format!("/i/{n}")).collect();
    let connections = sizes.connections.min(64);
    let mode = Mode::Closed { connections };
    let work = load::gets(paths);
    report
        .results
        .push(measure(&corral, "corral", mode, &sizes, work.clone()).await);
    let images = corral
        .data_dir
        .as_ref()
        .map(|d| d.path().join("images"))
        .context("corral's data dir")?;
    match servers::nginx_binary() {
        Some(binary) => {
            let work_dir = tempfile::TempDir::new()?;
            let nginx = servers::nginx(&binary, &images, work_dir.path()).await?;
            report
                .results
                .push(measure(&nginx, "nginx", mode, &sizes, work).await);
            nginx.stop().await;
            ratio(&mut report, 0, 1, "req/s");
        }
        None => report.notes.push(
            "nginx is not installed (apt-get install nginx-light), so there is no reference".into(),
        ),
    }
    corral.stop().await;
    report.notes.push(format!(
        "{} images of ~{} bytes; {connections} connections, closed loop, {:?} each",
        sizes.images,
        png(0).len(),
        sizes.duration
    ));
    Ok(report)
}

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
