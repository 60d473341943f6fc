//! The control API: what `shoal node|service|swarm join-token` ask of the cluster, answered
//! by the leader from its store and written through Raft.
//!
//! [`ControlApi`] is the leader-side logic with plain async methods; [`ControlService`] is the
//! gRPC face, which asks a [`ControlRouter`] where each call goes — here, to the leader over
//! the cluster port, or nowhere (a worker, a node outside the swarm) — so that the same type
//! serves the node's Unix socket and the managers' cluster port.

use std::collections::{BTreeMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use shoal_proto::cluster::v1::control_client::ControlClient;
use shoal_proto::cluster::v1::control_server::Control;
use shoal_proto::cluster::v1::service_spec::Mode;
use shoal_proto::cluster::v1::store_object::Object;
use shoal_proto::cluster::v1::*;
use tokio::sync::broadcast::error::RecvError;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::allocator::{self, Ipam};
use crate::endpoint::{self, find_network};
use crate::objects::{self, id_of, is_terminal, lookup, new_meta, touch, LookupError};
use crate::propose::{ProposeError, Proposer};
use crate::store::{Change, State, Store};

/// What the control API needs to know of, and do to, the Raft membership.
pub trait RaftControl: Send + Sync + 'static {
    /// Raft id of the current leader.
    fn leader_raft_id(&self) -> Option<u64>;
    /// Number of voting members.
    fn voters(&self) -> usize;
    /// Removes a manager from the Raft membership (demote, rm --force).
    fn remove_member(&self, raft_id: u64) -> BoxFuture<'static, Result<(), ProposeError>>;
    /// Join tokens are printed with this address (`host:port` of this manager).
    fn advertise_addr(&self) -> String;
}

/// Formats a join token for `cluster` (manager or worker).
pub type TokenFormatter = Arc<dyn Fn(&Cluster, bool) -> Result<String, String> + Send + Sync>;

/// The leader-side control API.
pub struct ControlApi {
    store: Arc<Store>,
    proposer: Arc<dyn Proposer>,
    raft: Arc<dyn RaftControl>,
    token: TokenFormatter,
    /// Held from reading the store to writing: virtual IPs, published ports and subnets are
    /// handed out by the control API alone, and two calls must not hand out the same.
    alloc_lock: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for ControlApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlApi").finish_non_exhaustive()
    }
}

fn lookup_status(err: LookupError) -> Status {
    match err {
        LookupError::NotFound { .. } => Status::not_found(err.to_string()),
        LookupError::Ambiguous { .. } => Status::invalid_argument(err.to_string()),
    }
}

/// A node by id, id prefix or hostname.
pub fn find_node<'a>(state: &'a State, reference: &str) -> Result<&'a Node, Status> {
    let it = state.nodes.iter().map(|(id, n)| {
        let name = n.description.as_ref().map_or("", |d| d.hostname.as_str());
        (id.as_str(), name, n)
    });
    lookup("node", reference, it).map_err(lookup_status)
}

/// A service by id, id prefix or name.
pub fn find_service<'a>(state: &'a State, reference: &str) -> Result<&'a Service, Status> {
    let it = state.services.iter().map(|(id, s)| {
        let name = s.spec.as_ref().map_or("", |s| s.name.as_str());
        (id.as_str(), name, s)
    });
    lookup("service", reference, it).map_err(lookup_status)
}

/// Swarm's rule for service names: a DNS label (letters, digits, `-` and `_` inside, at most
/// 63 characters).
fn check_name(name: &str) -> Result<(), Status> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "invalid name {name:?}: a service name is 1 to 63 letters, digits, '-' or '_', starting and ending with a letter or digit"
        )))
    }
}

/// More replicas than any cluster here could run: a typo, not a wish. Every leader would
/// otherwise build one entry of that many tasks.
const MAX_REPLICAS: u64 = 100_000;
/// Largest cpu (nano-CPUs) or memory (bytes) figure accepted, so that sums cannot overflow.
const MAX_RESOURCE: i64 = 1 << 53;
/// Longest restart delay or window accepted (a year), so that time arithmetic cannot overflow.
const MAX_DURATION_NANOS: i64 = 365 * 24 * 3600 * 1_000_000_000;

/// Checks a service spec as Swarm's control API does, and fills in defaults.
fn validate_spec(spec: &mut ServiceSpec) -> Result<(), Status> {
    check_name(&spec.name)?;
    let task = spec
        .task
        .as_mut()
        .ok_or_else(|| Status::invalid_argument("service spec without a task template"))?;
    let container = task
        .container
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("service spec without a container spec"))?;
    if container.image.trim().is_empty() {
        return Err(Status::invalid_argument(
            "ContainerSpec: image reference must be provided",
        ));
    }
    if let Some(placement) = &task.placement {
        objects::parse_constraints(&placement.constraints)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
    }
    if let Some(res) = &task.resources {
        for r in [&res.limits, &res.reservations].into_iter().flatten() {
            if r.nano_cpus < 0 || r.memory_bytes < 0 {
                return Err(Status::invalid_argument("resources must not be negative"));
            }
            if r.nano_cpus > MAX_RESOURCE || r.memory_bytes > MAX_RESOURCE {
                return Err(Status::invalid_argument("resources must be under 2^53"));
            }
        }
    }
    if let Some(restart) = &task.restart {
        if restart.delay < 0 || restart.window < 0 {
            return Err(Status::invalid_argument(
                "restart delay and window must not be negative",
            ));
        }
        if restart.delay > MAX_DURATION_NANOS || restart.window > MAX_DURATION_NANOS {
            return Err(Status::invalid_argument(
                "restart delay and window must be under a year",
            ));
        }
    }
    if spec.mode.is_none() {
        spec.mode = Some(Mode::Replicated(ReplicatedMode { replicas: 1 }));
    }
    if let Some(Mode::Replicated(r)) = &spec.mode {
        if r.replicas > MAX_REPLICAS {
            return Err(Status::invalid_argument(format!(
                "replicas must be at most {MAX_REPLICAS}, not {}",
                r.replicas
            )));
        }
    }
    Ok(())
}

/// Docker-style random names for services created without `--name`.
fn random_name(taken: &HashSet<&str>) -> String {
    const LEFT: &[&str] = &[
        "admiring",
        "brave",
        "calm",
        "dazzling",
        "eager",
        "festive",
        "gallant",
        "happy",
        "jolly",
        "keen",
        "lucid",
        "modest",
        "nifty",
        "optimistic",
        "quirky",
        "serene",
        "tender",
        "vibrant",
        "wizardly",
        "zealous",
    ];
    const RIGHT: &[&str] = &[
        "archimedes",
        "babbage",
        "curie",
        "darwin",
        "euclid",
        "faraday",
        "galileo",
        "hopper",
        "johnson",
        "kepler",
        "lovelace",
        "meitner",
        "noether",
        "pascal",
        "ritchie",
        "shannon",
        "thompson",
        "turing",
        "wozniak",
        "yalow",
    ];
    for attempt in 0u32.. {
        let l = LEFT[rand::random_range(0..LEFT.len())];
        let r = RIGHT[rand::random_range(0..RIGHT.len())];
        // Docker too appends a number once plain pairs keep colliding.
        let name = if attempt < 16 {
            format!("{l}_{r}")
        } else {
            format!("{l}_{r}{}", rand::random_range(0..1_000_000u32))
        };
        if !taken.contains(name.as_str()) {
            return name;
        }
    }
    unreachable!("the attempts are unbounded")
}

/// Whether tasks made from `old` must be replaced to match `new`: what they run, or what
/// networks they are on, changed.
fn task_spec_changed(old: &ServiceSpec, new: &ServiceSpec) -> bool {
    let ports = |s: &ServiceSpec| {
        s.endpoint
            .as_ref()
            .map(|e| e.ports.clone())
            .unwrap_or_default()
    };
    old.task != new.task || old.networks != new.networks || ports(old) != ports(new)
}

impl ControlApi {
    /// The control API over a leader's store.
    pub fn new(
        store: Arc<Store>,
        proposer: Arc<dyn Proposer>,
        raft: Arc<dyn RaftControl>,
        token: TokenFormatter,
    ) -> Arc<ControlApi> {
        Arc::new(ControlApi {
            store,
            proposer,
            raft,
            token,
            alloc_lock: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// The lock under which addresses and ports are handed out, for the allocator loop.
    pub fn alloc_lock(&self) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(&self.alloc_lock)
    }

    /// Commits one action; the entry's index is the object's new version.
    async fn write_one(&self, action: StoreAction) -> Result<u64, Status> {
        Ok(self.proposer.propose(vec![action]).await?)
    }

    /// Commits a new object and returns it with the version it was stored at.
    async fn create_object<T: Clone + Into<Object>>(
        &self,
        mut object: T,
        meta: impl FnOnce(&mut T) -> &mut Option<Meta>,
    ) -> Result<T, Status> {
        let index = self.write_one(objects::create(object.clone())).await?;
        objects::set_version(meta(&mut object), index);
        Ok(object)
    }

    /// A node as answered: manager status filled from Raft. Every manager also runs an agent
    /// that beats to the leader, so a manager is reachable while its node is ready. (Computed
    /// from the node itself: callers hold the store's read lock, which must not be taken
    /// twice on one thread.)
    fn present_node(&self, node: &Node) -> Node {
        let mut node = node.clone();
        let ready = node.status.as_ref().map(|s| s.state()) == Some(NodeState::Ready);
        if let Some(ms) = node.manager_status.as_mut() {
            let leader = self.raft.leader_raft_id() == Some(ms.raft_id);
            ms.leader = leader;
            ms.reachability = if leader || ready {
                "reachable"
            } else {
                "unreachable"
            }
            .to_string();
        }
        node
    }

    /// `node ls`.
    pub async fn list_nodes(&self, _: ListNodesRequest) -> Result<ListNodesResponse, Status> {
        let state = self.store.read();
        Ok(ListNodesResponse {
            nodes: state.nodes.values().map(|n| self.present_node(n)).collect(),
        })
    }

    /// `node inspect`.
    pub async fn get_node(&self, req: GetNodeRequest) -> Result<GetNodeResponse, Status> {
        let state = self.store.read();
        let node = self.present_node(find_node(&state, &req.id)?);
        Ok(GetNodeResponse { node: Some(node) })
    }

    /// `node update|promote|demote`.
    pub async fn update_node(&self, req: UpdateNodeRequest) -> Result<UpdateNodeResponse, Status> {
        let spec = req
            .spec
            .ok_or_else(|| Status::invalid_argument("update without a node spec"))?;
        let (mut node, demote) = {
            let state = self.store.read();
            let node = find_node(&state, &req.id)?.clone();
            let stored = objects::version_of(&node.meta);
            if req.version != stored {
                return Err(Status::failed_precondition(format!(
                    "update out of sequence: node {} is at version {stored}, the update read version {}",
                    id_of(&node.meta),
                    req.version
                )));
            }
            let demote =
                spec.desired_role() == NodeRole::Worker && node.role() == NodeRole::Manager;
            if demote {
                let managers = state
                    .nodes
                    .values()
                    .filter(|n| n.role() == NodeRole::Manager)
                    .count();
                if managers <= 1 {
                    return Err(Status::failed_precondition(
                        "attempting to demote the last manager of the swarm",
                    ));
                }
            }
            (node, demote)
        };
        if demote {
            let raft_id = node.manager_status.as_ref().map_or(0, |m| m.raft_id);
            // Demoting a voter shrinks the quorum; refuse when the rest cannot form one.
            let voters = self.raft.voters();
            let reachable_after = {
                let state = self.store.read();
                state
                    .nodes
                    .values()
                    .filter(|n| {
                        n.manager_status
                            .as_ref()
                            .is_some_and(|m| m.raft_id != raft_id)
                    })
                    .map(|n| self.present_node(n))
                    .filter(|n| {
                        n.manager_status
                            .as_ref()
                            .is_some_and(|m| m.reachability == "reachable")
                    })
                    .count()
            };
            if voters > 1 && reachable_after * 2 < voters {
                return Err(Status::failed_precondition(
                    "can't demote: the remaining managers would not have a quorum",
                ));
            }
            self.raft.remove_member(raft_id).await?;
            // The membership changed: the node must follow even if it changed meanwhile.
            let id = id_of(&node.meta).to_string();
            crate::propose::update_node(&self.store, &*self.proposer, &id, |n| {
                n.role = NodeRole::Worker as i32;
                n.manager_status = None;
                n.spec = Some(spec.clone());
                true
            })
            .await?;
            let state = self.store.read();
            return Ok(UpdateNodeResponse {
                node: state.nodes.get(&id).map(|n| self.present_node(n)),
            });
        }
        node.spec = Some(spec);
        touch(&mut node.meta);
        let index = self.write_one(objects::update(node.clone())).await?;
        objects::set_version(&mut node.meta, index);
        Ok(UpdateNodeResponse {
            node: Some(self.present_node(&node)),
        })
    }

    /// `node rm`.
    pub async fn remove_node(&self, req: RemoveNodeRequest) -> Result<RemoveNodeResponse, Status> {
        let node = {
            let state = self.store.read();
            find_node(&state, &req.id)?.clone()
        };
        let id = id_of(&node.meta).to_string();
        if node.role() == NodeRole::Manager {
            return Err(Status::failed_precondition(format!(
                "node {id} is a cluster manager and is a member of the raft cluster. It must be demoted to worker before removal"
            )));
        }
        let down = node.status.as_ref().map(|s| s.state()) == Some(NodeState::Down);
        if !down && !req.force {
            return Err(Status::failed_precondition(format!(
                "node {id} is not down and can't be removed"
            )));
        }
        self.proposer.propose(vec![objects::remove(node)]).await?;
        Ok(RemoveNodeResponse {})
    }

    /// `service create`.
    pub async fn create_service(
        &self,
        req: CreateServiceRequest,
    ) -> Result<CreateServiceResponse, Status> {
        let mut spec = req
            .spec
            .ok_or_else(|| Status::invalid_argument("create without a service spec"))?;
        {
            let state = self.store.read();
            let taken: HashSet<&str> = state
                .services
                .values()
                .filter_map(|s| s.spec.as_ref().map(|s| s.name.as_str()))
                .collect();
            if spec.name.is_empty() {
                spec.name = random_name(&taken);
            }
            if taken.contains(spec.name.as_str()) {
                return Err(Status::already_exists(format!(
                    "name conflicts with an existing object: service {} already exists",
                    spec.name
                )));
            }
        }
        validate_spec(&mut spec)?;
        let _alloc = self.alloc_lock.lock().await;
        let endpoint = {
            let state = self.store.read();
            endpoint::resolve_networks(&state, &mut spec)?;
            let mut ipam = Ipam::from_state(&state);
            endpoint::allocate_endpoint(&state, &mut ipam, None, &spec, None)?
        };
        let service = Service {
            meta: new_meta(shoal_proto::transport::random_id()),
            spec: Some(spec),
            previous_spec: None,
            update_status: None,
            spec_version: 1,
            endpoint: Some(endpoint),
        };
        let service = self.create_object(service, |s| &mut s.meta).await?;
        Ok(CreateServiceResponse {
            service: Some(service),
        })
    }

    /// `service inspect`.
    pub async fn get_service(&self, req: GetServiceRequest) -> Result<GetServiceResponse, Status> {
        let state = self.store.read();
        Ok(GetServiceResponse {
            service: Some(find_service(&state, &req.id)?.clone()),
        })
    }

    /// `service ls`, with running/desired counts.
    pub async fn list_services(
        &self,
        _: ListServicesRequest,
    ) -> Result<ListServicesResponse, Status> {
        let state = self.store.read();
        let mut counts: BTreeMap<String, ServiceCounts> = BTreeMap::new();
        for (id, service) in &state.services {
            let desired = match service.spec.as_ref().and_then(|s| s.mode.as_ref()) {
                Some(Mode::Replicated(r)) => r.replicas,
                _ => 0,
            };
            counts.insert(
                id.clone(),
                ServiceCounts {
                    running: 0,
                    desired,
                },
            );
        }
        for task in state.tasks.values() {
            let Some(c) = counts.get_mut(&task.service_id) else {
                continue;
            };
            let global = matches!(
                state
                    .services
                    .get(&task.service_id)
                    .and_then(|s| s.spec.as_ref())
                    .and_then(|s| s.mode.as_ref()),
                Some(Mode::Global(_))
            );
            let wanted = task.desired_state() == TaskState::Running;
            if global && wanted {
                c.desired += 1;
            }
            let running = task.status.as_ref().map(|s| s.state()) == Some(TaskState::Running);
            if wanted && running {
                c.running += 1;
            }
        }
        Ok(ListServicesResponse {
            services: state.services.values().cloned().collect(),
            counts: counts.into_iter().collect(),
        })
    }

    /// `service update|scale|rollback`.
    pub async fn update_service(
        &self,
        req: UpdateServiceRequest,
    ) -> Result<UpdateServiceResponse, Status> {
        let mut service = {
            let state = self.store.read();
            find_service(&state, &req.id)?.clone()
        };
        let stored = objects::version_of(&service.meta);
        if req.version != stored {
            return Err(Status::failed_precondition(format!(
                "update out of sequence: service {} is at version {stored}, the update read version {}",
                id_of(&service.meta),
                req.version
            )));
        }
        let current = service.spec.clone().unwrap_or_default();
        let mut spec = if req.rollback {
            service.previous_spec.clone().ok_or_else(|| {
                Status::failed_precondition(format!(
                    "service {} does not have a previous spec",
                    id_of(&service.meta)
                ))
            })?
        } else {
            req.spec
                .ok_or_else(|| Status::invalid_argument("update without a service spec"))?
        };
        if spec.name != current.name {
            return Err(Status::unimplemented("renaming services is not supported"));
        }
        validate_spec(&mut spec)?;
        let global = |s: &ServiceSpec| matches!(s.mode, Some(Mode::Global(_)));
        if global(&spec) != global(&current) {
            return Err(Status::invalid_argument(
                "service mode change is not allowed",
            ));
        }
        let _alloc = self.alloc_lock.lock().await;
        service.endpoint = {
            let state = self.store.read();
            endpoint::resolve_networks(&state, &mut spec)?;
            let mut ipam = Ipam::from_state(&state);
            let id = id_of(&service.meta);
            Some(endpoint::allocate_endpoint(
                &state,
                &mut ipam,
                Some(id),
                &spec,
                service.endpoint.as_ref(),
            )?)
        };
        if task_spec_changed(&current, &spec) {
            service.spec_version += 1;
        }
        service.previous_spec = Some(current);
        service.spec = Some(spec);
        touch(&mut service.meta);
        let index = self.write_one(objects::update(service.clone())).await?;
        objects::set_version(&mut service.meta, index);
        Ok(UpdateServiceResponse {
            service: Some(service),
        })
    }

    /// `service rm`: the service goes, and its tasks are marked for removal in the same entry;
    /// agents stop and remove their containers, then the task reaper deletes the tasks.
    pub async fn remove_service(
        &self,
        req: RemoveServiceRequest,
    ) -> Result<RemoveServiceResponse, Status> {
        loop {
            let actions = {
                let state = self.store.read();
                let service = find_service(&state, &req.id)?;
                let id = id_of(&service.meta);
                let mut actions = vec![objects::remove(service.clone())];
                for task in state.tasks.values().filter(|t| t.service_id == id) {
                    if task.desired_state() != TaskState::Remove {
                        let mut task = task.clone();
                        task.desired_state = TaskState::Remove as i32;
                        touch(&mut task.meta);
                        actions.push(objects::update(task));
                    }
                }
                actions
            };
            match self.proposer.propose(actions).await {
                Ok(_) => return Ok(RemoveServiceResponse {}),
                // A task changed under us (an agent reported): read again.
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// `service ps`, `node ps`.
    pub async fn list_tasks(&self, req: ListTasksRequest) -> Result<ListTasksResponse, Status> {
        let state = self.store.read();
        let services: HashSet<&str> = req.service_ids.iter().map(String::as_str).collect();
        let nodes: HashSet<&str> = req.node_ids.iter().map(String::as_str).collect();
        let desired: HashSet<i32> = req.desired_states.iter().copied().collect();
        let tasks = state
            .tasks
            .values()
            .filter(|t| services.is_empty() || services.contains(t.service_id.as_str()))
            .filter(|t| nodes.is_empty() || nodes.contains(t.node_id.as_str()))
            .filter(|t| desired.is_empty() || desired.contains(&t.desired_state))
            .cloned()
            .collect();
        Ok(ListTasksResponse { tasks })
    }

    /// `network create -d overlay`.
    pub async fn create_network(
        &self,
        req: CreateNetworkRequest,
    ) -> Result<CreateNetworkResponse, Status> {
        let mut spec = req
            .spec
            .ok_or_else(|| Status::invalid_argument("create without a network spec"))?;
        endpoint::check_network_name(&spec.name)?;
        if spec.driver.is_empty() {
            spec.driver = "overlay".into();
        }
        if spec.driver != "overlay" {
            return Err(Status::invalid_argument(format!(
                "driver {:?} makes node-local networks; the cluster makes only overlay networks",
                spec.driver
            )));
        }
        let _alloc = self.alloc_lock.lock().await;
        let network = {
            let state = self.store.read();
            let taken = state
                .networks
                .values()
                .any(|n| n.spec.as_ref().is_some_and(|s| s.name == spec.name));
            if taken {
                return Err(Status::already_exists(format!(
                    "network with name {} already exists",
                    spec.name
                )));
            }
            if spec.ingress {
                if let Some(id) = allocator::ingress_id(&state) {
                    return Err(Status::already_exists(format!(
                        "an ingress network already exists ({id}); remove it first"
                    )));
                }
            }
            let allocation = allocator::allocate_network(&state, &spec)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            Network {
                meta: new_meta(shoal_proto::transport::random_id()),
                spec: Some(spec),
                allocation: Some(allocation),
            }
        };
        let network = self.create_object(network, |n| &mut n.meta).await?;
        Ok(CreateNetworkResponse {
            network: Some(network),
        })
    }

    /// `network inspect`.
    pub async fn get_network(&self, req: GetNetworkRequest) -> Result<GetNetworkResponse, Status> {
        let state = self.store.read();
        Ok(GetNetworkResponse {
            network: Some(find_network(&state, &req.id)?.clone()),
        })
    }

    /// `network ls`.
    pub async fn list_networks(
        &self,
        _: ListNetworksRequest,
    ) -> Result<ListNetworksResponse, Status> {
        let state = self.store.read();
        Ok(ListNetworksResponse {
            networks: state.networks.values().cloned().collect(),
        })
    }

    /// `network rm`: refused while a service or a stopping task uses the network.
    pub async fn remove_network(
        &self,
        req: RemoveNetworkRequest,
    ) -> Result<RemoveNetworkResponse, Status> {
        let _alloc = self.alloc_lock.lock().await;
        let network = {
            let state = self.store.read();
            let network = find_network(&state, &req.id)?;
            if let Some(why) = endpoint::network_in_use(&state, network) {
                return Err(Status::failed_precondition(why));
            }
            network.clone()
        };
        self.write_one(objects::remove(network)).await?;
        Ok(RemoveNetworkResponse {})
    }

    fn tokens(&self, cluster: &Cluster) -> Result<(String, String), Status> {
        let worker = (self.token)(cluster, false).map_err(Status::internal)?;
        let manager = (self.token)(cluster, true).map_err(Status::internal)?;
        Ok((worker, manager))
    }

    /// `swarm join-token`.
    pub async fn get_cluster(&self, _: GetClusterRequest) -> Result<GetClusterResponse, Status> {
        let mut cluster = self
            .store
            .read()
            .cluster
            .clone()
            .ok_or_else(|| Status::unavailable("the cluster is not initialized yet"))?;
        let (worker_token, manager_token) = self.tokens(&cluster)?;
        cluster.root_ca_key.clear();
        cluster.worker_secret.clear();
        cluster.manager_secret.clear();
        Ok(GetClusterResponse {
            cluster: Some(cluster),
            worker_token,
            manager_token,
        })
    }

    /// `swarm join-token --rotate`.
    pub async fn rotate_join_token(
        &self,
        req: RotateJoinTokenRequest,
    ) -> Result<RotateJoinTokenResponse, Status> {
        let mut cluster = self
            .store
            .read()
            .cluster
            .clone()
            .ok_or_else(|| Status::unavailable("the cluster is not initialized yet"))?;
        if req.worker {
            cluster.worker_secret = shoal_proto::transport::token::random_secret();
        }
        if req.manager {
            cluster.manager_secret = shoal_proto::transport::token::random_secret();
        }
        touch(&mut cluster.meta);
        self.proposer
            .propose(vec![objects::update(cluster.clone())])
            .await?;
        let (worker_token, manager_token) = self.tokens(&cluster)?;
        Ok(RotateJoinTokenResponse {
            worker_token,
            manager_token,
        })
    }

    /// The objects of `kinds` now, as CREATE events.
    fn current(&self, kinds: &[WatchKind]) -> Vec<StoreEvent> {
        let state = self.store.read();
        let mut events = Vec::new();
        let mut push = |object: Object, index: u64| {
            events.push(StoreEvent {
                kind: StoreActionKind::Create as i32,
                object: Some(StoreObject {
                    object: Some(object),
                }),
                index,
            })
        };
        for kind in kinds {
            match kind {
                WatchKind::Node => state
                    .nodes
                    .values()
                    .for_each(|n| push(Object::Node(self.present_node(n)), 0)),
                WatchKind::Service => state
                    .services
                    .values()
                    .for_each(|s| push(Object::Service(s.clone()), 0)),
                WatchKind::Task => state
                    .tasks
                    .values()
                    .for_each(|t| push(Object::Task(t.clone()), 0)),
                WatchKind::Network => state
                    .networks
                    .values()
                    .for_each(|n| push(Object::Network(n.clone()), 0)),
            }
        }
        events
    }

    /// The Watch stream: current objects, then changes. A subscriber that falls behind, or a
    /// snapshot install, gets the current objects again (they are upserts).
    pub fn watch(self: &Arc<Self>, req: WatchRequest) -> WatchStream {
        let mut kinds: Vec<WatchKind> = req
            .kinds
            .iter()
            .filter_map(|k| WatchKind::try_from(*k).ok())
            .collect();
        if kinds.is_empty() {
            kinds = vec![WatchKind::Node, WatchKind::Service, WatchKind::Task];
        }
        let mut changes = self.store.subscribe();
        let api = Arc::clone(self);
        let initial = (!req.changes_only).then(|| api.current(&kinds));
        let stream = async_stream(move |tx| async move {
            if let Some(events) = initial {
                if tx.send(Ok(WatchMessage { events })).await.is_err() {
                    return;
                }
            }
            let wanted = |e: &StoreEvent| {
                let kind = match e.object.as_ref().and_then(|o| o.object.as_ref()) {
                    Some(Object::Node(_)) => WatchKind::Node,
                    Some(Object::Service(_)) => WatchKind::Service,
                    Some(Object::Task(_)) => WatchKind::Task,
                    Some(Object::Network(_)) => WatchKind::Network,
                    _ => return false,
                };
                kinds.contains(&kind)
            };
            loop {
                let events = match changes.recv().await {
                    Ok(Change::Events(events)) => {
                        events.iter().filter(|e| wanted(e)).cloned().collect()
                    }
                    Ok(Change::Reset) | Err(RecvError::Lagged(_)) => api.current(&kinds),
                    Err(RecvError::Closed) => return,
                };
                if events.is_empty() {
                    continue;
                }
                if tx.send(Ok(WatchMessage { events })).await.is_err() {
                    return;
                }
            }
        });
        Box::pin(stream)
    }
}

/// The Watch response stream.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchMessage, Status>> + Send>>;

/// A stream fed by a spawned producer through a small channel: the producer stops when the
/// receiver (the client) goes away.
fn async_stream<T, F, Fut>(producer: F) -> impl Stream<Item = T> + Send
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(producer(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Where a control call goes.
pub enum Route {
    /// This manager is the leader: answer here.
    Local(Arc<ControlApi>),
    /// Forward to the leader.
    Remote(ControlClient<Channel>),
}

/// Decides, per call, where control calls go (or why they cannot be served here).
pub trait ControlRouter: Send + Sync + 'static {
    /// The route for the next call. `Err` carries Docker's "not a swarm manager" errors.
    fn route(&self) -> Result<Route, Status>;
    /// Whether reads may be answered from this manager's replica (Watch): `None` when this
    /// node has no store.
    fn local(&self) -> Option<Arc<ControlApi>>;
}

/// The gRPC face of the control API.
pub struct ControlService {
    router: Arc<dyn ControlRouter>,
}

impl ControlService {
    /// A service routed by `router`.
    pub fn new(router: Arc<dyn ControlRouter>) -> ControlService {
        ControlService { router }
    }
}

macro_rules! route {
    ($self:ident, $req:ident, $method:ident) => {
        match $self.router.route()? {
            Route::Local(api) => api.$method($req.into_inner()).await.map(Response::new),
            Route::Remote(mut client) => client.$method($req.into_inner()).await,
        }
    };
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn list_nodes(
        &self,
        req: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        route!(self, req, list_nodes)
    }
    async fn get_node(
        &self,
        req: Request<GetNodeRequest>,
    ) -> Result<Response<GetNodeResponse>, Status> {
        route!(self, req, get_node)
    }
    async fn update_node(
        &self,
        req: Request<UpdateNodeRequest>,
    ) -> Result<Response<UpdateNodeResponse>, Status> {
        route!(self, req, update_node)
    }
    async fn remove_node(
        &self,
        req: Request<RemoveNodeRequest>,
    ) -> Result<Response<RemoveNodeResponse>, Status> {
        route!(self, req, remove_node)
    }
    async fn create_service(
        &self,
        req: Request<CreateServiceRequest>,
    ) -> Result<Response<CreateServiceResponse>, Status> {
        route!(self, req, create_service)
    }
    async fn get_service(
        &self,
        req: Request<GetServiceRequest>,
    ) -> Result<Response<GetServiceResponse>, Status> {
        route!(self, req, get_service)
    }
    async fn list_services(
        &self,
        req: Request<ListServicesRequest>,
    ) -> Result<Response<ListServicesResponse>, Status> {
        route!(self, req, list_services)
    }
    async fn update_service(
        &self,
        req: Request<UpdateServiceRequest>,
    ) -> Result<Response<UpdateServiceResponse>, Status> {
        route!(self, req, update_service)
    }
    async fn remove_service(
        &self,
        req: Request<RemoveServiceRequest>,
    ) -> Result<Response<RemoveServiceResponse>, Status> {
        route!(self, req, remove_service)
    }
    async fn create_network(
        &self,
        req: Request<CreateNetworkRequest>,
    ) -> Result<Response<CreateNetworkResponse>, Status> {
        route!(self, req, create_network)
    }
    async fn get_network(
        &self,
        req: Request<GetNetworkRequest>,
    ) -> Result<Response<GetNetworkResponse>, Status> {
        route!(self, req, get_network)
    }
    async fn list_networks(
        &self,
        req: Request<ListNetworksRequest>,
    ) -> Result<Response<ListNetworksResponse>, Status> {
        route!(self, req, list_networks)
    }
    async fn remove_network(
        &self,
        req: Request<RemoveNetworkRequest>,
    ) -> Result<Response<RemoveNetworkResponse>, Status> {
        route!(self, req, remove_network)
    }
    async fn list_tasks(
        &self,
        req: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        route!(self, req, list_tasks)
    }
    async fn get_cluster(
        &self,
        req: Request<GetClusterRequest>,
    ) -> Result<Response<GetClusterResponse>, Status> {
        route!(self, req, get_cluster)
    }
    async fn rotate_join_token(
        &self,
        req: Request<RotateJoinTokenRequest>,
    ) -> Result<Response<RotateJoinTokenResponse>, Status> {
        route!(self, req, rotate_join_token)
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        // Any manager's replica can answer a watch; a node without a store forwards it.
        if let Some(api) = self.router.local() {
            return Ok(Response::new(api.watch(req.into_inner())));
        }
        match self.router.route()? {
            Route::Local(api) => Ok(Response::new(api.watch(req.into_inner()))),
            Route::Remote(mut client) => {
                let stream = client.watch(req.into_inner()).await?.into_inner();
                Ok(Response::new(Box::pin(stream.map(|m| m))))
            }
        }
    }
}

/// Whether a task still counts for its slot (not yet told to stop).
pub fn is_live(task: &Task) -> bool {
    task.desired_state() as i32 <= TaskState::Running as i32
        && !is_terminal(task.status.as_ref().map_or(TaskState::New, |s| s.state()))
}
