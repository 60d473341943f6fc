//! A container's observed state, derived from the files its supervisor writes.

use serde::{Deserialize, Serialize};

use crate::spec::RunSpec;

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

/// `state.json`: written by the supervisor once the process runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StateFile {
    /// Host pid of the container's process.
    pub pid: i32,
    /// Its start time (clock ticks since boot, /proc/PID/stat field 22), to tell a reused pid.
    pub pid_start: u64,
    /// Host pid of the supervisor.
    pub shim_pid: i32,
    /// The supervisor's start time.
    pub shim_start: u64,
    /// RFC 3339.
    pub started_at: String,
}

/// `exit.json`: written by the supervisor when the process ended (or failed to start).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExitFile {
    /// Exit code, 128 + signal for a signal.
    pub exit_code: i32,
    /// The memory cgroup killed it.
    pub oom_killed: bool,
    /// RFC 3339.
    pub finished_at: String,
    /// Why it did not start (empty when it ran).
    #[serde(default)]
    pub error: String,
}

/// `container.json`: the [`Container`](super::Container) as asked for and resolved, and
/// under `run` the [`RunSpec`] its supervisor runs. One file rather than two: every file is
/// an inode to allocate, the slowest step of a create on this machine's file system.
#[derive(Debug, Serialize)]
pub(crate) struct StoredContainer<'a> {
    #[serde(flatten)]
    container: &'a super::Container,
    run: &'a RunSpec,
}

impl<'a> StoredContainer<'a> {
    pub(crate) fn new(container: &'a super::Container, run: &'a RunSpec) -> Self {
        StoredContainer { container, run }
    }
}

/// The supervisor's part of `container.json`.
#[derive(Debug, Deserialize)]
struct StoredRun {
    run: Option<RunSpec>,
}

/// The [`RunSpec`] of the container in `dir`: from `container.json`, or from the
/// `config.json` that containers created by earlier versions have. `Ok(None)` when neither
/// has it.
pub fn read_run_spec(dir: &std::path::Path) -> super::Result<Option<RunSpec>> {
    match read_json::<StoredRun>(dir, files::CONTAINER)? {
        Some(StoredRun { run: Some(run) }) => Ok(Some(run)),
        _ => read_json(dir, files::CONFIG),
    }
}

/// File names inside a container's directory.
pub mod files {
    /// What was asked for, and what the supervisor runs.
    pub const CONTAINER: &str = "container.json";
    /// What the supervisor runs, for containers created before it moved into
    /// `container.json`.
    pub const CONFIG: &str = "config.json";
    /// Written at start.
    pub const STATE: &str = "state.json";
    /// Written at exit.
    pub const EXIT: &str = "exit.json";
}

/// Start time of `pid` in clock ticks since boot, or `None` if it does not exist.
pub fn proc_start_time(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: count from the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = rest.split_whitespace();
    // A zombie has exited; it only waits for a parent that may never reap it.
    if fields.next()? == "Z" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// True when `pid` still is the process that started at `start`.
pub fn alive(pid: i32, start: u64) -> bool {
    proc_start_time(pid) == Some(start)
}

/// Writes `value` as JSON to `dir/name` atomically (temporary file, then rename), so a
/// reader never sees half a file and a crash leaves the old one.
pub fn write_json<T: Serialize>(
    dir: &std::path::Path,
    name: &str,
    value: &T,
) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let data = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, dir.join(name))
}

/// Reads `dir/name` as JSON; `Ok(None)` when it does not exist.
pub fn read_json<T: serde::de::DeserializeOwned>(
    dir: &std::path::Path,
    name: &str,
) -> super::Result<Option<T>> {
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(data) => serde_json::from_slice(&data)
            .map(Some)
            .map_err(|source| super::ContainerError::Json { what: path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(super::ContainerError::Io {
            op: "read",
            path,
            source,
        }),
    }
}

/// Derives a container's [`State`] from its state files.
pub fn load_state(dir: &std::path::Path) -> super::Result<State> {
    let started: Option<StateFile> = read_json(dir, files::STATE)?;
    let mut exited: Option<ExitFile> = read_json(dir, files::EXIT)?;
    // Looked at once: a supervisor found alive here may write exit.json and exit before a
    // second look, which would then call a clean exit lost.
    let shim_alive = started
        .as_ref()
        .is_some_and(|st| alive(st.shim_pid, st.shim_start));
    if started.is_some() && exited.is_none() && !shim_alive {
        // The supervisor writes exit.json and then exits: it may have done both since
        // exit.json was read. Only a second look tells a clean exit from a lost one.
        exited = read_json(dir, files::EXIT)?;
    }
    let mut state = State::default();
    if let Some(ex) = &exited {
        state.exit_code = ex.exit_code;
        state.oom_killed = ex.oom_killed;
        state.finished_at = ex.finished_at.clone();
        state.error = ex.error.clone();
    }
    match (started, exited) {
        (None, _) => state.status = Status::Created,
        (Some(st), Some(_)) => {
            state.status = Status::Exited;
            state.started_at = st.started_at;
        }
        (Some(st), None) => {
            state.started_at = st.started_at;
            if shim_alive {
                state.status = Status::Running;
                state.pid = st.pid;
                state.shim_pid = st.shim_pid;
            } else if alive(st.pid, st.pid_start) {
                // The supervisor was killed but the process lives on unsupervised.
                state.status = Status::Running;
                state.pid = st.pid;
            } else {
                state.status = Status::Dead;
                state.error = "supervisor exited without recording an exit status".into();
                state.exit_code = 255;
            }
        }
    }
    Ok(state)
}
