//! Storage: query-shaped traits the rest of the code uses, and the backends behind them.
//!
//! `embedded` (redb, one file under the data dir) is the default; `scylla` serves several
//! nodes sharing one cluster. Both pass the conformance suite in `tests/store_conformance.rs`.

pub mod embedded;
pub mod scylla;

use std::sync::Arc;

use async_trait::async_trait;

use crate::domain::{Image, ImageId};

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
}

/// Everything a backend provides.
#[async_trait]
pub trait Store: ImageStore {
    /// Cheap round trip proving the store answers (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Flushes and releases the store; later calls fail with [`StoreError::Closed`].
    async fn close(&self) -> Result<(), StoreError>;
}
