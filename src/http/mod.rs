//! The HTTP API: one router per resource (documented with utoipa, so every route is in
//! the OpenAPI document by construction), merged here and wrapped by the gateway layers.

mod admin;
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
        .merge(SwaggerUi::new("/docs").url("/docs/openapi.json", api().1))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::MethodNotAllowed("method not allowed on this route".into())
        });
    gateway::wrap(routes, state)
}
