//! What a caller asks for when it creates a container ([`ContainerSpec`]), and the resolved
//! form the supervisor executes ([`ProcessSpec`], [`RunSpec`]), written to the container's
//! directory in `container.json`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Network namespace choice for a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// A fresh network namespace with only loopback (Docker's `none`).
    #[default]
    None,
    /// The host's network namespace.
    Host,
    /// The namespace bind-mounted at this path: a sandbox shoal's networking made and wired
    /// (bridge, overlay) before the container starts, and tears down after it is gone.
    Path(PathBuf),
}

/// Name resolution files for a container in a [`NetworkMode::Path`] sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameFiles {
    /// Contents of /etc/resolv.conf.
    pub resolv_conf: String,
    /// Extra /etc/hosts lines (address, names), e.g. the container's own address.
    pub hosts: Vec<(String, String)>,
}

/// A request to create a container, in Docker's terms.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// `--name`; generated when absent.
    pub name: Option<String>,
    /// Image reference (`name[:tag]`, id or id prefix).
    pub image: String,
    /// Command; empty means the image's `Cmd`.
    pub cmd: Vec<String>,
    /// `--entrypoint`; `None` means the image's.
    pub entrypoint: Option<Vec<String>>,
    /// `-e KEY=VALUE`, applied over the image's environment.
    pub env: Vec<String>,
    /// `-w`; `None` means the image's, then `/`.
    pub workdir: Option<String>,
    /// `-u UID[:GID]` (numeric, or a name from the image's /etc/passwd).
    pub user: Option<String>,
    /// `--hostname`; defaults to the short container id.
    pub hostname: Option<String>,
    /// `--memory` in bytes.
    pub memory: Option<i64>,
    /// `--cpus` in billionths of a CPU (Docker's NanoCpus).
    pub nano_cpus: Option<i64>,
    /// `--pids-limit`.
    pub pids_limit: Option<i64>,
    /// `--read-only`: the root filesystem is mounted read-only.
    pub read_only: bool,
    /// `--cap-add` (names with or without `CAP_`, or `ALL`).
    pub cap_add: Vec<String>,
    /// `--cap-drop`.
    pub cap_drop: Vec<String>,
    /// `--network`.
    pub network: NetworkMode,
    /// /etc/resolv.conf and /etc/hosts additions for a sandboxed network.
    #[serde(default)]
    pub names: Option<NameFiles>,
    /// `--rm`: remove the container when it exits.
    pub auto_remove: bool,
    /// The container's writable layer is of no use after a crash of the node: a swarm task
    /// (after a crash the orchestrator starts a new task, with a new container). Such a
    /// container, like a `--rm` one, gets a volatile overlay ([`RunSpec::volatile`]).
    #[serde(default)]
    pub disposable: bool,
    /// `-t`: give the process a pseudo-terminal.
    pub tty: bool,
    /// `-i`: keep stdin open.
    pub open_stdin: bool,
    /// `--label k=v`.
    pub labels: Vec<(String, String)>,
}

/// The process a container (or an exec) runs, fully resolved.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ProcessSpec {
    /// argv; `args[0]` is resolved against `PATH` inside the container.
    pub args: Vec<String>,
    /// Complete environment.
    pub env: Vec<String>,
    /// Working directory inside the container.
    pub cwd: String,
    /// Numeric user id.
    pub uid: u32,
    /// Numeric group id.
    pub gid: u32,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
    /// Capabilities (`CAP_…` names) of the process.
    pub capabilities: Vec<String>,
    /// Allocate a pseudo-terminal.
    pub tty: bool,
    /// Keep stdin open.
    pub open_stdin: bool,
}

/// Everything the supervisor needs to start a container: `run` in its `container.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunSpec {
    /// Container id (64 hex).
    pub id: String,
    /// The process.
    pub process: ProcessSpec,
    /// Hostname inside the UTS namespace.
    pub hostname: String,
    /// Overlay lower directories, top layer first (overlayfs order).
    pub lower_dirs: Vec<PathBuf>,
    /// Overlay upper directory (the container's writable layer).
    pub upper_dir: PathBuf,
    /// Overlay work directory.
    pub work_dir: PathBuf,
    /// Mount point of the root filesystem (inside the container's mount namespace only).
    pub rootfs: PathBuf,
    /// Mount the root read-only.
    pub read_only: bool,
    /// Mount the overlay `volatile`: no sync of the upper layer, neither at unmount (which
    /// otherwise flushes the whole upper file system, about 0.2 ms on this machine's
    /// disk, on every exit) nor for `fsync` inside. Only for a container whose writable
    /// layer no one reads after a crash: see [`ContainerSpec::disposable`].
    #[serde(default)]
    pub volatile: bool,
    /// Network namespace choice.
    pub network: NetworkMode,
    /// /etc/resolv.conf and /etc/hosts additions (sandboxed networks).
    #[serde(default)]
    pub names: Option<NameFiles>,
    /// Cgroup name (relative to each hierarchy's root).
    pub cgroup: String,
    /// Memory limit in bytes.
    pub memory: Option<i64>,
    /// CPU quota in nanocpus.
    pub nano_cpus: Option<i64>,
    /// Maximum number of pids.
    pub pids_limit: Option<i64>,
    /// Size at which the log file is rotated.
    pub log_max_size: u64,
}
