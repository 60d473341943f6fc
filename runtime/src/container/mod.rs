//! The container lifecycle on one node: [`Runtime`] creates, starts, signals, waits for and
//! removes containers; one file per operation (after youki's `container/`).
//!
//! A container is a directory `<data-root>/containers/<id>/` holding `container.json` (what
//! was asked for and resolved, and the [`RunSpec`](crate::spec::RunSpec) the supervisor
//! runs), `state.json` (pids, written by the supervisor when the process started),
//! `exit.json` (written by the supervisor when the process ended), the log files and the
//! overlay upper/work directories. Everything a restarted daemon needs is on disk, so the
//! daemon can be killed at any time and find its containers again.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::image::ImageError;

mod create;
mod delete;
mod exec;
mod inspect;
mod kill;
mod lookup;
mod names;
mod start;
pub mod state;
mod stats;
mod user;
mod wait;

pub use self::exec::ExecSpec;
pub use self::kill::parse_signal;
pub use self::state::{State, Status};
pub use self::stats::Stats;
pub use self::user::resolve as resolve_user;

/// Errors of container operations.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// No container matches the name, id or id prefix.
    #[error("No such container: {0}")]
    NotFound(String),
    /// An id prefix matches several containers.
    #[error("multiple containers match the prefix {0:?}")]
    Ambiguous(String),
    /// `--name` is taken.
    #[error("Conflict. The container name \"/{name}\" is already in use by container \"{id}\". You have to remove (or rename) that container to be able to reuse that name.")]
    NameInUse {
        /// The requested name.
        name: String,
        /// The container holding it.
        id: String,
    },
    /// A name that Docker would also refuse.
    #[error("Invalid container name ({0:?}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")]
    InvalidName(String),
    /// The request is malformed (bad user, bad capability, bad limit, …).
    #[error("invalid container spec: {0}")]
    InvalidSpec(String),
    /// The operation needs a running container.
    #[error("container {0} is not running")]
    NotRunning(String),
    /// The operation needs a stopped container.
    #[error("You cannot remove a running container {0}. Stop the container before attempting removal or force remove")]
    Running(String),
    /// The image is used by a container and cannot be removed.
    #[error(
        "conflict: unable to remove image {image} - image is being used by container {container}"
    )]
    ImageInUse {
        /// The image reference given.
        image: String,
        /// Short id of a container using it.
        container: String,
    },
    /// The supervisor could not start the process; `code` is Docker's 125/126/127.
    #[error("{message}")]
    StartFailed {
        /// 126: not executable, 127: not found, 125: anything else.
        code: i32,
        /// What went wrong, from inside the container setup.
        message: String,
    },
    /// The cgroup counters could not be read.
    #[error("read cgroup stats of {id}: {message}")]
    Stats {
        /// Container id.
        id: String,
        /// The cgroup error.
        message: String,
    },
    /// The image store failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A file-system or process operation failed.
    #[error("{op} {path}")]
    Io {
        /// The operation.
        op: &'static str,
        /// Its target.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A system call failed.
    #[error("{op}")]
    Sys {
        /// The call and its argument.
        op: String,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// A state file could not be read or written.
    #[error("{what}: {source}")]
    Json {
        /// Which file.
        what: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// Result alias for container operations.
pub type Result<T, E = ContainerError> = std::result::Result<T, E>;

/// How the runtime is set up on this node.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Data root (`/var/lib/shoal`); images under `image/`, containers under `containers/`.
    pub root: PathBuf,
    /// Path of the `shoal-shim` supervisor binary.
    pub shim: PathBuf,
    /// Parent cgroup (in every hierarchy) for containers, e.g. `shoal`.
    pub cgroup_parent: String,
    /// Log size at which the supervisor rotates a container's log.
    pub log_max_size: u64,
}

impl RuntimeConfig {
    /// Defaults for `root`, with the shim found next to the running executable.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let shim = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join("shoal-shim")))
            .unwrap_or_else(|| PathBuf::from("shoal-shim"));
        RuntimeConfig {
            root: root.into(),
            shim,
            cgroup_parent: "shoal".to_string(),
            log_max_size: DEFAULT_LOG_MAX_SIZE,
        }
    }
}

/// Docker's json-file driver has no cap by default; we cap at 10 MB (two files, 20 MB at most
/// per container) so that a chatty container cannot fill the node's disk.
pub const DEFAULT_LOG_MAX_SIZE: u64 = 10 * 1024 * 1024;

/// The node's container runtime. Cheap to clone; all state is on disk.
#[derive(Debug, Clone)]
pub struct Runtime {
    cfg: RuntimeConfig,
    images: crate::image::ImageStore,
    /// Forks the supervisors; shared by every clone, ends with the last one.
    zygotes: std::sync::Arc<crate::process::zygote::Zygotes>,
}

/// A container as stored in `container.json`, plus its current [`State`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Container {
    /// 64 hex characters.
    pub id: String,
    /// Name without Docker's leading `/`.
    pub name: String,
    /// The image reference as given.
    pub image: String,
    /// The image id (`sha256:…`).
    pub image_id: String,
    /// Creation time (RFC 3339).
    pub created: String,
    /// The request it was created from.
    pub spec: crate::spec::ContainerSpec,
    /// The resolved process.
    pub process: crate::spec::ProcessSpec,
    /// Current state; not stored in `container.json` but read from the state files.
    #[serde(skip)]
    pub state: State,
}

impl Container {
    /// The 12-character id Docker shows.
    pub fn short_id(&self) -> &str {
        &self.id[..12.min(self.id.len())]
    }
}

/// Docker's default `PATH` for containers whose image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
