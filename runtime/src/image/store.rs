//! [`ImageStore`]: the public face of the image module. It drives a load or an import from
//! staging to publication, resolves references, removes images and collects garbage. Archive
//! formats, unpacking, digests and the index files are the sibling modules' business.
//!
//! Every load and import runs in two phases. First, everything is staged under `tmp/` and
//! verified without the store lock: the archive is spooled and hashed, every blob checked
//! against its descriptor, every layer decompressed and checked against its diff id, and each
//! layer whose snapshot does not exist yet is unpacked into staging. Only then, under the lock,
//! blobs and snapshots are renamed into place and the index updated. A refused archive thus
//! leaves nothing behind, and concurrent loads verify in parallel and only queue to publish.
//! Garbage collection runs under the same lock, so it never races a publication.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::archive::{self, sniff_file, PendingImage, PendingLayer};
use super::content::{ContentStore, Digest, StagedBlob};
use super::index::{ImageRecord, Index, IndexLock, LayerRecord};
use super::manifest;
use super::reference::{normalize_tag, parse_lookup, Lookup};
use super::staging::{clean_stale, Staging};
use super::unpack::{digest_layer, read_error, unpack_layer, End, LayerDigest};
use super::{ImageError, ImageInfo, Removed, Result};

/// Suffix of the marker directory of an image that needs no init layer.
const NO_INIT_LAYER: &str = "-none";

/// Length of the short image id Docker prints (12 hex characters).
const SHORT_ID: usize = 12;

/// The image store under `<data-root>/image`. Cheap to clone; all state is on disk, so several
/// handles (and several daemons with different data roots) never disagree.
#[derive(Debug, Clone)]
pub struct ImageStore {
    content: ContentStore,
    index: Index,
    snapshots: PathBuf,
    /// Init layers (`init_layer.rs`): `<image hex>/`, or `<image hex>-none/` for an image
    /// that needs none.
    init: PathBuf,
    tmp: PathBuf,
}

/// The layers a load has verified: blob digest → what it decompresses to, and diff id → its
/// unpacked staging directory (absent when the snapshot already existed).
#[derive(Debug, Default)]
struct VerifiedLayers {
    blobs: HashMap<Digest, LayerDigest>,
    unpacked: HashMap<Digest, PathBuf>,
}

/// What a failed publication must take back.
#[derive(Debug, Default)]
struct Rollback {
    blobs: Vec<Digest>,
    snapshots: Vec<PathBuf>,
    records: Vec<String>,
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root`, and clears what a crash may have left:
    /// stale staging, and blobs or snapshots published without their image record.
    pub fn open(root: &Path) -> Result<Self> {
        let snapshots = root.join("snapshots");
        let init = root.join("init");
        let tmp = root.join("tmp");
        for dir in [&snapshots, &init, &tmp] {
            fs::create_dir_all(dir).map_err(|source| ImageError::Io {
                op: "create",
                path: dir.clone(),
                source,
            })?;
        }
        let store = Self {
            content: ContentStore::open(root)?,
            index: Index::open(root)?,
            snapshots,
            init,
            tmp,
        };
        clean_stale(&store.tmp)?;
        let lock = store.index.lock()?;
        store.collect_garbage(&lock)?;
        Ok(store)
    }

    /// Makes a one-layer image from a root filesystem tarball (plain, gzip or zstd), as
    /// `docker import` does, and tags it `reference` (normalised, `:latest` when no tag). An
    /// empty `reference` leaves the image untagged.
    pub fn import(&self, rootfs: &mut dyn Read, reference: &str) -> Result<ImageInfo> {
        let tags = if reference.is_empty() {
            Vec::new()
        } else {
            vec![normalize_tag(reference)?]
        };
        let what = "rootfs tarball";
        let staging = Staging::new(&self.tmp, "import")?;
        let blobs = staging.subdir("blobs")?;
        let mut writer = self.content.writer(&blobs)?;
        let mut buf = vec![0u8; 128 * 1024];
        loop {
            let n = match rootfs.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_error(e, false, what)),
            };
            writer
                .write_all(&buf[..n])
                .map_err(|source| ImageError::Io {
                    op: "write staged blob",
                    path: writer.path().to_path_buf(),
                    source,
                })?;
        }
        let layer = writer.commit(None, None, what)?;
        let media_type = sniff_file(&layer)?.layer_media_type();

        let dir = staging.subdir("layer")?;
        let digest = unpack_layer(layer.open()?, &dir, what, End::Required)?;
        let created = humantime::format_rfc3339_nanos(SystemTime::now()).to_string();
        let config = self.stage_bytes(
            &blobs,
            &manifest::build_import_config(&digest.diff_id, &created)?,
            "image config",
        )?;
        let manifest_blob = self.stage_bytes(
            &blobs,
            &manifest::build_manifest(&config, &[(media_type, &layer)])?,
            "image manifest",
        )?;
        let config_doc = manifest::parse(
            &config.read_small(manifest::MAX_DOCUMENT, "config")?,
            "image config",
        )?;

        let mut verified = VerifiedLayers::default();
        verified.blobs.insert(layer.digest.clone(), digest.clone());
        verified.unpacked.insert(digest.diff_id.clone(), dir);
        let image = PendingImage {
            manifest: manifest_blob,
            config,
            config_doc,
            layers: vec![PendingLayer {
                blob: layer,
                media_type: media_type.to_owned(),
                diff_id: digest.diff_id,
            }],
            tags,
        };
        let mut infos = self.publish(&staging, vec![image], &verified)?;
        Ok(infos.pop().expect("publish returns one info per image"))
    }

    /// Loads every image of an OCI image-layout archive or a `docker save` archive (either
    /// possibly gzip- or zstd-compressed as a whole). All-or-nothing: on error nothing new
    /// stays in the store. Returns the images in archive order; an image already in the store
    /// only gains the archive's tags.
    pub fn load(&self, archive: &mut dyn Read) -> Result<Vec<ImageInfo>> {
        let staging = Staging::new(&self.tmp, "load")?;
        let spool = archive::spool(archive, &staging.subdir("spool")?, &self.content)?;
        let images = archive::images(&spool, &staging.subdir("blobs")?, &self.content)?;
        let mut verified = VerifiedLayers::default();
        for image in &images {
            for (i, layer) in image.layers.iter().enumerate() {
                let what = format!(
                    "layer {i} ({}) of image {}",
                    layer.blob.digest, image.config.digest
                );
                self.verify_layer(&staging, layer, &what, &mut verified)?;
            }
        }
        self.publish(&staging, images, &verified)
    }

    /// All images, newest first.
    pub fn list(&self) -> Result<Vec<ImageInfo>> {
        let tags = self.index.tags()?;
        let mut records = self.index.records()?;
        records.sort_by(|a, b| {
            let ta = a.created.as_deref().and_then(parse_time);
            let tb = b.created.as_deref().and_then(parse_time);
            tb.cmp(&ta).then_with(|| a.id.cmp(&b.id))
        });
        Ok(records.iter().map(|r| info(r, &tags)).collect())
    }

    /// Finds an image by `name[:tag]`, full id (`sha256:…` or hex) or unique id prefix.
    pub fn resolve(&self, reference: &str) -> Result<ImageInfo> {
        let tags = self.index.tags()?;
        let (record, _) = self.lookup(reference, &tags)?;
        Ok(info(&record, &tags))
    }

    /// Docker's `image rm` semantics: a tag reference untags (and deletes the image when it was
    /// the last tag); an id deletes (refused with several tags unless `force`). Blobs and
    /// snapshots no other image uses are deleted with the image. The caller must already have
    /// checked that no container uses the image.
    pub fn remove(&self, reference: &str, force: bool) -> Result<Vec<Removed>> {
        let lock = self.index.lock()?;
        let mut tags = self.index.tags()?;
        let (record, via_tag) = self.lookup(reference, &tags)?;
        let image_tags: Vec<String> = tags
            .iter()
            .filter(|(_, id)| **id == record.id)
            .map(|(t, _)| t.clone())
            .collect();
        let mut out = Vec::new();
        match via_tag {
            Some(tag) => {
                tags.remove(&tag);
                out.push(Removed::Untagged(tag));
                if image_tags.len() > 1 {
                    self.index.set_tags(&lock, &tags)?;
                    return Ok(out);
                }
            }
            None => {
                if image_tags.len() > 1 && !force {
                    return Err(ImageError::MultipleTags {
                        id: short_id(&record.id),
                    });
                }
                for tag in image_tags {
                    tags.remove(&tag);
                    out.push(Removed::Untagged(tag));
                }
            }
        }
        // Tags first: a crash after this leaves an untagged image, never a tag to nothing.
        self.index.set_tags(&lock, &tags)?;
        self.index.delete_record(&lock, hex_of(&record.id))?;
        out.push(Removed::Deleted(record.id.clone()));
        self.collect_garbage(&lock)?;
        Ok(out)
    }

    /// The unpacked snapshot directories of the image's layers, bottom layer first: the
    /// overlayfs lower directories of a container (overlayfs wants them top first).
    pub fn layer_dirs(&self, image: &ImageInfo) -> Result<Vec<PathBuf>> {
        image
            .diff_ids
            .iter()
            .map(|diff_id| {
                let missing = || ImageError::MissingLayer {
                    diff_id: diff_id.clone(),
                    path: self.snapshots.clone(),
                };
                let digest = Digest::parse(diff_id).map_err(|_| missing())?;
                let dir = self.snapshot_path(&digest);
                if dir.is_dir() {
                    Ok(dir)
                } else {
                    Err(ImageError::MissingLayer {
                        diff_id: diff_id.clone(),
                        path: dir,
                    })
                }
            })
            .collect()
    }

    /// The image's init layer, made on first use: the overlayfs lower directory to put above
    /// `layers` (its [`layer_dirs`](Self::layer_dirs)), or `None` when the image has every
    /// mount point a container needs.
    pub fn init_layer(&self, image: &ImageInfo, layers: &[PathBuf]) -> Result<Option<PathBuf>> {
        let hex = hex_of(&image.id);
        let dir = self.init.join(hex);
        if dir.is_dir() {
            return Ok(Some(dir));
        }
        let none = self.init.join(format!("{hex}{NO_INIT_LAYER}"));
        if none.is_dir() {
            return Ok(None);
        }
        // Under the store lock, as publications and garbage collection are: an image removed
        // meanwhile must not get an init layer that nothing would ever collect.
        let _lock = self.index.lock()?;
        if !self.index.records()?.iter().any(|r| r.id == image.id) {
            return Err(ImageError::NotFound(image.id.clone()));
        }
        let staging = Staging::new(&self.tmp, "init")?;
        let top_first: Vec<PathBuf> = layers.iter().rev().cloned().collect();
        let (built, target, layer) = match super::init_layer::build(&staging, &top_first)? {
            Some(built) => (built, dir, true),
            None => (staging.subdir("none")?, none, false),
        };
        // On disk before it is published: a half-written init layer would be used forever.
        sync_fs(&built).map_err(|source| ImageError::Io {
            op: "sync init layer",
            path: built.clone(),
            source,
        })?;
        match fs::rename(&built, &target) {
            Ok(()) => {}
            // A concurrent create made the same one first.
            Err(e) if target.is_dir() => {
                tracing::debug!(path = %target.display(), %e, "init layer made concurrently");
            }
            Err(source) => {
                return Err(ImageError::Io {
                    op: "publish init layer",
                    path: target,
                    source,
                })
            }
        }
        Ok(layer.then_some(target))
    }

    /// Docker-shaped `image inspect` document (`Id`, `RepoTags`, `Created`, `Size`, `Config`,
    /// `RootFS.Layers`, …).
    pub fn inspect(&self, image: &ImageInfo) -> Result<serde_json::Value> {
        let record = self
            .index
            .record(hex_of(&image.id))?
            .ok_or_else(|| ImageError::NotFound(image.id.clone()))?;
        let tags = self.index.tags()?;
        let info = info(&record, &tags);
        let c = &info.config;
        let mut config = serde_json::json!({
            "User": c.user.clone().unwrap_or_default(),
            "Env": c.env,
            "Cmd": c.cmd,
            "Entrypoint": c.entrypoint,
            "WorkingDir": c.working_dir.clone().unwrap_or_default(),
        });
        if let Some(signal) = &c.stop_signal {
            config["StopSignal"] = signal.clone().into();
        }
        Ok(serde_json::json!({
            "Id": info.id,
            "RepoTags": info.repo_tags,
            "RepoDigests": Vec::<String>::new(),
            "Created": info.created.unwrap_or_default(),
            "Size": info.size,
            "Architecture": record.architecture,
            "Os": record.os,
            "Config": config,
            "RootFS": { "Type": "layers", "Layers": info.diff_ids },
            "Descriptor": {
                "mediaType": manifest::MEDIA_OCI_MANIFEST,
                "digest": record.manifest_digest,
            },
        }))
    }

    /// Writes a small document we generated as a staged blob.
    fn stage_bytes(&self, dir: &Path, bytes: &[u8], what: &str) -> Result<StagedBlob> {
        let mut writer = self.content.writer(dir)?;
        writer.write_all(bytes).map_err(|source| ImageError::Io {
            op: "write staged blob",
            path: writer.path().to_path_buf(),
            source,
        })?;
        writer.commit(None, None, what)
    }

    fn snapshot_path(&self, diff_id: &Digest) -> PathBuf {
        self.snapshots.join(diff_id.hex())
    }

    /// Checks that a layer decompresses to its diff id, unpacking it into staging unless its
    /// snapshot exists already (or this load unpacked it for another image).
    fn verify_layer(
        &self,
        staging: &Staging,
        layer: &PendingLayer,
        what: &str,
        verified: &mut VerifiedLayers,
    ) -> Result<()> {
        let found = match verified.blobs.get(&layer.blob.digest) {
            Some(d) => d.clone(),
            None => {
                let skip = verified.unpacked.contains_key(&layer.diff_id)
                    || self.snapshot_path(&layer.diff_id).is_dir();
                let d = if skip {
                    digest_layer(layer.blob.open()?, what)?
                } else {
                    let dir = staging.subdir(&format!("layers/{}", layer.diff_id.hex()))?;
                    let d = unpack_layer(layer.blob.open()?, &dir, what, End::Verified)?;
                    if d.diff_id == layer.diff_id {
                        verified.unpacked.insert(d.diff_id.clone(), dir);
                    }
                    d
                };
                verified.blobs.insert(layer.blob.digest.clone(), d.clone());
                d
            }
        };
        if found.diff_id != layer.diff_id {
            return Err(ImageError::DigestMismatch {
                what: format!("{what}, uncompressed (diff id)"),
                expected: layer.diff_id.to_string(),
                actual: found.diff_id.to_string(),
            });
        }
        Ok(())
    }

    /// Phase two: under the lock, moves verified images into the store and tags them.
    fn publish(
        &self,
        staging: &Staging,
        images: Vec<PendingImage>,
        verified: &VerifiedLayers,
    ) -> Result<Vec<ImageInfo>> {
        let lock = self.index.lock()?;
        let mut rollback = Rollback::default();
        let result = self.publish_locked(&lock, staging, &images, verified, &mut rollback);
        match result {
            Ok(ids) => {
                let tags = self.index.tags()?;
                let mut out = Vec::new();
                for id in ids {
                    let record = self
                        .index
                        .record(hex_of(&id))?
                        .ok_or_else(|| ImageError::NotFound(id.clone()))?;
                    out.push(info(&record, &tags));
                }
                Ok(out)
            }
            Err(err) => {
                self.roll_back(&lock, staging, rollback);
                Err(err)
            }
        }
    }

    fn publish_locked(
        &self,
        lock: &IndexLock,
        staging: &Staging,
        images: &[PendingImage],
        verified: &VerifiedLayers,
        rollback: &mut Rollback,
    ) -> Result<Vec<String>> {
        let mut tags = self.index.tags()?;
        let mut ids = Vec::new();
        for image in images {
            let id = image.config.digest.to_string();
            let hex = image.config.digest.hex();
            if self.index.record(hex)?.is_none() {
                let blobs = [&image.manifest, &image.config]
                    .into_iter()
                    .chain(image.layers.iter().map(|l| &l.blob));
                for blob in blobs {
                    if self.content.publish(blob)? {
                        rollback.blobs.push(blob.digest.clone());
                    }
                }
                let mut layers = Vec::new();
                for layer in &image.layers {
                    if self.ensure_snapshot(staging, layer, verified)? {
                        rollback.snapshots.push(self.snapshot_path(&layer.diff_id));
                    }
                    let size = verified.blobs.get(&layer.blob.digest).map_or(0, |d| d.size);
                    layers.push(LayerRecord {
                        digest: layer.blob.digest.to_string(),
                        diff_id: layer.diff_id.to_string(),
                        media_type: layer.media_type.clone(),
                        size,
                    });
                }
                let doc = &image.config_doc;
                let record = ImageRecord {
                    id: id.clone(),
                    manifest_digest: image.manifest.digest.to_string(),
                    size: layers.iter().map(|l| l.size).sum(),
                    layers,
                    created: doc.created.clone(),
                    architecture: doc.architecture.clone(),
                    os: doc.os.clone(),
                    config: doc.config.clone(),
                };
                self.index.put_record(lock, hex, &record)?;
                rollback.records.push(hex.to_owned());
            }
            for tag in &image.tags {
                if let Some(old) = tags.insert(tag.clone(), id.clone()) {
                    if old != id {
                        // Docker: the old image stays, untagged ("renaming the old one … to
                        // empty string").
                        tracing::info!(tag, old, new = %id, "tag moved to the loaded image");
                    }
                }
            }
            ids.push(id);
        }
        self.index.set_tags(lock, &tags)?;
        ids.dedup();
        Ok(ids)
    }

    /// Puts a layer's snapshot in place; returns whether it was created now. The snapshot may
    /// have vanished since verification (a concurrent removal collected it): it is then
    /// unpacked again from the blob, which is published by now.
    fn ensure_snapshot(
        &self,
        staging: &Staging,
        layer: &PendingLayer,
        verified: &VerifiedLayers,
    ) -> Result<bool> {
        let dest = self.snapshot_path(&layer.diff_id);
        if dest.is_dir() {
            return Ok(false);
        }
        let source = match verified.unpacked.get(&layer.diff_id) {
            Some(dir) if dir.is_dir() => dir.clone(),
            _ => {
                let dir = staging.subdir(&format!("relayer-{}", layer.diff_id.hex()))?;
                let what = format!("layer {}", layer.blob.digest);
                let d = unpack_layer(
                    self.content.reader(&layer.blob.digest)?,
                    &dir,
                    &what,
                    End::Verified,
                )?;
                if d.diff_id != layer.diff_id {
                    return Err(ImageError::DigestMismatch {
                        what: format!("{what}, uncompressed (diff id)"),
                        expected: layer.diff_id.to_string(),
                        actual: d.diff_id.to_string(),
                    });
                }
                dir
            }
        };
        fs::rename(&source, &dest).map_err(|source| ImageError::Io {
            op: "publish snapshot",
            path: dest,
            source,
        })?;
        Ok(true)
    }

    /// Best effort: a publication failed half-way (an I/O error, not a hostile archive, which
    /// is refused before). Logged, because the original error is what the caller sees.
    fn roll_back(&self, lock: &IndexLock, staging: &Staging, rollback: Rollback) {
        for hex in &rollback.records {
            if let Err(err) = self.index.delete_record(lock, hex) {
                tracing::warn!(%err, "rollback: removing image record");
            }
        }
        for (i, dir) in rollback.snapshots.iter().enumerate() {
            let parked = staging.path().join(format!("rollback-{i}"));
            if let Err(err) = fs::rename(dir, &parked) {
                tracing::warn!(%err, path = %dir.display(), "rollback: removing snapshot");
            }
        }
        for digest in &rollback.blobs {
            if let Err(err) = self.content.delete(digest) {
                tracing::warn!(%err, "rollback: removing blob");
            }
        }
    }

    /// Deletes blobs and snapshots no image refers to.
    fn collect_garbage(&self, _lock: &IndexLock) -> Result<()> {
        let records = self.index.records()?;
        let mut live_blobs = BTreeSet::new();
        let mut live_snapshots = BTreeSet::new();
        for r in &records {
            live_blobs.insert(r.id.clone());
            live_blobs.insert(r.manifest_digest.clone());
            for l in &r.layers {
                live_blobs.insert(l.digest.clone());
                live_snapshots.insert(hex_of(&l.diff_id).to_owned());
            }
        }
        for digest in self.content.digests()? {
            if !live_blobs.contains(&digest.to_string()) {
                self.content.delete(&digest)?;
            }
        }
        let entries = fs::read_dir(&self.snapshots).map_err(|source| ImageError::Io {
            op: "list snapshots",
            path: self.snapshots.clone(),
            source,
        })?;
        let mut dead = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !live_snapshots.contains(&name) {
                dead.push(entry.path());
            }
        }
        let live_images: BTreeSet<&str> = records.iter().map(|r| hex_of(&r.id)).collect();
        if let Ok(entries) = fs::read_dir(&self.init) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let image = name.strip_suffix(NO_INIT_LAYER).unwrap_or(&name);
                if !live_images.contains(image) {
                    dead.push(entry.path());
                }
            }
        }
        if dead.is_empty() {
            return Ok(());
        }
        // Renamed out of `snapshots/` first, so a half-deleted tree never sits under a valid
        // name; the staging directory's drop removes them.
        let gc = Staging::new(&self.tmp, "gc")?;
        for (i, path) in dead.iter().enumerate() {
            let parked = gc.path().join(i.to_string());
            fs::rename(path, &parked).map_err(|source| ImageError::Io {
                op: "remove snapshot",
                path: path.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Resolves a reference to an image record and, when it matched a tag, that tag.
    fn lookup(
        &self,
        reference: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<(ImageRecord, Option<String>)> {
        for candidate in parse_lookup(reference)? {
            match candidate {
                Lookup::Tag(tag) => {
                    if let Some(id) = tags.get(&tag) {
                        if let Some(record) = self.index.record(hex_of(id))? {
                            return Ok((record, Some(tag)));
                        }
                    }
                }
                Lookup::Id(hex) => {
                    if let Some(record) = self.index.record(&hex)? {
                        return Ok((record, None));
                    }
                }
                Lookup::Prefix(prefix) => {
                    let matches: Vec<String> = self
                        .index
                        .ids()?
                        .into_iter()
                        .filter(|id| id.starts_with(&prefix))
                        .collect();
                    match matches.as_slice() {
                        [] => {}
                        [hex] => {
                            if let Some(record) = self.index.record(hex)? {
                                return Ok((record, None));
                            }
                        }
                        _ => return Err(ImageError::Ambiguous(reference.to_owned())),
                    }
                }
            }
        }
        Err(ImageError::NotFound(reference.to_owned()))
    }
}

/// The public view of a record.
fn info(record: &ImageRecord, tags: &BTreeMap<String, String>) -> ImageInfo {
    ImageInfo {
        id: record.id.clone(),
        manifest_digest: record.manifest_digest.clone(),
        repo_tags: tags
            .iter()
            .filter(|(_, id)| **id == record.id)
            .map(|(t, _)| t.clone())
            .collect(),
        diff_ids: record.layers.iter().map(|l| l.diff_id.clone()).collect(),
        created: record.created.clone(),
        size: record.size,
        config: record.config.clone(),
    }
}

/// `sha256:<hex>` → `<hex>`.
/// `syncfs` of the file system holding `path`: once per image, cheaper than walking a tree
/// of fsyncs and as safe.
fn sync_fs(path: &Path) -> io::Result<()> {
    let dir = fs::File::open(path)?;
    // SAFETY: syncfs on an fd we own for the duration of the call.
    if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn hex_of(id: &str) -> &str {
    id.strip_prefix("sha256:").unwrap_or(id)
}

fn short_id(id: &str) -> String {
    hex_of(id).chars().take(SHORT_ID).collect()
}

/// RFC 3339 to nanoseconds since the epoch, for sorting. humantime takes only `Z`; numeric
/// offsets (`+02:00`, as some tools write) are applied here.
fn parse_time(s: &str) -> Option<i128> {
    let (base, offset_secs) = match s.len().checked_sub(6).map(|i| s.split_at(i)) {
        Some((base, off))
            if (off.starts_with('+') || off.starts_with('-')) && off.as_bytes()[3] == b':' =>
        {
            let h: i128 = off[1..3].parse().ok()?;
            let m: i128 = off[4..6].parse().ok()?;
            let sign = if off.starts_with('-') { -1 } else { 1 };
            (format!("{base}Z"), sign * (h * 3600 + m * 60))
        }
        _ => (s.to_owned(), 0),
    };
    let t = humantime::parse_rfc3339_weak(base.trim_end_matches('Z')).ok()?;
    let nanos = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    };
    Some(nanos - offset_secs * 1_000_000_000)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is the test's assertion
mod tests {
    use super::parse_time;

    #[test]
    fn times_sort_across_offsets() {
        let z = parse_time("2024-01-01T10:00:00Z").unwrap();
        let plus = parse_time("2024-01-01T12:00:00+02:00").unwrap();
        let frac = parse_time("2024-01-01T10:00:00.5Z").unwrap();
        assert_eq!(z, plus);
        assert!(frac > z);
        assert!(parse_time("garbage").is_none());
    }
}
