//! Reading a container cgroup's counters: usage for `stats`, and whether the OOM killer struck.
//!
//! These read the few files they need directly instead of cgroups-rs's `memory_stat()` /
//! `cpuacct()`, which read a dozen files each per call and panic on content they cannot parse;
//! the directories still come from the cgroups-rs controllers.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::{CgroupError, ContainerCgroup, Result};

/// Limits at or above this are the kernel's "unlimited" (v1 prints PAGE_COUNTER_MAX pages,
/// 0x7FFFFFFFFFFFF000 on 4 KiB pages).
const UNLIMITED_FROM: u64 = 1 << 62;

/// One sample of a container cgroup's usage, in the units `docker stats` reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// CPU time used by all its processes, nanoseconds (v1 cpuacct.usage; v2 cpu.stat
    /// usage_usec × 1000).
    pub cpu_usage_ns: u64,
    /// Memory in use, bytes, without reclaimable page cache, as the docker CLI computes it:
    /// usage − total_inactive_file (v1) or memory.current − inactive_file (v2).
    pub memory_usage: u64,
    /// The memory limit in bytes; the machine's memory when unlimited (or larger), as the
    /// docker daemon reports it.
    pub memory_limit: u64,
    /// Tasks (processes and threads) in the cgroup: pids.current.
    pub pids: u64,
}

impl ContainerCgroup {
    /// Reads the cgroup's counters. A controller that is not available reads as 0 (pids then
    /// counts processes instead).
    pub fn stats(&self) -> Result<CgroupStats> {
        let v2 = self.layout.is_v2();
        let mut s = CgroupStats {
            memory_limit: machine_memory(),
            ..CgroupStats::default()
        };
        if v2 {
            let dir = self.v2_dir();
            let cpu = dir.join("cpu.stat");
            s.cpu_usage_ns = keyed(&read(&cpu)?, "usage_usec")
                .ok_or_else(|| parse_err(&cpu))?
                .saturating_mul(1000);
        } else if let Some(dir) = self.dir_of("cpuacct") {
            s.cpu_usage_ns = number(&dir.join("cpuacct.usage"))?;
        }

        if let Some(dir) = self.dir_of("memory") {
            let (usage_file, limit_file, inactive_key) = if v2 {
                ("memory.current", "memory.max", "inactive_file")
            } else {
                (
                    "memory.usage_in_bytes",
                    "memory.limit_in_bytes",
                    "total_inactive_file",
                )
            };
            let usage = number(&dir.join(usage_file))?;
            let stat = read(&dir.join("memory.stat"))?;
            let inactive = keyed(&stat, inactive_key).unwrap_or(0);
            s.memory_usage = if inactive < usage {
                usage - inactive
            } else {
                usage
            };
            let limit_path = dir.join(limit_file);
            let limit_text = read(&limit_path)?;
            let limit = match limit_text.trim() {
                "max" => u64::MAX,
                t => t.parse().map_err(|_| parse_err(&limit_path))?,
            };
            if limit < UNLIMITED_FROM && limit < s.memory_limit {
                s.memory_limit = limit;
            }
        }

        s.pids = match self.dir_of("pids") {
            Some(dir) => number(&dir.join("pids.current"))?,
            None => self.pids().len() as u64,
        };
        Ok(s)
    }

    /// True when the memory controller OOM-killed a process in this cgroup (v1:
    /// `memory.oom_control` `oom_kill N`, kernel 4.13+; v2: `memory.events` `oom_kill N`).
    /// False when that cannot be read.
    pub fn oom_killed(&self) -> bool {
        let Some(dir) = self.dir_of("memory") else {
            return false;
        };
        let file = if self.layout.is_v2() {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|text| keyed(&text, "oom_kill"))
            .is_some_and(|n| n > 0)
    }

    /// The cgroup's directory in the hierarchy of `controller`, if that controller is in use.
    pub(super) fn dir_of(&self, controller: &str) -> Option<PathBuf> {
        let cg = self.cg.as_ref()?;
        cg.subsystems()
            .iter()
            .find(|s| s.controller_name() == controller)
            .map(|s| s.to_controller().path().to_path_buf())
    }

    /// The cgroup's directory on v2.
    pub(super) fn v2_dir(&self) -> PathBuf {
        self.layout.v2_root().join(&self.path)
    }
}

/// The machine's memory in bytes (MemTotal), read once.
fn machine_memory() -> u64 {
    static TOTAL: OnceLock<u64> = OnceLock::new();
    *TOTAL.get_or_init(|| {
        fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| keyed(&m.replace(':', ""), "MemTotal"))
            .map(|kib| kib.saturating_mul(1024))
            .unwrap_or(u64::MAX)
    })
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_err(path: &Path) -> CgroupError {
    CgroupError::Parse {
        path: path.to_path_buf(),
        content: fs::read_to_string(path).unwrap_or_default(),
    }
}

/// A file holding one number.
fn number(path: &Path) -> Result<u64> {
    read(path)?.trim().parse().map_err(|_| parse_err(path))
}

/// The value of `key` in a flat keyed file (`key value` per line).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut it = line.split_whitespace();
        (it.next() == Some(key))
            .then(|| it.next())
            .flatten()
            .and_then(|v| v.parse().ok())
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is the test's assertion
mod tests {
    use super::*;

    #[test]
    fn keyed_finds_exact_keys() {
        let text = "cache 10\ntotal_inactive_file 7\ninactive_file 3\noom_kill 2\n";
        assert_eq!(keyed(text, "inactive_file"), Some(3));
        assert_eq!(keyed(text, "total_inactive_file"), Some(7));
        assert_eq!(keyed(text, "oom_kill"), Some(2));
        assert_eq!(keyed(text, "oom"), None);
        assert_eq!(keyed("oom_kill_disable 0\nunder_oom 0\n", "oom_kill"), None);
    }

    #[test]
    fn machine_memory_is_known() {
        assert!(machine_memory() > 64 * 1024 * 1024);
        assert!(machine_memory() < u64::MAX);
    }
}
