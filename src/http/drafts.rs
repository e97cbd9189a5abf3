//! Drafts' own routes: a draft's bytes for whoever may see it, and attach (publishing
//! drafts, all or none). Uploading one is `POST /v1/images?draft=true` (in `images`).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::echo;
use super::extract::{ApiJson, ApiPath, CurrentUser, MaybeUser};
use super::{ApiError, AppState};
use crate::domain::{Tags, User, Viewer};
use crate::images::Claim;
use crate::media::MediaError;
use crate::views::ImageView;

/// Most drafts one attach publishes.
const MAX_ATTACH: usize = 100;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(draft_file))
        .routes(routes!(attach))
}

/// Who asks: the signed-in user, if any, and the `Claim-Token` header, if sent.
pub(super) fn viewer<'a>(user: &'a Option<Arc<User>>, headers: &'a HeaderMap) -> Viewer<'a> {
    Viewer {
        user: user.as_deref(),
        claim: headers.get("claim-token").and_then(|v| v.to_str().ok()),
    }
}

/// A draft's bytes (or a published image's), for whoever may see it.
///
/// A draft's file is not under `/i/{name}` until it is published; its owner (or the
/// holder of its claim token) reads it here. Never stored by shared caches.
#[utoipa::path(
    get, path = "/v1/images/{id}/file", tag = "images",
    params(
        ("id" = String, Path, description = "The image id"),
        ("Claim-Token" = Option<String>, Header, description = "An anonymous draft's claim token"),
    ),
    responses(
        (status = 200, description = "The bytes", content(
            (Vec<u8> = "image/png"), (Vec<u8> = "image/jpeg"), (Vec<u8> = "image/gif"), (Vec<u8> = "image/webp"),
        )),
        (status = 404, description = "No such image (or a draft not yours, or expired)", body = super::error::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("bearer" = [])),
)]
async fn draft_file(
    State(state): State<AppState>,
    MaybeUser(user): MaybeUser,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let image = state.images.find(&id, viewer(&user, &headers)).await?;
    let gone = || ApiError::not_found(format!("no image with id {}", echo(&id)));
    let name = crate::domain::ImageName::parse(&image.name).ok_or_else(gone)?;
    let path = state.media.path_on(crate::media::Shelf::of(&image), &name);
    let file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(gone()),
        Err(e) => return Err(MediaError::from(e).into()),
    };
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (header::CONTENT_TYPE, image.format.mime()),
            (header::CACHE_CONTROL, "private, no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response())
}

/// Drafts to publish.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct AttachRequest {
    /// 1 to 100 drafts.
    #[schema(min_items = 1, max_items = 100)]
    images: Vec<AttachItem>,
    /// Tags for every attached image, replacing the tags each was uploaded with; omit
    /// to keep those.
    #[schema(max_items = 32, value_type = Option<Vec<super::images::TagName>>)]
    tags: Option<Vec<String>>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct AttachItem {
    #[schema(format = Uuid)]
    id: String,
    /// The claim token an anonymous draft was given; not needed for your own.
    claim_token: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct Attached {
    images: Vec<ImageView>,
}

/// Publish drafts (attach them to you).
///
/// Each listed draft must be yours, or an anonymous one sent with its claim token. All
/// are published in one write, owned by you, or none is: one id that is unknown, someone
/// else's, expired, or with a wrong token is a 404 and nothing changes. Once attached,
/// they enter `/random`, your listing and the push topic, and `url` serves them.
/// Attaching an image already attached to you changes nothing.
#[utoipa::path(
    post, path = "/v1/images/attach", tag = "images",
    request_body = AttachRequest,
    responses(
        (status = 200, description = "All attached", body = Attached),
        (status = 400, description = "A malformed body or bad tags", body = super::error::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Not signed in", body = super::error::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "A draft is unknown, not yours, expired, or its claim token is wrong; nothing was attached", body = super::error::ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn attach(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiJson(body): ApiJson<AttachRequest>,
) -> Result<Json<Attached>, ApiError> {
    if body.images.is_empty() || body.images.len() > MAX_ATTACH {
        return Err(ApiError::BadRequest(format!(
            "send 1 to {MAX_ATTACH} images to attach, not {}",
            body.images.len()
        )));
    }
    let tags = body
        .tags
        .map(|t| Tags::parse(t.iter().map(String::as_str)))
        .transpose()?;
    let claims: Vec<Claim> = body
        .images
        .into_iter()
        .map(|i| Claim {
            id: i.id,
            token: i.claim_token,
        })
        .collect();
    let attached = state.images.attach(&user, &claims, tags).await?;
    let newly = attached.iter().filter(|(_, newly)| *newly).count();
    metrics::counter!("corral_drafts_attached_total").increment(newly as u64);
    let public_url = &state.settings.http.public_url;
    Ok(Json(Attached {
        images: attached
            .into_iter()
            .map(|(i, _)| ImageView::new(i, public_url))
            .collect(),
    }))
}
