//! The node's share of cluster networking: each task's sandbox (a network namespace with one
//! interface per network, the gateway bridge for outbound traffic and an embedded DNS
//! server), the per-network VXLAN device, the static forwarding entries towards
//! tasks on other nodes, and the node's routing-mesh rules — all programmed from the network
//! map the dispatcher sends, so nodes never gossip.
//!
//! One lock serialises every change: a sandbox being made, one being released and a new map
//! all reprogram the same kernel state, and reprogramming is a diff against what this module
//! last wrote.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use shoal_network::dns::{self, Resolve, Upstreams};
use shoal_network::link::{mac_for, Netlink};
use shoal_network::netns::{self, NetNs};
use shoal_network::nft::{self, NodeRules, PortRule, Protocol, Vip};
use shoal_proto::cluster::v1::{EndpointMode, NetworkMap, PortProtocol, PublishMode, Task};
use shoal_runtime::spec::NameFiles;
use tokio::sync::{watch, Mutex};

use crate::table::{self, NodeTable};

/// The gateway bridge: every task's default route, masqueraded out (Docker's
/// docker_gwbridge).
pub const GW_BRIDGE: &str = "shoal_gwbridge";
/// Subnet of the gateway bridge (Docker's docker_gwbridge default).
pub const GW_SUBNET: &str = "172.18.0.0/16";
/// The address tasks' DNS server answers on, as Docker's.
pub const DNS_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);
/// The node's loopback addresses, masqueraded when they reach a published port.
const LOOPBACK_NET: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8) {
    Ok(net) => net,
    Err(_) => panic!("127.0.0.0/8 is a valid prefix"),
};
/// IANA's VXLAN port.
pub const VXLAN_PORT: u16 = 4789;
/// Bytes VXLAN adds to each frame (outer IPv4, UDP, VXLAN and Ethernet headers).
const VXLAN_OVERHEAD: u32 = 50;
/// Period of the pass that reprograms everything even when nothing was announced.
const RESYNC: std::time::Duration = std::time::Duration::from_secs(2);
/// Sandboxes whose VIP table is rewritten at once.
const PARALLEL_NFT: usize = 8;
/// Underlay MTU assumed until a remote node's route says otherwise.
const DEFAULT_UNDERLAY_MTU: u32 = 1500;

/// Why a sandbox or the node's data path could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("network {0} is not in this node's network map yet")]
    UnknownNetwork(String),
    #[error("task {task}: invalid address {addr:?} on network {network}")]
    BadAddress {
        task: String,
        network: String,
        addr: String,
    },
    #[error("no address left on the gateway bridge {GW_SUBNET}")]
    GatewayFull,
    #[error(transparent)]
    Link(#[from] shoal_network::link::LinkError),
    #[error(transparent)]
    Netns(#[from] shoal_network::netns::NetnsError),
    #[error(transparent)]
    Nft(#[from] shoal_network::nft::NftError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, NetworkError>;

/// What the container is started with.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The sandbox namespace to join.
    pub netns: PathBuf,
    /// /etc/resolv.conf and /etc/hosts lines.
    pub names: NameFiles,
}

/// A sandbox as written next to its namespace, to find it again after a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SandboxRecord {
    task_id: String,
    service_id: String,
    /// (network id, address) per overlay interface, in interface order.
    attachments: Vec<(String, Ipv4Net)>,
    /// Address on the gateway bridge.
    gateway_addr: Ipv4Net,
    /// Host ends of the sandbox's veth pairs.
    host_links: Vec<String>,
}

struct Sandbox {
    record: SandboxRecord,
    path: PathBuf,
    dns: tokio::task::JoinHandle<()>,
    /// The VIP rules last applied inside, to skip unchanged ones.
    vips: Option<Vec<Vip>>,
}

/// A network's VXLAN device on this node, and the remote entries written to it.
///
/// Tasks join it through a macvlan of their own on the VXLAN device, not a veth on a bridge:
/// see docs/design/network.md ("Why macvlan").
#[derive(Default)]
struct Overlay {
    /// The node's own macvlan on the network (`snd<vni>`; ingress only, where the node has an
    /// address), whether or not it exists.
    own: String,
    vxlan: String,
    /// Remote endpoints programmed: address → tunnel destination (node address).
    remote: BTreeMap<Ipv4Addr, Ipv4Addr>,
}

struct Inner {
    netlink: Netlink,
    sandboxes: HashMap<String, Sandbox>,
    overlays: HashMap<String, Overlay>,
    gateway_ready: bool,
    /// The gateway bridge may exist (unknown at start).
    leftovers: bool,
    /// A map arrived from the dispatcher. Until then nothing is programmed: an empty map
    /// after a restart would tear down what running tasks use.
    map_known: bool,
    /// Bridges and VXLAN devices no overlay needs (left by a previous run) were deleted.
    swept: bool,
}

/// The node's networking for tasks.
pub struct NodeNetwork {
    node_id: String,
    root: PathBuf,
    map: watch::Sender<Arc<NetworkMap>>,
    upstreams: Arc<Upstreams>,
    table: Arc<NodeTable>,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for NodeNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeNetwork")
            .field("node_id", &self.node_id)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetworkError {
    let what = what.into();
    move |source| NetworkError::Io { what, source }
}

fn own_link_name(vni: u32) -> String {
    format!("snd{vni}")
}

/// Prefixes of the per-network devices, for the sweep of what a previous run left; `sbr` are
/// the bridges of releases before overlays used macvlans.
const OVERLAY_PREFIXES: [&str; 3] = ["svx", "snd", "sbr"];

fn vxlan_name(vni: u32) -> String {
    format!("svx{vni}")
}

/// Short, unique-enough link names (15 bytes at most) from a task id.
fn host_link(prefix: &str, task_id: &str, index: usize) -> String {
    let short: String = task_id.chars().take(8).collect();
    format!("{prefix}{short}{index}")
}

/// Whether `name` has the shape [`host_link`] gives (so a sweep leaves other links alone).
fn is_host_link(prefix: &str, name: &str) -> bool {
    name.len() == prefix.len() + 9
        && name.starts_with(prefix)
        && name[prefix.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric())
}

fn parse_net(cidr: &str) -> Option<Ipv4Net> {
    cidr.parse().ok()
}

fn parse_ip(addr: &str) -> Option<Ipv4Addr> {
    addr.split('/').next()?.parse().ok()
}

fn gateway_net() -> Ipv4Net {
    GW_SUBNET
        .parse()
        .expect("the gateway subnet is a valid CIDR")
}

impl NodeNetwork {
    /// The node's networking, keeping sandboxes under `root`. Finds the sandboxes a previous
    /// run left (their containers outlive the daemon) and serves their DNS again.
    pub async fn new(
        node_id: String,
        root: PathBuf,
        table: Arc<NodeTable>,
    ) -> Result<Arc<NodeNetwork>> {
        std::fs::create_dir_all(&root).map_err(io(format!("create {}", root.display())))?;
        let netlink = Netlink::new().await?;
        let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let this = Arc::new(NodeNetwork {
            node_id,
            root,
            map: watch::channel(Arc::new(NetworkMap::default())).0,
            upstreams: Arc::new(Upstreams::from_resolv_conf(&resolv)),
            table,
            inner: Mutex::new(Inner {
                netlink,
                sandboxes: HashMap::new(),
                overlays: HashMap::new(),
                gateway_ready: false,
                leftovers: true,
                map_known: false,
                swept: false,
            }),
        });
        this.recover().await;
        // A periodic pass heals what a failed one left half done.
        let weak = Arc::downgrade(&this);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RESYNC).await;
                let Some(this) = weak.upgrade() else { return };
                let mut inner = this.inner.lock().await;
                if let Err(err) = this.program(&mut inner).await {
                    tracing::warn!(%err, "program the node's networks");
                }
            }
        });
        Ok(this)
    }

    /// Finds the sandboxes a previous run recorded and serves their DNS again; removes the
    /// namespaces and host links no record accounts for (a run killed half way through).
    async fn recover(self: &Arc<Self>) {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        let mut inner = self.inner.lock().await;
        let mut unrecorded = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                if path.extension().is_none() && !path.with_extension("json").exists() {
                    unrecorded.push(path);
                }
                continue;
            }
            let record: Option<SandboxRecord> = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let ns_path = path.with_extension("");
            let Some(record) = record else {
                let _ = NetNs::remove(&ns_path);
                let _ = std::fs::remove_file(&path);
                continue;
            };
            match NetNs::open(&ns_path) {
                Ok(ns) => match self.serve_dns(&ns, &record) {
                    Ok(dns) => {
                        inner.sandboxes.insert(
                            record.task_id.clone(),
                            Sandbox {
                                record,
                                path: ns_path,
                                dns,
                                vips: None,
                            },
                        );
                    }
                    Err(err) => tracing::warn!(%err, "serve DNS of a recovered sandbox"),
                },
                Err(_) => {
                    let _ = NetNs::remove(&ns_path);
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        for path in unrecorded {
            if let Err(err) = NetNs::remove(&path) {
                tracing::warn!(path = %path.display(), %err, "remove an unrecorded sandbox");
            }
        }
        let keep: HashSet<String> = inner
            .sandboxes
            .values()
            .flat_map(|s| s.record.host_links.iter().cloned())
            .collect();
        for prefix in ["sv", "sg"] {
            let links = match inner.netlink.links_with_prefix(prefix).await {
                Ok(links) => links,
                Err(err) => {
                    tracing::warn!(%err, "list sandbox links");
                    continue;
                }
            };
            for link in links
                .iter()
                .filter(|l| is_host_link(prefix, l) && !keep.contains(*l))
            {
                if let Err(err) = inner.netlink.delete_link(link).await {
                    tracing::warn!(%link, %err, "delete an unrecorded sandbox link");
                }
            }
        }
    }

    /// The node this networking belongs to.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The current map, for readers (DNS).
    pub fn map(&self) -> Arc<NetworkMap> {
        self.map.borrow().clone()
    }

    /// A new map from the dispatcher: reprogram.
    pub async fn set_map(&self, map: NetworkMap) {
        self.map.send_replace(Arc::new(map));
        let mut inner = self.inner.lock().await;
        inner.map_known = true;
        if let Err(err) = self.program(&mut inner).await {
            tracing::warn!(%err, "program the node's networks");
        }
    }

    /// Makes the sandbox of `task`, or `None` when the task has no network and publishes no
    /// host-mode port (it then gets a namespace of its own with loopback only).
    ///
    /// The work runs detached, so a caller that is cancelled half way leaves a whole sandbox
    /// (which `release` removes), never half of one.
    pub async fn prepare(self: &Arc<Self>, task: &Task) -> Result<Option<Prepared>> {
        let this = Arc::clone(self);
        let task = task.clone();
        tokio::spawn(async move { this.prepare_now(&task).await })
            .await
            .map_err(|err| NetworkError::Io {
                what: "prepare a sandbox".to_string(),
                source: std::io::Error::other(err),
            })?
    }

    async fn prepare_now(&self, task: &Task) -> Result<Option<Prepared>> {
        let map = self.map();
        // A host-mode port is reached through the gateway bridge: such a task needs a
        // sandbox even without a network.
        let host_ports = map.services.iter().any(|s| {
            s.service_id == task.service_id
                && s.ports
                    .iter()
                    .any(|p| p.publish_mode() == PublishMode::Host)
        });
        if task.networks.is_empty() && !host_ports {
            return Ok(None);
        }
        let task_id = task.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default();
        let mut inner = self.inner.lock().await;
        if let Some(existing) = inner.sandboxes.get(&task_id) {
            return Ok(Some(prepared(&existing.path)));
        }
        let mut attachments = Vec::new();
        for a in &task.networks {
            let addr = a
                .addresses
                .first()
                .and_then(|s| parse_net(s))
                .ok_or_else(|| NetworkError::BadAddress {
                    task: task_id.clone(),
                    network: a.network_id.clone(),
                    addr: a.addresses.first().cloned().unwrap_or_default(),
                })?;
            if !map
                .networks
                .iter()
                .any(|n| n.meta.as_ref().is_some_and(|m| m.id == a.network_id))
            {
                return Err(NetworkError::UnknownNetwork(a.network_id.clone()));
            }
            attachments.push((a.network_id.clone(), addr));
        }
        self.ensure_gateway(&mut inner).await?;
        for (network_id, _) in &attachments {
            self.ensure_overlay(&mut inner, &map, network_id).await?;
        }
        let gateway_addr = next_gateway_addr(&inner)?;
        let path = self.root.join(&task_id);
        let record = SandboxRecord {
            task_id: task_id.clone(),
            service_id: task.service_id.clone(),
            attachments,
            gateway_addr,
            host_links: Vec::new(),
        };
        match self.build_sandbox(&mut inner, &path, record).await {
            Ok(sandbox) => {
                inner.sandboxes.insert(task_id.clone(), sandbox);
            }
            Err(err) => {
                let _ = netns::NetNs::remove(&path);
                return Err(err);
            }
        }
        if let Err(err) = self.program(&mut inner).await {
            tracing::warn!(%err, "program the node's networks");
        }
        Ok(Some(prepared(&path)))
    }

    async fn build_sandbox(
        &self,
        inner: &mut Inner,
        path: &Path,
        mut record: SandboxRecord,
    ) -> Result<Sandbox> {
        let ns = NetNs::create(path)?;
        let inside = Netlink::in_ns(&ns)?;
        inside.set_up("lo").await?;
        let mut index = 0usize;
        for (network_id, addr) in record.attachments.clone() {
            let vxlan = inner
                .overlays
                .get(&network_id)
                .map(|o| o.vxlan.clone())
                .ok_or_else(|| NetworkError::UnknownNetwork(network_id.clone()))?;
            let peer = host_link("sp", &record.task_id, index);
            inner
                .netlink
                .create_macvlan(&peer, &vxlan, &ns, mac_for(addr.addr()))
                .await?;
            let eth = format!("eth{index}");
            inside.configure(&peer, Some(&eth), None, addr).await?;
            index += 1;
        }
        let host = host_link("sg", &record.task_id, 0);
        let peer = host_link("sq", &record.task_id, 0);
        inner.netlink.delete_link(&host).await?;
        inner
            .netlink
            .create_veth(&host, &peer, &ns, Some(GW_BRIDGE), DEFAULT_UNDERLAY_MTU)
            .await?;
        record.host_links.push(host);
        let eth = format!("eth{index}");
        inside
            .configure(
                &peer,
                Some(&eth),
                Some(mac_for(record.gateway_addr.addr())),
                record.gateway_addr,
            )
            .await?;
        let gw = gateway_net()
            .hosts()
            .next()
            .expect("the gateway subnet has hosts");
        inside.add_default_route(gw).await?;
        drop(inside);
        let json = serde_json::to_vec(&record).expect("a sandbox record serialises");
        std::fs::write(path.with_extension("json"), json)
            .map_err(io(format!("record sandbox {}", path.display())))?;
        let dns = self.serve_dns(&ns, &record)?;
        Ok(Sandbox {
            record,
            path: path.to_path_buf(),
            dns,
            vips: None,
        })
    }

    fn serve_dns(&self, ns: &NetNs, record: &SandboxRecord) -> Result<tokio::task::JoinHandle<()>> {
        let resolver = Arc::new(TaskResolver {
            map: self.map.subscribe(),
            networks: record.attachments.iter().map(|(n, _)| n.clone()).collect(),
        });
        spawn_dns(ns, resolver, Arc::clone(&self.upstreams), &record.task_id)
    }

    /// Tears down the sandbox of a task whose container is gone. Unknown tasks are fine.
    /// Runs detached, like [`NodeNetwork::prepare`].
    pub async fn release(self: &Arc<Self>, task_id: &str) {
        let this = Arc::clone(self);
        let task_id = task_id.to_string();
        let _ = tokio::spawn(async move { this.release_now(&task_id).await }).await;
    }

    async fn release_now(&self, task_id: &str) {
        let mut inner = self.inner.lock().await;
        let Some(sandbox) = inner.sandboxes.remove(task_id) else {
            return;
        };
        sandbox.dns.abort();
        for link in &sandbox.record.host_links {
            if let Err(err) = inner.netlink.delete_link(link).await {
                tracing::warn!(%link, %err, "delete a sandbox link");
            }
        }
        if let Err(err) = NetNs::remove(&sandbox.path) {
            tracing::warn!(path = %sandbox.path.display(), %err, "remove a sandbox namespace");
        }
        let _ = std::fs::remove_file(sandbox.path.with_extension("json"));
        if let Err(err) = self.program(&mut inner).await {
            tracing::warn!(%err, "program the node's networks");
        }
    }

    /// Releases every sandbox whose task is not in `keep` (after a full assignment set).
    pub async fn retain(self: &Arc<Self>, keep: &HashSet<String>) {
        let gone: Vec<String> = {
            let inner = self.inner.lock().await;
            inner
                .sandboxes
                .keys()
                .filter(|id| !keep.contains(*id))
                .cloned()
                .collect()
        };
        for id in gone {
            self.release(&id).await;
        }
    }

    /// Removes everything: sandboxes, VXLAN devices and the nft table (the node left
    /// the swarm).
    pub async fn shutdown(self: &Arc<Self>) {
        let ids: Vec<String> = self.inner.lock().await.sandboxes.keys().cloned().collect();
        for id in ids {
            self.release(&id).await;
        }
        let mut inner = self.inner.lock().await;
        let overlays: Vec<Overlay> = inner.overlays.drain().map(|(_, o)| o).collect();
        for o in overlays {
            let _ = inner.netlink.delete_link(&o.own).await;
            let _ = inner.netlink.delete_link(&o.vxlan).await;
        }
        let _ = inner.netlink.delete_link(GW_BRIDGE).await;
        inner.gateway_ready = false;
        if let Err(err) = self.table.set(table::CLUSTER, NodeRules::default()).await {
            tracing::warn!(%err, "empty the cluster's part of the node's nft table");
        }
    }

    async fn ensure_gateway(&self, inner: &mut Inner) -> Result<()> {
        if inner.gateway_ready {
            return Ok(());
        }
        inner.leftovers = true;
        inner.netlink.ensure_bridge(GW_BRIDGE, None).await?;
        let net = gateway_net();
        let gw = Ipv4Net::new(
            net.hosts().next().expect("the gateway subnet has hosts"),
            net.prefix_len(),
        )
        .expect("the prefix is valid");
        inner.netlink.add_address(GW_BRIDGE, gw).await?;
        netns::sysctl(None, "net/ipv4/ip_forward", "1")?;
        // The node reaches a published port on 127.0.0.1 too (hairpin rule).
        netns::sysctl(
            None,
            &format!("net/ipv4/conf/{GW_BRIDGE}/route_localnet"),
            "1",
        )?;
        inner.gateway_ready = true;
        Ok(())
    }

    async fn overlay_mtu(&self, inner: &Inner) -> u32 {
        let map = self.map();
        let remote = map
            .nodes
            .iter()
            .filter(|n| n.node_id != self.node_id)
            .find_map(|n| parse_ip(&n.addr));
        let underlay = match remote {
            Some(addr) => inner
                .netlink
                .mtu_towards(addr)
                .await
                .unwrap_or(DEFAULT_UNDERLAY_MTU),
            None => DEFAULT_UNDERLAY_MTU,
        };
        underlay.saturating_sub(VXLAN_OVERHEAD)
    }

    async fn ensure_overlay(
        &self,
        inner: &mut Inner,
        map: &NetworkMap,
        network_id: &str,
    ) -> Result<()> {
        if inner.overlays.contains_key(network_id) {
            return Ok(());
        }
        let network = map
            .networks
            .iter()
            .find(|n| n.meta.as_ref().is_some_and(|m| m.id == network_id))
            .ok_or_else(|| NetworkError::UnknownNetwork(network_id.to_string()))?;
        let vni = network.allocation.as_ref().map_or(0, |a| a.vni);
        let mtu = self.overlay_mtu(inner).await;
        let own_link = own_link_name(vni);
        let vxlan = vxlan_name(vni);
        inner
            .netlink
            .ensure_vxlan(&vxlan, vni, VXLAN_PORT, mtu, None)
            .await?;
        // The node's own address on this network (ingress): the mesh's source address
        // towards tasks on other nodes.
        let prefix = network
            .allocation
            .as_ref()
            .and_then(|a| parse_net(&a.subnet))
            .map_or(24, |n| n.prefix_len());
        let own = map
            .nodes
            .iter()
            .filter(|n| n.node_id == self.node_id)
            .flat_map(|n| &n.attachments)
            .filter(|a| a.network_id == network_id)
            .flat_map(|a| &a.addresses)
            .find_map(|a| parse_ip(a));
        match own {
            Some(addr) => {
                // Other nodes address this node's frames to the MAC derived from its address
                // (their neighbour entries say so).
                let net = Ipv4Net::new(addr, prefix).expect("prefix from a parsed subnet");
                inner
                    .netlink
                    .ensure_macvlan(&own_link, &vxlan, mac_for(addr), net)
                    .await?;
            }
            None => inner.netlink.delete_link(&own_link).await?,
        }
        // What a previous run programmed, so that the first diff also removes stale entries.
        let fdb: HashMap<[u8; 6], Ipv4Addr> = inner
            .netlink
            .fdb_entries(&vxlan)
            .await?
            .into_iter()
            .collect();
        let remote = inner
            .netlink
            .neighbours(&vxlan)
            .await?
            .into_iter()
            .map(|(ip, mac)| (ip, fdb.get(&mac).copied().unwrap_or(Ipv4Addr::UNSPECIFIED)))
            .collect();
        inner.overlays.insert(
            network_id.to_string(),
            Overlay {
                own: own_link,
                vxlan,
                remote,
            },
        );
        Ok(())
    }

    /// Brings the kernel in line with the map and the local sandboxes.
    /// Every step goes on when one fails (one broken network must not stop the others);
    /// the first error is returned and the periodic pass tries again.
    async fn program(&self, inner: &mut Inner) -> Result<()> {
        if !inner.map_known {
            return Ok(());
        }
        let mut failed: Option<NetworkError> = None;
        let mut note = |what: &str, res: Result<()>| {
            if let Err(err) = res {
                tracing::warn!(%err, "{what}");
                failed.get_or_insert(err);
            }
        };
        let map = self.map();
        let me = self.node_id.as_str();
        let node_addr: HashMap<&str, Ipv4Addr> = map
            .nodes
            .iter()
            .filter_map(|n| Some((n.node_id.as_str(), parse_ip(&n.addr)?)))
            .collect();
        let ingress = map
            .networks
            .iter()
            .find(|n| n.spec.as_ref().is_some_and(|s| s.ingress))
            .and_then(|n| n.meta.as_ref().map(|m| m.id.clone()));
        let publishes_ingress = map.services.iter().any(|s| {
            s.ports
                .iter()
                .any(|p| p.publish_mode() == PublishMode::Ingress)
        });
        let has_ingress_addr = map
            .nodes
            .iter()
            .filter(|n| n.node_id == me)
            .flat_map(|n| &n.attachments)
            .any(|a| Some(&a.network_id) == ingress.as_ref());

        // Networks this node takes part in.
        let mut needed: BTreeSet<String> = inner
            .sandboxes
            .values()
            .flat_map(|s| s.record.attachments.iter().map(|(n, _)| n.clone()))
            .collect();
        if let Some(ingress) = ingress
            .as_ref()
            .filter(|_| publishes_ingress && has_ingress_addr)
        {
            needed.insert(ingress.clone());
        }
        let stale: Vec<String> = inner
            .overlays
            .keys()
            .filter(|id| !needed.contains(*id))
            .cloned()
            .collect();
        for id in stale {
            if let Some(o) = inner.overlays.remove(&id) {
                note(
                    "delete a VXLAN device",
                    inner
                        .netlink
                        .delete_link(&o.vxlan)
                        .await
                        .map_err(Into::into),
                );
                note(
                    "delete the node's own overlay link",
                    inner.netlink.delete_link(&o.own).await.map_err(Into::into),
                );
            }
        }
        if !needed.is_empty() {
            inner.leftovers = true;
            note(
                "set up the gateway bridge",
                self.ensure_gateway(inner).await,
            );
        }
        for id in &needed {
            note(
                "set up an overlay network",
                self.ensure_overlay(inner, &map, id).await,
            );
        }
        if !inner.swept {
            // Devices of networks a previous run served and nobody needs now.
            let mine: HashSet<String> = inner
                .overlays
                .values()
                .flat_map(|o| [o.own.clone(), o.vxlan.clone()])
                .collect();
            let mut swept = true;
            for prefix in OVERLAY_PREFIXES {
                match inner.netlink.links_with_prefix(prefix).await {
                    Ok(links) => {
                        for link in links.iter().filter(|l| {
                            !mine.contains(*l)
                                && l[prefix.len()..].bytes().all(|b| b.is_ascii_digit())
                        }) {
                            note(
                                "delete a stale overlay device",
                                inner.netlink.delete_link(link).await.map_err(Into::into),
                            );
                        }
                    }
                    Err(err) => {
                        swept = false;
                        note("list overlay devices", Err(err.into()));
                    }
                }
            }
            inner.swept = swept;
        }

        // Remote endpoints: tasks and nodes elsewhere, per network.
        let mut remote: HashMap<&str, BTreeMap<Ipv4Addr, Ipv4Addr>> = HashMap::new();
        for e in &map.endpoints {
            if e.node_id == me {
                continue;
            }
            if let (Some(ip), Some(dst)) = (parse_ip(&e.addr), node_addr.get(e.node_id.as_str())) {
                remote
                    .entry(e.network_id.as_str())
                    .or_default()
                    .insert(ip, *dst);
            }
        }
        for n in map.nodes.iter().filter(|n| n.node_id != me) {
            let Some(dst) = node_addr.get(n.node_id.as_str()) else {
                continue;
            };
            for a in &n.attachments {
                for ip in a.addresses.iter().filter_map(|s| parse_ip(s)) {
                    remote
                        .entry(a.network_id.as_str())
                        .or_default()
                        .insert(ip, *dst);
                }
            }
        }
        let ids: Vec<String> = inner.overlays.keys().cloned().collect();
        for id in ids {
            let want = remote.remove(id.as_str()).unwrap_or_default();
            let (vxlan, have) = {
                let o = &inner.overlays[&id];
                (o.vxlan.clone(), o.remote.clone())
            };
            // Only what was written is remembered, so a failed entry is retried next pass.
            let mut now = have.clone();
            for (ip, dst) in &want {
                if have.get(ip) != Some(dst) {
                    let res = async {
                        inner
                            .netlink
                            .fdb_replace(&vxlan, mac_for(*ip), *dst)
                            .await?;
                        inner.netlink.neigh_replace(&vxlan, *ip, mac_for(*ip)).await
                    }
                    .await;
                    if res.is_ok() {
                        now.insert(*ip, *dst);
                    }
                    note("program a remote endpoint", res.map_err(Into::into));
                }
            }
            for ip in have.keys().filter(|ip| !want.contains_key(ip)) {
                let res = async {
                    inner.netlink.neigh_del(&vxlan, *ip).await?;
                    inner.netlink.fdb_del(&vxlan, mac_for(*ip)).await
                }
                .await;
                if res.is_ok() {
                    now.remove(ip);
                }
                note("remove a remote endpoint", res.map_err(Into::into));
            }
            if let Some(o) = inner.overlays.get_mut(&id) {
                o.remote = now;
            }
        }

        // Routing mesh and host-mode ports.
        let running: HashSet<&str> = map
            .endpoints
            .iter()
            .filter(|e| e.running)
            .map(|e| e.task_id.as_str())
            .collect();
        let mapped: HashSet<&str> = map.endpoints.iter().map(|e| e.task_id.as_str()).collect();
        // A task without a network (host-mode ports only) has no endpoint in the map: its
        // sandbox lives exactly as long as its container, so it counts while it exists.
        let live = |task_id: &str| running.contains(task_id) || !mapped.contains(task_id);
        let mut rules = NodeRules {
            outbound_nat: vec![(gateway_net(), GW_BRIDGE.to_string())],
            hairpin: vec![
                (gateway_net(), GW_BRIDGE.to_string()),
                (LOOPBACK_NET, GW_BRIDGE.to_string()),
            ],
            ..Default::default()
        };
        if let Some(o) = ingress.as_ref().and_then(|id| inner.overlays.get(id)) {
            rules.masquerade_dnat_on.push(o.own.clone());
            rules.isolate.push((GW_BRIDGE.to_string(), o.own.clone()));
        }
        for service in &map.services {
            let local: Vec<Ipv4Addr> = inner
                .sandboxes
                .values()
                .filter(|s| s.record.service_id == service.service_id)
                .filter(|s| live(s.record.task_id.as_str()))
                .map(|s| s.record.gateway_addr.addr())
                .collect();
            for port in &service.ports {
                let (Ok(published), Ok(target)) = (
                    u16::try_from(port.published_port),
                    u16::try_from(port.target_port),
                ) else {
                    continue;
                };
                let protocol = match port.protocol() {
                    PortProtocol::Tcp => Protocol::Tcp,
                    PortProtocol::Udp => Protocol::Udp,
                };
                let backends = match port.publish_mode() {
                    // A local task gets the connection with the client's own address;
                    // else any running task, through the ingress overlay.
                    PublishMode::Ingress if !local.is_empty() => local.clone(),
                    PublishMode::Ingress => map
                        .endpoints
                        .iter()
                        .filter(|e| e.running && e.service_id == service.service_id)
                        .filter(|e| Some(&e.network_id) == ingress.as_ref())
                        .filter_map(|e| parse_ip(&e.addr))
                        .collect(),
                    PublishMode::Host if !local.is_empty() => local.clone(),
                    PublishMode::Host => continue,
                };
                rules.ports.push(PortRule {
                    protocol,
                    port: published,
                    target_port: target,
                    backends,
                });
            }
        }
        rules
            .ports
            .sort_by_key(|p| (p.port, p.protocol == Protocol::Udp));
        if needed.is_empty() && inner.sandboxes.is_empty() && rules.ports.is_empty() {
            // Nothing of the cluster's left on this node: no bridge, no rules (also what a
            // previous run may have left).
            rules = NodeRules::default();
            if inner.leftovers {
                match inner.netlink.delete_link(GW_BRIDGE).await {
                    Ok(()) => {
                        inner.gateway_ready = false;
                        inner.leftovers = false;
                    }
                    Err(err) => note("remove the gateway bridge", Err(err.into())),
                }
            }
        } else {
            inner.leftovers = true;
        }
        note(
            "apply the node's table",
            self.table
                .set(table::CLUSTER, rules)
                .await
                .map_err(Into::into),
        );

        // Virtual IPs inside each sandbox: one `nft` run per sandbox, several at a time, so
        // that a node with many tasks still follows a change within a second.
        let mut stale_vips = Vec::new();
        for sandbox in inner.sandboxes.values() {
            let mine: HashSet<&str> = sandbox
                .record
                .attachments
                .iter()
                .map(|(n, _)| n.as_str())
                .filter(|n| Some(*n) != ingress.as_deref())
                .collect();
            let mut vips = Vec::new();
            for service in &map.services {
                if service.mode() != EndpointMode::Vip {
                    continue;
                }
                for vip in service
                    .virtual_ips
                    .iter()
                    .filter(|v| mine.contains(v.network_id.as_str()))
                {
                    let Some(addr) = parse_ip(&vip.addr) else {
                        continue;
                    };
                    let backends = map
                        .endpoints
                        .iter()
                        .filter(|e| e.running && e.service_id == service.service_id)
                        .filter(|e| e.network_id == vip.network_id)
                        .filter_map(|e| parse_ip(&e.addr))
                        .collect();
                    vips.push(Vip { addr, backends });
                }
            }
            if sandbox.vips.as_ref() != Some(&vips) {
                stale_vips.push((sandbox.record.task_id.clone(), sandbox.path.clone(), vips));
            }
        }
        let applied: Vec<_> = futures::stream::iter(stale_vips)
            .map(|(task_id, path, vips)| async move {
                let res = nft::apply(&nft::vip_ruleset(&vips), Some(&path)).await;
                (task_id, vips, res)
            })
            .buffer_unordered(PARALLEL_NFT)
            .collect()
            .await;
        for (task_id, vips, res) in applied {
            match res {
                Ok(()) => {
                    if let Some(sandbox) = inner.sandboxes.get_mut(&task_id) {
                        sandbox.vips = Some(vips);
                    }
                }
                Err(err) => note("apply a sandbox's VIP table", Err(err.into())),
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

/// Serves DNS on [`DNS_ADDR`] inside `ns` (UDP and TCP) from `resolver`, forwarding the rest
/// to `upstreams`; `owner` names the task or container in logs.
pub(crate) fn spawn_dns(
    ns: &NetNs,
    resolver: Arc<dyn Resolve>,
    upstreams: Arc<Upstreams>,
    owner: &str,
) -> Result<tokio::task::JoinHandle<()>> {
    let bind = SocketAddr::from((DNS_ADDR, 53));
    let (udp, tcp) = ns
        .run(|| -> std::io::Result<_> {
            let udp = std::net::UdpSocket::bind(bind)?;
            let tcp = std::net::TcpListener::bind(bind)?;
            Ok((udp, tcp))
        })?
        .map_err(io(format!(
            "bind the DNS server on {bind} in {}",
            ns.path().display()
        )))?;
    let owner = owner.to_string();
    Ok(tokio::spawn(async move {
        if let Err(err) = dns::serve(udp, Some(tcp), resolver, upstreams).await {
            tracing::warn!(%owner, %err, "DNS server stopped");
        }
    }))
}

fn prepared(path: &Path) -> Prepared {
    Prepared {
        netns: path.to_path_buf(),
        names: NameFiles {
            resolv_conf: format!("nameserver {DNS_ADDR}\noptions ndots:0\n"),
            hosts: Vec::new(),
        },
    }
}

/// A free address on the gateway bridge, at random so that a released one is not handed
/// out again at once.
fn next_gateway_addr(inner: &Inner) -> Result<Ipv4Net> {
    let net = gateway_net();
    let used: HashSet<Ipv4Addr> = inner
        .sandboxes
        .values()
        .map(|s| s.record.gateway_addr.addr())
        .collect();
    let first = u32::from(net.network()) + 2;
    let last = u32::from(net.broadcast()) - 1;
    let span = last - first + 1;
    let start = rand::random_range(0..span);
    (0..span)
        .map(|i| Ipv4Addr::from(first + (start + i) % span))
        .find(|a| !used.contains(a))
        .map(|a| Ipv4Net::new(a, net.prefix_len()).expect("prefix of a parsed subnet"))
        .ok_or(NetworkError::GatewayFull)
}

/// Answers a task's DNS queries from the map: `SERVICE` (VIP, or tasks in dnsrr mode),
/// `tasks.SERVICE`, and network aliases — only for services on a network the task is on.
struct TaskResolver {
    map: watch::Receiver<Arc<NetworkMap>>,
    networks: HashSet<String>,
}

impl Resolve for TaskResolver {
    fn resolve(&self, name: &str) -> Option<Vec<Ipv4Addr>> {
        let map = self.map.borrow().clone();
        let (tasks_only, base) = match name.strip_prefix("tasks.") {
            Some(rest) => (true, rest),
            None => (false, name),
        };
        // The ingress network carries the routing mesh only: services that merely publish
        // ports do not discover each other through it (as in Swarm).
        let ingress = map
            .networks
            .iter()
            .find(|n| n.spec.as_ref().is_some_and(|s| s.ingress))
            .and_then(|n| n.meta.as_ref())
            .map(|m| m.id.as_str());
        let shared =
            |network_id: &str| Some(network_id) != ingress && self.networks.contains(network_id);
        let service = map.services.iter().find(|s| {
            let on_shared = s.virtual_ips.iter().any(|v| shared(&v.network_id))
                || map
                    .endpoints
                    .iter()
                    .any(|e| e.service_id == s.service_id && shared(&e.network_id));
            let named = s.name == base
                || s.aliases
                    .iter()
                    .any(|a| shared(&a.network_id) && a.aliases.iter().any(|x| x == base));
            on_shared && named
        })?;
        let tasks = || {
            map.endpoints
                .iter()
                .filter(|e| e.running && e.service_id == service.service_id)
                .filter(|e| shared(&e.network_id))
                .filter_map(|e| parse_ip(&e.addr))
                .collect::<Vec<_>>()
        };
        if tasks_only || service.mode() == EndpointMode::Dnsrr {
            return Some(tasks());
        }
        Some(
            service
                .virtual_ips
                .iter()
                .filter(|v| shared(&v.network_id))
                .filter_map(|v| parse_ip(&v.addr))
                .take(1)
                .collect(),
        )
    }
}
