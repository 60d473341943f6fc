//! The node's swarm membership, owned by `shoald`: `swarm init|join|leave`, the manager (when
//! the node is one) with its cluster port, the agent, and the reaction to promote and demote.
//!
//! Membership lives in `<data-root>/swarm/`: `state.json` (node id, role, addresses),
//! `certificates/` (the node's key and certificate, the CA) and `raft/` (managers only). A
//! restarted `shoald` resumes from it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_manager::ca::RootCa;
use shoal_manager::controlapi::{ControlApi, ControlRouter, Route};
use shoal_manager::dispatcher::ImageExporter;
use shoal_manager::manager::{Manager, ManagerConfig};
use shoal_proto::cluster::v1::ca_client::CaClient;
use shoal_proto::cluster::v1::dispatcher_client::DispatcherClient;
use shoal_proto::cluster::v1::swarm_server::Swarm;
use shoal_proto::cluster::v1::*;
use shoal_proto::transport::{self, Identity, Role, ServerConfigCell};
use shoal_runtime::Runtime;
use shoal_worker::agent::{self, AgentConfig, AgentState};
use shoal_worker::network::NodeNetwork;
use shoal_worker::table::{self, NodeTable};
use tokio::sync::{mpsc, oneshot, watch};
use tonic::{Request, Response, Status};

/// Swarm's default cluster port.
pub const DEFAULT_PORT: u16 = 4247;
/// Docker's message for control calls on a node outside a swarm.
pub const NOT_IN_SWARM: &str = "This node is not a swarm manager. Use \"shoal swarm init\" or \"shoal swarm join\" to connect this node to swarm and try again.";
/// Docker's message for control calls on a worker.
pub const NOT_A_MANAGER: &str = "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. Please run this command on a manager node or promote the current node to a manager.";
const ALREADY_IN_SWARM: &str = "This node is already part of a swarm. Use \"shoal swarm leave\" to leave this swarm and join another one.";

/// `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SwarmState {
    node_id: String,
    cluster_id: String,
    manager: bool,
    raft_id: u64,
    advertise_addr: String,
    listen_addr: String,
    managers: Vec<String>,
    /// This manager is in the Raft membership: a restart resumes, it does not join again.
    #[serde(default)]
    raft_joined: bool,
}

/// A running membership.
struct Active {
    state: SwarmState,
    identity: Identity,
    manager: Option<RunningManager>,
    agent_stop: watch::Sender<bool>,
    agent_state: watch::Receiver<AgentState>,
    agent: tokio::task::JoinHandle<()>,
}

struct RunningManager {
    manager: Arc<Manager>,
    stop: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
}

/// The node's swarm side.
pub struct SwarmNode {
    root: PathBuf,
    runtime: Runtime,
    active: tokio::sync::Mutex<Option<Active>>,
    /// For the synchronous control router: the current manager and role.
    current: Mutex<Current>,
    /// The node's task networking. One per membership: it outlives agent restarts (role
    /// changes), since its sandboxes and DNS servers belong to running containers.
    network: tokio::sync::Mutex<Option<Arc<NodeNetwork>>>,
    /// The node's nft table, shared with the local bridge networks.
    table: Arc<NodeTable>,
}

#[derive(Clone, Default)]
enum Current {
    #[default]
    Inactive,
    Worker,
    Manager(Arc<Manager>),
}

impl std::fmt::Debug for SwarmNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwarmNode")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

fn internal(context: &str) -> impl Fn(String) -> Status + '_ {
    move |e| Status::internal(format!("{context}: {e}"))
}

/// `host[:port]` with the default port.
fn with_port(addr: &str) -> Result<String, Status> {
    let addr = addr.trim();
    if addr.is_empty() {
        return Err(Status::invalid_argument("empty address"));
    }
    if addr.parse::<SocketAddr>().is_ok() {
        return Ok(addr.to_string());
    }
    if let Ok(ip) = addr.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT).to_string());
    }
    // An interface name (Docker accepts `--advertise-addr eth0`).
    if let Some(ip) = interface_addr(addr) {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT).to_string());
    }
    Err(Status::invalid_argument(format!(
        "invalid address {addr:?}: expected IP[:PORT] or an interface name"
    )))
}

fn interface_addr(name: &str) -> Option<std::net::IpAddr> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|ifa| {
        (ifa.interface_name == name)
            .then(|| {
                ifa.address
                    .and_then(|a| a.as_sockaddr_in().map(|s| std::net::IpAddr::V4(s.ip())))
            })
            .flatten()
    })
}

/// `--advertise-addr` with the default port, or the node's one address when not given.
fn advertise_addr(given: &str) -> Result<String, Status> {
    if given.is_empty() {
        default_advertise()
    } else {
        with_port(given)
    }
}

/// `--listen-addr` with the default port, or all addresses on the advertised port.
fn listen_addr(given: &str, advertise: &str) -> Result<String, Status> {
    if given.is_empty() {
        let port = advertise.rsplit_once(':').map_or("4247", |(_, p)| p);
        Ok(format!("0.0.0.0:{port}"))
    } else {
        with_port(given)
    }
}

/// Docker's choice when no --advertise-addr is given: the one non-loopback IPv4 address.
fn default_advertise() -> Result<String, Status> {
    let addrs: Vec<(String, std::net::Ipv4Addr)> = nix::ifaddrs::getifaddrs()
        .map_err(|e| Status::internal(format!("list interfaces: {e}")))?
        .filter_map(|ifa| {
            let ip = ifa.address?.as_sockaddr_in()?.ip();
            (!ip.is_loopback()).then_some((ifa.interface_name, ip))
        })
        .collect();
    match addrs.as_slice() {
        [(_, ip)] => Ok(SocketAddr::new((*ip).into(), DEFAULT_PORT).to_string()),
        [] => Err(Status::invalid_argument(
            "could not choose an IP address to advertise since this system has no non-loopback address - specify one with --advertise-addr",
        )),
        [(a, _), (b, _), ..] => Err(Status::invalid_argument(format!(
            "could not choose an IP address to advertise since this system has multiple addresses on different interfaces ({a} and {b}) - specify one with --advertise-addr"
        ))),
    }
}

fn description(runtime: &Runtime) -> NodeDescription {
    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let nano_cpus =
        std::thread::available_parallelism().map_or(1, |n| n.get()) as i64 * 1_000_000_000;
    let memory_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<i64>().ok())
        })
        .map_or(0, |kb| kb * 1024);
    let _ = runtime;
    NodeDescription {
        hostname,
        os: std::env::consts::OS.into(),
        arch: std::env::consts::ARCH.into(),
        nano_cpus,
        memory_bytes,
        engine_version: env!("CARGO_PKG_VERSION").into(),
        kernel_version: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
    }
}

/// Exports images of the node's store for other nodes' agents, and fetches images other
/// managers loaded.
struct Exporter {
    runtime: Runtime,
    tls: Arc<rustls::ClientConfig>,
    fetcher: Arc<shoal_worker::images::ImageFetcher>,
}

/// Writes into a channel in chunks.
struct ChunkWriter {
    tx: mpsc::Sender<Result<Vec<u8>, Status>>,
    buf: Vec<u8>,
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= shoal_proto::CHUNK_SIZE {
            self.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::take(&mut self.buf);
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "receiver gone"))
    }
}

impl ImageExporter for Exporter {
    fn export(
        &self,
        reference: &str,
    ) -> Result<Option<shoal_manager::dispatcher::ImageChunks>, Status> {
        if self.runtime.images().resolve(reference).is_err() {
            return Ok(None);
        }
        let (tx, rx) = mpsc::channel(4);
        let rt = self.runtime.clone();
        let reference = reference.to_string();
        tokio::task::spawn_blocking(move || {
            let mut out = ChunkWriter {
                tx: tx.clone(),
                buf: Vec::new(),
            };
            let saved = rt.images().save(&reference, &mut out);
            let result = saved
                .map_err(|e| e.to_string())
                .and_then(|_| std::io::Write::flush(&mut out).map_err(|e| e.to_string()));
            if let Err(err) = result {
                let _ =
                    tx.blocking_send(Err(Status::internal(format!("export {reference}: {err}"))));
            }
        });
        Ok(Some(rx))
    }

    fn replicate(
        &self,
        reference: String,
        source: String,
    ) -> futures::future::BoxFuture<'static, Result<(), Status>> {
        let (runtime, tls, fetcher) = (
            self.runtime.clone(),
            Arc::clone(&self.tls),
            Arc::clone(&self.fetcher),
        );
        Box::pin(async move {
            let channel = transport::channel(&source, tls)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            fetcher
                .ensure(&runtime, &reference, &[(source, channel)])
                .await
                .map_err(|e| Status::unavailable(e.to_string()))
        })
    }
}

impl SwarmNode {
    /// The swarm side of the daemon on `root`; resumes a membership found on disk.
    pub async fn open(
        root: &Path,
        runtime: Runtime,
        table: Arc<NodeTable>,
    ) -> Result<Arc<SwarmNode>, Status> {
        let node = Arc::new(SwarmNode {
            root: root.join("swarm"),
            runtime,
            table,
            active: tokio::sync::Mutex::new(None),
            current: Mutex::new(Current::Inactive),
            network: tokio::sync::Mutex::new(None),
        });
        let state_file = node.root.join("state.json");
        if state_file.exists() {
            let text = std::fs::read_to_string(&state_file)
                .map_err(|e| Status::internal(format!("read {}: {e}", state_file.display())))?;
            let state: SwarmState = serde_json::from_str(&text)
                .map_err(|e| Status::internal(format!("parse {}: {e}", state_file.display())))?;
            let identity = Identity::load(&node.certs_dir())
                .map_err(|e| Status::internal(e.to_string()))?
                .ok_or_else(|| Status::internal("swarm state without a node certificate"))?;
            let active = node.activate(state, identity, None, false).await?;
            *node.active.lock().await = Some(active);
            tracing::info!("swarm membership resumed");
        } else if let Err(err) = node.table.clear(table::CLUSTER).await {
            // Not in a swarm: the cluster wants no rules.
            tracing::warn!(%err, "apply the node's nft table");
        }
        tokio::spawn(Arc::clone(&node).watch_role());
        Ok(node)
    }

    fn certs_dir(&self) -> PathBuf {
        self.root.join("certificates")
    }

    fn save_state(&self, state: &SwarmState) -> Result<(), Status> {
        save_state(&self.root, state)
    }

    /// Starts the manager (when the state says so) and the agent.
    async fn activate(
        &self,
        mut state: SwarmState,
        identity: Identity,
        bootstrap: Option<RootCa>,
        join_now: bool,
    ) -> Result<Active, Status> {
        let manager = if state.manager {
            let joining = !state.raft_joined && (bootstrap.is_some() || join_now);
            let m = self
                .start_manager(&state, &identity, bootstrap, join_now)
                .await?;
            if joining {
                state.raft_joined = true;
                self.save_state(&state)?;
            }
            Some(m)
        } else {
            None
        };
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = match &manager {
            Some(m) => Current::Manager(Arc::clone(&m.manager)),
            None => Current::Worker,
        };
        let network = self.network_for(&state.node_id).await?;
        let (agent_stop, stop_rx) = watch::channel(false);
        let (state_tx, agent_state) = watch::channel(AgentState::default());
        let cfg = AgentConfig {
            network,
            node_id: state.node_id.clone(),
            managers: state.managers.clone(),
            tls: transport::client_config(&identity)
                .map_err(|e| Status::internal(e.to_string()))?,
            runtime: self.runtime.clone(),
            description: description(&self.runtime),
        };
        let agent = tokio::spawn(agent::run(cfg, state_tx, stop_rx));
        Ok(Active {
            state,
            identity,
            manager,
            agent_stop,
            agent_state,
            agent,
        })
    }

    async fn start_manager(
        &self,
        state: &SwarmState,
        identity: &Identity,
        bootstrap: Option<RootCa>,
        join_now: bool,
    ) -> Result<RunningManager, Status> {
        let listener = tokio::net::TcpListener::bind(&state.listen_addr)
            .await
            .map_err(|e| {
                Status::failed_precondition(format!("listen on {}: {e}", state.listen_addr))
            })?;
        let tls =
            transport::server_config(identity).map_err(|e| Status::internal(e.to_string()))?;
        let cfg = ManagerConfig {
            dir: self.root.join("raft"),
            node_id: state.node_id.clone(),
            raft_id: state.raft_id,
            advertise_addr: state.advertise_addr.clone(),
            identity: identity.clone(),
            heartbeat: shoal_manager::dispatcher::DEFAULT_HEARTBEAT,
        };
        let exporter = Exporter {
            runtime: self.runtime.clone(),
            tls: transport::client_config(identity).map_err(|e| Status::internal(e.to_string()))?,
            fetcher: Arc::default(),
        };
        let manager = Manager::start(cfg, Arc::new(exporter))
            .await
            .map_err(|e| Status::internal(format!("start the manager: {e}")))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn({
            let manager = Arc::clone(&manager);
            async move {
                let shutdown = async {
                    let _ = stopped.await;
                };
                if let Err(err) = manager
                    .serve(listener, ServerConfigCell::new(tls), shutdown)
                    .await
                {
                    tracing::error!(%err, "cluster port server failed");
                }
            }
        });
        if let Some(ca) = bootstrap {
            manager
                .bootstrap(&ca, description(&self.runtime))
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
        } else if !state.raft_joined && join_now {
            manager
                .join(&state.managers, Duration::from_secs(60))
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
        } else if !state.raft_joined {
            // A restart between the node's join and its manager's: finish joining without
            // holding up the daemon's socket.
            let (manager, root, mut state) =
                (Arc::clone(&manager), self.root.clone(), state.clone());
            tokio::spawn(async move {
                match manager
                    .join(&state.managers, Duration::from_secs(3600))
                    .await
                {
                    Ok(()) => {
                        state.raft_joined = true;
                        if let Err(err) = save_state(&root, &state) {
                            tracing::warn!(error = %err.message(), "record the raft join");
                        }
                    }
                    Err(err) => tracing::error!(%err, "join the managers"),
                }
            });
        }
        Ok(RunningManager {
            manager,
            stop,
            server,
        })
    }

    /// The node's networking for `node_id`, made on first use.
    async fn network_for(&self, node_id: &str) -> Result<Arc<NodeNetwork>, Status> {
        let mut guard = self.network.lock().await;
        if let Some(n) = guard.as_ref().filter(|n| n.node_id() == node_id) {
            return Ok(Arc::clone(n));
        }
        if let Some(old) = guard.take() {
            old.shutdown().await;
        }
        let network = NodeNetwork::new(
            node_id.to_string(),
            self.root.join("network"),
            Arc::clone(&self.table),
        )
        .await
        .map_err(|e| Status::internal(format!("set up node networking: {e}")))?;
        *guard = Some(Arc::clone(&network));
        Ok(network)
    }

    async fn stop_manager(running: RunningManager) {
        running.manager.shutdown().await;
        let _ = running.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), running.server).await;
    }

    /// Stops the agent and manager of `active`.
    async fn deactivate(&self, active: Active) {
        active.agent_stop.send_replace(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), active.agent).await;
        if let Some(m) = active.manager {
            Self::stop_manager(m).await;
        }
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Current::Inactive;
    }

    /// Stops everything (daemon shutdown); the membership stays on disk.
    pub async fn shutdown(&self) {
        if let Some(active) = self.active.lock().await.take() {
            self.deactivate(active).await;
        }
    }

    /// Follows the node's desired role: after `node promote|demote` the agent sees the new
    /// desired role; the node then gets a certificate for it and starts or stops its manager.
    async fn watch_role(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let mut guard = self.active.lock().await;
            let Some(active) = guard.as_mut() else {
                continue;
            };
            let node = active.agent_state.borrow().node.clone();
            let Some(node) = node else { continue };
            let desired_manager =
                node.spec.as_ref().map(|s| s.desired_role()) == Some(NodeRole::Manager);
            if desired_manager == active.state.manager {
                continue;
            }
            let managers = active.agent_state.borrow().managers.clone();
            match self.change_role(active, desired_manager, &managers).await {
                Ok(()) => tracing::info!(manager = desired_manager, "node role changed"),
                Err(err) => tracing::warn!(error = %err.message(), "role change failed; retrying"),
            }
        }
    }

    async fn change_role(
        &self,
        active: &mut Active,
        manager: bool,
        managers: &[String],
    ) -> Result<(), Status> {
        let (key_pem, csr_pem) = transport::generate_csr(&active.state.node_id)
            .map_err(|e| Status::internal(e.to_string()))?;
        let tls = transport::client_config(&active.identity)
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut last = Status::unavailable("no manager known");
        let mut renewed = None;
        for addr in managers {
            let channel = transport::channel(addr, Arc::clone(&tls))
                .map_err(|e| Status::internal(e.to_string()))?;
            match CaClient::new(channel)
                .renew_node_certificate(RenewNodeCertificateRequest {
                    csr_pem: csr_pem.clone(),
                })
                .await
            {
                Ok(r) => {
                    renewed = Some(r.into_inner());
                    break;
                }
                Err(status) => last = status,
            }
        }
        let renewed = renewed.ok_or(last)?;
        if (renewed.role() == NodeRole::Manager) != manager {
            return Err(Status::unavailable(
                "the certificate's role is not the desired one yet",
            ));
        }
        let identity = Identity {
            cert_pem: renewed.cert_pem,
            key_pem,
            ca_pem: active.identity.ca_pem.clone(),
        };
        identity
            .save(&self.certs_dir())
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut state = active.state.clone();
        state.manager = manager;
        state.managers = managers.to_vec();
        // A promoted node joins the Raft membership afresh; a demoted one has left it.
        state.raft_joined = false;
        if manager && state.raft_id == 0 {
            state.raft_id = rand::random::<u64>().max(1);
        }
        self.save_state(&state)?;
        let old = std::mem::replace(
            active,
            Active {
                state: state.clone(),
                identity: identity.clone(),
                manager: None,
                agent_stop: watch::channel(true).0,
                agent_state: watch::channel(AgentState::default()).1,
                agent: tokio::spawn(async {}),
            },
        );
        self.deactivate(old).await;
        if !manager {
            let _ = std::fs::remove_dir_all(self.root.join("raft"));
        }
        // Demoted: the raft state is gone. Promoted: start from an empty log and join.
        let new = self.activate(state, identity, None, true).await?;
        *active = new;
        Ok(())
    }

    /// On a manager, has every other manager fetch `references` from this one (after `image
    /// load|import`), in the background: the cluster's images then outlive this manager.
    pub async fn replicate_images(&self, references: Vec<String>) {
        let guard = self.active.lock().await;
        let Some(active) = guard.as_ref().filter(|a| a.manager.is_some()) else {
            return;
        };
        let me = active.state.advertise_addr.clone();
        let others: Vec<String> = active
            .manager
            .as_ref()
            .map(|m| m.manager.managers())
            .unwrap_or_default()
            .into_iter()
            .filter(|a| *a != me)
            .collect();
        let Ok(tls) = transport::client_config(&active.identity) else {
            return;
        };
        drop(guard);
        for addr in others {
            let Ok(channel) = transport::channel(&addr, Arc::clone(&tls)) else {
                continue;
            };
            let (references, me) = (references.clone(), me.clone());
            tokio::spawn(async move {
                let mut client = DispatcherClient::new(channel);
                for reference in references {
                    let req = ReplicateImageRequest {
                        reference: reference.clone(),
                        source: me.clone(),
                    };
                    match client.replicate_image(req).await {
                        Ok(_) => tracing::info!(%reference, manager = %addr, "image replicated"),
                        Err(err) => tracing::warn!(
                            %reference, manager = %addr, error = %err.message(),
                            "image not replicated"
                        ),
                    }
                }
            });
        }
    }

    /// A standalone container joins the cluster network `network` (attachable overlays): the
    /// leader makes a network attachment task for this node and answers with its address;
    /// the sandbox is this node's networking's. `container_id` names the container in the
    /// cluster (the caller's provisional id). NOT_FOUND when this node is in no swarm.
    pub async fn attach_network(
        &self,
        network: &str,
        container_id: &str,
    ) -> Result<(Task, Arc<NodeNetwork>), Status> {
        let (managers, tls, node_id) = {
            let guard = self.active.lock().await;
            let active = guard
                .as_ref()
                .ok_or_else(|| Status::not_found(format!("network {network} not found")))?;
            let tls = transport::client_config(&active.identity)
                .map_err(|e| Status::internal(e.to_string()))?;
            let managers = active.agent_state.borrow().managers.clone();
            (managers, tls, active.state.node_id.clone())
        };
        let req = AttachNetworkRequest {
            network: network.to_string(),
            container_id: container_id.to_string(),
        };
        let mut last = Status::unavailable("no manager answered");
        // The leader comes first; another manager tells us it is not the leader.
        for addr in &managers {
            let Ok(channel) = transport::channel(addr, Arc::clone(&tls)) else {
                continue;
            };
            match DispatcherClient::new(channel)
                .attach_network(req.clone())
                .await
            {
                Ok(resp) => {
                    let task = resp
                        .into_inner()
                        .task
                        .ok_or_else(|| Status::internal("attach: the answer has no task"))?;
                    let network = self.network_for(&node_id).await?;
                    return Ok((task, network));
                }
                Err(status)
                    if matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::FailedPrecondition
                    ) =>
                {
                    last = status;
                }
                Err(status) => return Err(status),
            }
        }
        Err(last)
    }

    /// The container of the attachment task `task_id` is gone: its sandbox goes, and the
    /// leader is told (best effort: the task is retried by nobody, but it holds only an
    /// address, and a node's full assignment set keeps its sandbox only while it exists).
    pub async fn detach_network(&self, task_id: &str) {
        let (managers, tls, node_id) = {
            let guard = self.active.lock().await;
            let Some(active) = guard.as_ref() else {
                return;
            };
            let Ok(tls) = transport::client_config(&active.identity) else {
                return;
            };
            let managers = active.agent_state.borrow().managers.clone();
            (managers, tls, active.state.node_id.clone())
        };
        if let Ok(network) = self.network_for(&node_id).await {
            network.release(task_id).await;
        }
        let req = DetachNetworkRequest {
            task_id: task_id.to_string(),
        };
        for addr in &managers {
            let Ok(channel) = transport::channel(addr, Arc::clone(&tls)) else {
                continue;
            };
            match DispatcherClient::new(channel)
                .detach_network(req.clone())
                .await
            {
                Ok(_) => return,
                Err(status) => {
                    tracing::warn!(task = %task_id, manager = %addr, error = %status.message(), "detach a network attachment")
                }
            }
        }
    }

    fn router_current(&self) -> Current {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Routes the Unix socket's control calls: to this node's manager (which answers or forwards
/// to the leader), or Docker's error for workers and nodes outside a swarm.
pub struct LocalRouter(pub Arc<SwarmNode>);

impl ControlRouter for LocalRouter {
    fn route(&self) -> Result<Route, Status> {
        match self.0.router_current() {
            Current::Inactive => Err(Status::failed_precondition(NOT_IN_SWARM)),
            Current::Worker => Err(Status::failed_precondition(NOT_A_MANAGER)),
            Current::Manager(m) => m.route(),
        }
    }
    fn local(&self) -> Option<Arc<ControlApi>> {
        match self.0.router_current() {
            Current::Manager(m) => Some(m.control()),
            _ => None,
        }
    }
}

/// The `Swarm` service on the Unix socket.
pub struct SwarmApi(pub Arc<SwarmNode>);

#[tonic::async_trait]
impl Swarm for SwarmApi {
    async fn init(&self, req: Request<InitRequest>) -> Result<Response<InitResponse>, Status> {
        let req = req.into_inner();
        let node = &self.0;
        let mut guard = node.active.lock().await;
        if guard.is_some() {
            return Err(Status::failed_precondition(ALREADY_IN_SWARM));
        }
        let advertise_addr = advertise_addr(&req.advertise_addr)?;
        let listen_addr = listen_addr(&req.listen_addr, &advertise_addr)?;
        let node_id = transport::random_id();
        let cluster_id = transport::random_id();
        let ca = RootCa::generate().map_err(|e| Status::internal(e.to_string()))?;
        let identity = ca
            .issue_identity(&node_id, Role::Manager, &cluster_id)
            .map_err(|e| Status::internal(e.to_string()))?;
        let state = SwarmState {
            node_id: node_id.clone(),
            cluster_id,
            manager: true,
            raft_id: rand::random::<u64>().max(1),
            advertise_addr: advertise_addr.clone(),
            listen_addr,
            managers: vec![advertise_addr.clone()],
            raft_joined: false,
        };
        let _ = std::fs::remove_dir_all(&node.root);
        identity
            .save(&node.certs_dir())
            .map_err(|e| Status::internal(e.to_string()))?;
        node.save_state(&state)?;
        let active = match node.activate(state, identity, Some(ca.clone()), true).await {
            Ok(a) => a,
            Err(err) => {
                let _ = std::fs::remove_dir_all(&node.root);
                *node.current.lock().unwrap_or_else(|p| p.into_inner()) = Current::Inactive;
                return Err(err);
            }
        };
        let worker_token = match &active.manager {
            Some(m) => m
                .manager
                .control()
                .get_cluster(GetClusterRequest {})
                .await
                .map(|r| r.worker_token)
                .unwrap_or_default(),
            None => String::new(),
        };
        *guard = Some(active);
        tracing::info!(node = %node_id, "swarm initialized");
        Ok(Response::new(InitResponse {
            node_id,
            worker_token,
            advertise_addr,
        }))
    }

    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let req = req.into_inner();
        let node = &self.0;
        let mut guard = node.active.lock().await;
        if guard.is_some() {
            return Err(Status::failed_precondition(ALREADY_IN_SWARM));
        }
        let token: transport::token::JoinToken = req
            .token
            .parse()
            .map_err(|e: transport::token::TokenError| Status::invalid_argument(e.to_string()))?;
        let remote = with_port(&req.remote_addr)?;
        // Fetch the CA without trusting it, and trust it only if the token vouches for it.
        let bootstrap = transport::channel(&remote, transport::bootstrap_client_config())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let ca_pem = tokio::time::timeout(
            Duration::from_secs(10),
            CaClient::new(bootstrap).get_root_ca(GetRootCaRequest {}),
        )
        .await
        .map_err(|_| Status::unavailable(format!("timeout connecting to {remote}")))?
        .map_err(|s| Status::unavailable(format!("connect to {remote}: {}", s.message())))?
        .into_inner()
        .cert_pem;
        if !token.matches_ca(&ca_pem) {
            return Err(Status::permission_denied(format!(
                "remote CA does not match fingerprint in the join token (manager {remote}): refusing to trust it"
            )));
        }
        let (key_pem, csr_pem) =
            transport::generate_csr("").map_err(|e| Status::internal(e.to_string()))?;
        let advertise_addr = advertise_addr(&req.advertise_addr)?;
        let anonymous = transport::anonymous_client_config(&ca_pem)
            .map_err(|e| Status::internal(e.to_string()))?;
        let channel = transport::channel(&remote, anonymous)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let issued = CaClient::new(channel)
            .issue_node_certificate(IssueNodeCertificateRequest {
                token: req.token.clone(),
                csr_pem,
                description: Some(description(&node.runtime)),
                advertise_addr: advertise_addr.clone(),
            })
            .await?
            .into_inner();
        let manager = issued.role() == NodeRole::Manager;
        let identity = Identity {
            cert_pem: issued.cert_pem,
            key_pem,
            ca_pem,
        };
        let listen_addr = listen_addr(&req.listen_addr, &advertise_addr)?;
        let mut managers = issued.managers;
        if managers.is_empty() {
            managers.push(remote);
        }
        let state = SwarmState {
            node_id: issued.node_id.clone(),
            cluster_id: issued.cluster_id,
            manager,
            raft_id: if manager {
                rand::random::<u64>().max(1)
            } else {
                0
            },
            advertise_addr,
            listen_addr,
            managers,
            raft_joined: false,
        };
        let _ = std::fs::remove_dir_all(&node.root);
        identity
            .save(&node.certs_dir())
            .map_err(|e| Status::internal(e.to_string()))?;
        node.save_state(&state)?;
        let active = match node.activate(state, identity, None, true).await {
            Ok(a) => a,
            Err(err) => {
                let _ = std::fs::remove_dir_all(&node.root);
                *node.current.lock().unwrap_or_else(|p| p.into_inner()) = Current::Inactive;
                return Err(err);
            }
        };
        *guard = Some(active);
        Ok(Response::new(JoinResponse {
            node_id: issued.node_id,
            role: issued.role,
        }))
    }

    async fn leave(&self, req: Request<LeaveRequest>) -> Result<Response<LeaveResponse>, Status> {
        let force = req.into_inner().force;
        let node = &self.0;
        let mut guard = node.active.lock().await;
        let Some(active) = guard.take() else {
            return Err(Status::failed_precondition(
                "This node is not part of a swarm",
            ));
        };
        if let Some(m) = active.manager.as_ref().filter(|_| !force) {
            let voters = m.manager.managers().len();
            if voters <= 1 {
                *guard = Some(active);
                return Err(Status::failed_precondition(
                    "You are attempting to leave the swarm on a node that is participating as a manager. Removing the last manager erases all current state of the swarm. Use `--force` to ignore this message.",
                ));
            }
            let reachable = m
                .manager
                .control()
                .list_nodes(ListNodesRequest {})
                .await
                .map(|r| {
                    r.nodes
                        .iter()
                        .filter(|n| {
                            n.manager_status
                                .as_ref()
                                .is_some_and(|s| s.reachability == "reachable")
                        })
                        .count()
                })
                .unwrap_or(0);
            // After leaving, the others must still be a majority of the membership.
            let remaining = reachable.saturating_sub(1);
            if remaining * 2 <= voters {
                *guard = Some(active);
                return Err(Status::failed_precondition(format!(
                    "You are attempting to leave the swarm on a node that is participating as a manager. Removing this node leaves {remaining} managers out of a potential quorum of {voters}. The only way to restore a swarm that has lost consensus is to reinitialize it with `--force-new-cluster`. Use `--force` to suppress this message."
                )));
            }
        }
        // A manager that leaves gives up its Raft vote first, as Swarm's does, so the others'
        // quorum does not count a member that is gone for good. Best effort: with --force
        // and no leader, the others must `node demote` it.
        if let Some(m) = active.manager.as_ref() {
            if m.manager.managers().len() > 1 {
                if let Err(err) = demote_self(&m.manager, &active.state.node_id).await {
                    tracing::warn!(error = %err.message(), "leave the raft membership");
                }
            }
        }
        node.deactivate(active).await;
        // The node's task containers go with the membership.
        let rt = node.runtime.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for c in rt.list(true).unwrap_or_default() {
                if c.spec
                    .labels
                    .iter()
                    .any(|(k, _)| k == shoal_worker::controller::TASK_LABEL)
                {
                    let _ = rt.remove(&c.id, true);
                }
            }
        })
        .await;
        if let Some(network) = node.network.lock().await.take() {
            network.shutdown().await;
        }
        let _ = std::fs::remove_dir_all(&node.root);
        Ok(Response::new(LeaveResponse {}))
    }

    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let guard = self.0.active.lock().await;
        let Some(active) = guard.as_ref() else {
            return Ok(Response::new(InfoResponse::default()));
        };
        let agent = active.agent_state.borrow().clone();
        let leader_addr = active
            .manager
            .as_ref()
            .and_then(|m| m.manager.leader_addr())
            .or_else(|| agent.managers.first().cloned())
            .unwrap_or_default();
        Ok(Response::new(InfoResponse {
            state: LocalNodeState::Active as i32,
            node_id: active.state.node_id.clone(),
            node_addr: active.state.advertise_addr.clone(),
            control_available: active.manager.is_some(),
            error: String::new(),
            managers: if agent.managers.is_empty() {
                active.state.managers.clone()
            } else {
                agent.managers
            },
            cluster_id: active.state.cluster_id.clone(),
            leader_addr,
        }))
    }
}

/// Writes `state.json` under `root` atomically.
fn save_state(root: &Path, state: &SwarmState) -> Result<(), Status> {
    std::fs::create_dir_all(root).map_err(|e| internal("create swarm dir")(e.to_string()))?;
    let tmp = root.join("state.json.tmp");
    let text =
        serde_json::to_vec_pretty(state).map_err(|e| internal("encode state")(e.to_string()))?;
    std::fs::write(&tmp, text).map_err(|e| internal("write state")(e.to_string()))?;
    std::fs::rename(&tmp, root.join("state.json"))
        .map_err(|e| internal("write state")(e.to_string()))
}

/// Demotes this node through the leader (`node demote` of itself).
async fn demote_self(manager: &Manager, node_id: &str) -> Result<(), Status> {
    let demoted = |node: Option<Node>| -> Result<UpdateNodeRequest, Status> {
        let node = node.ok_or_else(|| Status::not_found(format!("node {node_id}")))?;
        let mut spec = node.spec.unwrap_or_default();
        spec.desired_role = NodeRole::Worker as i32;
        Ok(UpdateNodeRequest {
            id: node_id.to_string(),
            version: node.meta.map_or(0, |m| m.version),
            spec: Some(spec),
        })
    };
    let get = GetNodeRequest {
        id: node_id.to_string(),
    };
    match manager.route()? {
        Route::Local(api) => {
            let node = api.get_node(get).await?.node;
            api.update_node(demoted(node)?).await?;
        }
        Route::Remote(mut client) => {
            let node = client.get_node(get).await?.into_inner().node;
            client.update_node(demoted(node)?).await?;
        }
    }
    Ok(())
}
