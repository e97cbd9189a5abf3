//! What stands in front of every route: request ids, tracing, CORS, compression, metrics,
//! timeouts and rate limits.

use std::convert::Infallible;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use pin_project_lite::pin_project;
use tower::{Service, ServiceBuilder};
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::Instrument;
use tracing::instrument::Instrumented;

use super::client_ip::ClientIp;
use super::extract::bearer;
use super::{ApiError, AppState, ops};
use crate::config::{RateLimitSettings, Settings, TokenBucket};
use crate::domain::UserId;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The longest request id taken from a client; a longer one (or one with spaces or
/// control characters) is replaced, so logs and answers never carry a client's blob.
const MAX_REQUEST_ID: usize = 128;
/// The IETF httpapi rate-limit headers (draft-ietf-httpapi-ratelimit-headers).
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// Every this many requests, idle rate-limit buckets are dropped, bounding their memory.
const PRUNE_EVERY: u64 = 4096;

/// Wraps the routes (and, without compression, the image files' routes) in every
/// cross-cutting layer, as one stack: `Router::layer` boxes each
/// route's service once per call, and the router clones every box on every request, so
/// separate layers cost an allocation and a clone each per request instead of one.
///
/// The two ends of the stack are written here rather than taken from tower-http and
/// `middleware::from_fn` (a boxed inner service and future per request for `from_fn`, a
/// response-body wrapper with per-frame callbacks for `TraceLayer`, two layers for the
/// request id): with wrk against a bare handler, `/random` reached 0.86 of it with no
/// gateway at all and 0.63 with that stack (README, Performance).
pub fn wrap(routes: Router<AppState>, files: Router<AppState>, state: AppState) -> Router {
    let settings = &state.settings;
    let guard = Guard {
        state: Arc::new((state.clone(), RateLimits::new(&settings.rate_limits))),
    };
    let max_json = settings.http.max_json_bytes;
    let guarded = || {
        let guard = guard.clone();
        ServiceBuilder::new()
            .layer(DefaultBodyLimit::max(max_json))
            .layer(tower::layer::layer_fn(move |inner| Guarded {
                guard: guard.clone(),
                inner,
            }))
    };
    let api = ServiceBuilder::new()
        .layer(tower::layer::layer_fn(Traced))
        .option_layer(cors(settings))
        .layer(CompressionLayer::new())
        .layer(guarded());
    // Image files are never compressed (tower-http's predicate skips `image/*`: they are
    // compressed already), so their route skips the layer's per-request wrapping too.
    let files_stack = ServiceBuilder::new()
        .layer(tower::layer::layer_fn(Traced))
        .option_layer(cors(settings))
        .layer(guarded());
    routes
        .layer(api)
        .merge(files.layer(files_stack))
        .with_state(state)
}

/// The outermost layer: gives the request an id (its own `x-request-id`, or a new random
/// UUID), answers with the same id, and runs the request in a `request` span.
#[derive(Clone)]
struct Traced<S>(S);

impl<S, B> Service<Request> for Traced<S>
where
    S: Service<Request, Response = Response<B>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<B>;
    type Error = Infallible;
    type Future = TracedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let id = match request.headers().get(&REQUEST_ID).filter(|id| usable(id)) {
            Some(id) => id.clone(),
            None => {
                let id = new_request_id();
                request.headers_mut().insert(REQUEST_ID, id.clone());
                id
            }
        };
        let span = tracing::info_span!(
            "request",
            method = %request.method(),
            uri = %request.uri(),
            request_id = id.to_str().unwrap_or("-"),
        );
        let inner = {
            let _entered = span.enter();
            self.0.call(request)
        };
        TracedFuture {
            inner: inner.instrument(span),
            id: Some(id),
        }
    }
}

/// 1 to [`MAX_REQUEST_ID`] visible ASCII characters.
fn usable(id: &HeaderValue) -> bool {
    (1..=MAX_REQUEST_ID).contains(&id.len()) && id.as_bytes().iter().all(u8::is_ascii_graphic)
}

/// A random (v4) UUID from the thread's RNG: tower-http's `MakeRequestUuid` draws each
/// from the kernel, a syscall per request.
fn new_request_id() -> HeaderValue {
    let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    let mut buf = uuid::Uuid::encode_buffer();
    let text = id.hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static("-"))
}

pin_project! {
    /// [`Traced`]'s future: the route's, in its span, adding the request id to the answer.
    struct TracedFuture<F> {
        #[pin]
        inner: Instrumented<F>,
        id: Option<HeaderValue>,
    }
}

impl<F, B> Future for TracedFuture<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
{
    type Output = Result<Response<B>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut response) = ready!(this.inner.poll(cx));
        if let Some(id) = this.id.take() {
            response.headers_mut().insert(REQUEST_ID, id);
        }
        if response.status().is_server_error() {
            // Not all are faults (a 503 from /readyz while starting, load shedding); real
            // ones are logged where they happen (ApiError::Internal).
            tracing::debug!(
                status = response.status().as_u16(),
                "answered with a server error"
            );
        }
        Poll::Ready(Ok(response))
    }
}

/// What the innermost layer needs: the state (accounts, settings) and the buckets.
#[derive(Clone)]
struct Guard {
    state: Arc<(AppState, Arc<RateLimits>)>,
}

/// The innermost layer: metrics, then the time limit, then the rate limit, in one.
#[derive(Clone)]
struct Guarded<S> {
    guard: Guard,
    inner: S,
}

impl<S> Service<Request> for Guarded<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // The clone is the one to keep; the ready one answers this request.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let guard = self.guard.clone();
        Box::pin(async move {
            let (state, limits) = &*guard.state;
            let measured = ops::Measured::start(&request);
            let response = within_time(state, limits, request, inner).await;
            measured.finish(response.status());
            Ok(response)
        })
    }
}

/// The route behind the innermost layer: axum's routes are always ready and never fail.
trait Inner: Service<Request, Response = Response, Error = Infallible> {}

impl<S: Service<Request, Response = Response, Error = Infallible>> Inner for S {}

/// Ends a request that runs past its time with 503. The timer is only armed once the
/// route has to wait: most reads answer on their first poll and never need one.
async fn within_time(
    state: &AppState,
    limits: &RateLimits,
    request: Request,
    inner: impl Inner,
) -> Response {
    let s = &state.settings;
    let secs = if is_upload(&request) {
        s.uploads.max_duration_secs
    } else {
        s.http.request_timeout_secs
    };
    let mut answer = pin!(rate_limit(state, limits, request, inner));
    if let Poll::Ready(response) =
        std::future::poll_fn(|cx| Poll::Ready(answer.as_mut().poll(cx))).await
    {
        return response;
    }
    match tokio::time::timeout(Duration::from_secs(secs), answer).await {
        Ok(response) => response,
        Err(_) => {
            ApiError::Unavailable(format!("the request took longer than {secs} s")).into_response()
        }
    }
}

fn cors(settings: &Settings) -> Option<CorsLayer> {
    let origins = &settings.http.cors_origins;
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .expose_headers([
                header::LOCATION,
                header::RETRY_AFTER,
                REQUEST_ID,
                RATELIMIT,
                RATELIMIT_POLICY,
            ]),
    )
}

fn is_upload(request: &Request) -> bool {
    request.method() == Method::POST && request.uri().path() == "/v1/images"
}

/// Which bucket a request draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Reads,
    Writes,
    Uploads,
    Auth,
}

impl Class {
    const ALL: [Class; 4] = [Class::Reads, Class::Writes, Class::Uploads, Class::Auth];

    fn name(self) -> &'static str {
        match self {
            Class::Reads => "reads",
            Class::Writes => "writes",
            Class::Uploads => "uploads",
            Class::Auth => "auth",
        }
    }

    fn of(request: &Request) -> Class {
        let (method, path) = (request.method(), request.uri().path());
        if method == Method::GET || method == Method::HEAD || method == Method::OPTIONS {
            Class::Reads
        } else if is_upload(request) {
            Class::Uploads
        } else if method == Method::POST && (path == "/v1/sessions" || path == "/v1/users") {
            Class::Auth
        } else {
            Class::Writes
        }
    }
}

/// Who is asking: the signed-in user, or else the client's address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Client {
    User(UserId),
    Ip(IpAddr),
}

type Limiter = DefaultKeyedRateLimiter<Client, StateInformationMiddleware>;

/// One class's token bucket per client, and its policy as the `RateLimit-Policy` header
/// gives it.
struct Bucket {
    class: Class,
    limiter: Limiter,
    settings: TokenBucket,
    /// `"reads";q=200;w=2`: the burst, and the seconds in which an empty bucket refills.
    policy: HeaderValue,
}

impl Bucket {
    fn new(class: Class, settings: TokenBucket) -> Self {
        let per_minute = NonZeroU32::new(settings.per_minute).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(settings.burst).unwrap_or(NonZeroU32::MIN);
        let settings = TokenBucket {
            per_minute: per_minute.get(),
            burst: burst.get(),
        };
        let limiter = RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst))
            .with_middleware::<StateInformationMiddleware>();
        let policy = format!(
            "\"{}\";q={};w={}",
            class.name(),
            settings.burst,
            refill_secs(settings, settings.burst)
        );
        Self {
            class,
            limiter,
            settings,
            policy: HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static("")),
        }
    }

    /// `"reads";r=199;t=1`: tokens left, and seconds until the bucket is full again.
    fn state(&self, remaining: u32) -> HeaderValue {
        let used = self.settings.burst.saturating_sub(remaining);
        let value = format!(
            "\"{}\";r={remaining};t={}",
            self.class.name(),
            refill_secs(self.settings, used)
        );
        HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static(""))
    }
}

/// Whole seconds (at least 1) in which `tokens` tokens flow back into `bucket`.
fn refill_secs(bucket: TokenBucket, tokens: u32) -> u64 {
    (u64::from(tokens) * 60)
        .div_ceil(u64::from(bucket.per_minute.max(1)))
        .max(1)
}

/// The rate limits: one keyed token bucket per request class (`[rate_limits]`).
pub struct RateLimits {
    enabled: bool,
    buckets: [Bucket; 4],
    seen: AtomicU64,
}

/// What a request's bucket said: the headers to send, and whether it may go on.
struct Verdict<'a> {
    bucket: &'a Bucket,
    remaining: u32,
    /// Seconds to wait, when refused.
    refused: Option<u32>,
}

impl Verdict<'_> {
    fn headers(&self, headers: &mut axum::http::HeaderMap) {
        headers.insert(RATELIMIT_POLICY, self.bucket.policy.clone());
        headers.insert(RATELIMIT, self.bucket.state(self.remaining));
    }
}

impl RateLimits {
    pub fn new(settings: &RateLimitSettings) -> Arc<Self> {
        let bucket = |class| {
            let s = match class {
                Class::Reads => settings.reads,
                Class::Writes => settings.writes,
                Class::Uploads => settings.uploads,
                Class::Auth => settings.auth,
            };
            Bucket::new(class, s)
        };
        Arc::new(Self {
            enabled: settings.enabled,
            buckets: Class::ALL.map(bucket),
            seen: AtomicU64::new(0),
        })
    }

    /// Takes a token from the client's bucket for `class`, if it has one.
    fn check(&self, class: Class, client: &Client) -> Verdict<'_> {
        let bucket = &self.buckets[class as usize];
        if self.seen.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            for b in &self.buckets {
                b.limiter.retain_recent();
            }
        }
        match bucket.limiter.check_key(client) {
            Ok(snapshot) => Verdict {
                bucket,
                remaining: snapshot.remaining_burst_capacity(),
                refused: None,
            },
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Verdict {
                    bucket,
                    remaining: 0,
                    refused: Some(u32::try_from(wait.as_secs() + 1).unwrap_or(u32::MAX)),
                }
            }
        }
    }
}

async fn rate_limit(
    state: &AppState,
    limits: &RateLimits,
    request: Request,
    inner: impl Inner,
) -> Response {
    // Probes and the metrics scraper are never limited: an orchestrator must not see 429.
    let is_ops = matches!(request.uri().path(), "/healthz" | "/readyz" | "/metrics");
    if !limits.enabled || is_ops {
        return answer(inner, request).await;
    }
    let class = Class::of(&request);
    // Sign-in and sign-up attempts are always counted per address: a token must not buy a
    // bucket of its own (an attacker could open accounts to multiply buckets).
    let user = match (class, bearer(request.headers())) {
        (Class::Auth, _) | (_, None) => None,
        // An invalid token is the handler's to refuse; here it only means "anonymous".
        (_, Some(token)) => state.accounts.authenticate(token).await.ok().flatten(),
    };
    let (mut parts, body) = request.into_parts();
    let client = match &user {
        Some(user) => Client::User(user.id),
        None => Client::Ip(ClientIp::of(&parts, &state.proxies).0),
    };
    if let Some(user) = user {
        parts.extensions.insert(user);
    }
    let request = Request::from_parts(parts, body);
    let verdict = limits.check(class, &client);
    if let Some(retry_after_secs) = verdict.refused {
        metrics::counter!("corral_rate_limited_total", "class" => class.name()).increment(1);
        let TokenBucket { per_minute, burst } = verdict.bucket.settings;
        let who = match client {
            Client::User(_) => "this account",
            Client::Ip(_) => "this address",
        };
        let mut response = ApiError::TooManyRequests {
            detail: format!(
                "too many {} requests from {who}: wait {retry_after_secs} s (the limit is {per_minute} a minute, in bursts of up to {burst})",
                class.name()
            ),
            retry_after_secs,
        }
        .into_response();
        verdict.headers(response.headers_mut());
        return response;
    }
    let mut response = answer(inner, request).await;
    verdict.headers(response.headers_mut());
    response
}

/// The route's answer (its service is ready: axum's routes always are).
async fn answer(mut inner: impl Inner, request: Request) -> Response {
    let Ok(response) = inner.call(request).await;
    response
}
