//! A standalone container's network, wherever it comes from: a node-local bridge network
//! ([`Bridges`]) or, when no local network has the name, an attachable overlay of the swarm
//! (a network attachment task the leader makes for this node, whose sandbox the node's
//! cluster networking builds). Which cluster attachment belongs to which container is kept
//! in `<data-root>/network-attachments/<container id>`, so that removing the container
//! detaches it also after a daemon restart.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use shoal_runtime::spec::NameFiles;
use shoal_worker::bridge::{Attached, BridgeError, Bridges, Published};
use shoal_worker::network::NetworkError;

use super::error::ApiError;
use super::swarm::SwarmNode;

/// How long a new attachment may wait for this node's network map to carry its network.
const MAP_WAIT: Duration = Duration::from_secs(10);

/// Where a container being created is attached.
#[derive(Debug)]
pub enum Attachment {
    /// A local bridge network.
    Local(Attached),
    /// A swarm overlay: the attachment task and the sandbox it got.
    Cluster {
        /// The network attachment task.
        task_id: String,
        /// Its sandbox.
        netns: PathBuf,
        /// The sandbox's resolv.conf and hosts lines.
        names: NameFiles,
    },
}

impl Attachment {
    /// The namespace the container joins.
    pub fn netns(&self) -> PathBuf {
        match self {
            Attachment::Local(a) => a.netns.clone(),
            Attachment::Cluster { netns, .. } => netns.clone(),
        }
    }

    /// Its /etc/resolv.conf and /etc/hosts lines.
    pub fn names(&self) -> NameFiles {
        match self {
            Attachment::Local(a) => a.names.clone(),
            Attachment::Cluster { names, .. } => names.clone(),
        }
    }
}

/// The node's standalone-container networking.
#[derive(Debug)]
pub struct ContainerNetworks {
    /// The local bridge networks.
    pub bridges: Arc<Bridges>,
    swarm: OnceLock<Arc<SwarmNode>>,
    dir: PathBuf,
}

impl ContainerNetworks {
    /// Over `bridges`, recording cluster attachments under `data_root`.
    pub fn new(data_root: &std::path::Path, bridges: Arc<Bridges>) -> Arc<ContainerNetworks> {
        Arc::new(ContainerNetworks {
            bridges,
            swarm: OnceLock::new(),
            dir: data_root.join("network-attachments"),
        })
    }

    /// The swarm side, once it is open (it is opened after the containers are adopted).
    pub fn set_swarm(&self, swarm: Arc<SwarmNode>) {
        let _ = self.swarm.set(swarm);
    }

    /// Attaches a container about to be created to `network` (a local network, else an
    /// attachable overlay) with `ports` published (local networks only).
    pub async fn attach(
        &self,
        network: &str,
        hostname: Option<&str>,
        ports: &[Published],
    ) -> Result<Attachment, ApiError> {
        let local = self.bridges.attach(network, hostname, ports).await;
        let swarm = match (local, self.swarm.get()) {
            (Ok(attached), _) => return Ok(Attachment::Local(attached)),
            (Err(BridgeError::NotFound(_)), Some(swarm)) if !network.is_empty() => swarm,
            (Err(err), _) => return Err(err.into()),
        };
        if !ports.is_empty() {
            return Err(ApiError::InvalidArgument(format!(
                "publishing ports of a container on the swarm network {network} is not supported: publish them with a service (`service create --publish`) or use a bridge network"
            )));
        }
        // The container's id is not known before it is created: the cluster knows it by a
        // provisional one.
        let provisional = shoal_proto::transport::random_id();
        let (task, node_network) = swarm
            .attach_network(network, &provisional)
            .await
            .map_err(|status| ApiError::InvalidArgument(status.message().to_string()))?;
        let task_id = task.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default();
        let deadline = Instant::now() + MAP_WAIT;
        let prepared = loop {
            match node_network.prepare(&task).await {
                Ok(Some(prepared)) => break prepared,
                Ok(None) => {
                    swarm.detach_network(&task_id).await;
                    return Err(ApiError::InvalidArgument(format!(
                        "network {network}: the attachment has no address"
                    )));
                }
                // The leader's map reaches this node a moment after the task.
                Err(NetworkError::UnknownNetwork(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(err) => {
                    swarm.detach_network(&task_id).await;
                    return Err(ApiError::InvalidArgument(format!(
                        "network {network}: {err}"
                    )));
                }
            }
        };
        Ok(Attachment::Cluster {
            task_id,
            netns: prepared.netns,
            names: prepared.names,
        })
    }

    /// The container was created: remember whose the attachment is.
    pub async fn bind(&self, attachment: &Attachment, container_id: &str, name: &str) {
        match attachment {
            Attachment::Local(a) => self.bridges.bind(&a.endpoint_id, container_id, name).await,
            Attachment::Cluster { task_id, .. } => {
                let record = || -> std::io::Result<()> {
                    std::fs::create_dir_all(&self.dir)?;
                    std::fs::write(self.dir.join(container_id), task_id)
                };
                if let Err(err) = record() {
                    tracing::warn!(%err, container.id = %container_id, "record a network attachment");
                }
            }
        }
    }

    /// The container could not be created: its attachment goes.
    pub async fn abandon(&self, attachment: Attachment) {
        match attachment {
            Attachment::Local(a) => self.bridges.detach(&a.endpoint_id).await,
            Attachment::Cluster { task_id, .. } => {
                if let Some(swarm) = self.swarm.get() {
                    swarm.detach_network(&task_id).await;
                }
            }
        }
    }

    /// The container was removed: whatever attached it goes. Unknown ids are fine.
    pub async fn detach_container(&self, container_id: &str) {
        self.bridges.detach_container(container_id).await;
        let record = self.dir.join(container_id);
        let Ok(task_id) = std::fs::read_to_string(&record) else {
            return;
        };
        if let Some(swarm) = self.swarm.get() {
            swarm.detach_network(task_id.trim()).await;
        }
        let _ = std::fs::remove_file(&record);
    }
}
