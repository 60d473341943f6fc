//! The image store: content-addressed blobs, unpacked layer snapshots and the name → image
//! index. It owns everything under `<data-root>/image/` and nothing else; it knows nothing of
//! containers (the runtime checks "image in use" before calling [`ImageStore::remove`]).
//!
//! Layout (after containerd's content store and snapshotter):
//! - `blobs/sha256/<hex>`: manifests, configs and compressed layers, immutable once committed;
//! - `snapshots/<diff-id hex>/`: a layer unpacked once, with overlayfs whiteouts, shared by
//!   every image and container that uses it;
//! - `repositories.json`: `name:tag` → image id (the config digest, as Docker uses);
//! - `images/<config hex>.json`: the manifest digest and metadata of each image;
//! - `tmp/`: staging for loads and unpacks; a failed load removes what it staged;
//! - `lock`: the `flock` that serialises changes to the index.
//!
//! Every write is staged under `tmp/` and renamed into place, so a crash or a hostile archive
//! never leaves a half-written blob or snapshot behind.
//!
//! Files: `store.rs` (the [`ImageStore`] API, staging → publish, GC), `archive.rs` (OCI layout
//! and `docker save` formats, spooling), `unpack.rs` (decompression, safe layer extraction,
//! whiteouts), `content.rs` (blobs and digests), `index.rs` (records, tags, lock),
//! `manifest.rs` (JSON shapes), `reference.rs` (name and id parsing), `staging.rs` (`tmp/`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use self::store::ImageStore;

mod archive;
mod content;
mod index;
mod init_layer;
mod manifest;
mod reference;
mod save;
mod staging;
mod store;
#[cfg(test)]
mod tests;
mod unpack;

/// Errors of the image store. Each variant names the operation and the object it failed on.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file-system operation on the store failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done ("create", "rename", "read", …).
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Content did not match the digest it was announced with.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// Which object ("layer 2", "config", …).
        what: String,
        /// The digest the manifest or index named.
        expected: String,
        /// The digest of the bytes we received.
        actual: String,
    },
    /// An archive entry was refused (path escape, device node, link outside the layer, …).
    #[error("refusing archive entry {entry:?}: {reason}")]
    HostileEntry {
        /// The entry's path as written in the archive.
        entry: String,
        /// Why it was refused.
        reason: String,
    },
    /// The archive is not a readable OCI layout or `docker save` archive.
    #[error("invalid image archive: {0}")]
    InvalidArchive(String),
    /// An archive, layer or entry ended before its announced end.
    #[error("truncated: {what} ends early")]
    Truncated {
        /// What was cut short ("image archive", "layer 1 (sha256:…)", an entry).
        what: String,
    },
    /// A layer's snapshot is missing from the store (removed behind the store's back).
    #[error("layer {diff_id} of the image is missing at {path}")]
    MissingLayer {
        /// The layer's diff id.
        diff_id: String,
        /// Where its snapshot should be.
        path: PathBuf,
    },
    /// A reference (`name:tag`, id or short id) could not be parsed.
    #[error("invalid reference format: {0:?}")]
    InvalidReference(String),
    /// No image matches the reference.
    #[error("No such image: {0}")]
    NotFound(String),
    /// A short id prefix matches more than one image.
    #[error("ambiguous image id prefix {0:?}")]
    Ambiguous(String),
    /// The image has several tags and removal by id was not forced.
    #[error("conflict: unable to delete {id} (must be forced) - image is referenced in multiple repositories")]
    MultipleTags {
        /// The short image id.
        id: String,
    },
    /// JSON in the store or in an archive could not be (de)serialised.
    #[error("{what}: {source}")]
    Json {
        /// Which document.
        what: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// Result alias of the image store.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;

/// An image as the store knows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageInfo {
    /// `sha256:<hex>` of the image config, Docker's image id.
    pub id: String,
    /// `sha256:<hex>` of the OCI manifest.
    pub manifest_digest: String,
    /// Tags pointing at this image (`name:tag`, normalised: `busybox` → `busybox:latest`).
    pub repo_tags: Vec<String>,
    /// Uncompressed layer digests (`sha256:<hex>`), bottom layer first.
    pub diff_ids: Vec<String>,
    /// Creation time from the config (RFC 3339), if it has one.
    pub created: Option<String>,
    /// Total size of the layers uncompressed (the sum of their tar streams), in bytes.
    pub size: u64,
    /// The runtime-relevant part of the image config.
    pub config: ImageConfig,
}

/// The part of an OCI image config (`config` object) a container starts from.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    /// `User` (`uid[:gid]` or a name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `Env`, `KEY=VALUE` each (Docker writes `null` for none).
    #[serde(default, deserialize_with = "manifest::null_as_default")]
    pub env: Vec<String>,
    /// `Entrypoint`.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// `WorkingDir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// `StopSignal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

/// One line of `image rm` output, as Docker prints it.
#[derive(Debug, Clone, PartialEq)]
pub enum Removed {
    /// `Untagged: name:tag`.
    Untagged(String),
    /// `Deleted: sha256:…`.
    Deleted(String),
}
