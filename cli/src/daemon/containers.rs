//! The `Containers` service: the node's containers, one handler per RPC. Handlers resolve
//! the container (name, id or prefix) first, so every runtime call gets a full id, and run
//! the runtime on the blocking pool. Attach is in [`super::attach`], exec in
//! [`super::exec`], log streaming in [`super::follow`], auto-removal in [`super::reaper`].

use std::future::Future;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use shoal_proto::node::v1 as pb;
use shoal_proto::node::v1::containers_server::Containers;
use shoal_runtime::spec::NetworkMode;
use shoal_runtime::{Container, ContainerError, Status as RunStatus};
use shoal_worker::bridge::{Endpoint, LocalNetwork};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::convert::{
    exit_to_wire, ports_from_wire, ports_to_wire, spec_from_wire, stats_to_wire, summary_to_wire,
};
use super::error::{ApiError, Result};
use super::follow::{follow, send_records};
use super::reaper::wait_for_exit;
use super::signal::parse_signal;
use super::{blocking, Daemon};

/// Docker's default grace period of `stop`.
const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What `stop -t -1` (wait for ever) becomes: long enough to be for ever, small enough that a
/// deadline computed from it does not overflow.
const STOP_FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Messages buffered per streaming response before the producer waits for the client.
pub(super) const STREAM_BUFFER: usize = 64;

/// The `Containers` service.
#[derive(Debug)]
pub struct ContainersApi {
    daemon: Arc<Daemon>,
}

impl ContainersApi {
    /// The service over the daemon's shared state.
    pub fn new(daemon: Arc<Daemon>) -> ContainersApi {
        ContainersApi { daemon }
    }

    /// Finds a container by name, id or id prefix, with its current state.
    async fn lookup(&self, needle: &str) -> Result<Container> {
        let runtime = self.daemon.runtime.clone();
        let needle = needle.to_string();
        blocking(move || Ok(runtime.lookup(&needle)?)).await
    }

    /// Runs `fut` unless the daemon stops first.
    async fn unless_stopping<T>(&self, fut: impl Future<Output = Result<T>>) -> Result<T> {
        let mut stopping = self.daemon.stopping.clone();
        tokio::select! {
            out = fut => out,
            _ = stopping.wait_for(|stop| *stop) => Err(ApiError::ShuttingDown),
        }
    }

    /// How the container ended, waiting for it to end first. Also answers for an
    /// auto-removed container whose removal raced the caller.
    async fn wait_container(&self, needle: &str) -> Result<pb::WaitContainerResponse> {
        let c = match self.lookup(needle).await {
            Ok(c) => c,
            Err(ApiError::Container(ContainerError::NotFound(_))) => {
                return self.recorded_exit(needle).await;
            }
            Err(err) => return Err(err),
        };
        self.unless_stopping(wait_for_exit(&self.daemon.runtime, &c.id))
            .await?;
        let runtime = self.daemon.runtime.clone();
        let id = c.id.clone();
        match blocking(move || Ok(runtime.wait(&id)?)).await {
            Ok(state) => Ok(exit_to_wire(&state)),
            Err(ApiError::Container(ContainerError::NotFound(_))) => {
                self.recorded_exit(&c.id).await
            }
            Err(err) => Err(err),
        }
    }

    async fn recorded_exit(&self, needle: &str) -> Result<pb::WaitContainerResponse> {
        match self.daemon.reaper.recorded_exit(needle).await {
            Some(state) => Ok(exit_to_wire(&state)),
            None => Err(ContainerError::NotFound(needle.to_string()).into()),
        }
    }
}

type StreamOf<T> = ReceiverStream<std::result::Result<T, Status>>;

/// Starts `c` (`attached`: held back until the returned attach socket is connected, see
/// `Runtime::start_attached`; `None` when it was already running) and, for an auto-remove
/// container, has it removed when it exits. An auto-remove container that fails to start is
/// removed at once, as Docker does.
pub(super) async fn start_container(
    daemon: &Daemon,
    c: &Container,
    attached: bool,
) -> Result<(Container, Option<UnixStream>)> {
    let runtime = daemon.runtime.clone();
    let id = c.id.clone();
    let started = blocking(move || {
        if !attached {
            return Ok((runtime.start(&id)?, None));
        }
        let current = runtime.lookup(&id)?;
        if current.state.status == RunStatus::Running {
            return Ok((current, None));
        }
        let (c, socket) = runtime.start_attached(&id)?;
        Ok((c, Some(socket)))
    })
    .await;
    match started {
        Ok((started, socket)) => {
            if started.spec.auto_remove {
                daemon.reaper.watch(&started);
            }
            Ok((started, socket))
        }
        Err(err) => {
            if c.spec.auto_remove {
                let runtime = daemon.runtime.clone();
                let id = c.id.clone();
                match blocking(move || Ok(runtime.remove(&id, true)?)).await {
                    Ok(()) => daemon.networks.detach_container(&c.id).await,
                    Err(rm) => {
                        tracing::warn!(container.id = %c.id, error = %rm, "cannot remove auto-remove container after a failed start")
                    }
                }
            }
            Err(err)
        }
    }
}

#[tonic::async_trait]
impl Containers for ContainersApi {
    async fn create(
        &self,
        request: Request<pb::CreateContainerRequest>,
    ) -> Result<Response<pb::CreateContainerResponse>, Status> {
        let wire = request
            .into_inner()
            .spec
            .ok_or_else(|| ApiError::InvalidArgument("create: missing spec".into()))?;
        let bridged = wire.network == pb::NetworkMode::Bridge as i32;
        let ports = ports_from_wire(&wire.ports)?;
        if !bridged && !ports.is_empty() {
            return Err(ApiError::InvalidArgument(
                "conflicting options: port publishing and the container type network mode".into(),
            )
            .into());
        }
        let (network, hostname) = (wire.network_name.clone(), wire.hostname.clone());
        let mut spec = spec_from_wire(wire)?;
        let networks = &self.daemon.networks;
        let attached = if bridged {
            let attached = networks
                .attach(&network, hostname.as_deref(), &ports)
                .await?;
            spec.network = NetworkMode::Path(attached.netns());
            spec.names = Some(attached.names());
            Some(attached)
        } else {
            None
        };
        let runtime = self.daemon.runtime.clone();
        let created = blocking(move || Ok(runtime.create(spec)?)).await;
        let c = match (created, attached) {
            (Ok(c), Some(attached)) => {
                networks.bind(&attached, &c.id, &c.name).await;
                c
            }
            (Ok(c), None) => c,
            (Err(err), attached) => {
                if let Some(attached) = attached {
                    networks.abandon(attached).await;
                }
                return Err(err.into());
            }
        };
        tracing::info!(container.id = %c.id, container.name = %c.name, image = %c.image, "created");
        Ok(Response::new(pb::CreateContainerResponse {
            id: c.id,
            name: c.name,
        }))
    }

    async fn start(
        &self,
        request: Request<pb::StartContainerRequest>,
    ) -> Result<Response<pb::StartContainerResponse>, Status> {
        let c = self.lookup(&request.into_inner().id).await?;
        start_container(&self.daemon, &c, false).await?;
        Ok(Response::new(pb::StartContainerResponse {}))
    }

    type AttachStream = StreamOf<pb::AttachContainerResponse>;

    async fn attach(
        &self,
        request: Request<Streaming<pb::AttachContainerRequest>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let stream = super::attach::attach(Arc::clone(&self.daemon), request.into_inner()).await?;
        Ok(Response::new(stream))
    }

    async fn stop(
        &self,
        request: Request<pb::StopContainerRequest>,
    ) -> Result<Response<pb::StopContainerResponse>, Status> {
        let request = request.into_inner();
        let grace = match request.timeout_seconds {
            None => DEFAULT_STOP_TIMEOUT,
            Some(secs) => u64::try_from(secs).map_or(STOP_FOREVER, Duration::from_secs),
        };
        let c = self.lookup(&request.id).await?;
        let runtime = self.daemon.runtime.clone();
        blocking(move || Ok(runtime.stop(&c.id, grace)?)).await?;
        Ok(Response::new(pb::StopContainerResponse {}))
    }

    async fn kill(
        &self,
        request: Request<pb::KillContainerRequest>,
    ) -> Result<Response<pb::KillContainerResponse>, Status> {
        let request = request.into_inner();
        let signal = parse_signal(&request.signal)?;
        let c = self.lookup(&request.id).await?;
        let runtime = self.daemon.runtime.clone();
        blocking(move || Ok(runtime.kill(&c.id, signal)?)).await?;
        Ok(Response::new(pb::KillContainerResponse {}))
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveContainerRequest>,
    ) -> Result<Response<pb::RemoveContainerResponse>, Status> {
        let request = request.into_inner();
        let c = self.lookup(&request.id).await?;
        let runtime = self.daemon.runtime.clone();
        let id = c.id.clone();
        blocking(move || Ok(runtime.remove(&id, request.force)?)).await?;
        self.daemon.networks.detach_container(&c.id).await;
        tracing::info!(container.id = %c.id, "removed");
        Ok(Response::new(pb::RemoveContainerResponse {}))
    }

    async fn list(
        &self,
        request: Request<pb::ListContainersRequest>,
    ) -> Result<Response<pb::ListContainersResponse>, Status> {
        let all = request.into_inner().all;
        let runtime = self.daemon.runtime.clone();
        let containers = blocking(move || Ok(runtime.list(all)?)).await?;
        let mut ports = self.daemon.bridges.ports().await;
        Ok(Response::new(pb::ListContainersResponse {
            containers: containers
                .iter()
                .map(|c| {
                    let mut summary = summary_to_wire(c);
                    if let Some(published) = ports.remove(&c.id) {
                        summary.ports = ports_to_wire(&published);
                    }
                    summary
                })
                .collect(),
        }))
    }

    async fn inspect(
        &self,
        request: Request<pb::InspectContainerRequest>,
    ) -> Result<Response<pb::InspectContainerResponse>, Status> {
        let c = self.lookup(&request.into_inner().id).await?;
        let endpoint = self.daemon.bridges.endpoint_of(&c.id).await;
        let runtime = self.daemon.runtime.clone();
        let mut doc = blocking(move || Ok(runtime.inspect(&c))).await?;
        if let Some((endpoint, network)) = endpoint {
            network_settings(&mut doc, &endpoint, &network);
        }
        let json = doc.to_string();
        Ok(Response::new(pb::InspectContainerResponse { json }))
    }

    async fn wait(
        &self,
        request: Request<pb::WaitContainerRequest>,
    ) -> Result<Response<pb::WaitContainerResponse>, Status> {
        let exit = self.wait_container(&request.into_inner().id).await?;
        Ok(Response::new(exit))
    }

    type LogsStream = StreamOf<pb::LogChunk>;

    async fn logs(
        &self,
        request: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let request = request.into_inner();
        let c = self.lookup(&request.id).await?;
        // A follower must see the last output of an auto-remove container.
        let hold = request.follow.then(|| self.daemon.reaper.hold(&c.id));
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let runtime = self.daemon.runtime.clone();
        let stopping = self.daemon.stopping.clone();
        let tail = request
            .tail
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        tokio::spawn(async move {
            let id = c.id;
            let streamed = async {
                let (mut reader, records, exit) = {
                    let (runtime, id) = (runtime.clone(), id.clone());
                    blocking(move || {
                        let mut reader = runtime.logs(&id)?;
                        let records =
                            reader.read_all(tail).map_err(|source| ApiError::ReadLog {
                                id: id.clone(),
                                source,
                            })?;
                        let exit = runtime.exit_fd(&id)?;
                        Ok((reader, records, exit))
                    })
                    .await?
                };
                if !send_records(records, &tx, &|chunk| chunk).await || !request.follow {
                    return Ok(());
                }
                follow(&id, &mut reader, exit, &tx, |chunk| chunk, &stopping).await?;
                Ok::<(), ApiError>(())
            }
            .await;
            if let Err(err) = streamed {
                let _ = tx.send(Err(err.into())).await;
            }
            drop(hold);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type ExecStream = StreamOf<pb::ExecResponse>;

    async fn exec(
        &self,
        request: Request<Streaming<pb::ExecRequest>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let stream = super::exec::exec(Arc::clone(&self.daemon), request.into_inner()).await?;
        Ok(Response::new(stream))
    }

    async fn stats(
        &self,
        request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let c = self.lookup(&request.into_inner().id).await?;
        let runtime = self.daemon.runtime.clone();
        let sample = blocking(move || {
            let stats = runtime.stats(&c.id)?;
            Ok(stats_to_wire(&c, &stats, SystemTime::now()))
        })
        .await?;
        Ok(Response::new(sample))
    }
}

/// Docker's `NetworkSettings` (and `HostConfig.NetworkMode`) of a container on a local
/// network.
fn network_settings(doc: &mut serde_json::Value, endpoint: &Endpoint, network: &LocalNetwork) {
    let ip = endpoint.addr.addr().to_string();
    let prefix = endpoint.addr.prefix_len();
    let gateway = network.gateway.to_string();
    let mac = endpoint.mac();
    let mut ports = serde_json::Map::new();
    for p in &endpoint.ports {
        let key = format!("{}/{}", p.container_port, if p.udp { "udp" } else { "tcp" });
        ports.insert(
            key,
            serde_json::json!([{"HostIp": "0.0.0.0", "HostPort": p.host_port.to_string()}]),
        );
    }
    doc["HostConfig"]["NetworkMode"] = serde_json::json!(network.name);
    doc["NetworkSettings"] = serde_json::json!({
        "IPAddress": ip,
        "IPPrefixLen": prefix,
        "Gateway": gateway,
        "MacAddress": mac,
        "Ports": ports,
        "Networks": {
            network.name.clone(): {
                "NetworkID": network.id,
                "EndpointID": endpoint.id,
                "IPAddress": ip,
                "IPPrefixLen": prefix,
                "Gateway": gateway,
                "MacAddress": mac,
            }
        }
    });
}
