//! Shared fixtures for the runtime's root tests: a busybox root filesystem and a runtime on a
//! temporary data root that removes every container it made, also when a test fails.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal_runtime::{ContainerSpec, Runtime, RuntimeConfig};

/// Applets the tests use; each becomes a symlink to /bin/busybox.
const APPLETS: &[&str] = &[
    "sh", "true", "false", "sleep", "echo", "cat", "ls", "id", "hostname", "mount", "env", "pwd",
    "ps", "head", "tr", "grep", "kill", "seq", "dd", "touch", "mkdir", "wc", "yes", "rm", "nc",
    "tty", "stty",
];

/// Fails (under CI) or skips (elsewhere, loudly) when not root.
pub fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("these tests need root, and CI runs as root");
    }
    eprintln!("SKIPPED: not root");
    false
}

/// A rootfs tarball made from Debian's busybox-static.
pub fn busybox_rootfs_tar(out: &Path) {
    busybox_rootfs_tar_with_links(out, &[]);
}

/// As [`busybox_rootfs_tar`], with top-level entries replaced by symlinks `(name, target)`.
pub fn busybox_rootfs_tar_with_links(out: &Path, links: &[(&str, &str)]) {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "/bin/busybox missing: apt-get install -y busybox-static"
    );
    let file = std::fs::File::create(out).expect("create tar");
    let mut b = tar::Builder::new(file);
    let dir = |b: &mut tar::Builder<std::fs::File>, path: &str, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, path, std::io::empty()).expect("dir");
    };
    for (d, mode) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("proc", 0o755),
        ("dev", 0o755),
        ("sys", 0o755),
        ("tmp", 0o1777),
        ("root", 0o700),
        ("home", 0o755),
    ] {
        if links.iter().all(|(name, _)| *name != d) {
            dir(&mut b, d, mode);
        }
    }
    for (name, target) in links {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        b.append_link(&mut h, name, target).expect("link");
    }
    b.append_path_with_name(busybox, "bin/busybox")
        .expect("busybox");
    for applet in APPLETS {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .expect("link");
    }
    let file = |b: &mut tar::Builder<std::fs::File>, path: &str, data: &str| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, path, data.as_bytes()).expect("file");
    };
    file(
        &mut b,
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\nshoal:x:1000:1000:shoal:/home/shoal:/bin/sh\n",
    );
    file(
        &mut b,
        "etc/group",
        "root:x:0:\nnogroup:x:65534:\nshoal:x:1000:\nstaff:x:50:shoal\n",
    );
    b.finish().expect("finish tar");
}

/// A runtime on a temporary data root with the busybox image imported as `busybox:test`.
pub struct TestRuntime {
    pub rt: Runtime,
    pub dir: tempfile::TempDir,
}

impl TestRuntime {
    pub fn new() -> TestRuntime {
        let dir = tempfile::Builder::new()
            .prefix("shoal-rt-test")
            .tempdir()
            .expect("tempdir");
        let mut cfg = RuntimeConfig::new(dir.path().join("root"));
        cfg.shim = PathBuf::from(env!("CARGO_BIN_EXE_shoal-shim"));
        let rt = Runtime::open(cfg).expect("open runtime");
        let tar = dir.path().join("rootfs.tar");
        busybox_rootfs_tar(&tar);
        let mut f = std::fs::File::open(&tar).expect("open tar");
        rt.images()
            .import(&mut f, "busybox:test")
            .expect("import busybox");
        TestRuntime { rt, dir }
    }

    pub fn spec(&self, cmd: &[&str]) -> ContainerSpec {
        ContainerSpec {
            image: "busybox:test".into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    /// Creates, starts and waits; returns (exit code, stdout+stderr text, container id).
    pub fn run(&self, spec: ContainerSpec) -> (i32, String, String) {
        let c = self.rt.create(spec).expect("create");
        match self.rt.start(&c.id) {
            Ok(_) => {}
            Err(shoal_runtime::ContainerError::StartFailed { code, message }) => {
                eprintln!("start failed ({code}): {message}");
                return (code, message, c.id);
            }
            Err(e) => panic!("start: {e}"),
        }
        let state = self.rt.wait(&c.id).expect("wait");
        let logs = self
            .rt
            .logs(&c.id)
            .expect("logs")
            .read_all(None)
            .expect("read logs");
        let text: String = logs.iter().map(|r| r.log.as_str()).collect();
        (state.exit_code, text, c.id)
    }

    pub fn sh(&self, script: &str) -> (i32, String) {
        let (code, out, _) = self.run(self.spec(&["sh", "-c", script]));
        (code, out)
    }
}

impl Drop for TestRuntime {
    fn drop(&mut self) {
        if let Ok(list) = self.rt.list(true) {
            for c in list {
                let _ = self.rt.stop(&c.id, Duration::ZERO);
                let _ = self.rt.remove(&c.id, true);
            }
        }
    }
}
