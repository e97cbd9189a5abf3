//! Image bytes on disk: staging an upload while hashing it, checking what it really is,
//! and committing it under its sha1 name in sharded directories.

mod inspect;
mod layout;
mod staging;

pub use inspect::{DecodeLimits, Inspected, inspect};
pub use layout::{MediaRoot, Opened};
pub use staging::{StagedUpload, stage};

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
}
