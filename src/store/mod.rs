//! Storage: query-shaped traits the rest of the code uses, and the backends behind them.
//!
//! `embedded` (redb, one file under the data dir) is the default; `scylla` serves several
//! nodes sharing one cluster. Both pass the conformance suite in `tests/store_conformance.rs`.

pub mod embedded;
pub mod scylla;

use std::sync::Arc;

use async_trait::async_trait;

use chrono::{DateTime, Utc};

use crate::domain::{
    Event, EventId, EventKey, Image, ImageId, Session, Tags, TokenHash, User, UserId,
};

pub use embedded::EmbeddedStore;
pub use scylla::ScyllaStore;

/// A shared handle to whichever backend is configured.
pub type SharedStore = Arc<dyn Store>;

/// Why a storage operation failed. The details are for the log, never for a client.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("embedded store: {0}")]
    Embedded(String),
    #[error("scylla: {0}")]
    Scylla(String),
    #[error("stored record is unreadable: {0}")]
    Corrupt(String),
    #[error("the store is closed")]
    Closed,
    /// The record changed (or went) since it was read; read it again and retry.
    #[error("the record changed meanwhile")]
    Changed,
    /// A unique value (`"username"` or `"email"`) is taken already.
    #[error("{0} is taken")]
    Conflict(&'static str),
}

/// Image metadata, shaped by the queries the server asks.
#[async_trait]
pub trait ImageStore: Send + Sync {
    /// Stores a new image row and its index rows in one write.
    async fn insert_image(&self, image: &Image) -> Result<(), StoreError>;

    async fn get_image(&self, id: ImageId) -> Result<Option<Image>, StoreError>;

    /// One page of all images, for scans such as filling the random sample. Pass the last
    /// id of the previous page as `after`; the order is the backend's own (not by time),
    /// but every image appears exactly once across the pages of one scan.
    async fn scan_images(
        &self,
        after: Option<ImageId>,
        limit: usize,
    ) -> Result<Vec<Image>, StoreError>;

    /// How many images share this content (sha1, lowercase hex).
    async fn count_images_with_sha1(&self, sha1: &str) -> Result<u64, StoreError>;

    /// One page of an owner's images, newest first; pass the last id seen as `before`.
    async fn images_by_owner(
        &self,
        owner: UserId,
        before: Option<ImageId>,
        limit: usize,
    ) -> Result<Vec<Image>, StoreError>;

    /// Replaces an image's tags; returns the updated image, `None` if it does not exist.
    async fn set_image_tags(&self, id: ImageId, tags: &Tags) -> Result<Option<Image>, StoreError>;

    /// Removes an image row and its index rows; returns what was removed.
    async fn delete_image(&self, id: ImageId) -> Result<Option<Image>, StoreError>;
}

/// Accounts and sessions.
#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Stores a new user; [`StoreError::Conflict`] if its username or an email is taken.
    async fn create_user(&self, user: &User) -> Result<(), StoreError>;

    async fn get_user(&self, id: UserId) -> Result<Option<User>, StoreError>;

    /// The user whose username, or any of whose email addresses, is `login` (lowercased).
    async fn find_user(&self, login: &str) -> Result<Option<User>, StoreError>;

    /// Writes `after` over `before`, moving email index rows; [`StoreError::Conflict`]
    /// if a newly added address belongs to another account, [`StoreError::Changed`] if
    /// the stored record is no longer `before` (the embedded store checks this; Scylla
    /// does not yet, see the README).
    async fn update_user(&self, before: &User, after: &User) -> Result<(), StoreError>;

    /// Removes the user, its index rows and all its sessions.
    async fn delete_user(&self, user: &User) -> Result<(), StoreError>;

    /// One page of all users in id order, for admins.
    async fn list_users(
        &self,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<Vec<User>, StoreError>;

    async fn create_session(&self, session: &Session) -> Result<(), StoreError>;

    /// The session, if it exists and has not expired.
    async fn get_session(
        &self,
        user: UserId,
        hash: TokenHash,
    ) -> Result<Option<Session>, StoreError>;

    async fn delete_session(&self, user: UserId, hash: TokenHash) -> Result<(), StoreError>;
}

/// Which index a catalogue page is read from. Every index is ordered by (start, id).
#[derive(Debug, Clone, Copy)]
pub enum EventIndex<'a> {
    /// All events (`events_by_day`).
    Time,
    /// Events with this topic (`events_by_topic`).
    Topic(&'a str),
    /// Events in this geohash cell (`events_by_geohash`).
    Cell(&'a str),
}

/// The events catalogue.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Stores an event and its index rows.
    async fn insert_event(&self, event: &Event) -> Result<(), StoreError>;

    async fn get_event(&self, id: EventId) -> Result<Option<Event>, StoreError>;

    /// Writes `after` over `before`, moving the index rows whose topic, day or cell changed.
    async fn update_event(&self, before: &Event, after: &Event) -> Result<(), StoreError>;

    /// Removes an event and its index rows.
    async fn delete_event(&self, event: &Event) -> Result<(), StoreError>;

    /// Up to `limit` index rows of `index` for events that start in `[from, to)`, after
    /// the position `after` if given, in (start, id) order, with their events.
    async fn events_page(
        &self,
        index: EventIndex<'_>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        after: Option<EventKey>,
        limit: usize,
    ) -> Result<IndexPage, StoreError>;
}

/// A page of an event index. `rows` and `last` describe the index rows read, which can be
/// more than the events returned: a row whose event is gone (a delete racing the read) is
/// skipped, but paging must still move past it.
#[derive(Debug, Default)]
pub struct IndexPage {
    pub events: Vec<Event>,
    pub rows: usize,
    pub last: Option<EventKey>,
}

/// Everything a backend provides.
#[async_trait]
pub trait Store: ImageStore + AccountStore + EventStore {
    /// Cheap round trip proving the store answers (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Flushes and releases the store; later calls fail with [`StoreError::Closed`].
    async fn close(&self) -> Result<(), StoreError>;
}
