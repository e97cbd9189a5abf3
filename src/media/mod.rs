//! Image bytes on disk: staging an upload while hashing it, checking what it really is,
//! and committing it under its sha1 name in sharded directories.

mod hygiene;
mod inspect;
mod layout;
mod placeholder;
mod recompress;
mod staging;
mod variant;

pub use hygiene::clean as clean_metadata;
pub use inspect::{DecodeLimits, Inspected, inspect};
pub use layout::{MediaRoot, Opened, Shelf, StoredFile};
pub use recompress::{Recompressed, recompress};
pub use staging::{StagedUpload, stage};
pub use variant::{Asked, Fit, Recipe, Variants};

/// Why an upload's bytes were refused or could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("the upload is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the upload body could not be read: {0}")]
    Body(String),
    #[error("disk I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// A variant's making failed (shared by every request that waited for it).
    #[error(transparent)]
    Variant(std::sync::Arc<MediaError>),
}
