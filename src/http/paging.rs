//! Cursor paging shared by the listings: `?limit=1..100&cursor=<id of the last item>`.

use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::ApiError;

/// Largest page of a listing.
pub const MAX_PAGE: usize = 100;
pub const DEFAULT_PAGE: usize = 50;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1 to 100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<usize>,
    /// The `next` value of the previous page.
    #[param(min_length = 1)]
    cursor: Option<String>,
}

impl PageQuery {
    /// The page size and the id to continue after.
    pub fn parse(&self) -> Result<(usize, Option<Uuid>), ApiError> {
        let limit = self.limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(ApiError::BadRequest(format!(
                "limit must be from 1 to {MAX_PAGE}"
            )));
        }
        let cursor = match self.cursor.as_deref() {
            None => None,
            Some(c) => Some(
                Uuid::parse_str(c)
                    .map_err(|_| ApiError::BadRequest(format!("unknown cursor {c:?}")))?,
            ),
        };
        Ok((limit, cursor))
    }
}

/// A `limit` given as text (so a bad one gets this module's message, not serde's): 1 to
/// `MAX_PAGE`, `default` when absent.
pub fn parse_limit(raw: Option<&str>, default: usize) -> Result<usize, ApiError> {
    match raw {
        None => Ok(default),
        Some(l) => l
            .parse()
            .ok()
            .filter(|l| (1..=MAX_PAGE).contains(l))
            .ok_or_else(|| {
                ApiError::BadRequest(format!("limit must be from 1 to {MAX_PAGE}, not {l:?}"))
            }),
    }
}

/// The cursor for the page after `items`: the last id of a full page, else none.
pub fn next_cursor<T>(items: &[T], limit: usize, id: impl Fn(&T) -> Uuid) -> Option<String> {
    (items.len() == limit)
        .then(|| items.last().map(|i| id(i).to_string()))
        .flatten()
}
