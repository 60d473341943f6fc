//! Network attachments of standalone containers, over one store without Raft: what
//! `AttachNetwork` and `DetachNetwork` make of attachable and other networks, and how the
//! allocator, the orchestrator, the scheduler, the reaper, the network map and `network rm`
//! treat an attachment task — a task of no service, pinned to the node that asked.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::NoRaft;
use shoal_manager::attachment::{self, ADDRESS_TIMEOUT};
use shoal_manager::controlapi::ControlApi;
use shoal_manager::objects::{self, new_meta};
use shoal_manager::propose::{LocalProposer, Proposer};
use shoal_manager::store::{State, Store};
use shoal_manager::{allocator, netmap, orchestrator, scheduler};
use shoal_proto::cluster::v1::service_spec::Mode;
use shoal_proto::cluster::v1::*;
use tonic::{Code, Status};

struct Leader {
    store: Arc<Store>,
    proposer: Arc<LocalProposer>,
    api: Arc<ControlApi>,
}

fn node(id: &str) -> Node {
    Node {
        meta: new_meta(id.into()),
        spec: Some(NodeSpec::default()),
        description: Some(NodeDescription {
            hostname: id.into(),
            nano_cpus: 2_000_000_000,
            memory_bytes: 1 << 30,
            ..Default::default()
        }),
        status: Some(NodeStatus {
            state: NodeState::Ready as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A leader with nodes n1 and n2 and the ingress network.
async fn leader() -> Leader {
    let store = Store::new();
    let proposer = LocalProposer::new(Arc::clone(&store));
    let api = ControlApi::new(
        Arc::clone(&store),
        proposer.clone() as Arc<dyn Proposer>,
        Arc::new(NoRaft),
        Arc::new(|_: &Cluster, manager: bool| Ok(format!("token-{manager}"))),
    );
    let l = Leader {
        store,
        proposer,
        api,
    };
    l.proposer
        .propose(vec![
            objects::create(node("n1")),
            objects::create(node("n2")),
        ])
        .await
        .unwrap();
    l.network("ingress", false, true, "").await;
    l
}

impl Leader {
    async fn network(&self, name: &str, attachable: bool, ingress: bool, subnet: &str) -> String {
        let network = self
            .api
            .create_network(CreateNetworkRequest {
                spec: Some(NetworkSpec {
                    name: name.into(),
                    driver: "overlay".into(),
                    attachable,
                    ingress,
                    subnet: subnet.into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .network
            .unwrap();
        network.meta.unwrap().id
    }

    /// `AttachNetwork` from `node`, with the allocator loop running while it waits (as on
    /// the leader).
    async fn attach(
        &self,
        node: &str,
        network: &str,
        container: &str,
        timeout: Duration,
    ) -> Result<Task, Status> {
        let (_leading_tx, leading) = tokio::sync::watch::channel(true);
        let allocator = tokio::spawn(allocator::run(
            Arc::clone(&self.store),
            self.proposer.clone() as Arc<dyn Proposer>,
            leading,
            Arc::default(),
        ));
        let result = attachment::attach(
            &self.store,
            &*self.proposer,
            node,
            network,
            container,
            timeout,
        )
        .await;
        allocator.abort();
        let _ = allocator.await;
        result
    }

    async fn detach(&self, node: &str, task_id: &str) -> Result<(), Status> {
        attachment::detach(&self.store, &*self.proposer, node, task_id).await
    }

    /// Runs orchestrator, allocator and scheduler passes until none has anything to write.
    async fn settle(&self) {
        for _ in 0..20 {
            let mut idle = true;
            let passes: [fn(&State) -> Vec<StoreAction>; 3] = [
                |s| orchestrator::reconcile(s, 5),
                allocator::allocate,
                scheduler::schedule,
            ];
            for pass in passes {
                let actions = pass(&self.store.read());
                if !actions.is_empty() {
                    idle = false;
                    self.proposer.propose(actions).await.unwrap();
                }
            }
            if idle {
                return;
            }
        }
        panic!("orchestrator, allocator and scheduler did not settle");
    }

    fn task(&self, id: &str) -> Option<Task> {
        self.store.read().tasks.get(id).cloned()
    }

    /// Reports `state` for a task, as its node's agent would.
    async fn report(&self, id: &str, state: TaskState) {
        let mut task = self.task(id).unwrap();
        task.status.as_mut().unwrap().state = state as i32;
        self.proposer
            .propose(vec![objects::update(task)])
            .await
            .unwrap();
    }

    async fn remove_network(&self, name: &str) -> Result<(), Status> {
        self.api
            .remove_network(RemoveNetworkRequest { id: name.into() })
            .await
            .map(|_| ())
    }
}

/// A leader with the attachable network `shared` and container c1 of node n1 attached.
async fn attached_on_shared() -> (Leader, Task) {
    let l = leader().await;
    l.network("shared", true, false, "").await;
    let task = l
        .attach("n1", "shared", "c1", ADDRESS_TIMEOUT)
        .await
        .unwrap();
    (l, task)
}

fn id(task: &Task) -> String {
    task.meta.as_ref().unwrap().id.clone()
}

#[tokio::test]
async fn attach_gets_an_address_and_is_assigned_to_the_caller() {
    let l = leader().await;
    let net = l.network("shared", true, false, "10.7.0.0/24").await;
    let task = l
        .attach("n2", "shared", "c1", ADDRESS_TIMEOUT)
        .await
        .unwrap();

    assert_eq!(task.node_id, "n2");
    assert!(task.service_id.is_empty());
    let status = task.status.clone().unwrap();
    assert_eq!(status.state(), TaskState::Assigned);
    assert_eq!(status.message, "assigned to the node that asked for it");
    assert_eq!(task.desired_state(), TaskState::Running);
    assert_eq!(task.networks.len(), 1);
    assert_eq!(task.networks[0].network_id, net);
    let addr = &task.networks[0].addresses[0];
    assert!(
        addr.starts_with("10.7.0.") && addr.ends_with("/24"),
        "{addr}"
    );
    let attachment = task.spec.as_ref().unwrap().attachment.as_ref().unwrap();
    assert_eq!(attachment.container_id, "c1");
    assert_eq!(attachment.networks[0].target, net);

    // A daemon that retries gets the same task back, not a second address.
    let again = l.attach("n2", &net, "c1", ADDRESS_TIMEOUT).await.unwrap();
    assert_eq!(id(&again), id(&task));
    assert_eq!(again.networks, task.networks);
    // Another container gets another address.
    let other = l
        .attach("n1", "shared", "c2", ADDRESS_TIMEOUT)
        .await
        .unwrap();
    assert_ne!(other.networks[0].addresses, task.networks[0].addresses);
    assert_eq!(l.store.read().tasks.len(), 2);

    // Other nodes learn the address from the map: an endpoint of no service on n2, running
    // once the agent says so.
    let endpoint = |l: &Leader| {
        netmap::network_map(&l.store.read())
            .endpoints
            .into_iter()
            .find(|e| e.task_id == id(&task))
            .unwrap()
    };
    let e = endpoint(&l);
    assert_eq!(
        (e.node_id.as_str(), e.network_id.as_str(), e.addr.as_str()),
        ("n2", net.as_str(), addr.as_str())
    );
    assert!(e.service_id.is_empty());
    assert!(!e.running);
    l.report(&id(&task), TaskState::Running).await;
    assert!(endpoint(&l).running);
}

#[tokio::test]
async fn only_attachable_networks_take_containers() {
    let l = leader().await;
    l.network("private", false, false, "").await;
    let err = l
        .attach("n1", "private", "c1", ADDRESS_TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(err.message(), "network private not manually attachable");
    let err = l
        .attach("n1", "ingress", "c1", ADDRESS_TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(err.message(), "network ingress not manually attachable");
    l.network("shared", true, false, "").await;
    let err = l
        .attach("n1", "shared", "", ADDRESS_TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = l
        .attach("n1", "nosuch", "c1", ADDRESS_TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(l.store.read().tasks.is_empty());
}

#[tokio::test]
async fn the_leader_leaves_attachments_alone() {
    let (l, task) = attached_on_shared().await;
    l.report(&id(&task), TaskState::Running).await;
    // A service beside it, and a drain of its node: its tasks move, the attachment does not.
    l.api
        .create_service(CreateServiceRequest {
            spec: Some(ServiceSpec {
                name: "web".into(),
                task: Some(TaskSpec {
                    container: Some(ContainerSpec {
                        image: "demo:latest".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                mode: Some(Mode::Replicated(ReplicatedMode { replicas: 2 })),
                networks: vec![NetworkAttachmentConfig {
                    target: "shared".into(),
                    aliases: Vec::new(),
                }],
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let before = l.task(&id(&task)).unwrap();
    for _ in 0..3 {
        l.settle().await;
    }
    let mut n1 = l.store.read().nodes["n1"].clone();
    n1.spec.as_mut().unwrap().availability = NodeAvailability::Drain as i32;
    l.proposer.propose(vec![objects::update(n1)]).await.unwrap();
    l.settle().await;
    assert_eq!(l.task(&id(&task)).unwrap(), before);
    let services: Vec<Task> = l
        .store
        .read()
        .tasks
        .values()
        .filter(|t| !t.service_id.is_empty() && t.desired_state() == TaskState::Running)
        .cloned()
        .collect();
    assert_eq!(services.len(), 2);
    assert!(services.iter().all(|t| t.node_id == "n2"));

    // Its node removed, nothing would ever detach it: it goes.
    let n1 = l.store.read().nodes["n1"].clone();
    l.proposer.propose(vec![objects::remove(n1)]).await.unwrap();
    l.settle().await;
    assert_eq!(l.task(&id(&task)), None);
}

#[tokio::test]
async fn detach_marks_for_removal_and_the_reaper_deletes_once_stopped() {
    let (l, task) = attached_on_shared().await;
    let task_id = id(&task);
    l.report(&task_id, TaskState::Running).await;

    // Only its own node may detach it, and a service's task is no attachment.
    let err = l.detach("n2", &task_id).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    l.detach("n1", &task_id).await.unwrap();
    assert_eq!(l.task(&task_id).unwrap().desired_state(), TaskState::Remove);
    // Idempotent, and unknown ids are fine.
    l.detach("n1", &task_id).await.unwrap();
    l.detach("n1", "no-such-task").await.unwrap();

    // Still running on its node: kept until the node says it stopped.
    l.settle().await;
    assert!(l.task(&task_id).is_some());
    l.report(&task_id, TaskState::Shutdown).await;
    l.settle().await;
    assert_eq!(l.task(&task_id), None);

    // Attaching again makes a new task.
    let again = l
        .attach("n1", "shared", "c1", ADDRESS_TIMEOUT)
        .await
        .unwrap();
    assert_ne!(id(&again), task_id);
}

#[tokio::test]
async fn an_attachment_that_stopped_on_its_own_goes() {
    let (l, task) = attached_on_shared().await;
    l.report(&id(&task), TaskState::Failed).await;
    l.settle().await;
    assert_eq!(l.task(&id(&task)), None);
}

#[tokio::test]
async fn network_rm_is_refused_while_containers_are_attached() {
    let l = leader().await;
    l.network("shared", true, false, "").await;
    let a = l
        .attach("n1", "shared", "c1", ADDRESS_TIMEOUT)
        .await
        .unwrap();
    let b = l
        .attach("n2", "shared", "c2", ADDRESS_TIMEOUT)
        .await
        .unwrap();
    let err = l.remove_network("shared").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(
        err.message(),
        "network shared is in use by 2 attached container(s)"
    );
    l.detach("n1", &id(&a)).await.unwrap();
    let err = l.remove_network("shared").await.unwrap_err();
    assert_eq!(
        err.message(),
        "network shared is in use by 1 attached container(s)"
    );
    l.detach("n2", &id(&b)).await.unwrap();
    // Detached: their nodes tear the endpoints down whether the network exists or not.
    l.remove_network("shared").await.unwrap();
}

#[tokio::test]
async fn a_full_subnet_times_out_with_the_allocators_reason() {
    let l = leader().await;
    // A /29 has five addresses for tasks.
    l.network("tiny", true, false, "10.9.0.0/29").await;
    for c in 0..5 {
        l.attach("n1", "tiny", &format!("c{c}"), ADDRESS_TIMEOUT)
            .await
            .unwrap();
    }
    let err = l
        .attach("n1", "tiny", "c5", Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert_eq!(
        err.message(),
        "attach container c5 to network tiny: no addresses left on network tiny (10.9.0.0/29)"
    );
    // The task given up on does not linger to take an address later.
    l.settle().await;
    assert_eq!(l.store.read().tasks.len(), 5);
}
