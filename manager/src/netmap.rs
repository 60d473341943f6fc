//! The network map the dispatcher sends every node: the networks, the nodes' tunnel endpoints
//! and ingress addresses, the services' VIPs and ports, and every task's addresses. A node
//! programs its VXLAN forwarding, routing mesh and DNS from it alone.

use shoal_proto::cluster::v1::{
    MapEndpoint, MapNode, MapService, NetworkAttachment, NetworkMap, TaskState,
};

use crate::objects::{id_of, is_terminal};
use crate::store::State;

/// The map as `state` has it. Deterministic (sorted by id), so that two maps compare equal
/// when nothing changed.
pub fn network_map(state: &State) -> NetworkMap {
    let networks = state.networks.values().cloned().collect();
    let nodes = state
        .nodes
        .iter()
        .map(|(id, n)| MapNode {
            node_id: id.clone(),
            addr: n
                .status
                .as_ref()
                .map(|s| s.addr.clone())
                .unwrap_or_default(),
            attachments: n.attachments.clone(),
        })
        .collect();
    let services = state
        .services
        .iter()
        .map(|(id, s)| {
            let spec = s.spec.clone().unwrap_or_default();
            let endpoint = s.endpoint.clone().unwrap_or_default();
            MapService {
                service_id: id.clone(),
                name: spec.name.clone(),
                mode: spec.endpoint.as_ref().map_or(0, |e| e.mode),
                virtual_ips: endpoint.virtual_ips,
                ports: endpoint.ports,
                aliases: spec
                    .networks
                    .iter()
                    .filter(|n| !n.aliases.is_empty())
                    .map(|n| NetworkAttachment {
                        network_id: n.target.clone(),
                        addresses: Vec::new(),
                        aliases: n.aliases.clone(),
                    })
                    .collect(),
            }
        })
        .collect();
    let mut endpoints = Vec::new();
    for task in state.tasks.values() {
        if task.node_id.is_empty() || task.networks.is_empty() {
            continue;
        }
        let observed = task.status.as_ref().map_or(TaskState::New, |s| s.state());
        if is_terminal(observed) && task.desired_state() as i32 > TaskState::Running as i32 {
            continue;
        }
        let running = observed == TaskState::Running && task.desired_state() == TaskState::Running;
        for attachment in &task.networks {
            for addr in &attachment.addresses {
                endpoints.push(MapEndpoint {
                    task_id: id_of(&task.meta).to_string(),
                    service_id: task.service_id.clone(),
                    node_id: task.node_id.clone(),
                    network_id: attachment.network_id.clone(),
                    addr: addr.clone(),
                    running,
                    slot: task.slot,
                });
            }
        }
    }
    NetworkMap {
        networks,
        nodes,
        services,
        endpoints,
    }
}
