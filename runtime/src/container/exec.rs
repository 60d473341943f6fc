//! `Runtime::exec_command`: runs another process inside a running container.

use std::process::Command;

use super::{ContainerError, Result, Runtime, Status};

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
        let c = self.lookup(id)?;
        if c.state.status != Status::Running {
            return Err(ContainerError::NotRunning(c.id));
        }
        if spec.args.is_empty() {
            return Err(ContainerError::InvalidSpec("no command specified".into()));
        }
        let mut process = c.process.clone();
        process.args = spec.args.clone();
        for kv in &spec.env {
            if let Some((k, _)) = kv.split_once('=') {
                process
                    .env
                    .retain(|e| e.split_once('=').map(|(ek, _)| ek) != Some(k));
                process.env.push(kv.clone());
            }
        }
        if let Some(u) = &spec.user {
            let image = self.images.resolve(&c.image_id)?;
            let layers = self.images.layer_dirs(&image)?;
            let (uid, gid, extra) = super::user::resolve(u, &layers)?;
            process.uid = uid;
            process.gid = gid;
            process.additional_gids = extra;
        }
        if let Some(w) = &spec.workdir {
            process.cwd = w.clone();
        }
        process.tty = false;
        let json = serde_json::to_string(&process).map_err(|source| ContainerError::Json {
            what: "exec process".into(),
            source,
        })?;
        let mut cmd = Command::new(&self.cfg.shim);
        cmd.arg("exec").arg(self.container_dir(&c.id)).arg(json);
        Ok(cmd)
    }
}
