//! Reminders over HTTP (the workflows are `crate::reminders`). Each user sees only their
//! own; another user's reminder answers 404, as if it did not exist.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ProblemDoc;
use super::extract::{ApiJson, ApiPath, ApiQuery, CurrentUser};
use super::paging::{DEFAULT_PAGE, parse_limit};
use super::{ApiError, AppState};
use crate::domain::ReminderKey;
use crate::reminders::Changes;
use crate::views::ReminderView;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_reminder, list_reminders))
        .routes(routes!(get_reminder, update_reminder, delete_reminder))
        .routes(routes!(unsubscribe_page, unsubscribe))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewReminder {
    #[schema(value_type = String, format = Uuid)]
    event_id: String,
    /// RFC 3339 with any offset, in the future (at most 3,660 days ahead); stored in UTC.
    remind_at: DateTime<FixedOffset>,
    /// One of your addresses (default: your primary one).
    #[schema(format = Email)]
    email: Option<String>,
}

/// Set a reminder for an event.
#[utoipa::path(
    post, path = "/v1/reminders", tag = "reminders",
    request_body = NewReminder,
    responses(
        (status = 201, description = "Scheduled", body = ReminderView, headers(("location" = String, description = "The reminder's URL"))),
        (status = 400, description = "Malformed body, time or address", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Not signed in", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, description = "remind_at not in the future, unknown event, or an address not on your account", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn create_reminder(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiJson(body): ApiJson<NewReminder>,
) -> Result<impl IntoResponse, ApiError> {
    let reminder = state
        .reminders
        .create(&user, &body.event_id, body.remind_at, body.email.as_deref())
        .await?;
    let location = format!("/v1/reminders/{}", reminder.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(ReminderView::from(reminder)),
    ))
}

/// One of your reminders.
#[utoipa::path(
    get, path = "/v1/reminders/{id}", tag = "reminders",
    params(("id" = String, Path, description = "The reminder id")),
    responses(
        (status = 200, description = "The reminder", body = ReminderView),
        (status = 401, description = "Not signed in", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such reminder of yours", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn get_reminder(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ReminderView>, ApiError> {
    Ok(Json(state.reminders.find(user.id, &id).await?.into()))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1)]
struct ReminderChanges {
    /// A new time (the "delay"), RFC 3339, in the future (at most 3,660 days ahead).
    #[schema(nullable = false)]
    remind_at: Option<DateTime<FixedOffset>>,
    /// Another of your addresses.
    #[schema(format = Email, nullable = false)]
    email: Option<String>,
}

/// Move a scheduled reminder to another time and/or address.
#[utoipa::path(
    patch, path = "/v1/reminders/{id}", tag = "reminders",
    params(("id" = String, Path, description = "The reminder id")),
    request_body = ReminderChanges,
    responses(
        (status = 200, description = "Updated", body = ReminderView),
        (status = 400, description = "Malformed body, time or address, or nothing to change", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Not signed in", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such reminder of yours", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "It is no longer scheduled (being sent, sent or failed)", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, description = "remind_at not in the future, or an address not on your account", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn update_reminder(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<ReminderChanges>,
) -> Result<Json<ReminderView>, ApiError> {
    if body.remind_at.is_none() && body.email.is_none() {
        return Err(ApiError::BadRequest(
            "send remind_at and/or email to change".into(),
        ));
    }
    let changes = Changes {
        remind_at: body.remind_at,
        email: body.email.as_deref(),
    };
    let after = state.reminders.change(&user, &id, changes).await?;
    Ok(Json(after.into()))
}

/// Delete a reminder; a scheduled one is cancelled.
#[utoipa::path(
    delete, path = "/v1/reminders/{id}", tag = "reminders",
    params(("id" = String, Path, description = "The reminder id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Not signed in", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such reminder of yours", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn delete_reminder(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.reminders.cancel(user.id, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Page size, 1 to 100 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// The `next` value of the previous page.
    #[param(min_length = 1)]
    cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct ReminderPage {
    reminders: Vec<ReminderView>,
    /// Pass as `cursor` for the next page; absent when there are no more.
    next: Option<String>,
}

/// Your reminders, by remind_at.
#[utoipa::path(
    get, path = "/v1/reminders", tag = "reminders",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of your reminders", body = ReminderPage),
        (status = 400, description = "Bad limit or cursor", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Not signed in", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn list_reminders(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<ReminderPage>, ApiError> {
    let limit = parse_limit(query.limit.as_deref(), DEFAULT_PAGE)?;
    let after = match query.cursor.as_deref() {
        None => None,
        Some(c) => Some(
            ReminderKey::parse_cursor(c)
                .ok_or_else(|| ApiError::BadRequest(format!("unknown cursor {c:?}")))?,
        ),
    };
    let page = state.reminders.page(user.id, after, limit).await?;
    let next = (page.len() == limit)
        .then(|| page.last().map(|r| r.key().to_cursor()))
        .flatten();
    Ok(Json(ReminderPage {
        reminders: page.into_iter().map(ReminderView::from).collect(),
        next,
    }))
}

/// The pages of the unsubscribe link: nothing a browser can run or load.
const PAGE_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'";

fn page(title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{title}</title></head>\
         <body style=\"font-family:sans-serif;max-width:32rem;margin:2rem auto\"><h1>{title}</h1>{body}</body></html>"
    );
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, PAGE_CSP),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

const GONE: &str = "<p>This reminder was removed already.</p>";

/// The page a reminder mail's unsubscribe link opens: what it would remove, and a button
/// to do it. Opening it changes nothing (link scanners open links too).
#[utoipa::path(
    get, path = "/v1/unsubscribe/{token}", tag = "reminders",
    params(("token" = String, Path, description = "The token from the mail's link")),
    responses(
        (status = 200, description = "A confirmation page", body = String, content_type = "text/html"),
        (status = 404, description = "Not a link Corral made", body = ProblemDoc, content_type = "application/problem+json"),
    ),
)]
async fn unsubscribe_page(
    State(state): State<AppState>,
    ApiPath(token): ApiPath<String>,
) -> Result<Response, ApiError> {
    Ok(match state.reminders.by_token(&token).await? {
        Some(_) => page(
            "Remove this reminder?",
            "<p>It is removed from your reminders; if its mail has not gone out yet, it \
             will not.</p><form method=\"post\"><button type=\"submit\">Remove it</button></form>",
        ),
        None => page("Already removed", GONE),
    })
}

/// One-click unsubscribe (RFC 8058): removes the reminder the mail was about. Mail
/// clients POST `List-Unsubscribe=One-Click`; any body is accepted.
#[utoipa::path(
    post, path = "/v1/unsubscribe/{token}", tag = "reminders",
    params(("token" = String, Path, description = "The token from the mail's link")),
    responses(
        (status = 200, description = "Removed (or it was already)", body = String, content_type = "text/html"),
        (status = 404, description = "Not a link Corral made", body = ProblemDoc, content_type = "application/problem+json"),
    ),
)]
async fn unsubscribe(
    State(state): State<AppState>,
    ApiPath(token): ApiPath<String>,
) -> Result<Response, ApiError> {
    Ok(match state.reminders.unsubscribe(&token).await? {
        Some(_) => page(
            "Reminder removed",
            "<p>Done: the reminder is removed, and Corral sends nothing more about it.</p>",
        ),
        None => page("Already removed", GONE),
    })
}
