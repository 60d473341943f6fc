//! The `Networks` service: the node's local networks (`network create -d bridge`, `ls`,
//! `inspect`, `rm`), over [`shoal_worker::bridge::Bridges`]. `host` and `none` are listed
//! as Docker lists them; they have no state of their own.

use std::sync::Arc;

use shoal_proto::node::v1 as pb;
use shoal_proto::node::v1::networks_server::Networks;
use shoal_worker::bridge::{Endpoint, LocalNetwork, PSEUDO_NETWORKS};
use tonic::{Request, Response, Status};

use super::error::ApiError;
use super::Daemon;

/// The `Networks` service.
#[derive(Debug)]
pub struct NetworksApi {
    daemon: Arc<Daemon>,
}

impl NetworksApi {
    /// The service over the daemon's shared state.
    pub fn new(daemon: Arc<Daemon>) -> NetworksApi {
        NetworksApi { daemon }
    }
}

/// The wire form of a local network.
pub fn network_to_wire(network: &LocalNetwork, endpoints: &[Endpoint]) -> pb::LocalNetwork {
    pb::LocalNetwork {
        id: network.id.clone(),
        name: network.name.clone(),
        driver: "bridge".into(),
        subnet: network.subnet.to_string(),
        gateway: network.gateway.to_string(),
        bridge: network.bridge.clone(),
        internal: network.internal,
        labels: network
            .labels
            .iter()
            .map(|(key, value)| pb::Label {
                key: key.clone(),
                value: value.clone(),
            })
            .collect(),
        created: network.created.clone(),
        containers: endpoints
            .iter()
            .map(|e| pb::NetworkEndpoint {
                container_id: e.container_id.clone(),
                name: e.container_name.clone(),
                ipv4_address: e.addr.to_string(),
                mac_address: e.mac(),
            })
            .collect(),
    }
}

/// `host` and `none`, with stable ids spelled from their names (Docker gives them random
/// ids per engine; nothing refers to them by id).
fn pseudo(name: &str) -> pb::LocalNetwork {
    let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
    pb::LocalNetwork {
        id: format!("{hex:0<64}"),
        name: name.to_string(),
        driver: if name == "none" { "null" } else { "host" }.to_string(),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Networks for NetworksApi {
    async fn create(
        &self,
        request: Request<pb::CreateNetworkRequest>,
    ) -> Result<Response<pb::CreateNetworkResponse>, Status> {
        let request = request.into_inner();
        match request.driver.as_str() {
            "" | "bridge" => {}
            "overlay" => {
                return Err(ApiError::InvalidArgument(
                    "overlay networks are the swarm's: create them on a manager".into(),
                )
                .into())
            }
            other => {
                return Err(ApiError::InvalidArgument(format!(
                    "plugin \"{other}\" not found: local networks use the bridge driver"
                ))
                .into())
            }
        }
        let subnet = Some(request.subnet.as_str()).filter(|s| !s.is_empty());
        let labels = request
            .labels
            .into_iter()
            .map(|l| (l.key, l.value))
            .collect();
        let network = self
            .daemon
            .bridges
            .create(&request.name, subnet, request.internal, labels)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::CreateNetworkResponse {
            network: Some(network_to_wire(&network, &[])),
        }))
    }

    async fn list(
        &self,
        _request: Request<pb::ListNetworksRequest>,
    ) -> Result<Response<pb::ListNetworksResponse>, Status> {
        let mut networks: Vec<pb::LocalNetwork> = self
            .daemon
            .bridges
            .list()
            .await
            .iter()
            .map(|(n, e)| network_to_wire(n, e))
            .collect();
        networks.extend(PSEUDO_NETWORKS.iter().map(|name| pseudo(name)));
        Ok(Response::new(pb::ListNetworksResponse { networks }))
    }

    async fn inspect(
        &self,
        request: Request<pb::InspectNetworkRequest>,
    ) -> Result<Response<pb::InspectNetworkResponse>, Status> {
        let id = request.into_inner().id;
        if let Some(p) = PSEUDO_NETWORKS.iter().find(|n| **n == id) {
            return Ok(Response::new(pb::InspectNetworkResponse {
                network: Some(pseudo(p)),
            }));
        }
        let (network, endpoints) = self.daemon.bridges.get(&id).await.map_err(ApiError::from)?;
        Ok(Response::new(pb::InspectNetworkResponse {
            network: Some(network_to_wire(&network, &endpoints)),
        }))
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveNetworkRequest>,
    ) -> Result<Response<pb::RemoveNetworkResponse>, Status> {
        let id = request.into_inner().id;
        if PSEUDO_NETWORKS.contains(&id.as_str()) {
            return Err(ApiError::from(shoal_worker::bridge::BridgeError::Predefined(id)).into());
        }
        self.daemon
            .bridges
            .remove(&id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::RemoveNetworkResponse {}))
    }
}
