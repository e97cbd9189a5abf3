//! The JSON shapes the API and the push frames show: an image, a random-sample entry, a
//! reminder. They depend on the domain alone, so the HTTP handlers, the WebSocket push
//! protocol and the hub render the same shapes without depending on each other.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::{
    Email, EventId, Image, ImageFormat, ImageId, ImageSummary, Reminder, ReminderId, ReminderState,
    Tags,
};

/// An image as the API shows it.
#[derive(Serialize, ToSchema)]
pub struct ImageView {
    #[schema(value_type = String, format = Uuid)]
    id: ImageId,
    /// `<sha1>.<ext>`: the file's permanent name.
    name: String,
    /// Where the bytes are: `/i/{name}`, prefixed by `http.public_url` when set.
    url: String,
    /// The sha1 of the bytes as stored at upload (metadata removed). A PNG the optimizer
    /// recompressed later keeps it (and its name): same pixels, fewer bytes.
    sha1: String,
    #[schema(value_type = String, example = "png")]
    format: ImageFormat,
    width: u32,
    height: u32,
    /// The size as stored at upload.
    bytes: u64,
    #[schema(value_type = Vec<String>)]
    tags: Tags,
    created_at: chrono::DateTime<chrono::Utc>,
    /// A BlurHash (<https://blurha.sh>) to paint while the bytes load; null for images
    /// stored before placeholders were made, until the optimizer fills it in.
    blurhash: Option<String>,
    /// `published`, or `draft` until it is attached (`POST /v1/images/attach`).
    #[schema(example = "published", pattern = "^(published|draft)$")]
    state: &'static str,
    /// A draft's end: unattached by then, it is gone. Absent once published.
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<DateTime<Utc>>,
    /// An anonymous draft's claim token: shown once, in the upload's answer. Send it
    /// with the id to attach the draft (and as `Claim-Token` to read it meanwhile).
    #[serde(skip_serializing_if = "Option::is_none")]
    claim_token: Option<String>,
    /// A draft's bytes, for its owner (`url` answers 404 until it is published).
    #[serde(skip_serializing_if = "Option::is_none")]
    draft_url: Option<String>,
}

impl ImageView {
    /// The image as its upload's answer shows it, with the claim token given then.
    pub fn with_claim(image: Image, public_url: &str, claim_token: Option<String>) -> Self {
        Self {
            claim_token,
            ..Self::new(image, public_url)
        }
    }

    pub fn new(image: Image, public_url: &str) -> Self {
        let draft_url = image.draft.as_ref().map(|_| {
            format!(
                "{}/v1/images/{}/file",
                public_url.trim_end_matches('/'),
                image.id
            )
        });
        Self {
            state: if image.is_draft() {
                "draft"
            } else {
                "published"
            },
            expires_at: image.draft.as_ref().map(|d| d.expires_at),
            claim_token: None,
            draft_url,
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
            blurhash: image.blurhash,
        }
    }
}

pub fn file_url(public_url: &str, name: &str) -> String {
    format!("{}/i/{name}", public_url.trim_end_matches('/'))
}

#[derive(Serialize, ToSchema)]
pub struct RandomImage {
    #[schema(value_type = String, format = Uuid)]
    id: ImageId,
    name: String,
    url: String,
    width: u32,
    height: u32,
    /// A BlurHash to paint while the bytes load (null for older images, until the
    /// optimizer fills it in).
    blurhash: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct RandomImages {
    pub images: Vec<RandomImage>,
}

/// A sample entry as `/random` shows it (a `RandomImage`), in JSON, rendered on first use.
pub fn sample_entry<'a>(s: &'a ImageSummary, public_url: &str) -> &'a bytes::Bytes {
    s.rendered.get_or_init(|| {
        let image = RandomImage {
            id: s.id,
            url: file_url(public_url, &s.name),
            name: s.name.clone(),
            width: s.width,
            height: s.height,
            blurhash: s.blurhash.clone(),
        };
        // A struct of strings and numbers: serialising it cannot fail.
        serde_json::to_vec(&image).unwrap_or_default().into()
    })
}

#[derive(Serialize, ToSchema)]
pub struct ReminderView {
    #[schema(value_type = String, format = Uuid)]
    id: ReminderId,
    #[schema(value_type = String, format = Uuid)]
    event_id: EventId,
    /// When the mail is due, UTC.
    remind_at: DateTime<Utc>,
    /// Where the mail goes: one of the account's addresses.
    #[schema(value_type = String, format = Email)]
    email: Email,
    /// `scheduled`, then `sending` (the mail is queued), then `sent` or `failed`.
    #[schema(value_type = String, example = "scheduled")]
    state: ReminderState,
    /// Why it failed, when it did.
    detail: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<Reminder> for ReminderView {
    fn from(r: Reminder) -> Self {
        Self {
            id: r.id,
            event_id: r.event_id,
            remind_at: r.remind_at,
            email: r.email,
            state: r.state,
            detail: r.detail,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}
