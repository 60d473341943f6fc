//! `Runtime::exec_command`: runs another process inside a running container.

use std::process::Command;

use super::{Result, Runtime};

/// What `container exec` asks for.
#[derive(Debug, Clone, Default)]
pub struct ExecSpec {
    /// argv.
    pub args: Vec<String>,
    /// Extra `KEY=VALUE` over the container's environment.
    pub env: Vec<String>,
    /// `-u`; `None` keeps the container's user.
    pub user: Option<String>,
    /// `-w`; `None` keeps the container's working directory.
    pub workdir: Option<String>,
}

impl Runtime {
    /// A command that, when spawned, runs `spec` inside the running container (its
    /// namespaces, cgroup, user, capabilities and seccomp filter) with the spawner's stdio,
    /// and exits with the process's exit code (126/127 when it cannot be executed).
    pub fn exec_command(&self, id: &str, spec: &ExecSpec) -> Result<Command> {
        let _ = (id, spec);
        todo!()
    }
}
