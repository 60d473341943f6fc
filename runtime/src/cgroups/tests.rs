//! Tests of the cgroup module: validation tables (no privileges), and real cgroups (root):
//! limits read back, process membership, kill-and-remove, OOM detection.
//!
//! Every real cgroup lives under the `shoal-test` parent with a per-test name, and is held by
//! a [`Guard`] that kills its processes and removes it (and, when no other test still uses
//! it, the parent) even when the test fails.

use std::fs;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use super::hierarchy::{layout, Layout};
use super::*;

const TEST_PARENT: &str = "shoal-test";

/// Guards alive in this test process (tests run on parallel threads), per layout: [v1, v2]
/// (the v2 tests use the empty cgroup2 mount beside the v1 hierarchies).
static LIVE_GUARDS: std::sync::Mutex<[usize; 2]> = std::sync::Mutex::new([0, 0]);

/// True when running as root. Outside CI a missing privilege skips the test loudly; under
/// `CI=true` it fails.
fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: needs root and CI=true"
    );
    eprintln!("SKIPPED {test}: needs root");
    false
}

/// Owns a test cgroup and the processes a test started; cleans both up on drop.
struct Guard {
    cg: ContainerCgroup,
    children: Vec<Child>,
}

impl Guard {
    fn create(test: &str, limits: &Limits) -> Self {
        Self::create_in(layout(), test, limits)
    }

    fn create_in(l: &'static Layout, test: &str, limits: &Limits) -> Self {
        let name = format!("{test}-{}", std::process::id());
        // Counted and created under the lock, so no guard's drop removes the shared parent
        // between the creation of the parent and of the child.
        let mut live = LIVE_GUARDS.lock().unwrap_or_else(|e| e.into_inner());
        let cg = ContainerCgroup::create_in(l, TEST_PARENT, &name, limits).expect("create cgroup");
        live[usize::from(l.is_v2())] += 1;
        drop(live);
        Self {
            cg,
            children: Vec::new(),
        }
    }

    /// Directories of the cgroup in every hierarchy in use.
    fn dirs(&self) -> Vec<PathBuf> {
        if self.cg.layout.is_v2() {
            return vec![self.cg.v2_dir()];
        }
        let cg = self.cg.cg.as_ref().expect("valid handle");
        cg.subsystems()
            .iter()
            .map(|s| s.to_controller().path().to_path_buf())
            .collect()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Err(e) = self.cg.remove() {
            eprintln!("cleanup: remove {}: {e:?}", self.cg.path());
        }
        // The shared test parent goes with the last live guard.
        let l = self.cg.layout;
        let mut live = LIVE_GUARDS.lock().unwrap_or_else(|e| e.into_inner());
        let count = &mut live[usize::from(l.is_v2())];
        *count = count.saturating_sub(1);
        if *count > 0 {
            return;
        }
        let parent = l.handle(TEST_PARENT);
        if l.is_v2() {
            let _ = fs::remove_dir(l.v2_root().join(TEST_PARENT));
        } else {
            for s in parent.subsystems() {
                let _ = fs::remove_dir(s.to_controller().path());
            }
        }
    }
}

fn read_trim(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .trim()
        .to_string()
}

#[test]
fn invalid_paths_are_rejected() {
    let bad = [
        ("", "x"),
        ("/", "x"),
        ("shoal", ""),
        ("shoal", "a/b"),
        ("shoal", ".."),
        ("shoal", "."),
        ("..", "x"),
        ("shoal/../..", "x"),
        ("shoal//x", "y"),
    ];
    for (parent, name) in bad {
        let r = cgroup_path(parent, name);
        assert!(
            matches!(r, Err(CgroupError::InvalidPath { .. })),
            "{parent:?}/{name:?} gave {r:?}"
        );
    }
    let good = [
        ("shoal", "abc", "shoal/abc"),
        ("/shoal/", "abc", "shoal/abc"),
        ("a/b", "c-1.2", "a/b/c-1.2"),
    ];
    for (parent, name, want) in good {
        assert_eq!(cgroup_path(parent, name).unwrap(), want);
    }
}

#[test]
fn limits_are_validated_as_docker_does() {
    let mib = 1024 * 1024;
    let bad = [
        Limits {
            memory: Some(mib),
            ..Limits::default()
        },
        Limits {
            memory: Some(-1),
            ..Limits::default()
        },
        Limits {
            nano_cpus: Some(1_000_000),
            ..Limits::default()
        },
        Limits {
            nano_cpus: Some(-5),
            ..Limits::default()
        },
    ];
    for l in bad {
        assert!(
            matches!(l.validate(), Err(CgroupError::InvalidLimit { .. })),
            "{l:?} accepted"
        );
    }
    let good = [
        (Limits::default(), None),
        (
            Limits {
                memory: Some(0),
                nano_cpus: Some(0),
                pids: Some(-1),
            },
            None,
        ),
        (
            Limits {
                nano_cpus: Some(500_000_000),
                ..Limits::default()
            },
            Some(50_000),
        ),
        (
            Limits {
                nano_cpus: Some(2_000_000_000),
                ..Limits::default()
            },
            Some(200_000),
        ),
        (
            Limits {
                nano_cpus: Some(MIN_NANO_CPUS),
                memory: Some(MIN_MEMORY),
                pids: Some(1),
            },
            Some(1_000),
        ),
    ];
    for (l, quota) in good {
        assert_eq!(l.validate().unwrap(), quota, "{l:?}");
    }
}

#[test]
fn open_of_absent_or_invalid_cgroup_is_inert() {
    let absent = ContainerCgroup::open(TEST_PARENT, "never-created-cgroup");
    assert!(absent.pids().is_empty());
    assert!(!absent.oom_killed());
    assert!(absent.stats().is_err());
    absent.remove().unwrap();

    let invalid = ContainerCgroup::open("..", "x");
    assert!(invalid.pids().is_empty());
    invalid.remove().unwrap();
    assert!(invalid.add_process(1).is_err());
}

#[test]
fn create_applies_limits_and_device_rules() {
    if !root_or_skip("create_applies_limits_and_device_rules") {
        return;
    }
    let limits = Limits {
        memory: Some(64 * 1024 * 1024),
        nano_cpus: Some(500_000_000),
        pids: Some(64),
    };
    let g = Guard::create("limits", &limits);
    let dirs = g.dirs();
    assert!(dirs.iter().all(|d| d.is_dir()), "{dirs:?}");
    let mem = g.cg.dir_of("memory").unwrap();
    let cpu = g.cg.dir_of("cpu").unwrap();
    let pids = g.cg.dir_of("pids").unwrap();
    if layout().is_v2() {
        assert_eq!(read_trim(&mem.join("memory.max")), "67108864");
        assert_eq!(read_trim(&cpu.join("cpu.max")), "50000 100000");
        assert!(!device_control_available());
    } else {
        assert_eq!(read_trim(&mem.join("memory.limit_in_bytes")), "67108864");
        let memsw = mem.join("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            assert_eq!(read_trim(&memsw), "67108864");
        }
        assert_eq!(read_trim(&cpu.join("cpu.cfs_quota_us")), "50000");
        assert_eq!(read_trim(&cpu.join("cpu.cfs_period_us")), "100000");
        assert!(device_control_available());
        let list = read_trim(&g.cg.dir_of("devices").unwrap().join("devices.list"));
        let mut rules: Vec<&str> = list.lines().collect();
        rules.sort_unstable();
        let mut want: Vec<String> = devices::DEFAULT_ALLOWED
            .iter()
            .map(|r| r.to_line())
            .collect();
        want.sort_unstable();
        assert_eq!(rules, want, "devices.list");
    }
    assert_eq!(read_trim(&pids.join("pids.max")), "64");

    let stats = g.cg.stats().unwrap();
    assert_eq!(stats.memory_limit, 64 * 1024 * 1024);
    assert_eq!(stats.pids, 0);

    g.cg.remove().unwrap();
    assert!(dirs.iter().all(|d| !d.exists()), "left behind: {dirs:?}");
    // Idempotent.
    g.cg.remove().unwrap();
}

#[test]
fn processes_are_tracked_then_killed_on_remove() {
    if !root_or_skip("processes_are_tracked_then_killed_on_remove") {
        return;
    }
    let mut g = Guard::create("procs", &Limits::default());
    let child = Command::new("sleep").arg("1000").spawn().unwrap();
    let pid = child.id() as i32;
    g.children.push(child);
    g.cg.add_process(pid).unwrap();
    assert_eq!(g.cg.pids(), vec![pid]);

    // A shell that forks more children once it is in the cgroup (it waits for a line on
    // stdin): they join by inheritance.
    let mut shell = Command::new("/bin/sh")
        .args([
            "-c",
            "read go; for i in 1 2 3 4 5; do sleep 1000 & done; wait",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let shell_pid = shell.id() as i32;
    let mut stdin = shell.stdin.take().unwrap();
    g.children.push(shell);
    g.cg.add_process(shell_pid).unwrap();
    stdin.write_all(b"go\n").unwrap();
    let start = Instant::now();
    while g.cg.pids().len() < 7 && start.elapsed().as_secs() < 5 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(g.cg.pids().len(), 7, "{:?}", g.cg.pids());
    let stats = g.cg.stats().unwrap();
    assert!(stats.pids >= 7, "{stats:?}");
    assert!(stats.memory_usage > 0, "{stats:?}");

    let dirs = g.dirs();
    let t = Instant::now();
    g.cg.remove().unwrap();
    eprintln!("remove with 7 processes took {:?}", t.elapsed());
    assert!(dirs.iter().all(|d| !d.exists()), "left behind: {dirs:?}");
    for c in &mut g.children {
        let status = c.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    }
    g.children.clear();
}

#[test]
fn memory_hog_is_oom_killed_and_reported() {
    if !root_or_skip("memory_hog_is_oom_killed_and_reported") {
        return;
    }
    let mut g = Guard::create(
        "oom",
        &Limits {
            memory: Some(16 * 1024 * 1024),
            ..Limits::default()
        },
    );
    assert!(!g.cg.oom_killed());
    // The shell waits on stdin until it is in the cgroup, then holds 64 MiB in a variable.
    let mut hog = Command::new("/bin/sh")
        .args([
            "-c",
            "read go; x=$(head -c 64m /dev/zero | tr '\\0' a); echo survived",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = hog.id() as i32;
    let mut stdin = hog.stdin.take().unwrap();
    g.children.push(hog);
    g.cg.add_process(pid).unwrap();
    stdin.write_all(b"go\n").unwrap();
    drop(stdin);
    let status = g.children[0].wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "hog exited {status:?}"
    );
    assert!(g.cg.oom_killed());
}

#[test]
fn lifecycle_is_fast() {
    if !root_or_skip("lifecycle_is_fast") {
        return;
    }
    let limits = Limits {
        memory: Some(64 * 1024 * 1024),
        nano_cpus: Some(1_000_000_000),
        pids: Some(100),
    };
    // Warm the layout cache, then time create + add + remove of an exited process.
    drop(Guard::create("warm", &limits));
    let mut child = Command::new("/bin/true").spawn().unwrap();
    let pid = child.id() as i32;
    let t = Instant::now();
    let g = Guard::create("fast", &limits);
    let _ = g.cg.add_process(pid); // may already have exited
    let _ = child.wait();
    g.cg.remove().unwrap();
    let took = t.elapsed();
    eprintln!("create + add + remove took {took:?}");
    assert!(took.as_millis() < 200, "cgroup lifecycle took {took:?}");
}

/// The v2 code paths on a real cgroup2 filesystem even on a v1 machine: the (controller-less)
/// cgroup2 mounted at /sys/fs/cgroup/unified. Without controllers this covers creation,
/// membership, stats, cgroup.kill and removal, not limits or OOM.
#[test]
fn v2_lifecycle_on_a_unified_mount() {
    if !root_or_skip("v2_lifecycle_on_a_unified_mount") {
        return;
    }
    let mount = Path::new("/sys/fs/cgroup/unified");
    let is_cgroup2 = nix::sys::statfs::statfs(mount)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC);
    if layout().is_v2() || !is_cgroup2 {
        eprintln!("SKIPPED v2_lifecycle_on_a_unified_mount: no separate cgroup2 mount here");
        return;
    }
    let l: &'static Layout = Box::leak(Box::new(Layout::detect_v2(mount)));
    assert!(l.is_v2());

    // Limits need controllers this mount does not have: refused before anything is made.
    let with_memory = Limits {
        memory: Some(64 * 1024 * 1024),
        ..Limits::default()
    };
    if !l.has("memory") {
        let r = ContainerCgroup::create_in(l, TEST_PARENT, "refused", &with_memory);
        assert!(
            matches!(r, Err(CgroupError::ControllerMissing { .. })),
            "{r:?}"
        );
        assert!(!mount.join(TEST_PARENT).join("refused").exists());
    }

    let mut g = Guard::create_in(l, "v2", &Limits::default());
    let dir = g.cg.v2_dir();
    assert!(dir.starts_with(mount) && dir.is_dir(), "{}", dir.display());
    let mut shell = Command::new("/bin/sh")
        .args(["-c", "read go; sleep 1000 & sleep 1000 & wait"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = shell.id() as i32;
    let mut stdin = shell.stdin.take().unwrap();
    g.children.push(shell);
    g.cg.add_process(pid).unwrap();
    stdin.write_all(b"go\n").unwrap();
    let start = Instant::now();
    while g.cg.pids().len() < 3 && start.elapsed().as_secs() < 5 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(g.cg.pids().len(), 3, "{:?}", g.cg.pids());
    assert!(g.cg.pids().contains(&pid));
    let stats = g.cg.stats().unwrap();
    assert_eq!(stats.pids, 3, "{stats:?}");
    assert!(!g.cg.oom_killed());

    // An `open` handle (as after a daemon restart) sees and removes the same cgroup.
    let reopened = ContainerCgroup::open_in(l, TEST_PARENT, &format!("v2-{}", std::process::id()));
    assert_eq!(reopened.pids(), g.cg.pids());
    reopened.remove().unwrap();
    assert!(!dir.exists(), "{} left behind", dir.display());
    let status = g.children[0].wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    g.cg.remove().unwrap();
}
