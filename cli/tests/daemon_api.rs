//! The node API served in-process by `daemon::run` on a temp Unix socket and spoken to with
//! the real client: wiring, error codes and messages, the data-root lock and shutdown. No
//! container is started here (that needs the shim and root; see `shoal-tests`).

use std::path::Path;
use std::time::Duration;

use shoal_cli::client::{Client, Host};
use shoal_cli::daemon::{self, lock::LockError, Config, DaemonError};
use shoal_proto::node::v1 as pb;
use tokio::net::UnixListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Code;

/// A daemon serving on `<dir>/<name>.sock` with data root `<dir>/root`.
struct TestDaemon {
    host: Host,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), DaemonError>>,
}

impl TestDaemon {
    fn start(dir: &Path, name: &str) -> TestDaemon {
        let socket = dir.join(format!("{name}.sock"));
        let listener = UnixListener::bind(&socket).expect("bind test socket");
        let (stop, stopped) = oneshot::channel::<()>();
        let config = Config::new(dir.join("root"));
        let task = tokio::spawn(daemon::run(config, listener, async {
            let _ = stopped.await;
        }));
        TestDaemon {
            host: format!("unix://{}", socket.display())
                .parse()
                .expect("valid host"),
            stop: Some(stop),
            task,
        }
    }

    async fn client(&self) -> Client {
        Client::connect(&self.host).await.expect("connect")
    }

    async fn stop(mut self) -> Result<(), DaemonError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("daemon stops in time")
            .expect("daemon task")
    }
}

#[tokio::test]
async fn serves_the_node_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = TestDaemon::start(dir.path(), "a");
    let mut client = daemon.client().await;

    client.system.ping(pb::PingRequest {}).await.expect("ping");
    let version = client
        .system
        .version(pb::VersionRequest {})
        .await
        .expect("version")
        .into_inner();
    assert_eq!(version.api_version, "v1");
    assert_eq!(Path::new(&version.data_root), dir.path().join("root"));

    let images = client
        .images
        .list(pb::ListImagesRequest {})
        .await
        .expect("list images")
        .into_inner();
    assert!(images.images.is_empty());
    let containers = client
        .containers
        .list(pb::ListContainersRequest { all: true })
        .await
        .expect("list containers")
        .into_inner();
    assert!(containers.containers.is_empty());

    daemon.stop().await.expect("clean stop");
}

#[tokio::test]
async fn refusals_carry_codes_and_docker_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = TestDaemon::start(dir.path(), "a");
    let mut client = daemon.client().await;

    let err = client
        .containers
        .inspect(pb::InspectContainerRequest {
            id: "nosuch".into(),
        })
        .await
        .expect_err("no such container");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "No such container: nosuch");

    let err = client
        .containers
        .kill(pb::KillContainerRequest {
            id: "nosuch".into(),
            signal: "FOO".into(),
        })
        .await
        .expect_err("bad signal");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "Invalid signal: FOO");

    let err = client
        .images
        .inspect(pb::InspectImageRequest {
            reference: "nosuch".into(),
        })
        .await
        .expect_err("no such image");
    assert_eq!(err.code(), Code::NotFound);

    let err = client
        .containers
        .wait(pb::WaitContainerRequest {
            id: "nosuch".into(),
        })
        .await
        .expect_err("no such container to wait for");
    assert_eq!(err.code(), Code::NotFound);

    let err = client
        .containers
        .create(pb::CreateContainerRequest { spec: None })
        .await
        .expect_err("missing spec");
    assert_eq!(err.code(), Code::InvalidArgument);

    // An exec stream must start with its ExecStart.
    let stdin_first = pb::ExecRequest {
        msg: Some(pb::exec_request::Msg::Stdin(b"x".to_vec())),
    };
    let err = client
        .containers
        .exec(tokio_stream::iter([stdin_first]))
        .await
        .expect_err("exec without start");
    assert_eq!(err.code(), Code::InvalidArgument);

    // So must an attach stream start with its options.
    let input_first = pb::AttachContainerRequest {
        msg: Some(pb::attach_container_request::Msg::StdinClose(true)),
    };
    let err = client
        .containers
        .attach(tokio_stream::iter([input_first]))
        .await
        .expect_err("attach without options");
    assert_eq!(err.code(), Code::InvalidArgument);

    // An import stream must start with its options; a bare chunk is refused.
    let chunk_first = pb::ImportRequest {
        msg: Some(pb::import_request::Msg::Chunk(b"x".to_vec())),
    };
    let err = client
        .images
        .import(tokio_stream::iter([chunk_first]))
        .await
        .expect_err("import without options");
    assert_eq!(err.code(), Code::InvalidArgument);

    daemon.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_data_root_serves_one_daemon() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = TestDaemon::start(dir.path(), "a");
    first.client().await;
    let second = TestDaemon::start(dir.path(), "b");
    match second.stop().await {
        Err(DaemonError::Lock(LockError::InUse { .. })) => {}
        other => panic!("second daemon on the same data root: {other:?}"),
    }
    first.stop().await.expect("clean stop");

    // Once the first is gone, the data root is free again.
    std::fs::remove_file(dir.path().join("b.sock")).expect("remove socket");
    let again = TestDaemon::start(dir.path(), "b");
    again.client().await;
    again.stop().await.expect("clean stop");
}
