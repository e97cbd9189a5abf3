//! Admin-only routes.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ProblemDoc;
use super::extract::{Admin, ApiQuery};
use super::paging::{PageQuery, next_cursor};
use super::users::UserView;
use super::{ApiError, AppState};
use crate::domain::{DeadLetter, MailId, UserId};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_users))
        .routes(routes!(dead_letters))
}

#[derive(Serialize, ToSchema)]
struct UserPage {
    users: Vec<UserView>,
    next: Option<String>,
}

/// Every account, page by page (admins only).
///
/// In a stable order, each account once across the pages: id order on the embedded
/// store, the cluster's token order on Scylla.
#[utoipa::path(
    get, path = "/v1/admin/users", tag = "admin",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of accounts", body = UserPage),
        (status = 400, description = "Bad limit or cursor", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Not signed in", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn list_users(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<UserPage>, ApiError> {
    let (limit, after) = query.parse()?;
    let users = state.store.list_users(after.map(UserId), limit).await?;
    tracing::info!(
        admin = admin.username.as_str(),
        count = users.len(),
        "admin listed users"
    );
    let next = next_cursor(&users, limit, |u| u.id.0);
    Ok(Json(UserPage {
        users: users.iter().map(UserView::from).collect(),
        next,
    }))
}

/// A mail the mailer gave up on.
#[derive(Serialize, ToSchema)]
struct DeadLetterView {
    #[schema(value_type = String, format = Uuid)]
    id: MailId,
    /// `reminder` or `welcome`.
    kind: &'static str,
    /// The reminder it was for, if any.
    #[schema(value_type = Option<String>, format = Uuid)]
    reminder_id: Option<crate::domain::ReminderId>,
    to: String,
    subject: String,
    message_id: String,
    attempts: u32,
    /// The last error.
    reason: String,
    queued_at: chrono::DateTime<chrono::Utc>,
    died_at: chrono::DateTime<chrono::Utc>,
}

impl From<DeadLetter> for DeadLetterView {
    fn from(d: DeadLetter) -> Self {
        let job = d.job;
        Self {
            id: job.id,
            kind: job.kind.name(),
            reminder_id: match job.kind {
                crate::domain::MailKind::Reminder { reminder, .. } => Some(reminder),
                crate::domain::MailKind::Welcome { .. } => None,
            },
            to: job.to.as_str().to_owned(),
            subject: job.subject,
            message_id: job.message_id,
            attempts: job.attempts,
            reason: d.reason,
            queued_at: job.created_at,
            died_at: d.died_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
struct DeadLetterPage {
    dead_letters: Vec<DeadLetterView>,
    next: Option<String>,
}

/// Mails that failed for good: refused permanently or out of retries (admins only).
#[utoipa::path(
    get, path = "/v1/admin/mail/dead", tag = "admin",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of dead letters", body = DeadLetterPage),
        (status = 400, description = "Bad limit or cursor", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Not signed in", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn dead_letters(
    State(state): State<AppState>,
    _: Admin,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<DeadLetterPage>, ApiError> {
    let (limit, after) = query.parse()?;
    let letters = state.store.dead_letters(after.map(MailId), limit).await?;
    let next = next_cursor(&letters, limit, |d| d.job.id.0);
    Ok(Json(DeadLetterPage {
        dead_letters: letters.into_iter().map(DeadLetterView::from).collect(),
        next,
    }))
}
