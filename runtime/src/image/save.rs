//! [`ImageStore::save`]: one image out of the store as an OCI image-layout tar archive, the
//! format [`ImageStore::load`] reads first, so a worker can fetch an image from a manager and
//! load it with every digest checked. It owns the writing side of the layout only; reading
//! archives is `archive.rs`'s job, and what is in the store is `store.rs`'s.
//!
//! The archive holds `oci-layout`, `index.json` with one manifest descriptor, and
//! `blobs/sha256/<hex>` for the manifest, the config and every layer. Blobs are the stored
//! bytes copied as they are (never recompressed), so the manifest's digests and the image id
//! stay what they were. Layers are streamed from their files; only the manifest (bounded by
//! [`MAX_DOCUMENT`]) is read into memory.
//!
//! Naming follows containerd's exporter (`core/images/archive/exporter.go`):
//! `io.containerd.image.name` carries the full name (`docker.io/library/busybox:latest`), which
//! is what `load` tags the image with, and `org.opencontainers.image.ref.name` only the tag, as
//! the OCI image-layout spec defines it. An image saved by id is written untagged, as
//! `docker save <id>` does.
//!
//! The blobs are opened under the store lock, so a concurrent `remove` (whose garbage
//! collection takes that lock) cannot delete one between lookup and open. An open file stays
//! readable after it is unlinked, so the lock is released before the long copy and concurrent
//! loads are not held up by a slow reader.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::content::{ContentStore, Digest};
use super::index::Index;
use super::manifest::{self, Descriptor, MAX_DOCUMENT, MEDIA_OCI_MANIFEST};
use super::reference::{parse_lookup, Lookup};
use super::{ImageConfig, ImageError, ImageInfo, ImageStore, Result};

/// The annotation containerd (and `load`) name an image by, with its full reference.
const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// The OCI annotation that names an index entry; the spec wants the tag alone there.
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// OCI image index, the media type of `index.json`.
const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// The content of `oci-layout`.
const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
/// Size of a tar block: headers and padding come in these.
const BLOCK: usize = 512;
/// The output is mostly a pipe or a socket; batching tar headers and padding with layer data
/// into writes of this size keeps syscalls per layer low (the content writer uses the same).
const OUT_BUFFER: usize = 128 * 1024;

/// The fields of a stored manifest that saving needs. Unknown fields are ignored: the bytes
/// are copied as they are, this only finds the blobs they name.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredManifest {
    /// Absent in some manifests written by other tools.
    #[serde(default)]
    media_type: String,
    config: Descriptor,
    #[serde(default, deserialize_with = "manifest::null_as_default")]
    layers: Vec<Descriptor>,
}

/// `index.json` as written.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct OciIndex<'a> {
    schema_version: u32,
    media_type: &'a str,
    manifests: Vec<Descriptor>,
}

/// A blob opened for copying into the archive.
#[derive(Debug)]
struct OpenBlob {
    digest: Digest,
    file: File,
    /// Its length, checked against the manifest's descriptor.
    size: u64,
    /// The stored file, for error messages.
    path: PathBuf,
}

/// Everything an archive is written from, gathered under the store lock.
#[derive(Debug)]
struct SaveSet {
    info: ImageInfo,
    index_json: Vec<u8>,
    manifest_digest: Digest,
    manifest: Vec<u8>,
    blobs: Vec<OpenBlob>,
}

impl ImageStore {
    /// Writes the image `reference` names (`name[:tag]`, full id or unique id prefix, resolved
    /// as [`ImageStore::resolve`] does) to `out` as an OCI image-layout tar archive that
    /// [`ImageStore::load`] reads back as the same image: same id, manifest and layer digests,
    /// and, when saved by tag, the same `name:tag`. Returns the image saved.
    ///
    /// An unknown reference is [`ImageError::NotFound`], reported before anything is written.
    /// An error later on leaves `out` with a partial archive that the caller must discard
    /// (the loader refuses it as truncated).
    pub fn save(&self, reference: &str, out: &mut dyn Write) -> Result<ImageInfo> {
        let set = self.open_for_save(reference)?;
        write_archive(out, &set)?;
        Ok(set.info)
    }

    /// Resolves the reference and opens every blob of the image, holding the store lock.
    fn open_for_save(&self, reference: &str) -> Result<SaveSet> {
        let root = self.root()?;
        let content = ContentStore::open(&root)?;
        let index = Index::open(&root)?;
        let _lock = index.lock()?;
        let info = self.resolve(reference)?;
        let tag = saved_tag(reference, &info)?;

        let manifest_digest = Digest::parse(&info.manifest_digest)?;
        let what = format!("stored manifest {manifest_digest}");
        let manifest_blob = open_blob(&content, &manifest_digest, None)?;
        let manifest_bytes = read_document(&manifest_blob, &what)?;
        let doc: StoredManifest = manifest::parse(&manifest_bytes, &what)?;
        if doc.config.digest != info.id {
            return Err(ImageError::DigestMismatch {
                what: format!("config named by {what}"),
                expected: info.id.clone(),
                actual: doc.config.digest,
            });
        }

        let mut seen = BTreeSet::from([manifest_digest.clone()]);
        let mut blobs = Vec::with_capacity(doc.layers.len() + 1);
        for desc in std::iter::once(&doc.config).chain(&doc.layers) {
            let digest = Digest::parse(&desc.digest)?;
            // A manifest may list one blob twice (two empty layers); the layout stores it once.
            if seen.insert(digest.clone()) {
                blobs.push(open_blob(&content, &digest, Some(desc.size))?);
            }
        }

        let media_type = if doc.media_type.is_empty() {
            MEDIA_OCI_MANIFEST.to_owned()
        } else {
            doc.media_type
        };
        let index_json = index_document(media_type, &manifest_digest, &manifest_bytes, tag)?;
        Ok(SaveSet {
            info,
            index_json,
            manifest_digest,
            manifest: manifest_bytes,
            blobs,
        })
    }

    /// The store's root directory. `store.rs` keeps its paths to itself; the one public method
    /// that yields a path is `layer_dirs`, which reports where a layer's snapshot lives
    /// (`<root>/snapshots/<diff-id hex>`, the layout documented in `mod.rs`) whether or not the
    /// layer exists, so the root is two levels above any snapshot path.
    fn root(&self) -> Result<PathBuf> {
        let probe = ImageInfo {
            id: String::new(),
            manifest_digest: String::new(),
            repo_tags: Vec::new(),
            diff_ids: vec![format!("sha256:{}", "0".repeat(64))],
            created: None,
            size: 0,
            config: ImageConfig::default(),
        };
        let snapshot = match self.layer_dirs(&probe) {
            Ok(mut dirs) => dirs.pop(),
            Err(ImageError::MissingLayer { path, .. }) => Some(path),
            Err(err) => return Err(err),
        };
        Ok(snapshot
            .as_deref()
            .and_then(Path::parent)
            .and_then(Path::parent)
            .expect("snapshot paths are <root>/snapshots/<hex>")
            .to_path_buf())
    }
}

/// The tag to name the saved image by: the one `reference` matched, if it matched a tag (the
/// store tries a reference as a tag before trying it as an id prefix, and so does this).
fn saved_tag(reference: &str, info: &ImageInfo) -> Result<Option<String>> {
    Ok(parse_lookup(reference)?
        .into_iter()
        .find_map(|candidate| match candidate {
            Lookup::Tag(tag) if info.repo_tags.contains(&tag) => Some(tag),
            _ => None,
        }))
}

/// containerd's full name of a familiar `name:tag`: `busybox:latest` →
/// `docker.io/library/busybox:latest`, `team/app:1` → `docker.io/team/app:1`; a name with a
/// registry domain stays as it is. The domain rule is distribution's, as in `reference.rs`.
fn full_name(tag: &str) -> String {
    match tag.split_once('/') {
        Some((first, _))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.to_lowercase() != first =>
        {
            tag.to_owned()
        }
        Some(_) => format!("docker.io/{tag}"),
        None => format!("docker.io/library/{tag}"),
    }
}

/// `index.json` with the one manifest descriptor, named when the image was saved by tag.
fn index_document(
    media_type: String,
    digest: &Digest,
    manifest: &[u8],
    tag: Option<String>,
) -> Result<Vec<u8>> {
    let mut desc = Descriptor {
        media_type,
        digest: digest.to_string(),
        size: manifest.len() as u64,
        platform: None,
        annotations: Default::default(),
    };
    if let Some(tag) = tag {
        // A normalised tag always ends in `:<tag>`, and a tag holds no ':' or '/'.
        let (_, short) = tag.rsplit_once(':').expect("normalised tags end in :<tag>");
        desc.annotations
            .insert(ANNOTATION_REF_NAME.to_owned(), short.to_owned());
        desc.annotations
            .insert(ANNOTATION_IMAGE_NAME.to_owned(), full_name(&tag));
    }
    let index = OciIndex {
        schema_version: 2,
        media_type: MEDIA_OCI_INDEX,
        manifests: vec![desc],
    };
    manifest::to_vec(&index, "index.json")
}

/// Opens a stored blob; with `expected_size`, checks its length against the descriptor so a
/// damaged store fails here rather than on the worker that loads the archive.
fn open_blob(
    content: &ContentStore,
    digest: &Digest,
    expected_size: Option<u64>,
) -> Result<OpenBlob> {
    let path = content.path(digest);
    let file = content.reader(digest)?;
    let size = file
        .metadata()
        .map_err(|source| ImageError::Io {
            op: "stat blob",
            path: path.clone(),
            source,
        })?
        .len();
    if let Some(expected) = expected_size.filter(|&e| e != size) {
        return Err(ImageError::Io {
            op: "check blob size",
            path,
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{size} bytes, the manifest says {expected}"),
            ),
        });
    }
    Ok(OpenBlob {
        digest: digest.clone(),
        file,
        size,
        path,
    })
}

/// Reads a small stored document whole, refusing one larger than [`MAX_DOCUMENT`].
fn read_document(blob: &OpenBlob, what: &str) -> Result<Vec<u8>> {
    if blob.size > MAX_DOCUMENT {
        return Err(ImageError::InvalidArchive(format!(
            "{what} is {} bytes, more than the {MAX_DOCUMENT} allowed",
            blob.size
        )));
    }
    let mut bytes = Vec::with_capacity(blob.size as usize);
    (&blob.file)
        .take(blob.size)
        .read_to_end(&mut bytes)
        .map_err(|source| ImageError::Io {
            op: "read blob",
            path: blob.path.clone(),
            source,
        })?;
    Ok(bytes)
}

/// Writes the tar stream. Entries are written by hand rather than with `tar::Builder`, whose
/// drop appends the end-of-archive marker even after a failed entry; an archive cut short by
/// an error must not end like a complete one.
fn write_archive(out: &mut dyn Write, set: &SaveSet) -> Result<()> {
    let mut w = BufWriter::with_capacity(OUT_BUFFER, out);
    for dir in ["blobs/", "blobs/sha256/"] {
        write_entry(
            &mut w,
            dir,
            tar::EntryType::Directory,
            0o755,
            &mut io::empty(),
            0,
        )?;
    }
    // Small documents first, so a reader that streams sees the index before the layers.
    write_entry(
        &mut w,
        "oci-layout",
        tar::EntryType::Regular,
        0o644,
        &mut &OCI_LAYOUT[..],
        OCI_LAYOUT.len() as u64,
    )?;
    write_entry(
        &mut w,
        "index.json",
        tar::EntryType::Regular,
        0o644,
        &mut &set.index_json[..],
        set.index_json.len() as u64,
    )?;
    write_entry(
        &mut w,
        &blob_entry(&set.manifest_digest),
        tar::EntryType::Regular,
        0o644,
        &mut &set.manifest[..],
        set.manifest.len() as u64,
    )?;
    for blob in &set.blobs {
        let mut reader = BlobReader {
            file: &blob.file,
            remaining: blob.size,
            failed: false,
        };
        let name = blob_entry(&blob.digest);
        let written = write_entry(
            &mut w,
            &name,
            tar::EntryType::Regular,
            0o644,
            &mut reader,
            blob.size,
        );
        if let Err(err) = written {
            return Err(match err {
                ImageError::Io { source, .. } if reader.failed => ImageError::Io {
                    op: "read blob",
                    path: blob.path.clone(),
                    source,
                },
                other => other,
            });
        }
    }
    let end_err = |source| ImageError::Io {
        op: "write image archive end",
        path: PathBuf::from("(end of archive)"),
        source,
    };
    w.write_all(&[0u8; 2 * BLOCK]).map_err(end_err)?;
    w.flush().map_err(end_err)
}

/// `blobs/sha256/<hex>`.
fn blob_entry(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// One tar entry: header, `size` bytes of `data`, padding to the block. Fixed owner, mode and
/// mtime make the archive a function of the image alone, so saving twice gives equal bytes.
/// Errors name the entry (a read error is renamed by the caller, which knows the file).
fn write_entry(
    w: &mut dyn Write,
    name: &str,
    kind: tar::EntryType,
    mode: u32,
    data: &mut dyn Read,
    size: u64,
) -> Result<()> {
    let io_err = |source| ImageError::Io {
        op: "write image archive entry",
        path: PathBuf::from(name),
        source,
    };
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(size);
    // Every name here is shorter than the header's 100 bytes, so no long-name extension.
    header.set_path(name).map_err(io_err)?;
    header.set_cksum();
    w.write_all(header.as_bytes()).map_err(io_err)?;
    let copied = io::copy(data, w).map_err(io_err)?;
    if copied != size {
        return Err(io_err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{copied} bytes copied of {size}"),
        )));
    }
    let pad = (BLOCK - (size % BLOCK as u64) as usize) % BLOCK;
    w.write_all(&[0u8; BLOCK][..pad]).map_err(io_err)
}

/// Reads exactly a blob's announced length, and remembers whether an error came from the blob
/// (rather than from the output) so it can be reported against the right path.
struct BlobReader<'a> {
    file: &'a File,
    remaining: u64,
    failed: bool,
}

impl Read for BlobReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let max = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = match self.file.read(&mut buf[..max]) {
            Ok(0) if max > 0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("blob ends {} bytes early", self.remaining),
            )),
            other => other,
        }
        .inspect_err(|e| {
            if e.kind() != io::ErrorKind::Interrupted {
                self.failed = true;
            }
        })?;
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::full_name;

    #[test]
    fn full_names_as_containerd_writes_them() {
        for (familiar, full) in [
            ("busybox:latest", "docker.io/library/busybox:latest"),
            ("team/app:1", "docker.io/team/app:1"),
            ("library/a/b:t", "docker.io/library/a/b:t"),
            ("localhost:5000/team/app:2", "localhost:5000/team/app:2"),
            ("localhost/app:2", "localhost/app:2"),
            ("quay.io/x/y:z", "quay.io/x/y:z"),
        ] {
            assert_eq!(full_name(familiar), full, "{familiar}");
        }
    }
}
