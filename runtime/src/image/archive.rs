//! Image archives: spooling an OCI image-layout archive or a `docker save` archive into a
//! staging directory, and finding the images in it. It owns the archive formats and their
//! safety rules; it commits nothing to the store (the store publishes what this returns once
//! every layer has been verified).
//!
//! Entries of a tar can come in any order (skopeo writes `index.json` last, Docker's old layout
//! puts `manifest.json` last), so the whole archive is spooled first. Every regular file is
//! hashed as it is written into the staging directory under a generated name; the archive's
//! own paths, directories, symlinks and hard links live only in an in-memory map. Nothing an
//! archive says can therefore create a path on disk, and lookups follow its symlinks virtually
//! (old `docker save` archives link repeated layers as `<id>/layer.tar -> ../<id2>/layer.tar`).
//! The same rules as for layers apply: no absolute names, no `..`, no device nodes, no symlink
//! that escapes the archive root or is used as a parent of a later entry, hard links only to
//! earlier files. FIFOs carry no data and are skipped.
//!
//! Formats read:
//! - OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`) from skopeo, umoci,
//!   buildah, containerd and Docker ≥ 25; nested indexes resolve to their linux/amd64 entry;
//!   the tag comes from `io.containerd.image.name`, else from
//!   `org.opencontainers.image.ref.name` when that is a full reference (a bare tag such as
//!   `latest`, as umoci writes, names no repository: such an image loads untagged, as Docker
//!   does);
//! - `docker save`'s `manifest.json` (`Config`, `RepoTags`, `Layers`), old layout
//!   (`<hex>.json`, `<id>/layer.tar`) and new; when an archive has both, the OCI index is used
//!   (it keeps the original manifest) and `RepoTags` are added to its tags.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::content::{ContentStore, Digest, StagedBlob};
use super::manifest::{
    self, ConfigFile, Descriptor, DockerSaveEntry, ManifestOrIndex, Platform, MAX_DOCUMENT,
};
use super::reference::normalize_tag;
use super::unpack::{
    clean_path, decompress, entry_path, hostile, read_error, symlink_escapes, Compression,
};
use super::{ImageError, Result};

/// How deep indexes may nest (an index of indexes of manifests is depth 1). Real layouts use
/// one level; the limit stops a cycle of indexes from recursing forever.
const MAX_INDEX_DEPTH: usize = 4;
/// Symlinks followed while resolving one path in the archive, as Linux's `MAXSYMLINKS`.
const MAX_SYMLINK_HOPS: usize = 40;

const WHAT: &str = "image archive";

/// An image found in an archive (or assembled by import), verified up to its blobs' digests;
/// its layers' diff ids are checked when they are unpacked.
#[derive(Debug)]
pub(super) struct PendingImage {
    /// The manifest blob.
    pub(super) manifest: StagedBlob,
    /// The config blob; its digest is the image id.
    pub(super) config: StagedBlob,
    /// The parsed config.
    pub(super) config_doc: ConfigFile,
    /// Layers, bottom first.
    pub(super) layers: Vec<PendingLayer>,
    /// Normalised `name:tag`s.
    pub(super) tags: Vec<String>,
}

/// A layer of a [`PendingImage`].
#[derive(Debug, Clone)]
pub(super) struct PendingLayer {
    /// The (possibly compressed) layer blob.
    pub(super) blob: StagedBlob,
    /// Its media type, as the manifest says.
    pub(super) media_type: String,
    /// The diff id the config announces for it.
    pub(super) diff_id: Digest,
}

/// What the archive holds at a path.
#[derive(Debug)]
enum Node {
    Dir,
    File(StagedBlob),
    Symlink(Vec<u8>),
}

/// A spooled archive: its files staged and hashed, its tree in memory.
#[derive(Debug)]
pub(super) struct Spool {
    nodes: BTreeMap<PathBuf, Node>,
}

/// Reads `src` (tar, or tar compressed as a whole with gzip or zstd) into `dir`.
pub(super) fn spool(src: &mut dyn Read, dir: &Path, content: &ContentStore) -> Result<Spool> {
    let (_, reader) = decompress(src, WHAT)?;
    let mut tracked = EofReader {
        inner: reader,
        eof: Rc::new(Cell::new(false)),
        count: 0,
    };
    let eof = Rc::clone(&tracked.eof);
    let mut spool = Spool {
        nodes: BTreeMap::new(),
    };
    {
        let mut archive = tar::Archive::new(&mut tracked);
        let entries = archive
            .entries()
            .map_err(|e| read_error(e, eof.get(), WHAT))?;
        for (seen, entry) in entries.enumerate() {
            let mut entry = entry.map_err(|e| match read_error(e, eof.get(), WHAT) {
                // Garbage from the first byte: say so rather than quote tar's header parser.
                ImageError::InvalidArchive(_) if seen == 0 => {
                    ImageError::InvalidArchive("not a tar archive (plain, gzip or zstd)".into())
                }
                other => other,
            })?;
            spool.entry(&mut entry, dir, content, &eof)?;
        }
    }
    if tracked.count == 0 {
        return Err(ImageError::InvalidArchive("the archive is empty".into()));
    }
    if eof.get() {
        return Err(ImageError::Truncated {
            what: format!("{WHAT} (no end-of-archive marker)"),
        });
    }
    Ok(spool)
}

impl Spool {
    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        dir: &Path,
        content: &ContentStore,
        eof: &Cell<bool>,
    ) -> Result<()> {
        let ty = entry.header().entry_type();
        let Some((name, rel)) = entry_path(entry)? else {
            return Ok(());
        };
        if let Some(parent) = rel.parent() {
            let mut prefix = PathBuf::new();
            for comp in parent.components() {
                prefix.push(comp);
                match self.nodes.get(&prefix) {
                    Some(Node::Symlink(_)) => {
                        return Err(hostile(
                            &name,
                            &format!("parent {} is a symlink", prefix.display()),
                        ))
                    }
                    Some(Node::File(_)) => {
                        return Err(hostile(
                            &name,
                            &format!("parent {} is not a directory", prefix.display()),
                        ))
                    }
                    Some(Node::Dir) | None => {}
                }
            }
        }
        let node = match ty {
            tar::EntryType::Directory => Node::Dir,
            _ if rel.as_os_str().is_empty() => {
                return Err(hostile(&name, "only a directory can be the archive root"))
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let mut writer = content.writer(dir)?;
                let mut buf = vec![0u8; 128 * 1024];
                let mut copied = 0u64;
                loop {
                    let n = match entry.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(read_error(e, eof.get(), WHAT)),
                    };
                    writer
                        .write_all(&buf[..n])
                        .map_err(|source| ImageError::Io {
                            op: "spool archive entry",
                            path: writer.path().to_path_buf(),
                            source,
                        })?;
                    copied += n as u64;
                }
                if ty != tar::EntryType::GNUSparse && copied != entry.size() {
                    return Err(ImageError::Truncated {
                        what: format!("{WHAT} entry {name:?}"),
                    });
                }
                Node::File(writer.commit(None, None, &name)?)
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                if target.is_empty() || target.starts_with(b"/") || symlink_escapes(&rel, &target) {
                    return Err(hostile(
                        &name,
                        &format!(
                            "symlink target {:?} leaves the archive",
                            String::from_utf8_lossy(&target)
                        ),
                    ));
                }
                Node::Symlink(target)
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let shown = String::from_utf8_lossy(&target).into_owned();
                let target = clean_path(&target)
                    .ok()
                    .filter(|t| !target.starts_with(b"/") && !t.as_os_str().is_empty());
                match target.and_then(|t| self.nodes.get(&t)) {
                    Some(Node::File(blob)) => Node::File(blob.clone()),
                    _ => {
                        return Err(hostile(
                            &name,
                            &format!("hard link target {shown:?} is not an earlier file"),
                        ))
                    }
                }
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(hostile(
                    &name,
                    "device nodes are not allowed in image archives",
                ))
            }
            tar::EntryType::Fifo => return Ok(()),
            other => {
                return Err(hostile(
                    &name,
                    &format!("unsupported tar entry type {:?}", other.as_byte() as char),
                ))
            }
        };
        if rel.as_os_str().is_empty() {
            return Ok(());
        }
        // Later entries replace earlier ones; a directory replaced by a file loses its tree.
        if !matches!(node, Node::Dir) || !matches!(self.nodes.get(&rel), Some(Node::Dir)) {
            self.nodes.retain(|k, _| !k.starts_with(&rel));
            self.nodes.insert(rel, node);
        }
        Ok(())
    }

    /// The file at `path`, following the archive's symlinks virtually.
    fn resolve(&self, path: &str) -> Option<&StagedBlob> {
        let rel = clean_path(path.as_bytes()).ok()?;
        let mut pending: Vec<Vec<u8>> = rel
            .components()
            .rev()
            .map(|c| c.as_os_str().as_bytes().to_vec())
            .collect();
        let mut cur = PathBuf::new();
        let mut hops = 0;
        while let Some(comp) = pending.pop() {
            match comp.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    if cur.as_os_str().is_empty() {
                        return None;
                    }
                    cur.pop();
                    continue;
                }
                c => cur.push(std::ffi::OsStr::from_bytes(c)),
            }
            match self.nodes.get(&cur) {
                Some(Node::Symlink(target)) => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS || target.starts_with(b"/") {
                        return None;
                    }
                    cur.pop();
                    pending.extend(target.split(|&b| b == b'/').rev().map(<[u8]>::to_vec));
                }
                Some(Node::File(blob)) => return pending.is_empty().then_some(blob),
                Some(Node::Dir) | None => {}
            }
        }
        None
    }

    /// The file at `path`, or an error naming `what` when the archive lacks it.
    fn file(&self, path: &str, what: &str) -> Result<&StagedBlob> {
        self.resolve(path).ok_or_else(|| {
            ImageError::InvalidArchive(format!("{what} {path:?} is missing from the archive"))
        })
    }

    /// The blob a descriptor names, checked against its digest and size.
    fn blob(&self, desc: &Descriptor, what: &str) -> Result<StagedBlob> {
        let digest = Digest::parse(&desc.digest)?;
        let blob = self.file(&format!("blobs/sha256/{}", digest.hex()), what)?;
        if blob.digest != digest {
            return Err(ImageError::DigestMismatch {
                what: what.to_owned(),
                expected: digest.to_string(),
                actual: blob.digest.to_string(),
            });
        }
        if blob.size != desc.size {
            return Err(ImageError::InvalidArchive(format!(
                "{what} {digest}: {} bytes, descriptor says {}",
                blob.size, desc.size
            )));
        }
        Ok(blob.clone())
    }
}

/// Finds the images of a spooled archive. `staging` receives the manifests we synthesise for
/// old `docker save` archives.
pub(super) fn images(
    spool: &Spool,
    staging: &Path,
    content: &ContentStore,
) -> Result<Vec<PendingImage>> {
    let mut images = if spool.resolve("index.json").is_some() {
        let mut images = oci_images(spool)?;
        if spool.resolve("manifest.json").is_some() {
            // Docker ≥ 25 writes both; its RepoTags are authoritative for Docker users.
            for entry in docker_entries(spool)? {
                let config = docker_file(spool, &entry.config, "config")?;
                if let Some(img) = images.iter_mut().find(|i| i.config.digest == config.digest) {
                    for tag in &entry.repo_tags {
                        img.tags.push(normalize_tag(tag)?);
                    }
                }
            }
        }
        images
    } else if spool.resolve("manifest.json").is_some() {
        docker_images(spool, staging, content)?
    } else {
        return Err(ImageError::InvalidArchive(
            "neither index.json (OCI image layout) nor manifest.json (docker save) found".into(),
        ));
    };
    if images.is_empty() {
        return Err(ImageError::InvalidArchive(
            "the archive holds no image".into(),
        ));
    }
    // One image may be listed several times (once per tag): merge by id.
    let mut merged: Vec<PendingImage> = Vec::new();
    for img in images.drain(..) {
        match merged
            .iter_mut()
            .find(|m| m.config.digest == img.config.digest)
        {
            Some(m) => m.tags.extend(img.tags),
            None => merged.push(img),
        }
    }
    for m in &mut merged {
        m.tags.sort();
        m.tags.dedup();
    }
    Ok(merged)
}

fn oci_images(spool: &Spool) -> Result<Vec<PendingImage>> {
    let index = spool.file("index.json", "index")?;
    let index: ManifestOrIndex =
        manifest::parse(&index.read_small(MAX_DOCUMENT, "index.json")?, "index.json")?;
    let entries = index
        .manifests
        .ok_or_else(|| ImageError::InvalidArchive("index.json lists no manifests".into()))?;
    let mut out = Vec::new();
    for desc in entries {
        // Top level: images for other platforms and attestations (`unknown/unknown`) are not
        // for this node.
        if desc.platform.as_ref().is_some_and(|p| !is_linux_amd64(p)) {
            continue;
        }
        let tags = tags_from_annotations(&desc)?;
        out.push(oci_image(spool, &desc, tags, 0)?);
    }
    Ok(out)
}

fn oci_image(
    spool: &Spool,
    desc: &Descriptor,
    tags: Vec<String>,
    depth: usize,
) -> Result<PendingImage> {
    if depth > MAX_INDEX_DEPTH {
        return Err(ImageError::InvalidArchive(format!(
            "indexes nested more than {MAX_INDEX_DEPTH} deep"
        )));
    }
    let blob = spool.blob(desc, "manifest")?;
    let what = format!("manifest {}", blob.digest);
    let doc: ManifestOrIndex = manifest::parse(&blob.read_small(MAX_DOCUMENT, &what)?, &what)?;
    if let Some(children) = doc.manifests {
        // A lone child without a platform is taken as is (some writers omit platforms).
        let lone = match children.as_slice() {
            [only] if only.platform.is_none() => Some(only),
            _ => None,
        };
        let child = children
            .iter()
            .find(|c| c.platform.as_ref().is_some_and(is_linux_amd64))
            .or(lone)
            .ok_or_else(|| {
                ImageError::InvalidArchive(format!(
                    "index {} has no linux/amd64 image",
                    desc.digest
                ))
            })?;
        let mut tags = tags;
        tags.extend(tags_from_annotations(child)?);
        return oci_image(spool, child, tags, depth + 1);
    }
    let config_desc = doc.config.ok_or_else(|| {
        ImageError::InvalidArchive(format!("{what} has neither config nor manifests"))
    })?;
    let config = spool.blob(&config_desc, "config")?;
    let mut layers = Vec::with_capacity(doc.layers.len());
    for (i, l) in doc.layers.iter().enumerate() {
        if l.media_type.contains("encrypted") {
            return Err(ImageError::InvalidArchive(format!(
                "layer {i} of {what} is encrypted ({})",
                l.media_type
            )));
        }
        layers.push((spool.blob(l, &format!("layer {i}"))?, l.media_type.clone()));
    }
    finish_image(blob, config, layers, tags)
}

/// Checks the config against the layers and assembles the image.
fn finish_image(
    manifest_blob: StagedBlob,
    config: StagedBlob,
    layers: Vec<(StagedBlob, String)>,
    tags: Vec<String>,
) -> Result<PendingImage> {
    let what = format!("config {}", config.digest);
    let config_doc: ConfigFile = manifest::parse(&config.read_small(MAX_DOCUMENT, &what)?, &what)?;
    if config_doc.rootfs.kind != "layers" {
        return Err(ImageError::InvalidArchive(format!(
            "{what}: rootfs type {:?}, expected \"layers\"",
            config_doc.rootfs.kind
        )));
    }
    if config_doc.rootfs.diff_ids.len() != layers.len() {
        return Err(ImageError::InvalidArchive(format!(
            "{what} lists {} diff ids for {} layers",
            config_doc.rootfs.diff_ids.len(),
            layers.len()
        )));
    }
    let layers = layers
        .into_iter()
        .zip(&config_doc.rootfs.diff_ids)
        .map(|((blob, media_type), diff_id)| {
            Ok(PendingLayer {
                blob,
                media_type,
                diff_id: Digest::parse(diff_id)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(PendingImage {
        manifest: manifest_blob,
        config,
        config_doc,
        layers,
        tags,
    })
}

fn is_linux_amd64(p: &Platform) -> bool {
    p.os == "linux" && p.architecture == "amd64"
}

/// The tag an index entry carries, if any (see the module doc for the rules).
fn tags_from_annotations(desc: &Descriptor) -> Result<Vec<String>> {
    let name = desc
        .annotations
        .get("io.containerd.image.name")
        .or_else(|| {
            desc.annotations
                .get("org.opencontainers.image.ref.name")
                .filter(|r| r.contains([':', '/']))
        });
    match name {
        // A digest-only name (`repo@sha256:…`) has no tag to give the image.
        Some(n) if n.contains('@') => Ok(Vec::new()),
        Some(n) => Ok(vec![normalize_tag(n)?]),
        None => Ok(Vec::new()),
    }
}

fn docker_entries(spool: &Spool) -> Result<Vec<DockerSaveEntry>> {
    let blob = spool.file("manifest.json", "manifest.json")?;
    manifest::parse(
        &blob.read_small(MAX_DOCUMENT, "manifest.json")?,
        "manifest.json",
    )
}

fn docker_images(
    spool: &Spool,
    staging: &Path,
    content: &ContentStore,
) -> Result<Vec<PendingImage>> {
    let mut out = Vec::new();
    for entry in docker_entries(spool)? {
        let config = docker_file(spool, &entry.config, "config")?.clone();
        let mut layers = Vec::with_capacity(entry.layers.len());
        for (i, path) in entry.layers.iter().enumerate() {
            let blob = docker_file(spool, path, &format!("layer {i}"))?.clone();
            let compression = sniff_file(&blob)?;
            layers.push((blob, compression.layer_media_type().to_owned()));
        }
        let refs: Vec<(&str, &StagedBlob)> = layers.iter().map(|(b, m)| (m.as_str(), b)).collect();
        let manifest_bytes = manifest::build_manifest(&config, &refs)?;
        let mut writer = content.writer(staging)?;
        writer
            .write_all(&manifest_bytes)
            .map_err(|source| ImageError::Io {
                op: "write manifest",
                path: writer.path().to_path_buf(),
                source,
            })?;
        let manifest_blob = writer.commit(None, None, "manifest")?;
        let tags = entry
            .repo_tags
            .iter()
            .map(|t| normalize_tag(t))
            .collect::<Result<Vec<_>>>()?;
        out.push(finish_image(manifest_blob, config, layers, tags)?);
    }
    Ok(out)
}

/// A file named by `manifest.json`. Names that carry a digest (`<hex>.json` in the old layout,
/// `blobs/sha256/<hex>` in the new one) are checked against it.
fn docker_file<'a>(spool: &'a Spool, path: &str, what: &str) -> Result<&'a StagedBlob> {
    let blob = spool.file(path, what)?;
    let named = path
        .strip_prefix("blobs/sha256/")
        .or_else(|| path.strip_suffix(".json"))
        .and_then(Digest::from_hex);
    if let Some(expected) = named {
        if expected != blob.digest {
            return Err(ImageError::DigestMismatch {
                what: format!("{what} {path}"),
                expected: expected.to_string(),
                actual: blob.digest.to_string(),
            });
        }
    }
    Ok(blob)
}

/// The compression of a staged layer, from its first bytes.
pub(super) fn sniff_file(blob: &StagedBlob) -> Result<Compression> {
    let mut head = [0u8; 6];
    let mut file: File = blob.open()?;
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(ImageError::Io {
                    op: "read staged blob",
                    path: blob.path.clone(),
                    source,
                })
            }
        }
    }
    Compression::sniff(&head[..n], &format!("layer {}", blob.digest))
}

/// Tracks end of file and length of the outer archive stream.
struct EofReader<R> {
    inner: R,
    eof: Rc<Cell<bool>>,
    count: u64,
}

impl<R: Read> Read for EofReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.eof.set(true);
        }
        self.count += n as u64;
        Ok(n)
    }
}
