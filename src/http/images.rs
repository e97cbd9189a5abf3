//! Image metadata and uploads: upload, random sample, read, re-tag, delete, and the
//! signed-in user's own images. Drafts' own routes (their bytes, attach) are in `drafts`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use axum::Json;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use super::client_ip::ClientIp;
use super::drafts::viewer;
use super::error::echo;
use super::extract::{ApiJson, ApiPath, ApiQuery, CurrentUser, MaybeUser};
use super::paging::{PageQuery, next_cursor};
use super::{ApiError, AppState};
use crate::actors::Ingested;
use crate::actors::uploads::Uploader;
use crate::domain::{ImageId, ImageSummary, Tags, UserId};
use crate::media::{MediaError, StagedUpload, stage};
use crate::views::{ImageView, RandomImages, sample_entry};

/// Most images one `/random` call returns.
const MAX_RANDOM: usize = 100;
/// Largest `tags` form field accepted in a multipart upload.
const MAX_TAGS_FIELD: usize = 4096;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        // The body limit is enforced while streaming, so axum's buffered limit is off here.
        .routes(routes!(upload).map(|r| r.layer(DefaultBodyLimit::disable())))
        .routes(routes!(random))
        .routes(routes!(get_image, retag_image, delete_image))
        .routes(routes!(my_images))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct UploadQuery {
    /// Comma-separated tags for a raw-body upload (`llama,cute`).
    tags: Option<String>,
    /// Store it as a draft: seen only by you (or, for an anonymous upload, whoever holds
    /// the claim token in the answer) until attached with `POST /v1/images/attach`, and
    /// gone after `uploads.draft_ttl_secs` if it never is.
    draft: Option<bool>,
}

/// The multipart form of an upload.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct UploadForm {
    /// The image: JPEG, PNG, GIF or WebP.
    #[schema(format = Binary, content_media_type = "application/octet-stream")]
    file: String,
    /// Comma-separated tags.
    tags: Option<String>,
}

/// Upload an image.
///
/// Send the bytes as the raw body (`Content-Type: image/*`) or as `multipart/form-data`
/// with a `file` part. The body is streamed to disk; the content is checked by its magic
/// bytes and a decode under limits, whatever its declared type. What is stored keeps only
/// the EXIF orientation and the ICC profile of its metadata (GPS, camera, XMP, IPTC and
/// text go; the pixels are untouched), and is named by the sha1 of what is stored (a PNG
/// the optimizer later recompresses losslessly keeps that name).
///
/// With `draft=true` it is a draft (`"state": "draft"`): absent from `/random`, listings
/// and the push topic, its bytes served only at `draft_url` to its owner, until it is
/// attached; an anonymous draft's answer carries a `claim_token`, shown only then.
#[utoipa::path(
    post, path = "/v1/images", tag = "images",
    params(UploadQuery),
    request_body(content(
        (Vec<u8> = "image/*"),
        (UploadForm = "multipart/form-data"),
    )),
    responses(
        (status = 201, description = "Stored", body = ImageView,
            headers(("location" = String, description = "The new image's metadata URL"))),
        (status = 400, description = "Malformed form or tags", body = super::error::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Sign in first (unless anonymous uploads are on)", body = super::error::ProblemDoc, content_type = "application/problem+json"),
        (status = 413, description = "Larger than `uploads.max_bytes`", body = super::error::ProblemDoc, content_type = "application/problem+json"),
        (status = 415, description = "Not JPEG, PNG, GIF or WebP", body = super::error::ProblemDoc, content_type = "application/problem+json"),
        (status = 422, description = "Corrupt, truncated, or over the dimension limits", body = super::error::ProblemDoc, content_type = "application/problem+json"),
        (status = 408, description = "The body arrived slower than `uploads.min_bytes_per_sec`", body = super::error::ProblemDoc, content_type = "application/problem+json"),
        (status = 429, description = "Over the upload rate limit, or `uploads.max_in_flight_per_client` uploads of yours are in flight; see Retry-After", body = super::error::ProblemDoc, content_type = "application/problem+json"),
        (status = 503, description = "The upload pool is full; see Retry-After", body = super::error::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("bearer" = [])),
)]
#[tracing::instrument(name = "images.upload", skip_all)]
async fn upload(
    State(state): State<AppState>,
    MaybeUser(user): MaybeUser,
    ClientIp(ip): ClientIp,
    ApiQuery(query): ApiQuery<UploadQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let result = match (query, user) {
        (_, None) if !state.settings.uploads.allow_anonymous => Err(ApiError::Unauthorized(
            "sign in to upload: send Authorization: Bearer <token>".into(),
        )),
        (query, user) => {
            let uploader = match &user {
                Some(user) => Uploader::User(user.id),
                None => Uploader::Address(ip),
            };
            stage_and_ingest(&state, query, uploader, user.map(|u| u.id), request).await
        }
    };
    let outcome = match &result {
        Ok((done, _)) if done.new_file => "created",
        Ok(_) => "deduplicated",
        Err(e) => match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported",
            StatusCode::UNPROCESSABLE_ENTITY => "invalid",
            StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED => "bad_request",
            StatusCode::REQUEST_TIMEOUT => "too_slow",
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => "overloaded",
            _ => "failed",
        },
    };
    metrics::counter!("corral_uploads_total", "outcome" => outcome).increment(1);
    metrics::histogram!("corral_upload_duration_seconds").record(started.elapsed().as_secs_f64());
    let (done, claim_token) = result?;
    metrics::counter!("corral_upload_bytes_total").increment(done.image.bytes);
    metrics::histogram!("corral_upload_size_bytes").record(done.image.bytes as f64);
    let location = format!("/v1/images/{}", done.image.id);
    let view = ImageView::with_claim(done.image, &state.settings.http.public_url, claim_token);
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
    uploader: Uploader,
    owner: Option<UserId>,
    request: Request,
) -> Result<(Ingested, Option<String>), ApiError> {
    let u = &state.settings.uploads;
    // Held until the upload is answered: one client cannot fill the whole pool.
    let admission = state.images.admit(uploader)?;
    let limit = u.max_bytes;
    let (parts, body) = request.into_parts();
    let pace = Pace::new(
        u.min_bytes_per_sec,
        Duration::from_secs(u.min_rate_window_secs),
    );
    let body = pace.watch(body.into_data_stream());
    let staged = match content_type(&parts.headers).as_str() {
        t if t.starts_with("image/") => {
            // A raw body is the file itself, so its declared length can refuse it at once
            // (a multipart body's length includes the form's framing).
            if content_length(&parts.headers).is_some_and(|n| n > limit) {
                return Err(MediaError::TooLarge { limit }.into());
            }
            let tags = Tags::parse_csv(query.tags.as_deref().unwrap_or(""))?;
            stage(&state.media, body, limit)
                .await
                .map(|staged| (staged, tags))
                .map_err(ApiError::from)
        }
        "multipart/form-data" => {
            let request = Request::from_parts(parts, axum::body::Body::from_stream(body));
            stage_multipart(state, request, limit).await
        }
        _ => {
            return Err(ApiError::UnsupportedMediaType(
                "send the image as a raw body with Content-Type image/*, or as multipart/form-data with a `file` part".into(),
            ));
        }
    };
    let (staged, tags) = staged.map_err(|e| match pace.too_slow() {
        true => ApiError::RequestTimeout(format!(
            "the upload arrived slower than {} bytes a second; send it again faster",
            u.min_bytes_per_sec
        )),
        false => e,
    })?;
    let draft = query.draft.unwrap_or(false);
    Ok(state
        .images
        .ingest(admission, staged, tags, owner, draft)
        .await?)
}

/// Ends a body that arrives slower than `uploads.min_bytes_per_sec`: every window (the
/// first is the grace period) must bring `min_bytes_per_sec x window` bytes. Like
/// nginx's `client_body_timeout`, but a trickle of a byte a second does not pass.
struct Pace {
    per_window: u64,
    window: Duration,
    tripped: Arc<AtomicBool>,
}

impl Pace {
    fn new(min_bytes_per_sec: u64, window: Duration) -> Self {
        Self {
            per_window: min_bytes_per_sec.saturating_mul(window.as_secs()),
            window,
            tripped: Arc::default(),
        }
    }

    /// Whether a body this pace watched was ended for being too slow.
    fn too_slow(&self) -> bool {
        self.tripped.load(Ordering::Relaxed)
    }

    fn watch<S>(&self, body: S) -> impl Stream<Item = Result<Bytes, axum::Error>> + Send + use<S>
    where
        S: Stream<Item = Result<Bytes, axum::Error>> + Send + Unpin,
    {
        let (per_window, window, tripped) = (self.per_window, self.window, self.tripped.clone());
        let state = (body, tokio::time::Instant::now() + window, 0u64);
        futures_util::stream::unfold(Some(state), move |state| {
            let tripped = tripped.clone();
            async move {
                let (mut body, mut deadline, mut got) = state?;
                loop {
                    if per_window == 0 {
                        let chunk = body.next().await?;
                        return Some((chunk, Some((body, deadline, got))));
                    }
                    match tokio::time::timeout_at(deadline, body.next()).await {
                        Ok(chunk) => {
                            let chunk = chunk?;
                            if let Ok(bytes) = &chunk {
                                got += bytes.len() as u64;
                            }
                            return Some((chunk, Some((body, deadline, got))));
                        }
                        Err(_) if got < per_window => {
                            tripped.store(true, Ordering::Relaxed);
                            let e = axum::Error::new("the upload body arrived too slowly");
                            return Some((Err(e), None));
                        }
                        Err(_) => (deadline, got) = (tokio::time::Instant::now() + window, 0),
                    }
                }
            }
        })
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

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct RandomQuery {
    /// How many distinct images, 1 to 100 (default 1).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    count: Option<String>,
    /// Makes the pick reproducible: the same seed gives the same images, in the same
    /// order, while the server's sample is unchanged (an upload, a delete or a restart
    /// may change it). 1 to 64 characters.
    #[param(min_length = 1, max_length = 64)]
    seed: Option<String>,
    /// Only images carrying this tag.
    #[param(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    tag: Option<String>,
}

/// `tag` checked (and lowercased) like an image's tags.
pub(super) fn checked_tag(tag: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(tag) = tag else { return Ok(None) };
    let parsed = Tags::parse([tag])?;
    Ok(parsed.as_slice().first().cloned())
}

/// Most rows read from the store's tag index when the sample holds too few of a tag.
const RARE_TAG_READ: usize = 1000;

/// Up to `count` distinct images carrying `tag`: drawn from the in-memory sample when it
/// holds at least `count` of them; else from the store's tag index (its first
/// `RARE_TAG_READ` rows), when that has more than the sample. Reproducible by `seed`
/// like an untagged draw.
pub(super) async fn pick_tagged(
    state: &AppState,
    count: usize,
    seed: Option<&str>,
    tag: &str,
) -> Result<Vec<Arc<ImageSummary>>, ApiError> {
    let sample = &state.actors.sample;
    let in_sample = sample.count_tagged(tag);
    if in_sample < count {
        let stored = state.store.images_by_tag(tag, None, RARE_TAG_READ).await?;
        if stored.len() > in_sample {
            metrics::counter!("corral_random_tag_store_reads_total").increment(1);
            return Ok(
                crate::actors::image_pool::indices(stored.len(), count, seed)
                    .into_iter()
                    .map(|i| Arc::new(stored[i].summary()))
                    .collect(),
            );
        }
    }
    let mut picked = Vec::with_capacity(count.min(in_sample));
    sample.pick_each(count, seed, Some(tag), |s| picked.push(s.clone()));
    Ok(picked)
}

/// `seed` checked: 1 to 64 characters.
pub(super) fn checked_seed(seed: Option<&str>) -> Result<Option<&str>, ApiError> {
    match seed {
        Some(seed) if seed.is_empty() || seed.chars().count() > 64 => Err(ApiError::BadRequest(
            format!("seed must be 1 to 64 characters, not {}", echo(seed)),
        )),
        seed => Ok(seed),
    }
}

/// Random images.
///
/// Up to `count` distinct images drawn from the in-memory sample (fewer when fewer exist),
/// at random or, with `seed`, reproducibly; with `tag`, only images carrying it (a tag
/// too rare for the sample is drawn from the store's first 1,000 images with it). An
/// empty list when none matches. Never cached; the files the URLs point to are cached
/// forever.
#[utoipa::path(
    get, path = "/v1/images/random", tag = "images",
    params(RandomQuery),
    responses(
        (status = 200, description = "A random pick", body = RandomImages),
        (status = 400, description = "count is not 1 to 100, seed is not 1 to 64 characters, or tag is not a valid tag", body = super::error::ProblemDoc, content_type = "application/problem+json"),
    ),
)]
async fn random(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<RandomQuery>,
) -> Result<Response, ApiError> {
    let count = match query.count.as_deref() {
        None => 1,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_RANDOM).contains(n))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "count must be a whole number from 1 to {MAX_RANDOM}, not {}",
                    echo(raw)
                ))
            })?,
    };
    // `{"images":[...]}` (RandomImages) from each entry's JSON, rendered once per entry
    // (the public URL prefix is fixed for the process's life).
    let public_url = &state.settings.http.public_url;
    let mut body = Vec::with_capacity(16 + count * 192);
    body.extend_from_slice(b"{\"images\":[");
    let mut first = true;
    let seed = checked_seed(query.seed.as_deref())?;
    let mut add = |s: &Arc<ImageSummary>| {
        if !std::mem::take(&mut first) {
            body.push(b',');
        }
        body.extend_from_slice(sample_entry(s, public_url));
    };
    match checked_tag(query.tag.as_deref())? {
        None => state.actors.sample.pick_each(count, seed, None, add),
        Some(tag) => pick_tagged(&state, count, seed, &tag)
            .await?
            .iter()
            .for_each(&mut add),
    }
    body.extend_from_slice(b"]}");
    // A random pick must never be cached; the files it points to are cached forever.
    Ok((
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response())
}

/// An image's metadata.
#[utoipa::path(
    get, path = "/v1/images/{id}", tag = "images",
    params(
        ("id" = String, Path, description = "The image id"),
        ("Claim-Token" = Option<String>, Header, description = "An anonymous draft's claim token"),
    ),
    responses(
        (status = 200, description = "The image", body = ImageView),
        (status = 404, description = "No such image (or a draft not yours, or expired)", body = super::error::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("bearer" = [])),
)]
async fn get_image(
    State(state): State<AppState>,
    MaybeUser(user): MaybeUser,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ImageView>, ApiError> {
    let image = state.images.find(&id, viewer(&user, &headers)).await?;
    Ok(Json(ImageView::new(image, &state.settings.http.public_url)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Retag {
    /// The new tags, replacing the old ones: up to 32 of 1 to 64 characters of a-z, 0-9,
    /// `-`, `_`, `.` (lowercased).
    #[schema(max_items = 32, value_type = Vec<TagName>)]
    tags: Vec<String>,
}

/// One tag (or event topic) as the schema states it (the handlers parse the strings).
#[derive(ToSchema)]
#[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
#[allow(dead_code)]
pub(super) struct TagName(String);

/// Replace an image's tags (owner or admin).
#[utoipa::path(
    patch, path = "/v1/images/{id}", tag = "images",
    params(("id" = String, Path, description = "The image id")),
    request_body = Retag,
    responses(
        (status = 200, description = "Re-tagged", body = ImageView),
        (status = 400, description = "Bad tags", body = super::error::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Not signed in", body = super::error::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such image of yours", body = super::error::ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn retag_image(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Retag>,
) -> Result<Json<ImageView>, ApiError> {
    let image = state.images.find_own(&id, &user).await?;
    let tags = Tags::parse(body.tags.iter().map(String::as_str))?;
    let image = state.images.retag(&image, &tags).await?;
    Ok(Json(ImageView::new(image, &state.settings.http.public_url)))
}

/// Delete an image (owner or admin). Its file goes once no other upload shares it.
#[utoipa::path(
    delete, path = "/v1/images/{id}", tag = "images",
    params(("id" = String, Path, description = "The image id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Not signed in", body = super::error::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such image of yours", body = super::error::ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn delete_image(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let image = state.images.find_own(&id, &user).await?;
    state.images.delete(&image).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
struct ImagePage {
    images: Vec<ImageView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    next: Option<String>,
}

/// The signed-in user's images, newest first.
#[utoipa::path(
    get, path = "/v1/users/me/images", tag = "images",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of your images", body = ImagePage),
        (status = 400, description = "Bad limit or cursor", body = super::error::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Not signed in", body = super::error::ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn my_images(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<ImagePage>, ApiError> {
    let (limit, before) = query.parse()?;
    let images = state
        .store
        .images_by_owner(user.id, before.map(ImageId), limit)
        .await?;
    let next = next_cursor(&images, limit, |i| i.id.0);
    let public_url = &state.settings.http.public_url;
    Ok(Json(ImagePage {
        images: images
            .into_iter()
            .map(|i| ImageView::new(i, public_url))
            .collect(),
        next,
    }))
}
