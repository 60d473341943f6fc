//! The supervisor (`shoal-shim`): one small, single-threaded process per container.
//!
//! `shoal-shim run DIR` starts the container described by `DIR/container.json`. It detaches
//! (forks, the parent exits, the child starts a session of its own) so that it outlives the
//! daemon that spawned it, creates the cgroup, clones the container's init into new
//! namespaces, reports the outcome on its stdout (JSON, then EOF), and then owns the
//! container: it copies its output into the log, waits
//! for it, records the exit in `exit.json` and removes the cgroup.
//!
//! `shoal-shim exec DIR PROCESS_JSON` runs one more process inside a running container, with
//! the caller's stdio, and exits with that process's exit code.
//!
//! Everything here is synchronous (poll, no async runtime) to keep an idle supervisor well
//! under 2 MB resident.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::CloneFlags;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, pipe2, ForkResult, Pid};
use serde::{Deserialize, Serialize};

use super::attach::{kind, write_frame, FrameBuffer, ATTACH_SOCKET};
use super::init::{self, EtcFiles, InitFds, InitStdio};
use crate::cgroups::{ContainerCgroup, Limits};
use crate::container::state::{
    files, proc_start_time, read_json, read_run_spec, write_json, ExitFile, StateFile,
};
use crate::logs::{LogWriter, Stream};
use crate::security::seccomp;
use crate::spec::{NetworkMode, ProcessSpec, RunSpec};

/// Stack for the cloned init. Only the pages it touches are ever backed by memory.
const INIT_STACK_SIZE: usize = 1024 * 1024;

/// After the init exits, the kernel kills the rest of its pid namespace and the pipes reach
/// EOF almost at once; this bounds the wait in case something else still holds them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// What `run` reports on its stdout.
#[derive(Debug, Serialize, Deserialize)]
pub enum StartReport {
    /// The process was exec'd.
    Started {
        /// Host pid of the container's process.
        pid: i32,
        /// Host pid of the supervisor.
        shim_pid: i32,
    },
    /// It was not; `code` is Docker's 125/126/127.
    Failed {
        /// Exit code.
        code: i32,
        /// Reason.
        message: String,
    },
}

/// Entry point of the `shoal-shim` binary; returns the process exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    let arg = |i: usize| args.get(i).and_then(|a| a.to_str());
    match (arg(1), arg(2)) {
        (Some("run"), Some(dir)) => run(Path::new(dir), arg(3) == Some("--attach")),
        (Some("exec"), Some(dir)) => match arg(3) {
            Some(process) => exec(Path::new(dir), process),
            None => usage(),
        },
        (Some("zygote"), None) => match args.first() {
            Some(argv0) => super::zygote::serve(argv0),
            None => usage(),
        },
        _ => usage(),
    }
}

fn usage() -> i32 {
    eprintln!(
        "usage: shoal-shim run DIR [--attach] | shoal-shim exec DIR PROCESS_JSON | shoal-shim zygote"
    );
    2
}

fn run(dir: &Path, attach_first: bool) -> i32 {
    // The runtime passes the report pipe as stdout, so that it can spawn us without running
    // code between fork and exec (posix_spawn). Keep it on a close-on-exec fd of its own (the
    // container's init must not inherit it: EOF on it tells the runtime we are done) and put
    // /dev/null in its place.
    match take_std(Std::Out) {
        Ok(report) => run_with_report(dir, attach_first, File::from(report)),
        Err(_) => 125,
    }
}

/// `run` with the report pipe in hand: from `run` itself, or in a process the zygote forked.
pub(crate) fn run_with_report(dir: &Path, attach_first: bool, mut report: File) -> i32 {
    let spec: RunSpec = match read_run_spec(dir) {
        Ok(Some(spec)) => spec,
        Ok(None) => return fail_start(&mut report, dir, 125, "run spec missing".into()),
        Err(e) => return fail_start(&mut report, dir, 125, e.to_string()),
    };

    // Bound before we detach, so the runtime can connect as soon as our parent has exited
    // (the connection waits in the backlog until we accept it).
    let listener = match bind_attach(dir) {
        Ok(l) => l,
        Err(e) => return fail_start(&mut report, dir, 125, format!("attach socket: {e}")),
    };

    // Detach: the runtime reaps our parent at once; we are re-parented and outlive it.
    // SAFETY: single-threaded here; the child only continues this function.
    match unsafe { fork() } {
        Ok(ForkResult::Parent { .. }) => return 0,
        Ok(ForkResult::Child) => {}
        Err(e) => return fail_start(&mut report, dir, 125, format!("fork supervisor: {e}")),
    }
    // A session of our own: a signal to the daemon's process group (Ctrl-C on a foreground
    // daemon) must not reach the supervisor. Cannot fail: a forked child leads no group.
    let _ = nix::unistd::setsid();
    let first = if attach_first {
        accept_first(&listener)
    } else {
        None
    };
    supervise(dir, &spec, report, Io { listener, first })
}

/// A standard stream [`take_std`] moves.
#[derive(Clone, Copy)]
pub(crate) enum Std {
    In,
    Out,
}

/// Moves stdin or stdout to a new close-on-exec fd (nothing exec'd later inherits it) and
/// puts /dev/null in its place; returns the moved fd. How the runtime hands the shim its
/// report pipe (stdout) and the zygote its request socket (stdin).
pub(crate) fn take_std(which: Std) -> nix::Result<OwnedFd> {
    let dup = nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3);
    let moved = match which {
        Std::In => nix::fcntl::fcntl(std::io::stdin().as_fd(), dup)?,
        Std::Out => nix::fcntl::fcntl(std::io::stdout().as_fd(), dup)?,
    };
    // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nothing else owns.
    let moved = unsafe { OwnedFd::from_raw_fd(moved) };
    let null = nix::fcntl::open(
        "/dev/null",
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    match which {
        Std::In => nix::unistd::dup2_stdin(&null)?,
        Std::Out => nix::unistd::dup2_stdout(&null)?,
    }
    Ok(moved)
}

/// How long a `--attach` start waits for the runtime's connection before going on without.
const ATTACH_WAIT: Duration = Duration::from_secs(10);

fn bind_attach(dir: &Path) -> std::io::Result<UnixListener> {
    // Unix socket paths are limited to 108 bytes: bind relative to the directory (we are
    // single-threaded, so changing directory is safe here).
    std::env::set_current_dir(dir)?;
    let _ = std::fs::remove_file(ATTACH_SOCKET);
    let listener = UnixListener::bind(ATTACH_SOCKET)?;
    std::fs::set_permissions(ATTACH_SOCKET, std::fs::Permissions::from_mode(0o600))?;
    std::env::set_current_dir("/")?;
    Ok(listener)
}

fn accept_first(listener: &UnixListener) -> Option<UnixStream> {
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    let ms = ATTACH_WAIT.as_millis() as u16;
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(n) if n > 0 => listener.accept().ok().map(|(s, _)| s),
        _ => None,
    }
}

/// The supervisor's side of the attach socket.
struct Io {
    listener: UnixListener,
    /// The client of a `--attach` start, connected before the process starts.
    first: Option<UnixStream>,
}

/// Writes a failed start to the report pipe and to `exit.json`; returns the shim's exit code.
fn fail_start(report: &mut File, dir: &Path, code: i32, message: String) -> i32 {
    let exit = ExitFile {
        exit_code: code,
        oom_killed: false,
        finished_at: now(),
        error: message.clone(),
    };
    let _ = write_json(dir, files::EXIT, &exit);
    send_report(report, &StartReport::Failed { code, message });
    1
}

/// Writes the report in one `write`: serde_json writes an unbuffered `File` token by token,
/// and every write to the pipe wakes the runtime that waits on its other end.
fn send_report(report: &mut File, outcome: &StartReport) {
    if let Ok(bytes) = serde_json::to_vec(outcome) {
        let _ = report.write_all(&bytes);
    }
}

fn now() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

struct Pipes {
    read: OwnedFd,
    write: OwnedFd,
}

fn pipe() -> nix::Result<Pipes> {
    let (read, write) = pipe2(OFlag::O_CLOEXEC)?;
    Ok(Pipes { read, write })
}

fn etc_files(spec: &RunSpec) -> EtcFiles {
    let mut hosts =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    match spec.names.as_ref().filter(|n| !n.hosts.is_empty()) {
        Some(names) => {
            for (addr, name) in &names.hosts {
                hosts.push_str(&format!("{addr}\t{name}\n"));
            }
        }
        None => hosts.push_str(&format!("127.0.1.1\t{}\n", spec.hostname)),
    }
    let resolv_conf = match (&spec.network, &spec.names) {
        (_, Some(names)) => names.resolv_conf.clone().into_bytes(),
        (NetworkMode::Host | NetworkMode::Path(_), None) => {
            std::fs::read("/etc/resolv.conf").unwrap_or_default()
        }
        (NetworkMode::None, None) => Vec::new(),
    };
    EtcFiles {
        hosts: hosts.into_bytes(),
        hostname: format!("{}\n", spec.hostname).into_bytes(),
        resolv_conf,
    }
}

fn supervise(dir: &Path, spec: &RunSpec, mut report: File, io: Io) -> i32 {
    let limits = Limits {
        memory: spec.memory,
        nano_cpus: spec.nano_cpus,
        pids: spec.pids_limit,
    };
    let cgroup = match ContainerCgroup::create(&spec.cgroup, &spec.id, &limits) {
        Ok(cg) => cg,
        Err(e) => return fail_start(&mut report, dir, 125, format!("create cgroup: {e}")),
    };
    match start(spec, &cgroup) {
        Ok(started) => {
            let state = StateFile {
                pid: started.pid.as_raw(),
                pid_start: proc_start_time(started.pid.as_raw()).unwrap_or_default(),
                shim_pid: std::process::id() as i32,
                shim_start: proc_start_time(std::process::id() as i32).unwrap_or_default(),
                started_at: now(),
            };
            if let Err(e) = write_json(dir, files::STATE, &state) {
                let _ = nix::sys::signal::kill(started.pid, nix::sys::signal::SIGKILL);
                let _ = waitpid(started.pid, None);
                let _ = cgroup.remove();
                return fail_start(&mut report, dir, 125, format!("write state.json: {e}"));
            }
            send_report(
                &mut report,
                &StartReport::Started {
                    pid: state.pid,
                    shim_pid: state.shim_pid,
                },
            );
            drop(report);
            let _exit = watch(dir, spec, started, &cgroup, io);
            0
        }
        Err((code, message)) => {
            let _ = cgroup.remove();
            fail_start(&mut report, dir, code, message)
        }
    }
}

struct Started {
    pid: Pid,
    /// Output streams: stdout and stderr pipes, or the terminal's master alone.
    outputs: Vec<(Stream, OwnedFd)>,
    /// Where stdin bytes go: the stdin pipe or the terminal's master; `None` without `-i`.
    stdin: Option<OwnedFd>,
    /// The terminal's master, for resizes.
    tty: Option<OwnedFd>,
}

/// The container's stdio: the init's ends and the supervisor's ends.
struct Stdio {
    child: InitStdio,
    outputs: Vec<(Stream, OwnedFd)>,
    stdin: Option<OwnedFd>,
    /// With a terminal: our end of the console socket, on which the init sends the master.
    console: Option<OwnedFd>,
}

fn stdio(spec: &RunSpec) -> std::io::Result<Stdio> {
    let open_stdin = spec.process.open_stdin;
    if spec.process.tty {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        return Ok(Stdio {
            child: InitStdio::Terminal(theirs),
            outputs: Vec::new(),
            stdin: None,
            console: Some(ours),
        });
    }
    let out = pipe()?;
    let err = pipe()?;
    let (child_stdin, stdin) = if open_stdin {
        let p = pipe()?;
        (p.read, Some(p.write))
    } else {
        (OwnedFd::from(File::open("/dev/null")?), None)
    };
    Ok(Stdio {
        child: InitStdio::Fds([child_stdin, out.write, err.write]),
        outputs: vec![(Stream::Stdout, out.read), (Stream::Stderr, err.read)],
        stdin,
        console: None,
    })
}

/// Receives the terminal's master end from the init; `None` if the init failed first.
fn receive_terminal(console: &OwnedFd) -> std::io::Result<Option<OwnedFd>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<UnixAddr>(
        std::os::fd::AsRawFd::as_raw_fd(console),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(fd) = fds.first() {
                // SAFETY: the kernel just installed this fd in our table for us.
                return Ok(Some(unsafe { OwnedFd::from_raw_fd(*fd) }));
            }
        }
    }
    Ok(None)
}

/// Clones the init, places it in the cgroup, lets it go and waits until it has exec'd.
fn start(spec: &RunSpec, cgroup: &ContainerCgroup) -> Result<Started, (i32, String)> {
    let internal = |what: &str, e: &dyn std::fmt::Display| (125, format!("{what}: {e}"));
    let program = seccomp::default_program().map_err(|e| internal("seccomp", &e))?;
    let etc = etc_files(spec);
    let stdio = stdio(spec).map_err(|e| internal("set up stdio", &e))?;
    let sync = pipe().map_err(|e| internal("pipe", &e))?;
    let errpipe = pipe().map_err(|e| internal("pipe", &e))?;

    let mut flags = CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    // A sandbox is joined by the init itself, before anything else (init::run).
    if spec.network == NetworkMode::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    let mut child_fds = Some(InitFds {
        sync: sync.read,
        error: errpipe.write,
        stdio: stdio.child,
    });
    let mut stack = vec![0u8; INIT_STACK_SIZE];
    let cb = Box::new(|| match child_fds.take() {
        Some(fds) => init::run(spec, fds, &etc, &program),
        None => 125,
    });
    // SAFETY: this process is single-threaded, the child gets its own copy of memory (no
    // CLONE_VM) and runs only `init::run`, which execs or exits.
    let pid = unsafe { nix::sched::clone(cb, &mut stack, flags, Some(libc::SIGCHLD)) }
        .map_err(|e| internal("clone", &e))?;
    // Our copies of the child's ends must close, or we would never see EOF on them.
    drop(child_fds);

    let abort = |code: i32, message: String| {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGKILL);
        let _ = waitpid(pid, None);
        (code, message)
    };
    if let Err(e) = cgroup.add_process(pid.as_raw()) {
        return Err(abort(125, format!("join cgroup: {e}")));
    }
    if let Err(e) = nix::unistd::write(&sync.write, &[1]) {
        return Err(abort(125, format!("start init: {e}")));
    }
    drop(sync.write);
    // With a terminal the init sends its master end before it execs (or fails and closes
    // the socket, which the error pipe then explains).
    let terminal = match &stdio.console {
        Some(console) => match receive_terminal(console) {
            Ok(t) => t,
            Err(e) => return Err(abort(125, format!("receive terminal: {e}"))),
        },
        None => None,
    };
    let mut failure = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match nix::unistd::read(&errpipe.read, &mut buf) {
            Ok(0) => break,
            Ok(n) => failure.extend_from_slice(&buf[..n]),
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(abort(125, format!("read init report: {e}"))),
        }
    }
    if !failure.is_empty() {
        let (code, message) = init::parse_report(&failure);
        let _ = waitpid(pid, None);
        return Err((code, message));
    }
    let (mut outputs, mut stdin) = (stdio.outputs, stdio.stdin);
    if let Some(master) = &terminal {
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| abort(125, format!("dup: {e}")));
        outputs.push((Stream::Stdout, dup(master)?));
        if spec.process.open_stdin {
            stdin = Some(dup(master)?);
        }
    }
    Ok(Started {
        pid,
        outputs,
        stdin,
        tty: terminal,
    })
}

fn pidfd_open(pid: Pid) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; on success the kernel returns a new fd we take ownership of.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a freshly created, owned descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// An attached client: output goes to it as frames, its frames feed stdin.
struct Client {
    stream: UnixStream,
    frames: FrameBuffer,
}

/// A client that cannot take output for this long is dropped, so that one stuck client
/// never stalls the container (its output is in the log anyway).
const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Stdin bytes waiting for the process to read them; past this we stop reading clients.
const STDIN_BACKLOG: usize = 1 << 20;

impl Client {
    fn new(stream: UnixStream) -> Client {
        let _ = stream.set_write_timeout(Some(CLIENT_WRITE_TIMEOUT));
        Client {
            stream,
            frames: FrameBuffer::default(),
        }
    }
}

#[derive(Clone, Copy)]
enum Tag {
    Output(usize),
    Pid,
    Listener,
    Client(usize),
    Stdin,
}

/// The supervisor's event loop: copies output into the log and to attached clients, feeds
/// stdin from clients, until the process has exited and its output is drained.
fn watch(
    dir: &Path,
    spec: &RunSpec,
    started: Started,
    cgroup: &ContainerCgroup,
    io: Io,
) -> ExitFile {
    let mut log = match LogWriter::open(dir, spec.log_max_size) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(?e, "open log");
            None
        }
    };
    let pidfd = pidfd_open(started.pid).ok();
    let mut outputs: Vec<(Stream, Option<OwnedFd>)> = started
        .outputs
        .into_iter()
        .map(|(s, f)| (s, Some(f)))
        .collect();
    let mut stdin = started.stdin;
    if let Some(fd) = &stdin {
        let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
    }
    let mut pending: Vec<u8> = Vec::new();
    let mut close_stdin = false;
    let tty = started.tty;
    let listener = io.listener;
    let _ = listener.set_nonblocking(true);
    let mut clients: Vec<Client> = io.first.into_iter().map(Client::new).collect();
    let mut status: Option<i32> = None;
    let mut drain_deadline: Option<Instant> = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if status.is_some() && outputs.iter().all(|(_, fd)| fd.is_none()) {
            break;
        }
        if drain_deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let mut tags = Vec::new();
        let mut fds = Vec::new();
        for (i, (_, fd)) in outputs.iter().enumerate() {
            if let Some(fd) = fd {
                tags.push(Tag::Output(i));
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
            }
        }
        if status.is_none() {
            if let Some(p) = &pidfd {
                tags.push(Tag::Pid);
                fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
            }
        }
        tags.push(Tag::Listener);
        fds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
        if pending.len() < STDIN_BACKLOG {
            for (i, c) in clients.iter().enumerate() {
                tags.push(Tag::Client(i));
                fds.push(PollFd::new(c.stream.as_fd(), PollFlags::POLLIN));
            }
        }
        if !pending.is_empty() {
            if let Some(fd) = &stdin {
                tags.push(Tag::Stdin);
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLOUT));
            }
        }
        // Without a pidfd (very old kernels) or while draining, look again every 100 ms.
        let timeout = if status.is_some() || pidfd.is_none() {
            PollTimeout::from(100u16)
        } else {
            PollTimeout::NONE
        };
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => {
                tracing::warn!(?e, "poll");
                break;
            }
        }
        let ready: Vec<Tag> = fds
            .iter()
            .zip(&tags)
            .filter(|(f, _)| f.revents().is_some_and(|r| !r.is_empty()))
            .map(|(_, t)| *t)
            .collect();
        drop(fds);
        let mut dead = vec![false; clients.len()];
        for tag in ready {
            match tag {
                Tag::Output(i) => {
                    let (stream, fd) = &mut outputs[i];
                    let Some(f) = fd.as_ref() else { continue };
                    match nix::unistd::read(f, &mut buf) {
                        // EIO: a terminal whose last slave end closed.
                        Ok(0) | Err(nix::Error::EIO) => *fd = None,
                        Ok(n) => {
                            if let Some(l) = log.as_mut() {
                                if let Err(e) = l.write(*stream, &buf[..n]) {
                                    tracing::warn!(?e, "write log");
                                }
                            }
                            let k = match stream {
                                Stream::Stdout => kind::STDOUT,
                                Stream::Stderr => kind::STDERR,
                            };
                            for (c, d) in clients.iter_mut().zip(dead.iter_mut()) {
                                if write_frame(&mut c.stream, k, &buf[..n]).is_err() {
                                    *d = true;
                                }
                            }
                        }
                        Err(nix::Error::EINTR | nix::Error::EAGAIN) => {}
                        Err(_) => *fd = None,
                    }
                }
                Tag::Pid => {}
                Tag::Listener => {
                    if let Ok((stream, _)) = listener.accept() {
                        let _ = stream.set_nonblocking(false);
                        clients.push(Client::new(stream));
                        dead.push(false);
                    }
                }
                Tag::Client(i) => {
                    let c = &mut clients[i];
                    match nix::unistd::read(c.stream.as_fd(), &mut buf) {
                        Ok(0) | Err(_) => dead[i] = true,
                        Ok(n) => match c.frames.push(&buf[..n]) {
                            Ok(frames) => {
                                for (k, payload) in frames {
                                    match k {
                                        kind::STDIN => pending.extend_from_slice(&payload),
                                        kind::STDIN_CLOSE => close_stdin = true,
                                        kind::RESIZE => resize(tty.as_ref(), &payload),
                                        _ => {}
                                    }
                                }
                            }
                            Err(_) => dead[i] = true,
                        },
                    }
                }
                Tag::Stdin => {
                    if let Some(fd) = &stdin {
                        match nix::unistd::write(fd, &pending) {
                            Ok(n) => {
                                pending.drain(..n);
                            }
                            Err(nix::Error::EAGAIN | nix::Error::EINTR) => {}
                            Err(_) => {
                                // The process closed its stdin: nothing more can go in.
                                pending.clear();
                                stdin = None;
                            }
                        }
                    }
                }
            }
        }
        if close_stdin && pending.is_empty() && tty.is_none() {
            stdin = None;
        }
        let mut i = 0;
        clients.retain(|_| {
            i += 1;
            !dead[i - 1]
        });
        if status.is_none() {
            match waitpid(started.pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => status = Some(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => status = Some(128 + sig as i32),
                Ok(_) => {}
                Err(_) => status = Some(255),
            }
            if status.is_some() {
                drain_deadline = Some(Instant::now() + DRAIN_TIMEOUT);
            }
        }
    }
    let exit = ExitFile {
        exit_code: status.unwrap_or(255),
        oom_killed: cgroup.oom_killed(),
        finished_at: now(),
        error: String::new(),
    };
    // Tidy up *before* exit.json: once it exists the container counts as exited and may be
    // started again, and a new supervisor's cgroup and socket must not be ours to remove.
    let _ = std::fs::remove_file(dir.join(ATTACH_SOCKET));
    if let Err(e) = cgroup.remove() {
        tracing::warn!(?e, "remove cgroup");
    }
    // Recorded before clients hear of it, so that whoever reacts to the exit frame (e.g. a
    // `--rm`) finds the exit on disk.
    let _ = write_json(dir, files::EXIT, &exit);
    for c in &mut clients {
        let _ = write_frame(&mut c.stream, kind::EXIT, &exit.exit_code.to_le_bytes());
    }
    exit
}

fn resize(tty: Option<&OwnedFd>, payload: &[u8]) {
    let (Some(fd), [r0, r1, c0, c1]) = (tty, payload) else {
        return;
    };
    let ws = libc::winsize {
        ws_row: u16::from_le_bytes([*r0, *r1]),
        ws_col: u16::from_le_bytes([*c0, *c1]),
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize struct that lives for the duration of the call.
    unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(fd), libc::TIOCSWINSZ, &ws) };
}

/// `shoal-shim exec DIR PROCESS_JSON`: joins the running container and runs the process.
fn exec(dir: &Path, process_json: &str) -> i32 {
    match exec_inner(dir, process_json) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("OCI runtime exec failed: {message}");
            125
        }
    }
}

fn exec_inner(dir: &Path, process_json: &str) -> Result<i32, String> {
    let process: ProcessSpec =
        serde_json::from_str(process_json).map_err(|e| format!("bad process spec: {e}"))?;
    let spec: RunSpec = read_run_spec(dir)
        .map_err(|e| e.to_string())?
        .ok_or("run spec missing")?;
    let state: StateFile = read_json(dir, files::STATE)
        .map_err(|e| e.to_string())?
        .ok_or("container is not running")?;
    if read_json::<ExitFile>(dir, files::EXIT)
        .map_err(|e| e.to_string())?
        .is_some()
        || !crate::container::state::alive(state.pid, state.pid_start)
    {
        return Err(format!("container {} is not running", spec.id));
    }
    let program = seccomp::default_program().map_err(|e| e.to_string())?;
    // Open every namespace before entering any: after the mount namespace /proc is the
    // container's.
    let mut namespaces = Vec::new();
    for ns in ["ipc", "uts", "net", "pid", "mnt"] {
        let path = PathBuf::from(format!("/proc/{}/ns/{ns}", state.pid));
        let f = File::open(&path).map_err(|e| format!("open {}: {e}", path.display()))?;
        namespaces.push((ns, f));
    }
    let cgroup = ContainerCgroup::open(&spec.cgroup, &spec.id);
    cgroup
        .add_process(std::process::id() as i32)
        .map_err(|e| format!("join cgroup: {e}"))?;
    for (ns, f) in &namespaces {
        nix::sched::setns(f, CloneFlags::empty()).map_err(|e| format!("setns {ns}: {e}"))?;
    }
    drop(namespaces);
    // A new pid namespace applies to children only: fork so the process is inside it.
    // SAFETY: single-threaded; the child only execs or exits.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            let failure = match init::exec_process(&process, &program) {
                Ok(never) => match never {},
                Err(f) => f,
            };
            let (code, message) = init::failure_parts(&failure);
            eprintln!("OCI runtime exec failed: exec failed: {message}");
            let _ = std::io::stderr().flush();
            // SAFETY: leaving the forked child without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
                Ok(_) => continue,
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(format!("wait: {e}")),
            }
        },
    }
}
