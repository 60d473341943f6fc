//! A service's endpoint as the control API settles it before writing the service: network
//! references resolved to ids, published ports checked and picked, virtual IPs handed out,
//! and enough free addresses on every network for the tasks to come — so that a conflicting
//! port or a full subnet is an error on the command, not a task stuck in `NEW`.

use std::collections::{BTreeSet, HashMap, HashSet};

use shoal_proto::cluster::v1::service_spec::Mode;
use shoal_proto::cluster::v1::{
    Endpoint, EndpointMode, Network, PortProtocol, PublishMode, Service, ServiceSpec, VirtualIp,
};
use tonic::Status;

use crate::allocator::{self, Ipam, DYNAMIC_PORTS};
use crate::attachment::{attachment_networks, is_attachment};
use crate::objects::{id_of, lookup, LookupError};
use crate::store::State;

/// A network by id, id prefix or name.
pub fn find_network<'a>(state: &'a State, reference: &str) -> Result<&'a Network, Status> {
    let it = state.networks.iter().map(|(id, n)| {
        let name = n.spec.as_ref().map_or("", |s| s.name.as_str());
        (id.as_str(), name, n)
    });
    lookup("network", reference, it).map_err(|err| match err {
        LookupError::NotFound { .. } => Status::not_found(err.to_string()),
        LookupError::Ambiguous { .. } => Status::invalid_argument(err.to_string()),
    })
}

fn network_name(state: &State, id: &str) -> String {
    state
        .networks
        .get(id)
        .and_then(|n| n.spec.as_ref())
        .map_or_else(|| id.to_string(), |s| s.name.clone())
}

/// Replaces the spec's network references by ids; refuses unknown, repeated and ingress ones.
pub fn resolve_networks(state: &State, spec: &mut ServiceSpec) -> Result<(), Status> {
    let mut seen = HashSet::new();
    for attachment in &mut spec.networks {
        let network = find_network(state, &attachment.target)?;
        let id = id_of(&network.meta).to_string();
        let net_spec = network.spec.clone().unwrap_or_default();
        if net_spec.ingress {
            return Err(Status::invalid_argument(format!(
                "service cannot be explicitly attached to the ingress network {:?}",
                net_spec.name
            )));
        }
        if !seen.insert(id.clone()) {
            return Err(Status::invalid_argument(format!(
                "network {:?} is given twice",
                attachment.target
            )));
        }
        attachment.target = id;
    }
    Ok(())
}

fn protocol_name(p: PortProtocol) -> &'static str {
    match p {
        PortProtocol::Tcp => "tcp",
        PortProtocol::Udp => "udp",
    }
}

/// Ports other services publish: (port, protocol) → service name, id and publish mode.
fn ports_taken(
    state: &State,
    except: Option<&str>,
) -> HashMap<(u32, i32), (String, String, PublishMode)> {
    let mut taken = HashMap::new();
    for (id, service) in &state.services {
        if Some(id.as_str()) == except {
            continue;
        }
        let name = service.spec.as_ref().map_or("", |s| s.name.as_str());
        for port in service.endpoint.iter().flat_map(|e| &e.ports) {
            let key = (port.published_port, port.protocol);
            // An ingress holder is the one to report: it holds the port on every node.
            if port.publish_mode() == PublishMode::Ingress || !taken.contains_key(&key) {
                taken.insert(key, (name.to_string(), id.clone(), port.publish_mode()));
            }
        }
    }
    taken
}

/// Ports the nodes themselves use and no service may publish: VXLAN, and each node's cluster
/// port (a published port answers on every address of a node, so it would take them over).
fn reserved_ports(state: &State) -> HashMap<(u32, i32), String> {
    let mut reserved = HashMap::new();
    reserved.insert(
        (4789, PortProtocol::Udp as i32),
        "the overlay networks' VXLAN traffic".to_string(),
    );
    for node in state.nodes.values() {
        let addrs = node
            .status
            .iter()
            .map(|s| s.addr.as_str())
            .chain(node.manager_status.iter().map(|m| m.addr.as_str()));
        for addr in addrs {
            if let Some(port) = addr
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u32>().ok())
            {
                reserved.insert(
                    (port, PortProtocol::Tcp as i32),
                    "the swarm's cluster traffic".to_string(),
                );
            }
        }
    }
    reserved
}

/// The endpoint for `spec`: ports with published ports filled in, one VIP per network (VIP
/// mode). What `old` already holds (same port, same network) is kept.
pub fn allocate_endpoint(
    state: &State,
    ipam: &mut Ipam,
    service_id: Option<&str>,
    spec: &ServiceSpec,
    old: Option<&Endpoint>,
) -> Result<Endpoint, Status> {
    let endpoint_spec = spec.endpoint.clone().unwrap_or_default();
    let taken = ports_taken(state, service_id);
    let reserved = reserved_ports(state);
    let mut mine: HashSet<(u32, i32)> = HashSet::new();
    let mut ports = Vec::new();
    for port in &endpoint_spec.ports {
        if port.target_port == 0 || port.target_port > 65535 {
            return Err(Status::invalid_argument(format!(
                "invalid target port {}: a port is 1 to 65535",
                port.target_port
            )));
        }
        if port.published_port > 65535 {
            return Err(Status::invalid_argument(format!(
                "invalid published port {}: a port is 1 to 65535",
                port.published_port
            )));
        }
        let mut port = port.clone();
        let ingress = port.publish_mode() == PublishMode::Ingress;
        if ingress && endpoint_spec.mode() == EndpointMode::Dnsrr {
            return Err(Status::invalid_argument(
                "port published with ingress mode can't be used with dnsrr mode",
            ));
        }
        if port.published_port == 0 {
            if !ingress {
                return Err(Status::invalid_argument(format!(
                    "port {}/{} is published in host mode without a published port",
                    port.target_port,
                    protocol_name(port.protocol())
                )));
            }
            // Keep the port picked for this target before, else the lowest free one.
            let before = old.iter().flat_map(|e| &e.ports).find(|p| {
                p.target_port == port.target_port
                    && p.protocol == port.protocol
                    && p.publish_mode == port.publish_mode
                    && !taken.contains_key(&(p.published_port, p.protocol))
                    && !reserved.contains_key(&(p.published_port, p.protocol))
                    && !mine.contains(&(p.published_port, p.protocol))
            });
            port.published_port = match before {
                Some(p) => p.published_port,
                None => DYNAMIC_PORTS
                    .clone()
                    .find(|p| {
                        !taken.contains_key(&(*p, port.protocol))
                            && !reserved.contains_key(&(*p, port.protocol))
                            && !mine.contains(&(*p, port.protocol))
                            && !endpoint_spec
                                .ports
                                .iter()
                                .any(|q| q.published_port == *p && q.protocol == port.protocol)
                    })
                    .ok_or_else(|| {
                        Status::resource_exhausted(format!(
                            "no free port left in the dynamic range {}-{}",
                            DYNAMIC_PORTS.start(),
                            DYNAMIC_PORTS.end()
                        ))
                    })?,
            };
        }
        let key = (port.published_port, port.protocol);
        if let Some(what) = reserved.get(&key) {
            return Err(Status::invalid_argument(format!(
                "port '{}/{}' is reserved for {what}",
                port.published_port,
                protocol_name(port.protocol())
            )));
        }
        // An ingress port is held on every node, so it clashes with any other publisher; two
        // host-mode ports only clash on one node, which placement keeps apart (as Swarm).
        match taken.get(&key) {
            Some((name, id, PublishMode::Ingress)) => {
                return Err(Status::invalid_argument(format!(
                    "port '{}' is already in use by service '{name}' ({id}) as an ingress port",
                    port.published_port
                )));
            }
            Some((name, id, PublishMode::Host)) if ingress => {
                return Err(Status::invalid_argument(format!(
                    "port '{}' is already in use by service '{name}' ({id}) as a host-mode port",
                    port.published_port
                )));
            }
            _ => {}
        }
        if !mine.insert(key) {
            return Err(Status::invalid_argument(format!(
                "port '{}/{}' is published twice",
                port.published_port,
                protocol_name(port.protocol())
            )));
        }
        ports.push(port);
    }
    let probe = Service {
        spec: Some(spec.clone()),
        endpoint: Some(Endpoint {
            ports: ports.clone(),
            virtual_ips: Vec::new(),
        }),
        ..Default::default()
    };
    let mut virtual_ips = Vec::new();
    if allocator::vip_mode(&probe) {
        for network_id in allocator::task_networks(state, &probe) {
            let kept = old
                .iter()
                .flat_map(|e| &e.virtual_ips)
                .find(|v| v.network_id == network_id);
            let addr = match kept {
                Some(v) => v.addr.clone(),
                None => ipam
                    .alloc_vip(&network_id)
                    .map_err(|e| Status::resource_exhausted(e.to_string()))?,
            };
            virtual_ips.push(VirtualIp { network_id, addr });
        }
    }
    check_capacity(state, ipam, service_id, &probe)?;
    Ok(Endpoint { ports, virtual_ips })
}

/// Refuses a spec whose tasks would not all get an address.
fn check_capacity(
    state: &State,
    ipam: &Ipam,
    service_id: Option<&str>,
    service: &Service,
) -> Result<(), Status> {
    let wanted = match service.spec.as_ref().and_then(|s| s.mode.as_ref()) {
        Some(Mode::Replicated(r)) => usize::try_from(r.replicas).unwrap_or(usize::MAX),
        _ => state.nodes.len(),
    };
    let networks: BTreeSet<String> = allocator::task_networks(state, service)
        .into_iter()
        .collect();
    for network_id in networks {
        let holding = state
            .tasks
            .values()
            .filter(|t| Some(t.service_id.as_str()) == service_id)
            .filter(|t| {
                t.desired_state() as i32 <= shoal_proto::cluster::v1::TaskState::Running as i32
            })
            .filter(|t| t.networks.iter().any(|a| a.network_id == network_id))
            .count();
        let needed = wanted.saturating_sub(holding);
        let free = ipam.free(&network_id);
        if needed > free {
            let subnet = state
                .networks
                .get(&network_id)
                .and_then(allocator::subnet_of)
                .map_or_else(String::new, |s| s.to_string());
            return Err(Status::resource_exhausted(format!(
                "not enough addresses on network {} ({subnet}): {needed} more tasks need one, {free} are free",
                network_name(state, &network_id)
            )));
        }
    }
    Ok(())
}

/// Why a network cannot be removed now, if it cannot.
pub fn network_in_use(state: &State, network: &Network) -> Option<String> {
    let id = id_of(&network.meta);
    let name = network.spec.as_ref().map_or("", |s| s.name.as_str());
    let ingress = network.spec.as_ref().is_some_and(|s| s.ingress);
    for service in state.services.values() {
        let uses = service
            .spec
            .iter()
            .flat_map(|s| &s.networks)
            .any(|n| n.target == id)
            || (ingress && allocator::uses_ingress(service));
        if uses {
            let service_name = service.spec.as_ref().map_or("", |s| s.name.as_str());
            return Some(format!(
                "network {name} is in use by service {service_name} ({})",
                id_of(&service.meta)
            ));
        }
    }
    // Counted by their spec too: an attachment not yet addressed has no `networks` yet.
    let attached = state
        .tasks
        .values()
        .filter(|t| is_attachment(t))
        .filter(|t| t.desired_state() as i32 <= shoal_proto::cluster::v1::TaskState::Running as i32)
        .filter(|t| {
            attachment_networks(t).any(|n| n == id) || t.networks.iter().any(|a| a.network_id == id)
        })
        .count();
    if attached > 0 {
        return Some(format!(
            "network {name} is in use by {attached} attached container(s)"
        ));
    }
    let tasks = state
        .tasks
        .values()
        .filter(|t| t.networks.iter().any(|a| a.network_id == id))
        // Tasks being shut down let go on their own: their node tears the sandbox down
        // whether the network still exists or not.
        .filter(|t| t.desired_state() as i32 <= shoal_proto::cluster::v1::TaskState::Running as i32)
        .filter(|t| {
            let observed = t
                .status
                .as_ref()
                .map_or(shoal_proto::cluster::v1::TaskState::New, |s| s.state());
            !crate::objects::is_terminal(observed)
        })
        .count();
    (tasks > 0).then(|| {
        format!("network {name} is in use by {tasks} task(s) that are still stopping; try again")
    })
}

/// Docker's rule for network names.
pub fn check_network_name(name: &str) -> Result<(), Status> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "invalid network name {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        )))
    }
}
