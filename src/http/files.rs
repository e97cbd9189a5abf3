//! Image bytes by name: `GET /i/{name}`. Names are content addresses, so a response never
//! changes: strong ETag (the sha1), immutable caching, 304 on a match, single byte ranges.
//! Served from memory once read (files up to an eighth of `images.file_cache_mib`, at most
//! 8 MiB), larger ones streamed from disk; the store is not consulted.

use std::io::SeekFrom;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::echo;
use super::extract::ApiPath;
use super::{ApiError, AppState};
use crate::domain::ImageName;
use crate::media::{MediaError, Opened};

/// Read size when streaming a file out (one blocking-pool trip each).
const CHUNK: usize = 256 * 1024;
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(serve_file))
}

/// An image's bytes by name.
///
/// Strong `ETag` (the sha1), `Cache-Control: immutable`, `304` on `If-None-Match`, and
/// single byte ranges.
#[utoipa::path(
    get, path = "/i/{name}", tag = "images",
    params(
        ("name" = String, Path, description = "`<sha1>.<jpg|png|gif|webp>`"),
        ("if-none-match" = Option<String>, Header, description = "A previously seen ETag"),
        ("range" = Option<String>, Header, description = "One byte range, e.g. `bytes=0-1023`"),
    ),
    responses(
        (status = 200, description = "The bytes", content_type = "image/*", body = Vec<u8>),
        (status = 206, description = "The requested range", content_type = "image/*", body = Vec<u8>),
        (status = 304, description = "Not modified"),
        (status = 404, description = "No such file", body = super::error::ProblemDoc, content_type = "application/problem+json"),
        (status = 416, description = "Range outside the file", body = super::error::ProblemDoc, content_type = "application/problem+json"),
    ),
)]
async fn serve_file(
    State(state): State<AppState>,
    ApiPath(raw): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let missing = || ApiError::not_found(format!("no image named {}", echo(&raw)));
    let name = ImageName::parse(&raw).ok_or_else(missing)?;
    let etag = format!("\"{}\"", name.sha1());
    let etag_value =
        HeaderValue::from_str(&etag).map_err(|e| ApiError::internal("the etag header", e))?;
    let opened = match state.media.open_file(&name).await {
        Ok(opened) => opened,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing()),
        Err(e) => return Err(MediaError::from(e).into()),
    };
    let common = [
        (header::ETAG, etag_value),
        (header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE)),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::ACCEPT_RANGES, HeaderValue::from_static("bytes")),
    ];
    if etag_matches(&headers, &etag) {
        return Ok((StatusCode::NOT_MODIFIED, common).into_response());
    }
    let length = match &opened {
        Opened::Whole(bytes) => bytes.len() as u64,
        Opened::Large(_, length) => *length,
    };
    let (status, start, count) = match requested_range(&headers, length)? {
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
        HeaderValue::from_static(name.format().mime()),
    );
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
