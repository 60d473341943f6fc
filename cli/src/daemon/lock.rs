//! [`DataRootLock`]: one daemon per data root. Two daemons sharing a data root would both
//! adopt and auto-remove the same containers and race on the image store, so the second one
//! is refused with a clear error instead.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// File name of the lock inside the data root.
pub const LOCK_FILE: &str = "shoald.lock";

/// Errors of taking the data-root lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The data root could not be created.
    #[error("create data root {path}")]
    CreateRoot {
        /// The data root.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The lock file could not be opened.
    #[error("open lock file {path}")]
    Open {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the lock.
    #[error("data root {root} is in use by another shoald (it holds {lock}); give each daemon its own --data-root")]
    InUse {
        /// The data root.
        root: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// flock(2) failed for another reason.
    #[error("flock {path}")]
    Flock {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Errno,
    },
}

/// An exclusive flock on `<data-root>/shoald.lock`, released when dropped (or when the
/// process dies, however it dies: the kernel drops flocks with the last open descriptor).
#[derive(Debug)]
pub struct DataRootLock {
    _lock: Flock<File>,
}

impl DataRootLock {
    /// Creates `root` if needed and takes the lock, failing at once if it is held.
    pub fn acquire(root: &Path) -> Result<DataRootLock, LockError> {
        fs::create_dir_all(root).map_err(|source| LockError::CreateRoot {
            path: root.to_path_buf(),
            source,
        })?;
        let path = root.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| LockError::Open {
                path: path.clone(),
                source,
            })?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(DataRootLock { _lock: lock }),
            Err((_, Errno::EWOULDBLOCK)) => Err(LockError::InUse {
                root: root.to_path_buf(),
                lock: path,
            }),
            Err((_, source)) => Err(LockError::Flock { path, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_on_the_same_root_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        let first = DataRootLock::acquire(&root).expect("first lock");
        assert!(matches!(
            DataRootLock::acquire(&root),
            Err(LockError::InUse { .. })
        ));
        drop(first);
        DataRootLock::acquire(&root).expect("lock after release");
    }
}
