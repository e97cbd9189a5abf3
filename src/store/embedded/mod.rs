//! The embedded backend: one redb file under the data dir, tables laid out like Scylla's.
//!
//! redb is synchronous, so every read runs on a blocking thread. Each call's writes (a
//! row and its index rows) commit in one transaction on the writer thread, which shares
//! one fsync between the writes that arrive together (see `writer`); a write returns once
//! it is durable.

mod accounts;
mod events;
mod images;
mod reminders;
mod writer;

use std::collections::VecDeque;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, TableDefinition, TableHandle};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{FEED_TTL, FeedStore, Store, StoreError};
use crate::domain::FeedEntry;

/// `images`: id -> JSON record.
const IMAGES: TableDefinition<u128, &[u8]> = TableDefinition::new("images");
/// `images_by_sha1`: (sha1 hex, id) -> (). Counts the records that share one file.
const IMAGES_BY_SHA1: TableDefinition<(&str, u128), ()> = TableDefinition::new("images_by_sha1");
/// `images_by_owner`: (owner, id) -> ().
const IMAGES_BY_OWNER: TableDefinition<(u128, u128), ()> = TableDefinition::new("images_by_owner");
/// `images_by_tag`: (tag, id) -> (), published images only: draws by a tag too rare for
/// the in-memory sample.
const IMAGES_BY_TAG: TableDefinition<(&str, u128), ()> = TableDefinition::new("images_by_tag");
/// `drafts_by_sha1`: (sha1 hex, id) -> (). Counts the drafts that share one draft file.
const DRAFTS_BY_SHA1: TableDefinition<(&str, u128), ()> = TableDefinition::new("drafts_by_sha1");
/// `drafts_by_expiry`: (expires_at ms, id) -> (): what the sweeper removes, oldest first.
const DRAFTS_BY_EXPIRY: TableDefinition<(i64, u128), ()> = TableDefinition::new("drafts_by_expiry");
/// `users`: id -> JSON record.
const USERS: TableDefinition<u128, &[u8]> = TableDefinition::new("users");
/// `users_by_username`: username -> user id.
const USERS_BY_USERNAME: TableDefinition<&str, u128> = TableDefinition::new("users_by_username");
/// `users_by_email`: every address of every account -> user id.
const USERS_BY_EMAIL: TableDefinition<&str, u128> = TableDefinition::new("users_by_email");
/// `sessions`: (user id, token hash) -> JSON record.
const SESSIONS: TableDefinition<(u128, [u8; 32]), &[u8]> = TableDefinition::new("sessions");

/// `events`: id -> JSON record.
const EVENTS: TableDefinition<u128, &[u8]> = TableDefinition::new("events");
/// `events_by_topic`: (topic, start ms, id) -> ().
const EVENTS_BY_TOPIC: TableDefinition<(&str, i64, u128), ()> =
    TableDefinition::new("events_by_topic");
/// `events_by_day`: (UTC day, start ms, id) -> ().
const EVENTS_BY_DAY: TableDefinition<(i32, i64, u128), ()> = TableDefinition::new("events_by_day");
/// `events_by_geohash`: (cell, start ms, id) -> (), one row per indexed precision.
const EVENTS_BY_GEOHASH: TableDefinition<(&str, i64, u128), ()> =
    TableDefinition::new("events_by_geohash");

/// `reminders`: id -> JSON record.
const REMINDERS: TableDefinition<u128, &[u8]> = TableDefinition::new("reminders");
/// `reminders_by_user`: (user id, remind_at ms, id) -> ().
const REMINDERS_BY_USER: TableDefinition<(u128, i64, u128), ()> =
    TableDefinition::new("reminders_by_user");
/// `reminders_due`: (minute, shard, remind_at ms, id) -> (), scheduled reminders only.
const REMINDERS_DUE: TableDefinition<(i64, u16, i64, u128), ()> =
    TableDefinition::new("reminders_due");
/// `due_buckets`: (minute, shard) -> (), the `reminders_due` partitions not yet worked off.
const DUE_BUCKETS: TableDefinition<(i64, u16), ()> = TableDefinition::new("due_buckets");
/// `bucket_leases`: (minute, shard) -> (node, lease end ms).
const BUCKET_LEASES: TableDefinition<(i64, u16), (&str, i64)> =
    TableDefinition::new("bucket_leases");
/// `mail_queue`: (node, mail id) -> JSON job.
const MAIL_QUEUE: TableDefinition<(&str, u128), &[u8]> = TableDefinition::new("mail_queue");
/// `mail_dead`: mail id -> JSON dead letter.
const MAIL_DEAD: TableDefinition<u128, &[u8]> = TableDefinition::new("mail_dead");

/// The page cache when none is configured (`storage.cache_mib`'s default).
const DEFAULT_CACHE_BYTES: usize = 256 * 1024 * 1024;

/// How long `close` waits for in-flight calls to release the database.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

pub struct EmbeddedStore {
    open: RwLock<Option<Open>>,
    /// The push feed. Only this process opens the file, so its nodes (several in tests)
    /// share the feed in memory: nothing in it needs to outlive the process.
    feed: Mutex<VecDeque<FeedEntry>>,
}

/// Push feed entries kept in memory at most (the oldest go first).
const FEED_CAPACITY: usize = 10_000;

/// What an open store holds: the database (for reads) and the writer's queue.
struct Open {
    db: Arc<Database>,
    writer: writer::Writer,
}

macro_rules! redb_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::embedded(e) }
        }
    )*};
}
redb_errors!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

impl EmbeddedStore {
    /// Opens (or creates) `<data_dir>/corral.redb` with the default page cache.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(data_dir, DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates) `<data_dir>/corral.redb`, caching up to `cache_bytes` of pages in
    /// memory, and makes sure every table exists.
    pub fn open_with_cache(data_dir: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(StoreError::embedded)?;
        let file = data_dir.join("corral.redb");
        let db = redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create(&file)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse(file.clone()),
                e => e.into(),
            })?;
        let tx = db.begin_write()?;
        let tag_index_missing = !tx
            .list_tables()?
            .any(|table| table.name() == IMAGES_BY_TAG.name());
        tx.open_table(IMAGES)?;
        tx.open_table(IMAGES_BY_SHA1)?;
        tx.open_table(IMAGES_BY_OWNER)?;
        tx.open_table(IMAGES_BY_TAG)?;
        tx.open_table(DRAFTS_BY_SHA1)?;
        tx.open_table(DRAFTS_BY_EXPIRY)?;
        if tag_index_missing {
            // A store made before the tag index: build it once from the records.
            images::index_tags(&tx)?;
        }
        tx.open_table(USERS)?;
        tx.open_table(USERS_BY_USERNAME)?;
        tx.open_table(USERS_BY_EMAIL)?;
        tx.open_table(SESSIONS)?;
        tx.open_table(EVENTS)?;
        tx.open_table(EVENTS_BY_TOPIC)?;
        tx.open_table(EVENTS_BY_DAY)?;
        tx.open_table(EVENTS_BY_GEOHASH)?;
        tx.open_table(REMINDERS)?;
        tx.open_table(REMINDERS_BY_USER)?;
        tx.open_table(REMINDERS_DUE)?;
        tx.open_table(DUE_BUCKETS)?;
        tx.open_table(BUCKET_LEASES)?;
        tx.open_table(MAIL_QUEUE)?;
        tx.open_table(MAIL_DEAD)?;
        tx.commit()?;
        let db = Arc::new(db);
        let writer = writer::Writer::start(db.clone())?;
        Ok(Self {
            open: RwLock::new(Some(Open { db, writer })),
            feed: Mutex::default(),
        })
    }

    /// The open database, for reads.
    fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.open
            .read()
            .map_err(|_| StoreError::Closed)?
            .as_ref()
            .map(|open| open.db.clone())
            .ok_or(StoreError::Closed)
    }

    /// Runs a short read (a point lookup or one bounded page) on the calling thread. It is
    /// served from redb's page cache, or else the OS's, in microseconds: less than the
    /// hand-off to a blocking thread and back would cost.
    fn read_now<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        f(&*self.db()?)
    }

    /// Runs `f` against the database on a blocking thread: scans whose length the data
    /// decides.
    async fn with_db<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.db()?;
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(StoreError::embedded)?
    }
}

impl EmbeddedStore {
    /// Runs `f` in a write transaction (shared with the other writes queued with it),
    /// and returns once that is durable; if `f` fails, nothing it wrote stays. `f` may run
    /// twice and must touch nothing but the transaction (see `writer`).
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&redb::WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let writer = self
            .open
            .read()
            .map_err(|_| StoreError::Closed)?
            .as_ref()
            .map(|open| open.writer.clone())
            .ok_or(StoreError::Closed)?;
        writer.write(f).await
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// One page of a JSON table keyed by UUID, in key order, after `after`.
fn scan<T: DeserializeOwned>(
    db: &Database,
    table: TableDefinition<u128, &[u8]>,
    after: Option<uuid::Uuid>,
    limit: usize,
) -> Result<Vec<T>, StoreError> {
    let table = db.begin_read()?.open_table(table)?;
    let start = after.map_or(Bound::Unbounded, |id| Bound::Excluded(id.as_u128()));
    table
        .range::<u128>((start, Bound::Unbounded))?
        .take(limit)
        .map(|row| decode(row?.1.value()))
        .collect()
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[async_trait]
impl FeedStore for EmbeddedStore {
    async fn append_feed(&self, entries: &[FeedEntry]) -> Result<(), StoreError> {
        self.db()?;
        let mut feed = self.feed.lock().unwrap_or_else(|e| e.into_inner());
        let stale = crate::domain::v7_floor(chrono::Utc::now() - FEED_TTL);
        while feed
            .front()
            .is_some_and(|e| e.id < stale || feed.len() + entries.len() > FEED_CAPACITY)
        {
            feed.pop_front();
        }
        feed.extend(entries.iter().rev().take(FEED_CAPACITY).rev().cloned());
        Ok(())
    }

    async fn read_feed(
        &self,
        after: uuid::Uuid,
        limit: usize,
    ) -> Result<Vec<FeedEntry>, StoreError> {
        self.db()?;
        let stale = crate::domain::v7_floor(chrono::Utc::now() - FEED_TTL);
        let after = after.max(stale);
        let feed = self.feed.lock().unwrap_or_else(|e| e.into_inner());
        // Nodes append concurrently, so the queue is only roughly in id order.
        let mut found: Vec<FeedEntry> = feed.iter().filter(|e| e.id > after).cloned().collect();
        found.sort_by_key(|e| e.id);
        found.truncate(limit);
        Ok(found)
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn ping(&self) -> Result<(), StoreError> {
        let writer_stopped = self
            .open
            .read()
            .map_err(|_| StoreError::Closed)?
            .as_ref()
            .is_some_and(|open| open.writer.stopped());
        if writer_stopped {
            return Err(StoreError::embedded(
                "the store's writer thread has stopped",
            ));
        }
        self.with_db(|db| {
            db.begin_read()?.open_table(IMAGES)?;
            Ok(())
        })
        .await
    }

    async fn close(&self) -> Result<(), StoreError> {
        let Some(Open { mut db, writer }) =
            self.open.write().map_err(|_| StoreError::Closed)?.take()
        else {
            return Ok(());
        };
        // The writer thread stops once the writes already queued are done and every
        // caller's clone of its queue is gone. Calls already running hold clones of the
        // database too; give them time to finish, then drop the last handle, which
        // flushes and unlocks the file.
        drop(writer);
        let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
        loop {
            match Arc::try_unwrap(db) {
                Ok(db) => {
                    return tokio::task::spawn_blocking(move || drop(db))
                        .await
                        .map_err(StoreError::embedded);
                }
                Err(shared) if tokio::time::Instant::now() < deadline => {
                    db = shared;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(_) => {
                    return Err(StoreError::embedded(
                        "calls still hold the database at close",
                    ));
                }
            }
        }
    }
}
