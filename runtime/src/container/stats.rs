//! `Runtime::stats`: resource usage of a running container, read from its cgroups.

use serde::Serialize;

use super::{Result, Runtime};

/// One sample of a container's usage, in the units `docker stats` shows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// Total CPU time used, nanoseconds.
    pub cpu_usage_ns: u64,
    /// Memory in use, bytes (cache excluded, as Docker computes it).
    pub memory_usage: u64,
    /// Memory limit, bytes (the host's memory when unlimited).
    pub memory_limit: u64,
    /// Processes and threads in the container.
    pub pids: u64,
}

impl Runtime {
    /// Reads the container's cgroup counters. Refused when not running.
    pub fn stats(&self, id: &str) -> Result<Stats> {
        let _ = id;
        todo!()
    }
}
