//! Killing everything left in a container's cgroup and removing the cgroup.
//!
//! A process can fork between our read of `cgroup.procs` and our `kill`, so a plain
//! read-then-kill loop can lose a race against a fork bomb. As runc's `signalAllProcesses`
//! does, on v1 the cgroup is frozen first (no task runs, so none forks), every task gets
//! SIGKILL, and the cgroup is thawed so the signals are delivered. On v2 `cgroup.kill` (5.14+)
//! does the same in the kernel; older kernels fall back to the loop.

use std::thread;
use std::time::{Duration, Instant};

use cgroups_rs::fs::freezer::FreezerController;
use cgroups_rs::FreezerState;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{CgroupError, ContainerCgroup, Result};

/// How long processes get to die after SIGKILL before removal gives up. Only a task stuck in
/// uninterruptible sleep (D state, e.g. on a dead NFS server) takes longer than milliseconds.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long to wait for the freezer to reach FROZEN before killing anyway. A task in D state
/// keeps the cgroup FREEZING; the kill-and-recheck loop then still converges.
const FREEZE_TIMEOUT: Duration = Duration::from_millis(100);

/// How long one kill round waits for the cgroup to empty before signalling again.
const ROUND: Duration = Duration::from_millis(200);

/// First and largest pause while polling: SIGKILLed processes are usually gone within a
/// few hundred microseconds, and a container's whole lifecycle should take about 10 ms.
const POLL_FIRST: Duration = Duration::from_micros(50);
const POLL_MAX: Duration = Duration::from_millis(10);

impl ContainerCgroup {
    /// Kills every process left (SIGKILL; freezer-assisted on v1, `cgroup.kill` on v2), waits
    /// until they are gone, then removes the cgroup in every hierarchy. Idempotent: an absent
    /// cgroup is success. The parent is left in place.
    pub fn remove(&self) -> Result<()> {
        let Some(cg) = &self.cg else {
            return Ok(());
        };
        if self.remove_empty() {
            return Ok(());
        }
        let v2 = self.layout.is_v2();
        let exists = if v2 {
            self.v2_dir().exists()
        } else {
            cg.exists()
        };
        if !exists {
            return Ok(());
        }
        self.kill_all()?;
        cg.delete().map_err(|source| CgroupError::Remove {
            path: self.path.clone(),
            source: Box::new(source),
        })
    }

    /// One rmdir per hierarchy and nothing else, which is all the cgroup of an exited
    /// container (its pid namespace gone with its init) needs: the kernel refuses to remove a
    /// cgroup that still has processes. False when some hierarchy still has the directory.
    fn remove_empty(&self) -> bool {
        let dirs: Vec<std::path::PathBuf> = match &self.cg {
            _ if self.layout.is_v2() => vec![self.v2_dir()],
            Some(cg) => cg
                .subsystems()
                .iter()
                .map(|s| s.to_controller().path().to_path_buf())
                .collect(),
            None => return true,
        };
        let mut removed = true;
        for dir in dirs {
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(_) => removed = false,
            }
        }
        removed
    }

    /// Kills until the cgroup is empty, or fails after [`KILL_TIMEOUT`].
    fn kill_all(&self) -> Result<()> {
        let start = Instant::now();
        loop {
            // The common case (the container already exited) costs one read per hierarchy.
            if self.pids().is_empty() {
                return Ok(());
            }
            if start.elapsed() > KILL_TIMEOUT {
                return Err(CgroupError::StillPopulated {
                    path: self.path.clone(),
                    pids: self.pids(),
                    waited: start.elapsed(),
                });
            }
            if self.layout.is_v2() {
                self.kill_v2()?;
            } else {
                self.kill_v1()?;
            }
            // Bounded per round so that processes forked after the signal (possible without a
            // freezer) get their own SIGKILL in the next round.
            self.wait_empty((Instant::now() + ROUND).min(start + KILL_TIMEOUT));
        }
    }

    /// v2: `cgroup.kill` when the kernel has it, else SIGKILL to each listed process.
    fn kill_v2(&self) -> Result<()> {
        let cg = self.cg.as_ref().expect("checked by remove");
        let kill_file = self.v2_dir().join("cgroup.kill");
        if kill_file.exists() && cg.kill().is_ok() {
            return Ok(());
        }
        self.signal_all()
    }

    /// v1: freeze, SIGKILL everything, thaw.
    fn kill_v1(&self) -> Result<()> {
        let cg = self.cg.as_ref().expect("checked by remove");
        let Some(freezer) = cg.controller_of::<FreezerController>() else {
            return self.signal_all();
        };
        let freezer_err = |action| {
            let path = self.path.clone();
            move |source| CgroupError::Freezer {
                action,
                path,
                source: Box::new(source),
            }
        };
        freezer.freeze().map_err(freezer_err("freeze"))?;
        let deadline = Instant::now() + FREEZE_TIMEOUT;
        let mut pause = POLL_FIRST;
        while !matches!(freezer.state(), Ok(FreezerState::Frozen)) && Instant::now() < deadline {
            thread::sleep(pause);
            pause = (pause * 2).min(POLL_MAX);
        }
        let killed = self.signal_all();
        // Thaw even when a kill failed: frozen tasks would otherwise hang forever.
        freezer.thaw().map_err(freezer_err("thaw"))?;
        killed
    }

    /// SIGKILL to every process listed now; ones already gone are fine.
    fn signal_all(&self) -> Result<()> {
        for pid in self.pids() {
            match kill(Pid::from_raw(pid), Signal::SIGKILL) {
                Ok(()) | Err(nix::Error::ESRCH) => {}
                Err(source) => {
                    return Err(CgroupError::Kill {
                        path: self.path.clone(),
                        pid,
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// Polls until no process is left or `deadline` passes.
    fn wait_empty(&self, deadline: Instant) {
        let mut pause = POLL_FIRST;
        while !self.pids().is_empty() && Instant::now() < deadline {
            thread::sleep(pause);
            pause = (pause * 2).min(POLL_MAX);
        }
    }
}
