//! Image metadata and uploads: `POST /v1/images`, `GET /v1/images/random`,
//! `GET /v1/images/{id}`.

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ractor::rpc::CallResult;
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState};
use crate::actors::{Ingested, UploadMsg};
use crate::domain::{Image, ImageFormat, ImageId, Tags};
use crate::media::{MediaError, StagedUpload, stage};

/// Most images one `/random` call returns.
const MAX_RANDOM: usize = 100;
/// Largest `tags` form field accepted in a multipart upload.
const MAX_TAGS_FIELD: usize = 4096;
/// Seconds a client is told to wait when the upload pool is full.
const RETRY_AFTER_SECS: u32 = 1;

pub fn router() -> Router<AppState> {
    Router::new()
        // The body limit is enforced while streaming, so axum's buffered limit is off here.
        .route(
            "/v1/images",
            post(upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/images/random", get(random))
        .route("/v1/images/{id}", get(get_image))
}

/// An image as the API shows it.
#[derive(Serialize)]
pub struct ImageView {
    id: ImageId,
    name: String,
    url: String,
    sha1: String,
    format: ImageFormat,
    width: u32,
    height: u32,
    bytes: u64,
    tags: Tags,
    created_at: chrono::DateTime<chrono::Utc>,
}

impl ImageView {
    fn new(image: Image, public_url: &str) -> Self {
        Self {
            url: file_url(public_url, &image.name),
            id: image.id,
            name: image.name,
            sha1: image.sha1,
            format: image.format,
            width: image.width,
            height: image.height,
            bytes: image.bytes,
            tags: image.tags,
            created_at: image.created_at,
        }
    }
}

fn file_url(public_url: &str, name: &str) -> String {
    format!("{}/i/{name}", public_url.trim_end_matches('/'))
}

#[derive(Deserialize)]
struct UploadQuery {
    tags: Option<String>,
}

#[tracing::instrument(name = "images.upload", skip_all)]
async fn upload(
    State(state): State<AppState>,
    query: Result<Query<UploadQuery>, QueryRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let result = match query {
        Ok(Query(query)) => stage_and_ingest(&state, query, request).await,
        Err(e) => Err(bad_query(e)),
    };
    let outcome = match &result {
        Ok(done) if done.new_file => "created",
        Ok(_) => "deduplicated",
        Err(e) => match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported",
            StatusCode::UNPROCESSABLE_ENTITY => "invalid",
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::SERVICE_UNAVAILABLE => "overloaded",
            _ => "failed",
        },
    };
    metrics::counter!("corral_uploads_total", "outcome" => outcome).increment(1);
    let done = result?;
    metrics::counter!("corral_upload_bytes_total").increment(done.image.bytes);
    let location = format!("/v1/images/{}", done.image.id);
    let view = ImageView::new(done.image, &state.settings.http.public_url);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(view),
    )
        .into_response())
}

async fn stage_and_ingest(
    state: &AppState,
    query: UploadQuery,
    request: Request,
) -> Result<Ingested, ApiError> {
    let _permit = state
        .upload_slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Overloaded {
            detail: "the upload pool is full; retry shortly".into(),
            retry_after_secs: RETRY_AFTER_SECS,
        })?;
    let limit = state.settings.uploads.max_bytes;
    if content_length(request.headers()).is_some_and(|n| n > limit) {
        return Err(MediaError::TooLarge { limit }.into());
    }
    let (staged, tags) = match content_type(request.headers()).as_str() {
        t if t.starts_with("image/") => {
            let tags = Tags::parse_csv(query.tags.as_deref().unwrap_or(""))?;
            (
                stage(&state.media, request.into_body().into_data_stream(), limit).await?,
                tags,
            )
        }
        "multipart/form-data" => stage_multipart(state, request, limit).await?,
        _ => {
            return Err(ApiError::UnsupportedMediaType(
                "send the image as a raw body with Content-Type image/*, or as multipart/form-data with a `file` part".into(),
            ));
        }
    };
    ingest(state, staged, tags).await
}

/// Hands the staged file to the upload workers and waits (bounded) for the outcome.
async fn ingest(state: &AppState, staged: StagedUpload, tags: Tags) -> Result<Ingested, ApiError> {
    let busy = || ApiError::Overloaded {
        detail: "the upload workers are busy or restarting; retry shortly".into(),
        retry_after_secs: RETRY_AFTER_SECS,
    };
    let uploads = state.actors.uploads.get().ok_or_else(busy)?;
    let timeout = Duration::from_secs(state.settings.uploads.process_timeout_secs);
    let key = staged.sha1;
    let reply = uploads
        .call_job(
            key,
            |reply| UploadMsg::Ingest {
                staged,
                tags,
                reply,
            },
            Some(timeout),
        )
        .await
        .map_err(|_| busy())?;
    match reply {
        CallResult::Success(result) => Ok(result?),
        CallResult::Timeout => Err(busy()),
        CallResult::SenderError => Err(ApiError::Internal(
            "an upload worker stopped before replying".into(),
        )),
    }
}

async fn stage_multipart(
    state: &AppState,
    request: Request,
    limit: u64,
) -> Result<(StagedUpload, Tags), ApiError> {
    let mut form = Multipart::from_request(request, state)
        .await
        .map_err(|e| ApiError::BadRequest(format!("malformed multipart body: {e}")))?;
    let (mut staged, mut tags) = (None, Tags::default());
    while let Some(mut field) = form.next_field().await.map_err(multipart_error)? {
        match field.name() {
            Some("file") if staged.is_none() => {
                staged = Some(stage(&state.media, field, limit).await?)
            }
            Some("file") => {
                return Err(ApiError::BadRequest(
                    "send one `file` part per upload".into(),
                ));
            }
            Some("tags") => {
                let mut text = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                    text.extend_from_slice(&chunk);
                    if text.len() > MAX_TAGS_FIELD {
                        return Err(ApiError::BadRequest(format!(
                            "the `tags` field is over {MAX_TAGS_FIELD} bytes"
                        )));
                    }
                }
                let text = String::from_utf8(text)
                    .map_err(|_| ApiError::BadRequest("`tags` is not UTF-8".into()))?;
                tags = Tags::parse_csv(&text)?;
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unexpected form field {:?}; expected `file` and optionally `tags`",
                    other.unwrap_or("")
                )));
            }
        }
    }
    let staged =
        staged.ok_or_else(|| ApiError::BadRequest("the form has no `file` part".into()))?;
    Ok((staged, tags))
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    ApiError::BadRequest(format!("malformed multipart body: {}", e.body_text()))
}

fn bad_query(e: QueryRejection) -> ApiError {
    ApiError::BadRequest(e.body_text())
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

#[derive(Deserialize)]
struct RandomQuery {
    count: Option<String>,
}

#[derive(Serialize)]
struct RandomImage {
    id: ImageId,
    name: String,
    url: String,
    width: u32,
    height: u32,
}

async fn random(
    State(state): State<AppState>,
    query: Result<Query<RandomQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let count = match query.count.as_deref() {
        None => 1,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_RANDOM).contains(n))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "count must be a whole number from 1 to {MAX_RANDOM}, not {raw:?}"
                ))
            })?,
    };
    let public_url = &state.settings.http.public_url;
    let images: Vec<RandomImage> = state
        .actors
        .sample
        .pick(count)
        .into_iter()
        .map(|s| RandomImage {
            id: s.id,
            url: file_url(public_url, &s.name),
            name: s.name.clone(),
            width: s.width,
            height: s.height,
        })
        .collect();
    // A random pick must never be cached; the files it points to are cached forever.
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        Json(serde_json::json!({ "images": images })),
    )
        .into_response())
}

async fn get_image(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ImageView>, ApiError> {
    let missing = || ApiError::not_found(format!("no image with id {id:?}"));
    let parsed: ImageId = id.parse().map_err(|_| missing())?;
    let image = state.store.get_image(parsed).await?.ok_or_else(missing)?;
    Ok(Json(ImageView::new(image, &state.settings.http.public_url)))
}
