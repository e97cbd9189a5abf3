//! The connection layer: accepts TCP connections and serves each with hyper's HTTP/1.1
//! server (upgrades included, for WebSockets), adding what `axum::serve` does not have:
//!
//! - a cap on open connections (`http.max_connections`, kept below the file-descriptor
//!   limit): past it a new connection is answered 503 at once and closed, instead of
//!   waiting in the kernel's backlog until every client times out; optionally a cap per
//!   client address too (`http.max_connections_per_address`);
//! - a header-read timeout (`http.header_read_timeout_secs`) counted from the
//!   connection's opening for its first request, and from the first byte of each later
//!   one, so a client that sends nothing or stalls mid-head (slowloris) is dropped;
//! - an idle timeout (`http.idle_timeout_secs`): a connection on which no byte moves
//!   either way for that long is closed (at once when no request is in flight, else after
//!   the response has had one more such period to move).
//!
//! hyper's own `header_read_timeout` is not used: it starts as soon as a keep-alive
//! connection waits for its next request, so it would also be the keep-alive timeout.
//! Each connection's task watches its socket's activity instead, waking only at the
//! deadlines it computes.

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::task::TaskTracker;
use tower::Service;

use crate::domain::{Held, Quota};

/// How often, at most, the shedding and accept-failure warnings are logged.
const LOG_EVERY_MS: u64 = 10_000;

/// The connection limits, from `[http]`.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// Open connections one client address may hold; 0: no cap.
    pub max_per_address: usize,
}

/// Serves `router` on `listener` until `stopping` turns true, then stops accepting, asks
/// every connection to finish its request in flight and close, and waits for them
/// (upgraded connections are not waited for: their own tasks watch for shutdown).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    stopping: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_address = Quota::default();
    let connections = TaskTracker::new();
    let mut shedding = Throttled::default();
    let mut failing = Throttled::default();
    let mut crowding = Throttled::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopped(stopping.clone()) => break,
        };
        let (tcp, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                // Out of file descriptors or memory: wait a little rather than spin.
                if let Some(n) = failing.note() {
                    tracing::error!(error = %e, failures = n, "accepting connections fails");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let address = match limits.max_per_address {
            0 => None,
            max => match per_address.admit(remote.ip(), max) {
                Some(held) => Some(held),
                None => {
                    metrics::counter!("corral_http_connections_shed_total", "reason" => "per_address")
                        .increment(1);
                    if let Some(n) = crowding.note() {
                        tracing::warn!(
                            address = %remote.ip(),
                            max_per_address = max,
                            shed = n,
                            "an address is at its connection cap: answering its new connections 503"
                        );
                    }
                    shed(&tcp);
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            metrics::counter!("corral_http_connections_shed_total", "reason" => "max_connections")
                .increment(1);
            if let Some(n) = shedding.note() {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    shed = n,
                    "at the connection limit: answering new connections 503"
                );
            }
            shed(&tcp);
            continue;
        };
        // Without TCP_NODELAY, a streamed body written after its headers waits on the
        // client's delayed ACK (~40 ms per response on keep-alive connections).
        let _ = tcp.set_nodelay(true);
        let io = Tracked::new(tcp, permit, address);
        connections.spawn(serve_connection(
            io,
            remote,
            router.clone(),
            limits,
            stopping.clone(),
        ));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Resolves once the server is stopping (or the flag's sender is gone).
async fn stopped(mut stopping: watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stopping| *stopping).await;
}

/// Accept errors that concern one connection only (it was reset before we took it).
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Answers a connection over the limit with 503 (as much as the socket takes without
/// waiting) and closes it.
fn shed(tcp: &TcpStream) {
    static RESPONSE: OnceLock<Vec<u8>> = OnceLock::new();
    let response = RESPONSE.get_or_init(|| {
        let body = r#"{"type":"about:blank","title":"Service Unavailable","status":503,"detail":"the server has too many open connections; retry shortly"}"#;
        format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\n\
             retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    });
    let _ = tcp.try_write(response);
}

async fn serve_connection(
    io: Tracked,
    remote: SocketAddr,
    router: Router,
    limits: ConnLimits,
    stopping: watch::Receiver<bool>,
) {
    let activity = io.activity.clone();
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let in_flight = InFlight::start(activity.clone());
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(ConnectInfo(remote));
            let response = router.clone().call(request);
            async move {
                let response = response.await?;
                Ok::<_, Infallible>(response.map(|body| Guarded {
                    body,
                    _in_flight: in_flight,
                }))
            }
        })
    };
    let mut conn = pin!(
        hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades()
    );
    let mut stopping = pin!(stopped(stopping));
    let mut timer = pin!(tokio::time::sleep_until(activity.deadline(limits).into()));
    let mut closing = false;
    loop {
        // The connection, shutdown and the watchdog's timer in one poll: reads happen
        // inside the connection's poll, so right after it the timer is moved earlier if
        // a request head has started (the common whole-head read never moves it).
        let event = std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                return Poll::Ready(Event::Ended(result));
            }
            if !closing && stopping.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Stop);
            }
            let deadline = tokio::time::Instant::from_std(activity.deadline(limits));
            if deadline < timer.deadline() {
                timer.as_mut().reset(deadline);
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Check);
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Ended(result) => {
                if let Err(e) = result {
                    tracing::trace!(error = %e, %remote, "connection ended with an error");
                }
                return;
            }
            Event::Stop => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            Event::Check => match activity.expired(limits) {
                None => {}
                Some(Expired::Head) => {
                    metrics::counter!("corral_http_connections_timed_out_total", "reason" => "header_read")
                        .increment(1);
                    return;
                }
                Some(Expired::Idle) if closing || activity.in_flight() == 0 => {
                    metrics::counter!("corral_http_connections_timed_out_total", "reason" => "idle")
                        .increment(1);
                    return;
                }
                Some(Expired::Idle) => {
                    // A response that does not move: let it finish if the client wakes up
                    // within one more period, then close.
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                    activity.touch();
                }
            },
        }
        timer.as_mut().reset(activity.deadline(limits).into());
    }
}

enum Event<E> {
    Ended(Result<(), E>),
    Stop,
    Check,
}

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Milliseconds since the first call, plus one (0 means "unset" below).
fn now_ms() -> u64 {
    u64::try_from(origin().elapsed().as_millis()).unwrap_or(u64::MAX / 2) + 1
}

/// The instant `now_ms` would call `ms`.
fn instant_at(ms: u64) -> Instant {
    let far = Instant::now() + Duration::from_secs(86_400);
    origin()
        .checked_add(Duration::from_millis(ms.saturating_sub(1)))
        .map_or(far, |at| at.min(far))
}

/// What a connection's watchdog knows of it.
struct Activity {
    /// When a byte last moved, either way.
    last: AtomicU64,
    /// When the request head being read was due from: the connection's opening, then the
    /// first byte of each later head; 0 between requests.
    head_since: AtomicU64,
    /// Requests whose response has not been sent in full.
    in_flight: AtomicUsize,
}

enum Expired {
    Head,
    Idle,
}

impl Activity {
    /// A new connection: its first request head is due within the header timeout of
    /// now, so a client that connects and sends nothing is not kept for the idle timeout.
    fn new() -> Self {
        let now = now_ms();
        Self {
            last: AtomicU64::new(now),
            head_since: AtomicU64::new(now),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        self.last.store(now_ms(), Ordering::Relaxed);
    }

    /// Bytes arrived: between requests they start a new request head.
    fn read(&self) {
        let now = now_ms();
        self.last.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            let _ = self
                .head_since
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The next moment one of the timeouts could expire.
    fn deadline(&self, limits: ConnLimits) -> Instant {
        let idle = self
            .last
            .load(Ordering::Relaxed)
            .saturating_add(millis(limits.idle_timeout));
        let head = match self.head_since.load(Ordering::Relaxed) {
            0 => u64::MAX,
            since => since.saturating_add(millis(limits.header_read_timeout)),
        };
        instant_at(idle.min(head))
    }

    fn expired(&self, limits: ConnLimits) -> Option<Expired> {
        let now = now_ms();
        let since = self.head_since.load(Ordering::Relaxed);
        if since != 0 && now >= since.saturating_add(millis(limits.header_read_timeout)) {
            return Some(Expired::Head);
        }
        (now >= self
            .last
            .load(Ordering::Relaxed)
            .saturating_add(millis(limits.idle_timeout)))
        .then_some(Expired::Idle)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2)
}

/// A request being answered; dropped when its response body is done.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.head_since.store(0, Ordering::Relaxed);
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// A response body that marks its request finished when hyper drops it.
struct Guarded {
    body: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A TCP stream that records when bytes move and holds the connection's place under
/// `http.max_connections` for as long as it is open (upgraded connections included).
struct Tracked {
    tcp: TcpStream,
    activity: Arc<Activity>,
    _slot: OwnedSemaphorePermit,
    _address: Option<Held<IpAddr>>,
}

impl Tracked {
    fn new(tcp: TcpStream, slot: OwnedSemaphorePermit, address: Option<Held<IpAddr>>) -> Self {
        metrics::gauge!("corral_http_connections").increment(1.0);
        Self {
            tcp,
            activity: Arc::new(Activity::new()),
            _slot: slot,
            _address: address,
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        metrics::gauge!("corral_http_connections").decrement(1.0);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.tcp).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.activity.read();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, buf))?;
        if n > 0 {
            self.activity.touch();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs))?;
        if n > 0 {
            self.activity.touch();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Counts events and says, at most every `LOG_EVERY_MS`, how many happened since.
#[derive(Default)]
struct Throttled {
    count: u64,
    last_log_ms: u64,
}

impl Throttled {
    fn note(&mut self) -> Option<u64> {
        self.count += 1;
        let now = now_ms();
        if self.last_log_ms != 0 && now < self.last_log_ms + LOG_EVERY_MS {
            return None;
        }
        self.last_log_ms = now;
        Some(std::mem::take(&mut self.count))
    }
}

/// Raises the soft limit on open files to the hard one and returns the limit in force.
pub fn raise_fd_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                // An unlimited hard limit is not a valid soft one for open files.
                rlim_cur: limit.rlim_max.min(1 << 20),
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Some(limit.rlim_cur)
}

/// The connection cap in force: `configured`, kept clear of the file-descriptor limit by
/// a quarter of it (at least 256) for the store, files being served or uploaded, mail and
/// the runtime.
pub fn connection_cap(configured: usize, fd_limit: Option<u64>) -> usize {
    let Some(fds) = fd_limit.and_then(|n| usize::try_from(n).ok()) else {
        return configured;
    };
    let reserve = (fds / 4).max(256);
    configured.min(fds.saturating_sub(reserve).max(1))
}
