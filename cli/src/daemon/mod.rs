//! `shoald`, the node daemon: serves the node API (`shoal.node.v1`: System, Images,
//! Containers) over a Unix socket on top of the embedded runtime.
//!
//! [`run`] takes the listener and the shutdown signal as arguments, so the binary owns the
//! socket file and the signals while tests can serve on a temp socket. The runtime is
//! synchronous and blocking; every call into it runs on tokio's blocking pool. The daemon
//! keeps no container state of its own beyond what is in flight (see [`reaper`]): everything
//! is on disk, so it can be killed at any time and find its containers again.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use shoal_manager::controlapi::ControlService;
use shoal_proto::cluster::v1::control_server::ControlServer;
use shoal_proto::cluster::v1::swarm_server::SwarmServer;
use shoal_proto::node::v1::containers_server::ContainersServer;
use shoal_proto::node::v1::images_server::ImagesServer;
use shoal_proto::node::v1::networks_server::NetworksServer;
use shoal_proto::node::v1::system_server::SystemServer;
use shoal_runtime::{Runtime, RuntimeConfig};
use shoal_worker::bridge::{BridgeError, Bridges};
use shoal_worker::table::{self, NodeTable};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;

pub mod attach;
pub mod containers;
pub mod convert;
pub mod error;
pub mod exec;
pub mod follow;
pub mod images;
pub mod lock;
pub mod netattach;
pub mod networks;
pub mod reaper;
pub mod signal;
pub mod swarm;
pub mod system;

use self::error::{ApiError, Result};
use self::lock::{DataRootLock, LockError};
use self::reaper::Reaper;

/// How a daemon is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// The runtime's settings: data root, shim binary, cgroup parent, log size.
    pub runtime: RuntimeConfig,
}

impl Config {
    /// Defaults for a daemon on `data_root`, with `shoal-shim` next to the executable.
    pub fn new(data_root: impl Into<PathBuf>) -> Config {
        Config {
            runtime: RuntimeConfig::new(data_root),
        }
    }
}

/// Why the daemon could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Another daemon owns the data root, or its lock could not be taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The runtime could not be opened on the data root.
    #[error("open the runtime at {root}")]
    OpenRuntime {
        /// The data root.
        root: PathBuf,
        /// The cause.
        #[source]
        source: ApiError,
    },
    /// The running auto-remove containers could not be listed.
    #[error("adopt running auto-remove containers")]
    Adopt(#[source] ApiError),
    /// The local networks could not be opened.
    #[error("open the local networks")]
    Bridges(#[source] BridgeError),
    /// The swarm membership on disk could not be resumed.
    #[error("resume the swarm membership: {}", .0.message())]
    Swarm(tonic::Status),
    /// The gRPC server failed.
    #[error("serve the node API")]
    Serve(#[source] tonic::transport::Error),
}

/// What every service shares.
#[derive(Debug)]
pub struct Daemon {
    /// The node's runtime (cheap to clone into blocking tasks).
    pub runtime: Runtime,
    /// Auto-removal and exit records.
    pub reaper: Arc<Reaper>,
    /// Becomes `true` when the daemon stops: long streams (follow, exec) end then, so that the
    /// server's graceful shutdown does not wait for containers to exit.
    pub stopping: watch::Receiver<bool>,
    /// The node's swarm membership.
    pub swarm: Arc<swarm::SwarmNode>,
    /// The node-local bridge networks of standalone containers.
    pub bridges: Arc<Bridges>,
    /// Standalone containers' networks, local or attachable overlays.
    pub networks: Arc<netattach::ContainerNetworks>,
}

/// Serves the node API on `listener` until `shutdown` completes. Takes the data-root lock
/// first, so a second daemon on the same data root fails here with a clear error.
pub async fn run(
    config: Config,
    listener: UnixListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let root = config.runtime.root.clone();
    let _lock = DataRootLock::acquire(&root)?;
    let runtime = {
        let cfg = config.runtime.clone();
        blocking(move || Ok(Runtime::open(cfg)?))
            .await
            .map_err(|source| DaemonError::OpenRuntime {
                root: root.clone(),
                source,
            })?
    };
    let table = NodeTable::new(&[table::CLUSTER, table::LOCAL]);
    let bridges = Bridges::open(&root, Arc::clone(&table))
        .await
        .map_err(DaemonError::Bridges)?;
    let networks = netattach::ContainerNetworks::new(&root, Arc::clone(&bridges));
    let reaper = Reaper::new(runtime.clone(), Arc::clone(&networks));
    reaper.adopt().await.map_err(DaemonError::Adopt)?;
    {
        // Endpoints of containers removed while no daemon ran.
        let runtime = runtime.clone();
        let ids: std::collections::HashSet<String> = blocking(move || Ok(runtime.list(true)?))
            .await
            .map_err(DaemonError::Adopt)?
            .into_iter()
            .map(|c| c.id)
            .collect();
        bridges.retain_containers(&ids).await;
    }
    let swarm = swarm::SwarmNode::open(&root, runtime.clone(), table)
        .await
        .map_err(DaemonError::Swarm)?;
    networks.set_swarm(Arc::clone(&swarm));
    let (stop_tx, stopping) = watch::channel(false);
    let daemon = Arc::new(Daemon {
        runtime,
        reaper: Arc::clone(&reaper),
        stopping,
        swarm: Arc::clone(&swarm),
        bridges,
        networks,
    });
    tracing::info!(data_root = %root.display(), "shoald serving");
    let shutdown = async move {
        shutdown.await;
        tracing::info!("shoald stopping");
        stop_tx.send_replace(true);
    };
    let served = Server::builder()
        .add_service(SystemServer::new(system::SystemApi::new(Arc::clone(
            &daemon,
        ))))
        .add_service(ImagesServer::new(images::ImagesApi::new(Arc::clone(
            &daemon,
        ))))
        .add_service(ContainersServer::new(containers::ContainersApi::new(
            Arc::clone(&daemon),
        )))
        .add_service(NetworksServer::new(networks::NetworksApi::new(Arc::clone(
            &daemon,
        ))))
        .add_service(SwarmServer::new(swarm::SwarmApi(Arc::clone(&swarm))))
        .add_service(ControlServer::new(ControlService::new(Arc::new(
            swarm::LocalRouter(Arc::clone(&swarm)),
        ))))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    reaper.shutdown();
    swarm.shutdown().await;
    served.map_err(DaemonError::Serve)
}

/// Runs a blocking runtime call on tokio's blocking pool.
pub async fn blocking<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await?
}
