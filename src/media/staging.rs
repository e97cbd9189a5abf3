//! Streams an upload body into a temp file while hashing and counting it.
//!
//! At most one chunk and a 256 KiB write buffer are held in memory; the limit is enforced as bytes arrive, so an
//! oversized body is refused as soon as it passes the limit, and the temp file is deleted
//! whenever a `StagedUpload` (or a half-written one) is dropped.

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha1::{Digest, Sha1};
use tempfile::TempPath;
use tokio::io::{AsyncWriteExt, BufWriter};

use super::{MediaError, MediaRoot};

/// Bytes gathered before each write to the temp file.
const WRITE_BUFFER: usize = 256 * 1024;

/// A complete upload in a temp file, fsynced, with its hash and size.
#[derive(Debug)]
pub struct StagedUpload {
    /// Deletes the file on drop unless it is persisted.
    pub path: TempPath,
    pub sha1: [u8; 20],
    pub bytes: u64,
}

/// Writes `body` to a new temp file under the media root, refusing more than `limit` bytes.
pub async fn stage<S, E>(root: &MediaRoot, body: S, limit: u64) -> Result<StagedUpload, MediaError>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    let (file, path) = tempfile::Builder::new()
        .prefix("upload-")
        .tempfile_in(root.tmp_dir())?
        .into_parts();
    // Each write to a tokio file is a hop to the blocking pool; body chunks are small, so
    // they are gathered into writes of `WRITE_BUFFER` bytes.
    let mut file = BufWriter::with_capacity(WRITE_BUFFER, tokio::fs::File::from_std(file));
    let mut hasher = Sha1::new();
    let mut bytes = 0u64;
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| MediaError::Body(e.to_string()))?;
        bytes += chunk.len() as u64;
        if bytes > limit {
            return Err(MediaError::TooLarge { limit });
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    file.get_ref().sync_all().await?;
    Ok(StagedUpload {
        path,
        sha1: hasher.finalize().into(),
        bytes,
    })
}
