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
//! pipe (see `shim::run`) attached as `SCM_RIGHTS`; the zygote forks the first shim process,
//! which does what `shoal-shim run DIR` does, waits for it (it exits as soon as the
//! supervisor is detached and the attach socket bound), and replies with its exit status as
//! 4 bytes. EOF on the socket (the runtime is gone) ends the zygote; supervisors it made
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

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType, UnixAddr,
};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};

/// Room for the container directory in a request (plus the flag byte).
const MAX_REQUEST: usize = 4096;

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
        let guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().map(|z| z.child.id())
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
        let mut reply = [0u8; 4];
        loop {
            match nix::unistd::read(sock, &mut reply) {
                Ok(4) => return Ok(i32::from_le_bytes(reply)),
                Err(nix::Error::EINTR) => continue,
                Ok(n) => {
                    *guard = None;
                    return Err(ZygoteError::NoReply(format!("{n}-byte reply")));
                }
                Err(e) => {
                    *guard = None;
                    return Err(ZygoteError::NoReply(e.to_string()));
                }
            }
        }
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
    let child = Command::new(shim)
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
    let sock = match take_stdin() {
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
        let code = match (report, buf[..len].split_first()) {
            (Some(report), Some((flag, dir))) if !dir.is_empty() => {
                let dir = Path::new(OsStr::from_bytes(dir));
                start_one(&sock, argv0, dir, *flag != 0, report)
            }
            // A malformed request starts nothing; the runtime then finds no report.
            _ => 125,
        };
        if nix::unistd::write(&sock, &code.to_le_bytes()).is_err() {
            return 1;
        }
    }
}

/// Moves the request socket off fd 0 (close-on-exec, so no container inherits it) and puts
/// /dev/null in its place.
fn take_stdin() -> nix::Result<OwnedFd> {
    let fd = nix::fcntl::fcntl(
        std::io::stdin().as_fd(),
        nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3),
    )?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let null = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    nix::unistd::dup2_stdin(&null)?;
    Ok(sock)
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
            // SAFETY: closing our copy of the socket; it is not used again in this process.
            unsafe { libc::close(sock.as_raw_fd()) };
            set_title(&format!(
                "{} run {}",
                Path::new(argv0).display(),
                dir.display()
            ));
            let code = super::shim::run_with_report(dir, attach, File::from(report));
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
        Err(_) => 125,
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
