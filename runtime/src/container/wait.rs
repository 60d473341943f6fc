//! Waiting for a container's process to end. The supervisor is not our child (it detached),
//! so we wait on a pidfd, which works for any process and tells exit without polling.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::state::{alive, files, read_json, StateFile};
use super::{ContainerError, Result, Runtime, State, Status};

/// How often to look again when the process outlived its supervisor (no pidfd to wait on).
const ORPHAN_POLL: Duration = Duration::from_millis(100);

impl Runtime {
    /// Blocks until the container's process has ended and returns its final state
    /// (immediately when it is not running).
    pub fn wait(&self, id: &str) -> Result<State> {
        self.wait_timeout(id, None)
    }

    /// As [`Runtime::wait`], giving up after `timeout`; returns the state at that moment.
    pub fn wait_timeout(&self, id: &str, timeout: Option<Duration>) -> Result<State> {
        let c = self.lookup(id)?;
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        loop {
            let state = self.load(&c.id)?.state;
            if state.status != Status::Running {
                return Ok(state);
            }
            let remaining =
                deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
            if remaining == Some(Duration::ZERO) {
                return Ok(state);
            }
            match self.exit_fd(&c.id)? {
                Some(fd) => {
                    let ms = remaining.map(|r| r.as_millis().min(u16::MAX as u128) as u16);
                    let timeout = ms.map(PollTimeout::from).unwrap_or(PollTimeout::NONE);
                    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                    match poll(&mut fds, timeout) {
                        Ok(_) | Err(nix::Error::EINTR) => {}
                        Err(source) => {
                            return Err(ContainerError::Sys {
                                op: "poll pidfd".into(),
                                source,
                            })
                        }
                    }
                }
                None => std::thread::sleep(ORPHAN_POLL),
            }
        }
    }

    /// A pidfd that becomes readable when the container's supervisor exits (after it has
    /// recorded the exit), for callers that wait asynchronously; `None` when there is no
    /// live supervisor.
    pub fn exit_fd(&self, id: &str) -> Result<Option<OwnedFd>> {
        let dir = self.container_dir(id);
        let Some(st) = read_json::<StateFile>(&dir, files::STATE)? else {
            return Ok(None);
        };
        let Ok(fd) = pidfd_open(st.shim_pid) else {
            return Ok(None);
        };
        // Checked after opening: the pidfd now pins the process, so a pid reused between
        // reading state.json and pidfd_open is caught here.
        if !alive(st.shim_pid, st.shim_start) {
            return Ok(None);
        }
        Ok(Some(fd))
    }
}

pub(crate) fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    if pid <= 0 {
        return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
    }
    // SAFETY: plain syscall; on success the kernel returns a new fd we take ownership of.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a freshly created descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
