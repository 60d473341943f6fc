//! `Runtime::stats`: resource usage of a running container, read from its cgroups.

pub use crate::cgroups::CgroupStats as Stats;

use super::{ContainerError, Result, Runtime, Status};
use crate::cgroups::ContainerCgroup;

impl Runtime {
    /// Reads the container's cgroup counters. Refused when not running.
    pub fn stats(&self, id: &str) -> Result<Stats> {
        let c = self.lookup(id)?;
        if c.state.status != Status::Running {
            return Err(ContainerError::NotRunning(c.id));
        }
        ContainerCgroup::open(&self.cfg.cgroup_parent, &c.id)
            .stats()
            .map_err(|e| ContainerError::Stats {
                id: c.id.clone(),
                message: e.to_string(),
            })
    }
}
