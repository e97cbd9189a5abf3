//! The push protocol of `GET /v1/ws`: the messages clients send and the frames the hub
//! and the connections send them. Clients send JSON text frames with an `op`; the server
//! sends `{"topic": ..., "event": ..., "data": ...}` frames, and `{"event": "error",
//! "detail": ...}` for a message it refuses. Frames are rendered to JSON once and shared by
//! every connection they go to.

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};

use crate::domain::{Image, ImageSummary, Reminder, ReminderUpdate};
use crate::views::{ImageView, ReminderView, sample_entry};

/// The smallest `interval_ms` of an `images.random` subscription.
pub const MIN_RANDOM_INTERVAL_MS: u64 = 100;
/// The `interval_ms` of an `images.random` subscription that gives none.
pub const DEFAULT_RANDOM_INTERVAL_MS: u64 = 1000;
/// The largest `interval_ms` (an hour).
pub const MAX_RANDOM_INTERVAL_MS: u64 = 3_600_000;

/// A message from a client.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum ClientMsg {
    /// Sign the connection in with a session token (as an alternative to the
    /// `Authorization` header on the upgrade, which browsers cannot set).
    Auth {
        token: String,
    },
    Subscribe {
        topic: String,
        interval_ms: Option<u64>,
    },
    Unsubscribe {
        topic: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    Images,
    ImagesRandom,
    Reminders,
}

impl Topic {
    pub const ALL: [Topic; 3] = [Topic::Images, Topic::ImagesRandom, Topic::Reminders];

    pub fn name(self) -> &'static str {
        match self {
            Topic::Images => "images",
            Topic::ImagesRandom => "images.random",
            Topic::Reminders => "reminders",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }
}

#[derive(Serialize)]
struct Frame<'a, T: Serialize> {
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<&'a str>,
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

fn render<T: Serialize>(
    topic: Option<Topic>,
    event: &str,
    data: Option<T>,
    detail: Option<&str>,
) -> Utf8Bytes {
    let frame = Frame {
        topic: topic.map(Topic::name),
        event,
        data,
        detail,
    };
    // Plain structs of strings and numbers: serialising them cannot fail.
    serde_json::to_string(&frame)
        .unwrap_or_else(|e| format!(r#"{{"event":"error","detail":"rendering failed: {e}"}}"#))
        .into()
}

/// `images` / `created`: a new image, shaped as `GET /v1/images/{id}` shows it.
pub fn image_created(image: &Image, public_url: &str) -> Utf8Bytes {
    render(
        Some(Topic::Images),
        "created",
        Some(ImageView::new(image.clone(), public_url)),
        None,
    )
}

/// `images.random` / `image`: one entry of the sample, shaped as in `/v1/images/random`.
pub fn random_image(entry: &ImageSummary, public_url: &str) -> Utf8Bytes {
    // The entry's JSON is rendered once and cached; splice it in rather than re-encode.
    let data = String::from_utf8_lossy(sample_entry(entry, public_url));
    format!(r#"{{"topic":"images.random","event":"image","data":{data}}}"#).into()
}

/// `reminders` / `scheduled`, `rescheduled`, `sent`, `failed` or `cancelled`.
pub fn reminder(update: ReminderUpdate, reminder: &Reminder) -> Utf8Bytes {
    render(
        Some(Topic::Reminders),
        update.name(),
        Some(ReminderView::from(reminder.clone())),
        None,
    )
}

/// `subscribed` / `unsubscribed` acknowledgements.
pub fn ack(topic: Topic, event: &str) -> Utf8Bytes {
    render::<()>(Some(topic), event, None, None)
}

/// `authenticated`, with who the connection now acts for.
pub fn authenticated(user_id: &str, username: &str) -> Utf8Bytes {
    #[derive(Serialize)]
    struct Who<'a> {
        user_id: &'a str,
        username: &'a str,
    }
    render(None, "authenticated", Some(Who { user_id, username }), None)
}

/// `lagged`: this many frames were dropped because the client read too slowly.
pub fn lagged(missed: u64) -> Utf8Bytes {
    #[derive(Serialize)]
    struct Missed {
        missed: u64,
    }
    render(None, "lagged", Some(Missed { missed }), None)
}

/// `error`: a refused or malformed message; the connection stays open.
pub fn error(topic: Option<Topic>, detail: &str) -> Utf8Bytes {
    render::<()>(topic, "error", None, Some(detail))
}
