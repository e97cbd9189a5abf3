//! The HTTP layer's one error type, mapped to `application/problem+json` (RFC 9457) in one
//! place. 5xx details go to the log; the client gets a generic detail.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::accounts::AccountsError;
use crate::actors::uploads::IngestError;
use crate::domain::image::DomainError;
use crate::images::ImagesError;
use crate::media::MediaError;
use crate::reminders::RemindersError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    /// No valid session; the client should sign in.
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    /// The client sent its request too slowly.
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{detail}")]
    RangeNotSatisfiable { detail: String, length: u64 },
    #[error("{0}")]
    Unprocessable(String),
    /// The server is at capacity; the client should retry after the given seconds.
    #[error("{detail}")]
    Overloaded {
        detail: String,
        retry_after_secs: u32,
    },
    /// Over a rate limit; retry after the given seconds.
    #[error("{detail}")]
    TooManyRequests {
        detail: String,
        retry_after_secs: u32,
    },
    #[error("{0}")]
    Unavailable(String),
    /// Anything unexpected: logged with its whole chain of causes, never shown.
    #[error("{context}")]
    Internal {
        context: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

/// An RFC 9457 problem document, the body of every error response.
#[derive(utoipa::ToSchema)]
#[schema(as = Problem)]
#[allow(dead_code)]
pub struct ProblemDoc {
    /// Always `about:blank`: the status says what kind of problem it is.
    r#type: String,
    /// The status's reason phrase.
    title: String,
    status: u16,
    /// What went wrong, for a person to read.
    detail: String,
}

#[derive(Serialize)]
struct Problem<'a> {
    r#type: &'static str,
    title: &'a str,
    status: u16,
    detail: &'a str,
}

/// Longest piece of a client's input that a problem's `detail` repeats.
const ECHO_CHARS: usize = 64;

/// A piece of the client's input as a problem's `detail` repeats it: quoted, control
/// characters escaped, and cut to `ECHO_CHARS` characters (then ending in `…`), so a
/// response never reflects more than a short, inert piece of what was sent.
pub fn echo(input: &str) -> String {
    let mut shown: String = input.chars().take(ECHO_CHARS).collect();
    if shown.len() < input.len() {
        shown.push('…');
    }
    format!("{shown:?}")
}

impl ApiError {
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::NotFound(what.into())
    }

    /// An unexpected failure of `context` (what the server was doing), caused by `source`.
    pub fn internal(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Internal {
            context: context.into(),
            source: Some(source.into()),
        }
    }

    /// An unexpected state with no underlying error.
    pub fn unexpected(context: impl Into<String>) -> Self {
        Self::Internal {
            context: context.into(),
            source: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Overloaded { .. } | Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            Self::Internal { .. } => {
                tracing::error!(error = %chain(&self), "request failed");
                "the server hit an unexpected error; it has been logged".to_owned()
            }
            // Rejections written by others (serde's, axum's) may quote the client's
            // input whole: keep the detail short whatever wrote it.
            other => bounded(other.to_string()),
        };
        let body = Problem {
            r#type: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: &detail,
        };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = (status, json).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        // Never let a browser guess another type for an error body (under /i/ it would
        // otherwise sit beside image types).
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        match self {
            Self::Overloaded {
                retry_after_secs, ..
            }
            | Self::TooManyRequests {
                retry_after_secs, ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            Self::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::RangeNotSatisfiable { length, .. } => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{length}")) {
                    headers.insert(header::CONTENT_RANGE, v);
                }
            }
            _ => {}
        }
        response
    }
}

impl From<MediaError> for ApiError {
    fn from(e: MediaError) -> Self {
        match e {
            MediaError::TooLarge { .. } => Self::PayloadTooLarge(e.to_string()),
            MediaError::Unsupported(d) => Self::UnsupportedMediaType(d),
            MediaError::Invalid(d) => Self::Unprocessable(d),
            MediaError::Body(d) => {
                Self::BadRequest(format!("the upload body could not be read: {d}"))
            }
            MediaError::Io(e) if out_of_files(&e) => Self::Overloaded {
                detail: "the server has too many files open; retry shortly".into(),
                retry_after_secs: 1,
            },
            MediaError::Io(e) => Self::internal("media I/O", e),
            // The original is stored and was checked at upload: failing to make a variant
            // of it is the server's fault, whatever the reason.
            MediaError::Variant(e) => Self::internal("making an image variant", e),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::internal("the store", e)
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Media(e) => e.into(),
            IngestError::Store(e) => e.into(),
            e @ IngestError::Task(_) => Self::internal("an upload", e),
            IngestError::Abandoned => Self::Overloaded {
                detail: "the upload took too long; retry shortly".into(),
                retry_after_secs: UPLOAD_RETRY_SECS,
            },
            e @ IngestError::NotAttachable(_) => Self::NotFound(e.to_string()),
        }
    }
}

/// Seconds a client is told to wait when uploads are refused for load.
const UPLOAD_RETRY_SECS: u32 = 1;

impl From<ImagesError> for ApiError {
    fn from(e: ImagesError) -> Self {
        match e {
            ImagesError::NotFound(id) => Self::NotFound(format!("no image with id {}", echo(&id))),
            e @ ImagesError::TooManyInFlight(_) => Self::TooManyRequests {
                detail: e.to_string(),
                retry_after_secs: UPLOAD_RETRY_SECS,
            },
            e @ (ImagesError::PoolFull | ImagesError::Busy) => Self::Overloaded {
                detail: e.to_string(),
                retry_after_secs: UPLOAD_RETRY_SECS,
            },
            e @ ImagesError::WorkerLost => Self::internal("an upload", e),
            ImagesError::Ingest(e) => e.into(),
            ImagesError::Store(e) => e.into(),
        }
    }
}

impl From<RemindersError> for ApiError {
    fn from(e: RemindersError) -> Self {
        match e {
            RemindersError::NotFound(id) => {
                Self::NotFound(format!("no reminder with id {}", echo(&id)))
            }
            e @ RemindersError::UnknownLink => Self::NotFound(e.to_string()),
            RemindersError::Unprocessable(d) => Self::Unprocessable(d),
            e @ RemindersError::BadEmail(_) => Self::BadRequest(e.to_string()),
            e @ RemindersError::NotScheduled(_) => Self::Conflict(e.to_string()),
            RemindersError::Store(e) => e.into(),
        }
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        Self::BadRequest(e.to_string())
    }
}

impl From<AccountsError> for ApiError {
    fn from(e: AccountsError) -> Self {
        match e {
            AccountsError::Invalid(e) => Self::BadRequest(e.to_string()),
            AccountsError::Taken(_) | AccountsError::Conflict(_) => Self::Conflict(e.to_string()),
            AccountsError::BadCredentials => Self::Unauthorized(e.to_string()),
            AccountsError::TooManyEmails(_) => Self::Conflict(e.to_string()),
            AccountsError::NotFound(d) => Self::NotFound(d),
            AccountsError::Store(e) => e.into(),
            AccountsError::Images(e) => e.into(),
            AccountsError::Reminders(e) => e.into(),
            e @ AccountsError::Hash(_) => Self::internal("accounts", e),
        }
    }
}

/// Longest `detail` a problem carries, in characters.
const MAX_DETAIL_CHARS: usize = 320;

fn bounded(detail: String) -> String {
    match detail.char_indices().nth(MAX_DETAIL_CHARS) {
        Some((cut, _)) => format!("{}…", &detail[..cut]),
        None => detail,
    }
}

/// The process or the system is out of file descriptors: a load condition to shed (503),
/// not a fault.
pub fn out_of_files(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// An error and its causes, each said once: `a: b: c`. (Many errors repeat their source
/// in their own text; a cause already at the end of the line is not repeated.)
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        next = cause.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_internal_error_keeps_its_causes_for_the_log_and_shows_none() {
        let disk = std::io::Error::other("disk on fire");
        let error: ApiError = StoreError::embedded(disk).into();
        let source = std::error::Error::source(&error).expect("the store error is kept");
        assert_eq!(source.to_string(), "embedded store: disk on fire");
        assert!(
            std::error::Error::source(source).is_some(),
            "and the I/O error"
        );
        assert_eq!(chain(&error), "the store: embedded store: disk on fire");
        assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
