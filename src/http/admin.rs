//! Admin-only routes.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ProblemDoc;
use super::extract::Admin;
use super::users::UserView;
use super::{ApiError, AppState};
use crate::domain::UserId;

const MAX_PAGE: usize = 100;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_users))
}

#[derive(Deserialize, IntoParams)]
struct UsersQuery {
    /// Page size, 1 to 100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<usize>,
    /// The `next` value of the previous page.
    cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct UserPage {
    users: Vec<UserView>,
    next: Option<String>,
}

/// Every account, in id order (admins only).
#[utoipa::path(
    get, path = "/v1/admin/users", tag = "admin",
    params(UsersQuery),
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
    query: Result<Query<UsersQuery>, QueryRejection>,
) -> Result<Json<UserPage>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be from 1 to {MAX_PAGE}"
        )));
    }
    let after = match query.cursor.as_deref() {
        None => None,
        Some(c) => {
            Some(UserId(c.parse().map_err(|_| {
                ApiError::BadRequest(format!("unknown cursor {c:?}"))
            })?))
        }
    };
    let users = state.store.list_users(after, limit).await?;
    tracing::info!(
        admin = admin.username.as_str(),
        count = users.len(),
        "admin listed users"
    );
    let next = (users.len() == limit)
        .then(|| users.last().map(|u| u.id.to_string()))
        .flatten();
    Ok(Json(UserPage {
        users: users.iter().map(UserView::from).collect(),
        next,
    }))
}
