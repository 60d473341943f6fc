//! Container cgroups through cgroups-rs, on the v1 hierarchies (memory, cpu, cpuacct, pids,
//! devices, freezer) or on the unified v2 hierarchy, whichever the machine runs.
//!
//! A container's cgroup is `<parent>/<id>` in every hierarchy shoal uses; the parent (`shoal`)
//! is created on demand and left in place, since several daemons and containers share it.
//! [`ContainerCgroup`] creates one with its [`Limits`] (and, on v1, Docker's device
//! allowlist), moves processes into it, reads its counters, and kills and removes it. It does
//! not know what runs inside; the supervisor (`process::shim`) owns that.
//!
//! The layout (v1 or v2, mount points) is detected once per process (`hierarchy.rs`): a v1
//! machine that also mounts an empty cgroup2 at `/sys/fs/cgroup/unified` is v1; v2 is chosen
//! only when `/sys/fs/cgroup` itself is cgroup2.

mod devices;
mod hierarchy;
mod remove;
mod stats;
#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is the test's assertion
mod tests;

use std::fs;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use cgroups_rs::fs::cgroup::Cgroup;
use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::devices::{DevicePermissions, DeviceType, DevicesController};
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use cgroups_rs::fs::{Controller, MaxValue};
use cgroups_rs::CgroupPid;

pub use stats::CgroupStats;

use hierarchy::{layout, Layout};

/// CFS period for `--cpus`, in microseconds: Docker's (and the kernel's) default, so that
/// `--cpus 0.5` reads back as the familiar 50000/100000.
const CPU_PERIOD_US: u64 = 100_000;

/// Docker's smallest `--memory` (`linuxMinMemory`): below it the container's own init and
/// libc do not fit and it dies of OOM before running anything, which reads as a runtime bug.
const MIN_MEMORY: i64 = 6 * 1024 * 1024;

/// Docker's smallest `--cpus` (0.01 CPU); its quota (1000 µs per 100 ms) is also the
/// kernel's minimum CFS quota.
const MIN_NANO_CPUS: i64 = 10_000_000;

/// Errors of the cgroup module. `path` is the cgroup's path relative to the hierarchy roots
/// (e.g. `shoal/3f2a…`) or, for file reads, the full file path.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The parent or the name cannot form a cgroup path below the roots.
    #[error("invalid cgroup path {parent:?} / {name:?}: {reason}")]
    InvalidPath {
        /// Parent as given.
        parent: String,
        /// Name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A limit is out of the range Docker accepts.
    #[error("invalid {what} limit {value}: {reason}")]
    InvalidLimit {
        /// `memory`, `cpu` or `pids`.
        what: &'static str,
        /// The value given.
        value: i64,
        /// The accepted range.
        reason: &'static str,
    },
    /// A limit was asked for but its controller is not mounted (v1) or offered (v2).
    #[error("the {controller} cgroup controller (needed for the {what} limit) is not available")]
    ControllerMissing {
        /// Controller name.
        controller: &'static str,
        /// The limit that needs it.
        what: &'static str,
    },
    /// mkdir of the cgroup in some hierarchy failed.
    #[error("create cgroup {path}")]
    Create {
        /// Cgroup path.
        path: String,
        /// cgroups-rs error (carries the io error).
        #[source]
        source: Box<cgroups_rs::fs::error::Error>,
    },
    /// Writing a limit failed.
    #[error("set {file} to {value} in cgroup {path}")]
    SetLimit {
        /// Cgroup path.
        path: String,
        /// Control file.
        file: &'static str,
        /// Value written.
        value: String,
        /// cgroups-rs error.
        #[source]
        source: Box<cgroups_rs::fs::error::Error>,
    },
    /// Writing a device rule failed.
    #[error("write device rule {rule:?} to {file} in cgroup {path}")]
    Device {
        /// Cgroup path.
        path: String,
        /// `devices.allow` or `devices.deny`.
        file: &'static str,
        /// The rule, in the kernel's syntax.
        rule: String,
        /// cgroups-rs error.
        #[source]
        source: Box<cgroups_rs::fs::error::Error>,
    },
    /// Moving a process into the cgroup failed.
    #[error("move pid {pid} into cgroup {path}")]
    AddProcess {
        /// Cgroup path.
        path: String,
        /// The process.
        pid: i32,
        /// Underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Reading a cgroup file failed.
    #[error("read {}", path.display())]
    Read {
        /// File path.
        path: PathBuf,
        /// io error.
        #[source]
        source: io::Error,
    },
    /// A cgroup file did not hold what the kernel documents.
    #[error("parse {}: unexpected content {content:?}", path.display())]
    Parse {
        /// File path.
        path: PathBuf,
        /// What was there.
        content: String,
    },
    /// Freezing or thawing (v1) for the kill failed.
    #[error("{action} cgroup {path}")]
    Freezer {
        /// `freeze` or `thaw`.
        action: &'static str,
        /// Cgroup path.
        path: String,
        /// cgroups-rs error.
        #[source]
        source: Box<cgroups_rs::fs::error::Error>,
    },
    /// Sending SIGKILL failed for a reason other than the process being gone.
    #[error("kill pid {pid} of cgroup {path}")]
    Kill {
        /// Cgroup path.
        path: String,
        /// The process.
        pid: i32,
        /// errno.
        #[source]
        source: nix::Error,
    },
    /// Processes survived SIGKILL (typically stuck in uninterruptible sleep).
    #[error("processes {pids:?} still in cgroup {path} {waited:?} after SIGKILL")]
    StillPopulated {
        /// Cgroup path.
        path: String,
        /// The survivors.
        pids: Vec<i32>,
        /// How long we waited.
        waited: Duration,
    },
    /// rmdir of the cgroup failed.
    #[error("remove cgroup {path}")]
    Remove {
        /// Cgroup path.
        path: String,
        /// cgroups-rs error (carries the io error).
        #[source]
        source: Box<cgroups_rs::fs::error::Error>,
    },
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, CgroupError>;

/// Resource limits of a container, in Docker's units. `None` (or 0) means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// `--memory`, bytes: the hard limit, and also the memory+swap limit so swap cannot be used
    /// to exceed it. At least 6 MiB (Docker's minimum).
    pub memory: Option<i64>,
    /// `--cpus` in billionths of a CPU: quota = nano_cpus × 100 ms / 1e9 per 100 ms period.
    /// At least 0.01 CPU.
    pub nano_cpus: Option<i64>,
    /// `--pids-limit`: pids.max; negative means unlimited, as Docker's -1.
    pub pids: Option<i64>,
}

impl Limits {
    /// Checks the ranges Docker accepts; returns the CFS quota for `nano_cpus`, if any.
    fn validate(&self) -> Result<Option<i64>> {
        if let Some(m) = self.memory.filter(|m| *m != 0) {
            if m < MIN_MEMORY {
                return Err(CgroupError::InvalidLimit {
                    what: "memory",
                    value: m,
                    reason: "the minimum is 6 MiB (6291456 bytes)",
                });
            }
        }
        match self.nano_cpus.filter(|n| *n != 0) {
            Some(n) if n < MIN_NANO_CPUS => Err(CgroupError::InvalidLimit {
                what: "cpu",
                value: n,
                reason: "the minimum is 0.01 CPUs (10000000 nano CPUs)",
            }),
            Some(n) => Ok(Some(n / (1_000_000_000 / CPU_PERIOD_US as i64))),
            None => Ok(None),
        }
    }
}

/// True when the container's device allowlist is enforced by its cgroup: v1 (devices
/// controller mounted). On v2 it would need an eBPF program, which shoal does not load, so the
/// caller must drop `CAP_MKNOD` from the container instead: with a stock `/dev` tmpfs of
/// known nodes, a process that cannot mknod cannot reach any other device.
pub fn device_control_available() -> bool {
    let l = layout();
    !l.is_v2() && l.has("devices")
}

/// One container's cgroup, in every hierarchy shoal uses.
#[derive(Debug)]
pub struct ContainerCgroup {
    /// `<parent>/<name>`, relative to each hierarchy root.
    path: String,
    /// cgroups-rs handle; `None` when [`ContainerCgroup::open`] got an invalid path, which
    /// makes every operation a no-op (nothing can exist there that we made).
    cg: Option<Cgroup>,
    /// The machine's layout (tests substitute another).
    layout: &'static Layout,
}

/// Checks that `parent/name` stays below the hierarchy roots.
fn cgroup_path(parent: &str, name: &str) -> Result<String> {
    let bad = |reason| CgroupError::InvalidPath {
        parent: parent.to_string(),
        name: name.to_string(),
        reason,
    };
    let parent_trimmed = parent.trim_matches('/');
    if parent_trimmed.is_empty() {
        return Err(bad("the parent is empty"));
    }
    if parent_trimmed
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad("the parent has an empty, `.` or `..` component"));
    }
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(bad("the name must be one non-empty path component"));
    }
    Ok(format!("{parent_trimmed}/{name}"))
}

impl ContainerCgroup {
    /// Creates `<parent>/<name>` in the hierarchies we use (memory, cpu, cpuacct, pids,
    /// devices, freezer on v1; the unified one on v2, with memory, cpu and pids enabled),
    /// applies `limits` and, on v1, Docker's device allowlist. The parent is created on demand
    /// and never removed here. On failure, whatever was created is removed again.
    pub fn create(parent: &str, name: &str, limits: &Limits) -> Result<Self> {
        Self::create_in(layout(), parent, name, limits)
    }

    fn create_in(l: &'static Layout, parent: &str, name: &str, limits: &Limits) -> Result<Self> {
        let path = cgroup_path(parent, name)?;
        let quota = limits.validate()?;
        for (wanted, controller, what) in [
            (limits.memory.is_some_and(|m| m > 0), "memory", "memory"),
            (quota.is_some(), "cpu", "cpu"),
            (limits.pids.is_some_and(|p| p > 0), "pids", "pids"),
        ] {
            if wanted && !l.has(controller) {
                return Err(CgroupError::ControllerMissing { controller, what });
            }
        }
        let cg = l.handle(&path);
        cg.create().map_err(|source| CgroupError::Create {
            path: path.clone(),
            source: Box::new(source),
        })?;
        let this = Self {
            path,
            cg: Some(cg),
            layout: l,
        };
        if let Err(e) = this.configure(limits, quota) {
            if let Err(cleanup) = this.remove() {
                tracing::warn!(cgroup = %this.path, ?cleanup, cause = %e, "remove half-made cgroup");
            }
            return Err(e);
        }
        Ok(this)
    }

    /// A handle on an existing cgroup (for stats or removal after a daemon restart). Never
    /// fails: an absent cgroup gives a handle whose `pids()` is empty and whose `remove()`
    /// succeeds.
    pub fn open(parent: &str, name: &str) -> Self {
        Self::open_in(layout(), parent, name)
    }

    fn open_in(l: &'static Layout, parent: &str, name: &str) -> Self {
        match cgroup_path(parent, name) {
            Ok(path) => Self {
                cg: Some(l.handle(&path)),
                path,
                layout: l,
            },
            Err(e) => {
                tracing::warn!(%e, "open cgroup: invalid path, using an empty handle");
                Self {
                    path: format!("{parent}/{name}"),
                    cg: None,
                    layout: l,
                }
            }
        }
    }

    /// The cgroup's path relative to the hierarchy roots, e.g. `shoal/3f2a…`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Moves process `pid` (all its threads) into the cgroup in every hierarchy.
    pub fn add_process(&self, pid: i32) -> Result<()> {
        let err = |source: Box<dyn std::error::Error + Send + Sync>| CgroupError::AddProcess {
            path: self.path.clone(),
            pid,
            source,
        };
        let Some(cg) = &self.cg else {
            return Err(err("invalid cgroup path".into()));
        };
        let target = u64::try_from(pid).map_err(|_| err("negative pid".into()))?;
        if cg.subsystems().is_empty() {
            // v2 with none of memory/cpu/pids offered: cgroups-rs needs a controller to find
            // the directory, so write cgroup.procs ourselves.
            let procs = self.v2_dir().join("cgroup.procs");
            return fs::write(&procs, pid.to_string()).map_err(|e| err(Box::new(e)));
        }
        cg.add_task_by_tgid(CgroupPid::from(target))
            .map_err(|e| err(Box::new(e)))
    }

    /// Processes (thread group ids) in the cgroup, host pid namespace, sorted; empty when the
    /// cgroup does not exist.
    pub fn pids(&self) -> Vec<i32> {
        let Some(cg) = &self.cg else {
            return Vec::new();
        };
        if cg.subsystems().is_empty() {
            let procs = self.v2_dir().join("cgroup.procs");
            let mut pids: Vec<i32> = fs::read_to_string(procs)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            pids.sort_unstable();
            return pids;
        }
        // cgroups-rs reads every hierarchy and merges: a process that made it into only some
        // of them (a failed add_process) is still found and killed.
        cg.procs()
            .into_iter()
            .filter_map(|p| i32::try_from(p.pid).ok())
            .filter(|p| *p > 0)
            .collect()
    }

    /// Writes the limits and the device rules. `quota` is the validated CFS quota.
    fn configure(&self, limits: &Limits, quota: Option<i64>) -> Result<()> {
        let cg = self.cg.as_ref().expect("create always sets the handle");
        let set_err = |file, value: String| {
            let path = self.path.clone();
            move |source| CgroupError::SetLimit {
                path,
                file,
                value,
                source: Box::new(source),
            }
        };
        let v2 = self.layout.is_v2();
        if let Some(m) = limits.memory.filter(|m| *m > 0) {
            let mem: &MemController = cg.controller_of().expect("checked in create");
            let (limit_file, swap_file) = if v2 {
                ("memory.max", "memory.swap.max")
            } else {
                ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes")
            };
            mem.set_limit(m)
                .map_err(set_err(limit_file, m.to_string()))?;
            // Without this the container could exceed --memory by swapping (Docker allows
            // swap equal to memory by default; shoal allows none). The file is absent when
            // the kernel does not account swap, and then there is nothing to bypass with.
            if mem.path().join(swap_file).exists() {
                // v1 limits memory+swap together (same value: no swap); v2 limits swap alone.
                let swap = if v2 { 0 } else { m };
                mem.set_memswap_limit(swap)
                    .map_err(set_err(swap_file, swap.to_string()))?;
            }
        }
        if let Some(q) = quota {
            let cpu: &CpuController = cg.controller_of().expect("checked in create");
            let file = if v2 { "cpu.max" } else { "cpu.cfs_quota_us" };
            cpu.set_cfs_quota_and_period(Some(q), Some(CPU_PERIOD_US))
                .map_err(set_err(file, format!("{q} {CPU_PERIOD_US}")))?;
        }
        if let Some(p) = limits.pids.filter(|p| *p > 0) {
            let pids: &PidController = cg.controller_of().expect("checked in create");
            pids.set_pid_max(MaxValue::Value(p))
                .map_err(set_err("pids.max", p.to_string()))?;
        }
        if let Some(dev) = cg.controller_of::<DevicesController>() {
            self.allow_default_devices(dev)?;
        }
        Ok(())
    }

    /// Denies every device, then allows Docker's default list (v1 only).
    fn allow_default_devices(&self, dev: &DevicesController) -> Result<()> {
        dev.deny_device(DeviceType::All, -1, -1, &DevicePermissions::all())
            .map_err(|source| CgroupError::Device {
                path: self.path.clone(),
                file: "devices.deny",
                rule: "a *:* rwm".to_string(),
                source: Box::new(source),
            })?;
        for rule in devices::DEFAULT_ALLOWED {
            dev.allow_device(rule.kind, rule.major, rule.minor, &rule.permissions())
                .map_err(|source| CgroupError::Device {
                    path: self.path.clone(),
                    file: "devices.allow",
                    rule: rule.to_line(),
                    source: Box::new(source),
                })?;
        }
        Ok(())
    }
}
