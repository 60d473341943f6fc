//! Import and load of every supported format, what lands in the snapshots, and overlay
//! semantics of whiteouts proven with a real overlayfs mount.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde_json::json;

use super::fixtures::*;
use crate::image::{ImageError, ImageStore};

/// `lgetxattr`, `None` when absent.
fn xattr(path: &Path, key: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let k = CString::new(key).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: NUL-terminated strings and a buffer whose length is passed with it.
    let n = unsafe { libc::lgetxattr(p.as_ptr(), k.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (n >= 0).then(|| {
        buf.truncate(n as usize);
        buf
    })
}

fn metadata_layer() -> Vec<u8> {
    Tar::new()
        .dir("./", 0o755)
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .file_owned("usr/bin/su", b"su", 0o4755, 0, 0, 1_600_000_000)
        .file_owned("home_file", b"x", 0o640, 1000, 1001, 1_500_000_000)
        .symlink("bin", "usr/bin")
        .symlink("abs", "/etc/passwd")
        .hardlink("usr/bin/su2", "usr/bin/su")
        .special("fifo", tar::EntryType::Fifo)
        .file_with_xattrs(
            "caps",
            b"c",
            &[("user.test", b"v"), ("trusted.overlay.redirect", b"/x")],
        )
        .dir("sticky", 0o1777)
        .finish()
}

#[test]
fn import_keeps_metadata_in_every_compression() {
    let layer = metadata_layer();
    for comp in [Comp::None, Comp::Gzip, Comp::Zstd] {
        let ts = TestStore::new();
        let info = ts
            .store
            .import(&mut &comp.apply(&layer)[..], "example/root:v1")
            .unwrap();
        assert_eq!(info.repo_tags, ["example/root:v1"], "{comp:?}");
        assert_eq!(info.diff_ids, [sha(&layer)]);
        assert_eq!(info.size, layer.len() as u64);
        assert!(info.created.is_some());

        let hex = info.id.trim_start_matches("sha256:");
        for reference in [
            "example/root:v1".to_owned(),
            info.id.clone(),
            hex.to_owned(),
            hex[..8].to_owned(),
            format!("sha256:{}", &hex[..8]),
        ] {
            assert_eq!(ts.store.resolve(&reference).unwrap(), info, "{reference}");
        }

        let dirs = ts.store.layer_dirs(&info).unwrap();
        assert_eq!(dirs, [ts.snapshot(&info.diff_ids[0])]);
        let root = &dirs[0];
        let su = fs::metadata(root.join("usr/bin/su")).unwrap();
        assert_eq!(su.mode() & 0o7777, 0o4755, "setuid kept");
        assert_eq!(su.mtime(), 1_600_000_000);
        let home = fs::metadata(root.join("home_file")).unwrap();
        assert_eq!(
            (home.uid(), home.gid(), home.mode() & 0o7777),
            (1000, 1001, 0o640)
        );
        assert_eq!(home.mtime(), 1_500_000_000);
        assert_eq!(
            fs::read_link(root.join("bin")).unwrap(),
            Path::new("usr/bin")
        );
        assert_eq!(
            fs::read_link(root.join("abs")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(
            fs::metadata(root.join("usr/bin/su2")).unwrap().ino(),
            su.ino(),
            "hard link"
        );
        assert!(fs::symlink_metadata(root.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        assert_eq!(
            xattr(&root.join("caps"), "user.test").as_deref(),
            Some(&b"v"[..])
        );
        assert_eq!(xattr(&root.join("caps"), "trusted.overlay.redirect"), None);
        assert_eq!(
            fs::metadata(root.join("sticky")).unwrap().mode() & 0o7777,
            0o1777
        );

        let doc = ts.store.inspect(&info).unwrap();
        assert_eq!(doc["Id"], json!(info.id));
        assert_eq!(doc["RepoTags"], json!(["example/root:v1"]));
        assert_eq!(doc["RepoDigests"], json!([]));
        assert_eq!(doc["Architecture"], "amd64");
        assert_eq!(doc["Os"], "linux");
        assert_eq!(doc["Size"], json!(layer.len()));
        assert_eq!(
            doc["RootFS"],
            json!({"Type": "layers", "Layers": [sha(&layer)]})
        );
        assert_eq!(doc["Config"]["Env"], json!([]));
        assert_eq!(doc["Config"]["Cmd"], json!(null));
        // Nothing staged is left.
        assert!(names(&ts.root().join("tmp")).is_empty());
    }
}

#[test]
fn import_untagged_and_bad_reference() {
    let ts = TestStore::new();
    let info = ts.store.import(&mut &rootfs("u")[..], "").unwrap();
    assert!(info.repo_tags.is_empty());
    let err = ts
        .store
        .import(&mut &rootfs("u")[..], "Bad:Name:x")
        .unwrap_err();
    assert!(matches!(err, ImageError::InvalidReference(_)), "{err}");
}

#[test]
fn load_oci_layout_with_gzip_and_zstd_layers() {
    let base = rootfs("base");
    let top = Tar::new()
        .dir("etc", 0o755)
        .file("etc/top", b"top", 0o644)
        .finish();
    let img = Img::new(
        &[(base.clone(), Comp::Gzip), (top.clone(), Comp::Zstd)],
        "2024-01-01T00:00:00Z",
        &["sh", "-c", "true"],
    );
    let archive = oci_layout(&[(&img, Some("docker.io/library/demo:1"))]);
    for (label, bytes) in [
        ("plain", archive.clone()),
        ("gzip", Comp::Gzip.apply(&archive)),
        ("zstd", Comp::Zstd.apply(&archive)),
    ] {
        let ts = TestStore::new();
        let loaded = ts.store.load(&mut &bytes[..]).unwrap();
        assert_eq!(loaded.len(), 1, "{label}");
        let info = &loaded[0];
        assert_eq!(info.id, img.id());
        assert_eq!(info.manifest_digest, sha(&img.manifest));
        assert_eq!(info.repo_tags, ["demo:1"]);
        assert_eq!(info.diff_ids, [sha(&base), sha(&top)]);
        assert_eq!(
            info.config.cmd,
            Some(vec!["sh".into(), "-c".into(), "true".into()])
        );
        assert_eq!(info.config.env, ["PATH=/bin"]);
        assert_eq!(info.config.working_dir.as_deref(), Some("/"));
        assert_eq!(info.created.as_deref(), Some("2024-01-01T00:00:00Z"));
        let dirs = ts.store.layer_dirs(info).unwrap();
        assert_eq!(fs::read(dirs[0].join("etc/marker")).unwrap(), b"base");
        assert_eq!(fs::read(dirs[1].join("etc/top")).unwrap(), b"top");
        assert!(!dirs[1].join("etc/marker").exists());
        assert_eq!(ts.store.resolve("demo:1").unwrap(), *info);
        // Blobs kept as they came: manifest, config, two layers.
        assert_eq!(names(&ts.root().join("blobs/sha256")).len(), 4);
    }
}

#[test]
fn load_nested_index_picks_linux_amd64() {
    let amd = Img::new(
        &[(rootfs("amd64"), Comp::Gzip)],
        "2024-01-01T00:00:00Z",
        &["sh"],
    );
    let missing = format!("sha256:{}", "e".repeat(64));
    let nested = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": missing,
             "size": 10, "platform": {"architecture": "arm64", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(&amd.manifest),
             "size": amd.manifest.len(), "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": missing,
             "size": 10, "platform": {"architecture": "unknown", "os": "unknown"},
             "annotations": {"vnd.docker.reference.type": "attestation-manifest"}},
        ],
    }))
    .unwrap();
    // A plain tag in ref.name names no repository: the second entry loads untagged.
    let plain = Img::new(
        &[(rootfs("plain"), Comp::None)],
        "2023-01-01T00:00:00Z",
        &["sh"],
    );
    let index = json!({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": sha(&nested),
         "size": nested.len(), "annotations": {"io.containerd.image.name": "docker.io/library/nested:latest",
                                               "org.opencontainers.image.ref.name": "latest"}},
        plain.manifest_desc(json!({"org.opencontainers.image.ref.name": "latest"})),
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": missing, "size": 10,
         "platform": {"architecture": "arm64", "os": "linux"}},
    ]});
    let archive = ArchiveBuilder::new()
        .file("index.json", &serde_json::to_vec(&index).unwrap())
        .blob(&nested)
        .image_blobs(&amd)
        .image_blobs(&plain)
        .file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
        .finish();
    let ts = TestStore::new();
    let loaded = ts.store.load(&mut &archive[..]).unwrap();
    assert_eq!(loaded.len(), 2);
    assert_eq!(loaded[0].id, amd.id());
    assert_eq!(loaded[0].repo_tags, ["nested:latest"]);
    assert_eq!(loaded[1].id, plain.id());
    assert!(loaded[1].repo_tags.is_empty());

    // A ref.name that is a full reference tags the image.
    let img = Img::new(
        &[(rootfs("ref"), Comp::None)],
        "2024-01-01T00:00:00Z",
        &["sh"],
    );
    let index = json!({"schemaVersion": 2, "manifests": [
        img.manifest_desc(json!({"org.opencontainers.image.ref.name": "localhost:5000/team/app:2"})),
    ]});
    let archive = ArchiveBuilder::new()
        .image_blobs(&img)
        .file("index.json", &serde_json::to_vec(&index).unwrap())
        .finish();
    let loaded = ts.store.load(&mut &archive[..]).unwrap();
    assert_eq!(loaded[0].repo_tags, ["localhost:5000/team/app:2"]);
}

#[test]
fn load_docker_save_old_layout_with_shared_layer() {
    let base = rootfs("shared");
    let top_a = Tar::new().file("a", b"a", 0o644).finish();
    let top_b = Tar::new().file("b", b"b", 0o644).finish();
    let a = Img::new(
        &[(base.clone(), Comp::None), (top_a.clone(), Comp::None)],
        "2024-01-02T00:00:00Z",
        &["a"],
    );
    let b = Img::new(
        &[(base.clone(), Comp::None), (top_b.clone(), Comp::Gzip)],
        "2024-01-01T00:00:00Z",
        &["b"],
    );
    let archive = docker_old(&[(&a, &["a:1", "a:latest"]), (&b, &["library/b"])]);
    let ts = TestStore::new();
    let loaded = ts.store.load(&mut &Comp::Gzip.apply(&archive)[..]).unwrap();
    assert_eq!(loaded.len(), 2);
    assert_eq!(loaded[0].id, a.id());
    assert_eq!(loaded[0].repo_tags, ["a:1", "a:latest"]);
    assert_eq!(loaded[1].id, b.id());
    assert_eq!(loaded[1].repo_tags, ["b:latest"]);
    // Three distinct layers, the shared one unpacked once.
    assert_eq!(names(&ts.root().join("snapshots")).len(), 3);
    let a_dirs = ts.store.layer_dirs(&loaded[0]).unwrap();
    let b_dirs = ts.store.layer_dirs(&loaded[1]).unwrap();
    assert_eq!(a_dirs[0], b_dirs[0]);
    assert_eq!(fs::read(b_dirs[1].join("b")).unwrap(), b"b");
    // The synthesised manifest is stored and names the layers by media type.
    let manifest = fs::read(
        ts.root()
            .join("blobs/sha256")
            .join(loaded[1].manifest_digest.trim_start_matches("sha256:")),
    )
    .unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(manifest["config"]["digest"], json!(b.id()));
    assert_eq!(
        manifest["layers"][1]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    // Loading the same archive again changes nothing.
    let before = ts.contents();
    ts.store.load(&mut &archive[..]).unwrap();
    assert_eq!(ts.contents(), before);
}

#[test]
fn load_docker_save_new_layout() {
    let img = Img::new(
        &[
            (rootfs("new"), Comp::None),
            (Tar::new().file("x", b"x", 0o600).finish(), Comp::Gzip),
        ],
        "2024-01-01T00:00:00Z",
        &["sh"],
    );
    let archive = docker_new(&[(&img, &["docker.io/library/newlayout:25"])]);
    let ts = TestStore::new();
    let loaded = ts.store.load(&mut &archive[..]).unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].id, img.id());
    // The OCI index is preferred, so the original manifest is kept.
    assert_eq!(loaded[0].manifest_digest, sha(&img.manifest));
    assert_eq!(loaded[0].repo_tags, ["newlayout:25"]);
}

#[test]
fn list_is_newest_first() {
    let ts = TestStore::new();
    let mut ids = Vec::new();
    for (i, created) in [
        "2020-01-01T00:00:00Z",
        "2024-06-01T00:00:00+02:00",
        "2022-01-01T00:00:00.5Z",
    ]
    .iter()
    .enumerate()
    {
        let img = Img::new(&[(rootfs(&i.to_string()), Comp::None)], created, &["sh"]);
        ts.store
            .load(&mut &oci_layout(&[(&img, Some(&format!("l:{i}")))])[..])
            .unwrap();
        ids.push(img.id());
    }
    let listed: Vec<String> = ts.store.list().unwrap().into_iter().map(|i| i.id).collect();
    assert_eq!(listed, [ids[1].clone(), ids[2].clone(), ids[0].clone()]);
}

/// Unmounts on drop, so a failing assertion does not leave the mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn whiteouts_and_opaque_dirs_hide_lower_files_in_overlayfs() {
    let lower = Tar::new()
        .dir("a", 0o755)
        .file("a/keep", b"keep", 0o644)
        .file("a/gone", b"gone", 0o644)
        .dir("d", 0o755)
        .file("d/old", b"old", 0o644)
        .file("top_gone", b"t", 0o644)
        .finish();
    let upper = Tar::new()
        .dir("a", 0o755)
        .file("a/.wh.gone", b"", 0o644)
        .dir("d", 0o755)
        .file("d/.wh..wh..opq", b"", 0o644)
        .file("d/new", b"new", 0o644)
        .file(".wh.top_gone", b"", 0o644)
        .dir(".wh..wh.plnk", 0o700)
        .finish();
    let img = Img::new(
        &[(lower, Comp::Gzip), (upper, Comp::Zstd)],
        "2024-01-01T00:00:00Z",
        &["sh"],
    );
    let ts = TestStore::new();
    let info = ts
        .store
        .load(&mut &oci_layout(&[(&img, Some("wh"))])[..])
        .unwrap()
        .remove(0);
    let dirs = ts.store.layer_dirs(&info).unwrap();
    let top = &dirs[1];
    let wh = fs::symlink_metadata(top.join("a/gone")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert!(fs::symlink_metadata(top.join("top_gone"))
        .unwrap()
        .file_type()
        .is_char_device());
    assert_eq!(
        xattr(&top.join("d"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(
        names(top),
        ["a", "d", "top_gone"],
        "no .wh. names, no aufs dirs"
    );

    let mnt = tempfile::tempdir().unwrap();
    // overlayfs wants the top layer first.
    let lowerdir = format!("{}:{}", dirs[1].display(), dirs[0].display());
    nix::mount::mount(
        Some("overlay"),
        mnt.path(),
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(format!("lowerdir={lowerdir}").as_str()),
    )
    .expect("mount overlay (tests run as root)");
    let _guard = Mounted(mnt.path().to_path_buf());
    let m = mnt.path();
    assert_eq!(fs::read(m.join("a/keep")).unwrap(), b"keep");
    assert!(!m.join("a/gone").exists(), "whited-out file is hidden");
    assert!(!m.join("top_gone").exists());
    assert!(!m.join("d/old").exists(), "opaque dir hides lower contents");
    assert_eq!(fs::read(m.join("d/new")).unwrap(), b"new");
    assert_eq!(names(&m.join("d")), ["new"]);
}

#[test]
fn concurrent_loads_keep_every_tag() {
    let ts = TestStore::new();
    let archives: Vec<Vec<u8>> = (0..4)
        .map(|i| {
            let img = Img::new(
                &[
                    (rootfs("shared-base"), Comp::Gzip),
                    (rootfs(&format!("c{i}")), Comp::None),
                ],
                "2024-01-01T00:00:00Z",
                &["sh"],
            );
            oci_layout(&[(&img, Some(&format!("conc:{i}")))])
        })
        .collect();
    let root = ts.root();
    std::thread::scope(|s| {
        for a in &archives {
            let root = root.clone();
            s.spawn(move || {
                let store = ImageStore::open(&root).unwrap();
                store.load(&mut &a[..]).unwrap();
            });
        }
    });
    let mut tags: Vec<String> = ts
        .store
        .list()
        .unwrap()
        .into_iter()
        .flat_map(|i| i.repo_tags)
        .collect();
    tags.sort();
    assert_eq!(tags, ["conc:0", "conc:1", "conc:2", "conc:3"]);
    assert!(names(&root.join("tmp")).is_empty());
    // shared base + 4 tops.
    assert_eq!(names(&root.join("snapshots")).len(), 5);
}

#[test]
fn open_clears_what_a_crash_left() {
    let ts = TestStore::new();
    ts.store.import(&mut &rootfs("kept")[..], "kept").unwrap();
    let kept = ts.contents();
    let stale = ts.root().join("tmp/load-crashed");
    fs::create_dir_all(stale.join("spool")).unwrap();
    fs::write(stale.join("spool/blob-0"), b"half").unwrap();
    // Published, but the crash came before the image record was written.
    fs::write(
        ts.root().join("blobs/sha256").join("a".repeat(64)),
        b"orphan",
    )
    .unwrap();
    fs::create_dir_all(ts.root().join("snapshots").join("b".repeat(64)).join("etc")).unwrap();

    let store = ImageStore::open(&ts.root()).unwrap();
    assert_eq!(ts.contents(), kept);
    assert!(store.resolve("kept").is_ok());
}
