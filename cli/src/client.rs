//! The client's connection to a `shoald`: which daemon (`-H unix:///PATH` or `SHOAL_HOST`, as
//! `docker -H` / `DOCKER_HOST`), and one gRPC channel over its Unix socket shared by the
//! service clients.

use std::error::Error as _;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use hyper_util::rt::TokioIo;
use shoal_proto::cluster::v1::control_client::ControlClient;
use shoal_proto::cluster::v1::swarm_client::SwarmClient;
use shoal_proto::node::v1::containers_client::ContainersClient;
use shoal_proto::node::v1::images_client::ImagesClient;
use shoal_proto::node::v1::networks_client::NetworksClient;
use shoal_proto::node::v1::system_client::SystemClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// The daemon's socket when neither `-H` nor `SHOAL_HOST` says otherwise.
pub const DEFAULT_HOST: &str = "unix:///run/shoal/shoal.sock";

/// Environment variable naming the daemon, like `DOCKER_HOST`.
pub const HOST_ENV: &str = "SHOAL_HOST";

/// Errors of reaching the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `-H` is not a `unix://` address.
    #[error("invalid host {0:?}: only unix:///PATH is supported")]
    InvalidHost(String),
    /// Nothing answers on the socket.
    #[error("Cannot connect to the shoal daemon at {host}. Is the shoal daemon running?")]
    NotRunning {
        /// The daemon address.
        host: Host,
    },
    /// The socket exists but may not be opened by this user.
    #[error("permission denied while trying to connect to the shoal daemon socket at {host}")]
    PermissionDenied {
        /// The daemon address.
        host: Host,
    },
    /// Connecting failed for another reason.
    #[error("Cannot connect to the shoal daemon at {host}: {reason}")]
    Connect {
        /// The daemon address.
        host: Host,
        /// The innermost cause.
        reason: String,
    },
}

/// A daemon address: `unix:///PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    path: PathBuf,
}

impl Host {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl FromStr for Host {
    type Err = ClientError;

    fn from_str(s: &str) -> Result<Host, ClientError> {
        match s.strip_prefix("unix://") {
            Some(path) if path.starts_with('/') => Ok(Host {
                path: PathBuf::from(path),
            }),
            _ => Err(ClientError::InvalidHost(s.to_string())),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unix://{}", self.path.display())
    }
}

/// Clients of the daemon's services, sharing one connection.
#[derive(Debug, Clone)]
pub struct Client {
    /// `System`.
    pub system: SystemClient<Channel>,
    /// `Images`.
    pub images: ImagesClient<Channel>,
    /// `Containers`.
    pub containers: ContainersClient<Channel>,
    /// The connection, for the cluster services' clients.
    channel: Channel,
}

impl Client {
    /// Connects to the daemon at `host` (eagerly, so that a daemon that is not there is
    /// reported as such rather than as the first request's failure).
    pub async fn connect(host: &Host) -> Result<Client, ClientError> {
        let path = host.path.clone();
        let connector = tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        });
        // The URI is required by the HTTP/2 layer but unused: the connector ignores it.
        let channel = Endpoint::from_static("http://shoald")
            .connect_with_connector(connector)
            .await
            .map_err(|err| connect_error(host, &err))?;
        Ok(Client {
            system: SystemClient::new(channel.clone()),
            images: ImagesClient::new(channel.clone()),
            containers: ContainersClient::new(channel.clone()),
            channel,
        })
    }

    /// `Swarm`: the node's own membership (init, join, leave, info).
    pub fn swarm(&self) -> SwarmClient<Channel> {
        SwarmClient::new(self.channel.clone())
    }

    /// `Control`: the cluster's control API (a manager's; a worker refuses it).
    pub fn control(&self) -> ControlClient<Channel> {
        ControlClient::new(self.channel.clone())
    }

    /// `Networks`: the node's own (bridge) networks, served on every node, in a swarm or not.
    pub fn networks(&self) -> NetworksClient<Channel> {
        NetworksClient::new(self.channel.clone())
    }
}

fn connect_error(host: &Host, err: &tonic::transport::Error) -> ClientError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = err.source();
    let mut innermost = err.to_string();
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            match io.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                    return ClientError::NotRunning { host: host.clone() }
                }
                io::ErrorKind::PermissionDenied => {
                    return ClientError::PermissionDenied { host: host.clone() }
                }
                _ => {}
            }
        }
        innermost = cause.to_string();
        source = cause.source();
    }
    ClientError::Connect {
        host: host.clone(),
        reason: innermost,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let host: Host = "unix:///run/shoal/shoal.sock".parse().expect("valid");
        assert_eq!(host.path(), Path::new("/run/shoal/shoal.sock"));
        assert_eq!(host.to_string(), "unix:///run/shoal/shoal.sock");
        for bad in ["tcp://1.2.3.4:2375", "/run/shoal.sock", "unix://relative"] {
            assert!(bad.parse::<Host>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn missing_daemon_is_reported_as_not_running() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host: Host = format!("unix://{}/none.sock", dir.path().display())
            .parse()
            .expect("valid");
        let err = Client::connect(&host).await.expect_err("nothing listens");
        assert!(matches!(err, ClientError::NotRunning { .. }), "{err:?}");
    }
}
