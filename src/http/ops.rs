//! Operations: `/metrics` (Prometheus), `/healthz` (the process answers), `/readyz` (the
//! store answers and every actor runs), and the middleware that measures every request.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use axum::Json;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::IntoResponse;
use metrics::{Counter, Histogram};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ProblemDoc;
use super::{ApiError, AppState};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(metrics))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

#[derive(Serialize, ToSchema)]
struct Status {
    /// `ok` (alive) or `ready`.
    status: &'static str,
}

/// Prometheus metrics, in text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Metrics", body = String, content_type = "text/plain")))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    // What is cheaper to read when scraped than to keep up to date on every change.
    crate::telemetry::process().collect();
    metrics::gauge!("corral_http_requests_in_flight").set(IN_FLIGHT.load(Ordering::Relaxed) as f64);
    metrics::gauge!("corral_upload_slots_in_use").set(state.images.slots_in_use() as f64);
    metrics::gauge!("corral_file_cache_bytes").set(state.media.cached_bytes() as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "Alive", body = Status)))]
async fn healthz() -> Json<Status> {
    Json(Status { status: "ok" })
}

/// Readiness: the store answers, every actor runs, and the random sample is filled.
#[utoipa::path(get, path = "/readyz", tag = "ops", responses(
    (status = 200, description = "Ready", body = Status),
    (status = 503, description = "Not ready, and why", body = ProblemDoc, content_type = "application/problem+json"),
))]
async fn readyz(State(state): State<AppState>) -> Result<Json<Status>, ApiError> {
    state.store.ping().await.map_err(|e| {
        tracing::warn!(error = %e, "readiness: the store does not answer");
        ApiError::Unavailable("the store does not answer".into())
    })?;
    if !state.actors.all_running() {
        return Err(ApiError::Unavailable("an actor is not running".into()));
    }
    if !state.actors.sample.is_filled() {
        return Err(ApiError::Unavailable(
            "the random sample is still being filled".into(),
        ));
    }
    Ok(Json(Status { status: "ready" }))
}

/// Requests being answered now, in this process (all apps of a test process share it).
static IN_FLIGHT: AtomicI64 = AtomicI64::new(0);

/// What a request is counted under: its method and matched route, taken before it runs.
/// Counted in flight from `start` until dropped (answered or abandoned).
pub struct Measured {
    started: Instant,
    method: &'static str,
    route: Option<MatchedPath>,
}

/// One (method, route)'s series: its latency histogram and a counter per status seen.
struct Series {
    method: &'static str,
    duration: Histogram,
    requests: Vec<(u16, Counter)>,
}

thread_local! {
    /// Handles to every series this thread has recorded to, by route. Looking a series up
    /// in the registry hashes and clones its labels; a handle is an `Arc`. Routes come from
    /// the route table, so the map stays small.
    static SERIES: RefCell<HashMap<Box<str>, Vec<Series>>> = RefCell::new(HashMap::new());
}

impl Measured {
    pub fn start(request: &Request) -> Self {
        IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        Self {
            started: Instant::now(),
            method: method_name(request.method()),
            route: request.extensions().get::<MatchedPath>().cloned(),
        }
    }

    /// Counts the request by route and status and records its latency.
    pub fn finish(self, status: StatusCode) {
        let elapsed = self.started.elapsed().as_secs_f64();
        let route = self.route.as_ref().map_or("unmatched", MatchedPath::as_str);
        let method = self.method;
        SERIES.with_borrow_mut(|by_route| {
            let series = match by_route.get_mut(route) {
                Some(series) => series,
                None => by_route.entry(route.into()).or_default(),
            };
            let i = match series.iter().position(|s| s.method == method) {
                Some(i) => i,
                None => {
                    series.push(Series {
                        method,
                        duration: metrics::histogram!("corral_http_request_duration_seconds", "method" => method, "route" => route.to_owned()),
                        requests: Vec::new(),
                    });
                    series.len() - 1
                }
            };
            let series = &mut series[i];
            series.duration.record(elapsed);
            let code = status.as_u16();
            match series.requests.iter().find(|(c, _)| *c == code) {
                Some((_, counter)) => counter.increment(1),
                None => {
                    let counter = metrics::counter!("corral_http_requests_total", "method" => method, "route" => route.to_owned(), "status" => code.to_string());
                    counter.increment(1);
                    series.requests.push((code, counter));
                }
            }
        });
    }
}

impl Drop for Measured {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}
