//! The leader's components over one store, without Raft (a `LocalProposer` applies each batch
//! at the next index): the control API's checks and versions, the Watch stream, and what the
//! orchestrator and the scheduler make of services and nodes.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::NoRaft;
use futures::StreamExt;
use shoal_manager::controlapi::ControlApi;
use shoal_manager::objects::{self, new_meta};
use shoal_manager::propose::{LocalProposer, Proposer};
use shoal_manager::store::Store;
use shoal_manager::{allocator, orchestrator, scheduler};
use shoal_proto::cluster::v1::service_spec::Mode;
use shoal_proto::cluster::v1::*;

struct Leader {
    store: Arc<Store>,
    proposer: Arc<LocalProposer>,
    api: Arc<ControlApi>,
}

fn leader() -> Leader {
    let store = Store::new();
    let proposer = LocalProposer::new(Arc::clone(&store));
    let api = ControlApi::new(
        Arc::clone(&store),
        proposer.clone() as Arc<dyn Proposer>,
        Arc::new(NoRaft),
        Arc::new(|_: &Cluster, manager: bool| Ok(format!("token-{manager}"))),
    );
    Leader {
        store,
        proposer,
        api,
    }
}

fn node(id: &str, hostname: &str, labels: &[(&str, &str)]) -> Node {
    Node {
        meta: new_meta(id.into()),
        spec: Some(NodeSpec {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }),
        description: Some(NodeDescription {
            hostname: hostname.into(),
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

fn spec(name: &str, replicas: u64) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        task: Some(TaskSpec {
            container: Some(ContainerSpec {
                image: "demo:latest".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        mode: Some(Mode::Replicated(ReplicatedMode { replicas })),
        ..Default::default()
    }
}

impl Leader {
    async fn add_nodes(&self, nodes: Vec<Node>) {
        let actions = nodes.into_iter().map(objects::create).collect();
        self.proposer.propose(actions).await.unwrap();
    }

    /// Runs orchestrator, allocator and scheduler passes until none has anything to write.
    async fn settle(&self) {
        for _ in 0..20 {
            let a = orchestrator::reconcile(&self.store.read(), 5);
            let a_empty = a.is_empty();
            if !a_empty {
                self.proposer.propose(a).await.unwrap();
            }
            let n = allocator::allocate(&self.store.read());
            let n_empty = n.is_empty();
            if !n_empty {
                self.proposer.propose(n).await.unwrap();
            }
            let s = scheduler::schedule(&self.store.read());
            let s_empty = s.is_empty();
            if !s_empty {
                self.proposer.propose(s).await.unwrap();
            }
            if a_empty && n_empty && s_empty {
                return;
            }
        }
        panic!("orchestrator, allocator and scheduler did not settle");
    }

    fn tasks(&self, service: &str) -> Vec<Task> {
        let state = self.store.read();
        let id = state
            .services
            .values()
            .find(|s| s.spec.as_ref().unwrap().name == service)
            .map(|s| s.meta.as_ref().unwrap().id.clone())
            .unwrap();
        state
            .tasks
            .values()
            .filter(|t| t.service_id == id && t.desired_state == TaskState::Running as i32)
            .cloned()
            .collect()
    }

    /// Reports every assigned task of the store as running (what agents would do).
    async fn run_all(&self) {
        let actions: Vec<_> = self
            .store
            .read()
            .tasks
            .values()
            .filter(|t| t.status.as_ref().unwrap().state == TaskState::Assigned as i32)
            .map(|t| {
                let mut t = t.clone();
                t.status.as_mut().unwrap().state = TaskState::Running as i32;
                objects::update(t)
            })
            .collect();
        if !actions.is_empty() {
            self.proposer.propose(actions).await.unwrap();
        }
    }
}

#[tokio::test]
async fn bad_specs_are_refused_with_the_reason() {
    let l = leader();
    let create = |spec| {
        let api = Arc::clone(&l.api);
        async move {
            api.create_service(CreateServiceRequest { spec: Some(spec) })
                .await
                .unwrap_err()
                .message()
                .to_string()
        }
    };
    assert!(create(spec("-web-", 1)).await.contains("invalid name"));
    let mut no_image = spec("web", 1);
    no_image
        .task
        .as_mut()
        .unwrap()
        .container
        .as_mut()
        .unwrap()
        .image = " ".into();
    assert!(create(no_image)
        .await
        .contains("image reference must be provided"));
    let mut bad_constraint = spec("web", 1);
    bad_constraint.task.as_mut().unwrap().placement = Some(Placement {
        constraints: vec!["node.color==red".into()],
    });
    assert!(create(bad_constraint).await.contains("node.color==red"));
    l.api
        .create_service(CreateServiceRequest {
            spec: Some(spec("web", 1)),
        })
        .await
        .unwrap();
    assert!(create(spec("web", 2)).await.contains("already exists"));
}

#[tokio::test]
async fn stale_updates_are_out_of_sequence() {
    let l = leader();
    let created = l
        .api
        .create_service(CreateServiceRequest {
            spec: Some(spec("web", 1)),
        })
        .await
        .unwrap()
        .service
        .unwrap();
    let read = created.meta.as_ref().unwrap().version;
    let update = |version, replicas| UpdateServiceRequest {
        id: "web".into(),
        version,
        spec: Some(spec("web", replicas)),
        rollback: false,
    };
    let updated = l.api.update_service(update(read, 3)).await.unwrap();
    // Scaling leaves the task spec alone: no task is replaced for it.
    assert_eq!(updated.service.unwrap().spec_version, 1);
    let err = l.api.update_service(update(read, 5)).await.unwrap_err();
    assert!(
        err.message().starts_with("update out of sequence"),
        "{err:?}"
    );
}

#[tokio::test]
async fn replicas_spread_scale_and_follow_nodes() {
    let l = leader();
    l.add_nodes(vec![
        node("n1", "a", &[]),
        node("n2", "b", &[]),
        node("n3", "c", &[]),
    ])
    .await;
    l.api
        .create_service(CreateServiceRequest {
            spec: Some(spec("web", 6)),
        })
        .await
        .unwrap();
    l.settle().await;
    let tasks = l.tasks("web");
    assert_eq!(tasks.len(), 6);
    for n in ["n1", "n2", "n3"] {
        assert_eq!(tasks.iter().filter(|t| t.node_id == n).count(), 2, "spread");
    }
    l.run_all().await;

    // Drain n1: its tasks go elsewhere.
    let mut n1 = l.store.read().nodes["n1"].clone();
    n1.spec.as_mut().unwrap().availability = NodeAvailability::Drain as i32;
    l.proposer.propose(vec![objects::update(n1)]).await.unwrap();
    l.settle().await;
    let tasks = l.tasks("web");
    assert_eq!(tasks.len(), 6);
    assert!(tasks.iter().all(|t| t.node_id != "n1"));

    // Scale down to 2: slots 3..6 go.
    let service = l.store.read().services.values().next().unwrap().clone();
    l.api
        .update_service(UpdateServiceRequest {
            id: "web".into(),
            version: service.meta.as_ref().unwrap().version,
            spec: Some(spec("web", 2)),
            rollback: false,
        })
        .await
        .unwrap();
    l.settle().await;
    let mut slots: Vec<u64> = l.tasks("web").iter().map(|t| t.slot).collect();
    slots.sort();
    assert_eq!(slots, [1, 2]);
}

#[tokio::test]
async fn unplaceable_tasks_say_why_and_run_when_a_node_fits() {
    let l = leader();
    l.add_nodes(vec![node("n1", "a", &[])]).await;
    let mut s = spec("blue", 1);
    s.task.as_mut().unwrap().placement = Some(Placement {
        constraints: vec!["node.labels.zone==blue".into()],
    });
    l.api
        .create_service(CreateServiceRequest { spec: Some(s) })
        .await
        .unwrap();
    l.settle().await;
    let task = &l.tasks("blue")[0];
    let status = task.status.as_ref().unwrap();
    assert_eq!(status.state, TaskState::Pending as i32);
    assert_eq!(
        status.err,
        "no suitable node (scheduling constraints not satisfied on 1 node)"
    );
    l.add_nodes(vec![node("n2", "b", &[("zone", "blue")])])
        .await;
    l.settle().await;
    assert_eq!(l.tasks("blue")[0].node_id, "n2");
}

#[tokio::test]
async fn failed_tasks_restart_per_policy_and_history_is_capped() {
    let l = leader();
    l.add_nodes(vec![node("n1", "a", &[])]).await;
    let mut s = spec("job", 1);
    s.task.as_mut().unwrap().restart = Some(RestartPolicy {
        condition: RestartCondition::OnFailure as i32,
        delay: 0,
        max_attempts: 0,
        window: 0,
    });
    l.api
        .create_service(CreateServiceRequest { spec: Some(s) })
        .await
        .unwrap();
    l.settle().await;
    for round in 0..8 {
        let mut t = l.tasks("job")[0].clone();
        assert_eq!(t.restarts, round);
        let st = t.status.as_mut().unwrap();
        st.state = TaskState::Failed as i32;
        st.exit_code = 1;
        l.proposer.propose(vec![objects::update(t)]).await.unwrap();
        l.settle().await;
    }
    // One live task, and at most five stopped ones kept as the slot's history.
    assert_eq!(l.store.read().tasks.len(), 6);

    // A task that completed is not restarted under on-failure.
    let mut t = l.tasks("job")[0].clone();
    t.status.as_mut().unwrap().state = TaskState::Complete as i32;
    l.proposer.propose(vec![objects::update(t)]).await.unwrap();
    l.settle().await;
    let tasks = l.tasks("job");
    assert_eq!(tasks.len(), 1);
    assert_eq!(
        tasks[0].status.as_ref().unwrap().state,
        TaskState::Complete as i32
    );
}

#[tokio::test]
async fn global_services_run_once_per_eligible_node() {
    let l = leader();
    l.add_nodes(vec![node("n1", "a", &[]), node("n2", "b", &[])])
        .await;
    let mut s = spec("agent", 0);
    s.mode = Some(Mode::Global(GlobalMode {}));
    l.api
        .create_service(CreateServiceRequest { spec: Some(s) })
        .await
        .unwrap();
    l.settle().await;
    let mut nodes: Vec<String> = l.tasks("agent").into_iter().map(|t| t.node_id).collect();
    nodes.sort();
    assert_eq!(nodes, ["n1", "n2"]);
    l.add_nodes(vec![node("n3", "c", &[])]).await;
    l.settle().await;
    assert_eq!(l.tasks("agent").len(), 3);
}

#[tokio::test]
async fn watch_sends_current_objects_then_changes() {
    let l = leader();
    l.add_nodes(vec![node("n1", "a", &[])]).await;
    let mut watch = l.api.watch(WatchRequest {
        kinds: vec![WatchKind::Node as i32, WatchKind::Service as i32],
        changes_only: false,
    });
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.events.len(), 1);
    l.api
        .create_service(CreateServiceRequest {
            spec: Some(spec("web", 1)),
        })
        .await
        .unwrap();
    let next = watch.next().await.unwrap().unwrap();
    let object = next.events[0]
        .object
        .as_ref()
        .unwrap()
        .object
        .as_ref()
        .unwrap();
    assert!(
        matches!(object, store_object::Object::Service(s) if s.spec.as_ref().unwrap().name == "web")
    );
    assert_eq!(next.events[0].kind, StoreActionKind::Create as i32);
}
