//! `Runtime::kill` and `Runtime::stop`.

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{ContainerError, Result, Runtime, Status};

impl Runtime {
    /// Sends `signal` (a number) to the container's process. Refused when not running.
    pub fn kill(&self, id: &str, signal: i32) -> Result<()> {
        let c = self.lookup(id)?;
        if c.state.status != Status::Running || c.state.pid <= 0 {
            return Err(ContainerError::NotRunning(c.id));
        }
        let sig = Signal::try_from(signal)
            .map_err(|_| ContainerError::InvalidSpec(format!("invalid signal: {signal}")))?;
        match kill(Pid::from_raw(c.state.pid), sig) {
            Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
            Err(source) => Err(ContainerError::Sys {
                op: format!("kill {} {sig}", c.state.pid),
                source,
            }),
        }
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
