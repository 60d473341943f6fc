//! What the end-to-end tests of clusters share: polling with a deadline, the `shoal` tables
//! read as JSON rows, the demo image, and services made the way every test makes them.
//!
//! Task containers run `httpd` or `sleep` as pid 1, which ignore SIGTERM, so every service
//! gets `--stop-grace-period 1s` (else each stop waits the 10 s default), and a short
//! `--restart-delay` (else a replacement waits the 5 s default).
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::process::Output;
use std::time::{Duration, Instant};

use crate::cluster::Cluster;

/// How long the cluster has to reach a state it should reach in a second or two: far above
/// normal, so only a real failure (or a hang) times out.
pub const CONVERGE: Duration = Duration::from_secs(60);

/// Pause between two looks at the cluster: each look runs `shoal`, a few milliseconds.
pub const POLL: Duration = Duration::from_millis(200);

/// The bound on moving a dead worker's tasks is 5 s; asserted with headroom, since a
/// loaded two-core CI machine can stretch heartbeats (the measured figure is printed).
pub const FAILOVER_BOUND: Duration = Duration::from_secs(10);

/// The error Docker prints (and shoal copies) when a worker is asked a manager-only command.
pub const NOT_A_MANAGER: &str = "This node is not a swarm manager";

/// Options every test service gets, see the module doc.
pub const FAST_STOP: [&str; 4] = ["--stop-grace-period", "1s", "--restart-delay", "100ms"];

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Polls `check` until it returns `Ok`, and returns that value. `Err` carries the state
/// observed, printed when `timeout` runs out.
pub fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    loop {
        match check() {
            Ok(value) => return value,
            Err(state) if start.elapsed() >= timeout => {
                panic!("timed out after {timeout:?} waiting for {what}; last state:\n{state}")
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// Asserts `out` is a failure whose stderr contains `needle`; returns the stderr.
pub fn fails_with(out: &Output, what: &str, needle: &str) -> String {
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "{what} succeeded, expected an error containing {needle:?}:\nstdout: {}\nstderr: {stderr}",
        text(&out.stdout)
    );
    assert!(
        stderr.contains(needle),
        "{what}: expected an error containing {needle:?}, got ({}):\n{stderr}",
        out.status
    );
    stderr
}

/// Builds the demo image in a temp dir and imports it as `demo:latest` on `nodes`.
pub fn import_demo(c: &Cluster, nodes: &[&str]) {
    let dir = tempfile::tempdir().expect("temp dir for the demo image");
    let tar = dir.path().join("demo.tar");
    crate::build_demo_rootfs(&tar);
    let tar = tar.to_str().expect("temp paths are UTF-8");
    for node in nodes {
        c.shoal_ok(node, &["image", "import", tar, "demo:latest"]);
    }
}

/// One line of `node ls --format json`.
#[derive(Debug, Clone)]
pub struct NodeRow {
    pub id: String,
    pub hostname: String,
    pub status: String,
    pub availability: String,
    pub manager_status: String,
    pub is_self: bool,
}

/// One line of `service ps --no-trunc --format json`.
#[derive(Debug, Clone)]
pub struct TaskRow {
    pub id: String,
    /// `SERVICE.SLOT` (or `SERVICE.NODEID` in global mode); history rows share it.
    pub name: String,
    pub node: String,
    pub desired: String,
    pub current: String,
    pub error: String,
}

impl TaskRow {
    /// Meant to run and reported running.
    pub fn running(&self) -> bool {
        self.desired == "Running" && self.current.starts_with("Running")
    }
}

/// One line of `service ls --format json`.
#[derive(Debug, Clone)]
pub struct ServiceRow {
    pub id: String,
    pub name: String,
    pub replicas: String,
}

pub fn json_lines(out: &str, what: &str) -> Vec<serde_json::Value> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{what}: bad JSON line {l:?}: {e}"))
        })
        .collect()
}

pub fn field(v: &serde_json::Value, key: &str) -> String {
    match &v[key] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => panic!("no {key:?} in {v}"),
        other => other.to_string(),
    }
}

/// `node ls` on `on`; `Err` with the error while `on` cannot answer (no leader yet, or not
/// a manager).
pub fn try_nodes(c: &Cluster, on: &str) -> Result<Vec<NodeRow>, String> {
    let out = c.shoal(on, &["node", "ls", "--format", "json"]);
    if !out.status.success() {
        return Err(format!("{on}: node ls failed: {}", text(&out.stderr)));
    }
    Ok(json_lines(&text(&out.stdout), "node ls")
        .iter()
        .map(|v| NodeRow {
            id: field(v, "ID"),
            hostname: field(v, "Hostname"),
            status: field(v, "Status"),
            availability: field(v, "Availability"),
            manager_status: field(v, "ManagerStatus"),
            is_self: v["Self"].as_bool() == Some(true),
        })
        .collect())
}

pub fn nodes(c: &Cluster, on: &str) -> Vec<NodeRow> {
    try_nodes(c, on).unwrap_or_else(|e| panic!("{e}"))
}

/// `service ps` of `services` on `on`, history rows included.
pub fn try_tasks(c: &Cluster, on: &str, services: &[&str]) -> Result<Vec<TaskRow>, String> {
    let mut args = vec!["service", "ps", "--no-trunc", "--format", "json"];
    args.extend(services);
    let out = c.shoal(on, &args);
    if !out.status.success() {
        return Err(format!("{on}: service ps failed: {}", text(&out.stderr)));
    }
    Ok(json_lines(&text(&out.stdout), "service ps")
        .iter()
        .map(|v| TaskRow {
            id: field(v, "ID"),
            name: field(v, "Name"),
            node: field(v, "Node"),
            desired: field(v, "DesiredState"),
            current: field(v, "CurrentState"),
            error: field(v, "Error"),
        })
        .collect())
}

pub fn tasks(c: &Cluster, on: &str, services: &[&str]) -> Vec<TaskRow> {
    try_tasks(c, on, services).unwrap_or_else(|e| panic!("{e}"))
}

pub fn try_services(c: &Cluster, on: &str) -> Result<Vec<ServiceRow>, String> {
    let out = c.shoal(on, &["service", "ls", "--format", "json"]);
    if !out.status.success() {
        return Err(format!("{on}: service ls failed: {}", text(&out.stderr)));
    }
    Ok(json_lines(&text(&out.stdout), "service ls")
        .iter()
        .map(|v| ServiceRow {
            id: field(v, "ID"),
            name: field(v, "Name"),
            replicas: field(v, "Replicas"),
        })
        .collect())
}

pub fn show_tasks(tasks: &[TaskRow]) -> String {
    tasks
        .iter()
        .map(|t| {
            format!(
                "{} {} node={} desired={} current={:?} error={:?}\n",
                t.id, t.name, t.node, t.desired, t.current, t.error
            )
        })
        .collect()
}

/// Waits until `service` has exactly `n` tasks meant to run, all running, and every one
/// passes `placed` (given its node); returns them.
pub fn wait_running(
    c: &Cluster,
    on: &str,
    service: &str,
    n: usize,
    placed: impl Fn(&str) -> bool,
) -> Vec<TaskRow> {
    wait_until(CONVERGE, &format!("{n} running tasks of {service}"), || {
        let all = try_tasks(c, on, &[service])?;
        let live: Vec<TaskRow> = all
            .iter()
            .filter(|t| t.desired == "Running")
            .cloned()
            .collect();
        if live.len() == n && live.iter().all(|t| t.running() && placed(&t.node)) {
            Ok(live)
        } else {
            Err(show_tasks(&all))
        }
    })
}

/// Running containers per node (`container ls -q` on every live node).
pub fn containers(c: &Cluster) -> BTreeMap<String, usize> {
    c.nodes()
        .into_iter()
        .map(|node| {
            let n = c
                .shoal_ok(&node, &["container", "ls", "-q"])
                .split_whitespace()
                .count();
            (node, n)
        })
        .collect()
}

/// Waits until the nodes run `total` containers in all; returns the count per node.
pub fn wait_containers(c: &Cluster, total: usize) -> BTreeMap<String, usize> {
    wait_until(CONVERGE, &format!("{total} containers in all"), || {
        let per_node = containers(c);
        if per_node.values().sum::<usize>() == total {
            Ok(per_node)
        } else {
            Err(format!("{per_node:?}"))
        }
    })
}

pub fn create_service(c: &Cluster, on: &str, name: &str, opts: &[&str], cmd: &[&str]) -> String {
    let mut args = vec!["service", "create", "--name", name];
    args.extend(FAST_STOP);
    args.extend(opts);
    args.push("demo:latest");
    args.extend(cmd);
    c.shoal_ok(on, &args).trim().to_string()
}

pub const HTTPD: [&str; 6] = ["httpd", "-f", "-p", "80", "-h", "/var/www"];
pub const SLEEP: [&str; 2] = ["sleep", "1000"];
