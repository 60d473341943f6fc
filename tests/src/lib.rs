//! The end-to-end test harness: real `shoald` daemons, each on its own temp data root and
//! socket, driven with the real `shoal` client, plus the demo image fixture.
//!
//! The binaries are not built by the tests: `cargo build --workspace --bins` (CI's
//! `.ci/run` builds all targets first) puts `shoald`, `shoal` and `shoal-shim` in
//! `target/<profile>/`, next to the test executables' `deps/` directory, where [`Bins`] finds
//! them (or in `$SHOAL_BIN_DIR`).
//!
//! A [`Daemon`] cleans up after itself when dropped, also when the test failed: it removes
//! every container it knows (`shoal rm -f`), stops the daemon, kills any process still
//! running from its data root (a supervisor whose container could not be removed) and
//! deletes the temp directory. When the test panicked, the daemon's log goes to stderr.
#![warn(missing_docs)]

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

pub mod cluster;
pub mod swarm_util;

/// Environment variable naming the directory of the binaries under test.
pub const BIN_DIR_ENV: &str = "SHOAL_BIN_DIR";

/// How long a `shoal` command may take before the harness kills it and fails the test: far
/// above any single command's normal time, so only a hang trips it.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a starting daemon has to answer `shoal version`.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a stopping daemon has after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// The binaries under test.
#[derive(Debug, Clone)]
pub struct Bins {
    /// The daemon.
    pub shoald: PathBuf,
    /// The client.
    pub shoal: PathBuf,
    /// The per-container supervisor.
    pub shim: PathBuf,
}

impl Bins {
    /// Finds the binaries in `$SHOAL_BIN_DIR`, else in the target directory the running test
    /// executable belongs to (`target/debug/deps/test-…` → `target/debug/`). Panics with the
    /// command that builds them when one is missing.
    pub fn locate() -> Bins {
        let dir = match std::env::var_os(BIN_DIR_ENV) {
            Some(dir) => PathBuf::from(dir),
            None => {
                let exe = std::env::current_exe().expect("the test executable has a path");
                let deps = exe.parent().expect("the test executable is in a directory");
                // Integration tests live in `deps/`; unit tests of a bin too.
                if deps.file_name().is_some_and(|n| n == "deps") {
                    deps.parent().unwrap_or(deps).to_path_buf()
                } else {
                    deps.to_path_buf()
                }
            }
        };
        let bins = Bins {
            shoald: dir.join("shoald"),
            shoal: dir.join("shoal"),
            shim: dir.join("shoal-shim"),
        };
        for bin in [&bins.shoald, &bins.shoal, &bins.shim] {
            assert!(
                bin.is_file(),
                "{} is missing: build the binaries first (`cargo build --workspace --bins`) \
                 or point {BIN_DIR_ENV} at them",
                bin.display()
            );
        }
        bins
    }
}

/// A `shoald` on a temp data root and socket, stopped and cleaned up when dropped.
#[derive(Debug)]
pub struct Daemon {
    bins: Bins,
    /// Holds the data root, the socket, the daemon's log and fixtures.
    dir: TempDir,
    child: Option<Child>,
    /// The daemon's own network namespace (`ip netns` name), so that its bridges and nft
    /// table never touch the host's and daemons of parallel tests do not share them.
    netns: Option<String>,
}

impl Daemon {
    /// Starts a daemon and waits until it answers.
    pub fn start() -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("shoal-test-")
            .tempdir()
            .expect("create the daemon's temp dir");
        let mut daemon = Daemon {
            bins: Bins::locate(),
            dir,
            child: None,
            netns: make_netns(),
        };
        daemon.spawn();
        daemon
    }

    /// The daemon's data root.
    pub fn data_root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// The daemon's socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("shoal.sock")
    }

    /// `unix://<socket>`, for `-H` or `SHOAL_HOST`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// A directory for the test's own files, deleted with the daemon.
    pub fn scratch(&self) -> PathBuf {
        let dir = self.dir.path().join("scratch");
        fs::create_dir_all(&dir).expect("create scratch dir");
        dir
    }

    /// The binaries under test.
    pub fn bins(&self) -> &Bins {
        &self.bins
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("shoald.log")
    }

    /// Everything the daemon (all its runs) wrote to stderr.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The daemon's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(&mut self) {
        if let Err(err) = self.try_spawn() {
            panic!("{err}");
        }
    }

    /// Starts the daemon and waits until it answers; never panics (used by `Drop`).
    fn try_spawn(&mut self) -> Result<(), String> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("open the daemon log: {e}"))?;
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut cmd = Command::new("nsenter");
                cmd.arg(format!("--net=/run/netns/{ns}"))
                    .arg(&self.bins.shoald);
                cmd
            }
            None => Command::new(&self.bins.shoald),
        };
        let child = cmd
            .arg("--data-root")
            .arg(self.data_root())
            .arg("-H")
            .arg(self.host())
            .arg("--shim")
            .arg(&self.bins.shim)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.bins.shoald.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.exited() {
                self.child = None;
                return Err(format!(
                    "shoald exited at start ({status}):\n{}",
                    self.log()
                ));
            }
            let answered = self
                .try_shoal(&["version"], None)
                .is_ok_and(|out| out.status.success());
            if answered {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill9();
                return Err(format!(
                    "shoald did not answer within {START_TIMEOUT:?}:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's exit status, if it has exited.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Kills the daemon with SIGKILL (its containers keep running) and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the daemon with SIGTERM (SIGKILL after a grace period) and reaps it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts the daemon again on the same data root and socket (stopping it first if it
    /// runs), and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Runs `shoal -H <this daemon> ARGS…` and returns its output.
    pub fn shoal(&self, args: &[&str]) -> Output {
        self.shoal_with_stdin(args, None)
    }

    /// Runs `shoal` with `stdin` as its standard input (`None`: /dev/null).
    pub fn shoal_with_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        self.try_shoal(args, stdin)
            .unwrap_or_else(|err| panic!("{err}"))
    }

    fn try_shoal(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<Output, String> {
        let mut cmd = Command::new(&self.bins.shoal);
        cmd.arg("-H").arg(self.host()).args(args);
        try_run(cmd, stdin, COMMAND_TIMEOUT)
    }

    /// Runs `shoal ARGS…`, asserts it succeeded, and returns its stdout.
    pub fn shoal_ok(&self, args: &[&str]) -> String {
        let out = self.shoal(args);
        assert!(
            out.status.success(),
            "shoal {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Builds the demo image's root filesystem tarball into the scratch dir (see
    /// [`build_demo_rootfs`]) and returns its path.
    pub fn demo_rootfs(&self) -> PathBuf {
        let out = self.scratch().join("demo-rootfs.tar");
        if !out.exists() {
            build_demo_rootfs(&out);
        }
        out
    }

    /// Imports the demo image as `reference` and returns its id.
    pub fn import_demo(&self, reference: &str) -> String {
        let tar = self.demo_rootfs();
        let tar = tar.to_str().expect("temp paths are UTF-8");
        self.shoal_ok(&["image", "import", tar, reference])
            .trim()
            .to_string()
    }

    /// Removes every container of the daemon (restarting it if it is down), then stops it.
    fn clean_up(&mut self) {
        if self.child.is_none() || self.exited().is_some() {
            self.child = None;
            // A daemon that cannot start cannot remove anything; the process sweep below
            // still ends the supervisors.
            if let Err(err) = self.try_spawn() {
                eprintln!("cleanup: {err}");
            }
        }
        if self.child.is_some() {
            let ids = match self.try_shoal(&["container", "ls", "-a", "-q", "--no-trunc"], None) {
                Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
                Err(err) => {
                    eprintln!("cleanup: {err}");
                    String::new()
                }
            };
            for id in ids.split_whitespace() {
                match self.try_shoal(&["container", "rm", "-f", id], None) {
                    Ok(out) if out.status.success() => {}
                    Ok(out) => eprintln!(
                        "cleanup: shoal rm -f {id} failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    ),
                    Err(err) => eprintln!("cleanup: {err}"),
                }
            }
        }
        self.stop();
        kill_processes_mentioning(&self.data_root());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.clean_up();
        if let Some(ns) = self.netns.take() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        if std::thread::panicking() {
            eprintln!("--- shoald log ({}) ---\n{}", self.host(), self.log());
        }
    }
}

/// A fresh named network namespace with loopback up, or `None` where one cannot be made
/// (not root, no iproute2): the daemon then shares the test's.
fn make_netns() -> Option<String> {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("shoal-t{}-{n}", std::process::id());
    let ok = |args: &[&str]| {
        Command::new("ip")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ok(&["netns", "add", &name]) {
        return None;
    }
    if !ok(&["-n", &name, "link", "set", "lo", "up"]) {
        let _ = ok(&["netns", "del", &name]);
        return None;
    }
    Some(name)
}

/// Kills (SIGKILL) every process whose command line mentions `path`: the supervisors of
/// containers under a data root that could not be removed normally.
fn kill_processes_mentioning(path: &Path) {
    let needle = path.as_os_str().as_encoded_bytes();
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if u32::try_from(pid).ok() == Some(me) {
            continue;
        }
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline.windows(needle.len()).any(|w| w == needle) {
            eprintln!("cleanup: killing leftover process {pid}");
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Runs `cmd` with piped stdio, feeding it `stdin`; panics if it does not end within
/// `timeout` (after killing it).
pub fn run_with_timeout(cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Output {
    try_run(cmd, stdin, timeout).unwrap_or_else(|err| panic!("{err}"))
}

/// [`run_with_timeout`] without the panic.
pub fn try_run(
    mut cmd: Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output, String> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    let feeder = match (stdin, child.stdin.take()) {
        (Some(data), Some(mut pipe)) => {
            let data = data.to_vec();
            // A command that does not read its input gets EPIPE; that is its business.
            Some(std::thread::spawn(move || {
                let _ = pipe.write_all(&data);
            }))
        }
        _ => None,
    };
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{cmd:?} did not finish within {timeout:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => return Err(format!("wait for {cmd:?}: {e}")),
        }
    };
    if let Some(feeder) = feeder {
        let _ = feeder.join();
    }
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// The repository's root (the workspace this crate belongs to).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

/// Writes the demo image's root filesystem tarball to `out`: with
/// `deploy/build-demo-image.sh` when the repository has it, else with [`write_demo_rootfs`].
pub fn build_demo_rootfs(out: &Path) {
    let script = repo_root().join("deploy/build-demo-image.sh");
    if script.is_file() {
        let mut cmd = Command::new("bash");
        cmd.arg(&script).arg(out);
        let built = run_with_timeout(cmd, None, COMMAND_TIMEOUT);
        assert!(
            built.status.success(),
            "{} failed ({}):\n{}",
            script.display(),
            built.status,
            String::from_utf8_lossy(&built.stderr)
        );
    } else {
        write_demo_rootfs(out).unwrap_or_else(|e| panic!("write {}: {e}", out.display()));
    }
}

/// The applets the fallback demo image links to busybox.
const DEMO_APPLETS: &[&str] = &[
    "sh", "true", "false", "sleep", "echo", "cat", "ls", "id", "hostname", "mount", "env", "pwd",
    "wget", "httpd", "nc",
];

/// Debian's statically linked busybox (package busybox-static).
const BUSYBOX: &str = "/bin/busybox";

/// A minimal demo root filesystem without the deploy script: `/bin/busybox` and a symlink
/// per applet in [`DEMO_APPLETS`], the usual mount points, and `/etc/passwd` with root,
/// nobody (65534) and a user 1000.
pub fn write_demo_rootfs(out: &Path) -> std::io::Result<()> {
    let busybox = fs::read(BUSYBOX).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("{BUSYBOX}: {e} (install it: apt-get install -y busybox-static)"),
        )
    })?;
    let mut tar = tar::Builder::new(File::create(out)?);
    append_top_dirs(&mut tar)?;
    let mut h = tar_header(tar::EntryType::Directory, 0o700, 0);
    tar.append_data(&mut h, "root", std::io::empty())?;
    let mut h = tar_header(tar::EntryType::Regular, 0o755, busybox.len() as u64);
    tar.append_data(&mut h, "bin/busybox", busybox.as_slice())?;
    for applet in DEMO_APPLETS {
        let mut h = tar_header(tar::EntryType::Symlink, 0o777, 0);
        tar.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    let passwd = "root:x:0:0:root:/root:/bin/sh\n\
                  user:x:1000:1000:user:/tmp:/bin/sh\n\
                  nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
    let group = "root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n";
    for (path, content) in [("etc/passwd", passwd), ("etc/group", group)] {
        let mut h = tar_header(tar::EntryType::Regular, 0o644, content.len() as u64);
        tar.append_data(&mut h, path, content.as_bytes())?;
    }
    tar.into_inner()?.sync_all()?;
    // Readable by the daemon whatever the umask.
    fs::set_permissions(out, fs::Permissions::from_mode(0o644))
}

/// A tar header owned by root, dated 0, so the images are reproducible.
fn tar_header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    h
}

/// The top-level directories every test image has, with their usual modes.
fn append_top_dirs(tar: &mut tar::Builder<File>) -> std::io::Result<()> {
    for (dir, mode) in [
        ("bin", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("tmp", 0o1777),
    ] {
        let mut h = tar_header(tar::EntryType::Directory, mode, 0);
        tar.append_data(&mut h, dir, std::io::empty())?;
    }
    Ok(())
}

/// An image root filesystem tarball holding one dynamically linked host binary at
/// `/bin/NAME` with the shared libraries `ldd` lists for it (at their host paths), and the
/// usual top-level directories: for test programs the demo image's busybox cannot stand in
/// for.
pub fn write_binary_image(out: &Path, binary: &Path) -> std::io::Result<()> {
    let ldd = Command::new("ldd").arg(binary).output()?;
    if !ldd.status.success() {
        return Err(std::io::Error::other(format!(
            "ldd {}: {}",
            binary.display(),
            String::from_utf8_lossy(&ldd.stderr)
        )));
    }
    // "libc.so.6 => /lib/…/libc.so.6 (0x…)" or, for the loader, "/lib64/ld-….so.2 (0x…)".
    let libs: Vec<PathBuf> = String::from_utf8_lossy(&ldd.stdout)
        .lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            match words.as_slice() {
                [_, "=>", path, ..] if path.starts_with('/') => Some(PathBuf::from(path)),
                [path, ..] if path.starts_with('/') => Some(PathBuf::from(path)),
                _ => None,
            }
        })
        .collect();
    let mut tar = tar::Builder::new(File::create(out)?);
    append_top_dirs(&mut tar)?;
    let name = binary
        .file_name()
        .ok_or_else(|| std::io::Error::other("binary path has no file name"))?;
    let entries = std::iter::once((Path::new("bin").join(name), binary.to_path_buf())).chain(
        libs.into_iter()
            .map(|l| (l.strip_prefix("/").unwrap_or(&l).to_path_buf(), l)),
    );
    for (inside, host) in entries {
        // Read through symlinks: the image gets the file itself at the path ldd printed.
        let data = fs::read(&host)?;
        let mut h = tar_header(tar::EntryType::Regular, 0o755, data.len() as u64);
        tar.append_data(&mut h, &inside, data.as_slice())?;
    }
    tar.into_inner()?.sync_all()?;
    fs::set_permissions(out, fs::Permissions::from_mode(0o644))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_demo_rootfs_has_busybox_and_applets() {
        if !Path::new(BUSYBOX).is_file() {
            eprintln!("skipping: {BUSYBOX} missing (apt-get install -y busybox-static)");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("rootfs.tar");
        write_demo_rootfs(&out).expect("write");
        let mut archive = tar::Archive::new(File::open(&out).expect("open"));
        let names: Vec<String> = archive
            .entries()
            .expect("entries")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .display()
                    .to_string()
            })
            .collect();
        for want in ["bin/busybox", "bin/sh", "bin/wget", "etc/passwd", "tmp"] {
            assert!(
                names.iter().any(|n| n.trim_end_matches('/') == want),
                "{want} missing from {names:?}"
            );
        }
    }

    #[test]
    fn runs_commands_with_stdin_and_timeout() {
        let out = run_with_timeout(Command::new("cat"), Some(b"hi"), Duration::from_secs(10));
        assert!(out.status.success());
        assert_eq!(out.stdout, b"hi");
    }
}
