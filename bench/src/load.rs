//! The load generator: keep-alive HTTP/1.1 connections (hyper), each sending one request
//! at a time. Closed loop: every connection sends as fast as answers come. Open loop: a
//! fixed arrival rate; each request has an intended send time and its latency counts
//! from then, so a stalled server shows up as latency (no coordinated omission).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How requests are paced.
#[derive(Debug, Clone, Copy, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum Mode {
    Closed { connections: usize },
    Open { connections: usize, rate: u64 },
}

impl Mode {
    pub fn connections(self) -> usize {
        match self {
            Mode::Closed { connections } | Mode::Open { connections, .. } => connections,
        }
    }
}

/// One connection to the target.
pub struct Conn {
    addr: std::net::SocketAddr,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    pub fn new(addr: std::net::SocketAddr) -> Self {
        Self { addr, sender: None }
    }

    async fn sender(&mut self) -> anyhow::Result<&mut SendRequest<Full<Bytes>>> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let tcp = TcpStream::connect(self.addr).await?;
            tcp.set_nodelay(true)?;
            let (sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(connection);
            self.sender = Some(sender);
        }
        self.sender.as_mut().context("no connection")
    }

    /// Sends a request and reads the whole response.
    pub async fn send(&mut self, request: Request<Full<Bytes>>) -> anyhow::Result<Response<Bytes>> {
        let sender = self.sender().await?;
        sender.ready().await?;
        let response = match sender.send_request(request).await {
            Ok(r) => r,
            Err(e) => {
                self.sender = None;
                return Err(e.into());
            }
        };
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Response::from_parts(parts, body))
    }
}

pub fn get(addr: std::net::SocketAddr, path: &str) -> Request<Full<Bytes>> {
    request("GET", addr, path, None, Bytes::new())
}

pub fn request(
    method: &str,
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
    body: Bytes,
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    if !body.is_empty() {
        builder = builder.header("content-type", "application/json");
    }
    builder.body(Full::new(body)).expect("a valid request")
}

/// What one worker saw.
pub struct Tally {
    pub latency_us: Histogram<u64>,
    pub ok: u64,
    /// 503s: the server shedding load, counted apart from errors.
    pub unavailable: u64,
    pub errors: u64,
}

impl Tally {
    pub fn new() -> Self {
        Self {
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
            ok: 0,
            unavailable: 0,
            errors: 0,
        }
    }

    /// Records one answer (or failure) whose latency counts from `since`.
    pub fn record(&mut self, since: Instant, outcome: &anyhow::Result<Response<Bytes>>) {
        let us = since.elapsed().as_micros().clamp(1, 60_000_000) as u64;
        let _ = self.latency_us.record(us);
        match outcome {
            Ok(r) if r.status().is_success() || r.status().is_redirection() => self.ok += 1,
            Ok(r) if r.status() == 503 => self.unavailable += 1,
            _ => self.errors += 1,
        }
    }

    fn merge(&mut self, other: Tally) {
        let _ = self.latency_us.add(&other.latency_us);
        self.ok += other.ok;
        self.unavailable += other.unavailable;
        self.errors += other.errors;
    }
}

/// A unit of work: one request, or a short sequence (POST, then PATCH, then DELETE).
/// It gets its connection, its index, when it was meant to start, and the tally.
pub type Work = Arc<
    dyn for<'a> Fn(&'a mut Conn, u64, Instant, &'a mut Tally) -> futures::BoxFuture<'a, ()>
        + Send
        + Sync,
>;

pub mod futures {
    pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
}

/// The result of one run.
pub struct Run {
    pub tally: Tally,
    pub elapsed: Duration,
}

/// Runs `work` against `addr` for `duration` (or `total` units of work, whichever ends
/// first) in the given mode.
pub async fn run(
    addr: std::net::SocketAddr,
    mode: Mode,
    duration: Duration,
    total: Option<u64>,
    work: Work,
) -> Run {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = Vec::new();
    for _ in 0..mode.connections() {
        let (next, work) = (next.clone(), work.clone());
        workers.push(tokio::spawn(async move {
            let mut conn = Conn::new(addr);
            let mut tally = Tally::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if total.is_some_and(|t| i >= t) {
                    break;
                }
                let intended = match mode {
                    Mode::Closed { .. } => Instant::now(),
                    Mode::Open { rate, .. } => {
                        start + Duration::from_secs_f64(i as f64 / rate.max(1) as f64)
                    }
                };
                if intended >= deadline || Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep_until(intended.into()).await;
                work(&mut conn, i, intended, &mut tally).await;
            }
            tally
        }));
    }
    let mut tally = Tally::new();
    for worker in workers {
        if let Ok(t) = worker.await {
            tally.merge(t);
        }
    }
    Run {
        tally,
        elapsed: start.elapsed(),
    }
}

/// Work that GETs `paths` in turn.
pub fn gets(paths: Vec<String>) -> Work {
    let paths = Arc::new(paths);
    Arc::new(move |conn, i, intended, tally| {
        let paths = paths.clone();
        Box::pin(async move {
            let path = &paths[i as usize % paths.len()];
            let addr = conn.addr;
            let outcome = conn.send(get(addr, path)).await;
            tally.record(intended, &outcome);
        })
    })
}
