//! The HTTP API: one router per resource, merged here, with metrics and problem+json
//! fallbacks around them.

pub mod error;
mod files;
mod images;
mod ops;

use std::sync::Arc;

use axum::Router;
use axum::middleware;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Semaphore;

use crate::actors::Actors;
use crate::config::Settings;
use crate::media::MediaRoot;
use crate::store::SharedStore;

pub use error::ApiError;

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub store: SharedStore,
    pub media: MediaRoot,
    pub actors: Actors,
    /// Admission control for uploads: one permit per upload in flight.
    pub upload_slots: Arc<Semaphore>,
    pub metrics: PrometheusHandle,
}

/// The whole application's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(images::router())
        .merge(files::router())
        .merge(ops::router())
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::MethodNotAllowed("method not allowed on this route".into())
        })
        .layer(middleware::from_fn(ops::track_metrics))
        .with_state(state)
}
