//! Which cgroup layout this machine runs, found once per process and cached.
//!
//! cgroups-rs rediscovers the layout (a full parse of `/proc/self/mountinfo`, or a read of
//! `cgroup.controllers`) every time a handle is built, and builds a controller for every
//! hierarchy it finds. The runtime targets a whole container lifecycle in about 10 ms, so
//! [`Layout`] does that discovery once and hands cgroups-rs only the controllers shoal uses.
//! This file owns detection and the handle factory; what is written into the cgroups lives in
//! the parent module.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cgroups_rs::fs::cgroup::Cgroup;
use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::cpuacct::CpuAcctController;
use cgroups_rs::fs::devices::DevicesController;
use cgroups_rs::fs::freezer::FreezerController;
use cgroups_rs::fs::hierarchies::{is_cgroup2_unified_mode, mountinfo_self, UNIFIED_MOUNTPOINT};
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use cgroups_rs::fs::{Hierarchy, Subsystem};

/// v1 controllers a container joins: limits (memory, cpu, pids), accounting (cpuacct), the
/// device allowlist (devices) and a race-free kill (freezer). Others (blkio, cpuset, …) are
/// left alone: every extra hierarchy costs a mkdir, a write and an rmdir per container.
const V1_CONTROLLERS: [&str; 6] = ["memory", "cpu", "cpuacct", "pids", "devices", "freezer"];

/// v2 controllers enabled for containers (subtree_control of the root and of the parent).
const V2_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

/// The cgroup layout of this machine, with a controller per hierarchy shoal uses.
#[derive(Debug, Clone)]
pub(super) struct Layout {
    /// True on the unified hierarchy: `/sys/fs/cgroup` itself is cgroup2. A v1 machine with
    /// an extra (usually empty) cgroup2 mount at `/sys/fs/cgroup/unified` is v1.
    v2: bool,
    /// One controller per hierarchy, rooted at its mount point (not yet entered into a
    /// cgroup).
    subsystems: Vec<Subsystem>,
    /// v2: controllers among [`V2_CONTROLLERS`] the root offers; v1: unused.
    v2_controllers: Vec<String>,
    /// v2: the cgroup2 mount (`/sys/fs/cgroup`; tests use another); v1: unused.
    v2_root: PathBuf,
}

static LAYOUT: OnceLock<Layout> = OnceLock::new();

/// The layout, detected on first use.
pub(super) fn layout() -> &'static Layout {
    LAYOUT.get_or_init(Layout::detect)
}

impl Layout {
    fn detect() -> Self {
        if is_cgroup2_unified_mode() {
            Self::detect_v2(Path::new(UNIFIED_MOUNTPOINT))
        } else {
            Self::detect_v1()
        }
    }

    fn detect_v1() -> Self {
        let mounts = mountinfo_self();
        let mut subsystems = Vec::new();
        for name in V1_CONTROLLERS {
            // Controllers may be co-mounted (`cpu,cpuacct`); each still gets its own
            // controller object pointing at the shared directory, which cgroups-rs handles
            // (create_dir_all and delete are idempotent).
            let Some(m) = mounts
                .iter()
                .find(|m| m.fs_type.0 == "cgroup" && m.super_opts.iter().any(|o| o == name))
            else {
                tracing::debug!(controller = name, "cgroup v1 controller not mounted");
                continue;
            };
            let (point, root) = (m.mount_point.clone(), m.mount_root.clone());
            subsystems.push(match name {
                "memory" => Subsystem::Mem(MemController::new(point, root, false)),
                "cpu" => Subsystem::Cpu(CpuController::new(point, root, false)),
                "cpuacct" => Subsystem::CpuAcct(CpuAcctController::new(point, root)),
                "pids" => Subsystem::Pid(PidController::new(point, root, false)),
                "devices" => Subsystem::Devices(DevicesController::new(point, root)),
                _ => Subsystem::Freezer(FreezerController::new(point, root, false)),
            });
        }
        Self {
            v2: false,
            subsystems,
            v2_controllers: Vec::new(),
            v2_root: PathBuf::from(UNIFIED_MOUNTPOINT),
        }
    }

    /// The unified hierarchy mounted at `root`.
    pub(super) fn detect_v2(root: &Path) -> Self {
        let root = root.to_path_buf();
        let offered = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let v2_controllers: Vec<String> = V2_CONTROLLERS
            .iter()
            .filter(|c| offered.split_whitespace().any(|o| o == **c))
            .map(|c| c.to_string())
            .collect();
        let empty = PathBuf::new();
        let mut subsystems = Vec::new();
        for name in &v2_controllers {
            subsystems.push(match name.as_str() {
                "memory" => Subsystem::Mem(MemController::new(root.clone(), empty.clone(), true)),
                "cpu" => Subsystem::Cpu(CpuController::new(root.clone(), empty.clone(), true)),
                _ => Subsystem::Pid(PidController::new(root.clone(), empty.clone(), true)),
            });
        }
        Self {
            v2: true,
            subsystems,
            v2_controllers,
            v2_root: root,
        }
    }

    /// True on the unified (v2) hierarchy.
    pub(super) fn is_v2(&self) -> bool {
        self.v2
    }

    /// The cgroup2 mount; meaningful on v2 only.
    pub(super) fn v2_root(&self) -> &Path {
        &self.v2_root
    }

    /// True when the named controller is available (v1: mounted; v2: offered by the root).
    pub(super) fn has(&self, controller: &str) -> bool {
        self.subsystems
            .iter()
            .any(|s| s.controller_name() == controller)
    }

    /// A cgroups-rs handle on `path` (relative to every hierarchy root); touches nothing.
    pub(super) fn handle(&self, path: &str) -> Cgroup {
        let hier = Box::new(self.clone());
        if self.v2 {
            // With the controller list given, creation enables only these in
            // cgroup.subtree_control along the way instead of every controller the root offers.
            Cgroup::load_with_specified_controllers(hier, path, self.v2_controllers.clone())
        } else {
            Cgroup::load(hier, path)
        }
    }
}

impl Hierarchy for Layout {
    fn subsystems(&self) -> Vec<Subsystem> {
        self.subsystems.clone()
    }

    fn root(&self) -> PathBuf {
        if self.v2 {
            self.v2_root.clone()
        } else {
            // cgroups-rs uses this only to name the v1 root for diagnostics.
            PathBuf::from("/sys/fs/cgroup")
        }
    }

    fn root_control_group(&self) -> Cgroup {
        Cgroup::load(Box::new(self.clone()), "")
    }

    fn parent_control_group(&self, path: &str) -> Cgroup {
        let parent = Path::new(path)
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        Cgroup::load(Box::new(self.clone()), parent)
    }

    fn v2(&self) -> bool {
        self.v2
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is the test's assertion
mod tests {
    use super::*;

    #[test]
    fn detects_this_machines_layout() {
        let l = layout();
        let unified = is_cgroup2_unified_mode();
        assert_eq!(l.is_v2(), unified);
        if !unified && Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists() {
            // The development machine: v1 with an empty cgroup2 at /sys/fs/cgroup/unified.
            for c in V1_CONTROLLERS {
                if Path::new("/sys/fs/cgroup").join(c).exists() {
                    assert!(l.has(c), "controller {c} not found");
                }
            }
            assert!(!l.has("cpuset"), "cpuset must not be touched");
        }
    }

    #[test]
    fn handle_paths_are_under_each_mount() {
        let l = layout();
        let cg = l.handle("shoal/abc");
        for s in cg.subsystems() {
            let p = s.to_controller().path();
            assert!(p.ends_with("shoal/abc"), "{}", p.display());
        }
    }
}
