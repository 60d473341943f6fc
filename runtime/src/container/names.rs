//! The name index: `<data-root>/names/<name>` holds the id of the container with that name,
//! so that finding a name, and refusing a taken one, costs one small file read instead of a
//! read of every `container.json`.
//!
//! Creating the entry with `O_CREAT|O_EXCL` *is* the reservation of the name: of two creates
//! with one name only one can make the file. `create` reserves before it writes the container
//! directory and `remove` releases after the directory went to `trash/`, so a crash between
//! the steps leaves at worst a *stale* entry (its container is gone, or does not carry the
//! name), never a container without its entry. Stale entries are treated as absent and deleted
//! under the containers lock. Entries are only deleted under that lock, and `create` holds it
//! until `container.json` is written, so an entry whose container is still being created is
//! never mistaken for a stale one.
//!
//! Container names match `[a-zA-Z0-9][a-zA-Z0-9_.-]+` (`create::validate_name`), so they are
//! safe file names and never start with a dot: dot files in `names/` belong to the index
//! itself. This module does not decide which names are valid or how they are generated.

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use super::state::{files, read_json};
use super::{Container, ContainerError, Result, Runtime};

/// Marks an index built from every container on disk. Without it `Runtime::open` rebuilds the
/// index: a data root from before the index existed, or one whose `names/` was deleted. Once
/// it exists `create` and `remove` keep the index complete, and opening reads two directory
/// listings instead of every container (see [`Runtime::open_names`]).
const COMPLETE: &str = ".complete";

/// What a `names/<name>` entry says, checked against the container it points to.
enum Entry {
    /// No entry.
    Absent,
    /// The entry names a container that exists and carries the name.
    Valid(String),
    /// The entry is empty, unreadable as an id, or its container is gone or renamed.
    Stale,
}

impl Runtime {
    /// `<data-root>/names`: one file per container name, holding the container's id.
    pub fn names_dir(&self) -> PathBuf {
        self.cfg.root.join("names")
    }

    /// The id of the container named `name`, if any. Two file reads: the entry and the
    /// container's `container.json`. A stale entry is deleted and reported as absent.
    pub(crate) fn find_by_name(&self, name: &str) -> Result<Option<String>> {
        match self.entry(name)? {
            Entry::Valid(id) => return Ok(Some(id)),
            Entry::Absent => return Ok(None),
            Entry::Stale => {}
        }
        // Looked at again under the lock: the entry may belong to a create still writing its
        // container, which holds the lock until it is done.
        let _lock = self.lock_containers()?;
        match self.entry(name)? {
            Entry::Valid(id) => Ok(Some(id)),
            Entry::Absent => Ok(None),
            Entry::Stale => {
                self.remove_entry(name)?;
                Ok(None)
            }
        }
    }

    /// Reserves `name` for the container `id`; fails with [`ContainerError::NameInUse`] when
    /// another container holds it. The caller holds the containers lock and must call
    /// [`Runtime::release_name`] if the container is not created after all.
    pub(crate) fn reserve_name(&self, name: &str, id: &str) -> Result<()> {
        let path = self
            .entry_path(name)
            .ok_or_else(|| ContainerError::InvalidName(name.to_string()))?;
        // Two attempts: the second follows the removal of a stale entry.
        for _ in 0..2 {
            let path = path.clone();
            match fs::File::options().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    return f.write_all(id.as_bytes()).map_err(|source| {
                        // An entry without its id would hold the name until found stale.
                        let _ = fs::remove_file(&path);
                        ContainerError::Io {
                            op: "write",
                            path,
                            source,
                        }
                    });
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(source) => {
                    return Err(ContainerError::Io {
                        op: "create",
                        path,
                        source,
                    })
                }
            }
            match self.entry(name)? {
                Entry::Valid(other) => {
                    return Err(ContainerError::NameInUse {
                        name: name.to_string(),
                        id: other,
                    })
                }
                // Removed meanwhile (only by another process: we hold the lock).
                Entry::Absent => {}
                Entry::Stale => self.remove_entry(name)?,
            }
        }
        // The entry came back after being removed: someone without the lock is writing it.
        Err(ContainerError::NameInUse {
            name: name.to_string(),
            id: self.entry_id(name)?.unwrap_or_default(),
        })
    }

    /// Releases `name` if it is reserved for `id` (a failed create, a removed container). The
    /// caller holds the containers lock. An entry pointing elsewhere is left alone: it is
    /// another container's.
    pub(crate) fn release_name(&self, name: &str, id: &str) -> Result<()> {
        if self.entry_id(name)?.as_deref() == Some(id) {
            self.remove_entry(name)?;
        }
        Ok(())
    }

    /// Makes the index agree with the containers on disk, unless it is known to be complete
    /// already. Called by `Runtime::open` under the containers lock, after partial container
    /// directories were swept.
    ///
    /// The rebuild reads every `container.json` and every entry: with 500 containers it took
    /// 50-75 ms on a loaded 2-core machine (debug build) against 3 ms for the rest of `open`,
    /// so it runs only when the marker is missing, or when there are fewer entries than
    /// containers (a runtime that predates the index wrote to this data root, or entries were
    /// deleted by hand). Counting is two directory listings, no file reads. Stale entries left
    /// by a crash are not looked for here: they are dropped when a lookup or create meets
    /// them.
    pub(crate) fn open_names(&self) -> Result<()> {
        let dir = self.names_dir();
        fs::create_dir_all(&dir).map_err(|source| ContainerError::Io {
            op: "create",
            path: dir.clone(),
            source,
        })?;
        let marker = dir.join(COMPLETE);
        if marker.exists() && self.count_containers()? <= count_entries(&dir)? {
            return Ok(());
        }
        tracing::info!(path = %dir.display(), "rebuilding the container name index");
        for id in self.ids()? {
            let c = match read_json::<Container>(&self.container_dir(&id), files::CONTAINER) {
                Ok(Some(c)) => c,
                Ok(None) => continue,
                Err(err) => {
                    // Skipped as `list` skips it: an unreadable container must not keep the
                    // runtime from opening.
                    tracing::warn!(container = %id, %err, "container unreadable, name not indexed");
                    continue;
                }
            };
            if super::create::validate_name(&c.name).is_err() {
                tracing::warn!(container = %id, name = %c.name, "name not indexable, skipped");
                continue;
            }
            match self.reserve_name(&c.name, &id) {
                Ok(()) => {}
                // Only a data root written by a runtime without the lock could hold two
                // containers with one name; the first one indexed keeps it.
                Err(ContainerError::NameInUse { name, id: other }) if other != id => {
                    tracing::warn!(container = %id, %name, holder = %other, "duplicate name")
                }
                Err(ContainerError::NameInUse { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        for e in super::lookup::read_dir(&dir)?.flatten() {
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if super::create::validate_name(&name).is_ok() {
                if let Entry::Stale = self.entry(&name)? {
                    self.remove_entry(&name)?;
                }
            }
        }
        // Written last: a crash during the rebuild leaves no marker and the next open
        // rebuilds again.
        fs::write(&marker, b"").map_err(|source| ContainerError::Io {
            op: "write",
            path: marker,
            source,
        })
    }

    /// Container directories under `containers/` (after the sweep, each holds a container).
    fn count_containers(&self) -> Result<usize> {
        Ok(super::lookup::read_dir(&self.cfg.root.join("containers"))?
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .count())
    }

    /// Reads `names/<name>` and checks it against the container it points to.
    fn entry(&self, name: &str) -> Result<Entry> {
        let Some(id) = self.entry_id(name)? else {
            return Ok(Entry::Absent);
        };
        // A 64-hex id keeps the entry from pointing outside `containers/`.
        if id.len() != 64 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Ok(Entry::Stale);
        }
        match read_json::<Container>(&self.container_dir(&id), files::CONTAINER) {
            Ok(Some(c)) if c.name == name => Ok(Entry::Valid(id)),
            Ok(_) => Ok(Entry::Stale),
            // A corrupt container.json counts as gone, as the scan the index replaced skipped
            // it; a failed read (EMFILE, EIO) says nothing about the entry and is returned.
            Err(ContainerError::Json { .. }) => Ok(Entry::Stale),
            Err(e) => Err(e),
        }
    }

    /// `names/<name>`, or `None` for a name no container can have. `lookup` passes names
    /// from requests through here: without the check `../x` or `/x` would read, and as a
    /// stale entry delete, files outside `names/`.
    fn entry_path(&self, name: &str) -> Option<PathBuf> {
        super::create::validate_name(name).ok()?;
        Some(self.names_dir().join(name))
    }

    /// The id written in `names/<name>`, `None` when there is no entry.
    fn entry_id(&self, name: &str) -> Result<Option<String>> {
        let Some(path) = self.entry_path(name) else {
            return Ok(None);
        };
        match fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s.trim().to_string())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            // Not an id at all (e.g. a file that is not UTF-8): stale, not an error.
            Err(e) if e.kind() == ErrorKind::InvalidData => Ok(Some(String::new())),
            Err(source) => Err(ContainerError::Io {
                op: "read",
                path,
                source,
            }),
        }
    }

    fn remove_entry(&self, name: &str) -> Result<()> {
        match self.entry_path(name) {
            Some(path) => remove_file(&path),
            None => Ok(()),
        }
    }
}

/// Entries in `names/`, the index's own dot files not counted.
fn count_entries(dir: &Path) -> Result<usize> {
    Ok(super::lookup::read_dir(dir)?
        .flatten()
        .filter(|e| !e.file_name().as_encoded_bytes().starts_with(b"."))
        .count())
}

/// `fs::remove_file` that counts an absent file as removed.
fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ContainerError::Io {
            op: "remove",
            path: path.to_path_buf(),
            source,
        }),
    }
}
