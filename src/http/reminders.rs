//! Reminders: "mail me about this event at that time". Each user sees only their own;
//! another user's reminder answers 404, as if it did not exist.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use chrono::{DateTime, Duration, FixedOffset, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ProblemDoc;
use super::error::echo;
use super::extract::{ApiJson, ApiPath, ApiQuery, CurrentUser};
use super::paging::{DEFAULT_PAGE, parse_limit};
use super::{ApiError, AppState};
use crate::actors::SchedulerMsg;
use crate::actors::hub::{self, HubMsg};
use crate::domain::ReminderUpdate;
use crate::domain::{
    Email, EventId, Reminder, ReminderId, ReminderKey, ReminderState, User, UserId,
};
use crate::store::StoreError;
use crate::views::ReminderView;

/// How far ahead a reminder may be set.
const MAX_AHEAD_DAYS: i64 = 3660;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_reminder, list_reminders))
        .routes(routes!(get_reminder, update_reminder, delete_reminder))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewReminder {
    #[schema(value_type = String, format = Uuid)]
    event_id: String,
    /// RFC 3339 with any offset, in the future; stored in UTC.
    remind_at: DateTime<FixedOffset>,
    /// One of your addresses (default: your primary one).
    #[schema(format = Email)]
    email: Option<String>,
}

fn unprocessable(detail: impl Into<String>) -> ApiError {
    ApiError::Unprocessable(detail.into())
}

/// `remind_at` in UTC, if it is in the future and not absurdly far.
fn future(t: DateTime<FixedOffset>) -> Result<DateTime<Utc>, ApiError> {
    let t = t.with_timezone(&Utc);
    let now = Utc::now();
    if t <= now {
        return Err(unprocessable(format!(
            "remind_at must be in the future (it is {}, now is {})",
            t.to_rfc3339(),
            now.to_rfc3339()
        )));
    }
    if t > now + Duration::days(MAX_AHEAD_DAYS) {
        return Err(unprocessable(format!(
            "remind_at may be at most {MAX_AHEAD_DAYS} days ahead"
        )));
    }
    Ok(t)
}

/// The address, if it is one of the user's.
fn own_email(user: &User, email: &str) -> Result<Email, ApiError> {
    let email = Email::parse(email).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if user.emails().any(|e| *e == email) {
        Ok(email)
    } else {
        Err(unprocessable(format!(
            "{email} is not one of your addresses; add it first (POST /v1/users/me/emails)"
        )))
    }
}

fn tell_scheduler(state: &AppState, msg: SchedulerMsg) {
    // If the scheduler is down, it reads the store when it restarts.
    if let Some(scheduler) = state.actors.scheduler.get() {
        let _ = scheduler.send_message(msg);
    }
}

/// Tells the owner's WebSocket connections.
fn push(state: &AppState, update: ReminderUpdate, reminder: &Reminder) {
    hub::publish(
        &state.actors.hub,
        HubMsg::Reminder(update, Box::new(reminder.clone())),
    );
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
    let remind_at = future(body.remind_at)?;
    let unknown = || unprocessable(format!("no event with id {:?}", body.event_id));
    let event_id: EventId = body.event_id.parse().map_err(|_| unknown())?;
    let event = state.store.get_event(event_id).await?.ok_or_else(unknown)?;
    let email = match body.email.as_deref() {
        Some(email) => own_email(&user, email)?,
        None => user.email.clone(),
    };
    let now = Utc::now();
    let reminder = Reminder {
        id: ReminderId::new(),
        user_id: user.id,
        event_id: event.id,
        remind_at,
        email,
        state: ReminderState::Scheduled,
        detail: None,
        created_at: now,
        updated_at: now,
    };
    state.store.insert_reminder(&reminder).await?;
    metrics::counter!("corral_reminders_scheduled_total").increment(1);
    tell_scheduler(
        &state,
        SchedulerMsg::Scheduled {
            id: reminder.id,
            remind_at,
        },
    );
    push(&state, ReminderUpdate::Scheduled, &reminder);
    let location = format!("/v1/reminders/{}", reminder.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(ReminderView::from(reminder)),
    ))
}

/// The caller's reminder `id`; 404 for anyone else's.
async fn find(state: &AppState, owner: UserId, id: &str) -> Result<Reminder, ApiError> {
    let missing = || ApiError::not_found(format!("no reminder with id {}", echo(id)));
    let id: ReminderId = id.parse().map_err(|_| missing())?;
    state
        .store
        .get_reminder(id)
        .await?
        .filter(|r| r.user_id == owner)
        .ok_or_else(missing)
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
    Ok(Json(find(&state, user.id, &id).await?.into()))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ReminderChanges {
    /// A new time (the "delay"), RFC 3339, in the future.
    remind_at: Option<DateTime<FixedOffset>>,
    /// Another of your addresses.
    #[schema(format = Email)]
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
    let before = find(&state, user.id, &id).await?;
    let not_scheduled = |r: &Reminder| {
        ApiError::Conflict(format!(
            "the reminder is {} and can no longer be changed",
            r.state.as_str()
        ))
    };
    if before.state != ReminderState::Scheduled {
        return Err(not_scheduled(&before));
    }
    let mut after = before.clone();
    if let Some(t) = body.remind_at {
        after.remind_at = future(t)?;
    }
    if let Some(email) = body.email.as_deref() {
        after.email = own_email(&user, email)?;
    }
    after.updated_at = Utc::now();
    match state.store.update_reminder(&before, &after).await {
        Err(StoreError::Changed) => {
            let now = find(&state, user.id, &id).await?;
            return Err(not_scheduled(&now));
        }
        result => result?,
    }
    if after.remind_at != before.remind_at {
        metrics::counter!("corral_reminders_scheduled_total").increment(1);
    }
    tell_scheduler(
        &state,
        SchedulerMsg::Scheduled {
            id: after.id,
            remind_at: after.remind_at,
        },
    );
    push(&state, ReminderUpdate::Rescheduled, &after);
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
    let reminder = find(&state, user.id, &id).await?;
    state.store.delete_reminder(&reminder).await?;
    tell_scheduler(&state, SchedulerMsg::Cancelled(reminder.id));
    push(&state, ReminderUpdate::Cancelled, &reminder);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
struct ListQuery {
    /// Page size, 1 to 100 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// The `next` value of the previous page.
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
    let page = state.store.reminders_of(user.id, after, limit).await?;
    let next = (page.len() == limit)
        .then(|| page.last().map(|r| r.key().to_cursor()))
        .flatten();
    Ok(Json(ReminderPage {
        reminders: page.into_iter().map(ReminderView::from).collect(),
        next,
    }))
}
