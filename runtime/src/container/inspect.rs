//! `Container::inspect`: Docker's `container inspect` document, with Docker's field names so
//! scripts written for Docker keep working.

use serde_json::{json, Value};

use super::{Container, Runtime};

/// Docker prints Go's zero time for "never".
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

impl Runtime {
    /// The inspect document of `c`.
    pub fn inspect(&self, c: &Container) -> Value {
        let dir = self.container_dir(&c.id);
        let s = &c.state;
        let or_zero = |t: &str| {
            if t.is_empty() {
                ZERO_TIME.to_string()
            } else {
                t.to_string()
            }
        };
        // What the overlay is mounted with, the image's init layer included.
        let lower: Vec<String> = super::state::read_run_spec(&dir)
            .ok()
            .flatten()
            .map(|run| run.lower_dirs)
            .unwrap_or_default()
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        // The /etc files live in the container's own /dev tmpfs (see `process::init`): on
        // the host they are reachable through its process while it runs, and not otherwise.
        let etc_path = |name: &str| match s.pid {
            0 => String::new(),
            pid => format!("/proc/{pid}/root/etc/{name}"),
        };
        let (path, args) = match c.process.args.split_first() {
            Some((p, a)) => (p.clone(), a.to_vec()),
            None => (String::new(), Vec::new()),
        };
        let user = if c.spec.user.is_some() {
            c.spec.user.clone().unwrap_or_default()
        } else {
            String::new()
        };
        json!({
            "Id": c.id,
            "Created": c.created,
            "Path": path,
            "Args": args,
            "State": {
                "Status": s.status.as_str(),
                "Running": s.status == super::Status::Running,
                "Paused": false,
                "Restarting": false,
                "OOMKilled": s.oom_killed,
                "Dead": s.status == super::Status::Dead,
                "Pid": s.pid,
                "ExitCode": s.exit_code,
                "Error": s.error,
                "StartedAt": or_zero(&s.started_at),
                "FinishedAt": or_zero(&s.finished_at),
            },
            "Image": c.image_id,
            "ResolvConfPath": etc_path("resolv.conf"),
            "HostnamePath": etc_path("hostname"),
            "HostsPath": etc_path("hosts"),
            "LogPath": dir.join(crate::logs::LOG_FILE),
            "Name": format!("/{}", c.name),
            "RestartCount": 0,
            "Driver": "overlay",
            "HostConfig": {
                "NetworkMode": match &c.spec.network {
                    crate::spec::NetworkMode::None => "none",
                    crate::spec::NetworkMode::Host => "host",
                    crate::spec::NetworkMode::Path(_) => "sandbox",
                },
                "AutoRemove": c.spec.auto_remove,
                "CapAdd": c.spec.cap_add,
                "CapDrop": c.spec.cap_drop,
                "ReadonlyRootfs": c.spec.read_only,
                "Memory": c.spec.memory.unwrap_or(0),
                "NanoCpus": c.spec.nano_cpus.unwrap_or(0),
                "PidsLimit": c.spec.pids_limit,
                "LogConfig": { "Type": "json-file", "Config": {} },
            },
            "GraphDriver": {
                "Name": "overlay",
                "Data": {
                    "LowerDir": lower.join(":"),
                    "UpperDir": dir.join("upper"),
                    "WorkDir": dir.join("work"),
                },
            },
            "Config": {
                "Hostname": self.hostname_of(c),
                "User": user,
                "Env": c.process.env,
                "Cmd": c.spec.cmd,
                "Entrypoint": c.spec.entrypoint,
                "Image": c.image,
                "WorkingDir": c.spec.workdir.clone().unwrap_or_default(),
                "Tty": c.spec.tty,
                "OpenStdin": c.spec.open_stdin,
                "Labels": c.spec.labels.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            },
        })
    }

    fn hostname_of(&self, c: &Container) -> String {
        c.spec
            .hostname
            .clone()
            .unwrap_or_else(|| c.short_id().to_string())
    }
}
