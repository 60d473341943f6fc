//! The supervisors' zygote: one small `shoal-shim zygote` process per [`Runtime`] that forks
//! a new supervisor for each start, so that a start costs a fork of a 2 MB process instead of
//! an exec of the shim binary.
//!
//! Measured on the 2-core VM (`N=100 target/release/runtime-bench`): spawning the shim
//! took 1.5–1.9 ms from the runtime's `spawn` to the shim's `main`, of a 7.2 ms container
//! lifecycle: loading the binary, the dynamic loader's relocations, the page faults of a
//! fresh address space. A fork of the idle zygote shares all of that.
//!
//! Protocol, over a `SOCK_SEQPACKET` socketpair that is the zygote's stdin: the runtime sends
//! one message per start, `[attach flag] ++ container directory`, with the start report's
//! pipe (see `shim::run`) attached as `SCM_RIGHTS`. The zygote answers [`FORKING`] (or
//! [`NOT_STARTED`] for a request it cannot serve) *before* it forks, so that a runtime that
//! hears nothing knows nothing was started and may spawn the shim itself; it then forks the
//! first shim process, which does what `shoal-shim run DIR` does, waits for it (it exits as
//! soon as the supervisor is detached and the attach socket bound), and sends its exit status
//! as 4 bytes. EOF on the socket (the runtime is gone) ends the zygote; supervisors it made
//! live on, detached, as they always did.
//!
//! [`Runtime`]: crate::Runtime

use std::ffi::OsStr;
use std::fs::File;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType, UnixAddr,
};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};

/// Room for the container directory in a request (plus the flag byte).
const MAX_REQUEST: usize = 4096;

/// First answer: the request is good and the first shim is being forked.
const FORKING: u8 = b'f';
/// First answer: nothing was or will be started (a malformed request, a failed fork).
const NOT_STARTED: u8 = b'n';

/// Second answer, in place of an exit status: the fork failed, nothing was started.
const NOT_FORKED: i32 = -1;

/// How long a start waits for the zygote's answers. The first shim only reads the spec,
/// binds a socket and forks, in milliseconds; a zygote silent for this long is killed and
/// replaced, so that one stuck start does not hold up every other one on the node.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The environment variable whose value reserves room for the supervisors' titles: a forked
/// process cannot get a new argv, so it writes `shoal-shim run DIR` over the zygote's
/// argv and environment strings, which sit side by side on its stack (setproctitle's way),
/// and `ps` and `/proc/PID/cmdline` show which container a supervisor belongs to.
const TITLE_ENV: &str = "SHOAL_SHIM_TITLE_SPACE";
const TITLE_SPACE: usize = 1024;

/// The runtime's handle on its zygote, spawned on the first start and again after it died.
#[derive(Debug, Default)]
pub(crate) struct Zygotes {
    inner: Mutex<Option<Zygote>>,
}

#[derive(Debug)]
struct Zygote {
    /// `None` only while dropping: closed first, so the zygote sees EOF and exits.
    sock: Option<OwnedFd>,
    child: Child,
}

impl Drop for Zygote {
    fn drop(&mut self) {
        self.sock.take();
        let _ = self.child.wait();
    }
}

/// Why a request did not get its reply.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ZygoteError {
    /// Nothing was started: the caller may spawn the shim itself.
    #[error("zygote unavailable: {0}")]
    NotSent(String),
    /// The request went out but no reply came back: the zygote died, possibly after forking
    /// the shim. The start report tells whether a supervisor runs; starting another one
    /// could run the container twice.
    #[error("zygote went away during a start: {0}")]
    NoReply(String),
}

impl Zygotes {
    /// The zygote's pid, while there is one.
    pub(crate) fn pid(&self) -> Option<u32> {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let z = guard.as_mut()?;
        matches!(z.child.try_wait(), Ok(None)).then(|| z.child.id())
    }

    /// Has a new supervisor run `shoal-shim run dir [--attach]` with `report` as its report
    /// pipe; returns once its first process has exited (attach socket bound, supervisor
    /// detached), with that process's exit status.
    pub(crate) fn start(
        &self,
        shim: &Path,
        dir: &Path,
        attach: bool,
        report: &OwnedFd,
    ) -> Result<i32, ZygoteError> {
        let dir = dir.as_os_str().as_bytes();
        if dir.len() >= MAX_REQUEST {
            return Err(ZygoteError::NotSent("container path too long".into()));
        }
        let mut request = Vec::with_capacity(dir.len() + 1);
        request.push(u8::from(attach));
        request.extend_from_slice(dir);

        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        // A zygote that died since the last start is reaped and replaced now, not found out
        // by a failed send.
        if let Some(z) = guard.as_mut() {
            if !matches!(z.child.try_wait(), Ok(None)) {
                *guard = None;
            }
        }
        if guard.is_none() {
            *guard = Some(spawn(shim).map_err(|e| ZygoteError::NotSent(e.to_string()))?);
        }
        let Some(sock) = guard.as_ref().and_then(|z| z.sock.as_ref()) else {
            return Err(ZygoteError::NotSent("no socket".into()));
        };
        let fds = [report.as_raw_fd()];
        let sent = sendmsg::<UnixAddr>(
            sock.as_raw_fd(),
            &[IoSlice::new(&request)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        );
        if let Err(e) = sent {
            // Dead (EPIPE) or broken: the next start gets a new one.
            *guard = None;
            return Err(ZygoteError::NotSent(format!("send: {e}")));
        }
        let mut first = [0u8; 1];
        match receive_reply(sock, &mut first) {
            Ok(1) if first[0] == FORKING => {}
            Ok(1) if first[0] == NOT_STARTED => {
                return Err(ZygoteError::NotSent("the zygote did not start it".into()))
            }
            // Silent or gone before it said it forks: nothing was started.
            other => {
                kill_and_drop(&mut guard);
                return Err(ZygoteError::NotSent(format!("no answer: {other:?}")));
            }
        }
        let mut status = [0u8; 4];
        match receive_reply(sock, &mut status) {
            Ok(4) => match i32::from_le_bytes(status) {
                NOT_FORKED => Err(ZygoteError::NotSent("the zygote could not fork".into())),
                code => Ok(code),
            },
            other => {
                kill_and_drop(&mut guard);
                Err(ZygoteError::NoReply(format!("{other:?}")))
            }
        }
    }
}

/// One reply message into `buf`, waiting at most [`REPLY_TIMEOUT`]; its length (0 at EOF).
fn receive_reply(sock: &OwnedFd, buf: &mut [u8]) -> nix::Result<usize> {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => return Err(nix::Error::ETIMEDOUT),
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e),
        }
        match nix::unistd::read(sock, buf) {
            Err(nix::Error::EINTR) => continue,
            r => return r,
        }
    }
}

/// Ends a zygote that broke the protocol: SIGKILL (it may be stuck), then the drop reaps it.
fn kill_and_drop(guard: &mut Option<Zygote>) {
    if let Some(mut z) = guard.take() {
        let _ = z.child.kill();
    }
}

fn spawn(shim: &Path) -> std::io::Result<Zygote> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    // A clean environment: the supervisors never read one (the container's comes from its
    // spec), and the title space must directly follow the arguments.
    // The environment is cleared, so a relative path cannot be looked up in PATH later.
    let shim = std::fs::canonicalize(shim).unwrap_or_else(|_| shim.to_path_buf());
    let child = Command::new(&shim)
        .arg("zygote")
        .env_clear()
        .env(TITLE_ENV, " ".repeat(TITLE_SPACE))
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(Zygote {
        sock: Some(ours),
        child,
    })
}

/// `shoal-shim zygote`: serves start requests on stdin until EOF.
pub fn serve(argv0: &OsStr) -> i32 {
    // Its own session, as the supervisors have: a Ctrl-C to a foreground daemon's process
    // group must not take the zygote with it.
    let _ = nix::unistd::setsid();
    // Off fd 0, close-on-exec: no container may inherit it.
    let sock = match super::shim::take_std(super::shim::Std::In) {
        Ok(fd) => fd,
        Err(_) => return 1,
    };
    let mut buf = vec![0u8; MAX_REQUEST];
    loop {
        let (len, report) = match receive(&sock, &mut buf) {
            Ok(Some(r)) => r,
            Ok(None) => return 0,
            Err(nix::Error::EINTR) => continue,
            Err(_) => return 1,
        };
        let (Some(report), Some((flag, dir))) = (report, buf[..len].split_first()) else {
            if nix::unistd::write(&sock, &[NOT_STARTED]).is_err() {
                return 1;
            }
            continue;
        };
        if dir.is_empty() || nix::unistd::write(&sock, &[FORKING]).is_err() {
            return 1;
        }
        let dir = Path::new(OsStr::from_bytes(dir));
        let code = start_one(&sock, argv0, dir, *flag != 0, report);
        if nix::unistd::write(&sock, &code.to_le_bytes()).is_err() {
            return 1;
        }
    }
}

/// One request: its length in `buf` and the attached report pipe; `None` at EOF.
fn receive(sock: &OwnedFd, buf: &mut [u8]) -> nix::Result<Option<(usize, Option<OwnedFd>)>> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<UnixAddr>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut report = None;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for fd in fds {
                // SAFETY: the kernel just installed these fds in our table for us; every
                // one is owned (and closed) here, the first kept as the report pipe.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                report.get_or_insert(fd);
            }
        }
    }
    if msg.bytes == 0 && report.is_none() {
        return Ok(None);
    }
    Ok(Some((msg.bytes, report)))
}

/// Forks the first shim process for one start and waits for it; returns its exit status.
fn start_one(sock: &OwnedFd, argv0: &OsStr, dir: &Path, attach: bool, report: OwnedFd) -> i32 {
    // SAFETY: the zygote is single-threaded; the child runs the shim's start and exits.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            // The request socket is the zygote's, not the supervisor's.
            // SAFETY: closing our copy of the socket; this process never returns into the
            // zygote's loop (below it exits, a panic included), so nothing closes it again.
            unsafe { libc::close(sock.as_raw_fd()) };
            set_title(&format!(
                "{} run {}{}",
                Path::new(argv0).display(),
                dir.display(),
                if attach { " --attach" } else { "" }
            ));
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                super::shim::run_with_report(dir, attach, File::from(report))
            }))
            .unwrap_or(125);
            std::process::exit(code)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(report);
            loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => return code,
                    Ok(WaitStatus::Signaled(..)) => return 125,
                    Ok(_) | Err(nix::Error::EINTR) => continue,
                    Err(_) => return 125,
                }
            }
        }
        Err(_) => NOT_FORKED,
    }
}

/// Writes `title` over this process's argv and environment strings (see [`TITLE_ENV`]).
/// Best effort: a process that keeps the zygote's title works just the same.
fn set_title(title: &str) {
    let Some([arg_start, arg_end, env_start, env_end]) = arg_env_bounds() else {
        return;
    };
    // The kernel reads a title past the arguments only into an adjacent environment.
    if env_start != arg_end || env_end <= arg_end || arg_end <= arg_start {
        return;
    }
    let mut bytes = title.as_bytes().to_vec();
    // Only a non-NUL last argument byte makes the kernel read the title as one string.
    if bytes.len() < arg_end - arg_start {
        bytes.resize(arg_end - arg_start, b' ');
    }
    bytes.truncate(env_end - arg_start - 1);
    bytes.push(0);
    // SAFETY: [arg_start, env_end) is this process's own argument and environment area
    // (from /proc/self/stat), mapped and writable. The environment is cleared first so that
    // nothing reads the strings being overwritten; we are single-threaded.
    unsafe {
        libc::clearenv();
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), arg_start as *mut u8, bytes.len());
    }
}

/// `arg_start arg_end env_start env_end` from `/proc/self/stat` (fields 48–51).
fn arg_env_bounds() -> Option<[usize; 4]> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which may hold spaces: field 3 is the first.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<usize>().ok();
    Some([field(48)?, field(49)?, field(50)?, field(51)?])
}
