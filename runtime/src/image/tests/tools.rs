//! Interoperability with archives written by real tools: umoci builds an OCI layout (with a
//! whiteout layer), skopeo converts it to a `docker save` archive and to a zstd-compressed OCI
//! archive; all three load. Everything is local, no registry is contacted.
//!
//! Needs the Debian packages `umoci` and `skopeo`. Without them the test skips loudly, except
//! under `CI=true`, where it fails (CI installs them).

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use super::fixtures::*;

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tar_dir(dir: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.append_dir_all(".", dir).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn loads_what_umoci_and_skopeo_write() {
    if !(have("umoci") && have("skopeo")) {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "umoci and skopeo are required under CI=true (Debian packages `umoci` and `skopeo`)"
        );
        eprintln!(
            "\n*** SKIPPED loads_what_umoci_and_skopeo_write: umoci and/or skopeo missing \
             (apt-get install -y umoci skopeo) ***\n"
        );
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("oci");
    let image = format!("{}:base", layout.display());
    let src = work.path().join("src");
    fs::create_dir_all(src.join("etc")).unwrap();
    fs::create_dir_all(src.join("bin")).unwrap();
    fs::write(src.join("etc/hello"), "hi").unwrap();
    fs::write(src.join("etc/gone"), "gone").unwrap();
    fs::write(src.join("bin/tool"), "tool").unwrap();
    fs::set_permissions(src.join("bin/tool"), fs::Permissions::from_mode(0o4755)).unwrap();

    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    run(Command::new("umoci")
        .args(["insert", "--image", &image])
        .arg(&src)
        .arg("/"));
    run(Command::new("umoci").args(["insert", "--image", &image, "--whiteout", "/etc/gone"]));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.cmd",
        "/bin/sh",
        "--config.env",
        "FOO=bar",
    ]));

    // umoci's layout as is: tagged only `base` in ref.name, so it loads untagged.
    let ts = TestStore::new();
    let loaded = ts.store.load(&mut &tar_dir(&layout)[..]).unwrap();
    assert_eq!(loaded.len(), 1);
    let umoci = &loaded[0];
    assert!(umoci.repo_tags.is_empty());
    assert_eq!(umoci.config.cmd, Some(vec!["/bin/sh".to_owned()]));
    assert!(umoci.config.env.contains(&"FOO=bar".to_owned()));
    let dirs = ts.store.layer_dirs(umoci).unwrap();
    assert_eq!(dirs.len(), 2);
    assert_eq!(fs::read(dirs[0].join("etc/hello")).unwrap(), b"hi");
    assert_eq!(
        fs::metadata(dirs[0].join("bin/tool"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o4755
    );
    assert!(fs::symlink_metadata(dirs[1].join("etc/gone"))
        .unwrap()
        .file_type()
        .is_char_device());

    // skopeo → docker-archive (Docker's old layout with symlinked layers).
    let docker = work.path().join("docker.tar");
    run(Command::new("skopeo")
        .args(["--insecure-policy", "copy", &format!("oci:{image}")])
        .arg(format!(
            "docker-archive:{}:shoal/skopeo:1",
            docker.display()
        )));
    let ts2 = TestStore::new();
    let loaded = ts2
        .store
        .load(&mut &fs::read(&docker).unwrap()[..])
        .unwrap();
    assert_eq!(loaded[0].repo_tags, ["shoal/skopeo:1"]);
    assert_eq!(loaded[0].diff_ids, umoci.diff_ids);

    // skopeo → oci-archive with zstd layers (a real zstd encoder's output for ruzstd).
    let zstd = work.path().join("zstd.tar");
    run(Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--dest-compress-format",
            "zstd",
            &format!("oci:{image}"),
        ])
        .arg(format!("oci-archive:{}:shoal/zstd:2", zstd.display())));
    let ts3 = TestStore::new();
    let loaded = ts3.store.load(&mut &fs::read(&zstd).unwrap()[..]).unwrap();
    assert_eq!(loaded[0].repo_tags, ["shoal/zstd:2"]);
    assert_eq!(loaded[0].diff_ids, umoci.diff_ids);
    let dirs = ts3.store.layer_dirs(&loaded[0]).unwrap();
    assert_eq!(fs::read(dirs[0].join("etc/hello")).unwrap(), b"hi");
}
