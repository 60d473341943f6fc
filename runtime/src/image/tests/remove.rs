//! `remove` with Docker's semantics, garbage collection of blobs and snapshots, and reference
//! resolution failures (not found, ambiguous prefix, invalid).

use std::collections::BTreeMap;

use super::fixtures::*;
use crate::image::{ImageError, Removed};

fn two_layer(top: &str, created: &str) -> Img {
    Img::new(
        &[
            (rootfs("base"), Comp::Gzip),
            (
                Tar::new().file(top, top.as_bytes(), 0o644).finish(),
                Comp::None,
            ),
        ],
        created,
        &["sh"],
    )
}

#[test]
fn untag_then_delete_with_last_tag() {
    let ts = TestStore::new();
    let img = two_layer("t", "2024-01-01T00:00:00Z");
    let archive = docker_old(&[(&img, &["x:1", "x:2"])]);
    ts.store.load(&mut &archive[..]).unwrap();

    assert_eq!(
        ts.store.remove("x:1", false).unwrap(),
        [Removed::Untagged("x:1".into())]
    );
    let info = ts.store.resolve("x:2").unwrap();
    assert_eq!(info.repo_tags, ["x:2"]);
    assert!(matches!(
        ts.store.resolve("x:1"),
        Err(ImageError::NotFound(_))
    ));

    // `x` means `x:latest`, which does not exist.
    assert!(matches!(
        ts.store.remove("x", false),
        Err(ImageError::NotFound(_))
    ));

    assert_eq!(
        ts.store.remove("x:2", false).unwrap(),
        [Removed::Untagged("x:2".into()), Removed::Deleted(img.id())]
    );
    assert!(ts.store.list().unwrap().is_empty());
    assert!(names(&ts.root().join("blobs/sha256")).is_empty());
    assert!(names(&ts.root().join("snapshots")).is_empty());
    assert!(names(&ts.root().join("images")).is_empty());
    assert!(names(&ts.root().join("tmp")).is_empty());
}

#[test]
fn remove_by_id_needs_force_with_several_tags() {
    let ts = TestStore::new();
    let img = two_layer("t", "2024-01-01T00:00:00Z");
    ts.store
        .load(&mut &docker_old(&[(&img, &["y:1", "y:2"])])[..])
        .unwrap();
    let id = img.id();
    let short = &id["sha256:".len()..][..12];
    let err = ts.store.remove(short, false).unwrap_err();
    assert!(matches!(err, ImageError::MultipleTags { .. }), "{err}");
    assert_eq!(ts.store.resolve("y:1").unwrap().repo_tags, ["y:1", "y:2"]);

    assert_eq!(
        ts.store.remove(&img.id(), true).unwrap(),
        [
            Removed::Untagged("y:1".into()),
            Removed::Untagged("y:2".into()),
            Removed::Deleted(img.id())
        ]
    );
    assert!(names(&ts.root().join("blobs/sha256")).is_empty());
}

#[test]
fn remove_by_id_with_one_or_no_tag() {
    let ts = TestStore::new();
    let tagged = two_layer("one", "2024-01-01T00:00:00Z");
    let untagged = two_layer("none", "2024-01-01T00:00:00Z");
    ts.store
        .load(&mut &oci_layout(&[(&tagged, Some("one")), (&untagged, None)])[..])
        .unwrap();
    assert_eq!(
        ts.store.remove(&tagged.id(), false).unwrap(),
        [
            Removed::Untagged("one:latest".into()),
            Removed::Deleted(tagged.id())
        ]
    );
    assert_eq!(
        ts.store.remove(&untagged.id(), false).unwrap(),
        [Removed::Deleted(untagged.id())]
    );
    assert!(names(&ts.root().join("snapshots")).is_empty());
}

#[test]
fn gc_keeps_layers_shared_with_remaining_images() {
    let ts = TestStore::new();
    let a = two_layer("a", "2024-01-01T00:00:00Z");
    let b = two_layer("b", "2024-01-02T00:00:00Z");
    ts.store
        .load(&mut &oci_layout(&[(&a, Some("a")), (&b, Some("b"))])[..])
        .unwrap();
    let b_info = ts.store.resolve("b").unwrap();
    assert_eq!(names(&ts.root().join("snapshots")).len(), 3);
    // a: manifest, config, top; b: manifest, config, top; shared base.
    assert_eq!(names(&ts.root().join("blobs/sha256")).len(), 7);

    ts.store.remove("a", false).unwrap();
    assert_eq!(names(&ts.root().join("snapshots")).len(), 2);
    assert_eq!(names(&ts.root().join("blobs/sha256")).len(), 4);
    for dir in ts.store.layer_dirs(&b_info).unwrap() {
        assert!(dir.is_dir());
    }
    assert!(ts.store.layer_dirs(&b_info).unwrap()[0]
        .join("etc/marker")
        .is_file());

    ts.store.remove("b", false).unwrap();
    assert!(names(&ts.root().join("snapshots")).is_empty());
    assert!(names(&ts.root().join("blobs/sha256")).is_empty());
    assert!(names(&ts.root().join("tmp")).is_empty());
}

#[test]
fn loading_a_tag_again_moves_it_and_leaves_the_old_image_dangling() {
    let ts = TestStore::new();
    let old = two_layer("old", "2024-01-01T00:00:00Z");
    let new = two_layer("new", "2024-01-02T00:00:00Z");
    ts.store
        .load(&mut &oci_layout(&[(&old, Some("t:1"))])[..])
        .unwrap();
    ts.store
        .load(&mut &oci_layout(&[(&new, Some("t:1"))])[..])
        .unwrap();
    assert_eq!(ts.store.resolve("t:1").unwrap().id, new.id());
    let dangling = ts.store.resolve(&old.id()).unwrap();
    assert!(dangling.repo_tags.is_empty());
    assert_eq!(ts.store.list().unwrap().len(), 2);
}

#[test]
fn resolve_errors() {
    let ts = TestStore::new();
    // Import until two ids share a first hex digit (at most 17 by pigeonhole).
    let mut by_first: BTreeMap<char, Vec<String>> = BTreeMap::new();
    let mut i = 0;
    let shared = loop {
        let info = ts
            .store
            .import(&mut &rootfs(&format!("p{i}"))[..], "")
            .unwrap();
        let hex = info.id.trim_start_matches("sha256:").to_owned();
        let first = hex.chars().next().unwrap();
        let ids = by_first.entry(first).or_default();
        ids.push(hex);
        if ids.len() == 2 {
            break first;
        }
        i += 1;
    };
    let err = ts.store.resolve(&shared.to_string()).unwrap_err();
    assert!(matches!(err, ImageError::Ambiguous(_)), "{err}");
    let err = ts
        .store
        .remove(&format!("sha256:{shared}"), false)
        .unwrap_err();
    assert!(matches!(err, ImageError::Ambiguous(_)), "{err}");
    // Longer prefixes are unique.
    let one = &by_first[&shared][0];
    assert_eq!(
        ts.store.resolve(&one[..12]).unwrap().id,
        format!("sha256:{one}")
    );

    for missing in ["nope", "nope:1", &"f".repeat(64), "sha256:0123"] {
        let err = ts.store.resolve(missing).unwrap_err();
        assert!(matches!(err, ImageError::NotFound(_)), "{missing}: {err}");
    }
    for bad in ["UPPER", "a@sha256:00", "sha256:zz", ""] {
        let err = ts.store.resolve(bad).unwrap_err();
        assert!(
            matches!(err, ImageError::InvalidReference(_)),
            "{bad}: {err}"
        );
    }
}
