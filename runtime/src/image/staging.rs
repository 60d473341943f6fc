//! Staging directories under `tmp/`: one per load, import or garbage collection, removed when
//! the operation ends, successfully or not. It owns only their lifetime, not what goes in them.
//!
//! Each staging directory is held with an exclusive `flock` for as long as it lives, so that
//! [`clean_stale`] (run by [`super::ImageStore::open`]) removes only what a crashed process
//! left, never the staging of a load still running in another handle or process on the same
//! store.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};

use super::{ImageError, Result};

/// Makes staging names unique within the process (the pid and clock separate processes).
static NEXT: AtomicU64 = AtomicU64::new(0);

/// Attempts at creating a staging directory before giving up. A retry happens only when a
/// concurrent [`clean_stale`] removed the new directory between its creation and its locking.
const CREATE_ATTEMPTS: usize = 5;

/// A locked staging directory, removed on drop.
#[derive(Debug)]
pub(super) struct Staging {
    path: PathBuf,
    _lock: Flock<File>,
}

impl Staging {
    /// Creates and locks `tmp/<purpose>-<unique>`.
    pub(super) fn new(tmp: &Path, purpose: &str) -> Result<Self> {
        let mut last_err = None;
        for _ in 0..CREATE_ATTEMPTS {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = tmp.join(format!("{purpose}-{}-{n}-{nanos}", std::process::id()));
            fs::create_dir(&path).map_err(|source| ImageError::Io {
                op: "create staging directory",
                path: path.clone(),
                source,
            })?;
            let dir = match File::open(&path) {
                Ok(dir) => dir,
                // A concurrent cleaner removed it before we could even open it: try again.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    last_err = Some(e);
                    continue;
                }
                Err(source) => {
                    return Err(ImageError::Io {
                        op: "open staging directory",
                        path: path.clone(),
                        source,
                    })
                }
            };
            let lock = match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => lock,
                Err((_, errno)) => {
                    last_err = Some(io::Error::from(errno));
                    continue;
                }
            };
            // Still ours? A cleaner may have removed it before we locked it.
            let same = match (lock.metadata(), fs::symlink_metadata(&path)) {
                (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
                _ => false,
            };
            if same {
                return Ok(Self { path, _lock: lock });
            }
            last_err = Some(io::Error::other(
                "staging directory removed while being created",
            ));
        }
        Err(ImageError::Io {
            op: "create staging directory",
            path: tmp.to_path_buf(),
            source: last_err.unwrap_or_else(|| io::Error::other("no attempt made")),
        })
    }

    /// The directory.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Creates (if needed) and returns a subdirectory.
    pub(super) fn subdir(&self, name: &str) -> Result<PathBuf> {
        let path = self.path.join(name);
        fs::create_dir_all(&path).map_err(|source| ImageError::Io {
            op: "create staging directory",
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.path) {
            if err.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), %err, "failed to remove staging directory");
            }
        }
    }
}

/// Removes what crashed operations left in `tmp/`: every entry nobody holds locked.
pub(super) fn clean_stale(tmp: &Path) -> Result<()> {
    let entries = fs::read_dir(tmp).map_err(|source| ImageError::Io {
        op: "list staging",
        path: tmp.to_path_buf(),
        source,
    })?;
    for entry in entries.flatten() {
        let path = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if !is_dir {
            let _ = fs::remove_file(&path);
            continue;
        }
        let Ok(dir) = File::open(&path) else { continue };
        // Held by a live operation: leave it alone.
        let Ok(_lock) = Flock::lock(dir, FlockArg::LockExclusiveNonblock) else {
            continue;
        };
        // Leftovers must not keep the store from opening: report, and try again next time.
        match fs::remove_dir_all(&path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => {
                tracing::warn!(path = %path.display(), %err, "could not remove stale image staging")
            }
            _ => tracing::info!(path = %path.display(), "removed stale image staging"),
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is the test's assertion
mod tests {
    use super::*;

    #[test]
    fn clean_stale_spares_live_staging() {
        let dir = tempfile::tempdir().unwrap();
        let live = Staging::new(dir.path(), "load").unwrap();
        let stale = dir.path().join("load-crashed");
        fs::create_dir_all(stale.join("x")).unwrap();
        clean_stale(dir.path()).unwrap();
        assert!(live.path().is_dir());
        assert!(!stale.exists());
        let live_path = live.path().to_path_buf();
        drop(live);
        assert!(!live_path.exists());
    }
}
