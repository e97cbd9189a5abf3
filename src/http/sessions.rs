//! Sessions: log in for a bearer token, log out.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ProblemDoc;
use super::extract::{ApiJson, CurrentUser, bearer};
use super::{ApiError, AppState};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(log_in, log_out))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct LogIn {
    /// Username or any of the account's email addresses.
    login: String,
    #[schema(format = Password)]
    password: String,
}

#[derive(Serialize, ToSchema)]
struct SessionView {
    /// Send as `Authorization: Bearer <token>`. Shown once; only its hash is stored.
    token: String,
    expires_at: chrono::DateTime<chrono::Utc>,
}

/// Log in.
#[utoipa::path(
    post, path = "/v1/sessions", tag = "accounts",
    request_body = LogIn,
    responses(
        (status = 201, description = "A new session", body = SessionView),
        (status = 400, description = "Malformed body", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Unknown login or wrong password (the same answer for both)", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = ProblemDoc, content_type = "application/problem+json"),
    ),
)]
async fn log_in(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<LogIn>,
) -> Result<impl IntoResponse, ApiError> {
    let (token, session) = state.accounts.log_in(&body.login, body.password).await?;
    let view = SessionView {
        token: token.reveal(),
        expires_at: session.expires_at,
    };
    Ok((StatusCode::CREATED, Json(view)))
}

/// Log out: the token stops working.
#[utoipa::path(
    delete, path = "/v1/sessions", tag = "accounts",
    responses(
        (status = 204, description = "Logged out"),
        (status = 401, description = "Not signed in", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn log_out(
    State(state): State<AppState>,
    _: CurrentUser,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    if let Some(token) = bearer(&headers) {
        state.accounts.log_out(token).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}
