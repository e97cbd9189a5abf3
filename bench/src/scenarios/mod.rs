//! The seeds' load scenarios. Each starts what it measures on loopback, seeds it, runs the
//! load against Corral and a reference side by side, and returns the report. One module per
//! scenario; what they share is here.

mod events;
mod reads;
mod reminders;
mod scale;
mod uploads;
mod variants;
pub mod ws;

pub use events::events;
pub use reads::{files, random};
pub use reminders::reminders;
pub use scale::scale;
pub use uploads::uploads;
pub use variants::variants;

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
    /// Originals the variants scenario makes a variant of.
    pub variant_sources: usize,
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
            variant_sources: 16,
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
            variant_sources: 64,
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
            variant_sources: 1,
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

/// A PNG of `side`² pixels of noise: about 3 bytes a pixel, as PNG cannot compress noise.
pub(crate) fn noise_png(side: u32, seed: u64) -> Vec<u8> {
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

/// Uploads `count` distinct images; returns their names.
async fn seed_images(addr: SocketAddr, token: &str, count: usize) -> anyhow::Result<Vec<String>> {
    upload_all(addr, token, (0..count).map(png)).await
}

/// Uploads `count` PNGs tagged `llama`, one in four also `alpaca` (for draws by tag).
async fn seed_tagged_images(addr: SocketAddr, token: &str, count: usize) -> anyhow::Result<()> {
    let mut conn = Conn::new(addr);
    for n in 0..count {
        let tags = if n % 4 == 0 { "llama,alpaca" } else { "llama" };
        let path = format!("/v1/images?tags={tags}");
        upload_one(&mut conn, addr, token, &path, png(n)).await?;
    }
    Ok(())
}

/// Uploads each PNG; returns their names.
async fn upload_all(
    addr: SocketAddr,
    token: &str,
    pngs: impl Iterator<Item = Vec<u8>>,
) -> anyhow::Result<Vec<String>> {
    let mut conn = Conn::new(addr);
    let mut names = Vec::new();
    for png in pngs {
        names.push(upload_one(&mut conn, addr, token, "/v1/images", png).await?);
    }
    Ok(names)
}

/// Uploads one PNG to `path`; returns its name.
async fn upload_one(
    conn: &mut Conn,
    addr: SocketAddr,
    token: &str,
    path: &str,
    png: Vec<u8>,
) -> anyhow::Result<String> {
    {
        let mut req = request("POST", addr, path, Some(token), Bytes::from(png));
        req.headers_mut()
            .insert("content-type", "image/png".parse().expect("header"));
        let response = conn.send(req).await?;
        if response.status() != 201 {
            bail!("seeding an image answered {}", response.status());
        }
        let body: Value = serde_json::from_slice(response.body())?;
        Ok(body["name"].as_str().context("image name")?.to_owned())
    }
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

/// Rounds of each side in a wrk comparison, alternating, so a drift of the machine's
/// speed falls on both.
const ROUNDS: usize = 3;

/// `corral` against `reference` with wrk, [`ROUNDS`] alternating rounds on `connections`
/// connections, asking each for its own paths (the same resources); records every round and the median of the rounds' throughput ratios,
/// and of their p99 ratios.
#[allow(clippy::too_many_arguments)]
async fn alternate(
    report: &mut Report,
    wrk: &std::path::Path,
    corral: &Server,
    (reference, name): (&Server, &str),
    what: &str,
    connections: usize,
    duration: Duration,
    (paths, reference_paths): (&[String], &[String]),
) -> anyhow::Result<()> {
    let (mut throughput, mut p99) = (Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        let label = |who: &str| format!("{who}, {what}, {connections} conns, round {round}");
        let c = crate::wrk::measure(wrk, corral, &label("corral"), connections, duration, paths)
            .await?;
        let r = crate::wrk::measure(
            wrk,
            reference,
            &label(name),
            connections,
            duration,
            reference_paths,
        )
        .await?;
        if r.rps > 0.0 && r.p99_ms > 0.0 {
            throughput.push(c.rps / r.rps);
            p99.push(c.p99_ms / r.p99_ms);
        }
        report.results.push(c);
        report.results.push(r);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    if let (Some(t), Some(p)) = (median(throughput), median(p99)) {
        report.ratios.push((
            format!("corral / {name}, {what}, {connections} conns (req/s, median of {ROUNDS})"),
            t,
        ));
        report.ratios.push((
            format!("corral / {name}, {what}, {connections} conns (p99, median of {ROUNDS})"),
            p,
        ));
    }
    Ok(())
}

fn ratio(report: &mut Report, a: usize, b: usize, what: &str) {
    let (x, y) = (&report.results[a], &report.results[b]);
    if y.rps > 0.0 {
        let name = format!("{} / {} ({what})", x.target, y.target);
        let value = x.rps / y.rps;
        report.ratios.push((name, value));
    }
}
