//! The events catalogue: admins create, edit and delete; anyone reads and searches.

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
use super::extract::{Admin, ApiJson, ApiPath, ApiQuery};
use super::paging::parse_limit;
use super::{ApiError, AppState};
use crate::catalogue::{self, Search};
use crate::domain::geo::{MAX_RADIUS_KM, Point};
use crate::domain::{Event, EventId, EventKey, Location, Tags};

/// Default search window: from now, a week ahead.
const DEFAULT_WINDOW_DAYS: i64 = 7;
/// Longest search window.
const MAX_WINDOW_DAYS: i64 = 366;
const DEFAULT_RADIUS_KM: f64 = 10.0;
const DEFAULT_LIMIT: usize = 20;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_event, list_events))
        .routes(routes!(get_event, update_event, delete_event))
}

#[derive(Serialize, Deserialize, ToSchema)]
struct LocationView {
    /// The place, as people call it.
    name: String,
    #[schema(minimum = -90, maximum = 90)]
    lat: f64,
    #[schema(minimum = -180, maximum = 180)]
    lon: f64,
}

#[derive(Serialize, ToSchema)]
struct EventView {
    #[schema(value_type = String, format = Uuid)]
    id: EventId,
    title: String,
    description: String,
    topics: Vec<String>,
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
    location: LocationView,
    #[schema(value_type = String, format = Uuid)]
    created_by: crate::domain::UserId,
}

impl From<Event> for EventView {
    fn from(e: Event) -> Self {
        Self {
            id: e.id,
            title: e.title,
            description: e.description,
            topics: e.topics.as_slice().to_vec(),
            starts_at: e.starts_at,
            ends_at: e.ends_at,
            location: LocationView {
                name: e.location.name,
                lat: e.location.lat,
                lon: e.location.lon,
            },
            created_by: e.created_by,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewEvent {
    #[schema(min_length = 1, max_length = 200)]
    title: String,
    #[serde(default)]
    #[schema(max_length = 5000)]
    description: String,
    /// 1 to 10 topics, a-z, 0-9, `-`, `_`, `.` (lowercased).
    #[schema(min_items = 1, max_items = 10, value_type = Vec<super::images::TagName>)]
    topics: Vec<String>,
    /// RFC 3339, any offset; stored in UTC.
    starts_at: DateTime<FixedOffset>,
    ends_at: DateTime<FixedOffset>,
    location: LocationView,
}

fn bad(e: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(e.to_string())
}

/// Create an event (admins).
#[utoipa::path(
    post, path = "/v1/events", tag = "events",
    request_body = NewEvent,
    responses(
        (status = 201, description = "Created", body = EventView, headers(("location" = String, description = "The event's URL"))),
        (status = 400, description = "A field is invalid", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Not signed in", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn create_event(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ApiJson(body): ApiJson<NewEvent>,
) -> Result<impl IntoResponse, ApiError> {
    let event = Event {
        id: EventId::new(),
        title: body.title.trim().to_owned(),
        description: body.description,
        topics: Tags::parse(body.topics.iter().map(String::as_str)).map_err(bad)?,
        starts_at: body.starts_at.with_timezone(&Utc),
        ends_at: body.ends_at.with_timezone(&Utc),
        location: Location::parse(body.location.name, body.location.lat, body.location.lon)
            .map_err(bad)?,
        created_by: admin.id,
        created_at: Utc::now(),
    };
    event.validate().map_err(bad)?;
    state.store.insert_event(&event).await?;
    let location = format!("/v1/events/{}", event.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(EventView::from(event)),
    ))
}

async fn find(state: &AppState, id: &str) -> Result<Event, ApiError> {
    let missing = || ApiError::not_found(format!("no event with id {}", echo(id)));
    let id: EventId = id.parse().map_err(|_| missing())?;
    state.store.get_event(id).await?.ok_or_else(missing)
}

/// One event.
#[utoipa::path(
    get, path = "/v1/events/{id}", tag = "events",
    params(("id" = String, Path, description = "The event id")),
    responses(
        (status = 200, description = "The event", body = EventView),
        (status = 404, description = "No such event", body = ProblemDoc, content_type = "application/problem+json"),
    ),
)]
async fn get_event(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<EventView>, ApiError> {
    Ok(Json(find(&state, &id).await?.into()))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct EventChanges {
    #[schema(min_length = 1, max_length = 200)]
    title: Option<String>,
    #[schema(max_length = 5000)]
    description: Option<String>,
    #[schema(min_items = 1, max_items = 10, value_type = Option<Vec<super::images::TagName>>, nullable = false)]
    topics: Option<Vec<String>>,
    starts_at: Option<DateTime<FixedOffset>>,
    ends_at: Option<DateTime<FixedOffset>>,
    location: Option<LocationView>,
}

/// Change an event (admins). Only the fields sent change; its index entries follow.
#[utoipa::path(
    patch, path = "/v1/events/{id}", tag = "events",
    params(("id" = String, Path, description = "The event id")),
    request_body = EventChanges,
    responses(
        (status = 200, description = "Updated", body = EventView),
        (status = 400, description = "A field is invalid", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Not signed in", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such event", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn update_event(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<EventChanges>,
) -> Result<Json<EventView>, ApiError> {
    let before = find(&state, &id).await?;
    let mut after = before.clone();
    if let Some(title) = body.title {
        after.title = title.trim().to_owned();
    }
    if let Some(description) = body.description {
        after.description = description;
    }
    if let Some(topics) = body.topics {
        after.topics = Tags::parse(topics.iter().map(String::as_str)).map_err(bad)?;
    }
    if let Some(t) = body.starts_at {
        after.starts_at = t.with_timezone(&Utc);
    }
    if let Some(t) = body.ends_at {
        after.ends_at = t.with_timezone(&Utc);
    }
    if let Some(l) = body.location {
        after.location = Location::parse(l.name, l.lat, l.lon).map_err(bad)?;
    }
    after.validate().map_err(bad)?;
    state.store.update_event(&before, &after).await?;
    Ok(Json(after.into()))
}

/// Delete an event (admins).
#[utoipa::path(
    delete, path = "/v1/events/{id}", tag = "events",
    params(("id" = String, Path, description = "The event id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Not signed in", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such event", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn delete_event(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let event = find(&state, &id).await?;
    state.store.delete_event(&event).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only events with this topic.
    topic: Option<String>,
    /// Events starting at or after this instant (RFC 3339; default now).
    #[param(value_type = Option<String>, format = DateTime)]
    from: Option<String>,
    /// Events starting before this instant (default `from` + 7 days; at most 366 days on).
    #[param(value_type = Option<String>, format = DateTime)]
    to: Option<String>,
    /// `lat,lon`: only events within `radius_km` of this point.
    #[param(example = "48.8566,2.3522")]
    near: Option<String>,
    /// Search radius around `near`, km (default 10, at most 500).
    #[param(value_type = Option<f64>, minimum = 0, maximum = 500)]
    radius_km: Option<String>,
    /// The `next` value of the previous page.
    #[param(min_length = 1)]
    cursor: Option<String>,
    /// Page size, 1 to 100 (default 20).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    limit: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct EventPage {
    events: Vec<EventView>,
    /// Pass as `cursor` for the next page; absent when there are no more.
    next: Option<String>,
}

fn instant(raw: Option<&str>, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    raw.map(|s| {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| {
                ApiError::BadRequest(format!(
                    "{name} must be an RFC 3339 time such as 2026-05-01T18:00:00+02:00, not {}",
                    echo(s)
                ))
            })
    })
    .transpose()
}

fn near(raw: Option<&str>, radius: Option<&str>) -> Result<Option<(Point, f64)>, ApiError> {
    let Some(raw) = raw else {
        return match radius {
            Some(_) => Err(ApiError::BadRequest("radius_km needs near=lat,lon".into())),
            None => Ok(None),
        };
    };
    let coords = || {
        ApiError::BadRequest(format!(
            "near must be lat,lon with -90 <= lat <= 90 and -180 <= lon <= 180, not {}",
            echo(raw)
        ))
    };
    let (lat, lon) = raw.split_once(',').ok_or_else(coords)?;
    let point = match (lat.trim().parse(), lon.trim().parse()) {
        (Ok(lat), Ok(lon)) => Point::new(lat, lon).ok_or_else(coords)?,
        _ => return Err(coords()),
    };
    let radius = match radius {
        None => DEFAULT_RADIUS_KM,
        Some(r) => r
            .parse::<f64>()
            .ok()
            .filter(|r| *r > 0.0 && *r <= MAX_RADIUS_KM)
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "radius_km must be more than 0 and at most {MAX_RADIUS_KM}, not {r:?}"
                ))
            })?,
    };
    Ok(Some((point, radius)))
}

fn search_of(q: ListQuery) -> Result<Search, ApiError> {
    let from = instant(q.from.as_deref(), "from")?.unwrap_or_else(Utc::now);
    let to = instant(q.to.as_deref(), "to")?.unwrap_or(from + Duration::days(DEFAULT_WINDOW_DAYS));
    if from > to {
        return Err(ApiError::BadRequest("from must not be after to".into()));
    }
    if to - from > Duration::days(MAX_WINDOW_DAYS) {
        return Err(ApiError::BadRequest(format!(
            "from and to may be at most {MAX_WINDOW_DAYS} days apart"
        )));
    }
    let limit = parse_limit(q.limit.as_deref(), DEFAULT_LIMIT)?;
    let after = match q.cursor.as_deref() {
        None => None,
        Some(c) => Some(
            EventKey::parse_cursor(c)
                .ok_or_else(|| ApiError::BadRequest(format!("unknown cursor {c:?}")))?,
        ),
    };
    let topic = q.topic.map(|t| t.trim().to_lowercase());
    Ok(Search {
        topic,
        from,
        to,
        near: near(q.near.as_deref(), q.radius_km.as_deref())?,
        after,
        limit,
    })
}

/// Search events: by topic, start time range and place, in any combination, ordered by
/// start time.
#[utoipa::path(
    get, path = "/v1/events", tag = "events",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of events", body = EventPage),
        (status = 400, description = "A bad filter, range, limit or cursor", body = ProblemDoc, content_type = "application/problem+json"),
    ),
)]
async fn list_events(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<EventPage>, ApiError> {
    let search = search_of(query)?;
    let page = catalogue::search(&state.store, &search).await?;
    Ok(Json(EventPage {
        events: page.events.into_iter().map(EventView::from).collect(),
        next: page.next.map(EventKey::to_cursor),
    }))
}
