//! The HTTP API: one router per resource (documented with utoipa, so every route is in
//! the OpenAPI document by construction), merged here and wrapped by the gateway layers.

mod admin;
mod drafts;
mod events;
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
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

pub use crate::app::{AppState, Shared};
// The error and extractors are shared with the WebSocket frontend (`crate::ws`).
pub(crate) use crate::app::{client_ip, extract};
pub use crate::problem::{self as error, ApiError};
pub use gateway::RateLimits;

/// The documented routes (the API's, and apart from them the image files', which the
/// gateway wraps without compression) and their OpenAPI document.
pub fn api() -> (Router<AppState>, Router<AppState>, utoipa::openapi::OpenApi) {
    let (files, files_doc) = files::router().split_for_parts();
    let (routes, mut doc) = OpenApiRouter::with_openapi(openapi::base())
        .merge(images::router())
        .merge(drafts::router())
        .merge(users::router())
        .merge(sessions::router())
        .merge(admin::router())
        .merge(events::router())
        .merge(reminders::router())
        .merge(crate::ws::router())
        .merge(ops::router())
        .split_for_parts();
    doc.merge(files_doc);
    (routes, files, openapi::finish(doc))
}

async fn not_allowed() -> ApiError {
    ApiError::MethodNotAllowed("method not allowed on this route".into())
}

/// The whole application.
pub fn router(state: AppState) -> Router {
    let (routes, files, doc) = api();
    let doc = Arc::new(doc);
    let routes = routes
        .route(
            "/openapi.json",
            axum::routing::get(move || async move { Json(doc.as_ref().clone()) }),
        )
        .merge(web::router(&state.settings.http.public_url))
        .merge(SwaggerUi::new("/docs").url("/docs/openapi.json", api().2))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(not_allowed);
    let files = files.method_not_allowed_fallback(not_allowed);
    gateway::wrap(routes, files, state)
}
