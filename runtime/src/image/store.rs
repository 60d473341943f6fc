//! [`ImageStore`]: the public face of the image module.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{ImageInfo, Removed, Result};

/// The image store under `<data-root>/image`. Cheap to clone; all state is on disk, so several
/// handles (and several daemons with different data roots) never disagree.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root`, and clears stale staging left by a crash.
    pub fn open(root: &Path) -> Result<Self> {
        let _ = root;
        todo!()
    }

    /// Makes a one-layer image from a root filesystem tarball (plain, gzip or zstd), as
    /// `docker import` does, and tags it `reference` (normalised, `:latest` when no tag).
    pub fn import(&self, rootfs: &mut dyn Read, reference: &str) -> Result<ImageInfo> {
        let _ = (rootfs, reference);
        todo!()
    }

    /// Loads every image of an OCI image-layout archive or a `docker save` archive (either
    /// possibly gzip-compressed). All-or-nothing: on error nothing new stays in the store.
    pub fn load(&self, archive: &mut dyn Read) -> Result<Vec<ImageInfo>> {
        let _ = archive;
        todo!()
    }

    /// All images, newest first.
    pub fn list(&self) -> Result<Vec<ImageInfo>> {
        todo!()
    }

    /// Finds an image by `name[:tag]`, full id (`sha256:…` or hex) or unique id prefix.
    pub fn resolve(&self, reference: &str) -> Result<ImageInfo> {
        let _ = reference;
        todo!()
    }

    /// Docker's `image rm` semantics: a tag reference untags (and deletes the image when it was
    /// the last tag); an id deletes (refused with several tags unless `force`). Blobs and
    /// snapshots no other image uses are deleted with the image. The caller must already have
    /// checked that no container uses the image.
    pub fn remove(&self, reference: &str, force: bool) -> Result<Vec<Removed>> {
        let _ = (reference, force);
        todo!()
    }

    /// The unpacked snapshot directories of the image's layers, bottom layer first: the
    /// overlayfs lower directories of a container (overlayfs wants them top first).
    pub fn layer_dirs(&self, image: &ImageInfo) -> Result<Vec<PathBuf>> {
        let _ = image;
        todo!()
    }

    /// Docker-shaped `image inspect` document (`Id`, `RepoTags`, `Created`, `Size`, `Config`,
    /// `RootFS.Layers`, …).
    pub fn inspect(&self, image: &ImageInfo) -> Result<serde_json::Value> {
        let _ = image;
        todo!()
    }
}
