//! Where files live: `<data>/images/ab/cd/<sha1>.<ext>` and `<data>/tmp` for uploads in flight.

use std::io;
use std::path::{Path, PathBuf};

use tempfile::TempPath;

use crate::domain::ImageName;

/// The directory tree holding image files. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MediaRoot {
    images: PathBuf,
    tmp: PathBuf,
}

impl MediaRoot {
    /// Creates the directories if needed and removes temp files a crash left behind.
    pub fn open(data_dir: &Path) -> io::Result<Self> {
        let root = Self {
            images: data_dir.join("images"),
            tmp: data_dir.join("tmp"),
        };
        std::fs::create_dir_all(&root.images)?;
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

    /// Moves a fully written, fsynced temp file into place under `name`.
    ///
    /// Returns `false` when identical content is already stored: the temp file is then
    /// dropped (and deleted) and the existing file is kept. Blocking: call from a blocking task.
    pub fn commit(&self, staged: TempPath, name: &ImageName) -> io::Result<bool> {
        let target = self.path_of(name);
        if target.exists() {
            return Ok(false);
        }
        let dir = target.parent().unwrap_or(&self.images);
        std::fs::create_dir_all(dir)?;
        staged.persist(&target).map_err(|e| e.error)?;
        // The rename is durable only once the directory entry is.
        std::fs::File::open(dir)?.sync_all()?;
        Ok(true)
    }

    /// Removes a stored file (used to undo a commit whose metadata could not be written).
    pub fn remove(&self, name: &ImageName) -> io::Result<()> {
        match std::fs::remove_file(self.path_of(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}
