//! `Runtime::start`: hands the container to a new supervisor (`shoal-shim run`).

use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};

use nix::fcntl::OFlag;

use super::state::files;
use super::{Container, ContainerError, Result, Runtime, Status};
use crate::process::shim::StartReport;
use crate::process::zygote::ZygoteError;

impl Runtime {
    /// Starts the container's process under a new supervisor and returns once the process
    /// has been exec'd (or failed to: [`ContainerError::StartFailed`] carries Docker's
    /// 125/126/127). Starting a running container is a no-op; starting an exited one runs it
    /// again with the same upper directory, as `docker start` does.
    pub fn start(&self, id: &str) -> Result<Container> {
        self.start_with(id, false).map(|(c, _)| c)
    }

    /// As [`Runtime::start`], attached from the first byte: the supervisor holds the process
    /// back until this connection is in place, so no output is missed and stdin (with `-i`)
    /// is live from the start. Speaks [`crate::process::attach`]'s frames.
    pub fn start_attached(&self, id: &str) -> Result<(Container, UnixStream)> {
        let (c, stream) = self.start_with(id, true)?;
        match stream {
            Some(s) => Ok((c, s)),
            None => Err(ContainerError::StartFailed {
                code: 125,
                message: "container is already running".into(),
            }),
        }
    }

    /// The pid of the process that forks this runtime's supervisors (`shoal-shim zygote`),
    /// once a container was started; for diagnostics and tests.
    pub fn zygote_pid(&self) -> Option<u32> {
        self.zygotes.pid()
    }

    /// Attaches to a running container's stdio (output from now on, stdin with `-i`).
    pub fn attach(&self, id: &str) -> Result<UnixStream> {
        let c = self.lookup(id)?;
        if c.state.status != Status::Running {
            return Err(ContainerError::NotRunning(c.id));
        }
        let dir = self.container_dir(&c.id);
        crate::process::attach::connect(&dir).map_err(|source| ContainerError::Io {
            op: "attach to",
            path: dir.join(crate::process::attach::ATTACH_SOCKET),
            source,
        })
    }

    fn start_with(&self, id: &str, attach: bool) -> Result<(Container, Option<UnixStream>)> {
        let c = self.lookup(id)?;
        // Held until the start is reported: a concurrent start waits and then finds it
        // running, a concurrent remove waits and then finds it running.
        let _guard = self.lock_container(&c.id)?;
        let c = self.load(&c.id)?;
        if c.state.status == Status::Running {
            return Ok((c, None));
        }
        let dir = self.container_dir(&c.id);
        for f in [files::STATE, files::EXIT] {
            match std::fs::remove_file(dir.join(f)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(ContainerError::Io {
                        op: "remove",
                        path: dir.join(f),
                        source,
                    })
                }
            }
        }
        let (read, write) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|source| ContainerError::Sys {
                op: "pipe".into(),
                source,
            })?;
        match self.zygotes.start(&self.cfg.shim, &dir, attach, &write) {
            // The first shim process has exited: the attach socket is bound.
            Ok(_) => drop(write),
            // It may have started the container: the report says. Not started twice.
            Err(e @ ZygoteError::NoReply(_)) => {
                tracing::warn!(container = %c.id, %e, "start through the zygote");
                drop(write);
            }
            Err(e @ ZygoteError::NotSent(_)) => {
                tracing::warn!(container = %c.id, %e, "spawning the supervisor directly");
                self.spawn_shim(&dir, attach, write)?;
            }
        }
        let stream = if attach {
            crate::process::attach::connect(&dir).ok()
        } else {
            None
        };
        // EOF once every copy of the write end is closed: the supervisor's comes last.
        let mut report = Vec::new();
        let mut f = std::fs::File::from(read);
        f.read_to_end(&mut report)
            .map_err(|source| ContainerError::Io {
                op: "read start report of",
                path: dir.clone(),
                source,
            })?;
        match serde_json::from_slice::<StartReport>(&report) {
            Ok(StartReport::Started { .. }) => Ok((self.load(&c.id)?, stream)),
            Ok(StartReport::Failed { code, message }) => {
                Err(ContainerError::StartFailed { code, message })
            }
            Err(_) => Err(ContainerError::StartFailed {
                code: 125,
                message: format!(
                    "supervisor {} exited without reporting a start",
                    self.cfg.shim.display()
                ),
            }),
        }
    }

    /// `shoal-shim run DIR` as a process of its own, for when the zygote cannot be used.
    /// Returns once its first process has exited (attach socket bound).
    fn spawn_shim(&self, dir: &std::path::Path, attach: bool, report: OwnedFd) -> Result<()> {
        let mut cmd = Command::new(&self.cfg.shim);
        cmd.arg("run").arg(dir);
        if attach {
            cmd.arg("--attach");
        }
        // The report goes out on the shim's stdout. With no code to run between fork and
        // exec, std spawns with posix_spawn: no copy of a large daemon's page tables.
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(report))
            .stderr(Stdio::null());
        let mut child = cmd.spawn().map_err(|source| ContainerError::Io {
            op: "spawn",
            path: self.cfg.shim.clone(),
            source,
        })?;
        // `cmd` holds our copy of the write end: without it, EOF comes when the shim is done.
        drop(cmd);
        let _ = child.wait();
        Ok(())
    }
}
