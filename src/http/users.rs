//! Accounts: sign up, read and change your account, manage its addresses, delete it.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ProblemDoc;
use super::extract::{ApiJson, ApiPath, CurrentUser};
use super::{ApiError, AppState};
use crate::actors::mailer;
use crate::domain::{Email, Password, TimeZone, User, Username};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(sign_up))
        .routes(routes!(me, update_me, delete_me))
        .routes(routes!(add_email))
        .routes(routes!(remove_email))
}

/// An account as its owner (or an admin) sees it.
#[derive(Serialize, ToSchema)]
pub struct UserView {
    #[schema(value_type = String, format = Uuid)]
    id: crate::domain::UserId,
    #[schema(value_type = String)]
    username: Username,
    #[schema(value_type = String)]
    email: Email,
    #[schema(value_type = Vec<String>)]
    secondary_emails: Vec<Email>,
    admin: bool,
    created_at: chrono::DateTime<chrono::Utc>,
    /// IANA time zone; times in your mail are shown in it.
    #[schema(value_type = String, example = "Europe/Paris")]
    time_zone: TimeZone,
}

impl From<&User> for UserView {
    fn from(u: &User) -> Self {
        Self {
            id: u.id,
            username: u.username.clone(),
            email: u.email.clone(),
            secondary_emails: u.secondary_emails.clone(),
            admin: u.admin,
            created_at: u.created_at,
            time_zone: u.time_zone,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SignUp {
    /// 3 to 32 characters of a-z, 0-9, `_`, `-`, `.`; case-insensitive.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{2,31}$")]
    username: String,
    #[schema(format = Email, max_length = 254)]
    email: String,
    /// 8 to 128 characters.
    #[schema(format = Password, min_length = 8, max_length = 128)]
    password: String,
    /// IANA time zone such as `Europe/Paris` (default `UTC`).
    #[schema(
        pattern = "^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$",
        max_length = 64
    )]
    time_zone: Option<String>,
}

/// Create an account.
#[utoipa::path(
    post, path = "/v1/users", tag = "accounts",
    request_body = SignUp,
    responses(
        (status = 201, description = "Created", body = UserView),
        (status = 400, description = "Bad username, email, password or time zone", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "Username or email taken", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = ProblemDoc, content_type = "application/problem+json"),
    ),
)]
async fn sign_up(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<SignUp>,
) -> Result<impl IntoResponse, ApiError> {
    let username =
        Username::parse(&body.username).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let email = Email::parse(&body.email).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let password =
        Password::parse(body.password).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let time_zone = body
        .time_zone
        .as_deref()
        .map(TimeZone::parse)
        .transpose()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?
        .unwrap_or_default();
    let user = state
        .accounts
        .sign_up(username, email, password, time_zone)
        .await?;
    let welcome = state.composer.welcome(&user);
    if let Err(e) = mailer::queue(&state.store, &state.actors.mailer, welcome).await {
        // The account exists; failing the sign-up now would only invite a retry that
        // answers 409. The log says which welcome mail is missing.
        tracing::error!(user = %user.id, error = %e, "could not queue the welcome mail");
    }
    Ok((StatusCode::CREATED, Json(UserView::from(&user))))
}

/// Your account.
#[utoipa::path(
    get, path = "/v1/users/me", tag = "accounts",
    responses(
        (status = 200, description = "Your account", body = UserView),
        (status = 401, description = "Not signed in", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn me(CurrentUser(user): CurrentUser) -> Json<UserView> {
    Json(UserView::from(user.as_ref()))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1)]
struct UpdateMe {
    /// The new primary address; the old one stays on the account as a secondary one.
    #[schema(format = Email, max_length = 254, nullable = false)]
    email: Option<String>,
    /// IANA time zone such as `Europe/Paris`.
    #[schema(
        pattern = "^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$",
        max_length = 64
    )]
    time_zone: Option<String>,
}

/// Change your primary email and/or time zone.
#[utoipa::path(
    patch, path = "/v1/users/me", tag = "accounts",
    request_body = UpdateMe,
    responses(
        (status = 200, description = "Updated", body = UserView),
        (status = 400, description = "Bad email or time zone, or nothing to change", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Not signed in", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "Email taken by another account", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn update_me(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiJson(body): ApiJson<UpdateMe>,
) -> Result<Json<UserView>, ApiError> {
    let bad = |e: crate::domain::user::AccountError| ApiError::BadRequest(e.to_string());
    if body.email.is_none() && body.time_zone.is_none() {
        return Err(ApiError::BadRequest(
            "send email and/or time_zone to change".into(),
        ));
    }
    let email = body
        .email
        .as_deref()
        .map(Email::parse)
        .transpose()
        .map_err(bad)?;
    let zone = body
        .time_zone
        .as_deref()
        .map(TimeZone::parse)
        .transpose()
        .map_err(bad)?;
    let user = state.accounts.change_profile(user.id, email, zone).await?;
    Ok(Json(UserView::from(&user)))
}

/// Delete your account, its addresses, sessions, reminders and images.
#[utoipa::path(
    delete, path = "/v1/users/me", tag = "accounts",
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Not signed in", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn delete_me(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
) -> Result<StatusCode, ApiError> {
    state.accounts.delete(&user).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct AddEmail {
    #[schema(format = Email, max_length = 254)]
    email: String,
}

/// Add a secondary email address.
#[utoipa::path(
    post, path = "/v1/users/me/emails", tag = "accounts",
    request_body = AddEmail,
    responses(
        (status = 201, description = "Added", body = UserView),
        (status = 400, description = "Bad email", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Not signed in", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "Taken, already yours, or too many addresses", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn add_email(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiJson(body): ApiJson<AddEmail>,
) -> Result<impl IntoResponse, ApiError> {
    let email = Email::parse(&body.email).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let user = state.accounts.add_email(user.id, email).await?;
    Ok((StatusCode::CREATED, Json(UserView::from(&user))))
}

/// Remove a secondary email address.
#[utoipa::path(
    delete, path = "/v1/users/me/emails/{email}", tag = "accounts",
    params(("email" = String, Path, description = "The address to remove")),
    responses(
        (status = 200, description = "Removed", body = UserView),
        (status = 401, description = "Not signed in", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "Not on the account", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "It is the primary address", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn remove_email(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiPath(email): ApiPath<String>,
) -> Result<Json<UserView>, ApiError> {
    let email = Email::parse(&email)
        .map_err(|_| ApiError::not_found(format!("{email:?} is not on the account")))?;
    let user = state.accounts.remove_email(user.id, email).await?;
    Ok(Json(UserView::from(&user)))
}
