//! Where files live: `<data>/images/ab/cd/<sha1>.<ext>`, their variants under
//! `<data>/variants/ab/cd/<sha1>/` (see `variant`), and `<data>/tmp` for files being
//! written, plus a bounded in-memory cache of small files (content-addressed files never
//! change, so a cached copy is only ever stale once the file is deleted, which drops it).
//!
//! `<data>/intents` makes adding and removing files crash-safe: before a file is moved
//! into `images/` (or its last record is deleted), an empty file of the same name is made
//! durable there, and it is removed once the record is written (or the file is gone). At
//! start the few intents a crash left are settled against the store: a file no record
//! names is removed. So `images/` never keeps a file without a record, and the check
//! costs one store lookup per operation that was in flight, not a walk of the tree.
//!
//! Drafts (uploads not yet attached to a form) keep their files apart, under
//! `<data>/drafts/ab/cd/`, which `/i/{name}` never serves; the same intents (prefixed
//! `draft-`) cover them. Attaching a draft links its file into `images/`.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use tempfile::TempPath;

use super::variant::Recipe;
use crate::domain::ImageName;

/// Files up to this size are always read whole, in one blocking call, and cached.
pub const SMALL_FILE: u64 = 256 * 1024;
/// The largest file kept in the cache: an eighth of the cache, at most 8 MiB.
const MAX_CACHED_FILE: u64 = 8 * 1024 * 1024;
/// Larger files read whole at once (each up to MAX_CACHED_FILE): bounds the memory that
/// many misses of distinct large files can take; past it they are streamed.
const WHOLE_READS: usize = 8;
/// A cached file not read for this long is dropped (bounds how long another node, sharing
/// the volume, can serve a file deleted elsewhere).
const IDLE: Duration = Duration::from_secs(600);

/// The directory tree holding image files. Cheap to clone.
#[derive(Clone)]
pub struct MediaRoot {
    images: PathBuf,
    drafts: PathBuf,
    variants: PathBuf,
    tmp: PathBuf,
    intents: PathBuf,
    hot: moka::sync::Cache<StoredFile, Bytes>,
    /// Files up to this size are cached (those over SMALL_FILE while a whole read is free).
    max_cached: u64,
    whole_reads: std::sync::Arc<tokio::sync::Semaphore>,
}

/// Which originals a file is among: the published ones `/i/{name}` serves, or the
/// drafts', served only to their owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shelf {
    Published,
    Draft,
}

impl Shelf {
    pub fn of(image: &crate::domain::Image) -> Self {
        if image.is_draft() {
            Self::Draft
        } else {
            Self::Published
        }
    }
}

/// An intent's file name: the image name, prefixed `draft-` for a draft's file.
fn intent_name(shelf: Shelf, name: &ImageName) -> String {
    match shelf {
        Shelf::Published => name.to_string(),
        Shelf::Draft => format!("draft-{name}"),
    }
}

/// A file the tree holds: an original, or a variant of one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StoredFile {
    Original(ImageName),
    Variant(ImageName, Recipe),
}

/// A stored file, opened for serving.
pub enum Opened {
    /// A small file's bytes.
    Whole(Bytes),
    /// A file too large to cache (or met while every whole read is taken), to be
    /// streamed, and its length.
    Large(std::fs::File, u64),
}

impl MediaRoot {
    /// Creates the directories if needed and removes temp files a crash left behind.
    /// Keeps up to `cache_bytes` of files in memory (0: none), each at most an eighth of
    /// that or 8 MiB.
    pub fn open(data_dir: &Path, cache_bytes: u64) -> io::Result<Self> {
        let hot = moka::sync::Cache::builder()
            .max_capacity(cache_bytes)
            .weigher(|_: &StoredFile, b: &Bytes| u32::try_from(b.len()).unwrap_or(u32::MAX))
            .time_to_idle(IDLE)
            // Removing an original drops its cached variants too.
            .support_invalidation_closures()
            .build();
        let root = Self {
            images: data_dir.join("images"),
            drafts: data_dir.join("drafts"),
            variants: data_dir.join("variants"),
            tmp: data_dir.join("tmp"),
            intents: data_dir.join("intents"),
            hot,
            max_cached: (cache_bytes / 8).min(MAX_CACHED_FILE),
            whole_reads: std::sync::Arc::new(tokio::sync::Semaphore::new(WHOLE_READS)),
        };
        std::fs::create_dir_all(&root.images)?;
        std::fs::create_dir_all(&root.drafts)?;
        std::fs::create_dir_all(&root.variants)?;
        std::fs::create_dir_all(&root.intents)?;
        if root.tmp.exists() {
            std::fs::remove_dir_all(&root.tmp)?;
        }
        std::fs::create_dir_all(&root.tmp)?;
        Ok(root)
    }

    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// The path of a stored file. `ImageName` is validated, so this never leaves the tree.
    pub fn path_of(&self, name: &ImageName) -> PathBuf {
        let (a, b) = name.shards();
        self.images.join(a).join(b).join(name.to_string())
    }

    /// The path of an original on `shelf`.
    pub fn path_on(&self, shelf: Shelf, name: &ImageName) -> PathBuf {
        match shelf {
            Shelf::Published => self.path_of(name),
            Shelf::Draft => {
                let (a, b) = name.shards();
                self.drafts.join(a).join(b).join(name.to_string())
            }
        }
    }

    /// The path of a stored original or variant.
    pub fn file_path(&self, file: &StoredFile) -> PathBuf {
        match file {
            StoredFile::Original(name) => self.path_of(name),
            StoredFile::Variant(source, recipe) => {
                self.variants_of(source).join(recipe.file_name())
            }
        }
    }

    /// The directory holding `source`'s variants.
    fn variants_of(&self, source: &ImageName) -> PathBuf {
        let (a, b) = source.shards();
        self.variants.join(a).join(b).join(source.sha1())
    }

    /// Writes a variant: durably, under a temp name first, so that a crash never leaves a
    /// partly written file under its name (it would be served as immutable). Variants
    /// can be made again, so unlike originals they need no intent. Blocking.
    pub fn store(&self, file: &StoredFile, bytes: &[u8]) -> io::Result<()> {
        let target = self.file_path(file);
        std::fs::create_dir_all(target.parent().unwrap_or(&self.variants))?;
        self.write_whole(&target, bytes)
    }

    /// Writes `bytes` to `target` (in an existing directory under the data dir) so that a
    /// crash leaves the old file or the new one, whole: written and fsynced under a temp
    /// name in `tmp` (emptied at start), renamed into place, the directory fsynced.
    /// Blocking.
    pub fn write_whole(&self, target: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut staged = tempfile::NamedTempFile::new_in(&self.tmp)?;
        io::Write::write_all(&mut staged, bytes)?;
        staged.as_file().sync_all()?;
        staged.persist(target).map_err(|e| e.error)?;
        match target.parent() {
            Some(dir) => std::fs::File::open(dir)?.sync_all(),
            None => Ok(()),
        }
    }

    /// Makes a fully written temp file durable and moves it into place under `name` on
    /// `shelf`, leaving an intent for it (see the module's note) that the caller settles
    /// once the file's record is written, or the file removed again.
    ///
    /// Returns `false` when identical content is already there: the temp file is then
    /// dropped (and deleted) unsynced, the existing file is kept, and no intent is left.
    /// Blocking: call from a blocking task.
    pub fn commit(&self, staged: TempPath, shelf: Shelf, name: &ImageName) -> io::Result<bool> {
        let target = self.path_on(shelf, name);
        if target.exists() {
            return Ok(false);
        }
        self.make_shard_dir(&target)?;
        // The intent is made before the file is synced, so on most file systems that
        // sync also carries the intent's directory entry and the directory sync below
        // finds nothing left to write.
        std::fs::File::create(self.intents.join(intent_name(shelf, name)))?;
        // Synced before the rename, so the name never points at a partly written file.
        std::fs::File::open(&staged)?.sync_all()?;
        // The intent must be on disk before the rename can be.
        std::fs::File::open(&self.intents)?.sync_all()?;
        staged.persist(&target).map_err(|e| e.error)?;
        // The rename is durable only once the directory entry is.
        sync_parent(&target)?;
        Ok(true)
    }

    /// Creates `target`'s shard directories, durably, if they are missing.
    fn make_shard_dir(&self, target: &Path) -> io::Result<()> {
        let Some(dir) = target.parent() else {
            return Ok(());
        };
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            // A new shard directory is durable only once its entry in each parent is.
            let mut parent = dir.parent();
            while let Some(p) =
                parent.filter(|p| p.starts_with(&self.images) || p.starts_with(&self.drafts))
            {
                std::fs::File::open(p)?.sync_all()?;
                parent = p.parent();
            }
        }
        Ok(())
    }

    /// Publishes a draft's file: links it into `images/` (the draft's stays, for other
    /// drafts of the same content), leaving an intent for the published name that the
    /// caller settles once the records say it is published. Returns `false`, leaving no
    /// intent, when the published file is there already. Blocking.
    pub fn publish_draft(&self, name: &ImageName) -> io::Result<bool> {
        let target = self.path_of(name);
        if target.exists() {
            return Ok(false);
        }
        self.make_shard_dir(&target)?;
        self.intend_removal(Shelf::Published, name)?;
        match std::fs::hard_link(self.path_on(Shelf::Draft, name), &target) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            other => other?,
        }
        sync_parent(&target)?;
        Ok(true)
    }

    /// Records, durably, that `name`'s file on `shelf` may be about to lose its last
    /// record (before deleting an image's record). Blocking: call from a blocking task.
    pub fn intend_removal(&self, shelf: Shelf, name: &ImageName) -> io::Result<()> {
        std::fs::File::create(self.intents.join(intent_name(shelf, name)))?;
        std::fs::File::open(&self.intents)?.sync_all()
    }

    /// Drops the intent for `name` on `shelf`: its file and its records agree again. Not
    /// synced: an intent that outlives a crash is settled again at start, harmlessly.
    pub fn settle(&self, shelf: Shelf, name: &ImageName) -> io::Result<()> {
        match std::fs::remove_file(self.intents.join(intent_name(shelf, name))) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The intents a crash left (files whose record may be missing). Stray entries that
    /// are not image names are removed.
    pub fn intents(&self) -> io::Result<Vec<(Shelf, ImageName)>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.intents)? {
            let entry = entry?;
            let parsed = entry
                .file_name()
                .to_str()
                .and_then(|n| match n.strip_prefix("draft-") {
                    Some(n) => ImageName::parse(n).map(|name| (Shelf::Draft, name)),
                    None => ImageName::parse(n).map(|name| (Shelf::Published, name)),
                });
            match parsed {
                Some(intent) => names.push(intent),
                None => std::fs::remove_file(entry.path())?,
            }
        }
        Ok(names)
    }

    /// Bytes of files held in memory now (against `images.file_cache_mib`).
    pub fn cached_bytes(&self) -> u64 {
        self.hot.weighted_size()
    }

    /// Opens a stored file: from the cache when it is there; else a file that may be
    /// cached is read whole, in one blocking call, and cached; a larger one is handed back
    /// open, to be streamed. `NotFound` if it does not exist.
    pub async fn open_file(&self, file: &StoredFile) -> io::Result<Opened> {
        if let Some(bytes) = self.hot.get(file) {
            return Ok(Opened::Whole(bytes));
        }
        let path = self.file_path(file);
        let max_cached = self.max_cached;
        let whole_read = self.whole_reads.clone().try_acquire_owned().ok();
        let opened = tokio::task::spawn_blocking(move || -> io::Result<Opened> {
            let mut file = std::fs::File::open(path)?;
            let length = file.metadata()?.len();
            let whole = length <= SMALL_FILE || (length <= max_cached && whole_read.is_some());
            if !whole {
                return Ok(Opened::Large(file, length));
            }
            let mut bytes = Vec::with_capacity(length as usize);
            file.read_to_end(&mut bytes)?;
            drop(whole_read);
            Ok(Opened::Whole(bytes.into()))
        })
        .await
        .map_err(io::Error::other)??;
        if let Opened::Whole(bytes) = &opened {
            self.hot.insert(file.clone(), bytes.clone());
        }
        Ok(opened)
    }

    /// Replaces a stored original's bytes (a lossless recompression): written durably
    /// under a temp name first, then swapped with the original in one step, so a reader
    /// sees the old file or the new one whole. Returns `false`, changing nothing, if the
    /// original is gone: the swap needs both files, so an image deleted meanwhile never
    /// comes back (a rename over it would bring it back without a record). Blocking.
    pub fn replace(&self, name: &ImageName, bytes: &[u8]) -> io::Result<bool> {
        let target = self.path_of(name);
        let mut staged = tempfile::NamedTempFile::new_in(&self.tmp)?;
        io::Write::write_all(&mut staged, bytes)?;
        staged.as_file().sync_all()?;
        // After the swap the temp path holds the old bytes; dropping it deletes them.
        let staged = staged.into_temp_path();
        match exchange(&staged, &target) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        }
        if let Some(dir) = target.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        self.hot.invalidate(&StoredFile::Original(name.clone()));
        Ok(true)
    }

    /// Where the optimizer marks that it tried to recompress `name` (beside its
    /// variants, so it goes with them when the image is removed).
    fn recompression_mark(&self, name: &ImageName) -> PathBuf {
        self.variants_of(name).join("recompressed")
    }

    pub fn recompression_tried(&self, name: &ImageName) -> bool {
        self.recompression_mark(name).exists()
    }

    /// Removes the mark, and its directory if nothing else is in it.
    pub fn unmark_recompression(&self, name: &ImageName) -> io::Result<()> {
        self.remove_derived(&self.recompression_mark(name))
    }

    /// Removes a file made from an original (a variant, a mark) whose original went while
    /// it was made, and its directory if that is now empty. Never the original: one there
    /// now may be an identical upload's, made since.
    pub fn remove_derived(&self, path: &Path) -> io::Result<()> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        if let Some(dir) = path.parent() {
            // Fails (and is left) when not empty or already gone: both fine.
            let _ = std::fs::remove_dir(dir);
        }
        Ok(())
    }

    pub fn mark_recompression_tried(&self, name: &ImageName) -> io::Result<()> {
        let mark = self.recompression_mark(name);
        if let Some(dir) = mark.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(mark, b"")
    }

    /// Removes a stored original on `shelf` (used to undo a commit whose metadata could
    /// not be written, and when its last image is deleted); a published one's variants
    /// and cached copies go with it.
    pub fn remove(&self, shelf: Shelf, name: &ImageName) -> io::Result<()> {
        if shelf == Shelf::Draft {
            return match std::fs::remove_file(self.path_on(shelf, name)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        self.hot.invalidate(&StoredFile::Original(name.clone()));
        let source = name.clone();
        // Fails only if the cache was built without invalidation closures: it is not.
        let _ = self.hot.invalidate_entries_if(
            move |file, _| matches!(file, StoredFile::Variant(s, _) if *s == source),
        );
        match std::fs::remove_file(self.path_of(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        match std::fs::remove_dir_all(self.variants_of(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Syncs the directory holding `path`, so an entry made or renamed in it is durable.
fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Swaps two files atomically (`renameat2` with `RENAME_EXCHANGE`); `NotFound` if either
/// is missing.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let (a_path, b_path) = (a, b);
    let (a, b) = (
        CString::new(a_path.as_os_str().as_bytes())?,
        CString::new(b_path.as_os_str().as_bytes())?,
    );
    // SAFETY: both are valid NUL-terminated strings that outlive the call; AT_FDCWD
    // resolves relative paths as the std file APIs do.
    let done = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if done == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EINVAL) {
        // A filesystem without RENAME_EXCHANGE (NFS, say): checked, then renamed.
        if !b_path.exists() {
            return Err(io::ErrorKind::NotFound.into());
        }
        return std::fs::rename(a_path, b_path);
    }
    Err(error)
}

/// Elsewhere, checked and then renamed: a deletion in between would bring the file back.
#[cfg(not(target_os = "linux"))]
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    if !b.exists() {
        return Err(io::ErrorKind::NotFound.into());
    }
    std::fs::rename(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacing_swaps_the_bytes_and_never_brings_a_deleted_file_back() {
        let dir = tempfile::tempdir().unwrap();
        let root = MediaRoot::open(dir.path(), 0).unwrap();
        let name = ImageName::parse(&format!("{}.png", "ab".repeat(20))).unwrap();
        let path = root.path_of(&name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"the old bytes").unwrap();
        assert!(root.replace(&name, b"new").unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        // Deleted (as a DELETE would, between the optimizer's read and its swap).
        std::fs::remove_file(&path).unwrap();
        assert!(!root.replace(&name, b"newer").unwrap());
        assert!(!path.exists());
        // And no temp file stays behind either way.
        assert_eq!(std::fs::read_dir(root.tmp_dir()).unwrap().count(), 0);
    }
}
