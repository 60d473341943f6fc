//! The dispatcher (served by the leader): every node's agent keeps a session with it. The
//! session stream carries the node's full set of assigned tasks, then each change; heartbeats
//! keep the node `ready` (three missed periods mark it `down`, and the orchestrator moves its
//! tasks); task status reports from all agents are batched into few Raft entries.
//!
//! The node is who its certificate says: every RPC reads the caller's node id from the TLS
//! peer certificate, never from the request. Standalone containers join attachable overlays
//! through it too (`AttachNetwork`/`DetachNetwork`, see [`crate::attachment`]).

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::Stream;
use shoal_proto::cluster::v1::dispatcher_server::Dispatcher;
use shoal_proto::cluster::v1::store_object::Object;
use shoal_proto::cluster::v1::*;
use shoal_proto::transport::peer_identity;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};

use crate::objects::{self, id_of, now_nanos, touch};
use crate::propose::Proposer;
use crate::store::{Change, Store};

/// Default heartbeat period (Swarm's is 5 s; a node is down after three missed).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
/// Missed periods before a node is down.
const MISSED_BEATS: u32 = 3;
/// Longest time status reports wait to share an entry.
const STATUS_BATCH_WINDOW: Duration = Duration::from_millis(20);

/// Chunks of an exported image archive.
pub type ImageChunks = mpsc::Receiver<Result<Vec<u8>, Status>>;

/// Exports images of this manager's node for agents that miss them.
pub trait ImageExporter: Send + Sync + 'static {
    /// Streams `reference` as an OCI image-layout tar; `Ok(None)` when this node lacks it.
    fn export(&self, reference: &str) -> Result<Option<ImageChunks>, Status>;
    /// Fetches `reference` from the manager at `source` into this node's store.
    fn replicate(
        &self,
        reference: String,
        source: String,
    ) -> BoxFuture<'static, Result<(), Status>>;
}

/// Status reports of one RPC, and where to answer it.
pub type StatusBatch = (
    String,
    Vec<TaskStatusUpdate>,
    oneshot::Sender<Result<(), Status>>,
);

/// What the dispatcher needs of the manager around it.
pub trait DispatcherContext: Send + Sync + 'static {
    /// `Ok` on the leader; else `Unavailable` naming the leader.
    fn check_leader(&self) -> Result<(), Status>;
    /// Managers' cluster addresses, leader first.
    fn managers(&self) -> Vec<String>;
}

/// The leader's dispatcher.
pub struct DispatcherService {
    store: Arc<Store>,
    proposer: Arc<dyn Proposer>,
    context: Arc<dyn DispatcherContext>,
    images: Arc<dyn ImageExporter>,
    heartbeats: Arc<Mutex<HashMap<String, Instant>>>,
    status_tx: mpsc::Sender<StatusBatch>,
    period: Duration,
}

impl DispatcherService {
    /// A dispatcher; its background work runs while `leading` is true (see [`Self::run`]).
    pub fn new(
        store: Arc<Store>,
        proposer: Arc<dyn Proposer>,
        context: Arc<dyn DispatcherContext>,
        images: Arc<dyn ImageExporter>,
        period: Duration,
    ) -> (Arc<DispatcherService>, mpsc::Receiver<StatusBatch>) {
        let (status_tx, status_rx) = mpsc::channel(1024);
        let service = Arc::new(DispatcherService {
            store,
            proposer,
            context,
            images,
            heartbeats: Arc::default(),
            status_tx,
            period,
        });
        (service, status_rx)
    }

    fn caller(&self, node: Option<PeerIdentity>) -> Result<String, Status> {
        self.context.check_leader()?;
        let node = node.ok_or_else(|| Status::unauthenticated("no node certificate"))?;
        if !self.store.read().nodes.contains_key(&node.node_id) {
            return Err(Status::permission_denied(format!(
                "node {} is not a member of the swarm",
                node.node_id
            )));
        }
        Ok(node.node_id)
    }

    /// Records a sign of life from `node_id` (also called for a node that just joined, so
    /// it is not judged before its first session).
    pub fn beat(&self, node_id: &str) {
        self.heartbeats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node_id.to_string(), Instant::now());
    }

    /// Writes `change` to the node object; a node removed meanwhile is left alone.
    async fn update_node(
        &self,
        node_id: &str,
        change: impl Fn(&mut Node) -> bool,
    ) -> Result<(), Status> {
        match crate::propose::update_node(&self.store, &*self.proposer, node_id, change).await {
            Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
            other => other,
        }
    }

    /// Gives every node a full grace period to reach this manager before it is judged: called
    /// when this manager becomes the leader.
    pub fn reset_heartbeats(&self) {
        let now = Instant::now();
        let ids: Vec<String> = self.store.read().nodes.keys().cloned().collect();
        let mut beats = self.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
        for id in ids {
            beats.insert(id, now);
        }
    }

    /// Background work, for the manager's lifetime: batching status reports (which only the
    /// leader receives) and, while leading, finding down nodes.
    pub async fn run(self: Arc<Self>, mut status_rx: mpsc::Receiver<StatusBatch>) {
        let mut check = tokio::time::interval(self.period / 2);
        loop {
            tokio::select! {
                first = status_rx.recv() => {
                    let Some(first) = first else { return };
                    let mut batch = vec![first];
                    let deadline = tokio::time::sleep(STATUS_BATCH_WINDOW);
                    tokio::pin!(deadline);
                    loop {
                        tokio::select! {
                            more = status_rx.recv() => match more {
                                Some(more) => batch.push(more),
                                None => break,
                            },
                            _ = &mut deadline => break,
                        }
                        if batch.len() >= 256 {
                            break;
                        }
                    }
                    self.flush_statuses(batch).await;
                }
                _ = check.tick() => self.mark_down().await,
            }
        }
    }

    async fn flush_statuses(&self, batch: Vec<StatusBatch>) {
        // Stays an error if every attempt conflicts: the agent then reports again.
        let mut result = Err(Status::aborted("task status kept changing; report again"));
        for _ in 0..10 {
            let actions = {
                let state = self.store.read();
                let mut changed: HashMap<String, Task> = HashMap::new();
                for (node_id, updates, _) in &batch {
                    for update in updates {
                        let Some(status) = update.status.clone() else {
                            continue;
                        };
                        let current = changed
                            .get(&update.task_id)
                            .or_else(|| state.tasks.get(&update.task_id));
                        let Some(task) = current else { continue };
                        if task.node_id != *node_id {
                            continue;
                        }
                        // Observed state only moves forward; a repeat (an agent adopting its
                        // containers after a restart) keeps the original time.
                        let now_state = task.status.as_ref().map_or(0, |s| s.state);
                        if status.state <= now_state {
                            continue;
                        }
                        let mut task = task.clone();
                        task.status = Some(status);
                        touch(&mut task.meta);
                        changed.insert(update.task_id.clone(), task);
                    }
                }
                changed
                    .into_values()
                    .map(objects::update)
                    .collect::<Vec<_>>()
            };
            if actions.is_empty() {
                result = Ok(());
                break;
            }
            match self.proposer.propose(actions).await {
                Ok(_) => {
                    result = Ok(());
                    break;
                }
                Err(e) if e.is_conflict() => continue,
                Err(e) => {
                    result = Err(Status::from(e));
                    break;
                }
            }
        }
        for (_, _, reply) in batch {
            let _ = reply.send(result.clone());
        }
    }

    async fn mark_down(&self) {
        if self.context.check_leader().is_err() {
            return;
        }
        let limit = self.period * MISSED_BEATS;
        let late: Vec<String> = {
            let beats = self.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
            let state = self.store.read();
            state
                .nodes
                .iter()
                .filter(|(_, n)| n.status.as_ref().map(|s| s.state()) != Some(NodeState::Down))
                .filter(|(id, _)| beats.get(*id).is_none_or(|t| t.elapsed() > limit))
                .map(|(id, _)| id.clone())
                .collect()
        };
        for id in late {
            tracing::info!(node = %id, "node missed its heartbeats: down");
            let result = self
                .update_node(&id, |node| {
                    let status = node.status.get_or_insert_with(Default::default);
                    status.state = NodeState::Down as i32;
                    status.message = "heartbeat failure".into();
                    true
                })
                .await;
            if let Err(err) = result {
                tracing::warn!(node = %id, error = %err, "cannot mark node down");
            }
        }
    }

    fn is_mine(task: &Task, node_id: &str) -> bool {
        task.node_id == node_id
            && task.status.as_ref().map_or(0, |s| s.state) >= TaskState::Assigned as i32
    }

    fn full_message(&self, node_id: &str, sent: &mut HashSet<String>) -> SessionMessage {
        let state = self.store.read();
        let tasks: Vec<Task> = state
            .tasks
            .values()
            .filter(|t| Self::is_mine(t, node_id))
            .cloned()
            .collect();
        *sent = tasks.iter().map(|t| id_of(&t.meta).to_string()).collect();
        SessionMessage {
            full: true,
            tasks,
            removed: Vec::new(),
            managers: self.context.managers(),
            node: state.nodes.get(node_id).cloned(),
            network_map: Some(crate::netmap::network_map(&state)),
        }
    }
}

/// The Session response stream.
pub type SessionStream = Pin<Box<dyn Stream<Item = Result<SessionMessage, Status>> + Send>>;
/// The ExportImage response stream.
pub type ImageStream = Pin<Box<dyn Stream<Item = Result<ImageChunk, Status>> + Send>>;

/// The gRPC face of a [`DispatcherService`].
#[derive(Clone)]
pub struct DispatcherRpc(pub Arc<DispatcherService>);

impl std::ops::Deref for DispatcherRpc {
    type Target = DispatcherService;
    fn deref(&self) -> &DispatcherService {
        &self.0
    }
}

#[tonic::async_trait]
impl Dispatcher for DispatcherRpc {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        req: Request<SessionRequest>,
    ) -> Result<Response<SessionStream>, Status> {
        let node_id = self.caller(peer_identity(&req))?;
        let addr = req
            .remote_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let description = req.into_inner().description;
        self.beat(&node_id);
        self.update_node(&node_id, |node| {
            let status = node.status.get_or_insert_with(Default::default);
            let before = (node.description.clone(), status.state, status.addr.clone());
            status.state = NodeState::Ready as i32;
            status.message.clear();
            if !addr.is_empty() {
                status.addr = addr.clone();
            }
            if description.is_some() {
                node.description = description.clone();
            }
            before != (node.description.clone(), status.state, status.addr.clone())
        })
        .await?;
        tracing::info!(node = %node_id, "agent session opened");

        let mut changes = self.store.subscribe();
        let (tx, rx) = mpsc::channel(16);
        let this = Arc::clone(&self.0);
        tokio::spawn(async move {
            let mut sent = HashSet::new();
            let full = this.full_message(&node_id, &mut sent);
            let mut map_sent = full.network_map.clone();
            if tx.send(Ok(full)).await.is_err() {
                return;
            }
            loop {
                let first = tokio::select! {
                    change = changes.recv() => change,
                    _ = tx.closed() => return,
                };
                let mut batch = vec![first];
                while let Ok(more) = changes.try_recv() {
                    batch.push(Ok(more));
                }
                let mut message = SessionMessage::default();
                // Latest version of each changed task, and the ids gone, in this batch.
                let mut changed: HashMap<String, Task> = HashMap::new();
                let mut gone: HashSet<String> = HashSet::new();
                let mut reset = false;
                for change in batch {
                    match change {
                        Ok(Change::Events(events)) => {
                            for event in events.iter() {
                                match event.object.as_ref().and_then(|o| o.object.as_ref()) {
                                    Some(Object::Task(task)) => {
                                        let id = id_of(&task.meta).to_string();
                                        let removed = event.kind == StoreActionKind::Remove as i32;
                                        if !removed && DispatcherService::is_mine(task, &node_id) {
                                            sent.insert(id.clone());
                                            gone.remove(&id);
                                            changed.insert(id, task.clone());
                                        } else if sent.remove(&id) {
                                            changed.remove(&id);
                                            gone.insert(id);
                                        }
                                    }
                                    Some(Object::Node(node)) if id_of(&node.meta) == node_id => {
                                        if event.kind == StoreActionKind::Remove as i32 {
                                            let _ = tx
                                                .send(Err(Status::permission_denied(
                                                    "node was removed from the swarm",
                                                )))
                                                .await;
                                            return;
                                        }
                                        message.node = Some(node.clone());
                                        message.managers = this.context.managers();
                                    }
                                    _ => {}
                                }
                            }
                        }
                        Ok(Change::Reset) | Err(RecvError::Lagged(_)) => reset = true,
                        Err(RecvError::Closed) => return,
                    }
                }
                message.tasks = changed.into_values().collect();
                message.removed = gone.into_iter().collect();
                if this.context.check_leader().is_err() {
                    let _ = tx.send(Err(Status::unavailable("leadership lost"))).await;
                    return;
                }
                let mut message = if reset {
                    this.full_message(&node_id, &mut sent)
                } else {
                    message
                };
                // The map goes whole, and only when it changed.
                let map = crate::netmap::network_map(&this.store.read());
                if map_sent.as_ref() != Some(&map) {
                    map_sent = Some(map.clone());
                    message.network_map = Some(map);
                } else if !reset {
                    message.network_map = None;
                }
                if message.tasks.is_empty()
                    && message.removed.is_empty()
                    && message.node.is_none()
                    && message.network_map.is_none()
                    && !reset
                {
                    continue;
                }
                if tx.send(Ok(message)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let node_id = self.caller(peer_identity(&req))?;
        self.beat(&node_id);
        let down = self
            .store
            .read()
            .nodes
            .get(&node_id)
            .is_some_and(|n| n.status.as_ref().map(|s| s.state()) != Some(NodeState::Ready));
        if down {
            self.update_node(&node_id, |node| {
                let status = node.status.get_or_insert_with(Default::default);
                status.state = NodeState::Ready as i32;
                status.message.clear();
                true
            })
            .await?;
        }
        Ok(Response::new(HeartbeatResponse {
            period_ms: u32::try_from(self.period.as_millis()).unwrap_or(u32::MAX),
        }))
    }

    async fn update_task_status(
        &self,
        req: Request<UpdateTaskStatusRequest>,
    ) -> Result<Response<UpdateTaskStatusResponse>, Status> {
        let node_id = self.caller(peer_identity(&req))?;
        let (reply_tx, reply_rx) = oneshot::channel();
        self.status_tx
            .send((node_id, req.into_inner().updates, reply_tx))
            .await
            .map_err(|_| Status::unavailable("dispatcher stopping"))?;
        reply_rx
            .await
            .map_err(|_| Status::unavailable("dispatcher stopping"))??;
        Ok(Response::new(UpdateTaskStatusResponse {}))
    }

    async fn replicate_image(
        &self,
        req: Request<ReplicateImageRequest>,
    ) -> Result<Response<ReplicateImageResponse>, Status> {
        let caller = peer_identity(&req);
        if !caller.is_some_and(|p| p.role == shoal_proto::transport::Role::Manager) {
            return Err(Status::permission_denied("only managers replicate images"));
        }
        let req = req.into_inner();
        self.images.replicate(req.reference, req.source).await?;
        Ok(Response::new(ReplicateImageResponse {}))
    }

    async fn attach_network(
        &self,
        req: Request<AttachNetworkRequest>,
    ) -> Result<Response<AttachNetworkResponse>, Status> {
        let node_id = self.caller(peer_identity(&req))?;
        let req = req.into_inner();
        let task = crate::attachment::attach(
            &self.store,
            &*self.proposer,
            &node_id,
            &req.network,
            &req.container_id,
            crate::attachment::ADDRESS_TIMEOUT,
        )
        .await?;
        Ok(Response::new(AttachNetworkResponse { task: Some(task) }))
    }

    async fn detach_network(
        &self,
        req: Request<DetachNetworkRequest>,
    ) -> Result<Response<DetachNetworkResponse>, Status> {
        let node_id = self.caller(peer_identity(&req))?;
        let task_id = req.into_inner().task_id;
        crate::attachment::detach(&self.store, &*self.proposer, &node_id, &task_id).await?;
        Ok(Response::new(DetachNetworkResponse {}))
    }

    type ExportImageStream = ImageStream;

    async fn export_image(
        &self,
        req: Request<ExportImageRequest>,
    ) -> Result<Response<ImageStream>, Status> {
        // Any manager serves images, leader or not.
        if peer_identity(&req).is_none() {
            return Err(Status::unauthenticated("no node certificate"));
        }
        let reference = req.into_inner().reference;
        let Some(rx) = self.images.export(&reference)? else {
            return Err(Status::not_found(format!("No such image: {reference}")));
        };
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(futures::StreamExt::map(
            stream,
            |chunk| chunk.map(|data| ImageChunk { data }),
        ))))
    }
}

use shoal_proto::transport::PeerIdentity;

/// Unix nanos now (re-exported for agents' tests).
pub fn timestamp() -> i64 {
    now_nanos()
}
