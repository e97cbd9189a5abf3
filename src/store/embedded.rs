//! The embedded backend: one redb file under the data dir, tables laid out like Scylla's.
//!
//! redb is synchronous, so every call runs on a blocking thread. Writes commit with
//! redb's default durability (fsync before the commit returns).

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, TableDefinition};

use super::{ImageStore, Store, StoreError};
use crate::domain::{Image, ImageId};

/// `images`: id -> JSON record.
const IMAGES: TableDefinition<u128, &[u8]> = TableDefinition::new("images");
/// `images_by_sha1`: (sha1 hex, id) -> (). Counts the records that share one file.
const IMAGES_BY_SHA1: TableDefinition<(&str, u128), ()> = TableDefinition::new("images_by_sha1");

/// How long `close` waits for in-flight calls to release the database.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

pub struct EmbeddedStore {
    db: RwLock<Option<Arc<Database>>>,
}

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        StoreError::Embedded(e.to_string())
    }
}

macro_rules! redb_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Embedded(e.to_string()) }
        }
    )*};
}
redb_errors!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl EmbeddedStore {
    /// Opens (or creates) `<data_dir>/corral.redb` and makes sure every table exists.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| StoreError::Embedded(e.to_string()))?;
        let db = Database::create(data_dir.join("corral.redb"))?;
        let tx = db.begin_write()?;
        tx.open_table(IMAGES)?;
        tx.open_table(IMAGES_BY_SHA1)?;
        tx.commit()?;
        Ok(Self {
            db: RwLock::new(Some(Arc::new(db))),
        })
    }

    /// Runs `f` against the database on a blocking thread.
    async fn with_db<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self
            .db
            .read()
            .map_err(|_| StoreError::Closed)?
            .clone()
            .ok_or(StoreError::Closed)?;
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| StoreError::Embedded(format!("store task failed: {e}")))?
    }
}

fn decode(bytes: &[u8]) -> Result<Image, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[async_trait]
impl ImageStore for EmbeddedStore {
    async fn insert_image(&self, image: &Image) -> Result<(), StoreError> {
        let record = serde_json::to_vec(image).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (id, sha1) = (image.id.0.as_u128(), image.sha1.clone());
        self.with_db(move |db| {
            let tx = db.begin_write()?;
            tx.open_table(IMAGES)?.insert(id, record.as_slice())?;
            tx.open_table(IMAGES_BY_SHA1)?
                .insert((sha1.as_str(), id), ())?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn get_image(&self, id: ImageId) -> Result<Option<Image>, StoreError> {
        self.with_db(move |db| {
            let table = db.begin_read()?.open_table(IMAGES)?;
            let row = table.get(id.0.as_u128())?;
            row.map(|v| decode(v.value())).transpose()
        })
        .await
    }

    async fn scan_images(
        &self,
        after: Option<ImageId>,
        limit: usize,
    ) -> Result<Vec<Image>, StoreError> {
        self.with_db(move |db| {
            let table = db.begin_read()?.open_table(IMAGES)?;
            let rows = match after {
                Some(id) => table.range((
                    std::ops::Bound::Excluded(id.0.as_u128()),
                    std::ops::Bound::Unbounded,
                ))?,
                None => table.range::<u128>(..)?,
            };
            rows.take(limit).map(|row| decode(row?.1.value())).collect()
        })
        .await
    }

    async fn count_images_with_sha1(&self, sha1: &str) -> Result<u64, StoreError> {
        let sha1 = sha1.to_owned();
        self.with_db(move |db| {
            let table = db.begin_read()?.open_table(IMAGES_BY_SHA1)?;
            let mut n = 0;
            for row in table.range((sha1.as_str(), 0u128)..=(sha1.as_str(), u128::MAX))? {
                row?;
                n += 1;
            }
            Ok(n)
        })
        .await
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.with_db(|db| {
            db.begin_read()?.open_table(IMAGES)?;
            Ok(())
        })
        .await
    }

    async fn close(&self) -> Result<(), StoreError> {
        let Some(mut db) = self.db.write().map_err(|_| StoreError::Closed)?.take() else {
            return Ok(());
        };
        // Calls already running hold clones; give them time to finish, then drop the
        // last handle, which flushes and unlocks the file.
        let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
        loop {
            match Arc::try_unwrap(db) {
                Ok(db) => {
                    return tokio::task::spawn_blocking(move || drop(db))
                        .await
                        .map_err(|e| StoreError::Embedded(e.to_string()));
                }
                Err(shared) if tokio::time::Instant::now() < deadline => {
                    db = shared;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(_) => {
                    return Err(StoreError::Embedded(
                        "calls still hold the database at close".into(),
                    ));
                }
            }
        }
    }
}
