//! Tests of the Raft layer: openraft's storage conformance suite on the redb log store and
//! the state machine, and a three-manager cluster on loopback (in-process tonic servers,
//! temporary directories) through election, failover, restart and snapshot install.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use openraft::testing::{StoreBuilder, Suite};
use shoal_proto::cluster::v1::raft_client::RaftClient;
use shoal_proto::cluster::v1::store_object::Object;
use shoal_proto::cluster::v1::{
    AddMemberRequest, Meta, Service, StoreAction, StoreActionKind, StoreBatch, StoreObject,
    WriteRequest,
};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Endpoint, Server};
use tonic::Status;

use super::*;

struct RedbStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RedbStoreBuilder {
    async fn build(
        &self,
    ) -> Result<(TempDir, LogStore, StateMachine), openraft::StorageError<u64>> {
        let dir = tempfile::tempdir().unwrap();
        let (log_store, state_machine) = open_storage(dir.path(), Store::new()).await.unwrap();
        Ok((dir, log_store, state_machine))
    }
}

#[test]
fn raft_storage_passes_openraft_suite() {
    Suite::test_all(RedbStoreBuilder).unwrap();
}

#[test]
fn raft_request_round_trips_through_json() {
    let request = Request {
        batch: create_service("svc"),
    };
    let json = serde_json::to_string(&request).unwrap();
    assert!(
        json.contains("\"batch\":\""),
        "batch is a base64 string: {json}"
    );
    assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), request);
}

/// Generous bound for anything a cluster has to reach; tests only fail on it, never measure.
const WAIT: Duration = Duration::from_secs(30);

/// Polls `check` until it returns `Ok`; panics with its last complaint after [`WAIT`].
async fn wait_until<F: FnMut() -> Result<(), String>>(what: &str, mut check: F) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let unmet = match check() {
            Ok(()) => return,
            Err(unmet) => unmet,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {unmet}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Retries `f` until it succeeds; panics with its last error after [`WAIT`].
async fn retry<T, E: std::fmt::Debug, Fut: Future<Output = Result<T, E>>>(
    what: &str,
    mut f: impl FnMut() -> Fut,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match f().await {
            Ok(value) => return value,
            Err(err) if tokio::time::Instant::now() > deadline => {
                panic!("timed out retrying {what}: {err:?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn service(id: &str, version: u64) -> Service {
    Service {
        meta: Some(Meta {
            id: id.to_string(),
            version,
            ..Meta::default()
        }),
        ..Service::default()
    }
}

fn batch(kind: StoreActionKind, service: Service) -> StoreBatch {
    StoreBatch {
        actions: vec![StoreAction {
            kind: kind as i32,
            object: Some(StoreObject {
                object: Some(Object::Service(service)),
            }),
        }],
    }
}

fn create_service(id: &str) -> StoreBatch {
    batch(StoreActionKind::Create, service(id, 0))
}

/// The manager's side of Write and AddMember, as the lead will wire it: on this node.
struct Hooks(RaftNode);

impl RaftRpcHooks for Hooks {
    fn write(
        &self,
        batch: StoreBatch,
        _: Option<shoal_proto::transport::PeerIdentity>,
    ) -> BoxFuture<'_, Result<u64, Status>> {
        Box::pin(async move {
            self.0
                .write(batch)
                .await
                .map_err(|e| Status::failed_precondition(e.to_string()))
        })
    }

    fn add_member(
        &self,
        req: AddMemberRequest,
        _: Option<shoal_proto::transport::PeerIdentity>,
    ) -> BoxFuture<'_, Result<(), Status>> {
        Box::pin(async move {
            let member = Member {
                node_id: req.node_id,
                addr: req.addr,
            };
            self.0
                .add_voter(req.raft_id, member)
                .await
                .map_err(|e| Status::failed_precondition(e.to_string()))
        })
    }
}

fn plain_channels() -> ChannelFactory {
    Arc::new(|addr: &str| {
        Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy()
    })
}

/// A running manager of the test cluster.
struct Manager {
    node: RaftNode,
    store: Arc<Store>,
    stop: oneshot::Sender<()>,
    server: JoinHandle<()>,
}

/// Managers 1..=n on loopback ports, each with a directory under one temporary root.
struct Cluster {
    root: TempDir,
    addrs: BTreeMap<u64, String>,
    running: BTreeMap<u64, Manager>,
}

impl Cluster {
    /// Starts `n` managers (not yet members of anything).
    async fn start(n: u64) -> Cluster {
        let mut cluster = Cluster {
            root: tempfile::tempdir().unwrap(),
            addrs: BTreeMap::new(),
            running: BTreeMap::new(),
        };
        for id in 1..=n {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            cluster
                .addrs
                .insert(id, listener.local_addr().unwrap().to_string());
            cluster.run(id, listener).await;
        }
        cluster
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.root.path().join(format!("manager-{id}"))
    }

    fn member(&self, id: u64) -> Member {
        Member {
            node_id: format!("node-{id}"),
            addr: self.addrs[&id].clone(),
        }
    }

    fn node(&self, id: u64) -> &RaftNode {
        &self.running[&id].node
    }

    fn store(&self, id: u64) -> &Arc<Store> {
        &self.running[&id].store
    }

    /// Opens manager `id` from its directory with an empty store and serves its Raft.
    async fn run(&mut self, id: u64, listener: TcpListener) {
        let store = Store::new();
        let dir = self.dir(id);
        // A stopped manager's database closes once openraft's tasks have let go of it.
        let node = retry("open raft node", || {
            RaftNode::open(&dir, id, Arc::clone(&store), plain_channels())
        })
        .await;
        let (stop, stopped) = oneshot::channel::<()>();
        let service = node.server(Arc::new(Hooks(node.clone())));
        let server = tokio::spawn(async move {
            Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        let manager = Manager {
            node,
            store,
            stop,
            server,
        };
        self.running.insert(id, manager);
    }

    /// Restarts manager `id` on its old address.
    async fn restart(&mut self, id: u64) {
        let addr = self.addrs[&id].clone();
        let listener = retry("bind", || TcpListener::bind(addr.clone())).await;
        self.run(id, listener).await;
    }

    /// Stops manager `id`: its server and its Raft.
    async fn kill(&mut self, id: u64) {
        let manager = self.running.remove(&id).unwrap();
        let _ = manager.stop.send(());
        manager.node.shutdown().await.unwrap();
        tokio::time::timeout(WAIT, manager.server)
            .await
            .unwrap()
            .unwrap();
    }

    /// Waits until every running manager agrees on a running leader; returns its id.
    async fn leader(&self) -> u64 {
        let mut leader = 0;
        wait_until("a leader all running managers agree on", || {
            let views: BTreeMap<u64, Option<u64>> = self
                .running
                .iter()
                .map(|(id, m)| (*id, m.node.leader().map(|(l, _)| l)))
                .collect();
            match views.values().next() {
                Some(Some(l))
                    if views.values().all(|v| *v == Some(*l))
                        && self.running.get(l).is_some_and(|m| m.node.is_leader()) =>
                {
                    leader = *l;
                    Ok(())
                }
                _ => Err(format!("leaders seen: {views:?}")),
            }
        })
        .await;
        leader
    }

    /// Writes on the leader, retrying while leadership settles.
    async fn write(&self, batch: StoreBatch) -> u64 {
        retry("write", || async {
            let leader = self.leader().await;
            self.node(leader).write(batch.clone()).await
        })
        .await
    }

    /// Waits until every running store holds exactly the services `ids`.
    async fn converge(&self, ids: &[&str]) {
        let want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        wait_until("the stores to converge", || {
            let unmet: Vec<String> = self
                .running
                .iter()
                .filter_map(|(id, m)| {
                    let have: Vec<String> = m.store.read().services.keys().cloned().collect();
                    (have != want).then(|| format!("manager {id} has {have:?}"))
                })
                .collect();
            if unmet.is_empty() {
                Ok(())
            } else {
                Err(format!("want {want:?}; {}", unmet.join("; ")))
            }
        })
        .await;
    }

    /// Has manager `id` build a snapshot and waits until it covers `index`.
    async fn snapshot(&self, id: u64, index: u64) {
        self.node(id).raft().trigger().snapshot().await.unwrap();
        self.has_snapshot(id, index).await;
    }

    /// Waits until manager `id` reports a snapshot at or past `index`.
    async fn has_snapshot(&self, id: u64, index: u64) {
        let node = self.node(id);
        wait_until("a snapshot", || {
            let snapshot = node.metrics().borrow().snapshot;
            match snapshot {
                Some(s) if s.index >= index => Ok(()),
                other => Err(format!("manager {id} snapshot at {other:?}")),
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raft_cluster_replicates_fails_over_and_recovers() {
    let mut cluster = Cluster::start(3).await;

    // Manager 1 founds the cluster; 2 is added directly, 3 asks over AddMember.
    cluster.node(1).initialize(cluster.member(1)).await.unwrap();
    cluster.node(1).initialize(cluster.member(1)).await.unwrap();
    let founder = cluster.node(1).clone();
    wait_until("manager 1 to lead", || {
        founder
            .is_leader()
            .then_some(())
            .ok_or_else(|| "not yet".to_string())
    })
    .await;
    cluster
        .node(1)
        .add_voter(2, cluster.member(2))
        .await
        .unwrap();
    let leader_addr = cluster.member(1).addr;
    let mut client = RaftClient::new(plain_channels()(&leader_addr));
    let member3 = cluster.member(3);
    client
        .add_member(AddMemberRequest {
            node_id: member3.node_id.clone(),
            raft_id: 3,
            addr: member3.addr.clone(),
        })
        .await
        .unwrap();
    let members: Vec<u64> = cluster
        .node(1)
        .members()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(members, [1, 2, 3]);
    // Adding a member again changes nothing.
    cluster
        .node(1)
        .add_voter(2, cluster.member(2))
        .await
        .unwrap();

    // Writes on the leader, and over the Write RPC, reach every store.
    let index = cluster.write(create_service("svc-1")).await;
    client
        .write(WriteRequest {
            batch: Some(create_service("svc-2")),
        })
        .await
        .unwrap();
    cluster.converge(&["svc-1", "svc-2"]).await;
    assert_eq!(
        cluster.store(2).read().services["svc-1"]
            .meta
            .as_ref()
            .unwrap()
            .version,
        index
    );

    // Followers refuse writes and name the leader.
    match cluster.node(2).write(create_service("nope")).await {
        Err(WriteError::NotLeader { leader }) => assert_eq!(leader, Some(cluster.member(1))),
        other => panic!("write on a follower: {other:?}"),
    }

    // A stale version is refused by every store alike, and reported as such.
    let stale = batch(StoreActionKind::Update, service("svc-1", index - 1));
    match cluster.node(1).write(stale).await {
        Err(WriteError::Rejected(text)) => {
            assert!(text.contains("update out of sequence"), "{text}")
        }
        other => panic!("stale update: {other:?}"),
    }
    cluster.node(1).ensure_linearizable().await.unwrap();

    // The leader dies: another is elected and takes writes.
    cluster.kill(1).await;
    let leader = cluster.leader().await;
    assert_ne!(leader, 1);
    cluster.write(create_service("svc-3")).await;
    cluster.converge(&["svc-1", "svc-2", "svc-3"]).await;

    // It comes back from its directory and catches up from the log.
    cluster.restart(1).await;
    cluster.converge(&["svc-1", "svc-2", "svc-3"]).await;

    // A follower restarts from its own snapshot plus the log after it.
    let follower = if leader == 2 { 3 } else { 2 };
    let snapshot_index = cluster.write(create_service("svc-4")).await;
    cluster
        .converge(&["svc-1", "svc-2", "svc-3", "svc-4"])
        .await;
    cluster.snapshot(follower, snapshot_index).await;
    cluster.write(create_service("svc-5")).await;
    cluster
        .converge(&["svc-1", "svc-2", "svc-3", "svc-4", "svc-5"])
        .await;
    cluster.kill(follower).await;
    cluster.restart(follower).await;
    let restored: Vec<String> = cluster
        .store(follower)
        .read()
        .services
        .keys()
        .cloned()
        .collect();
    assert!(
        restored.len() >= 4,
        "opening restores the snapshot at once, got {restored:?}"
    );
    cluster
        .converge(&["svc-1", "svc-2", "svc-3", "svc-4", "svc-5"])
        .await;

    // A follower that missed entries the leader has purged receives a snapshot.
    cluster.kill(follower).await;
    let leader = cluster.leader().await;
    let purge_index = cluster.write(create_service("svc-6")).await;
    cluster.snapshot(leader, purge_index).await;
    cluster
        .node(leader)
        .raft()
        .trigger()
        .purge_log(purge_index)
        .await
        .unwrap();
    let node = cluster.node(leader).clone();
    wait_until("the leader's log purged", || {
        let purged = node.metrics().borrow().purged;
        match purged {
            Some(p) if p.index >= purge_index => Ok(()),
            other => Err(format!("purged up to {other:?}")),
        }
    })
    .await;
    cluster.restart(follower).await;
    cluster
        .converge(&["svc-1", "svc-2", "svc-3", "svc-4", "svc-5", "svc-6"])
        .await;
    // The store is restored before openraft reports the installed snapshot.
    cluster.has_snapshot(follower, purge_index).await;
}
