//! One manager: the Raft node and its store, the services it serves on the cluster port
//! (Raft, Control, Dispatcher, Ca — each authorized by the caller's certificate), and the
//! leader-only loops (orchestrator, scheduler, dispatcher bookkeeping), started and stopped as
//! leadership comes and goes.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use shoal_proto::cluster::v1::ca_client::CaClient;
use shoal_proto::cluster::v1::ca_server::{Ca, CaServer};
use shoal_proto::cluster::v1::control_client::ControlClient;
use shoal_proto::cluster::v1::control_server::ControlServer;
use shoal_proto::cluster::v1::dispatcher_server::DispatcherServer;
use shoal_proto::cluster::v1::raft_client::RaftClient;
use shoal_proto::cluster::v1::*;
use shoal_proto::transport::{self, peer_identity, Identity, PeerIdentity, Role, ServerConfigCell};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::ca::RootCa;
use crate::controlapi::{ControlApi, ControlRouter, ControlService, RaftControl, Route};
use crate::dispatcher::{DispatcherContext, DispatcherRpc, DispatcherService, ImageExporter};
use crate::objects::{self, id_of, new_meta};
use crate::propose::{ProposeError, Proposer};
use crate::raft::{Member, RaftNode, RaftRpcHooks, WriteError};
use crate::store::Store;

/// Docker's message when no leader can be reached.
pub const NO_LEADER: &str = "The swarm does not have a leader. It's possible that too few managers are online. Make sure more than half of the managers are online.";

/// How a manager is set up.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Directory of the manager's Raft state (`raft.redb`).
    pub dir: PathBuf,
    /// This node's id.
    pub node_id: String,
    /// This manager's Raft id.
    pub raft_id: u64,
    /// `host:port` other nodes reach this manager at.
    pub advertise_addr: String,
    /// This node's certificate and key, and the cluster's CA.
    pub identity: Identity,
    /// Agents' heartbeat period.
    pub heartbeat: Duration,
}

/// Why a manager could not start.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// TLS configuration from the node identity.
    #[error("build the TLS configuration from the node certificate")]
    Tls(#[source] transport::TransportError),
    /// Raft.
    #[error(transparent)]
    Raft(#[from] crate::raft::RaftError),
    /// The first write of a new cluster.
    #[error("write the new cluster's first objects: {0}")]
    Bootstrap(String),
    /// Joining the Raft membership through the leader.
    #[error("join the managers at {addr}: {message}")]
    Join {
        /// Manager asked.
        addr: String,
        /// Its answer.
        message: String,
    },
}

/// Writes through Raft, on the leader only.
struct RaftProposer {
    raft: RaftNode,
}

fn propose_error(err: WriteError) -> ProposeError {
    match err {
        WriteError::NotLeader { leader } => ProposeError::NotLeader {
            leader_addr: leader.map(|m| m.addr),
        },
        WriteError::Rejected(m) => ProposeError::Rejected(m),
        WriteError::Raft(m) => ProposeError::Failed(m),
    }
}

impl Proposer for RaftProposer {
    fn propose(&self, actions: Vec<StoreAction>) -> BoxFuture<'static, Result<u64, ProposeError>> {
        let raft = self.raft.clone();
        Box::pin(async move {
            raft.write(StoreBatch { actions })
                .await
                .map_err(propose_error)
        })
    }
}

/// What the control API and the dispatcher read of Raft and the store.
struct View {
    raft: RaftNode,
    advertise_addr: String,
    /// Leadership as confirmed by a quorum (see `Manager::follow_leadership`).
    leading: watch::Receiver<bool>,
}

impl View {
    fn leader_addr(&self) -> Option<String> {
        self.raft.leader().map(|(_, m)| m.addr)
    }
}

impl RaftControl for View {
    fn leader_raft_id(&self) -> Option<u64> {
        self.raft.leader().map(|(id, _)| id)
    }
    fn voters(&self) -> usize {
        self.raft.members().len()
    }
    fn remove_member(&self, raft_id: u64) -> BoxFuture<'static, Result<(), ProposeError>> {
        let raft = self.raft.clone();
        Box::pin(async move { raft.remove_voter(raft_id).await.map_err(propose_error) })
    }
    fn advertise_addr(&self) -> String {
        self.advertise_addr.clone()
    }
}

impl DispatcherContext for View {
    fn check_leader(&self) -> Result<(), Status> {
        if *self.leading.borrow() {
            return Ok(());
        }
        Err(not_leader(self.leader_addr()))
    }
    fn managers(&self) -> Vec<String> {
        let leader = self.leader_addr();
        let mut addrs: Vec<String> = self
            .raft
            .members()
            .into_iter()
            .map(|(_, m)| m.addr)
            .collect();
        addrs.sort_by_key(|a| Some(a) != leader.as_ref());
        addrs
    }
}

/// How long a quorum has to confirm this manager's leadership.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a leader has its leadership confirmed.
const CONFIRM_EVERY: Duration = Duration::from_secs(1);

/// Metadata key naming the leader's address on an `Unavailable` answer from a follower.
pub const LEADER_METADATA: &str = "shoal-leader";

fn not_leader(leader: Option<String>) -> Status {
    let mut status = Status::unavailable(match &leader {
        Some(addr) => format!("this manager is not the leader; the leader is {addr}"),
        None => NO_LEADER.to_string(),
    });
    if let Some(addr) = leader.and_then(|a| a.parse().ok()) {
        status.metadata_mut().insert(LEADER_METADATA, addr);
    }
    status
}

/// A running manager.
pub struct Manager {
    cfg: ManagerConfig,
    cluster_id: String,
    store: Arc<Store>,
    raft: RaftNode,
    view: Arc<View>,
    proposer: Arc<dyn Proposer>,
    control: Arc<ControlApi>,
    dispatcher: Arc<DispatcherService>,
    client_tls: Arc<rustls::ClientConfig>,
    channels: Mutex<HashMap<String, Channel>>,
    leading: watch::Sender<bool>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("node_id", &self.cfg.node_id)
            .field("raft_id", &self.cfg.raft_id)
            .finish_non_exhaustive()
    }
}

/// Formats the join tokens of a cluster.
fn token(cluster: &Cluster, manager: bool) -> Result<String, String> {
    let ca =
        RootCa::from_pem(&cluster.root_ca_cert, &cluster.root_ca_key).map_err(|e| e.to_string())?;
    let secret = if manager {
        &cluster.manager_secret
    } else {
        &cluster.worker_secret
    };
    Ok(ca.token(secret))
}

impl Manager {
    /// Opens the manager's Raft state and starts following (or leading) the cluster.
    pub async fn start(
        cfg: ManagerConfig,
        images: Arc<dyn ImageExporter>,
    ) -> Result<Arc<Manager>, ManagerError> {
        let identity = cfg.identity.peer().map_err(ManagerError::Tls)?;
        let client_tls = transport::client_config(&cfg.identity).map_err(ManagerError::Tls)?;
        let store = Store::new();
        let tls = Arc::clone(&client_tls);
        let channels: crate::raft::ChannelFactory = Arc::new(move |addr: &str| {
            transport::channel(addr, Arc::clone(&tls)).unwrap_or_else(|err| {
                tracing::warn!(%addr, %err, "invalid manager address");
                // A channel that fails every call, so Raft treats the peer as unreachable.
                transport::channel("127.0.0.1:9", Arc::clone(&tls))
                    .expect("a literal address is valid")
            })
        });
        let raft = RaftNode::open(&cfg.dir, cfg.raft_id, Arc::clone(&store), channels).await?;
        let leading = watch::channel(false).0;
        let view = Arc::new(View {
            raft: raft.clone(),
            advertise_addr: cfg.advertise_addr.clone(),
            leading: leading.subscribe(),
        });
        let proposer: Arc<dyn Proposer> = Arc::new(RaftProposer { raft: raft.clone() });
        let control = ControlApi::new(
            Arc::clone(&store),
            Arc::clone(&proposer),
            Arc::clone(&view) as Arc<dyn RaftControl>,
            Arc::new(token),
        );
        let (dispatcher, status_rx) = DispatcherService::new(
            Arc::clone(&store),
            Arc::clone(&proposer),
            Arc::clone(&view) as Arc<dyn DispatcherContext>,
            images,
            cfg.heartbeat,
        );
        tokio::spawn(Arc::clone(&dispatcher).run(status_rx));
        let manager = Arc::new(Manager {
            cluster_id: identity.cluster_id,
            cfg,
            store,
            raft,
            view,
            proposer,
            control,
            dispatcher,
            client_tls,
            channels: Mutex::default(),
            leading,
        });
        tokio::spawn(Arc::clone(&manager).follow_leadership());
        Ok(manager)
    }

    /// Starts the leader's loops when this manager becomes the leader; they stop by
    /// themselves when it no longer is.
    ///
    /// Leadership counts only once a quorum confirms it, and is confirmed again every second:
    /// a manager restarted alone may believe it still leads (openraft restores its vote), and
    /// must not mark nodes down or accept sessions it cannot commit anything for.
    async fn follow_leadership(self: Arc<Self>) {
        let mut metrics = self.raft.server_metrics();
        loop {
            let believes = {
                let m = metrics.borrow_and_update();
                m.current_leader == Some(self.cfg.raft_id)
                    && m.state == openraft::ServerState::Leader
            };
            let leading = believes
                && matches!(
                    tokio::time::timeout(CONFIRM_TIMEOUT, self.raft.ensure_linearizable()).await,
                    Ok(Ok(()))
                );
            if leading != *self.leading.borrow() {
                self.leading.send_replace(leading);
                if leading {
                    tracing::info!(raft_id = self.cfg.raft_id, "this manager is the leader");
                    self.dispatcher.reset_heartbeats();
                    let rx = self.leading.subscribe();
                    tokio::spawn(crate::orchestrator::run(
                        Arc::clone(&self.store),
                        Arc::clone(&self.proposer),
                        rx.clone(),
                    ));
                    tokio::spawn(crate::allocator::run(
                        Arc::clone(&self.store),
                        Arc::clone(&self.proposer),
                        rx.clone(),
                        self.control.alloc_lock(),
                    ));
                    tokio::spawn(crate::scheduler::run(
                        Arc::clone(&self.store),
                        Arc::clone(&self.proposer),
                        rx,
                    ));
                } else {
                    tracing::info!(raft_id = self.cfg.raft_id, "this manager no longer leads");
                }
            }
            tokio::select! {
                changed = metrics.changed() => {
                    if changed.is_err() {
                        self.leading.send_replace(false);
                        return;
                    }
                }
                _ = tokio::time::sleep(CONFIRM_EVERY), if believes => {}
            }
        }
    }

    /// Makes this manager the first of a new cluster: a one-member Raft, then the cluster
    /// object (CA, join secrets) and this node, in one entry.
    pub async fn bootstrap(
        &self,
        ca: &RootCa,
        description: NodeDescription,
    ) -> Result<(), ManagerError> {
        self.raft
            .initialize(Member {
                node_id: self.cfg.node_id.clone(),
                addr: self.cfg.advertise_addr.clone(),
            })
            .await?;
        let mut leading = self.leading.subscribe();
        let wait = leading.wait_for(|l| *l);
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .map_err(|_| ManagerError::Bootstrap("no leader elected within 10 s".into()))?
            .map_err(|_| ManagerError::Bootstrap("raft stopped".into()))?;
        if self.store.read().cluster.is_some() {
            return Ok(());
        }
        let cluster = Cluster {
            meta: new_meta(self.cluster_id.clone()),
            name: "default".into(),
            root_ca_cert: ca.cert_pem.clone(),
            root_ca_key: ca.key_pem().to_string(),
            worker_secret: transport::token::random_secret(),
            manager_secret: transport::token::random_secret(),
            settings: Some(ClusterSettings {
                task_history_limit: crate::orchestrator::DEFAULT_HISTORY as u32,
                heartbeat_period_ms: u32::try_from(self.cfg.heartbeat.as_millis()).unwrap_or(1000),
            }),
        };
        let node = Node {
            meta: new_meta(self.cfg.node_id.clone()),
            spec: Some(NodeSpec {
                desired_role: NodeRole::Manager as i32,
                ..Default::default()
            }),
            description: Some(description),
            status: Some(NodeStatus {
                state: NodeState::Ready as i32,
                addr: host_of(&self.cfg.advertise_addr),
                ..Default::default()
            }),
            role: NodeRole::Manager as i32,
            manager_status: Some(ManagerStatus {
                raft_id: self.cfg.raft_id,
                addr: self.cfg.advertise_addr.clone(),
                ..Default::default()
            }),
            last_heartbeat: 0,
            attachments: Vec::new(),
        };
        let ingress_spec = NetworkSpec {
            name: crate::allocator::INGRESS_NAME.into(),
            driver: "overlay".into(),
            ingress: true,
            subnet: crate::allocator::INGRESS_SUBNET.into(),
            ..Default::default()
        };
        let allocation = crate::allocator::allocate_network(&self.store.read(), &ingress_spec)
            .map_err(|e| ManagerError::Bootstrap(format!("ingress network: {e}")))?;
        let ingress = Network {
            meta: new_meta(transport::random_id()),
            spec: Some(ingress_spec),
            allocation: Some(allocation),
        };
        self.proposer
            .propose(vec![
                objects::create(cluster),
                objects::create(node),
                objects::create(ingress),
            ])
            .await
            .map_err(|e| ManagerError::Bootstrap(e.to_string()))?;
        Ok(())
    }

    /// Asks the leader (reached through `addrs`, tried in order) to add this manager to the
    /// Raft membership; retries until it answers or `deadline` passes.
    pub async fn join(&self, addrs: &[String], deadline: Duration) -> Result<(), ManagerError> {
        let start = tokio::time::Instant::now();
        let mut last = String::from("no manager address");
        let mut targets: Vec<String> = addrs.to_vec();
        while start.elapsed() < deadline {
            for addr in targets.clone() {
                let mut client = RaftClient::new(self.channel(&addr));
                let req = AddMemberRequest {
                    node_id: self.cfg.node_id.clone(),
                    raft_id: self.cfg.raft_id,
                    addr: self.cfg.advertise_addr.clone(),
                };
                match client.add_member(req).await {
                    Ok(_) => return Ok(()),
                    Err(status) => {
                        if let Some(leader) = status
                            .metadata()
                            .get(LEADER_METADATA)
                            .and_then(|v| v.to_str().ok())
                        {
                            if !targets.iter().any(|t| t == leader) {
                                targets.insert(0, leader.to_string());
                            }
                        }
                        last = status.message().to_string();
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Err(ManagerError::Join {
            addr: addrs.join(", "),
            message: last,
        })
    }

    fn channel(&self, addr: &str) -> Channel {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        channels
            .entry(addr.to_string())
            .or_insert_with(|| {
                transport::channel(addr, Arc::clone(&self.client_tls)).unwrap_or_else(|_| {
                    transport::channel("127.0.0.1:9", Arc::clone(&self.client_tls))
                        .expect("a literal address is valid")
                })
            })
            .clone()
    }

    /// The store (a replica on followers).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The leader's address, when known.
    pub fn leader_addr(&self) -> Option<String> {
        self.view.leader_addr()
    }

    /// Whether this manager leads.
    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    /// Managers' cluster addresses, leader first.
    pub fn managers(&self) -> Vec<String> {
        self.view.managers()
    }

    /// Where a control call goes from this manager.
    pub fn route(&self) -> Result<Route, Status> {
        if self.raft.is_leader() {
            return Ok(Route::Local(Arc::clone(&self.control)));
        }
        match self.leader_addr() {
            Some(addr) => Ok(Route::Remote(ControlClient::new(self.channel(&addr)))),
            None => Err(Status::unavailable(NO_LEADER)),
        }
    }

    /// The control API (for answering reads from this replica).
    pub fn control(&self) -> Arc<ControlApi> {
        Arc::clone(&self.control)
    }

    /// Serves the cluster port on `listener` until `shutdown` completes.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: ServerConfigCell,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let cluster_id = self.cluster_id.clone();
        let managers_only = {
            let cluster_id = cluster_id.clone();
            move |req: Request<()>| -> Result<Request<()>, Status> {
                match peer_identity(&req) {
                    Some(p) if p.role == Role::Manager && p.cluster_id == cluster_id => Ok(req),
                    Some(_) => Err(Status::permission_denied(
                        "this RPC is only for the swarm's managers",
                    )),
                    None => Err(Status::unauthenticated("a node certificate is required")),
                }
            }
        };
        let members_only = {
            let store = Arc::clone(&self.store);
            let cluster_id = cluster_id.clone();
            move |req: Request<()>| -> Result<Request<()>, Status> {
                match peer_identity(&req) {
                    Some(p) if p.cluster_id == cluster_id => {
                        if store.read().nodes.contains_key(&p.node_id) {
                            Ok(req)
                        } else {
                            Err(Status::permission_denied(format!(
                                "node {} is not a member of the swarm",
                                p.node_id
                            )))
                        }
                    }
                    Some(_) => Err(Status::permission_denied("certificate of another cluster")),
                    None => Err(Status::unauthenticated("a node certificate is required")),
                }
            }
        };
        let control_router: Arc<dyn ControlRouter> = Arc::new(ManagerRouter(Arc::clone(&self)));
        let raft_rpc = self.raft.server(Arc::new(Hooks(Arc::clone(&self))));
        let control = ControlServer::new(ControlService::new(control_router));
        let dispatcher = DispatcherServer::new(DispatcherRpc(Arc::clone(&self.dispatcher)));
        let ca = CaServer::new(CaService(Arc::clone(&self)));
        // Members only (not just managers) for Control: a member's certificate role is
        // checked below in addition, so a removed manager's certificate stops working too.
        let control_auth = {
            let store = Arc::clone(&self.store);
            move |req: Request<()>| {
                let req = managers_only(req)?;
                // The store's role, not only the certificate's: a demoted or removed manager
                // keeps its old certificate until it expires.
                let node = peer_identity(&req).map(|p| p.node_id).unwrap_or_default();
                let is_manager = store
                    .read()
                    .nodes
                    .get(&node)
                    .is_some_and(|n| n.role() == NodeRole::Manager);
                if is_manager {
                    Ok(req)
                } else {
                    Err(Status::permission_denied(format!(
                        "node {node} is not a manager of the swarm"
                    )))
                }
            }
        };
        let raft_auth = {
            let cluster_id = cluster_id.clone();
            move |req: Request<()>| -> Result<Request<()>, Status> {
                match peer_identity(&req) {
                    Some(p) if p.role == Role::Manager && p.cluster_id == cluster_id => Ok(req),
                    _ => Err(Status::permission_denied(
                        "raft is only for the swarm's managers",
                    )),
                }
            }
        };
        tonic::transport::Server::builder()
            .add_service(tonic::service::interceptor::InterceptedService::new(
                raft_rpc, raft_auth,
            ))
            .add_service(tonic::service::interceptor::InterceptedService::new(
                control,
                control_auth,
            ))
            .add_service(tonic::service::interceptor::InterceptedService::new(
                dispatcher,
                members_only,
            ))
            .add_service(ca)
            .serve_with_incoming_shutdown(transport::incoming(listener, tls), shutdown)
            .await
    }

    /// Stops Raft.
    pub async fn shutdown(&self) {
        self.leading.send_replace(false);
        if let Err(err) = self.raft.shutdown().await {
            tracing::warn!(%err, "raft shutdown");
        }
    }

    /// Raft id.
    pub fn raft_id(&self) -> u64 {
        self.cfg.raft_id
    }

    async fn issue(
        &self,
        req: IssueNodeCertificateRequest,
    ) -> Result<IssueNodeCertificateResponse, Status> {
        if !self.raft.is_leader() {
            let addr = self
                .leader_addr()
                .ok_or_else(|| Status::unavailable(NO_LEADER))?;
            let mut client = CaClient::new(self.channel(&addr));
            return client
                .issue_node_certificate(req)
                .await
                .map(Response::into_inner);
        }
        let cluster = self
            .store
            .read()
            .cluster
            .clone()
            .ok_or_else(|| Status::unavailable("the cluster is not initialized yet"))?;
        let token: transport::token::JoinToken = req
            .token
            .parse()
            .map_err(|e: transport::token::TokenError| Status::invalid_argument(e.to_string()))?;
        if !token.matches_ca(&cluster.root_ca_cert) {
            return Err(Status::permission_denied(
                "invalid join token: it was made for another swarm's CA",
            ));
        }
        let is = |secret: &str| {
            token.same_secret(&transport::token::JoinToken {
                digest: token.digest.clone(),
                secret: secret.to_string(),
            })
        };
        let role = if is(&cluster.manager_secret) {
            Role::Manager
        } else if is(&cluster.worker_secret) {
            Role::Worker
        } else {
            return Err(Status::permission_denied(
                "invalid join token: the secret is not current (rotated or forged)",
            ));
        };
        let ca = RootCa::from_pem(&cluster.root_ca_cert, &cluster.root_ca_key)
            .map_err(|e| Status::internal(e.to_string()))?;
        let node_id = transport::random_id();
        let cert_pem = ca
            .sign(&req.csr_pem, &node_id, role, &self.cluster_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let node_role = match role {
            Role::Manager => NodeRole::Manager,
            Role::Worker => NodeRole::Worker,
        };
        let node = Node {
            meta: new_meta(node_id.clone()),
            spec: Some(NodeSpec {
                desired_role: node_role as i32,
                ..Default::default()
            }),
            description: req.description,
            status: Some(NodeStatus {
                state: NodeState::Unknown as i32,
                addr: host_of(&req.advertise_addr),
                ..Default::default()
            }),
            // A joining manager holds the role once it is in the Raft membership.
            role: NodeRole::Worker as i32,
            manager_status: None,
            attachments: Vec::new(),
            last_heartbeat: 0,
        };
        self.proposer.propose(vec![objects::create(node)]).await?;
        self.dispatcher.beat(&node_id);
        tracing::info!(node = %node_id, ?role, "node joined");
        Ok(IssueNodeCertificateResponse {
            node_id,
            role: node_role as i32,
            cert_pem,
            managers: self.managers(),
            cluster_id: self.cluster_id.clone(),
        })
    }

    async fn renew(
        &self,
        node_id: &str,
        csr_pem: &str,
    ) -> Result<RenewNodeCertificateResponse, Status> {
        if !self.raft.is_leader() {
            return Err(not_leader(self.leader_addr()));
        }
        let (cluster, node) = {
            let state = self.store.read();
            (state.cluster.clone(), state.nodes.get(node_id).cloned())
        };
        let cluster =
            cluster.ok_or_else(|| Status::unavailable("the cluster is not initialized yet"))?;
        let node = node.ok_or_else(|| {
            Status::permission_denied(format!("node {node_id} is not a member of the swarm"))
        })?;
        let desired = node
            .spec
            .as_ref()
            .map_or(NodeRole::Worker, |s| s.desired_role());
        let role = match desired {
            NodeRole::Manager => Role::Manager,
            NodeRole::Worker => Role::Worker,
        };
        let ca = RootCa::from_pem(&cluster.root_ca_cert, &cluster.root_ca_key)
            .map_err(|e| Status::internal(e.to_string()))?;
        let cert_pem = ca
            .sign(csr_pem, node_id, role, &self.cluster_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(RenewNodeCertificateResponse {
            role: desired as i32,
            cert_pem,
        })
    }

    async fn add_member(&self, req: AddMemberRequest) -> Result<(), Status> {
        if !self.raft.is_leader() {
            return Err(not_leader(self.leader_addr()));
        }
        let member = Member {
            node_id: req.node_id.clone(),
            addr: req.addr.clone(),
        };
        self.raft
            .add_voter(req.raft_id, member)
            .await
            .map_err(|e| Status::from(propose_error(e)))?;
        crate::propose::update_node(&self.store, &*self.proposer, &req.node_id, |node| {
            node.role = NodeRole::Manager as i32;
            node.manager_status = Some(ManagerStatus {
                raft_id: req.raft_id,
                addr: req.addr.clone(),
                ..Default::default()
            });
            if let Some(spec) = node.spec.as_mut() {
                spec.desired_role = NodeRole::Manager as i32;
            }
            true
        })
        .await
    }
}

/// The host part of `host:port`.
pub fn host_of(addr: &str) -> String {
    addr.rsplit_once(':')
        .map_or(addr, |(h, _)| h)
        .trim_matches(['[', ']'])
        .to_string()
}

struct ManagerRouter(Arc<Manager>);

impl ControlRouter for ManagerRouter {
    fn route(&self) -> Result<Route, Status> {
        self.0.route()
    }
    fn local(&self) -> Option<Arc<ControlApi>> {
        Some(self.0.control())
    }
}

struct Hooks(Arc<Manager>);

impl Hooks {
    /// The caller's node as the store knows it; Raft's own RPCs authorize by certificate
    /// only (a new member's store is still empty), these two by the store too.
    fn caller_node(&self, caller: Option<PeerIdentity>) -> Result<Node, Status> {
        let id = caller.map(|p| p.node_id).unwrap_or_default();
        self.0.store.read().nodes.get(&id).cloned().ok_or_else(|| {
            Status::permission_denied(format!("node {id} is not a member of the swarm"))
        })
    }
}

impl RaftRpcHooks for Hooks {
    fn write(
        &self,
        batch: StoreBatch,
        caller: Option<PeerIdentity>,
    ) -> BoxFuture<'_, Result<u64, Status>> {
        Box::pin(async move {
            if self.caller_node(caller)?.role() != NodeRole::Manager {
                return Err(Status::permission_denied("only the swarm's managers write"));
            }
            self.0
                .proposer
                .propose(batch.actions)
                .await
                .map_err(Status::from)
        })
    }
    fn add_member(
        &self,
        req: AddMemberRequest,
        caller: Option<PeerIdentity>,
    ) -> BoxFuture<'_, Result<(), Status>> {
        Box::pin(async move {
            // A node adds itself, and only once the cluster wants it as a manager (joined with
            // the manager token, or promoted).
            let node = self.caller_node(caller)?;
            let wanted = node.spec.as_ref().map(|s| s.desired_role()) == Some(NodeRole::Manager);
            if id_of(&node.meta) != req.node_id || !wanted {
                return Err(Status::permission_denied(
                    "a node may only add itself, and only when it is to be a manager",
                ));
            }
            self.0.add_member(req).await
        })
    }
}

struct CaService(Arc<Manager>);

#[tonic::async_trait]
impl Ca for CaService {
    async fn get_root_ca(
        &self,
        _: Request<GetRootCaRequest>,
    ) -> Result<Response<GetRootCaResponse>, Status> {
        Ok(Response::new(GetRootCaResponse {
            cert_pem: self.0.cfg.identity.ca_pem.clone(),
        }))
    }

    async fn issue_node_certificate(
        &self,
        req: Request<IssueNodeCertificateRequest>,
    ) -> Result<Response<IssueNodeCertificateResponse>, Status> {
        self.0.issue(req.into_inner()).await.map(Response::new)
    }

    async fn renew_node_certificate(
        &self,
        req: Request<RenewNodeCertificateRequest>,
    ) -> Result<Response<RenewNodeCertificateResponse>, Status> {
        let peer = peer_identity(&req)
            .ok_or_else(|| Status::unauthenticated("a node certificate is required"))?;
        if peer.cluster_id != self.0.cluster_id {
            return Err(Status::permission_denied("certificate of another cluster"));
        }
        let csr = req.into_inner().csr_pem;
        self.0.renew(&peer.node_id, &csr).await.map(Response::new)
    }
}

/// The id of an object, re-exported for the daemon.
pub fn object_id(meta: &Option<Meta>) -> &str {
    id_of(meta)
}
