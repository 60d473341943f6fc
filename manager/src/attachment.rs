//! Network attachment tasks: a standalone container on an attachable overlay (`docker run
//! --network NET` on a swarm node) gets its address from the leader as a task of no service,
//! pinned to the node that asked (swarmkit's `resourceapi/allocator.go` `AttachNetwork`).
//!
//! This module owns making such a task, waiting until the allocator has addressed it, and
//! marking it for removal when the container goes; the dispatcher serves both to agents. The
//! rest of the task's life is the leader's usual machinery: the allocator gives it addresses
//! and moves it straight to `ASSIGNED` (its node is already set, so the scheduler never sees
//! it), the dispatcher streams it to its node, the orchestrator leaves it alone (it has no
//! service) until its node is removed or it stopped, and the reaper deletes it once stopped.

use std::time::Duration;

use shoal_proto::cluster::v1::{
    NetworkAttachmentConfig, NetworkAttachmentSpec, Task, TaskSpec, TaskState, TaskStatus,
};
use tokio::sync::broadcast::error::RecvError;
use tonic::Status;

use crate::endpoint::find_network;
use crate::objects::{self, id_of, is_terminal, new_meta, now_nanos, touch};
use crate::propose::Proposer;
use crate::store::{State, Store};

/// How long `AttachNetwork` waits for the allocator: long enough for a busy leader's pass and
/// one Raft round trip, short enough that `docker run` fails visibly instead of hanging.
pub const ADDRESS_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the wait re-reads the store when it cannot follow its changes (it lagged far
/// behind, or the store is shutting down).
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Why an attachment request is refused; [`From`] gives each its gRPC code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    /// The network is not `--attachable`, or is the ingress network (Docker's wording).
    #[error("network {network} not manually attachable")]
    NotAttachable {
        /// The network's name.
        network: String,
    },
    /// The request names no container.
    #[error("attach to network {network}: no container id given")]
    NoContainer {
        /// The network as the caller named it.
        network: String,
    },
    /// The task exists but is a service's task, not an attachment.
    #[error("task {task_id} is not a network attachment")]
    NotAttachment {
        /// The task asked for.
        task_id: String,
    },
    /// The task is another node's attachment.
    #[error("task {task_id} belongs to node {owner}")]
    OtherNode {
        /// The task asked for.
        task_id: String,
        /// The node it belongs to.
        owner: String,
    },
    /// The allocator did not address the task in time.
    #[error("attach container {container_id} to network {network}: {reason}")]
    Unaddressed {
        /// The container to attach.
        container_id: String,
        /// The network's name.
        network: String,
        /// The allocator's error on the task, or that none came in time.
        reason: String,
    },
    /// The task was marked for removal or deleted while the request waited for its address
    /// (a `DetachNetwork` for it, or its node was removed).
    #[error("attachment task {task_id} was removed before it got its address")]
    Removed {
        /// The task waited on.
        task_id: String,
    },
}

impl From<AttachError> for Status {
    fn from(err: AttachError) -> Status {
        let message = err.to_string();
        match err {
            AttachError::NotAttachable { .. } | AttachError::OtherNode { .. } => {
                Status::permission_denied(message)
            }
            AttachError::NoContainer { .. } | AttachError::NotAttachment { .. } => {
                Status::invalid_argument(message)
            }
            AttachError::Unaddressed { .. } => Status::deadline_exceeded(message),
            AttachError::Removed { .. } => Status::aborted(message),
        }
    }
}

/// Whether `task` is a network attachment (a standalone container's address) rather than a
/// service's task.
pub fn is_attachment(task: &Task) -> bool {
    task.service_id.is_empty() && task.spec.as_ref().is_some_and(|s| s.attachment.is_some())
}

/// The ids of the networks an attachment task is for (none for a service's task).
pub fn attachment_networks(task: &Task) -> impl Iterator<Item = &str> {
    task.spec
        .iter()
        .filter_map(|s| s.attachment.as_ref())
        .flat_map(|a| &a.networks)
        .map(|n| n.target.as_str())
}

/// The container an attachment task is for ("" for a service's task).
fn container_of(task: &Task) -> &str {
    task.spec
        .as_ref()
        .and_then(|s| s.attachment.as_ref())
        .map_or("", |a| a.container_id.as_str())
}

/// An attachment that still stands: not detached, and not stopped on its node.
fn live(task: &Task) -> bool {
    let observed = task.status.as_ref().map_or(TaskState::New, |s| s.state());
    task.desired_state() == TaskState::Running && !is_terminal(observed)
}

/// What an `AttachNetwork` request comes to.
#[derive(Debug, Clone, PartialEq)]
pub enum AttachPlan {
    /// The container is attached already (a daemon that retries): this task, maybe not yet
    /// addressed.
    Existing(Task),
    /// A new attachment task to write.
    New(Task),
}

impl AttachPlan {
    /// The task either way.
    pub fn task(&self) -> &Task {
        match self {
            AttachPlan::Existing(task) | AttachPlan::New(task) => task,
        }
    }
}

/// Decides an `AttachNetwork` of `container_id` on `node_id` to `network` (name, id or id
/// prefix): refused unless the network is attachable; the live attachment of the same
/// container to the same network on the same node if there is one; else a new task.
pub fn plan_attach(
    state: &State,
    node_id: &str,
    network: &str,
    container_id: &str,
) -> Result<AttachPlan, Status> {
    if container_id.trim().is_empty() {
        return Err(AttachError::NoContainer {
            network: network.to_string(),
        }
        .into());
    }
    let found = find_network(state, network)?;
    let spec = found.spec.clone().unwrap_or_default();
    // Swarm never lets a container onto the routing mesh's network by hand.
    if spec.ingress || !spec.attachable {
        return Err(AttachError::NotAttachable { network: spec.name }.into());
    }
    let network_id = id_of(&found.meta);
    let existing = state.tasks.values().find(|t| {
        is_attachment(t)
            && live(t)
            && t.node_id == node_id
            && container_of(t) == container_id
            && attachment_networks(t).any(|n| n == network_id)
    });
    if let Some(task) = existing {
        return Ok(AttachPlan::Existing(task.clone()));
    }
    Ok(AttachPlan::New(new_task(node_id, network_id, container_id)))
}

/// A new attachment task: born `NEW` on its node, for the allocator to address.
fn new_task(node_id: &str, network_id: &str, container_id: &str) -> Task {
    Task {
        meta: new_meta(shoal_proto::transport::random_id()),
        service_id: String::new(),
        slot: 0,
        node_id: node_id.to_string(),
        spec: Some(TaskSpec {
            attachment: Some(NetworkAttachmentSpec {
                container_id: container_id.to_string(),
                networks: vec![NetworkAttachmentConfig {
                    target: network_id.to_string(),
                    aliases: Vec::new(),
                }],
            }),
            ..Default::default()
        }),
        spec_version: 0,
        status: Some(TaskStatus {
            state: TaskState::New as i32,
            timestamp: now_nanos(),
            message: "created".into(),
            ..Default::default()
        }),
        desired_state: TaskState::Running as i32,
        service_name: String::new(),
        not_before: 0,
        restarts: 0,
        networks: Vec::new(),
    }
}

/// `AttachNetwork` for `node_id`: finds or makes the attachment task (see [`plan_attach`]) and
/// answers with it once the allocator gave it its address, waiting at most `timeout`. A task
/// still unaddressed then is marked for removal, so that it does not take an address later
/// for a container that gave up; the error carries the allocator's reason (a full subnet).
pub async fn attach(
    store: &Store,
    proposer: &dyn Proposer,
    node_id: &str,
    network: &str,
    container_id: &str,
    timeout: Duration,
) -> Result<Task, Status> {
    let deadline = tokio::time::Instant::now() + timeout;
    let plan = plan_attach(&store.read(), node_id, network, container_id)?;
    let task_id = id_of(&plan.task().meta).to_string();
    if let AttachPlan::New(task) = plan {
        proposer.propose(vec![objects::create(task)]).await?;
        tracing::info!(node = %node_id, task = %task_id, %network, container = %container_id,
            "network attachment task created");
    }
    if let Some(task) = wait_addressed(store, &task_id, deadline).await? {
        return Ok(task);
    }
    give_up(store, proposer, &task_id, container_id).await
}

/// Waits until the task has its addresses (`Some`), or `deadline` passed (`None`).
async fn wait_addressed(
    store: &Store,
    task_id: &str,
    deadline: tokio::time::Instant,
) -> Result<Option<Task>, Status> {
    // Subscribed before each read, so that no change between the read and the wait is missed.
    let mut changes = store.subscribe();
    loop {
        if let Some(task) = addressed(&store.read(), task_id)? {
            return Ok(Some(task));
        }
        match tokio::time::timeout_at(deadline, changes.recv()).await {
            Err(_) => return Ok(None),
            Ok(Ok(_)) | Ok(Err(RecvError::Lagged(_))) => {}
            Ok(Err(RecvError::Closed)) => {
                if tokio::time::Instant::now() >= deadline {
                    return Ok(None);
                }
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        }
    }
}

/// The task if it has its addresses; an error if it is gone or going.
fn addressed(state: &State, task_id: &str) -> Result<Option<Task>, AttachError> {
    let removed = || AttachError::Removed {
        task_id: task_id.to_string(),
    };
    let task = state.tasks.get(task_id).ok_or_else(removed)?;
    if task.desired_state() != TaskState::Running {
        return Err(removed());
    }
    Ok((!task.networks.is_empty()).then(|| task.clone()))
}

/// The deadline passed: unless the address came at the last moment, marks the task for
/// removal and reports why it has none.
async fn give_up(
    store: &Store,
    proposer: &dyn Proposer,
    task_id: &str,
    container_id: &str,
) -> Result<Task, Status> {
    // Twice: the allocator may write the task (its error, or its address) under us.
    for _ in 0..2 {
        let (task, network, reason) = {
            let state = store.read();
            if let Some(task) = addressed(&state, task_id)? {
                return Ok(task);
            }
            let task = state
                .tasks
                .get(task_id)
                .cloned()
                .ok_or(AttachError::Removed {
                    task_id: task_id.to_string(),
                })?;
            let network_id = attachment_networks(&task).next().unwrap_or("").to_string();
            let network = state
                .networks
                .get(&network_id)
                .and_then(|n| n.spec.as_ref())
                .map_or(network_id, |s| s.name.clone());
            let reason = task
                .status
                .as_ref()
                .map(|s| s.err.clone())
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "no address was allocated in time".to_string());
            (task, network, reason)
        };
        let mut task = task;
        task.desired_state = TaskState::Remove as i32;
        touch(&mut task.meta);
        match proposer.propose(vec![objects::update(task)]).await {
            Err(e) if e.is_conflict() => continue,
            Err(e) => {
                tracing::warn!(task = %task_id, error = %e, "cannot mark unaddressed attachment for removal");
            }
            Ok(_) => {}
        }
        tracing::warn!(task = %task_id, %network, %reason, "network attachment got no address");
        return Err(AttachError::Unaddressed {
            container_id: container_id.to_string(),
            network,
            reason,
        }
        .into());
    }
    Err(Status::aborted(format!(
        "attachment task {task_id} kept changing; attach again"
    )))
}

/// Decides a `DetachNetwork` of `task_id` by `node_id`: the task marked for removal, or `None`
/// when there is nothing to do (unknown, or already detached: detaching is idempotent).
pub fn plan_detach(state: &State, node_id: &str, task_id: &str) -> Result<Option<Task>, Status> {
    let Some(task) = state.tasks.get(task_id) else {
        return Ok(None);
    };
    if task.node_id != node_id {
        return Err(AttachError::OtherNode {
            task_id: task_id.to_string(),
            owner: task.node_id.clone(),
        }
        .into());
    }
    if !is_attachment(task) {
        return Err(AttachError::NotAttachment {
            task_id: task_id.to_string(),
        }
        .into());
    }
    if task.desired_state() == TaskState::Remove {
        return Ok(None);
    }
    let mut task = task.clone();
    task.desired_state = TaskState::Remove as i32;
    touch(&mut task.meta);
    Ok(Some(task))
}

/// `DetachNetwork` for `node_id`: marks the attachment task for removal (see
/// [`plan_detach`]); its node then tears the endpoint down and the reaper deletes the task.
pub async fn detach(
    store: &Store,
    proposer: &dyn Proposer,
    node_id: &str,
    task_id: &str,
) -> Result<(), Status> {
    // Once more on a conflict: the node's own status report may have moved the version.
    for attempt in 0..2 {
        let Some(task) = plan_detach(&store.read(), node_id, task_id)? else {
            return Ok(());
        };
        match proposer.propose(vec![objects::update(task)]).await {
            Ok(_) => {
                tracing::info!(node = %node_id, task = %task_id, "network attachment detached");
                return Ok(());
            }
            Err(e) if e.is_conflict() && attempt == 0 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Status::aborted(format!(
        "attachment task {task_id} kept changing; detach again"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::cluster::v1::{Meta, Network, NetworkAllocation, NetworkSpec};
    use tonic::Code;

    fn network(id: &str, name: &str, attachable: bool, ingress: bool) -> Network {
        Network {
            meta: Some(Meta {
                id: id.into(),
                ..Default::default()
            }),
            spec: Some(NetworkSpec {
                name: name.into(),
                driver: "overlay".into(),
                attachable,
                ingress,
                ..Default::default()
            }),
            allocation: Some(NetworkAllocation {
                subnet: "10.0.9.0/24".into(),
                gateway: "10.0.9.1".into(),
                vni: 4100,
            }),
        }
    }

    fn state() -> State {
        let mut state = State::default();
        for n in [
            network("att1", "shared", true, false),
            network("priv1", "private", false, false),
            network("ing1", "ingress", true, true),
        ] {
            state.networks.insert(id_of(&n.meta).to_string(), n);
        }
        state
    }

    #[test]
    fn attach_is_refused_with_the_right_code() {
        let state = state();
        let bad = [
            ("private", "c1", Code::PermissionDenied),
            ("ingress", "c1", Code::PermissionDenied),
            ("shared", "", Code::InvalidArgument),
            ("nope", "c1", Code::NotFound),
        ];
        for (network, container, code) in bad {
            let err = plan_attach(&state, "n1", network, container).unwrap_err();
            assert_eq!(err.code(), code, "{network} {container}: {err:?}");
        }
        let err = plan_attach(&state, "n1", "private", "c1").unwrap_err();
        assert_eq!(err.message(), "network private not manually attachable");
        let plan = plan_attach(&state, "n1", "att", "c1").unwrap();
        let AttachPlan::New(task) = plan else {
            panic!("expected a new task")
        };
        assert!(is_attachment(&task));
        assert_eq!(task.node_id, "n1");
        assert_eq!(attachment_networks(&task).collect::<Vec<_>>(), ["att1"]);
    }

    #[test]
    fn attach_again_finds_the_live_task_only() {
        let mut state = state();
        let AttachPlan::New(task) = plan_attach(&state, "n1", "shared", "c1").unwrap() else {
            panic!("expected a new task")
        };
        let id = id_of(&task.meta).to_string();
        state.tasks.insert(id.clone(), task.clone());
        let again = plan_attach(&state, "n1", "shared", "c1").unwrap();
        assert_eq!(again, AttachPlan::Existing(task.clone()));
        // Another container, or another node, gets its own task.
        for (node, container) in [("n1", "c2"), ("n2", "c1")] {
            let plan = plan_attach(&state, node, "shared", container).unwrap();
            assert!(matches!(plan, AttachPlan::New(_)), "{node} {container}");
        }
        // A detached one is not reused.
        let detached = plan_detach(&state, "n1", &id).unwrap().unwrap();
        state.tasks.insert(id.clone(), detached);
        assert!(matches!(
            plan_attach(&state, "n1", "shared", "c1").unwrap(),
            AttachPlan::New(_)
        ));
    }

    #[test]
    fn detach_is_idempotent_and_only_for_the_owner() {
        let mut state = state();
        let AttachPlan::New(task) = plan_attach(&state, "n1", "shared", "c1").unwrap() else {
            panic!("expected a new task")
        };
        let id = id_of(&task.meta).to_string();
        state.tasks.insert(id.clone(), task);
        let service_task = Task {
            meta: new_meta("svc-task".into()),
            service_id: "svc".into(),
            node_id: "n1".into(),
            ..Default::default()
        };
        state.tasks.insert("svc-task".into(), service_task);

        assert_eq!(plan_detach(&state, "n1", "unknown").unwrap(), None);
        let err = plan_detach(&state, "n2", &id).unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        let err = plan_detach(&state, "n1", "svc-task").unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        let marked = plan_detach(&state, "n1", &id).unwrap().unwrap();
        assert_eq!(marked.desired_state(), TaskState::Remove);
        state.tasks.insert(id.clone(), marked);
        assert_eq!(plan_detach(&state, "n1", &id).unwrap(), None);
    }
}
