//! Test fixtures: layer tarballs, OCI layouts and `docker save` archives built in memory with
//! the `tar` crate, and a store in a temporary directory with a snapshot of its contents. Raw
//! header writers exist for names the `tar` crate refuses to write (`..`, absolute paths).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::image::ImageStore;

/// `sha256:<hex>` of `bytes`.
pub fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// How a test compresses a layer or an archive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Comp {
    None,
    Gzip,
    Zstd,
}

impl Comp {
    pub fn apply(self, bytes: &[u8]) -> Vec<u8> {
        match self {
            Comp::None => bytes.to_vec(),
            Comp::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(bytes).unwrap();
                e.finish().unwrap()
            }
            // ruzstd 0.9 has an encoder (levels Uncompressed and Fastest); Fastest makes real
            // compressed blocks, so decoding is exercised for real, not only detection.
            Comp::Zstd => ruzstd::encoding::compress_to_vec(
                bytes,
                ruzstd::encoding::CompressionLevel::Fastest,
            ),
        }
    }

    pub fn media_type(self) -> &'static str {
        match self {
            Comp::None => "application/vnd.oci.image.layer.v1.tar",
            Comp::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Comp::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

/// A tar stream built entry by entry.
pub struct Tar {
    b: tar::Builder<Vec<u8>>,
}

impl Default for Tar {
    fn default() -> Self {
        Self::new()
    }
}

impl Tar {
    pub fn new() -> Self {
        Self {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn header(ty: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(ty);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h
    }

    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        let mut h = Self::header(tar::EntryType::Directory, mode, 0);
        self.b.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    pub fn file(self, path: &str, data: &[u8], mode: u32) -> Self {
        self.file_owned(path, data, mode, 0, 0, 1_700_000_000)
    }

    pub fn file_owned(
        mut self,
        path: &str,
        data: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
    ) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(mtime);
        self.b.append_data(&mut h, path, data).unwrap();
        self
    }

    /// A file preceded by a PAX header carrying `SCHILY.xattr.*` records.
    pub fn file_with_xattrs(mut self, path: &str, data: &[u8], xattrs: &[(&str, &[u8])]) -> Self {
        let mut pax = Vec::new();
        for (k, v) in xattrs {
            pax.extend(pax_record(&format!("SCHILY.xattr.{k}"), v));
        }
        let mut h = Self::header(tar::EntryType::XHeader, 0o644, pax.len() as u64);
        h.set_path("PaxHeaders/x").unwrap();
        h.set_cksum();
        self.b.append(&h, &pax[..]).unwrap();
        self.file(path, data, 0o644)
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Link, 0o644, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn special(mut self, path: &str, ty: tar::EntryType) -> Self {
        let mut h = Self::header(ty, 0o644, 0);
        self.b.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    /// An entry whose name and link name are written as raw header bytes, bypassing the
    /// `tar` crate's refusal of `..` and absolute paths.
    pub fn raw(mut self, name: &[u8], ty: tar::EntryType, link: &[u8], data: &[u8]) -> Self {
        let mut h = tar::Header::new_old();
        h.set_entry_type(ty);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name);
        old.linkname[..link.len()].copy_from_slice(link);
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

/// One PAX extended header record: `<len> <key>=<value>\n`, the length counting itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while body + len.to_string().len() != len {
        len = body + len.to_string().len();
    }
    let mut out = format!("{len} {key}=").into_bytes();
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

/// An image ready to be put in an archive: layer blobs, config and manifest.
#[derive(Clone)]
pub struct Img {
    /// (blob, media type) per layer.
    pub layers: Vec<(Vec<u8>, &'static str)>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
}

impl Img {
    /// An image from uncompressed layer tars, each compressed as asked.
    pub fn new(layers: &[(Vec<u8>, Comp)], created: &str, cmd: &[&str]) -> Self {
        let diff_ids: Vec<String> = layers.iter().map(|(t, _)| sha(t)).collect();
        let config = json!({
            "architecture": "amd64",
            "os": "linux",
            "created": created,
            "config": {"Env": ["PATH=/bin"], "Cmd": cmd, "WorkingDir": "/", "Entrypoint": null},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let layers: Vec<(Vec<u8>, &'static str)> = layers
            .iter()
            .map(|(t, c)| (c.apply(t), c.media_type()))
            .collect();
        Self::from_parts(layers, serde_json::to_vec(&config).unwrap())
    }

    /// An image with a hand-made config (for lying diff ids).
    pub fn from_parts(layers: Vec<(Vec<u8>, &'static str)>, config: Vec<u8>) -> Self {
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": sha(&config), "size": config.len()},
            "layers": layers.iter().map(|(b, m)| json!({"mediaType": m, "digest": sha(b), "size": b.len()})).collect::<Vec<_>>(),
        });
        Self {
            layers,
            config,
            manifest: serde_json::to_vec(&manifest).unwrap(),
        }
    }

    pub fn id(&self) -> String {
        sha(&self.config)
    }

    pub fn manifest_desc(&self, annotations: Value) -> Value {
        json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha(&self.manifest),
            "size": self.manifest.len(),
            "annotations": annotations,
        })
    }
}

/// An archive being assembled: files at paths, blobs under `blobs/sha256/`.
pub struct ArchiveBuilder {
    tar: Tar,
    blobs: BTreeSet<String>,
}

impl Default for ArchiveBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ArchiveBuilder {
    pub fn new() -> Self {
        Self {
            tar: Tar::new(),
            blobs: BTreeSet::new(),
        }
    }

    pub fn file(mut self, path: &str, data: &[u8]) -> Self {
        self.tar = self.tar.file(path, data, 0o644);
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        self.tar = self.tar.symlink(path, target);
        self
    }

    pub fn with_tar(mut self, f: impl FnOnce(Tar) -> Tar) -> Self {
        self.tar = f(self.tar);
        self
    }

    /// Adds a blob under its digest (once).
    pub fn blob(mut self, data: &[u8]) -> Self {
        let digest = sha(data);
        if self.blobs.insert(digest.clone()) {
            let path = format!("blobs/sha256/{}", &digest["sha256:".len()..]);
            self.tar = self.tar.file(&path, data, 0o644);
        }
        self
    }

    /// Adds all blobs of an image.
    pub fn image_blobs(mut self, img: &Img) -> Self {
        for (b, _) in &img.layers {
            self = self.blob(b);
        }
        self.blob(&img.config).blob(&img.manifest)
    }

    pub fn finish(self) -> Vec<u8> {
        self.tar.finish()
    }
}

/// An OCI image layout with each image named by `io.containerd.image.name` (or untagged).
/// `index.json` is written last, as skopeo does, to exercise out-of-order spooling.
pub fn oci_layout(images: &[(&Img, Option<&str>)]) -> Vec<u8> {
    let mut a = ArchiveBuilder::new().file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    let mut entries = Vec::new();
    for (img, name) in images {
        a = a.image_blobs(img);
        let ann = match name {
            Some(n) => json!({"io.containerd.image.name": n}),
            None => json!({}),
        };
        entries.push(img.manifest_desc(ann));
    }
    let index = json!({"schemaVersion": 2, "manifests": entries});
    a.file("index.json", &serde_json::to_vec(&index).unwrap())
        .finish()
}

/// Docker's old `docker save` layout: `<hex>.json` configs, `<n>/layer.tar` directories, and a
/// repeated layer stored once and symlinked, as Docker does.
pub fn docker_old(images: &[(&Img, &[&str])]) -> Vec<u8> {
    let mut a = ArchiveBuilder::new();
    let mut manifest = Vec::new();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut n = 0;
    for (img, tags) in images {
        let config_name = format!("{}.json", &img.id()["sha256:".len()..]);
        a = a.file(&config_name, &img.config);
        let mut layers = Vec::new();
        for (blob, _) in &img.layers {
            let digest = sha(blob);
            let dir = format!("v1id{n:060}");
            n += 1;
            let path = format!("{dir}/layer.tar");
            match seen.get(&digest) {
                Some(first) => a = a.symlink(&path, &format!("../{first}")),
                None => {
                    a = a.file(&format!("{dir}/VERSION"), b"1.0").file(&path, blob);
                    seen.insert(digest, path.clone());
                }
            }
            layers.push(path);
        }
        manifest.push(json!({"Config": config_name, "RepoTags": tags, "Layers": layers}));
    }
    a.file("manifest.json", &serde_json::to_vec(&manifest).unwrap())
        .file("repositories", b"{}")
        .finish()
}

/// Docker ≥ 25's `docker save`: an OCI layout plus `manifest.json` pointing into `blobs/`.
pub fn docker_new(images: &[(&Img, &[&str])]) -> Vec<u8> {
    let mut a = ArchiveBuilder::new().file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    let mut manifest = Vec::new();
    let mut entries = Vec::new();
    let blob_path = |d: &[u8]| format!("blobs/sha256/{}", &sha(d)["sha256:".len()..]);
    for (img, tags) in images {
        a = a.image_blobs(img);
        manifest.push(json!({
            "Config": blob_path(&img.config),
            "RepoTags": tags,
            "Layers": img.layers.iter().map(|(b, _)| blob_path(b)).collect::<Vec<_>>(),
        }));
        // Docker 25 puts the name only in manifest.json for some images: leave it out here.
        entries.push(img.manifest_desc(json!({})));
    }
    let index = json!({"schemaVersion": 2, "manifests": entries});
    a.file("manifest.json", &serde_json::to_vec(&manifest).unwrap())
        .file("index.json", &serde_json::to_vec(&index).unwrap())
        .finish()
}

/// A small root filesystem layer.
pub fn rootfs(marker: &str) -> Vec<u8> {
    Tar::new()
        .dir("./", 0o755)
        .dir("bin", 0o755)
        .file("bin/sh", b"#!fake shell\n", 0o755)
        .dir("etc", 0o755)
        .file("etc/marker", marker.as_bytes(), 0o644)
        .finish()
}

/// A store in a temporary directory.
pub struct TestStore {
    pub dir: tempfile::TempDir,
    pub store: ImageStore,
}

impl TestStore {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(&dir.path().join("image")).unwrap();
        Self { dir, store }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("image")
    }

    /// Names under `blobs/sha256`, `snapshots`, `tmp`, `images`, and the tag file's content:
    /// what a refused archive must leave unchanged.
    pub fn contents(&self) -> BTreeSet<String> {
        let root = self.root();
        let mut out = BTreeSet::new();
        for sub in ["blobs/sha256", "snapshots", "tmp", "images"] {
            for e in fs::read_dir(root.join(sub)).unwrap() {
                out.insert(format!(
                    "{sub}/{}",
                    e.unwrap().file_name().to_string_lossy()
                ));
            }
        }
        if let Ok(tags) = fs::read_to_string(root.join("repositories.json")) {
            out.insert(format!("repositories.json: {tags}"));
        }
        out
    }

    pub fn snapshot(&self, diff_id: &str) -> PathBuf {
        self.root()
            .join("snapshots")
            .join(diff_id.trim_start_matches("sha256:"))
    }
}

/// Entries directly in a directory, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
