//! Hostile and broken archives, table-driven: each case must fail with the expected error
//! variant and leave the store exactly as it was (no blob, snapshot, record, tag or staging
//! directory), also when part of the archive had already been unpacked.

use serde_json::json;
use tar::EntryType;

use super::fixtures::*;
use crate::image::ImageError;

enum Op {
    Load(Vec<u8>),
    Import(Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    Hostile,
    Digest,
    Truncated,
    Invalid,
}

fn kind(err: &ImageError) -> Option<Want> {
    match err {
        ImageError::HostileEntry { .. } => Some(Want::Hostile),
        ImageError::DigestMismatch { .. } => Some(Want::Digest),
        ImageError::Truncated { .. } => Some(Want::Truncated),
        ImageError::InvalidArchive(_) => Some(Want::Invalid),
        _ => None,
    }
}

/// An OCI layout whose first layer is fine (so it is unpacked before the failure) and whose
/// second layer is the built tar, with a correct diff id.
fn layer_case(build: impl FnOnce(Tar) -> Tar) -> Op {
    let layer = build(Tar::new().dir("etc", 0o755).file("etc/ok", b"ok", 0o644)).finish();
    let img = Img::new(
        &[
            (rootfs("good first layer"), Comp::Gzip),
            (layer, Comp::None),
        ],
        "2024-01-01T00:00:00Z",
        &["sh"],
    );
    Op::Load(oci_layout(&[(&img, Some("hostile"))]))
}

/// An OCI layout whose layer blob is `blob` (any bytes) with diff id `diff_id`.
fn blob_case(blob: Vec<u8>, diff_id: String) -> Op {
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha(&rootfs("good first layer")), diff_id]},
    }))
    .unwrap();
    let img = Img::from_parts(
        vec![
            (
                Comp::Gzip.apply(&rootfs("good first layer")),
                Comp::Gzip.media_type(),
            ),
            (blob, Comp::Gzip.media_type()),
        ],
        config,
    );
    Op::Load(oci_layout(&[(&img, Some("hostile"))]))
}

fn archive_case(build: impl FnOnce(Tar) -> Tar) -> Op {
    let img = Img::new(
        &[(rootfs("x"), Comp::None)],
        "2024-01-01T00:00:00Z",
        &["sh"],
    );
    let a = ArchiveBuilder::new()
        .with_tar(build)
        .image_blobs(&img)
        .file(
            "index.json",
            &serde_json::to_vec(
                &json!({"schemaVersion": 2, "manifests": [img.manifest_desc(json!({}))]}),
            )
            .unwrap(),
        );
    Op::Load(a.finish())
}

fn import_case(build: impl FnOnce(Tar) -> Tar) -> Op {
    Op::Import(build(Tar::new().dir("etc", 0o755).file("etc/ok", b"ok", 0o644)).finish())
}

fn cases() -> Vec<(&'static str, Op, Want)> {
    use Want::*;
    let full = Tar::new().file("big", &[7u8; 4096], 0o644).finish();
    let gz = Comp::Gzip.apply(&full);
    let cut_gz = gz[..gz.len() / 2].to_vec();
    // Cut inside the file's data (header is 512 bytes).
    let cut_data = full[..512 + 100].to_vec();
    // Cut exactly after the entry: no end-of-archive blocks.
    let cut_boundary = full[..512 + 4096].to_vec();

    let good = Img::new(
        &[(rootfs("g"), Comp::Gzip)],
        "2024-01-01T00:00:00Z",
        &["sh"],
    );
    let bad_blob = {
        // The layer blob's file holds other bytes than its name says.
        let (layer, _) = &good.layers[0];
        let hex = &sha(layer)["sha256:".len()..];
        ArchiveBuilder::new()
            .file(
                &format!("blobs/sha256/{hex}"),
                &Comp::Gzip.apply(&rootfs("evil")),
            )
            .blob(&good.config)
            .blob(&good.manifest)
            .file(
                "index.json",
                &serde_json::to_vec(
                    &json!({"schemaVersion": 2, "manifests": [good.manifest_desc(json!({}))]}),
                )
                .unwrap(),
            )
            .finish()
    };
    let missing_blob = ArchiveBuilder::new()
        .blob(&good.config)
        .blob(&good.manifest)
        .file(
            "index.json",
            &serde_json::to_vec(
                &json!({"schemaVersion": 2, "manifests": [good.manifest_desc(json!({}))]}),
            )
            .unwrap(),
        )
        .finish();
    let docker_bad_config = {
        let hex = &good.id()["sha256:".len()..];
        let manifest = json!([{"Config": format!("{hex}.json"), "RepoTags": ["evil:1"], "Layers": ["l/layer.tar"]}]);
        ArchiveBuilder::new()
            .file(
                &format!("{hex}.json"),
                br#"{"rootfs":{"type":"layers","diff_ids":[]}}"#,
            )
            .file("l/layer.tar", &good.layers[0].0)
            .file("manifest.json", &serde_json::to_vec(&manifest).unwrap())
            .finish()
    };
    let count_mismatch = {
        let config = serde_json::to_vec(&json!({
            "rootfs": {"type": "layers", "diff_ids": [sha(&rootfs("g")), sha(&rootfs("g"))]},
        }))
        .unwrap();
        let img = Img::from_parts(good.layers.clone(), config);
        oci_layout(&[(&img, None)])
    };
    let second_image_bad = {
        let bad = Img::new(
            &[(
                Tar::new().special("dev/sda", EntryType::Block).finish(),
                Comp::None,
            )],
            "2024-01-01T00:00:00Z",
            &["sh"],
        );
        oci_layout(&[(&good, Some("fine:1")), (&bad, Some("bad:1"))])
    };
    let whole = oci_layout(&[(&good, Some("cut"))]);
    let whole_gz = Comp::Gzip.apply(&whole);

    vec![
        (
            "layer: '..' entry",
            layer_case(|t| t.raw(b"../evil", EntryType::Regular, b"", b"x")),
            Hostile,
        ),
        (
            "layer: nested '..' entry",
            layer_case(|t| t.raw(b"etc/../../evil", EntryType::Regular, b"", b"x")),
            Hostile,
        ),
        (
            "layer: absolute entry",
            layer_case(|t| t.raw(b"/etc/evil", EntryType::Regular, b"", b"x")),
            Hostile,
        ),
        (
            "layer: hard link out via '..'",
            layer_case(|t| t.raw(b"link", EntryType::Link, b"../../etc/passwd", b"")),
            Hostile,
        ),
        (
            "layer: hard link to absolute path",
            layer_case(|t| t.raw(b"link", EntryType::Link, b"/etc/passwd", b"")),
            Hostile,
        ),
        (
            "layer: hard link to nothing",
            layer_case(|t| t.hardlink("link", "missing")),
            Hostile,
        ),
        (
            "layer: hard link to a directory",
            layer_case(|t| t.hardlink("link", "etc")),
            Hostile,
        ),
        (
            "layer: write through absolute symlink",
            layer_case(|t| t.symlink("a", "/etc").file("a/passwd", b"root::0:0", 0o644)),
            Hostile,
        ),
        (
            "layer: write through relative symlink",
            layer_case(|t| t.symlink("e", "etc").file("e/x", b"x", 0o644)),
            Hostile,
        ),
        (
            "layer: symlink escapes root",
            layer_case(|t| t.symlink("esc", "../../../etc")),
            Hostile,
        ),
        (
            "layer: nested symlink escapes root",
            layer_case(|t| t.symlink("etc/esc", "../../x")),
            Hostile,
        ),
        (
            "layer: char device",
            layer_case(|t| t.special("dev/null", EntryType::Char)),
            Hostile,
        ),
        (
            "layer: block device",
            layer_case(|t| t.special("sda", EntryType::Block)),
            Hostile,
        ),
        (
            "layer: unknown entry type",
            layer_case(|t| t.raw(b"vol", EntryType::new(b'V'), b"", b"")),
            Hostile,
        ),
        (
            "layer: malformed whiteout",
            layer_case(|t| t.file(".wh...", b"", 0o644)),
            Hostile,
        ),
        (
            "layer: wrong diff id",
            blob_case(Comp::Gzip.apply(&full), sha(b"something else")),
            Digest,
        ),
        (
            "layer: truncated gzip",
            blob_case(cut_gz.clone(), sha(&full)),
            Truncated,
        ),
        (
            "layer: truncated file data",
            blob_case(cut_data.clone(), sha(&cut_data)),
            Truncated,
        ),
        // A layer cut at an entry boundary is judged by its diff id (umoci writes such layers).
        (
            "layer: cut at an entry boundary",
            blob_case(cut_boundary.clone(), sha(&full)),
            Digest,
        ),
        (
            "import: no end-of-archive marker",
            Op::Import(cut_boundary),
            Truncated,
        ),
        (
            "archive: '..' entry",
            archive_case(|t| t.raw(b"../evil", EntryType::Regular, b"", b"x")),
            Hostile,
        ),
        (
            "archive: absolute entry",
            archive_case(|t| t.raw(b"/tmp/evil", EntryType::Regular, b"", b"x")),
            Hostile,
        ),
        (
            "archive: char device",
            archive_case(|t| t.special("dev", EntryType::Char)),
            Hostile,
        ),
        (
            "archive: write through symlink",
            archive_case(|t| t.dir("other", 0o755).symlink("blobs", "other")),
            Hostile,
        ),
        (
            "archive: symlink escapes",
            archive_case(|t| t.symlink("x", "../../etc/passwd")),
            Hostile,
        ),
        (
            "archive: absolute symlink",
            archive_case(|t| t.symlink("x", "/etc/passwd")),
            Hostile,
        ),
        (
            "archive: hard link to nothing",
            archive_case(|t| t.raw(b"l", EntryType::Link, b"missing", b"")),
            Hostile,
        ),
        ("archive: blob digest mismatch", Op::Load(bad_blob), Digest),
        (
            "archive: docker config digest mismatch",
            Op::Load(docker_bad_config),
            Digest,
        ),
        ("archive: missing blob", Op::Load(missing_blob), Invalid),
        (
            "archive: layer count mismatch",
            Op::Load(count_mismatch),
            Invalid,
        ),
        (
            "archive: second image hostile",
            Op::Load(second_image_bad),
            Hostile,
        ),
        (
            "archive: truncated",
            Op::Load(whole[..whole.len() / 2].to_vec()),
            Truncated,
        ),
        (
            "archive: truncated gzip",
            Op::Load(whole_gz[..whole_gz.len() - 40].to_vec()),
            Truncated,
        ),
        ("archive: not a tar", Op::Load(vec![0xab; 2048]), Invalid),
        ("archive: empty", Op::Load(Vec::new()), Invalid),
        (
            "archive: no index or manifest",
            Op::Load(Tar::new().file("x", b"x", 0o644).finish()),
            Invalid,
        ),
        (
            "import: '..' entry",
            import_case(|t| t.raw(b"../evil", EntryType::Regular, b"", b"x")),
            Hostile,
        ),
        (
            "import: device",
            import_case(|t| t.special("dev/console", EntryType::Char)),
            Hostile,
        ),
        (
            "import: write through symlink",
            import_case(|t| t.symlink("s", "/").file("s/x", b"x", 0o644)),
            Hostile,
        ),
        ("import: truncated gzip", Op::Import(cut_gz), Truncated),
        ("import: truncated data", Op::Import(cut_data), Truncated),
    ]
}

#[test]
fn hostile_archives_are_refused_and_leave_nothing_behind() {
    let ts = TestStore::new();
    // A store with something in it, to show nothing existing is disturbed either.
    ts.store
        .import(&mut &rootfs("existing")[..], "existing")
        .unwrap();
    let before = ts.contents();
    let mut failures = Vec::new();
    for (name, op, want) in cases() {
        let result = match op {
            Op::Load(bytes) => ts.store.load(&mut &bytes[..]).map(|_| ()),
            Op::Import(bytes) => ts.store.import(&mut &bytes[..], "evil:1").map(|_| ()),
        };
        match result {
            Ok(()) => failures.push(format!("{name}: accepted")),
            Err(err) if kind(&err) != Some(want) => {
                failures.push(format!("{name}: want {want:?}, got {err}"))
            }
            Err(err) => eprintln!("{name}: refused as expected: {err}"),
        }
        let after = ts.contents();
        if after != before {
            failures.push(format!(
                "{name}: store changed: added {:?}, removed {:?}",
                after.difference(&before).collect::<Vec<_>>(),
                before.difference(&after).collect::<Vec<_>>()
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    assert!(ts.store.resolve("existing").is_ok());
}
