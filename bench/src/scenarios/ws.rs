//! The `ws` scenario: WebSocket clients subscribed to `images`, and the fan-out latency
//! from each upload's send to its arrival at every client. Beside it, the uploads' own
//! latency (send to 201): a push leaves once its image is stored, so that is its floor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::{Sizes, admin_token, png, report};
use crate::load::{self, Conn, Mode, request};
use crate::report::{Measured, Report};
use crate::servers;

pub async fn ws(sizes: Sizes, command: &str) -> anyhow::Result<Report> {
    let mut report = report("ws", command);
    let corral = servers::corral(&[]).await?;
    let addr = corral.addr;
    let token = admin_token(addr).await?;
    let clients = sizes.ws_clients;
    let uploads = sizes.ws_uploads;

    // Connect and subscribe every client, 100 at a time.
    let url = format!("ws://{addr}/v1/ws");
    let sockets = futures_util::stream::iter(0..clients)
        .map(|_| subscribed(&url))
        .buffer_unordered(100)
        .collect::<Vec<anyhow::Result<_>>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()
        .context("connecting the WebSocket clients")?;

    // Each client records, per upload it hears of, the time from that upload's send.
    let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let pushes = Arc::new(Mutex::new(load::Tally::new()));
    let mut readers = Vec::with_capacity(clients);
    for mut ws in sockets {
        let (sent, pushes) = (sent.clone(), pushes.clone());
        readers.push(tokio::spawn(async move {
            let mut heard = 0usize;
            while heard < uploads {
                let Ok(Some(Ok(msg))) =
                    tokio::time::timeout(Duration::from_secs(30), ws.next()).await
                else {
                    break;
                };
                let Message::Text(text) = msg else { continue };
                let at = Instant::now();
                let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                let n = frame["data"]["tags"][0]
                    .as_str()
                    .and_then(|t| t.strip_prefix('b'))
                    .and_then(|n| n.parse::<u64>().ok());
                let Some(since) = n.and_then(|n| sent.lock().expect("sent").get(&n).copied())
                else {
                    continue;
                };
                let us = at.duration_since(since).as_micros().max(1) as u64;
                let mut tally = pushes.lock().expect("pushes");
                let _ = tally.latency_us.record(us);
                tally.ok += 1;
                heard += 1;
            }
            let _ = ws.close(None).await;
        }));
    }

    // Uploads at a steady rate, each timed from its intended send.
    let me = std::process::id();
    let (server_before, me_before) = (corral.cpu_seconds(), servers::proc_cpu(me));
    let started = Instant::now();
    let every = Duration::from_secs_f64(1.0 / sizes.ws_rate as f64);
    let mut conn = Conn::new(addr);
    let mut upload_tally = load::Tally::new();
    for n in 0..uploads as u64 {
        let intended = started + every * n as u32;
        tokio::time::sleep_until(intended.into()).await;
        sent.lock().expect("sent").insert(n, intended);
        let path = format!("/v1/images?tags=b{n}");
        let mut req = request(
            "POST",
            addr,
            &path,
            Some(&token),
            Bytes::from(png(n as usize)),
        );
        req.headers_mut()
            .insert("content-type", "image/png".parse().expect("header"));
        let out = conn.send(req).await;
        upload_tally.record(intended, &out);
    }
    let upload_span = started.elapsed();
    for reader in readers {
        let _ = reader.await;
    }
    let span = started.elapsed();
    let server_cpu = corral.cpu_seconds() - server_before;
    let my_cpu = servers::proc_cpu(me) - me_before;
    corral.stop().await;

    let mode = Mode::Open {
        connections: 1,
        rate: sizes.ws_rate,
    };
    let run = load::Run {
        tally: upload_tally,
        elapsed: upload_span,
    };
    report.results.push(Measured::of(
        "corral upload -> 201",
        mode,
        &run,
        server_cpu,
        my_cpu,
    ));
    let mut tally = std::mem::replace(&mut *pushes.lock().expect("pushes"), load::Tally::new());
    let expected = (clients * uploads) as u64;
    tally.errors = expected.saturating_sub(tally.ok);
    let received = tally.ok;
    let run = load::Run {
        tally,
        elapsed: span,
    };
    let label = format!("corral upload -> push at {clients} clients");
    report.results.push(Measured::of(
        &label,
        Mode::Open {
            connections: clients,
            rate: sizes.ws_rate,
        },
        &run,
        server_cpu,
        my_cpu,
    ));
    report.notes.push(format!(
        "{uploads} uploads at {}/s to {clients} subscribed clients: {received} of {expected} pushes received; req/s of the push row is pushes a second; CPU is for the whole run",
        sizes.ws_rate
    ));
    Ok(report)
}

/// How many idle connections `ws-idle` opens: the issue's figure, a third of the default
/// `ws.max_connections`.
pub const IDLE_CONNECTIONS: usize = 3000;

/// The `ws-idle` scenario: what an idle WebSocket costs the server. Opens `clients`
/// connections, each subscribed to `images` with nothing published, in two steps (a
/// third, then the rest); after each, waits until the server counts them all open
/// (`corral_ws_connections`) and reads its resident memory (VmRSS). (RSS at `clients` -
/// RSS at 0) / `clients` is the cost of one connection at rest; the same between the
/// third and all of them is the cost of one more, without the memory the server freed
/// while starting (which the first connections reuse).
pub async fn idle(clients: usize, command: &str) -> anyhow::Result<Report> {
    let mut report = report("ws-idle", command);
    // This process holds one socket per client; so does the server, which inherits the
    // limit. Say so now rather than fail with EMFILE halfway.
    let limit = open_files_limit().unwrap_or(u64::MAX);
    if limit < clients as u64 + 200 {
        bail!(
            "{clients} connections need more open files than the limit of {limit}; raise it first: ulimit -n $(ulimit -Hn)"
        );
    }
    let corral = servers::corral(&[]).await?;
    let addr = corral.addr;
    let pid = corral.pid().context("the server's pid")?;
    let mut metrics = Conn::new(addr);
    let url = format!("ws://{addr}/v1/ws");

    // Settle: the server is ready, nothing is connected.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_0 = servers::rss_mib(pid);

    let me = std::process::id();
    let (server_before, me_before) = (corral.cpu_seconds(), servers::proc_cpu(me));
    let mut tally = load::Tally::new();
    let mut sockets = Vec::with_capacity(clients);
    let mut connecting = Duration::ZERO;
    let third = clients / 3;
    let mut rss = Vec::new();
    for step in [third, clients - third] {
        let started = Instant::now();
        let connected = connect_all(&url, step, &mut tally).await;
        connecting += started.elapsed();
        match connected {
            Ok(more) => sockets.extend(more),
            Err(e) => {
                corral.stop().await;
                return Err(e);
            }
        }
        // Every connection counted open by the server, then a pause so nothing in flight
        // (the upgrade's HTTP state, the subscribe messages) is left to free.
        if let Err(e) = wait_for_open(&mut metrics, addr, sockets.len()).await {
            corral.stop().await;
            return Err(e);
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        rss.push(servers::rss_mib(pid));
    }
    let server_cpu = corral.cpu_seconds() - server_before;
    let my_cpu = servers::proc_cpu(me) - me_before;
    let (rss_third, rss_n) = (rss[0], rss[1]);
    let kib_each = |mib: f64, n: usize| mib * 1024.0 / n.max(1) as f64;

    // And once they are all gone again: what the allocator keeps.
    drop(sockets);
    let _ = wait_for_open(&mut metrics, addr, 0).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_closed = servers::rss_mib(pid);
    corral.stop().await;

    let run = load::Run {
        tally,
        elapsed: connecting,
    };
    report.results.push(Measured::of(
        "corral ws connect+subscribe",
        Mode::Closed { connections: 100 },
        &run,
        server_cpu,
        my_cpu,
    ));
    let ratios = [
        ("server RSS at 0 connections (MiB)".to_owned(), rss_0),
        (
            format!("server RSS at {third} idle connections (MiB)"),
            rss_third,
        ),
        (
            format!("server RSS at {clients} idle connections (MiB)"),
            rss_n,
        ),
        (
            format!(
                "server memory per idle connection, (RSS at {clients} - RSS at 0) / {clients} (KiB)"
            ),
            kib_each(rss_n - rss_0, clients),
        ),
        (
            format!("server memory per idle connection from {third} to {clients} (KiB)"),
            kib_each(rss_n - rss_third, clients - third),
        ),
        (
            format!("server RSS once the {clients} closed (MiB)"),
            rss_closed,
        ),
    ];
    report.ratios.extend(ratios);
    report.notes.push(format!(
        "{clients} WebSocket clients, 100 connecting at a time, each subscribed to images with nothing published; RSS is the server process's VmRSS, read 2 s after start-up and 3 s after the server counts {third}, then all {clients}, open (corral_ws_connections); the latency row is connect to subscription ack"
    ));
    Ok(report)
}

/// Connects `n` clients, 100 at a time, each subscribed to `images`; records each one's
/// time from connect to ack in `tally`.
async fn connect_all(url: &str, n: usize, tally: &mut load::Tally) -> anyhow::Result<Vec<Client>> {
    let outcomes = futures_util::stream::iter(0..n)
        .map(|_| async move {
            let since = Instant::now();
            let ws = subscribed(url).await;
            (since.elapsed(), ws)
        })
        .buffer_unordered(100)
        .collect::<Vec<_>>()
        .await;
    let mut sockets = Vec::with_capacity(n);
    let (mut failed, mut first_error) = (0, None);
    for (took, ws) in outcomes {
        let _ = tally
            .latency_us
            .record(took.as_micros().clamp(1, 60_000_000) as u64);
        match ws {
            Ok(ws) => {
                tally.ok += 1;
                sockets.push(ws);
            }
            Err(e) => {
                tally.errors += 1;
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        None => Ok(sockets),
        Some(e) => Err(e.context(format!(
            "{failed} of {n} WebSocket clients could not connect and subscribe"
        ))),
    }
}

/// Waits (up to a minute) until the server counts `n` open WebSockets.
async fn wait_for_open(
    conn: &mut Conn,
    addr: std::net::SocketAddr,
    n: usize,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let open = open_connections(conn, addr).await;
        if open == Some(n as f64) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the server counts {open:?} open WebSockets, not {n}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects and subscribes to `images`, waiting for the ack.
async fn subscribed(url: &str) -> anyhow::Result<Client> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    ws.send(Message::text(r#"{"op":"subscribe","topic":"images"}"#))
        .await?;
    match ws.next().await {
        Some(Ok(Message::Text(ack))) if ack.contains("subscribed") => Ok(ws),
        other => bail!("no subscription ack: {other:?}"),
    }
}

/// The server's `corral_ws_connections` gauge, from /metrics.
async fn open_connections(conn: &mut Conn, addr: std::net::SocketAddr) -> Option<f64> {
    let response = conn.send(load::get(addr, "/metrics")).await.ok()?;
    let text = std::str::from_utf8(response.body()).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("corral_ws_connections "))
        .and_then(|value| value.trim().parse().ok())
}

/// This process's soft limit on open files.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}
