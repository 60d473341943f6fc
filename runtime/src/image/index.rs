//! The store's index: which images exist (`images/<id hex>.json`, one record each) and which
//! tags point at them (`repositories.json`), plus the lock that serialises every change to
//! either. It owns those files; blobs and snapshots belong to `content.rs` and the store.
//!
//! Writers hold an exclusive `flock` on `<root>/lock` (an [`IndexLock`], which every mutating
//! method takes as proof) and replace files by writing `<name>.tmp` and renaming it, so readers,
//! which take no lock, always see a whole old or a whole new file. Two loads into one store, in
//! one process or two, therefore never lose each other's tags.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::content::is_full_hex;
use super::manifest;
use super::{ImageConfig, ImageError, Result};

/// What the store keeps about one image besides its blobs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(super) struct ImageRecord {
    /// `sha256:<hex>` of the config: the image id.
    pub(super) id: String,
    /// `sha256:<hex>` of the manifest.
    pub(super) manifest_digest: String,
    /// Layers, bottom first.
    pub(super) layers: Vec<LayerRecord>,
    /// Creation time from the config.
    pub(super) created: Option<String>,
    /// Sum of the uncompressed layer sizes.
    pub(super) size: u64,
    /// From the config.
    pub(super) architecture: String,
    /// From the config.
    pub(super) os: String,
    /// The container defaults from the config.
    pub(super) config: ImageConfig,
}

/// One layer of an [`ImageRecord`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(super) struct LayerRecord {
    /// The layer blob's digest.
    pub(super) digest: String,
    /// The uncompressed digest, which names its snapshot.
    pub(super) diff_id: String,
    /// The blob's media type.
    pub(super) media_type: String,
    /// Uncompressed size in bytes.
    pub(super) size: u64,
}

/// `repositories.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Repositories {
    /// `name:tag` → image id.
    tags: BTreeMap<String, String>,
}

/// Proof that the caller holds the store lock.
#[derive(Debug)]
pub(super) struct IndexLock {
    _lock: Flock<File>,
}

/// The index files under the store root.
#[derive(Debug, Clone)]
pub(super) struct Index {
    root: PathBuf,
    images: PathBuf,
}

impl Index {
    /// Creates `images/` if needed.
    pub(super) fn open(root: &Path) -> Result<Self> {
        let images = root.join("images");
        fs::create_dir_all(&images).map_err(|source| io_err("create", &images, source))?;
        Ok(Self {
            root: root.to_path_buf(),
            images,
        })
    }

    /// Takes the store lock, waiting for other writers.
    pub(super) fn lock(&self) -> Result<IndexLock> {
        let path = self.root.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| io_err("open lock file", &path, source))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| io_err("lock", &path, errno.into()))?;
        Ok(IndexLock { _lock: lock })
    }

    /// All tags, `name:tag` → image id.
    pub(super) fn tags(&self) -> Result<BTreeMap<String, String>> {
        let path = self.root.join("repositories.json");
        match fs::read(&path) {
            Ok(bytes) => Ok(manifest::parse::<Repositories>(&bytes, "repositories.json")?.tags),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(source) => Err(io_err("read", &path, source)),
        }
    }

    /// Replaces all tags.
    pub(super) fn set_tags(
        &self,
        _lock: &IndexLock,
        tags: &BTreeMap<String, String>,
    ) -> Result<()> {
        let doc = Repositories { tags: tags.clone() };
        write_atomic(
            &self.root.join("repositories.json"),
            &manifest::to_vec(&doc, "repositories.json")?,
        )
    }

    /// The record of image `hex`, if the image exists.
    pub(super) fn record(&self, hex: &str) -> Result<Option<ImageRecord>> {
        if !is_full_hex(hex) {
            return Ok(None);
        }
        let path = self.images.join(format!("{hex}.json"));
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(manifest::parse(
                &bytes,
                &format!("image record {hex}"),
            )?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(io_err("read", &path, source)),
        }
    }

    /// The ids (hex) of all images.
    pub(super) fn ids(&self) -> Result<Vec<String>> {
        let entries =
            fs::read_dir(&self.images).map_err(|source| io_err("list", &self.images, source))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| io_err("list", &self.images, source))?;
            let name = entry.file_name();
            if let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".json")) {
                if is_full_hex(hex) {
                    out.push(hex.to_owned());
                }
            }
        }
        Ok(out)
    }

    /// All image records. An image removed between listing and reading is skipped.
    pub(super) fn records(&self) -> Result<Vec<ImageRecord>> {
        let mut out = Vec::new();
        for hex in self.ids()? {
            if let Some(record) = self.record(&hex)? {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// Writes an image's record.
    pub(super) fn put_record(
        &self,
        _lock: &IndexLock,
        hex: &str,
        record: &ImageRecord,
    ) -> Result<()> {
        let what = format!("image record {hex}");
        write_atomic(
            &self.images.join(format!("{hex}.json")),
            &manifest::to_vec(record, &what)?,
        )
    }

    /// Deletes an image's record.
    pub(super) fn delete_record(&self, _lock: &IndexLock, hex: &str) -> Result<()> {
        let path = self.images.join(format!("{hex}.json"));
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("delete", &path, e)),
            _ => Ok(()),
        }
    }
}

/// Writes `<path>.tmp` and renames it over `path`. Only lock holders call this, so the
/// temporary name cannot collide.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, bytes).map_err(|source| io_err("write", &tmp, source))?;
    fs::rename(&tmp, path).map_err(|source| io_err("rename", path, source))
}

fn io_err(op: &'static str, path: &Path, source: io::Error) -> ImageError {
    ImageError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}
