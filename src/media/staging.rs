//! Streams an upload body into a temp file while hashing and counting it.
//!
//! The body's own chunks are written (no copies): they are gathered up to
//! `WRITE_BATCH` bytes and written by one blocking call, while the next batch is
//! received. So at most two batches are held in memory. The limit is enforced as bytes
//! arrive, so an oversized body is refused as soon as it passes the limit, and the temp
//! file is deleted whenever a `StagedUpload` (or a half-written one) is dropped.
//!
//! The file is not fsynced here: `MediaRoot::commit` does that once the upload has
//! passed inspection, in the same blocking call as the rename, and not at all for
//! content that is already stored.

use std::fs::File;
use std::io::{self, IoSlice, Write};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha1::{Digest, Sha1};
use tempfile::TempPath;
use tokio::task::JoinHandle;

use super::{MediaError, MediaRoot};

/// Bytes gathered before each write to the temp file.
const WRITE_BATCH: usize = 512 * 1024;
/// Chunks gathered before each write, so a body sent in tiny chunks stays bounded too.
const MAX_CHUNKS: usize = 256;

/// A complete upload in a temp file (written, not yet fsynced), with its hash and size.
#[derive(Debug)]
pub struct StagedUpload {
    /// Deletes the file on drop unless it is persisted.
    pub path: TempPath,
    pub sha1: [u8; 20],
    pub bytes: u64,
}

/// A batch write running on the blocking pool; it hands the file back when done.
type Writing = JoinHandle<io::Result<File>>;

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
    let mut idle = Some(file);
    let mut writing: Option<Writing> = None;
    let mut batch: Vec<Bytes> = Vec::new();
    let mut batched = 0usize;
    let mut hasher = Sha1::new();
    let mut bytes = 0u64;
    let mut body = std::pin::pin!(body);
    loop {
        let chunk = body.next().await;
        let last = chunk.is_none();
        if let Some(chunk) = chunk {
            let chunk = chunk.map_err(|e| MediaError::Body(e.to_string()))?;
            // An empty chunk (an empty multipart part yields one) has nothing to write, and
            // a batch of nothing would fail as a zero-byte write.
            if chunk.is_empty() {
                continue;
            }
            bytes += chunk.len() as u64;
            if bytes > limit {
                return Err(MediaError::TooLarge { limit });
            }
            hasher.update(&chunk);
            batched += chunk.len();
            batch.push(chunk);
        }
        if batched >= WRITE_BATCH || batch.len() >= MAX_CHUNKS || (last && !batch.is_empty()) {
            // One batch in flight at a time: wait for the previous one to hand the file back.
            let mut out = match writing.take() {
                Some(previous) => previous.await.map_err(io::Error::other)??,
                None => idle
                    .take()
                    .ok_or_else(|| io::Error::other("no staging file"))?,
            };
            let chunks = std::mem::take(&mut batch);
            batched = 0;
            writing = Some(tokio::task::spawn_blocking(move || {
                write_chunks(&mut out, &chunks)?;
                Ok(out)
            }));
        }
        if last {
            break;
        }
    }
    if let Some(previous) = writing {
        previous.await.map_err(io::Error::other)??;
    }
    Ok(StagedUpload {
        path,
        sha1: hasher.finalize().into(),
        bytes,
    })
}

/// Writes every chunk, in order, with as few system calls as the kernel allows.
fn write_chunks(file: &mut File, chunks: &[Bytes]) -> io::Result<()> {
    // Empty slices are left out: a write of only empty slices answers Ok(0), which
    // otherwise means the file took nothing (WriteZero).
    let mut slices: Vec<IoSlice<'_>> = chunks
        .iter()
        .filter(|c| !c.is_empty())
        .map(|c| IoSlice::new(c))
        .collect();
    let mut rest = slices.as_mut_slice();
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_chunks_are_never_a_zero_byte_write() {
        let mut file = tempfile::tempfile().unwrap();
        write_chunks(&mut file, &[Bytes::new()]).unwrap();
        write_chunks(&mut file, &[]).unwrap();
        let chunks = [Bytes::new(), Bytes::from_static(b"ab"), Bytes::new()];
        write_chunks(&mut file, &chunks).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_body_of_empty_chunks_stages_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let root = MediaRoot::open(dir.path(), 0).unwrap();
        let empties = || (0..=MAX_CHUNKS).map(|_| Ok::<_, io::Error>(Bytes::new()));
        let staged = stage(&root, futures_util::stream::iter(empties()), 10)
            .await
            .unwrap();
        assert_eq!(staged.bytes, 0);
        assert_eq!(std::fs::metadata(&staged.path).unwrap().len(), 0);

        let body = empties()
            .chain([Ok(Bytes::from_static(b"abc"))])
            .chain(empties());
        let staged = stage(&root, futures_util::stream::iter(body), 10)
            .await
            .unwrap();
        assert_eq!(std::fs::read(&staged.path).unwrap(), b"abc");
    }
}
