//! Node-local bridge networks for standalone containers (`shoal container run`), as Docker's:
//! the predefined `bridge` network and user-defined ones (`network create -d bridge`). Each is
//! a Linux bridge with its own subnet, outbound NAT and isolation from the other bridges. A
//! container gets a namespace with one veth leg on the bridge, the next free address, a
//! default route through the bridge (none on an `--internal` network), and its published
//! ports (`-p`) in the node's nft table. On a user-defined network the embedded DNS answers
//! the other containers' names; the default bridge copies the node's resolv.conf, as
//! Docker's does.
//!
//! Everything is on disk under `<data-root>/networks/`: `networks.json`, and per endpoint a
//! record next to its namespace file in `endpoints/`, so a restarted daemon serves its
//! endpoints again. One lock serialises every change; the kernel work of a change runs
//! detached from its caller, so a cancelled request leaves a whole endpoint or none.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use shoal_network::dns::{Resolve, Upstreams};
use shoal_network::link::{mac_for, Netlink};
use shoal_network::netns::{self, NetNs};
use shoal_network::nft::{NodeRules, PortRule, Protocol};
use shoal_runtime::spec::NameFiles;
use tokio::sync::{watch, Mutex};

use crate::network::{spawn_dns, DNS_ADDR, GW_BRIDGE, GW_SUBNET};
use crate::table::{self, NodeTable};

/// The predefined network of `docker run`.
pub const DEFAULT_NETWORK: &str = "bridge";
/// Its bridge device (Docker's docker0).
pub const DEFAULT_BRIDGE: &str = "shoal0";
/// Its subnet (docker0's default).
pub const DEFAULT_SUBNET: &str = "172.17.0.0/16";
/// The pseudo-networks `--network host` and `--network none` name.
pub const PSEUDO_NETWORKS: [&str; 2] = ["host", "none"];
/// Host ports picked for `-p CONTAINER_PORT` (Linux's default ephemeral range, as Docker).
const DYNAMIC_PORTS: std::ops::RangeInclusive<u16> = 32768..=60999;
/// Smallest user-defined subnet: a gateway and a handful of containers.
const MIN_PREFIX: u8 = 8;
const MAX_PREFIX: u8 = 29;

/// Why a local network or endpoint could not be made or removed. The texts are Docker's
/// where Docker has one.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("network with name {0} already exists")]
    Exists(String),
    #[error("network {0} not found")]
    NotFound(String),
    #[error("network {needle} is ambiguous ({count} matches found based on ID prefix)")]
    Ambiguous { needle: String, count: usize },
    #[error("{0} is a pre-defined network and cannot be removed")]
    Predefined(String),
    #[error("error while removing network: network {name} id {id} has active endpoints")]
    InUse { name: String, id: String },
    #[error("invalid network name {0:?}: names start with a letter or digit and hold only letters, digits, '_', '.' and '-'")]
    BadName(String),
    #[error("invalid subnet {subnet:?}: {why}")]
    BadSubnet { subnet: String, why: String },
    #[error("invalid pool request: subnet {subnet} overlaps with {other} ({other_subnet})")]
    Overlap {
        subnet: Ipv4Net,
        other: String,
        other_subnet: Ipv4Net,
    },
    #[error("could not find an available, non-overlapping IPv4 address pool among the defaults to assign to the network")]
    PoolExhausted,
    #[error("no available IPv4 addresses on network {0}")]
    Full(String),
    #[error("Bind for 0.0.0.0:{port} failed: port is already allocated")]
    PortTaken { port: u16 },
    #[error("Bind for 0.0.0.0:{port} failed: port is published by a swarm service on this node")]
    PortTakenBySwarm { port: u16 },
    #[error("no free host port left in {}-{}", DYNAMIC_PORTS.start(), DYNAMIC_PORTS.end())]
    NoFreePort,
    #[error("invalid container port 0")]
    ContainerPortZero,
    #[error(transparent)]
    Link(#[from] shoal_network::link::LinkError),
    #[error(transparent)]
    Netns(#[from] shoal_network::netns::NetnsError),
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, BridgeError>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BridgeError {
    let what = what.into();
    move |source| BridgeError::Io { what, source }
}

/// A local network as recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LocalNetwork {
    /// 64 hex.
    pub id: String,
    pub name: String,
    pub subnet: Ipv4Net,
    /// The bridge's own address: the containers' default route.
    pub gateway: Ipv4Addr,
    /// The bridge device.
    pub bridge: String,
    /// No outbound NAT and no default route.
    pub internal: bool,
    pub labels: Vec<(String, String)>,
    /// RFC 3339.
    pub created: String,
}

/// A published port: host port → container port.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Published {
    /// 0 in a request: pick one.
    pub host_port: u16,
    pub container_port: u16,
    pub udp: bool,
}

/// One container's leg on a local network.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Endpoint {
    /// Random, 64 hex: the endpoint exists before its container has an id.
    pub id: String,
    /// Empty until [`Bridges::bind`].
    pub container_id: String,
    pub container_name: String,
    pub network_id: String,
    /// The container's address, with the network's prefix.
    pub addr: Ipv4Net,
    /// The bridge end of the veth pair.
    pub host_link: String,
    pub ports: Vec<Published>,
}

impl Endpoint {
    /// The container's MAC (derived from its address, as Docker's).
    pub fn mac(&self) -> String {
        mac_text(mac_for(self.addr.addr()))
    }
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// What a container is created with.
#[derive(Debug, Clone)]
pub struct Attached {
    /// Give it to [`Bridges::bind`] once the container exists, or to [`Bridges::detach`].
    pub endpoint_id: String,
    /// The namespace the container joins.
    pub netns: PathBuf,
    pub names: NameFiles,
}

/// Names on each user-defined network, for the DNS servers: network id → name → address.
type Names = HashMap<String, HashMap<String, Ipv4Addr>>;

/// The node's local networks.
pub struct Bridges {
    root: PathBuf,
    table: Arc<NodeTable>,
    upstreams: Arc<Upstreams>,
    resolv_conf: String,
    names: watch::Sender<Arc<Names>>,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Bridges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridges")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

struct Inner {
    netlink: Netlink,
    networks: Vec<LocalNetwork>,
    endpoints: HashMap<String, Endpoint>,
    dns: HashMap<String, tokio::task::JoinHandle<()>>,
    /// Bridges set up by this run.
    ready: HashSet<String>,
}

fn is_default(network: &LocalNetwork) -> bool {
    network.name == DEFAULT_NETWORK
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

fn random_id() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

impl Bridges {
    /// The local networks of the daemon on `data_root`: reads what a previous run recorded,
    /// removes endpoints whose namespace is gone, and serves the rest again.
    pub async fn open(data_root: &Path, table: Arc<NodeTable>) -> Result<Arc<Bridges>> {
        let root = data_root.join("networks");
        let endpoints_dir = root.join("endpoints");
        std::fs::create_dir_all(&endpoints_dir)
            .map_err(io(format!("create {}", endpoints_dir.display())))?;
        let mut networks: Vec<LocalNetwork> = match std::fs::read(root.join("networks.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| BridgeError::Io {
                what: format!("read {}", root.join("networks.json").display()),
                source: std::io::Error::other(e),
            })?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(err) => return Err(io(format!("read {}", root.display()))(err)),
        };
        if !networks.iter().any(is_default) {
            networks.insert(
                0,
                LocalNetwork {
                    id: random_id(),
                    name: DEFAULT_NETWORK.to_string(),
                    subnet: DEFAULT_SUBNET.parse().expect("a valid CIDR"),
                    gateway: Ipv4Addr::new(172, 17, 0, 1),
                    bridge: DEFAULT_BRIDGE.to_string(),
                    internal: false,
                    labels: Vec::new(),
                    created: now_rfc3339(),
                },
            );
        }
        let resolv_conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let this = Arc::new(Bridges {
            root,
            table,
            upstreams: Arc::new(Upstreams::from_resolv_conf(&resolv_conf)),
            resolv_conf,
            names: watch::channel(Arc::new(Names::new())).0,
            inner: Mutex::new(Inner {
                netlink: Netlink::new().await?,
                networks,
                endpoints: HashMap::new(),
                dns: HashMap::new(),
                ready: HashSet::new(),
            }),
        });
        {
            let mut inner = this.inner.lock().await;
            this.save(&inner)?;
            this.recover(&mut inner).await;
            this.program(&mut inner).await;
        }
        Ok(this)
    }

    fn endpoints_dir(&self) -> PathBuf {
        self.root.join("endpoints")
    }

    fn save(&self, inner: &Inner) -> Result<()> {
        let path = self.root.join("networks.json");
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(&inner.networks).expect("networks serialise");
        std::fs::write(&tmp, json).map_err(io(format!("write {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(io(format!("write {}", path.display())))
    }

    async fn recover(&self, inner: &mut Inner) {
        let dir = self.endpoints_dir();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let mut unrecorded = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                if path.extension().is_none() && !path.with_extension("json").exists() {
                    unrecorded.push(path);
                }
                continue;
            }
            let ns_path = path.with_extension("");
            let record: Option<Endpoint> = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            // An endpoint never bound to a container was made by a run that died before the
            // container was created.
            let usable = record.as_ref().is_some_and(|e| {
                !e.container_id.is_empty()
                    && inner.networks.iter().any(|n| n.id == e.network_id)
                    && NetNs::open(&ns_path).is_ok()
            });
            match record {
                Some(endpoint) if usable => {
                    inner.endpoints.insert(endpoint.id.clone(), endpoint);
                }
                other => {
                    if let Some(e) = other {
                        let _ = inner.netlink.delete_link(&e.host_link).await;
                    }
                    let _ = NetNs::remove(&ns_path);
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        for path in unrecorded {
            let _ = NetNs::remove(&path);
        }
        let networks = inner.networks.clone();
        for network in networks.iter().filter(|n| !is_default(n)) {
            if let Err(err) = self.ensure_bridge(inner, network).await {
                tracing::warn!(network = %network.name, %err, "set up a local network's bridge");
            }
        }
        let ids: Vec<String> = inner.endpoints.keys().cloned().collect();
        for id in ids {
            let endpoint = inner.endpoints[&id].clone();
            if let Some(network) = networks.iter().find(|n| n.id == endpoint.network_id) {
                if let Err(err) = self.ensure_bridge(inner, network).await {
                    tracing::warn!(network = %network.name, %err, "set up a local network's bridge");
                }
            }
            self.start_dns(inner, &endpoint);
        }
        self.publish_names(inner);
    }

    /// The networks and their endpoints, the predefined `bridge` first.
    pub async fn list(&self) -> Vec<(LocalNetwork, Vec<Endpoint>)> {
        let inner = self.inner.lock().await;
        inner
            .networks
            .iter()
            .map(|n| {
                let mut endpoints: Vec<Endpoint> = inner
                    .endpoints
                    .values()
                    .filter(|e| e.network_id == n.id && !e.container_id.is_empty())
                    .cloned()
                    .collect();
                endpoints.sort_by(|a, b| a.container_name.cmp(&b.container_name));
                (n.clone(), endpoints)
            })
            .collect()
    }

    /// The network `needle` names (name, id or unique id prefix) and its endpoints.
    pub async fn get(&self, needle: &str) -> Result<(LocalNetwork, Vec<Endpoint>)> {
        let id = {
            let inner = self.inner.lock().await;
            find(&inner.networks, needle)?.id.clone()
        };
        self.list()
            .await
            .into_iter()
            .find(|(n, _)| n.id == id)
            .ok_or_else(|| BridgeError::NotFound(needle.to_string()))
    }

    /// `network create -d bridge NAME [--subnet CIDR] [--internal]`.
    pub async fn create(
        self: &Arc<Self>,
        name: &str,
        subnet: Option<&str>,
        internal: bool,
        labels: Vec<(String, String)>,
    ) -> Result<LocalNetwork> {
        check_name(name)?;
        let this = Arc::clone(self);
        let (name, subnet) = (name.to_string(), subnet.map(str::to_string));
        detached(async move {
            let mut inner = this.inner.lock().await;
            if PSEUDO_NETWORKS.contains(&name.as_str())
                || inner.networks.iter().any(|n| n.name == name)
            {
                return Err(BridgeError::Exists(name));
            }
            let subnet = match subnet {
                Some(text) => {
                    let net = parse_subnet(&text)?;
                    check_overlap(&inner.networks, net)?;
                    net
                }
                None => pick_subnet(&inner.networks)?,
            };
            let id = random_id();
            let network = LocalNetwork {
                bridge: format!("sbl-{}", &id[..11]),
                id,
                name,
                gateway: subnet.hosts().next().ok_or_else(|| BridgeError::BadSubnet {
                    subnet: subnet.to_string(),
                    why: "it has no host address".into(),
                })?,
                subnet,
                internal,
                labels,
                created: now_rfc3339(),
            };
            if let Err(err) = this.ensure_bridge(&mut inner, &network).await {
                let _ = inner.netlink.delete_link(&network.bridge).await;
                return Err(err);
            }
            inner.networks.push(network.clone());
            if let Err(err) = this.save(&inner) {
                inner.networks.pop();
                let _ = inner.netlink.delete_link(&network.bridge).await;
                return Err(err);
            }
            tracing::info!(network = %network.name, subnet = %network.subnet, "local network created");
            Ok(network)
        })
        .await
    }

    /// `network rm`: refused for `bridge` and while a container is attached.
    pub async fn remove(self: &Arc<Self>, needle: &str) -> Result<LocalNetwork> {
        let this = Arc::clone(self);
        let needle = needle.to_string();
        detached(async move {
            let mut inner = this.inner.lock().await;
            let network = find(&inner.networks, &needle)?.clone();
            if is_default(&network) {
                return Err(BridgeError::Predefined(network.name));
            }
            if inner.endpoints.values().any(|e| e.network_id == network.id) {
                return Err(BridgeError::InUse {
                    name: network.name,
                    id: network.id,
                });
            }
            inner.netlink.delete_link(&network.bridge).await?;
            inner.ready.remove(&network.id);
            inner.networks.retain(|n| n.id != network.id);
            this.save(&inner)?;
            this.program(&mut inner).await;
            tracing::info!(network = %network.name, "local network removed");
            Ok(network)
        })
        .await
    }

    /// Makes a container's endpoint on `network` (name, id or prefix; `bridge` when empty)
    /// with `ports` published: checks the ports, takes an address, builds the namespace.
    pub async fn attach(
        self: &Arc<Self>,
        network: &str,
        hostname: Option<&str>,
        ports: &[Published],
    ) -> Result<Attached> {
        let this = Arc::clone(self);
        let needle = if network.is_empty() {
            DEFAULT_NETWORK.to_string()
        } else {
            network.to_string()
        };
        let hostname = hostname.map(str::to_string);
        let ports = ports.to_vec();
        detached(async move {
            let mut inner = this.inner.lock().await;
            let network = find(&inner.networks, &needle)?.clone();
            let ports = this.assign_ports(&inner, &ports).await?;
            let addr = free_address(&inner, &network)?;
            this.ensure_bridge(&mut inner, &network).await?;
            let id = random_id();
            let endpoint = Endpoint {
                host_link: format!("sl{}", &id[..12]),
                id,
                container_id: String::new(),
                container_name: String::new(),
                network_id: network.id.clone(),
                addr,
                ports,
            };
            let path = this.endpoints_dir().join(&endpoint.id);
            if let Err(err) = this.build(&inner, &network, &endpoint, &path).await {
                let _ = inner.netlink.delete_link(&endpoint.host_link).await;
                let _ = NetNs::remove(&path);
                return Err(err);
            }
            if let Err(err) = this.record(&endpoint) {
                let _ = inner.netlink.delete_link(&endpoint.host_link).await;
                let _ = NetNs::remove(&path);
                return Err(err);
            }
            inner
                .endpoints
                .insert(endpoint.id.clone(), endpoint.clone());
            this.start_dns(&mut inner, &endpoint);
            this.program(&mut inner).await;
            let mut hosts = Vec::new();
            if let Some(hostname) = hostname {
                hosts.push((addr.addr().to_string(), hostname));
            }
            let resolv_conf = if is_default(&network) {
                default_resolv_conf(&this.resolv_conf)
            } else {
                format!("nameserver {DNS_ADDR}\noptions ndots:0\n")
            };
            Ok(Attached {
                endpoint_id: endpoint.id,
                netns: path,
                names: NameFiles { resolv_conf, hosts },
            })
        })
        .await
    }

    /// Records the container an endpoint belongs to (its DNS name from then on).
    pub async fn bind(&self, endpoint_id: &str, container_id: &str, container_name: &str) {
        let mut inner = self.inner.lock().await;
        let Some(endpoint) = inner.endpoints.get_mut(endpoint_id) else {
            return;
        };
        endpoint.container_id = container_id.to_string();
        endpoint.container_name = container_name.trim_start_matches('/').to_string();
        let endpoint = endpoint.clone();
        if let Err(err) = self.record(&endpoint) {
            tracing::warn!(%err, "record a local endpoint");
        }
        self.publish_names(&inner);
    }

    /// Removes the endpoint of `container_id` (after its container was removed). Unknown ids
    /// are fine.
    pub async fn detach_container(self: &Arc<Self>, container_id: &str) {
        let ids: Vec<String> = {
            let inner = self.inner.lock().await;
            inner
                .endpoints
                .values()
                .filter(|e| e.container_id == container_id)
                .map(|e| e.id.clone())
                .collect()
        };
        for id in ids {
            self.detach(&id).await;
        }
    }

    /// Removes an endpoint. Unknown ids are fine.
    pub async fn detach(self: &Arc<Self>, endpoint_id: &str) {
        let this = Arc::clone(self);
        let endpoint_id = endpoint_id.to_string();
        let _ = tokio::spawn(async move {
            let mut inner = this.inner.lock().await;
            let Some(endpoint) = inner.endpoints.remove(&endpoint_id) else {
                return;
            };
            if let Some(dns) = inner.dns.remove(&endpoint_id) {
                dns.abort();
            }
            if let Err(err) = inner.netlink.delete_link(&endpoint.host_link).await {
                tracing::warn!(link = %endpoint.host_link, %err, "delete a local endpoint's link");
            }
            let path = this.endpoints_dir().join(&endpoint.id);
            if let Err(err) = NetNs::remove(&path) {
                tracing::warn!(path = %path.display(), %err, "remove a local endpoint's namespace");
            }
            let _ = std::fs::remove_file(path.with_extension("json"));
            this.publish_names(&inner);
            this.program(&mut inner).await;
        })
        .await;
    }

    /// Removes the endpoints whose container is not in `containers` (removed while no
    /// daemon watched).
    pub async fn retain_containers(self: &Arc<Self>, containers: &HashSet<String>) {
        let gone: Vec<String> = {
            let inner = self.inner.lock().await;
            inner
                .endpoints
                .values()
                .filter(|e| !containers.contains(&e.container_id))
                .map(|e| e.id.clone())
                .collect()
        };
        for id in gone {
            self.detach(&id).await;
        }
    }

    /// The endpoint of `container_id` and its network, for `inspect` and `ls`.
    pub async fn endpoint_of(&self, container_id: &str) -> Option<(Endpoint, LocalNetwork)> {
        let inner = self.inner.lock().await;
        let endpoint = inner
            .endpoints
            .values()
            .find(|e| e.container_id == container_id)?
            .clone();
        let network = inner
            .networks
            .iter()
            .find(|n| n.id == endpoint.network_id)?
            .clone();
        Some((endpoint, network))
    }

    /// Published ports of every container that has any, by container id.
    pub async fn ports(&self) -> HashMap<String, Vec<Published>> {
        let inner = self.inner.lock().await;
        inner
            .endpoints
            .values()
            .filter(|e| !e.ports.is_empty())
            .map(|e| (e.container_id.clone(), e.ports.clone()))
            .collect()
    }

    fn record(&self, endpoint: &Endpoint) -> Result<()> {
        let path = self
            .endpoints_dir()
            .join(&endpoint.id)
            .with_extension("json");
        let json = serde_json::to_vec(endpoint).expect("an endpoint serialises");
        std::fs::write(&path, json).map_err(io(format!("record {}", path.display())))
    }

    /// The requested ports with the picked ones filled in, or why one cannot be had.
    async fn assign_ports(&self, inner: &Inner, wanted: &[Published]) -> Result<Vec<Published>> {
        let mut taken: HashSet<(u16, bool)> = inner
            .endpoints
            .values()
            .flat_map(|e| e.ports.iter().map(|p| (p.host_port, p.udp)))
            .collect();
        let protocol = |udp: bool| if udp { Protocol::Udp } else { Protocol::Tcp };
        let mut out = Vec::with_capacity(wanted.len());
        for p in wanted {
            if p.container_port == 0 {
                return Err(BridgeError::ContainerPortZero);
            }
            if p.host_port != 0 {
                if taken.contains(&(p.host_port, p.udp)) {
                    return Err(BridgeError::PortTaken { port: p.host_port });
                }
                if self
                    .table
                    .port_owner(p.host_port, protocol(p.udp), table::LOCAL)
                    .await
                    .is_some()
                {
                    return Err(BridgeError::PortTakenBySwarm { port: p.host_port });
                }
                taken.insert((p.host_port, p.udp));
                out.push(*p);
                continue;
            }
            let mut picked = None;
            for port in DYNAMIC_PORTS {
                if taken.contains(&(port, p.udp)) {
                    continue;
                }
                if self
                    .table
                    .port_owner(port, protocol(p.udp), table::LOCAL)
                    .await
                    .is_none()
                {
                    picked = Some(port);
                    break;
                }
            }
            let port = picked.ok_or(BridgeError::NoFreePort)?;
            taken.insert((port, p.udp));
            out.push(Published {
                host_port: port,
                ..*p
            });
        }
        Ok(out)
    }

    /// The bridge of `network`, with its address, up (once per run).
    async fn ensure_bridge(&self, inner: &mut Inner, network: &LocalNetwork) -> Result<()> {
        if inner.ready.contains(&network.id) {
            return Ok(());
        }
        inner.netlink.ensure_bridge(&network.bridge, None).await?;
        let addr = Ipv4Net::new(network.gateway, network.subnet.prefix_len())
            .expect("prefix of a parsed subnet");
        inner
            .netlink
            .configure(&network.bridge, None, None, addr)
            .await?;
        netns::sysctl(None, "net/ipv4/ip_forward", "1")?;
        // The node reaches published ports on 127.0.0.1 too (hairpin rule).
        netns::sysctl(
            None,
            &format!("net/ipv4/conf/{}/route_localnet", network.bridge),
            "1",
        )?;
        inner.ready.insert(network.id.clone());
        Ok(())
    }

    /// The endpoint's namespace: loopback, `eth0` on the bridge, the default route.
    async fn build(
        &self,
        inner: &Inner,
        network: &LocalNetwork,
        endpoint: &Endpoint,
        path: &Path,
    ) -> Result<()> {
        let ns = NetNs::create(path)?;
        let inside = Netlink::in_ns(&ns)?;
        inside.set_up("lo").await?;
        inner.netlink.delete_link(&endpoint.host_link).await?;
        inner
            .netlink
            .create_veth(
                &endpoint.host_link,
                "eth0",
                &ns,
                Some(&network.bridge),
                1500,
            )
            .await?;
        inside
            .configure(
                "eth0",
                None,
                Some(mac_for(endpoint.addr.addr())),
                endpoint.addr,
            )
            .await?;
        if !network.internal {
            inside.add_default_route(network.gateway).await?;
        }
        Ok(())
    }

    fn start_dns(&self, inner: &mut Inner, endpoint: &Endpoint) {
        let Some(network) = inner.networks.iter().find(|n| n.id == endpoint.network_id) else {
            return;
        };
        if is_default(network) {
            return;
        }
        let path = self.endpoints_dir().join(&endpoint.id);
        let served = NetNs::open(&path)
            .map_err(BridgeError::from)
            .and_then(|ns| {
                let resolver = Arc::new(LocalResolver {
                    names: self.names.subscribe(),
                    network_id: network.id.clone(),
                });
                Ok(spawn_dns(
                    &ns,
                    resolver,
                    Arc::clone(&self.upstreams),
                    &endpoint.id,
                )?)
            });
        match served {
            Ok(handle) => {
                inner.dns.insert(endpoint.id.clone(), handle);
            }
            Err(err) => tracing::warn!(%err, "serve DNS on a local network"),
        }
    }

    fn publish_names(&self, inner: &Inner) {
        let mut names = Names::new();
        for e in inner
            .endpoints
            .values()
            .filter(|e| !e.container_id.is_empty())
        {
            let on = names.entry(e.network_id.clone()).or_default();
            on.insert(e.container_name.to_ascii_lowercase(), e.addr.addr());
            on.insert(
                e.container_id[..12.min(e.container_id.len())].to_string(),
                e.addr.addr(),
            );
        }
        self.names.send_replace(Arc::new(names));
    }

    /// The local part of the node's table: outbound NAT, hairpin and isolation for every
    /// network that has containers, and the published ports.
    async fn program(&self, inner: &mut Inner) {
        let used: Vec<&LocalNetwork> = inner
            .networks
            .iter()
            .filter(|n| inner.endpoints.values().any(|e| e.network_id == n.id))
            .collect();
        let loopback: Ipv4Net = "127.0.0.0/8".parse().expect("a valid CIDR");
        let mut rules = NodeRules::default();
        for (i, n) in used.iter().enumerate() {
            if !n.internal {
                rules.outbound_nat.push((n.subnet, n.bridge.clone()));
            }
            rules.hairpin.push((n.subnet, n.bridge.clone()));
            rules.hairpin.push((loopback, n.bridge.clone()));
            for other in &used[i + 1..] {
                rules.isolate.push((n.bridge.clone(), other.bridge.clone()));
            }
            rules
                .isolate
                .push((n.bridge.clone(), GW_BRIDGE.to_string()));
        }
        let mut ports: BTreeMap<(u16, bool), PortRule> = BTreeMap::new();
        for e in inner.endpoints.values() {
            for p in &e.ports {
                ports.insert(
                    (p.host_port, p.udp),
                    PortRule {
                        protocol: if p.udp { Protocol::Udp } else { Protocol::Tcp },
                        port: p.host_port,
                        target_port: p.container_port,
                        backends: vec![e.addr.addr()],
                    },
                );
            }
        }
        rules.ports = ports.into_values().collect();
        if let Err(err) = self.table.set(table::LOCAL, rules).await {
            tracing::warn!(%err, "apply the local networks' rules");
        }
    }
}

/// Runs `fut` to its end even when the caller is cancelled.
async fn detached<T: Send + 'static>(
    fut: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    tokio::spawn(fut).await.map_err(|err| BridgeError::Io {
        what: "local network change".into(),
        source: std::io::Error::other(err),
    })?
}

/// Docker's rule for network names.
fn check_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name.len() <= 128;
    if ok {
        Ok(())
    } else {
        Err(BridgeError::BadName(name.to_string()))
    }
}

fn find<'a>(networks: &'a [LocalNetwork], needle: &str) -> Result<&'a LocalNetwork> {
    if let Some(n) = networks.iter().find(|n| n.name == needle || n.id == needle) {
        return Ok(n);
    }
    let by_prefix: Vec<&LocalNetwork> = networks
        .iter()
        .filter(|n| !needle.is_empty() && n.id.starts_with(needle))
        .collect();
    match by_prefix.as_slice() {
        [one] => Ok(one),
        [] => Err(BridgeError::NotFound(needle.to_string())),
        many => Err(BridgeError::Ambiguous {
            needle: needle.to_string(),
            count: many.len(),
        }),
    }
}

fn parse_subnet(text: &str) -> Result<Ipv4Net> {
    let bad = |why: &str| BridgeError::BadSubnet {
        subnet: text.to_string(),
        why: why.to_string(),
    };
    let net: Ipv4Net = text.parse().map_err(|_| bad("not an IPv4 CIDR"))?;
    if net.addr() != net.network() {
        return Err(bad("host bits are set"));
    }
    if !(MIN_PREFIX..=MAX_PREFIX).contains(&net.prefix_len()) {
        return Err(bad("the prefix must be between /8 and /29"));
    }
    Ok(net)
}

/// Subnets a local network must not overlap: the other local networks and the cluster's
/// gateway bridge.
fn check_overlap(networks: &[LocalNetwork], net: Ipv4Net) -> Result<()> {
    let gw: Ipv4Net = GW_SUBNET.parse().expect("a valid CIDR");
    let taken = networks
        .iter()
        .map(|n| (n.name.clone(), n.subnet))
        .chain(std::iter::once((GW_BRIDGE.to_string(), gw)));
    for (other, other_subnet) in taken {
        if other_subnet.contains(&net.network()) || net.contains(&other_subnet.network()) {
            return Err(BridgeError::Overlap {
                subnet: net,
                other,
                other_subnet,
            });
        }
    }
    Ok(())
}

/// Docker's default local pools: 172.17–31.0.0/16, then 192.168.0.0/16 in /20s.
fn pick_subnet(networks: &[LocalNetwork]) -> Result<Ipv4Net> {
    let sixteens = (17..=31u8).map(|b| Ipv4Net::new(Ipv4Addr::new(172, b, 0, 0), 16));
    let twenties = (0..16u8).map(|i| Ipv4Net::new(Ipv4Addr::new(192, 168, i * 16, 0), 20));
    sixteens
        .chain(twenties)
        .filter_map(std::result::Result::ok)
        .find(|net| check_overlap(networks, *net).is_ok())
        .ok_or(BridgeError::PoolExhausted)
}

/// The lowest free address of `network` after its gateway (Docker hands them out in order).
fn free_address(inner: &Inner, network: &LocalNetwork) -> Result<Ipv4Net> {
    let used: HashSet<Ipv4Addr> = inner
        .endpoints
        .values()
        .filter(|e| e.network_id == network.id)
        .map(|e| e.addr.addr())
        .collect();
    network
        .subnet
        .hosts()
        .find(|a| *a != network.gateway && !used.contains(a))
        .map(|a| Ipv4Net::new(a, network.subnet.prefix_len()).expect("prefix of a parsed subnet"))
        .ok_or_else(|| BridgeError::Full(network.name.clone()))
}

/// The node's resolv.conf for a container on the default bridge, without loopback
/// nameservers (they would be the container's own loopback).
fn default_resolv_conf(host: &str) -> String {
    let mut out = String::new();
    for line in host.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("nameserver")
            && words
                .next()
                .and_then(|a| a.parse::<Ipv4Addr>().ok())
                .is_some_and(|a| a.is_loopback())
        {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Answers the names of the containers on one user-defined network.
struct LocalResolver {
    names: watch::Receiver<Arc<Names>>,
    network_id: String,
}

impl Resolve for LocalResolver {
    fn resolve(&self, name: &str) -> Option<Vec<Ipv4Addr>> {
        let names = self.names.borrow().clone();
        let addr = names
            .get(&self.network_id)?
            .get(&name.to_ascii_lowercase())?;
        Some(vec![*addr])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(name: &str, subnet: &str) -> LocalNetwork {
        let subnet: Ipv4Net = subnet.parse().unwrap();
        LocalNetwork {
            id: format!("{name:0>64}"),
            name: name.into(),
            gateway: subnet.hosts().next().unwrap(),
            subnet,
            bridge: format!("sbl-{name}"),
            internal: false,
            labels: vec![],
            created: String::new(),
        }
    }

    #[test]
    fn names_follow_docker() {
        for good in ["a", "web-net", "x_1.y", "0net"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", ".a", "a b", "a/b", "ä"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn subnets_are_checked() {
        assert!(parse_subnet("10.1.0.0/16").is_ok());
        for bad in [
            "10.1.0.1/16",
            "10.1.0.0/30",
            "10.0.0.0/7",
            "nope",
            "10.1.0.0",
        ] {
            assert!(parse_subnet(bad).is_err(), "{bad}");
        }
        let nets = vec![network("bridge", DEFAULT_SUBNET)];
        let err = check_overlap(&nets, "172.17.5.0/24".parse().unwrap()).unwrap_err();
        assert!(err.to_string().contains("overlaps with bridge"), "{err}");
        assert!(check_overlap(&nets, "172.18.0.0/24".parse().unwrap()).is_err());
        assert!(check_overlap(&nets, "172.0.0.0/8".parse().unwrap()).is_err());
        assert!(check_overlap(&nets, "10.9.0.0/24".parse().unwrap()).is_ok());
    }

    #[test]
    fn pools_skip_used_subnets() {
        let mut nets = vec![network("bridge", DEFAULT_SUBNET)];
        assert_eq!(pick_subnet(&nets).unwrap().to_string(), "172.19.0.0/16");
        nets.push(network("a", "172.19.0.0/16"));
        assert_eq!(pick_subnet(&nets).unwrap().to_string(), "172.20.0.0/16");
        for b in 20..=31 {
            nets.push(network(&format!("n{b}"), &format!("172.{b}.0.0/16")));
        }
        assert_eq!(pick_subnet(&nets).unwrap().to_string(), "192.168.0.0/20");
    }

    #[test]
    fn find_by_name_id_and_prefix() {
        let nets = vec![
            network("bridge", DEFAULT_SUBNET),
            network("web", "10.1.0.0/24"),
        ];
        assert_eq!(find(&nets, "web").unwrap().name, "web");
        assert_eq!(find(&nets, &nets[1].id.clone()).unwrap().name, "web");
        assert!(matches!(
            find(&nets, "0000"),
            Err(BridgeError::Ambiguous { .. })
        ));
        assert!(matches!(find(&nets, "zzz"), Err(BridgeError::NotFound(_))));
    }

    #[test]
    fn default_resolv_conf_drops_loopback_nameservers() {
        let host = "nameserver 127.0.0.53\nnameserver 192.0.2.1\nsearch lan\n";
        assert_eq!(
            default_resolv_conf(host),
            "nameserver 192.0.2.1\nsearch lan\n"
        );
    }
}
