//! The HTTP API: one router per resource (documented with utoipa, so every route is in
//! the OpenAPI document by construction), merged here and wrapped by the gateway layers.

mod admin;
pub mod error;
mod events;
pub(crate) mod extract;
mod files;
pub mod gateway;
pub(crate) mod images;
mod openapi;
mod ops;
mod paging;
pub(crate) mod reminders;
pub mod serve;
mod sessions;
mod users;
mod web;

use std::sync::Arc;

use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Semaphore;
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::accounts::Accounts;
use crate::actors::Actors;
use crate::config::Settings;
use crate::media::MediaRoot;
use crate::store::SharedStore;

pub use error::ApiError;
pub use gateway::RateLimits;

/// What every handler can reach: one `Arc`, so the clones every extractor and layer
/// make per request cost one reference count (cloning the fields, moka caches included,
/// was a fifth of the server's CPU time under load).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The state behind [`AppState`].
pub struct Shared {
    pub settings: Arc<Settings>,
    pub store: SharedStore,
    pub media: MediaRoot,
    pub actors: Actors,
    pub accounts: Accounts,
    pub limits: Arc<RateLimits>,
    /// Admission control for uploads: one permit per upload in flight.
    pub upload_slots: Arc<Semaphore>,
    /// Uploads in flight per client, against `uploads.max_in_flight_per_client`.
    pub uploaders: images::Uploaders,
    /// Renders the mails this node queues.
    pub composer: crate::mail::Composer,
    pub metrics: PrometheusHandle,
    /// Open WebSocket connections, against `ws.max_connections`.
    pub ws_gate: crate::ws::WsGate,
    /// Set when the server starts shutting down; open WebSockets close (1001).
    pub stopping: tokio::sync::watch::Sender<bool>,
}

/// The documented routes and their OpenAPI document.
pub fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (routes, doc) = OpenApiRouter::with_openapi(openapi::base())
        .merge(images::router())
        .merge(files::router())
        .merge(users::router())
        .merge(sessions::router())
        .merge(admin::router())
        .merge(events::router())
        .merge(reminders::router())
        .merge(crate::ws::router())
        .merge(ops::router())
        .split_for_parts();
    (routes, openapi::finish(doc))
}

/// The whole application.
pub fn router(state: AppState) -> Router {
    let (routes, doc) = api();
    let doc = Arc::new(doc);
    let routes = routes
        .route(
            "/openapi.json",
            axum::routing::get(move || async move { Json(doc.as_ref().clone()) }),
        )
        .merge(web::router(&state.settings.http.public_url))
        .merge(SwaggerUi::new("/docs").url("/docs/openapi.json", openapi::finish(api().1)))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::MethodNotAllowed("method not allowed on this route".into())
        });
    gateway::wrap(routes, state)
}
