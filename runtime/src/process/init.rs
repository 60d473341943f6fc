//! The container's init: the child the supervisor clones into new namespaces. It waits for
//! the supervisor's go (its cgroup is then set), builds the root filesystem, drops privileges
//! and execs the command. It never returns: it execs or reports why not and exits with
//! Docker's code (126 not executable, 127 not found, 125 anything else).
//!
//! It runs in a freshly cloned copy of the single-threaded supervisor, so allocation is safe.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::unistd::{setgroups, sethostname, setresgid, setresuid, Gid, Uid};

use crate::rootfs::{devices, mount as rmount, pivot};
use crate::security::{caps, seccomp};
use crate::spec::RunSpec;

/// Docker's exit code for "the command could not be executed".
pub const EXIT_CANNOT_EXECUTE: i32 = 126;
/// Docker's exit code for "the command was not found".
pub const EXIT_NOT_FOUND: i32 = 127;
/// Docker's exit code for a failure of the runtime itself.
pub const EXIT_RUNTIME: i32 = 125;

/// Containerd's default `RLIMIT_NOFILE` for containers.
const NOFILE_LIMIT: u64 = 1_048_576;

/// The file descriptors the init inherits from the supervisor.
pub struct InitFds {
    /// Read end of the go pipe: one byte once the supervisor has placed us in our cgroup.
    pub sync: OwnedFd,
    /// Write end of the error pipe (close-on-exec: EOF at the supervisor means exec worked).
    pub error: OwnedFd,
    /// The process's stdio.
    pub stdio: InitStdio,
}

/// Where the process's stdin, stdout and stderr come from.
pub enum InitStdio {
    /// Pipes (or /dev/null), installed as they are.
    Fds([OwnedFd; 3]),
    /// A terminal, opened by the init in the container's own devpts after pivot_root (so
    /// that `tty` and /dev/pts inside the container name it), its master end sent to the
    /// supervisor over this socket (SCM_RIGHTS), as runc's console socket does.
    Terminal(OwnedFd),
}

/// The contents of the files bind-mounted over the image's /etc ones. The init writes them
/// into the container's fresh /dev tmpfs, binds them into /etc and unlinks them from /dev:
/// they live in memory with the container, and cost no file (an inode on the data root's
/// file system, the slowest part of a start there) per container on disk.
pub struct EtcFiles {
    /// `/etc/hosts`.
    pub hosts: Vec<u8>,
    /// `/etc/hostname`.
    pub hostname: Vec<u8>,
    /// `/etc/resolv.conf`.
    pub resolv_conf: Vec<u8>,
}

/// A step that failed, with the exit code it maps to.
pub(crate) struct Failure {
    code: i32,
    message: String,
}

impl<E: std::fmt::Display> From<(i32, E)> for Failure {
    fn from((code, e): (i32, E)) -> Self {
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

fn runtime_err<E: std::fmt::Display>(e: E) -> Failure {
    Failure::from((EXIT_RUNTIME, e))
}

/// Runs the container's init; only returns (with the exit code) when it could not exec.
pub fn run(
    spec: &RunSpec,
    fds: InitFds,
    etc: &EtcFiles,
    program: &seccomp::SeccompProgram,
) -> isize {
    // The error pipe must outlive the setup steps, which consume the other fds.
    let InitFds { sync, error, stdio } = fds;
    let failure = match setup_and_exec(spec, sync, stdio, etc, program) {
        Ok(never) => match never {},
        Err(f) => f,
    };
    report(error.as_raw_fd(), &failure);
    failure.code as isize
}

fn report(fd: RawFd, failure: &Failure) {
    let mut msg = Vec::with_capacity(failure.message.len() + 1);
    msg.push(failure.code as u8);
    msg.extend_from_slice(failure.message.as_bytes());
    // SAFETY: fd is the error pipe's write end, owned by this process until exit.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let _ = nix::unistd::write(fd, &msg);
}

pub(crate) enum Never {}

fn setup_and_exec(
    spec: &RunSpec,
    sync: OwnedFd,
    stdio: InitStdio,
    etc: &EtcFiles,
    program: &seccomp::SeccompProgram,
) -> Result<Never, Failure> {
    // Wait for the go: until then we may not yet be in the container's cgroup.
    let mut go = [0u8; 1];
    match nix::unistd::read(&sync, &mut go) {
        Ok(1) => {}
        _ => return Err(runtime_err("supervisor went away before start")),
    }
    drop(sync);

    match &spec.network {
        crate::spec::NetworkMode::None => {
            loopback_up().map_err(|e| runtime_err(format!("bring up lo: {e}")))?;
        }
        crate::spec::NetworkMode::Path(path) => {
            let ns = std::fs::File::open(path).map_err(|e| {
                runtime_err(format!("open network namespace {}: {e}", path.display()))
            })?;
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                runtime_err(format!("join network namespace {}: {e}", path.display()))
            })?;
        }
        crate::spec::NetworkMode::Host => {}
    }
    rmount::make_private().map_err(runtime_err)?;
    rmount::mount_overlay(spec).map_err(runtime_err)?;
    rmount::mount_pseudo(&spec.rootfs).map_err(runtime_err)?;
    let dev = rmount::inside(&spec.rootfs, "dev").map_err(runtime_err)?;
    devices::create(&dev).map_err(runtime_err)?;
    // Made under a dot directory the container never sees (it is removed once bound), at
    // `containers/<id>/NAME` as in Docker: tools that find their container's id in
    // /proc/self/mountinfo (the root of the /etc/hostname mount) keep finding it.
    let scratch = dev.join(".shoal");
    let sources = scratch.join("containers").join(&spec.id);
    std::fs::create_dir_all(&sources)
        .map_err(|e| runtime_err(format!("create {}: {e}", sources.display())))?;
    for (name, content) in [
        ("hosts", &etc.hosts),
        ("hostname", &etc.hostname),
        ("resolv.conf", &etc.resolv_conf),
    ] {
        let source = sources.join(name);
        std::fs::write(&source, content)
            .map_err(|e| runtime_err(format!("write {}: {e}", source.display())))?;
        rmount::bind_file(&source, &spec.rootfs, &format!("etc/{name}")).map_err(runtime_err)?;
    }
    std::fs::remove_dir_all(&scratch)
        .map_err(|e| runtime_err(format!("remove {}: {e}", scratch.display())))?;
    pivot::pivot(&spec.rootfs).map_err(runtime_err)?;
    pivot::protect_paths().map_err(runtime_err)?;
    let cwd = Path::new(&spec.process.cwd);
    rmount::ensure_dir(cwd).map_err(runtime_err)?;
    if spec.read_only {
        rmount::remount_root_readonly().map_err(runtime_err)?;
    }
    sethostname(&spec.hostname).map_err(|e| runtime_err(format!("sethostname: {e}")))?;
    // The kernel refuses more than fs.nr_open (EPERM), which some hosts set lower.
    let nofile = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map_or(NOFILE_LIMIT, |max| max.min(NOFILE_LIMIT));
    if setrlimit(Resource::RLIMIT_NOFILE, nofile, nofile).is_err() {
        // Without CAP_SYS_RESOURCE (shoald itself confined) the hard limit cannot rise:
        // keep it, and give the container all of it.
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)
            .map_err(|e| runtime_err(format!("getrlimit NOFILE: {e}")))?;
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            .map_err(|e| runtime_err(format!("setrlimit NOFILE: {e}")))?;
    }

    let tty = matches!(stdio, InitStdio::Terminal(_));
    match stdio {
        InitStdio::Fds(fds) => install_stdio(&fds)?,
        InitStdio::Terminal(console) => {
            let slave = open_terminal(&console)?;
            let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| runtime_err(format!("dup: {e}")));
            install_stdio(&[dup(&slave)?, dup(&slave)?, slave])?;
        }
    }
    if tty {
        nix::unistd::setsid().map_err(|e| runtime_err(format!("setsid: {e}")))?;
        // SAFETY: TIOCSCTTY on fd 0, our terminal's slave end, with no pointer argument.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
            return Err(runtime_err(format!(
                "set controlling terminal: {}",
                std::io::Error::last_os_error()
            )));
        }
    }

    exec_process(&spec.process, program)
}

/// Drops privileges to the process's user and capabilities, applies no_new_privs and the
/// seccomp filter, and execs. Shared by the container's init and by `exec`.
pub(crate) fn exec_process(
    process: &crate::spec::ProcessSpec,
    program: &seccomp::SeccompProgram,
) -> Result<Never, Failure> {
    let cwd = Path::new(&process.cwd);
    let path = find_executable(process)?;
    caps::drop_bounding(&process.capabilities).map_err(runtime_err)?;
    let gids: Vec<Gid> = process
        .additional_gids
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    setgroups(&gids).map_err(|e| runtime_err(format!("setgroups: {e}")))?;
    let gid = Gid::from_raw(process.gid);
    setresgid(gid, gid, gid).map_err(|e| runtime_err(format!("setgid {}: {e}", process.gid)))?;
    let uid = Uid::from_raw(process.uid);
    setresuid(uid, uid, uid).map_err(|e| runtime_err(format!("setuid {}: {e}", process.uid)))?;
    caps::set_process(&process.capabilities, process.uid).map_err(runtime_err)?;
    nix::unistd::chdir(cwd).map_err(|e| {
        runtime_err(format!(
            "chdir to cwd (\"{}\") set in config.json failed: {e}",
            process.cwd
        ))
    })?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| runtime_err(format!("no_new_privs: {e}")))?;

    // Whatever the supervisor inherited (a daemon's sockets, a terminal's fds…) must not
    // reach the container: mark every fd above stdio close-on-exec. The error pipe already is.
    // SAFETY: plain syscall on our own fd table.
    if unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    } < 0
    {
        return Err(runtime_err(format!(
            "close_range: {}",
            std::io::Error::last_os_error()
        )));
    }
    reset_signals();
    let argv = cstrings(&process.args)?;
    let envp = cstrings(&process.env)?;
    let cpath = CString::new(path.as_os_str().as_encoded_bytes()).map_err(runtime_err)?;
    // Last step: after this only execve may run.
    seccomp::apply(program).map_err(runtime_err)?;
    let e = match nix::unistd::execve(&cpath, &argv, &envp) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let code = match e {
        nix::Error::ENOENT => EXIT_NOT_FOUND,
        _ => EXIT_CANNOT_EXECUTE,
    };
    Err(Failure {
        code,
        message: format!(
            "exec: \"{}\": {}",
            process.args.first().map(String::as_str).unwrap_or_default(),
            e.desc().to_lowercase()
        ),
    })
}

/// A new network namespace has its loopback down; Docker's `none` network has it up.
/// One SIOCSIFFLAGS ioctl: not worth a netlink dependency until bridge networking needs one.
fn loopback_up() -> std::io::Result<()> {
    // SAFETY: a plain datagram socket, owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned by nobody else.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we pass, which outlives
    // both calls.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Ignored signals survive execve, and whatever started the daemon may have ignored some
/// (Rust's runtime ignores SIGPIPE in the supervisor itself): start the process with every
/// signal at its default and none blocked, as Docker's containers do.
fn reset_signals() {
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // glibc refuses its two internal signals (32, 33) in sigaction(): use the syscall.
        #[cfg(target_arch = "x86_64")]
        {
            #[repr(C)]
            struct KernelSigaction {
                handler: usize,
                flags: u64,
                restorer: usize,
                mask: u64,
            }
            let act = KernelSigaction {
                handler: libc::SIG_DFL,
                flags: 0,
                restorer: 0,
                mask: 0,
            };
            // SAFETY: rt_sigaction with a valid kernel sigaction and no old-action pointer.
            unsafe {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    &act as *const KernelSigaction,
                    std::ptr::null_mut::<KernelSigaction>(),
                    8usize,
                )
            };
        }
        #[cfg(not(target_arch = "x86_64"))]
        // SAFETY: setting a default disposition installs no handler.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    // SAFETY: replacing our own signal mask with an empty set.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
}

/// Opens a new terminal in the container's devpts, hands its master end to the supervisor
/// over `console`, and returns the slave end.
fn open_terminal(console: &OwnedFd) -> Result<OwnedFd, Failure> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    let master = nix::fcntl::open(
        "/dev/ptmx",
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| runtime_err(format!("open /dev/ptmx: {e}")))?;
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int that outlives the call; TIOCGPTPEER returns a new fd
    // for the slave end (Linux 4.13+), which we take ownership of.
    let slave = unsafe {
        if libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) < 0 {
            return Err(runtime_err(format!(
                "unlock terminal: {}",
                std::io::Error::last_os_error()
            )));
        }
        let fd = libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY,
        );
        if fd < 0 {
            return Err(runtime_err(format!(
                "open terminal slave: {}",
                std::io::Error::last_os_error()
            )));
        }
        <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
    };
    let fds = [master.as_raw_fd()];
    sendmsg::<UnixAddr>(
        console.as_raw_fd(),
        &[std::io::IoSlice::new(b"t")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| runtime_err(format!("send terminal to supervisor: {e}")))?;
    Ok(slave)
}

fn install_stdio(stdio: &[OwnedFd; 3]) -> Result<(), Failure> {
    for (target, fd) in stdio.iter().enumerate() {
        // SAFETY: dup2 onto 0/1/2 of this single-threaded process; the source fds stay open
        // until after this loop.
        let rc = unsafe { libc::dup2(fd.as_raw_fd(), target as RawFd) };
        if rc < 0 {
            return Err(runtime_err(format!(
                "dup2 onto fd {target}: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}

fn cstrings(items: &[String]) -> Result<Vec<CString>, Failure> {
    items
        .iter()
        .map(|s| CString::new(s.as_bytes()).map_err(|_| runtime_err(format!("NUL byte in {s:?}"))))
        .collect()
}

/// Resolves `args[0]` as a shell would: a name with a `/` is used as it is, others are
/// looked up in the container's `PATH`. Errors carry Docker's wording and code.
fn find_executable(process: &crate::spec::ProcessSpec) -> Result<PathBuf, Failure> {
    let Some(name) = process.args.first() else {
        return Err(runtime_err("no command specified"));
    };
    if name.contains('/') {
        return check_executable(Path::new(name), name);
    }
    let path_var = process
        .env
        .iter()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or(crate::container::DEFAULT_PATH);
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(name);
        if let Ok(meta) = std::fs::metadata(&candidate) {
            if meta.is_file() {
                return check_executable(&candidate, name);
            }
        }
    }
    Err(Failure {
        code: EXIT_NOT_FOUND,
        message: format!("exec: \"{name}\": executable file not found in $PATH"),
    })
}

fn check_executable(path: &Path, name: &str) -> Result<PathBuf, Failure> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Failure {
            code: EXIT_NOT_FOUND,
            message: format!("exec: \"{name}\": stat {name}: no such file or directory"),
        }),
        Err(e) => Err(Failure {
            code: EXIT_CANNOT_EXECUTE,
            message: format!("exec: \"{name}\": {e}"),
        }),
        Ok(m) if m.is_dir() => Err(Failure {
            code: EXIT_CANNOT_EXECUTE,
            message: format!("exec: \"{name}\": is a directory"),
        }),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => Err(Failure {
            code: EXIT_CANNOT_EXECUTE,
            message: format!("exec: \"{name}\": permission denied"),
        }),
        Ok(_) => Ok(path.to_path_buf()),
    }
}

/// Parses an error-pipe message into (exit code, message).
pub fn parse_report(bytes: &[u8]) -> (i32, String) {
    match bytes.split_first() {
        Some((code, msg)) => (*code as i32, String::from_utf8_lossy(msg).into_owned()),
        None => (EXIT_RUNTIME, "container init failed".to_string()),
    }
}

pub(crate) use self::Failure as ExecFailure;

/// Reports an exec failure on the given fd (used by the exec path, which has no error pipe
/// and writes to stderr instead).
pub(crate) fn failure_parts(f: &ExecFailure) -> (i32, &str) {
    (f.code, &f.message)
}
