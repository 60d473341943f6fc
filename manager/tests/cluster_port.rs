//! A real manager (Raft on a temp dir, mutual TLS on a loopback port) and callers holding
//! different certificates: each RPC answers only the roles it is for, tokens are checked, and
//! a node removed from the store can no longer talk to the cluster.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use shoal_manager::ca::RootCa;
use shoal_manager::dispatcher::{ImageChunks, ImageExporter};
use shoal_manager::manager::{Manager, ManagerConfig};
use shoal_proto::cluster::v1::ca_client::CaClient;
use shoal_proto::cluster::v1::control_client::ControlClient;
use shoal_proto::cluster::v1::dispatcher_client::DispatcherClient;
use shoal_proto::cluster::v1::raft_client::RaftClient;
use shoal_proto::cluster::v1::*;
use shoal_proto::transport::{self, Identity, Role, ServerConfigCell};
use tonic::Code;

struct NoImages;

impl ImageExporter for NoImages {
    fn export(&self, _: &str) -> Result<Option<ImageChunks>, tonic::Status> {
        Ok(None)
    }
    fn replicate(
        &self,
        reference: String,
        _: String,
    ) -> futures::future::BoxFuture<'static, Result<(), tonic::Status>> {
        Box::pin(async move { Err(tonic::Status::not_found(reference)) })
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    /// The first manager's own identity.
    identity: Identity,
    addr: String,
    ca: RootCa,
    cluster_id: String,
    manager: Arc<Manager>,
}

async fn manager() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let ca = RootCa::generate().unwrap();
    let cluster_id = transport::random_id();
    let node_id = transport::random_id();
    let identity = ca
        .issue_identity(&node_id, Role::Manager, &cluster_id)
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let manager = Manager::start(
        ManagerConfig {
            dir: dir.path().join("raft"),
            node_id,
            raft_id: 1,
            advertise_addr: addr.clone(),
            identity: identity.clone(),
            heartbeat: Duration::from_secs(1),
        },
        Arc::new(NoImages),
    )
    .await
    .unwrap();
    let tls = transport::server_config(&identity).unwrap();
    tokio::spawn(Arc::clone(&manager).serve(
        listener,
        ServerConfigCell::new(tls),
        std::future::pending(),
    ));
    manager
        .bootstrap(&ca, NodeDescription::default())
        .await
        .unwrap();
    Fixture {
        _dir: dir,
        identity,
        addr,
        ca,
        cluster_id,
        manager,
    }
}

impl Fixture {
    fn channel(&self, id: &Identity) -> tonic::transport::Channel {
        transport::channel(&self.addr, transport::client_config(id).unwrap()).unwrap()
    }

    fn anonymous(&self) -> tonic::transport::Channel {
        let tls = transport::anonymous_client_config(&self.ca.cert_pem).unwrap();
        transport::channel(&self.addr, tls).unwrap()
    }

    fn token(&self, manager: bool) -> String {
        let cluster = self.manager.store().read().cluster.clone().unwrap();
        let secret = if manager {
            cluster.manager_secret
        } else {
            cluster.worker_secret
        };
        self.ca.token(&secret)
    }

    /// Joins as a node with `token`; the node's identity.
    async fn join(&self, token: String) -> Result<Identity, tonic::Status> {
        let (key_pem, csr_pem) = transport::generate_csr("").unwrap();
        let issued = CaClient::new(self.anonymous())
            .issue_node_certificate(IssueNodeCertificateRequest {
                token,
                csr_pem,
                description: Some(NodeDescription {
                    hostname: "joiner".into(),
                    ..Default::default()
                }),
                advertise_addr: String::new(),
            })
            .await?
            .into_inner();
        Ok(Identity {
            cert_pem: issued.cert_pem,
            key_pem,
            ca_pem: self.ca.cert_pem.clone(),
        })
    }
}

#[tokio::test]
async fn tokens_are_checked_and_roles_authorize_rpcs() {
    let f = manager().await;

    // Wrong secret, and a token of another CA, are refused.
    let forged = f.ca.token("0123456789abcdefghijklmno");
    let err = f.join(forged).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("invalid join token"), "{err:?}");
    let other = RootCa::generate().unwrap();
    let secret = f
        .manager
        .store()
        .read()
        .cluster
        .clone()
        .unwrap()
        .worker_secret;
    let err = f.join(other.token(&secret)).await.unwrap_err();
    assert!(err.message().contains("another swarm"), "{err:?}");
    let err = f.join("SWMTKN-1-nonsense".into()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // A worker joins; it may use the dispatcher but not the control API.
    let worker = f.join(f.token(false)).await.unwrap();
    assert_eq!(worker.peer().unwrap().role, Role::Worker);
    assert_eq!(worker.peer().unwrap().cluster_id, f.cluster_id);
    DispatcherClient::new(f.channel(&worker))
        .heartbeat(HeartbeatRequest {})
        .await
        .unwrap();
    let err = ControlClient::new(f.channel(&worker))
        .list_nodes(ListNodesRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // Without a certificate, only the CA answers.
    let err = ControlClient::new(f.anonymous())
        .list_nodes(ListNodesRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // A manager token gives a manager certificate; the control API answers it only once the
    // node is a manager in the store (in the Raft membership), not on the certificate alone.
    let manager = f.join(f.token(true)).await.unwrap();
    assert_eq!(manager.peer().unwrap().role, Role::Manager);
    let err = ControlClient::new(f.channel(&manager))
        .list_nodes(ListNodesRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // Raft's Write and AddMember check the store too: a manager certificate alone may not
    // write, nor add any node but itself.
    let mut raft = RaftClient::new(f.channel(&manager));
    let err = raft
        .write(WriteRequest {
            batch: Some(StoreBatch::default()),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = raft
        .add_member(AddMemberRequest {
            node_id: worker.peer().unwrap().node_id,
            raft_id: 77,
            addr: "127.0.0.1:9".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = RaftClient::new(f.channel(&worker))
        .vote(RaftMessage::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let manager = f.identity.clone();
    let nodes = ControlClient::new(f.channel(&manager))
        .list_nodes(ListNodesRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes;
    assert_eq!(nodes.len(), 3);

    // A removed worker is refused from then on.
    let worker_id = worker.peer().unwrap().node_id;
    let mut control = ControlClient::new(f.channel(&manager));
    let err = control
        .remove_node(RemoveNodeRequest {
            id: worker_id.clone(),
            force: false,
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("is not down"), "{err:?}");
    control
        .remove_node(RemoveNodeRequest {
            id: worker_id,
            force: true,
        })
        .await
        .unwrap();
    let err = DispatcherClient::new(f.channel(&worker))
        .heartbeat(HeartbeatRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // A rotated worker token no longer admits anyone.
    let old = f.token(false);
    control
        .rotate_join_token(RotateJoinTokenRequest {
            worker: true,
            manager: false,
        })
        .await
        .unwrap();
    let err = f.join(old).await.unwrap_err();
    assert!(err.message().contains("not current"), "{err:?}");

    // A certificate of another cluster does not get through the handshake.
    let stranger = other
        .issue_identity(&transport::random_id(), Role::Manager, &f.cluster_id)
        .unwrap();
    let stranger = Identity {
        ca_pem: f.ca.cert_pem.clone(),
        ..stranger
    };
    assert!(ControlClient::new(f.channel(&stranger))
        .list_nodes(ListNodesRequest {})
        .await
        .is_err());
    f.manager.shutdown().await;
}

#[tokio::test]
async fn standalone_containers_attach_over_the_dispatcher() {
    let f = manager().await;
    let worker = f.join(f.token(false)).await.unwrap();
    let worker_id = worker.peer().unwrap().node_id;
    let mut control = ControlClient::new(f.channel(&f.identity));
    for (name, attachable) in [("shared", true), ("private", false)] {
        control
            .create_network(CreateNetworkRequest {
                spec: Some(NetworkSpec {
                    name: name.into(),
                    driver: "overlay".into(),
                    attachable,
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
    }
    let mut dispatcher = DispatcherClient::new(f.channel(&worker));
    let attach = |network: &str| AttachNetworkRequest {
        network: network.into(),
        container_id: "c1".into(),
    };

    let err = dispatcher
        .attach_network(attach("private"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(err.message(), "network private not manually attachable");

    // The node is the certificate's: the task is the worker's, addressed and assigned.
    let task = dispatcher
        .attach_network(attach("shared"))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(task.node_id, worker_id);
    assert_eq!(task.status.as_ref().unwrap().state(), TaskState::Assigned);
    assert_eq!(task.networks.len(), 1);
    assert_eq!(task.networks[0].addresses.len(), 1);
    let task_id = task.meta.unwrap().id;

    // Another node may not detach it; its own may, as often as it likes.
    let err = DispatcherClient::new(f.channel(&f.identity))
        .detach_network(DetachNetworkRequest {
            task_id: task_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    for _ in 0..2 {
        dispatcher
            .detach_network(DetachNetworkRequest {
                task_id: task_id.clone(),
            })
            .await
            .unwrap();
    }
    let desired = f
        .manager
        .store()
        .read()
        .tasks
        .get(&task_id)
        .map(|t| t.desired_state());
    // Marked for removal; the reaper may already have deleted it (it never ran).
    assert!(
        matches!(desired, None | Some(TaskState::Remove)),
        "{desired:?}"
    );
    f.manager.shutdown().await;
}
