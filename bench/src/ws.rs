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

use crate::load::{self, Conn, Mode, request};
use crate::report::{Measured, Report};
use crate::scenarios::{Sizes, admin_token, png, report};
use crate::servers;

pub async fn ws(sizes: Sizes, command: &str) -> anyhow::Result<Report> {
    let mut report = report("ws", command);
    let corral = servers::corral(&[("CORRAL_RATE_LIMITS__ENABLED", "false".to_owned())]).await?;
    let addr = corral.addr;
    let token = admin_token(addr).await?;
    let clients = sizes.ws_clients;
    let uploads = sizes.ws_uploads;

    // Connect and subscribe every client, 100 at a time.
    let url = format!("ws://{addr}/v1/ws");
    let sockets = futures_util::stream::iter(0..clients)
        .map(|_| {
            let url = url.clone();
            async move {
                let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
                ws.send(Message::text(r#"{"op":"subscribe","topic":"images"}"#))
                    .await?;
                match ws.next().await {
                    Some(Ok(Message::Text(ack))) if ack.contains("subscribed") => Ok(ws),
                    other => bail!("no subscription ack: {other:?}"),
                }
            }
        })
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
