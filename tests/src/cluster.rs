//! [`Cluster`]: several `shoald` nodes on this machine, each in its own network and UTS
//! namespace and joined by a bridge in a lab namespace with no route off the machine. The
//! harness only drives `deploy/cluster.sh` (`up`, `down`, `shoal`, `exec`, `kill`, `start`),
//! so operators and tests share one implementation; read the script for the layout.
//!
//! Every cluster gets a subnet `198.18.X.0/24` and the name `shoal-tX` from a [`SubnetLease`]:
//! an exclusive `flock` on `/run/shoal-test-clusters/198.18.X.lock`, held as long as the
//! cluster lives, so clusters of one test binary and of test binaries running side by side
//! never share a subnet, a namespace or a state directory. A lock dies with its process, so a
//! test binary that was killed frees its leases; the next cluster on that subnet takes the
//! leftover cluster of the same name down first (`up` does).
//!
//! Dropping a [`Cluster`] runs `cluster.sh down`, also when the test panicked (then the tail
//! of every node's log goes to stderr first).

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use crate::{try_run, Bins, COMMAND_TIMEOUT};

/// Where the subnet leases' lock files live.
const LEASE_DIR: &str = "/run/shoal-test-clusters";

/// The first third octet tests lease: 198.18.0–63 stay free for clusters people start by
/// hand with `deploy/cluster.sh` (its default is 198.18.0).
const FIRST_TEST_OCTET: u8 = 64;

/// How long `cluster.sh up` and `down` may take: starting a daemon takes well under a
/// second and forming a swarm a few; only a hang comes near this.
pub const CLUSTER_TIMEOUT: Duration = Duration::from_secs(300);

/// Lines of each node's log printed when a test panicked.
const LOG_TAIL_LINES: usize = 60;

/// The environment variable naming CI, where a missing privilege fails instead of skipping.
const CI_ENV: &str = "CI";

/// True when this process may build clusters (it runs as root). Otherwise prints why the
/// test is skipped and returns false; under `CI=true` it panics instead, since CI runs as
/// root and a skip there would hide a broken setup.
pub fn can_run() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let why = "cluster tests need root (network namespaces, mounts, cgroups)";
    assert!(std::env::var(CI_ENV).as_deref() != Ok("true"), "{why}");
    eprintln!("SKIPPED: {why}");
    false
}

/// Exclusive use of the subnet `198.18.<octet>.0/24` (and the cluster name derived from it)
/// while held; the lock is released when the lease is dropped or the process dies.
#[derive(Debug)]
struct SubnetLease {
    octet: u8,
    _lock: Flock<File>,
}

impl SubnetLease {
    /// Takes the first free subnet; panics when all are taken.
    fn take() -> SubnetLease {
        fs::create_dir_all(LEASE_DIR).unwrap_or_else(|e| panic!("create {LEASE_DIR}: {e}"));
        for octet in FIRST_TEST_OCTET..=u8::MAX {
            let path = Path::new(LEASE_DIR).join(format!("198.18.{octet}.lock"));
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return SubnetLease { octet, _lock: lock },
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => continue,
                Err((_, errno)) => panic!("flock {}: {errno}", path.display()),
            }
        }
        panic!(
            "every test subnet 198.18.{FIRST_TEST_OCTET}-255 is leased: {} clusters at once?",
            usize::from(u8::MAX - FIRST_TEST_OCTET) + 1
        );
    }
}

/// One node as `cluster.sh` laid it out.
#[derive(Debug, Clone)]
struct Node {
    /// 1-based, managers first; the node's netns is `<cluster>-n<index>`.
    index: usize,
    /// Its hostname and name in every command: `manager1`, `worker2`, …
    host: String,
    /// Its address in the cluster subnet.
    addr: String,
}

/// A multi-node cluster on this machine, taken down when dropped.
#[derive(Debug)]
pub struct Cluster {
    /// The cluster's name: prefix of its namespaces, last part of its state dir.
    name: String,
    /// `198.18.X`, the first three octets of the cluster's /24.
    subnet: String,
    /// Every node's data root, socket, log and pid file.
    state_dir: PathBuf,
    /// `deploy/cluster.sh`.
    script: PathBuf,
    bins: Bins,
    /// Filled once `up` succeeded (read from the state dir, where the script wrote it).
    nodes: Vec<Node>,
    /// Keeps the subnet and name ours until the cluster is down.
    _lease: SubnetLease,
}

impl Cluster {
    /// Starts `managers + workers` nodes (`manager1..`, `worker1..`) and forms a swarm:
    /// `manager1` inits it, the others join through it. Panics with the script's output when
    /// that fails.
    pub fn up(managers: usize, workers: usize) -> Cluster {
        Cluster::create(managers, workers, true)
    }

    /// Starts `nodes` daemons (`manager1..`), each answering on its socket, without forming a
    /// swarm.
    pub fn up_no_swarm(nodes: usize) -> Cluster {
        Cluster::create(nodes, 0, false)
    }

    fn create(managers: usize, workers: usize, swarm: bool) -> Cluster {
        let lease = SubnetLease::take();
        let name = format!("shoal-t{}", lease.octet);
        let subnet = format!("198.18.{}", lease.octet);
        let bins = Bins::locate();
        let bin_dir = bins
            .shoald
            .parent()
            .expect("shoald lies in a directory")
            .to_path_buf();
        // Built before the script runs, so that a failing `up` is still taken down by Drop.
        let mut cluster = Cluster {
            state_dir: PathBuf::from("/run/shoal-cluster").join(&name),
            name,
            subnet,
            script: crate::repo_root().join("deploy/cluster.sh"),
            bins,
            nodes: Vec::new(),
            _lease: lease,
        };
        let (managers, workers) = (managers.to_string(), workers.to_string());
        let mut args = vec![
            "up",
            "--name",
            &cluster.name,
            "--managers",
            &managers,
            "--workers",
            &workers,
            "--subnet",
            &cluster.subnet,
        ];
        let bin_dir = bin_dir.to_str().expect("the target dir path is UTF-8");
        args.extend(["--bin", bin_dir]);
        if !swarm {
            args.push("--no-swarm");
        }
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        let out = cluster.script_output(&args, CLUSTER_TIMEOUT);
        assert!(
            out.status.success(),
            "cluster.sh {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.nodes = cluster.read_nodes();
        cluster
    }

    /// Parses `<state>/nodes` ("INDEX HOST ADDR" per line), which `up` wrote.
    fn read_nodes(&self) -> Vec<Node> {
        let path = self.state_dir.join("nodes");
        let text = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {} after up: {e}", path.display()));
        text.lines()
            .map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                match fields[..] {
                    [index, host, addr] => Node {
                        index: index.parse().unwrap_or_else(|e| {
                            panic!("{}: bad index in {line:?}: {e}", path.display())
                        }),
                        host: host.to_string(),
                        addr: addr.to_string(),
                    },
                    _ => panic!("{}: bad line {line:?}", path.display()),
                }
            })
            .collect()
    }

    /// Runs `cluster.sh ARGS…` with this cluster's state dir; `Err` when it could not run
    /// or hung.
    fn try_script(&self, args: &[String], timeout: Duration) -> Result<Output, String> {
        let mut cmd = Command::new("bash");
        cmd.arg(&self.script)
            .args(args)
            // Explicit, so that a state dir in the caller's environment cannot make two
            // clusters share one.
            .env("SHOAL_CLUSTER_STATE", &self.state_dir)
            .env_remove("SHOAL_CLUSTER_NAME");
        try_run(cmd, None, timeout)
    }

    fn script_output(&self, args: &[String], timeout: Duration) -> Output {
        self.try_script(args, timeout)
            .unwrap_or_else(|err| panic!("{err}"))
    }

    /// `cluster.sh COMMAND --name <this> NODE REST…`, checking NODE is one of ours.
    fn node_command(&self, command: &str, node: &str, rest: &[&str]) -> Output {
        self.node(node);
        let mut args: Vec<String> = vec![command.into(), "--name".into(), self.name.clone()];
        args.push(node.into());
        args.extend(rest.iter().map(|s| s.to_string()));
        self.script_output(&args, COMMAND_TIMEOUT)
    }

    fn node(&self, node: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.host == node)
            .unwrap_or_else(|| {
                panic!(
                    "cluster {} has no node {node:?} (nodes: {:?})",
                    self.name,
                    self.nodes()
                )
            })
    }

    /// The cluster's name (`shoal-tX`), the prefix of its namespaces.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `198.18.X`: the cluster's /24 without its last octet.
    pub fn subnet(&self) -> &str {
        &self.subnet
    }

    /// The directory holding every node's data root, socket, log and pid file.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The binaries the nodes run.
    pub fn bins(&self) -> &Bins {
        &self.bins
    }

    /// Every node's hostname, managers first (`manager1`, …, `worker1`, …).
    pub fn nodes(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.host.clone()).collect()
    }

    /// The nodes `up` made managers (for a swarm) — `manager1..`.
    pub fn managers(&self) -> Vec<String> {
        self.nodes_starting("manager")
    }

    /// The nodes `up` made workers — `worker1..`.
    pub fn workers(&self) -> Vec<String> {
        self.nodes_starting("worker")
    }

    fn nodes_starting(&self, prefix: &str) -> Vec<String> {
        self.nodes()
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .collect()
    }

    /// NODE's address in the cluster subnet (`198.18.X.(10+index)`).
    pub fn addr(&self, node: &str) -> String {
        self.node(node).addr.clone()
    }

    /// The name of NODE's network namespace (for `ip -n`).
    pub fn netns(&self, node: &str) -> String {
        format!("{}-n{}", self.name, self.node(node).index)
    }

    /// The name of the lab namespace holding the bridge.
    pub fn lab_netns(&self) -> String {
        format!("{}-lab", self.name)
    }

    /// NODE's data root.
    pub fn data_root(&self, node: &str) -> PathBuf {
        self.state_dir.join(&self.node(node).host).join("data")
    }

    /// `unix://<NODE's socket>`, for `shoal -H` run without the script.
    pub fn host(&self, node: &str) -> String {
        let socket = self
            .state_dir
            .join(&self.node(node).host)
            .join("shoal.sock");
        format!("unix://{}", socket.display())
    }

    /// Everything NODE's shoald (all its runs) wrote to stderr.
    pub fn log(&self, node: &str) -> String {
        let path = self
            .state_dir
            .join(&self.node(node).host)
            .join("shoald.log");
        fs::read_to_string(path).unwrap_or_default()
    }

    /// NODE's shoald pid while it runs (a zombie counts as gone: init may never reap it).
    pub fn pid(&self, node: &str) -> Option<u32> {
        let path = self.state_dir.join(&self.node(node).host).join("pid");
        let pid: u32 = fs::read_to_string(path).ok()?.trim().parse().ok()?;
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may hold spaces and parentheses: the state follows the last ')'.
        let state = stat.get(stat.rfind(')')? + 2..)?;
        if state.starts_with('Z') {
            return None;
        }
        // A reused pid is some other process; ours names the node's data root.
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let root = self.data_root(node);
        let root = root.as_os_str().as_encoded_bytes();
        cmdline
            .windows(root.len())
            .any(|w| w == root)
            .then_some(pid)
    }

    /// Runs `shoal ARGS…` against NODE's daemon and returns its output.
    pub fn shoal(&self, node: &str, args: &[&str]) -> Output {
        self.node_command("shoal", node, args)
    }

    /// Runs `shoal ARGS…` on NODE, asserts it succeeded, and returns its stdout.
    pub fn shoal_ok(&self, node: &str, args: &[&str]) -> String {
        let out = self.shoal(node, args);
        assert!(
            out.status.success(),
            "{node}: shoal {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs CMD… in NODE's network and UTS namespaces (the host's filesystem) and returns
    /// its output.
    pub fn exec(&self, node: &str, cmd: &[&str]) -> Output {
        assert!(!cmd.is_empty(), "exec on {node}: no command");
        self.node_command("exec", node, cmd)
    }

    /// [`Cluster::exec`], asserting success; returns stdout.
    pub fn exec_ok(&self, node: &str, cmd: &[&str]) -> String {
        let out = self.exec(node, cmd);
        assert!(
            out.status.success(),
            "{node}: {cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// SIGKILLs NODE's shoald and waits until it is gone; its containers keep running.
    pub fn kill(&self, node: &str) {
        self.node_ok("kill", node);
    }

    /// Stops NODE's shoald with SIGTERM (SIGKILL after a grace period).
    pub fn stop(&self, node: &str) {
        self.node_ok("stop", node);
    }

    /// Starts NODE's shoald again on the same data root, namespaces and hostname, and waits
    /// until it answers.
    pub fn start(&self, node: &str) {
        self.node_ok("start", node);
    }

    fn node_ok(&self, command: &str, node: &str) {
        let out = self.node_command(command, node, &[]);
        assert!(
            out.status.success(),
            "cluster.sh {command} {node} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The last lines of every node's log, for a failed test's output.
    fn log_tails(&self) -> String {
        let mut all = String::new();
        for node in &self.nodes {
            let log = self.log(&node.host);
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            all.push_str(&format!(
                "--- {} shoald log ({}, last {} lines) ---\n{}\n",
                node.host,
                self.name,
                tail.len(),
                tail.join("\n")
            ));
        }
        all
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprint!("{}", self.log_tails());
        }
        let args = ["down".to_string(), "--name".to_string(), self.name.clone()];
        match self.try_script(&args, CLUSTER_TIMEOUT) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "cluster.sh down --name {} failed ({}):\n{}{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(err) => eprintln!("cluster.sh down --name {}: {err}", self.name),
        }
    }
}
