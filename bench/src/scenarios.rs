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
    /// Arrival rates (uploads a second) of the uploads scenario, and at most this many
    /// uploads per rate.
    pub upload_rates: &'static [u64],
    pub uploads_per_rate: u64,
    /// Reminders, all due within `reminder_window` (one minute in the seed).
    pub reminders: usize,
    pub reminder_window: Duration,
    /// Image rows seeded for the scale scenario.
    pub scale_images: u64,
    /// WebSocket clients of the ws scenario, the uploads they hear of, and the uploads'
    /// rate (a second).
    pub ws_clients: usize,
    pub ws_uploads: usize,
    pub ws_rate: u64,
}

impl Sizes {
    pub fn default_run() -> Self {
        Self {
            duration: Duration::from_secs(10),
            images: 200,
            events: 500,
            connections: 256,
            event_levels: &[10, 100, 1000],
            upload_rates: &[10, 25, 50],
            uploads_per_rate: 500,
            reminders: 5_000,
            reminder_window: Duration::from_secs(60),
            scale_images: 1_000_000,
            ws_clients: 1000,
            ws_uploads: 100,
            ws_rate: 10,
        }
    }

    /// The seeds' sizes.
    pub fn full() -> Self {
        Self {
            duration: Duration::from_secs(30),
            images: 1000,
            events: 5000,
            upload_rates: &[50, 200, 1000],
            uploads_per_rate: 5_000,
            reminders: 100_000,
            scale_images: 10_000_000,
            ws_clients: 5000,
            ws_uploads: 150,
            ws_rate: 5,
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
            upload_rates: &[5],
            uploads_per_rate: 2,
            reminders: 5,
            reminder_window: Duration::from_secs(1),
            scale_images: 100,
            ws_clients: 3,
            ws_uploads: 2,
            ws_rate: 10,
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
pub(crate) async fn admin_token(addr: SocketAddr) -> anyhow::Result<String> {
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
pub(crate) fn png(n: usize) -> Vec<u8> {
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

pub(crate) fn report(scenario: &str, command: &str) -> Report {
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

/// A PNG of `side`² pixels of noise: about 3 bytes a pixel, as PNG cannot compress noise.
fn noise_png(side: u32, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let img = image::RgbImage::from_fn(side, side, |_, _| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        image::Rgb([x as u8, (x >> 8) as u8, (x >> 16) as u8])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encode a PNG in memory");
    out.into_inner()
}

/// `png` with a tEXt chunk naming `n` after its header: the same pixels, a new sha1.
fn tagged(png: &[u8], n: u64) -> Vec<u8> {
    const AFTER_IHDR: usize = 8 + 25;
    let mut data = b"bench\0".to_vec();
    data.extend_from_slice(n.to_string().as_bytes());
    let mut chunk = (data.len() as u32).to_be_bytes().to_vec();
    let mut body = b"tEXt".to_vec();
    body.extend_from_slice(&data);
    chunk.extend_from_slice(&body);
    chunk.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
    let mut out = png[..AFTER_IHDR].to_vec();
    out.extend_from_slice(&chunk);
    out.extend_from_slice(&png[AFTER_IHDR..]);
    out
}

/// Seed 002: uploads of 96 KB to 2.6 MB images in open loop at several rates, each one
/// distinct content; 503s (admission control) counted apart from errors. The reference
/// writes the same bytes to the same disk with an fsync per file.
pub async fn uploads(sizes: Sizes, command: &str) -> anyhow::Result<Report> {
    let mut report = report("uploads", command);
    // Sides from ~96 KB to ~2.6 MB of PNG.
    let sides: &[u32] = if sizes.uploads_per_rate < 10 {
        &[180, 240]
    } else {
        &[180, 300, 420, 540, 660, 780, 930]
    };
    let bases: Arc<Vec<Vec<u8>>> = Arc::new(
        sides
            .iter()
            .enumerate()
            .map(|(i, side)| noise_png(*side, i as u64 + 1))
            .collect(),
    );
    let mean = bases.iter().map(Vec::len).sum::<usize>() as f64 / bases.len() as f64;
    let count = sizes.uploads_per_rate.clamp(2, 500);
    let mut before = None;
    let corral = servers::corral(&[]).await?;
    let addr = corral.addr;
    let token = Arc::new(admin_token(addr).await?);
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let work: Work = {
        let bases = bases.clone();
        Arc::new(move |conn, i, intended, tally| {
            let (bases, token, counter) = (bases.clone(), token.clone(), counter.clone());
            Box::pin(async move {
                let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let body = tagged(&bases[i as usize % bases.len()], n);
                let mut req = request("POST", addr, "/v1/images", Some(&token), Bytes::from(body));
                req.headers_mut()
                    .insert("content-type", "image/png".parse().expect("header"));
                let out = conn.send(req).await;
                tally.record(intended, &out);
            })
        })
    };
    let mut best_mb_s = 0.0_f64;
    let closed = Mode::Closed {
        connections: 8.min(sizes.connections.max(1)),
    };
    let open = sizes.upload_rates.iter().map(|&rate| Mode::Open {
        connections: 64.min(sizes.connections.max(2)),
        rate,
    });
    for mode in open.chain([closed]) {
        let (label, rate) = match mode {
            Mode::Open { rate, .. } => (format!("corral, {rate} uploads/s offered"), rate),
            Mode::Closed { connections } => {
                // The disk's speed drifts from minute to minute on a shared machine, so
                // the reference runs right before and right after the closed loop it is
                // compared with (Corral sits idle meanwhile).
                before = Some(fsync_reference(&bases, count, "fsync'd file writes, before").await?);
                (format!("corral, closed loop x{connections}"), u64::MAX / 4)
            }
        };
        let per_rate = rate.saturating_mul(sizes.duration.as_secs().max(1));
        let total = Some(sizes.uploads_per_rate.min(per_rate));
        let me = std::process::id();
        let (server_before, me_before) = (corral.cpu_seconds(), servers::proc_cpu(me));
        let run = load::run(addr, mode, sizes.duration * 3, total, work.clone()).await;
        let m = Measured::of(
            &label,
            mode,
            &run,
            corral.cpu_seconds() - server_before,
            servers::proc_cpu(me) - me_before,
        );
        let mb_s = m.ok as f64 * mean / run.elapsed.as_secs_f64() / 1e6;
        best_mb_s = best_mb_s.max(mb_s);
        report.notes.push(format!(
            "{}: {:.1} MB/s stored ({} stored, {} refused with 503, {} errors)",
            m.target, mb_s, m.ok, m.unavailable, m.errors
        ));
        report.results.push(m);
    }
    corral.stop().await;

    // The reference: the same bytes, written and fsynced one file after another, before
    // and after the closed loop; the ratio is taken against the faster of the two.
    let after = fsync_reference(&bases, count, "fsync'd file writes, after").await?;
    let mut ref_mb_s = 0.0_f64;
    for (reference, mb_s) in before.into_iter().chain([after]) {
        report.notes.push(format!(
            "{}: {mb_s:.1} MB/s ({count} files)",
            reference.target
        ));
        report.results.push(reference);
        ref_mb_s = ref_mb_s.max(mb_s);
    }
    if ref_mb_s > 0.0 {
        report.ratios.push((
            "best corral MB/s / faster fsync'd write MB/s".into(),
            best_mb_s / ref_mb_s,
        ));
    }
    report.notes.push(format!(
        "offered {} uploads/s (open loop), then as fast as 8 connections go (closed loop); each upload a distinct PNG, {:.0} KB on average ({} to {} KB), fully decoded to be checked",
        sizes.upload_rates.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", "),
        mean / 1024.0,
        bases.iter().map(Vec::len).min().unwrap_or(0) / 1024,
        bases.iter().map(Vec::len).max().unwrap_or(0) / 1024,
    ));
    Ok(report)
}

/// Writes `count` of the upload bodies to fresh files, one after another, each fsynced:
/// what the disk can store without Corral. Returns the measurement and its MB/s.
async fn fsync_reference(
    bases: &Arc<Vec<Vec<u8>>>,
    count: u64,
    label: &str,
) -> anyhow::Result<(Measured, f64)> {
    let dir = tempfile::TempDir::new()?;
    let mean = bases.iter().map(Vec::len).sum::<usize>() as f64 / bases.len() as f64;
    let me_before = servers::proc_cpu(std::process::id());
    let (bases, dir_path) = (bases.clone(), dir.path().to_owned());
    let (tally, elapsed) = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut tally = load::Tally::new();
        let start = Instant::now();
        for n in 0..count {
            let t = Instant::now();
            let bytes = tagged(&bases[n as usize % bases.len()], n);
            let path = dir_path.join(format!("{n}.png"));
            let written = std::fs::File::create(&path).and_then(|mut f| {
                f.write_all(&bytes)?;
                f.sync_all()
            });
            let outcome = written
                .map(|()| hyper::Response::new(Bytes::new()))
                .map_err(anyhow::Error::from);
            tally.record(t, &outcome);
        }
        (tally, start.elapsed())
    })
    .await?;
    let run = load::Run { tally, elapsed };
    let me_cpu = servers::proc_cpu(std::process::id()) - me_before;
    let reference = Measured::of(label, Mode::Closed { connections: 1 }, &run, 0.0, me_cpu);
    let mb_s = reference.ok as f64 * mean / elapsed.as_secs_f64() / 1e6;
    Ok((reference, mb_s))
}

/// Seed 003: reminders all due within one minute, delivered by SMTP to a sink on
/// loopback; lateness is from each reminder's time to the sink accepting its mail.
pub async fn reminders(sizes: Sizes, command: &str) -> anyhow::Result<Report> {
    use std::collections::HashMap;
    use std::sync::Mutex;

    let mut report = report("reminders", command);
    let sink = crate::smtp::SmtpSink::start().await;
    let env = [
        ("CORRAL_MAIL__TRANSPORT", "smtp".to_owned()),
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

/// Seed 001: millions of image rows (seeded with `corral seed`'s code, straight through
/// the store), then `GET /v1/images/{id}` latency and the server's resident memory.
pub async fn scale(sizes: Sizes, command: &str) -> anyhow::Result<Report> {
    use corral::config::{Overrides, Settings};

    let mut report = report("scale", command);
    let dir = tempfile::TempDir::new()?;
    let overrides = Overrides {
        bind: None,
        data_dir: Some(dir.path().to_owned()),
    };
    let settings = Settings::load(None, &overrides)?;
    let t = Instant::now();
    corral::seed::seed(&settings, sizes.scale_images, 0).await?;
    let seeded_in = t.elapsed();
    let t = Instant::now();
    let corral = servers::corral_in(dir, &[]).await?;
    let ready_in = t.elapsed();
    let addr = corral.addr;
    let (status, sample) = json_call(
        addr,
        "GET",
        "/v1/images/random?count=100",
        None,
        Value::Null,
    )
    .await?;
    if status != 200 {
        bail!("/random answered {status}");
    }
    let paths: Vec<String> = sample["images"]
        .as_array()
        .context("images")?
        .iter()
        .filter_map(|i| i["id"].as_str().map(|id| format!("/v1/images/{id}")))
        .collect();
    if paths.is_empty() {
        bail!("no images in the sample: {sample}");
    }
    let mode = Mode::Closed {
        connections: sizes.connections.min(64),
    };
    report.results.push(
        measure(
            &corral,
            "corral GET /v1/images/{id}",
            mode,
            &sizes,
            load::gets(paths),
        )
        .await,
    );
    let rss = corral.pid().map_or(0.0, servers::rss_mib);
    corral.stop().await;
    report.notes.push(format!(
        "{} image rows seeded in {:.1?} ({:.0}/s); ready (random sample filled) {:.1?} after start; server RSS after the run {rss:.0} MiB",
        sizes.scale_images,
        seeded_in,
        sizes.scale_images as f64 / seeded_in.as_secs_f64(),
        ready_in,
    ));
    Ok(report)
}
