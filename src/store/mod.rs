//! Storage: query-shaped traits the rest of the code uses, and the backends behind them.
//!
//! `embedded` (redb, one file under the data dir) is the default; `scylla` serves several
//! nodes sharing one cluster. Both pass the conformance suite in `tests/api/store_conformance.rs`.

pub mod embedded;
pub mod scylla;

use std::sync::Arc;

use async_trait::async_trait;

use chrono::{DateTime, Utc};

use crate::domain::{
    Bucket, DeadLetter, Due, Event, EventId, EventKey, FeedEntry, Image, ImageId, MailId, MailJob,
    Reminder, ReminderId, ReminderKey, Session, Tags, TokenHash, User, UserId,
};

pub use embedded::EmbeddedStore;
pub use scylla::ScyllaStore;

/// A shared handle to whichever backend is configured.
pub type SharedStore = Arc<dyn Store>;

/// Why a storage operation failed. The details are for the log, never for a client.
/// What went wrong beneath the store, kept as the error's source. Shared, because one
/// failed commit answers every write of its batch.
pub type Cause = std::sync::Arc<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("embedded store: {0}")]
    Embedded(#[source] Cause),
    #[error("scylla: {0}")]
    Scylla(#[source] Cause),
    #[error("stored record is unreadable: {0}")]
    Corrupt(String),
    #[error("the store is closed")]
    Closed,
    /// The embedded store's file is held by another process.
    #[error("{} is open in another process; is `corral serve` running on this data dir? Stop it first", .0.display())]
    InUse(std::path::PathBuf),
    /// The record changed (or went) since it was read; read it again and retry.
    #[error("the record changed meanwhile")]
    Changed,
    /// A unique value (`"username"` or `"email"`) is taken already.
    #[error("{0} is taken")]
    Conflict(&'static str),
}

impl StoreError {
    /// An embedded-store failure: an underlying error, or a message saying what failed.
    pub fn embedded(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Embedded(cause.into().into())
    }

    /// A Scylla failure: an underlying error, or a message saying what failed.
    pub fn scylla(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Scylla(cause.into().into())
    }
}

/// Image metadata, shaped by the queries the server asks.
#[async_trait]
pub trait ImageStore: Send + Sync {
    /// Stores a new image row and its index rows in one write. A published image is
    /// indexed by sha1, owner and tag; a draft only among drafts (by sha1 and expiry).
    async fn insert_image(&self, image: &Image) -> Result<(), StoreError>;

    /// Stores many new images (bulk seeding). The default writes them one by one.
    async fn insert_images(&self, images: &[Image]) -> Result<(), StoreError> {
        for image in images {
            self.insert_image(image).await?;
        }
        Ok(())
    }

    async fn get_image(&self, id: ImageId) -> Result<Option<Image>, StoreError>;

    /// One page of all images, for scans such as filling the random sample. Pass the last
    /// id of the previous page as `after`; the order is the backend's own (not by time),
    /// but every image appears exactly once across the pages of one scan.
    async fn scan_images(
        &self,
        after: Option<ImageId>,
        limit: usize,
    ) -> Result<Vec<Image>, StoreError>;

    /// How many published images share this content (sha1, lowercase hex).
    async fn count_images_with_sha1(&self, sha1: &str) -> Result<u64, StoreError>;

    /// How many drafts share this content (their file is kept apart until attached).
    async fn count_drafts_with_sha1(&self, sha1: &str) -> Result<u64, StoreError>;

    /// One page of the published images carrying `tag`, in id order after `after`.
    async fn images_by_tag(
        &self,
        tag: &str,
        after: Option<ImageId>,
        limit: usize,
    ) -> Result<Vec<Image>, StoreError>;

    /// Publishes drafts, all or none: each of `ids` must be a draft not expired at `now`
    /// (or an image already attached to `owner`, left as it is, so attaching twice is
    /// harmless). Each becomes published, owned by `owner`, with `tags` when given.
    /// [`StoreError::Changed`] (and nothing written) if any id is not so.
    async fn attach_images(
        &self,
        ids: &[ImageId],
        owner: UserId,
        tags: Option<&Tags>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Image>, StoreError>;

    /// Up to `limit` ids of drafts that expired before `until`, soonest expiry first.
    async fn expired_drafts(
        &self,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<ImageId>, StoreError>;

    /// One page of an owner's published images, newest first; pass the last id seen as
    /// `before`.
    async fn images_by_owner(
        &self,
        owner: UserId,
        before: Option<ImageId>,
        limit: usize,
    ) -> Result<Vec<Image>, StoreError>;

    /// Replaces an image's tags; returns the updated image, `None` if it does not exist.
    async fn set_image_tags(&self, id: ImageId, tags: &Tags) -> Result<Option<Image>, StoreError>;

    /// Sets the BlurHash of an image stored without one (the optimizer fills them in);
    /// returns the updated image, `None` if it does not exist.
    async fn set_image_blurhash(
        &self,
        id: ImageId,
        blurhash: &str,
    ) -> Result<Option<Image>, StoreError>;

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
    /// the stored record is no longer `before` (nothing written then). The username
    /// never changes.
    async fn update_user(&self, before: &User, after: &User) -> Result<(), StoreError>;

    /// Removes the user, its index rows and all its sessions.
    async fn delete_user(&self, user: &User) -> Result<(), StoreError>;

    /// One page of all users, for admins, after `after`: in the backend's own stable
    /// order (id order embedded, token order on Scylla), each user once across a scan.
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

    /// Stores many new events (bulk seeding). The default writes them one by one.
    async fn insert_events(&self, events: &[Event]) -> Result<(), StoreError> {
        for event in events {
            self.insert_event(event).await?;
        }
        Ok(())
    }

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

/// What `claim_bucket` got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The lease is this node's until the requested time. `taken_over` when it was
    /// another node's expired lease.
    Granted { taken_over: bool },
    /// Another node holds a live lease.
    Held { by: String },
}

/// Reminders, each with its per-user index row.
#[async_trait]
pub trait ReminderStore: Send + Sync {
    /// Stores a new reminder with its per-user row and, if scheduled, its due row.
    async fn insert_reminder(&self, reminder: &Reminder) -> Result<(), StoreError>;

    async fn get_reminder(&self, id: ReminderId) -> Result<Option<Reminder>, StoreError>;

    /// One page of a user's reminders in (remind_at, id) order, after `after`.
    async fn reminders_of(
        &self,
        user: UserId,
        after: Option<ReminderKey>,
        limit: usize,
    ) -> Result<Vec<Reminder>, StoreError>;

    /// Writes `after` over `before`, moving its per-user and due rows;
    /// [`StoreError::Changed`] if the stored reminder is no longer `before` (say, the
    /// scheduler fired it meanwhile).
    async fn update_reminder(&self, before: &Reminder, after: &Reminder) -> Result<(), StoreError>;

    /// Removes a reminder and its rows (whatever its state).
    async fn delete_reminder(&self, reminder: &Reminder) -> Result<(), StoreError>;
}

/// The schedule of due reminders: the due index (rows grouped in buckets of a minute and
/// a shard), the bucket leases that let several nodes share it, and firing.
#[async_trait]
pub trait ScheduleStore: Send + Sync {
    /// Every bucket with due rows (or not yet forgotten) up to and including `until_minute`.
    async fn due_buckets(&self, until_minute: i64) -> Result<Vec<Bucket>, StoreError>;

    /// The due rows of one bucket, in time order.
    async fn due_in(&self, bucket: Bucket) -> Result<Vec<Due>, StoreError>;

    /// Drops a bucket from `due_buckets` if it has no due rows left; returns whether it did.
    /// Only call it for buckets no new reminder can land in (past minutes).
    async fn forget_bucket(&self, bucket: Bucket) -> Result<bool, StoreError>;

    /// `claim bucket B for node N until T`: granted when the bucket has no lease, an
    /// expired one (at `now`), or one `node` holds already (a renewal).
    async fn claim_bucket(
        &self,
        bucket: Bucket,
        node: &str,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Claim, StoreError>;

    /// For each (due row, rendered mail): if the reminder is still scheduled for that
    /// time and address, marks it `sending` and queues the mail, in one step per reminder,
    /// and removes the due row. A reminder whose address changed since the mail was
    /// rendered keeps its due row (to be rendered again); any other that does not fire
    /// loses its stale due row. Returns, per entry, whether it fired.
    async fn fire_reminders(&self, batch: &[(Due, MailJob)]) -> Result<Vec<bool>, StoreError>;

    /// Removes a due row whose reminder is gone, moved or no longer scheduled.
    async fn drop_due(&self, due: &Due) -> Result<(), StoreError>;

    /// Marks a scheduled reminder `failed` without mail (its event is gone) and removes
    /// its due row; false if it was not scheduled for that time any more.
    async fn fail_reminder(&self, due: &Due, detail: &str) -> Result<bool, StoreError>;
}

/// The mailer's persisted queue, partitioned by node, and the dead letters.
#[async_trait]
pub trait MailStore: Send + Sync {
    /// Queues a mail (an existing row with the same node and id is replaced).
    async fn enqueue_mail(&self, job: &MailJob) -> Result<(), StoreError>;

    /// Every mail queued for `node` (what its mailer loads when it starts).
    async fn queued_mail(&self, node: &str) -> Result<Vec<MailJob>, StoreError>;

    /// The mails queued for `node` made at `since` or later (what its mailer re-reads
    /// now and then, for a mail whose message was lost). The default filters
    /// [`MailStore::queued_mail`]; Scylla reads only the recent minutes' partitions.
    async fn recent_mail(
        &self,
        node: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<MailJob>, StoreError> {
        let all = self.queued_mail(node).await?;
        Ok(all.into_iter().filter(|j| j.created_at >= since).collect())
    }

    /// Records a failed attempt (attempts, next_attempt_at, last_error).
    async fn update_mail(&self, job: &MailJob) -> Result<(), StoreError>;

    /// Removes a delivered mail; its reminder, if any, becomes `sent`.
    async fn mail_sent(&self, job: &MailJob) -> Result<(), StoreError>;

    /// [`MailStore::mail_sent`] for many mails (the mailer records deliveries in
    /// batches). The default records them one by one.
    async fn mails_sent(&self, jobs: &[MailJob]) -> Result<(), StoreError> {
        for job in jobs {
            self.mail_sent(job).await?;
        }
        Ok(())
    }

    /// Moves a mail to the dead letters; its reminder, if any, becomes `failed`.
    async fn mail_dead(&self, letter: &DeadLetter) -> Result<(), StoreError>;

    /// Removes a queued mail that must not go (its reminder was deleted).
    async fn discard_mail(&self, job: &MailJob) -> Result<(), StoreError>;

    /// One page of dead letters in id order, after `after`.
    async fn dead_letters(
        &self,
        after: Option<MailId>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError>;
}

/// The push feed: short-lived notices every node appends and every node tails, so a
/// WebSocket on one node hears of what happened on another. Entries expire after
/// [`FEED_TTL`]; nothing reads them later.
#[async_trait]
pub trait FeedStore: Send + Sync {
    /// Appends entries (one write, or as few as the backend can).
    async fn append_feed(&self, entries: &[FeedEntry]) -> Result<(), StoreError>;

    /// Up to `limit` entries with ids after `after`, in id order; never older than
    /// [`FEED_TTL`].
    async fn read_feed(
        &self,
        after: uuid::Uuid,
        limit: usize,
    ) -> Result<Vec<FeedEntry>, StoreError>;
}

/// How long a push feed entry is kept.
pub const FEED_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// Everything a backend provides.
#[async_trait]
pub trait Store:
    ImageStore + AccountStore + EventStore + ReminderStore + ScheduleStore + MailStore + FeedStore
{
    /// Cheap round trip proving the store answers (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Flushes and releases the store; later calls fail with [`StoreError::Closed`].
    async fn close(&self) -> Result<(), StoreError>;
}
