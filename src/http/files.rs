//! Image bytes by name: `GET /i/{name}`, and its variants (`?w=256&format=webp`: resized
//! and re-encoded, made on first request). Names are content addresses (the sha1 of the
//! bytes as uploaded) and a variant's recipe is in its URL, so what a URL shows never
//! changes: immutable caching, a strong ETag (the sha1 and the length of the bytes: the
//! optimizer may recompress an original losslessly, and the shorter file must not match
//! the longer one's validator; for a variant, the sha1 and the recipe), 304 on a match,
//! single byte ranges. Served
//! from memory once read (files up to an eighth of `images.file_cache_mib`, at most
//! 8 MiB), larger ones streamed from disk; the store is not consulted.

use std::io::SeekFrom;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::echo;
use super::extract::{ApiPath, ApiQuery};
use super::{ApiError, AppState};
use crate::domain::ImageName;
use crate::media::{Asked, MediaError, Opened, Recipe, StoredFile};

/// Read size when streaming a file out (one blocking-pool trip each).
const CHUNK: usize = 256 * 1024;
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(serve_file))
        .routes(routes!(random_file))
}

/// Asks for a random image's file.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct RandomFileQuery {
    /// Makes the pick reproducible, as on `/v1/images/random`: 1 to 64 characters.
    #[param(min_length = 1, max_length = 64)]
    seed: Option<String>,
    /// Only images carrying this tag, as on `/v1/images/random`.
    #[param(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    tag: Option<String>,
    /// A variant of this width (one of `images.variant_sizes`), passed on to `/i/{name}`.
    #[param(value_type = Option<u32>)]
    w: Option<String>,
    /// The variant's format, passed on to `/i/{name}` (needs `w`).
    #[param(value_type = Option<String>, pattern = "^(jpeg|png|webp|gif|auto)$")]
    format: Option<String>,
}

/// A random image's file, by redirect.
///
/// `302 Found` to `/i/{name}` of an image drawn from the in-memory sample (with `w` and
/// `format` passed on), with `Cache-Control: no-store`: `<img src="/i/random?w=256&format=auto">`
/// shows another image on each load, while the file it lands on stays cacheable forever.
#[utoipa::path(
    get, path = "/i/random", tag = "images",
    params(RandomFileQuery),
    responses(
        (status = 302, description = "To the file", headers(
            ("location" = String, description = "`/i/{name}`, with `w` and `format` when given"),
            ("cache-control" = String, description = "`no-store`"),
        )),
        (status = 400, description = "A bad seed, tag, width or format", body = super::error::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No images yet (or none with the tag)", body = super::error::ProblemDoc, content_type = "application/problem+json"),
    ),
)]
async fn random_file(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<RandomFileQuery>,
) -> Result<Response, ApiError> {
    let seed = super::images::checked_seed(query.seed.as_deref())?;
    let sizes = &state.settings.images.variant_sizes;
    let (w, format) = (query.w.as_deref(), query.format.as_deref());
    let variant = Asked::parse(w, None, None, format, sizes)
        .map_err(ApiError::BadRequest)?
        .is_some();
    let picked = match super::images::checked_tag(query.tag.as_deref())? {
        None => state
            .actors
            .sample
            .pick_one(seed, None)
            .ok_or_else(|| ApiError::not_found("there are no images yet"))?,
        Some(tag) => super::images::pick_tagged(&state, 1, seed, &tag)
            .await?
            .pop()
            .ok_or_else(|| ApiError::not_found(format!("no image carries the tag {tag:?}")))?,
    };
    let mut location = format!("{}/i/{}", state.settings.http.public_url, picked.name);
    if let (true, Some(w)) = (variant, w) {
        location.push_str(&format!("?w={w}"));
        if let Some(format) = format {
            location.push_str(&format!("&format={format}"));
        }
    }
    let location = HeaderValue::from_str(&location)
        .map_err(|e| ApiError::internal("the location header", e))?;
    Ok((
        StatusCode::FOUND,
        [
            (header::LOCATION, location),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
    )
        .into_response())
}

/// Asks for a variant of the image instead of the original. With none of these, the
/// original is served.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct VariantQuery {
    /// Largest width in pixels: one of `images.variant_sizes` (by default 64, 128, 256,
    /// 512, 1024, 2048). Never enlarged: a smaller image keeps its size. A variant needs
    /// `w` or `h` (or both).
    #[param(value_type = Option<u32>)]
    w: Option<String>,
    /// Largest height in pixels: one of `images.variant_sizes`.
    #[param(value_type = Option<u32>)]
    h: Option<String>,
    /// Only with both `w` and `h`: `contain` (whole, inside the box; the default) or
    /// `cover` (fills the box, cut around the centre).
    #[param(value_type = Option<String>, pattern = "^(contain|cover)$")]
    fit: Option<String>,
    /// `jpeg`, `png`, `webp`, `gif`, or `auto` (WebP when `Accept` takes it, else the
    /// original's format; answered with `Vary: Accept`). Default: the original's format.
    #[param(value_type = Option<String>, pattern = "^(jpeg|png|webp|gif|auto)$")]
    format: Option<String>,
}

/// An image's bytes by name, or a variant of them.
///
/// Strong `ETag` (`"<sha1>-<length>"`; for a variant, `"<sha1>-<recipe>"`),
/// `Cache-Control: immutable`, `304` on `If-None-Match`, and single byte ranges. The
/// optimizer may recompress a PNG original losslessly: same name and pixels, fewer bytes,
/// another `ETag`. A variant is made on its
/// first request (upright, shrunk, re-encoded, without metadata) and kept.
#[utoipa::path(
    get, path = "/i/{name}", tag = "images",
    params(
        ("name" = String, Path, description = "`<sha1>.<jpg|png|gif|webp>`"),
        VariantQuery,
        ("if-none-match" = Option<String>, Header, description = "A previously seen ETag"),
        ("range" = Option<String>, Header, description = "One byte range, e.g. `bytes=0-1023`"),
    ),
    responses(
        (status = 200, description = "The bytes", content_type = "image/*", body = Vec<u8>),
        (status = 206, description = "The requested range", content_type = "image/*", body = Vec<u8>),
        (status = 304, description = "Not modified"),
        (status = 400, description = "A variant parameter is not allowed", body = super::error::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such file", body = super::error::ProblemDoc, content_type = "application/problem+json"),
        (status = 416, description = "Range outside the file", body = super::error::ProblemDoc, content_type = "application/problem+json"),
    ),
)]
async fn serve_file(
    State(state): State<AppState>,
    ApiPath(raw): ApiPath<String>,
    // The request itself, not `HeaderMap`: that extractor copies every header.
    request: Request,
) -> Result<Response, ApiError> {
    let headers = request.headers();
    let missing = || ApiError::not_found(format!("no image named {}", echo(&raw)));
    let name = ImageName::parse(&raw).ok_or_else(missing)?;
    let variant = match request.uri().query() {
        None => None,
        Some(_) => {
            let Query(query) = Query::<VariantQuery>::try_from_uri(request.uri())
                .map_err(|e| ApiError::BadRequest(e.body_text()))?;
            query.recipe(&name, headers, &state.settings.images.variant_sizes)?
        }
    };
    let (etag, format, opened) = match variant {
        None => {
            let opened = state
                .media
                .open_file(&StoredFile::Original(name.clone()))
                .await;
            // Completed with the length below: a recompressed original keeps its name.
            (None, name.format(), opened.map_err(MediaError::from))
        }
        Some((recipe, _)) => {
            let opened = state.variants.open(&name, recipe).await;
            let etag = format!("\"{}-{}\"", name.sha1(), recipe.file_name());
            (Some(etag), recipe.format(), opened)
        }
    };
    let opened = match opened {
        Ok(opened) => opened,
        Err(MediaError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(missing());
        }
        Err(e) => return Err(e.into()),
    };
    let length = match &opened {
        Opened::Whole(bytes) => bytes.len() as u64,
        Opened::Large(_, length) => *length,
    };
    let etag = etag.unwrap_or_else(|| format!("\"{}-{length}\"", name.sha1()));
    let etag_value =
        HeaderValue::from_str(&etag).map_err(|e| ApiError::internal("the etag header", e))?;
    let common = [
        (header::ETAG, etag_value),
        (header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE)),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::ACCEPT_RANGES, HeaderValue::from_static("bytes")),
    ];
    let vary = variant.is_some_and(|(_, by_accept)| by_accept);
    if etag_matches(headers, &etag) {
        let mut response = (StatusCode::NOT_MODIFIED, common).into_response();
        if vary {
            response
                .headers_mut()
                .insert(header::VARY, HeaderValue::from_static("accept"));
        }
        return Ok(response);
    }
    // `If-Range` with another validator: the client's copy is not this one, so the whole
    // file, not a piece of it (RFC 9110, 13.1.5).
    let range_applies = headers
        .get(header::IF_RANGE)
        .is_none_or(|v| v.as_bytes() == etag.as_bytes());
    let range = if range_applies {
        requested_range(headers, length)?
    } else {
        None
    };
    let (status, start, count) = match range {
        Some((start, end)) => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        None => (StatusCode::OK, 0, length),
    };
    let body = match opened {
        Opened::Whole(bytes) => Body::from(bytes.slice(start as usize..(start + count) as usize)),
        Opened::Large(file, _) => {
            let mut file = tokio::fs::File::from_std(file);
            if start > 0 {
                file.seek(SeekFrom::Start(start))
                    .await
                    .map_err(|e| ApiError::internal(format!("seeking in {name}"), e))?;
            }
            Body::from_stream(ReaderStream::with_capacity(file.take(count), CHUNK))
        }
    };
    let mut response = (status, common, body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.mime()),
    );
    if vary {
        h.insert(header::VARY, HeaderValue::from_static("accept"));
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    if status == StatusCode::PARTIAL_CONTENT {
        let range = format!("bytes {start}-{}/{length}", start + count - 1);
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&range)
                .map_err(|e| ApiError::internal("the content-range header", e))?,
        );
    }
    Ok(response)
}

impl VariantQuery {
    /// The variant asked for (and whether `Accept` chose its format), or `None` for the
    /// original; a 400 problem for a size off the allow-list or an unknown fit or format.
    fn recipe(
        self,
        source: &ImageName,
        headers: &HeaderMap,
        sizes: &[u32],
    ) -> Result<Option<(Recipe, bool)>, ApiError> {
        let asked = Asked::parse(
            self.w.as_deref(),
            self.h.as_deref(),
            self.fit.as_deref(),
            self.format.as_deref(),
            sizes,
        )
        .map_err(ApiError::BadRequest)?;
        Ok(asked.map(|asked| {
            let webp = asked.by_accept() && accepts_webp(headers);
            (asked.recipe(source.format(), webp), asked.by_accept())
        }))
    }
}

/// `Accept` names `image/webp` (not with `q=0`).
fn accepts_webp(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let webp = parts
                .next()
                .is_some_and(|t| t.eq_ignore_ascii_case("image/webp"));
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            webp && !refused
        })
}

/// `If-None-Match` holds `*` or our ETag (weak comparison, as RFC 9110 asks for GET).
fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == etag)
}

/// One satisfiable byte range `(first, last)`, inclusive. Several ranges or a malformed
/// header are ignored (the whole file is served, as RFC 9110 allows); a range starting
/// past the end is refused with 416.
fn requested_range(headers: &HeaderMap, length: u64) -> Result<Option<(u64, u64)>, ApiError> {
    let Some(spec) = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
    else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let unsatisfiable = || ApiError::RangeNotSatisfiable {
        detail: format!("the range {spec:?} is outside the file's {length} bytes"),
        length,
    };
    let range = match (first.parse::<u64>(), last.parse::<u64>()) {
        (Ok(a), Ok(b)) if a <= b => (a, b.min(length.saturating_sub(1))),
        (Ok(a), Err(_)) if last.is_empty() => (a, length.saturating_sub(1)),
        (Err(_), Ok(n)) if first.is_empty() && n > 0 => {
            (length.saturating_sub(n), length.saturating_sub(1))
        }
        (Err(_), Ok(0)) if first.is_empty() => return Err(unsatisfiable()),
        _ => return Ok(None),
    };
    if range.0 >= length {
        return Err(unsatisfiable());
    }
    Ok(Some(range))
}
