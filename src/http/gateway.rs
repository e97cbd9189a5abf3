//! What stands in front of every route: request ids, tracing, CORS, compression, metrics,
//! timeouts and rate limits.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tower::ServiceBuilder;
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use super::client_ip::ClientIp;
use super::extract::bearer;
use super::{ApiError, AppState, ops};
use crate::config::{RateLimitSettings, Settings, TokenBucket};
use crate::domain::UserId;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The IETF httpapi rate-limit headers (draft-ietf-httpapi-ratelimit-headers).
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// Every this many requests, idle rate-limit buckets are dropped, bounding their memory.
const PRUNE_EVERY: u64 = 4096;

/// Wraps the routes in every cross-cutting layer, as one stack: `Router::layer` boxes each
/// route's service once per call, and the router clones every box on every request, so
/// six separate layers cost six allocations and clones per request instead of one.
pub fn wrap(routes: Router<AppState>, state: AppState) -> Router {
    let settings = &state.settings;
    let stack = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(REQUEST_ID, NewRequestId))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let id = req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
                    tracing::info_span!("request", method = %req.method(), uri = %req.uri(), request_id = %id)
                })
                // 5xx answers are not all faults (a 503 from /readyz while starting, load
                // shedding); real ones are logged where they happen (ApiError::Internal).
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .option_layer(cors(settings))
        .layer(CompressionLayer::new())
        .layer(DefaultBodyLimit::max(settings.http.max_json_bytes))
        .layer(middleware::from_fn_with_state(
            (
                state.clone(),
                RateLimits::new(&settings.rate_limits),
            ),
            guard,
        ));
    routes.layer(stack).with_state(state)
}

/// A random (v4) UUID for a request that brings no `x-request-id`, from the thread's
/// RNG: tower-http's `MakeRequestUuid` draws each from the kernel, a syscall per request.
#[derive(Clone, Copy)]
struct NewRequestId;

impl MakeRequestId for NewRequestId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
        let mut buf = uuid::Uuid::encode_buffer();
        HeaderValue::from_str(id.hyphenated().encode_lower(&mut buf))
            .ok()
            .map(RequestId::new)
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

/// Metrics, then the time limit, then the rate limit, in one middleware: each `from_fn`
/// layer clones its inner service and boxes a future per request, and as three layers
/// they cost `/random` about a tenth of its throughput.
async fn guard(
    State((state, limits)): State<(AppState, Arc<RateLimits>)>,
    request: Request,
    next: Next,
) -> Response {
    let measured = ops::Measured::start(&request);
    let response = timeout(&state, &limits, request, next).await;
    measured.finish(response.status());
    response
}

/// Ends a request that runs past its time with 503.
async fn timeout(state: &AppState, limits: &RateLimits, request: Request, next: Next) -> Response {
    let s = &state.settings;
    let secs = if is_upload(&request) {
        s.uploads.max_duration_secs
    } else {
        s.http.request_timeout_secs
    };
    match tokio::time::timeout(
        Duration::from_secs(secs),
        rate_limit(state, limits, request, next),
    )
    .await
    {
        Ok(Ok(response)) => response,
        Ok(Err(refused)) => refused.into_response(),
        Err(_) => {
            ApiError::Unavailable(format!("the request took longer than {secs} s")).into_response()
        }
    }
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
    next: Next,
) -> Result<Response, ApiError> {
    // Probes and the metrics scraper are never limited: an orchestrator must not see 429.
    let is_ops = matches!(request.uri().path(), "/healthz" | "/readyz" | "/metrics");
    if !limits.enabled || is_ops {
        return Ok(next.run(request).await);
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
        return Ok(response);
    }
    let mut response = next.run(request).await;
    verdict.headers(response.headers_mut());
    Ok(response)
}
