//! `Runtime::kill` and `Runtime::stop`.

use std::time::Duration;

use std::os::fd::AsRawFd;

use nix::sys::signal::Signal;

use super::state::{alive, files, read_json, StateFile};
use super::wait::pidfd_open;
use super::{ContainerError, Result, Runtime, Status};

/// Linux's highest real-time signal (glibc's SIGRTMAX on x86_64 and aarch64).
const SIGRTMAX: i32 = 64;

impl Runtime {
    /// Sends `signal` (a number) to the container's process. Refused when not running.
    pub fn kill(&self, id: &str, signal: i32) -> Result<()> {
        if !(1..=SIGRTMAX).contains(&signal) {
            return Err(ContainerError::InvalidSpec(format!(
                "invalid signal: {signal}"
            )));
        }
        let c = self.lookup(id)?;
        let started: Option<StateFile> = read_json(&self.container_dir(&c.id), files::STATE)?;
        let (Status::Running, Some(st)) = (c.state.status, started) else {
            return Err(ContainerError::NotRunning(c.id));
        };
        // Signal through a pidfd checked against the recorded start time: the supervisor
        // reaps the process before it records the exit, so its pid may already be reused.
        let not_running = || ContainerError::NotRunning(c.id.clone());
        let fd = pidfd_open(st.pid).map_err(|_| not_running())?;
        if !alive(st.pid, st.pid_start) {
            return Err(not_running());
        }
        // SAFETY: plain syscall on a pidfd we own; no siginfo pointer.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            let e = nix::Error::last();
            if e == nix::Error::ESRCH {
                return Ok(());
            }
            return Err(ContainerError::Sys {
                op: format!("kill {} {signal}", st.pid),
                source: e,
            });
        }
        Ok(())
    }

    /// `docker stop`: the image's stop signal (SIGTERM by default), `grace` to exit, then
    /// SIGKILL; blocks until the process is gone. A container that is not running is left as
    /// it is.
    pub fn stop(&self, id: &str, grace: Duration) -> Result<()> {
        let c = self.lookup(id)?;
        if c.state.status != Status::Running {
            return Ok(());
        }
        let stop_signal = self
            .images
            .resolve(&c.image_id)
            .ok()
            .and_then(|i| i.config.stop_signal)
            .and_then(|s| parse_signal(&s).ok())
            .unwrap_or(libc::SIGTERM);
        if !grace.is_zero() {
            match self.kill(&c.id, stop_signal) {
                Ok(()) | Err(ContainerError::NotRunning(_)) => {}
                Err(e) => return Err(e),
            }
            if self.wait_timeout(&c.id, Some(grace))?.status != Status::Running {
                return Ok(());
            }
        }
        match self.kill(&c.id, libc::SIGKILL) {
            Ok(()) | Err(ContainerError::NotRunning(_)) => {}
            Err(e) => return Err(e),
        }
        self.wait(&c.id).map(|_| ())
    }
}

/// Parses `SIGTERM`, `TERM`, `term` or `15`.
pub fn parse_signal(s: &str) -> Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n)
            .map(|sig| sig as i32)
            .map_err(|_| ContainerError::InvalidSpec(format!("invalid signal: {s}")));
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>()
        .map(|sig| sig as i32)
        .map_err(|_| ContainerError::InvalidSpec(format!("invalid signal: {s}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals() {
        assert_eq!(parse_signal("TERM").expect("TERM"), libc::SIGTERM);
        assert_eq!(parse_signal("sigkill").expect("kill"), libc::SIGKILL);
        assert_eq!(parse_signal("9").expect("9"), 9);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("99").is_err());
    }
}
