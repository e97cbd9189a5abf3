//! Admin-only routes.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ProblemDoc;
use super::extract::Admin;
use super::paging::{PageQuery, next_cursor};
use super::users::UserView;
use super::{ApiError, AppState};
use crate::domain::UserId;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_users))
}

#[derive(Serialize, ToSchema)]
struct UserPage {
    users: Vec<UserView>,
    next: Option<String>,
}

/// Every account, in id order (admins only).
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
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<UserPage>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
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
