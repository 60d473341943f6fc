//! The allocator (leader only): networks' subnets and VXLAN ids, services' virtual IPs and
//! published ports, tasks' and nodes' addresses — all kept in the replicated store, so every
//! node programs its data path from the same facts and no gossip is needed.
//!
//! Two writers share the address space of a network without a lock between them: the control
//! API hands out virtual IPs from the top of a subnet down ([`Ipam::alloc_vip`]), the
//! allocator loop hands out task and node addresses from the rest ([`Ipam::alloc`]), and each
//! is the only writer of its kind. Task addresses are picked at random among the free ones, so
//! that an address a stopped task just gave back is not handed out again while its old
//! namespace may still answer for it.
//!
//! Tasks are born `NEW`; the allocator gives them their addresses and moves them to `PENDING`,
//! where the scheduler takes over (Swarm's pipeline). Network attachment tasks (a standalone
//! container's address, see [`crate::attachment`]) come with their node and go straight to
//! `ASSIGNED`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;
use shoal_proto::cluster::v1::{
    EndpointMode, Network, NetworkAllocation, NetworkAttachment, NetworkSpec, Node, PublishMode,
    Service, StoreAction, Task, TaskState, TaskStatus,
};
use tokio::sync::watch;

use crate::attachment::is_attachment;
use crate::objects::{self, id_of, is_terminal, now_nanos, touch};
use crate::propose::Proposer;
use crate::store::{State, Store};

/// Swarm's default address pool for overlay networks, carved in /24s.
pub const DEFAULT_POOL: &str = "10.0.0.0/8";
/// Prefix length of a network taken from the default pool.
pub const DEFAULT_PREFIX: u8 = 24;
/// Swarm's ingress network: name, subnet and VXLAN id.
pub const INGRESS_NAME: &str = "ingress";
/// Subnet of the ingress network made at `swarm init`.
pub const INGRESS_SUBNET: &str = "10.0.0.0/24";
/// VXLAN ids start here (Swarm's first is 4096, the ingress network's).
pub const FIRST_VNI: u32 = 4096;
/// Published ports the leader picks from when none is given (Swarm's range).
pub const DYNAMIC_PORTS: std::ops::RangeInclusive<u32> = 30000..=32767;

/// Why an allocation cannot be made; the text is what the user sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error("invalid subnet {subnet:?}: {reason}")]
    BadSubnet { subnet: String, reason: String },
    #[error("subnet {subnet} overlaps with network {network} ({other})")]
    Overlap {
        subnet: String,
        network: String,
        other: String,
    },
    #[error("no /{DEFAULT_PREFIX} subnet left in the default address pool {DEFAULT_POOL}")]
    PoolExhausted,
    #[error("no addresses left on network {network} ({subnet})")]
    NetworkFull { network: String, subnet: String },
    #[error("network {network} not found")]
    NoNetwork { network: String },
}

/// A network's subnet, parsed.
pub fn subnet_of(network: &Network) -> Option<Ipv4Net> {
    network.allocation.as_ref()?.subnet.parse().ok()
}

/// Whether a task still holds its addresses: it may run, or its container may not be gone.
fn holds_addresses(task: &Task) -> bool {
    let observed = task.status.as_ref().map_or(TaskState::New, |s| s.state());
    !is_terminal(observed) || task.desired_state() as i32 <= TaskState::Running as i32
}

fn parse_addr(cidr: &str) -> Option<Ipv4Addr> {
    cidr.split('/').next()?.parse().ok()
}

/// Free and used addresses of every network, as the store says.
#[derive(Debug, Default)]
pub struct Ipam {
    pools: HashMap<String, Pool>,
}

#[derive(Debug)]
struct Pool {
    name: String,
    subnet: Ipv4Net,
    used: HashSet<Ipv4Addr>,
}

impl Pool {
    /// Host addresses a task, node or VIP may have: not the network, broadcast or gateway.
    fn hosts(&self) -> impl DoubleEndedIterator<Item = Ipv4Addr> + Clone {
        let first = u32::from(self.subnet.network()).saturating_add(2);
        let last = u32::from(self.subnet.broadcast()).saturating_sub(1);
        (first..=last).map(Ipv4Addr::from)
    }

    fn capacity(&self) -> usize {
        let bits = 32 - u32::from(self.subnet.prefix_len());
        (1usize << bits).saturating_sub(3)
    }

    fn full(&self) -> AllocError {
        AllocError::NetworkFull {
            network: self.name.clone(),
            subnet: self.subnet.to_string(),
        }
    }

    fn cidr(&self, addr: Ipv4Addr) -> String {
        format!("{addr}/{}", self.subnet.prefix_len())
    }
}

impl Ipam {
    /// Everything in use in `state`.
    pub fn from_state(state: &State) -> Ipam {
        let mut pools: HashMap<String, Pool> = HashMap::new();
        for (id, network) in &state.networks {
            let Some(subnet) = subnet_of(network) else {
                continue;
            };
            let name = network.spec.as_ref().map_or("", |s| s.name.as_str());
            pools.insert(
                id.clone(),
                Pool {
                    name: name.to_string(),
                    subnet,
                    used: HashSet::new(),
                },
            );
        }
        let mut mark = |network_id: &str, cidr: &str| {
            if let (Some(pool), Some(addr)) = (pools.get_mut(network_id), parse_addr(cidr)) {
                pool.used.insert(addr);
            }
        };
        for service in state.services.values() {
            for vip in service.endpoint.iter().flat_map(|e| &e.virtual_ips) {
                mark(&vip.network_id, &vip.addr);
            }
        }
        for task in state.tasks.values().filter(|t| holds_addresses(t)) {
            for a in &task.networks {
                for addr in &a.addresses {
                    mark(&a.network_id, addr);
                }
            }
        }
        for node in state.nodes.values() {
            for a in &node.attachments {
                for addr in &a.addresses {
                    mark(&a.network_id, addr);
                }
            }
        }
        Ipam { pools }
    }

    /// Free addresses on a network.
    pub fn free(&self, network_id: &str) -> usize {
        self.pools
            .get(network_id)
            .map_or(0, |p| p.capacity().saturating_sub(p.used.len()))
    }

    /// A task or node address: a random free one.
    pub fn alloc(&mut self, network_id: &str) -> Result<String, AllocError> {
        let pool = self.pool(network_id)?;
        let capacity = pool.capacity();
        if pool.used.len() >= capacity {
            return Err(pool.full());
        }
        let start = rand::random_range(0..capacity);
        let addr = pool
            .hosts()
            .skip(start)
            .chain(pool.hosts().take(start))
            .find(|a| !pool.used.contains(a))
            .ok_or_else(|| pool.full())?;
        pool.used.insert(addr);
        Ok(pool.cidr(addr))
    }

    /// A virtual IP: the highest free address.
    pub fn alloc_vip(&mut self, network_id: &str) -> Result<String, AllocError> {
        let pool = self.pool(network_id)?;
        let addr = pool
            .hosts()
            .rev()
            .find(|a| !pool.used.contains(a))
            .ok_or_else(|| pool.full())?;
        pool.used.insert(addr);
        Ok(pool.cidr(addr))
    }

    fn pool(&mut self, network_id: &str) -> Result<&mut Pool, AllocError> {
        self.pools
            .get_mut(network_id)
            .ok_or_else(|| AllocError::NetworkFull {
                network: network_id.to_string(),
                subnet: "unallocated".into(),
            })
    }
}

/// Subnet, gateway and VXLAN id for a new network.
pub fn allocate_network(
    state: &State,
    spec: &NetworkSpec,
) -> Result<NetworkAllocation, AllocError> {
    // Every node routes the tasks' gateway bridge itself: an overlay there would be shadowed.
    let gateway_bridge: Ipv4Net = "172.18.0.0/16".parse().expect("a valid CIDR");
    let taken: Vec<(Ipv4Net, &str)> = state
        .networks
        .values()
        .filter_map(|n| {
            Some((
                subnet_of(n)?,
                n.spec.as_ref().map_or("", |s| s.name.as_str()),
            ))
        })
        .chain(std::iter::once((gateway_bridge, "shoal_gwbridge")))
        .collect();
    let overlapping = |subnet: &Ipv4Net| {
        taken.iter().find(|(other, _)| {
            other.contains(&subnet.network()) || subnet.contains(&other.network())
        })
    };
    let subnet = if spec.subnet.is_empty() {
        let pool: Ipv4Net = DEFAULT_POOL
            .parse()
            .expect("the default pool is a valid CIDR");
        pool.subnets(DEFAULT_PREFIX)
            .expect("the default prefix is longer than the pool's")
            .find(|s| overlapping(s).is_none())
            .ok_or(AllocError::PoolExhausted)?
    } else {
        let bad = |reason: &str| AllocError::BadSubnet {
            subnet: spec.subnet.clone(),
            reason: reason.to_string(),
        };
        let net: Ipv4Net = spec
            .subnet
            .parse()
            .map_err(|_| bad("not an IPv4 CIDR like 10.1.0.0/24"))?;
        if net.network() != net.addr() {
            return Err(bad(&format!(
                "host bits are set; the network is {}",
                net.trunc()
            )));
        }
        if net.prefix_len() > 29 {
            return Err(bad("a network needs at least a /29"));
        }
        if let Some((other, name)) = overlapping(&net) {
            return Err(AllocError::Overlap {
                subnet: net.to_string(),
                network: name.to_string(),
                other: other.to_string(),
            });
        }
        net
    };
    let vnis: BTreeSet<u32> = state
        .networks
        .values()
        .filter_map(|n| n.allocation.as_ref().map(|a| a.vni))
        .collect();
    let first = if spec.ingress {
        FIRST_VNI
    } else {
        FIRST_VNI + 1
    };
    let vni = (first..)
        .find(|v| !vnis.contains(v))
        .expect("VXLAN ids are not all taken");
    let gateway = subnet.hosts().next().expect("a /29 or larger has hosts");
    Ok(NetworkAllocation {
        subnet: subnet.to_string(),
        gateway: gateway.to_string(),
        vni,
    })
}

/// The ingress network's id, if the cluster has one.
pub fn ingress_id(state: &State) -> Option<&str> {
    state
        .networks
        .iter()
        .find(|(_, n)| n.spec.as_ref().is_some_and(|s| s.ingress))
        .map(|(id, _)| id.as_str())
}

/// Whether a service publishes a port through the routing mesh.
pub fn uses_ingress(service: &Service) -> bool {
    service
        .endpoint
        .iter()
        .flat_map(|e| &e.ports)
        .any(|p| p.publish_mode() == PublishMode::Ingress)
}

/// The networks a service's tasks join, by id: its own, then ingress if it publishes there.
pub fn task_networks(state: &State, service: &Service) -> Vec<String> {
    let mut ids: Vec<String> = service
        .spec
        .iter()
        .flat_map(|s| &s.networks)
        .map(|n| n.target.clone())
        .collect();
    if uses_ingress(service) {
        if let Some(ingress) = ingress_id(state) {
            ids.push(ingress.to_string());
        }
    }
    ids
}

/// Whether the service resolves to a virtual IP (Swarm's default) rather than to its tasks.
pub fn vip_mode(service: &Service) -> bool {
    service
        .spec
        .as_ref()
        .and_then(|s| s.endpoint.as_ref())
        .is_none_or(|e| e.mode() == EndpointMode::Vip)
}

/// One pass: addresses for new tasks (then `PENDING`; attachment tasks `ASSIGNED`), ingress
/// addresses for nodes.
pub fn allocate(state: &State) -> Vec<StoreAction> {
    let mut ipam = Ipam::from_state(state);
    let mut actions = Vec::new();
    for task in state.tasks.values() {
        let observed = task.status.as_ref().map_or(TaskState::New, |s| s.state());
        if observed != TaskState::New || task.desired_state() != TaskState::Running {
            continue;
        }
        // An attachment task's node is the one that asked: it skips the scheduler.
        let (allocated, next, message) = if is_attachment(task) {
            (
                attachment_addresses(state, task, &mut ipam),
                TaskState::Assigned,
                "assigned to the node that asked for it",
            )
        } else {
            let Some(service) = state.services.get(&task.service_id) else {
                continue;
            };
            (
                attachments(state, service, &mut ipam),
                TaskState::Pending,
                "pending task scheduling",
            )
        };
        let mut task = task.clone();
        match allocated {
            Ok(networks) => {
                task.networks = networks;
                task.status = Some(TaskStatus {
                    state: next as i32,
                    timestamp: now_nanos(),
                    message: message.into(),
                    ..Default::default()
                });
            }
            Err(err) => {
                let message = err.to_string();
                let status = task.status.get_or_insert_with(Default::default);
                if status.err == message {
                    continue;
                }
                status.err = message;
                status.message = "pending network allocation".into();
            }
        }
        touch(&mut task.meta);
        actions.push(objects::update(task));
    }
    if let Some(ingress) = ingress_id(state) {
        for node in state.nodes.values() {
            if node.attachments.iter().any(|a| a.network_id == ingress) {
                continue;
            }
            let Ok(addr) = ipam.alloc(ingress) else {
                tracing::warn!(node = id_of(&node.meta), "no ingress address left for node");
                continue;
            };
            let mut node: Node = node.clone();
            node.attachments.push(NetworkAttachment {
                network_id: ingress.to_string(),
                addresses: vec![addr],
                aliases: Vec::new(),
            });
            touch(&mut node.meta);
            actions.push(objects::update(node));
        }
    }
    actions
}

fn attachments(
    state: &State,
    service: &Service,
    ipam: &mut Ipam,
) -> Result<Vec<NetworkAttachment>, AllocError> {
    let aliases: HashMap<&str, &Vec<String>> = service
        .spec
        .iter()
        .flat_map(|s| &s.networks)
        .map(|n| (n.target.as_str(), &n.aliases))
        .collect();
    let mut out = Vec::new();
    for network_id in task_networks(state, service) {
        let addr = ipam.alloc(&network_id)?;
        out.push(NetworkAttachment {
            aliases: aliases
                .get(network_id.as_str())
                .map(|a| a.to_vec())
                .unwrap_or_default(),
            network_id,
            addresses: vec![addr],
        });
    }
    Ok(out)
}

/// Addresses for a network attachment task: one on each network it names, with its aliases.
fn attachment_addresses(
    state: &State,
    task: &Task,
    ipam: &mut Ipam,
) -> Result<Vec<NetworkAttachment>, AllocError> {
    let configs = task
        .spec
        .iter()
        .filter_map(|s| s.attachment.as_ref())
        .flat_map(|a| &a.networks);
    let mut out = Vec::new();
    for config in configs {
        // Removed between the request and this pass: say so rather than "no addresses left".
        if !state.networks.contains_key(&config.target) {
            return Err(AllocError::NoNetwork {
                network: config.target.clone(),
            });
        }
        out.push(NetworkAttachment {
            network_id: config.target.clone(),
            addresses: vec![ipam.alloc(&config.target)?],
            aliases: config.aliases.clone(),
        });
    }
    Ok(out)
}

/// Runs passes while `leading` is true (see [`crate::propose::leader_loop`]).
/// `lock` is the control API's allocation lock: the control API hands out VIPs and this loop
/// task addresses from the same subnets.
pub async fn run(
    store: Arc<Store>,
    proposer: Arc<dyn Proposer>,
    leading: watch::Receiver<bool>,
    lock: Arc<tokio::sync::Mutex<()>>,
) {
    crate::propose::leader_loop("allocator", store, proposer, leading, Some(lock), allocate).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::cluster::v1::Meta;

    fn network(id: &str, name: &str, subnet: &str, vni: u32) -> Network {
        Network {
            meta: Some(Meta {
                id: id.into(),
                ..Default::default()
            }),
            spec: Some(NetworkSpec {
                name: name.into(),
                driver: "overlay".into(),
                ..Default::default()
            }),
            allocation: Some(NetworkAllocation {
                subnet: subnet.into(),
                gateway: String::new(),
                vni,
            }),
        }
    }

    #[test]
    fn default_pool_skips_taken_subnets_and_vnis() {
        let mut state = State::default();
        state
            .networks
            .insert("i".into(), network("i", "ingress", "10.0.0.0/24", 4096));
        state
            .networks
            .insert("a".into(), network("a", "a", "10.0.1.0/24", 4097));
        let alloc = allocate_network(&state, &NetworkSpec::default()).unwrap();
        assert_eq!(alloc.subnet, "10.0.2.0/24");
        assert_eq!(alloc.gateway, "10.0.2.1");
        assert_eq!(alloc.vni, 4098);
    }

    #[test]
    fn asked_subnets_are_checked() {
        let mut state = State::default();
        state
            .networks
            .insert("a".into(), network("a", "front", "10.1.0.0/16", 4097));
        let ask = |subnet: &str| {
            allocate_network(
                &state,
                &NetworkSpec {
                    subnet: subnet.into(),
                    ..Default::default()
                },
            )
        };
        assert!(matches!(
            ask("10.1.2.0/24"),
            Err(AllocError::Overlap { .. })
        ));
        assert!(matches!(ask("10.0.0.0/7"), Err(AllocError::Overlap { .. })));
        assert!(matches!(ask("nonsense"), Err(AllocError::BadSubnet { .. })));
        assert!(matches!(
            ask("10.2.0.1/24"),
            Err(AllocError::BadSubnet { .. })
        ));
        assert!(matches!(
            ask("10.2.0.0/30"),
            Err(AllocError::BadSubnet { .. })
        ));
        assert_eq!(ask("10.2.0.0/29").unwrap().subnet, "10.2.0.0/29");
    }

    #[test]
    fn addresses_run_out_with_a_clear_error() {
        let mut state = State::default();
        state
            .networks
            .insert("a".into(), network("a", "tiny", "10.2.0.0/29", 4097));
        let mut ipam = Ipam::from_state(&state);
        // .0 network, .1 gateway, .7 broadcast: five left.
        assert_eq!(ipam.free("a"), 5);
        assert_eq!(ipam.alloc_vip("a").unwrap(), "10.2.0.6/29");
        let mut got: Vec<String> = (0..4).map(|_| ipam.alloc("a").unwrap()).collect();
        got.sort();
        assert_eq!(
            got,
            ["10.2.0.2/29", "10.2.0.3/29", "10.2.0.4/29", "10.2.0.5/29"]
        );
        let err = ipam.alloc("a").unwrap_err();
        assert_eq!(
            err.to_string(),
            "no addresses left on network tiny (10.2.0.0/29)"
        );
    }
}
