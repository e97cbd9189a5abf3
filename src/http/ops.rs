//! Operations: `/metrics` (Prometheus), `/healthz` (the process answers), `/readyz` (the
//! store answers and every actor runs), and the middleware that measures every request.

use std::time::Instant;

use axum::Json;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::IntoResponse;
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

/// What a request is counted under: its method and matched route, taken before it runs.
pub struct Measured {
    started: Instant,
    method: Method,
    route: String,
}

impl Measured {
    pub fn start(request: &Request) -> Self {
        Self {
            started: Instant::now(),
            method: request.method().clone(),
            route: request
                .extensions()
                .get::<MatchedPath>()
                .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned()),
        }
    }

    /// Counts the request by route and status and records its latency.
    pub fn finish(self, status: StatusCode) {
        // Standard methods and common statuses are static strings: no allocation.
        let method = metrics::SharedString::const_str(method_name(&self.method));
        let status = match status.as_u16() {
            200 => metrics::SharedString::const_str("200"),
            201 => metrics::SharedString::const_str("201"),
            204 => metrics::SharedString::const_str("204"),
            304 => metrics::SharedString::const_str("304"),
            404 => metrics::SharedString::const_str("404"),
            other => metrics::SharedString::from_owned(other.to_string()),
        };
        let route = metrics::SharedString::from(std::sync::Arc::<str>::from(self.route));
        metrics::counter!("corral_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
            .increment(1);
        metrics::histogram!("corral_http_request_duration_seconds", "method" => method, "route" => route)
            .record(self.started.elapsed().as_secs_f64());
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
