//! A container's observed state, derived from the files its supervisor writes.

use serde::{Deserialize, Serialize};

/// Docker's `State.Status` values that a shoal container can be in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Created, never started.
    #[default]
    Created,
    /// The process is running.
    Running,
    /// The process ended; `exit_code` says how.
    Exited,
    /// The supervisor vanished without recording an exit (killed, or the node rebooted).
    Dead,
}

impl Status {
    /// Docker's lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Exited => "exited",
            Status::Dead => "dead",
        }
    }
}

/// Docker's `State` object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Lifecycle status.
    pub status: Status,
    /// Host pid of the container's process while it runs, else 0.
    pub pid: i32,
    /// Host pid of the supervisor while it runs, else 0.
    pub shim_pid: i32,
    /// Exit code (128 + signal when killed by a signal).
    pub exit_code: i32,
    /// The memory cgroup killed the process.
    pub oom_killed: bool,
    /// RFC 3339, empty when never started.
    pub started_at: String,
    /// RFC 3339, empty while running.
    pub finished_at: String,
    /// Why the start failed, if it did.
    pub error: String,
}
