//! Finding containers by name, id or id prefix, and listing them.

use std::fs::{self, File};
use std::path::PathBuf;

use nix::fcntl::{Flock, FlockArg};

use super::state::{files, load_state, read_json};
use super::{Container, ContainerError, Result, Runtime};

impl Runtime {
    /// `<data-root>/trash`: removed containers waiting to be deleted (same file system as
    /// `containers/`, so moving one there is a rename).
    pub fn trash_dir(&self) -> PathBuf {
        self.cfg.root.join("trash")
    }

    /// `<data-root>/containers/<id>`.
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.cfg.root.join("containers").join(id)
    }

    /// Serialises creates and removes, so that names stay unique across concurrent requests
    /// (and across two processes sharing a data root, which the daemon forbids anyway).
    pub(crate) fn lock_containers(&self) -> Result<Flock<File>> {
        lock_file(&self.cfg.root.join("containers").join(".lock"))
    }

    /// Serialises the operations that change one container's lifecycle (start, remove), so
    /// two starts cannot both spawn a supervisor and a remove cannot delete a container that
    /// is being started. The lock is on the directory itself (flock takes a directory's fd
    /// as well as a file's): a lock file would be one more inode to make per container, and
    /// inodes are what this machine's file system is slowest at.
    pub(crate) fn lock_container(&self, id: &str) -> Result<Flock<File>> {
        let dir = self.container_dir(id);
        let file = File::open(&dir).map_err(|source| match source.kind() {
            // The directory is gone: the container was removed meanwhile.
            std::io::ErrorKind::NotFound => ContainerError::NotFound(id.to_string()),
            _ => ContainerError::Io {
                op: "open",
                path: dir.clone(),
                source,
            },
        })?;
        lock(file, &dir)
    }

    /// Every container id on disk (directories holding a `container.json`).
    pub(super) fn ids(&self) -> Result<Vec<String>> {
        Ok(read_dir(&self.cfg.root.join("containers"))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join(files::CONTAINER).exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect())
    }

    /// Loads one container by full id, with its state.
    pub(crate) fn load(&self, id: &str) -> Result<Container> {
        let dir = self.container_dir(id);
        let mut c: Container = read_json(&dir, files::CONTAINER)?
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
        c.state = load_state(&dir)?;
        Ok(c)
    }

    /// Finds a container by full id, name (with or without a leading `/`) or unique id
    /// prefix, in Docker's order of precedence, with its current state.
    pub fn lookup(&self, needle: &str) -> Result<Container> {
        if needle.is_empty() {
            return Err(ContainerError::NotFound(needle.to_string()));
        }
        let is_hex = needle.chars().all(|c| c.is_ascii_hexdigit());
        if needle.len() == 64
            && is_hex
            && self.container_dir(needle).join(files::CONTAINER).exists()
        {
            return self.load(needle);
        }
        let name = needle.strip_prefix('/').unwrap_or(needle);
        if let Some(id) = self.find_by_name(name)? {
            return self.load(&id);
        }
        if is_hex {
            let matches: Vec<String> = self
                .ids()?
                .into_iter()
                .filter(|id| id.starts_with(needle))
                .collect();
            match matches.as_slice() {
                [one] => return self.load(one),
                [] => {}
                _ => return Err(ContainerError::Ambiguous(needle.to_string())),
            }
        }
        Err(ContainerError::NotFound(needle.to_string()))
    }

    /// All containers (only running ones unless `all`), newest first.
    pub fn list(&self, all: bool) -> Result<Vec<Container>> {
        let mut out = Vec::new();
        for id in self.ids()? {
            // A container removed while we list is simply not listed.
            match self.load(&id) {
                Ok(c) if all || c.state.status == super::Status::Running => out.push(c),
                Ok(_) | Err(ContainerError::NotFound(_)) => {}
                Err(e) => {
                    tracing::warn!(container = %id, error = %e, "skipping unreadable container")
                }
            }
        }
        out.sort_by(|a, b| b.created.cmp(&a.created));
        Ok(out)
    }
}

/// Opens (creating) `path` and takes an exclusive flock on it, held until the guard drops.
fn lock_file(path: &std::path::Path) -> Result<Flock<File>> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| ContainerError::Io {
            op: "open",
            path: path.to_path_buf(),
            source,
        })?;
    lock(file, path)
}

fn lock(file: File, path: &std::path::Path) -> Result<Flock<File>> {
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| ContainerError::Sys {
        op: format!("flock {}", path.display()),
        source: e,
    })
}

/// `fs::read_dir` with the directory in the error.
pub(crate) fn read_dir(dir: &std::path::Path) -> Result<fs::ReadDir> {
    fs::read_dir(dir).map_err(|source| ContainerError::Io {
        op: "read",
        path: dir.to_path_buf(),
        source,
    })
}
