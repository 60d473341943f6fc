//! Links and what hangs off them, over rtnetlink: bridges, VXLAN devices, veth pairs,
//! addresses, default routes, static neighbour (ARP) entries and VXLAN forwarding (FDB)
//! entries.
//!
//! This is the data path of an overlay network on one node: a bridge per network, a VXLAN
//! device enslaved to it (learning off, ARP proxy on), and one veth per task whose host end is
//! a bridge port. Remote tasks are reached through entries the caller programs from its
//! assignments: an FDB entry on the VXLAN device (task MAC -> remote node) and a permanent
//! neighbour entry (task IP -> MAC) that the VXLAN ARP proxy answers from. Nothing is learnt:
//! these are the peer entries Docker's overlay driver programs (libnetwork
//! `drivers/overlay/peerdb.go`), fed from the caller's assignments instead of gossip.
//!
//! Which namespace a [`Netlink`] talks to is fixed when it is made ([`Netlink::new`],
//! [`Netlink::in_ns`]); creating namespaces is [`crate::netns`]'s job.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage, MacVlanMode,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::RouteAttribute;
use netlink_packet_route::AddressFamily;
use rtnetlink::{
    Handle, LinkBridge, LinkMacVlan, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder,
};

use crate::netns::{NetNs, NetnsError};

/// Errors from rtnetlink operations; each names the operation and the device it was for.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The rtnetlink socket of this process's namespace could not be opened.
    #[error("open an rtnetlink socket")]
    Connect(#[source] io::Error),
    /// [`Netlink::in_ns`] was called outside a tokio runtime.
    #[error("open an rtnetlink socket in {path}: not inside a tokio runtime")]
    NoRuntime {
        /// Namespace the socket was for.
        path: PathBuf,
    },
    /// Entering the namespace to open a socket there failed.
    #[error("enter a network namespace to open an rtnetlink socket")]
    EnterNs(#[source] NetnsError),
    /// The rtnetlink socket inside a namespace could not be opened.
    #[error("open an rtnetlink socket in {path}")]
    ConnectInNs {
        /// Namespace the socket was for.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// A link lookup by name failed (other than for a missing link).
    #[error("look up link {name}")]
    GetLink {
        /// Link name.
        name: String,
        /// Why it failed.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// Dumping all links failed.
    #[error("list links")]
    ListLinks(#[source] Box<rtnetlink::Error>),
    /// An operation needed a link that does not exist.
    #[error("no link named {name}")]
    NoSuchLink {
        /// Link name.
        name: String,
    },
    /// A link with the wanted name exists but is of another kind; shoal does not take over
    /// links it did not make.
    #[error("link {name} exists but is not a {want}")]
    WrongKind {
        /// Link name.
        name: String,
        /// The kind shoal wanted there.
        want: &'static str,
    },
    /// Creating a bridge failed.
    #[error("create bridge {name}")]
    AddBridge {
        /// Bridge name.
        name: String,
        /// Why it failed.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// Creating a VXLAN device failed.
    #[error("create vxlan {name} (vni {vni}, port {port}, master {})", .master.as_deref().unwrap_or("none"))]
    AddVxlan {
        /// Device name.
        name: String,
        /// VXLAN network identifier.
        vni: u32,
        /// UDP destination port.
        port: u16,
        /// Bridge it was to be enslaved to, if any.
        master: Option<String>,
        /// Why it failed.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// Creating a veth pair failed.
    #[error("create veth {host} with peer {peer} in {}", .peer_ns.display())]
    AddVeth {
        /// End that stays in this namespace.
        host: String,
        /// End created in `peer_ns`.
        peer: String,
        /// Namespace of the peer end.
        peer_ns: PathBuf,
        /// Why it failed.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// Creating a macvlan device failed.
    #[error("create macvlan {name} on {lower}{}", .ns.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    AddMacvlan {
        /// Device name.
        name: String,
        /// The device it sits on.
        lower: String,
        /// Namespace it was created in, when not this one.
        ns: Option<PathBuf>,
        /// Why it failed.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// Changing a link's settings failed.
    #[error("set {what} on link {name}")]
    SetLink {
        /// Link name.
        name: String,
        /// The settings being changed.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// Deleting a link failed.
    #[error("delete link {name}")]
    DeleteLink {
        /// Link name.
        name: String,
        /// Why it failed.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// Adding an address failed.
    #[error("add address {addr} to {name}")]
    AddAddress {
        /// Link name.
        name: String,
        /// Address and prefix.
        addr: Ipv4Net,
        /// Why it failed.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// Installing the default route failed.
    #[error("replace default route via {gateway}")]
    AddRoute {
        /// Next hop.
        gateway: Ipv4Addr,
        /// Why it failed.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// Replacing a neighbour entry failed.
    #[error("replace neighbour {ip} -> {} on {dev}", fmt_mac(.mac))]
    NeighReplace {
        /// Device the entry is on.
        dev: String,
        /// Neighbour address.
        ip: Ipv4Addr,
        /// Its MAC.
        mac: [u8; 6],
        /// Why it failed.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// Deleting a neighbour entry failed.
    #[error("delete neighbour {ip} on {dev}")]
    NeighDel {
        /// Device the entry is on.
        dev: String,
        /// Neighbour address.
        ip: Ipv4Addr,
        /// Why it failed.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// Dumping neighbour entries failed.
    #[error("list neighbours on {dev}")]
    ListNeighbours {
        /// Device whose entries were wanted.
        dev: String,
        /// Why it failed.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// Replacing a forwarding entry failed.
    #[error("replace fdb entry {} -> {dst} on {dev}", fmt_mac(.mac))]
    FdbReplace {
        /// VXLAN device.
        dev: String,
        /// Remote task's MAC.
        mac: [u8; 6],
        /// Remote node's underlay address.
        dst: Ipv4Addr,
        /// Why it failed.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// Deleting a forwarding entry failed.
    #[error("delete fdb entry {} on {dev}", fmt_mac(.mac))]
    FdbDel {
        /// VXLAN device.
        dev: String,
        /// Remote task's MAC.
        mac: [u8; 6],
        /// Why it failed.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// Dumping forwarding entries failed.
    #[error("list fdb entries on {dev}")]
    ListFdb {
        /// Device whose entries were wanted.
        dev: String,
        /// Why it failed.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// The route lookup towards an address failed.
    #[error("look up the route to {dst}")]
    RouteGet {
        /// Destination.
        dst: Ipv4Addr,
        /// Why it failed.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// The route towards an address has no output interface (or no MTU could be read off it).
    #[error("the route to {dst} names no output interface with an MTU")]
    NoRouteMtu {
        /// Destination.
        dst: Ipv4Addr,
    },
}

/// Result alias for this module.
pub type Result<T, E = LinkError> = std::result::Result<T, E>;

/// Formats a MAC the way `ip link` prints it.
fn fmt_mac(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// The MAC shoal gives the interface holding `ip`: `02:42` (locally administered, Docker's
/// prefix) followed by the four address bytes, as Docker's `netutils.GenerateMACFromIP` does.
/// Every node can then compute a remote task's MAC from its IP alone.
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x02, 0x42, a, b, c, d]
}

/// The errno of a netlink error reply, positive (`libc::ENODEV`, ...).
fn errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|code| -code.get()),
        _ => None,
    }
}

/// An rtnetlink connection to one network namespace. The connection task runs on the tokio
/// runtime that was current when this was made and is stopped when this is dropped.
#[derive(Debug)]
pub struct Netlink {
    /// Request handle; clones share the one socket.
    handle: Handle,
    /// Drives the socket; aborted on drop so the socket (and any namespace it pins) goes.
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Netlink {
    /// Connects to this process's network namespace (strictly: the current thread's).
    pub async fn new() -> Result<Netlink> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(LinkError::Connect)?;
        Ok(Netlink {
            handle,
            connection: tokio::spawn(connection),
        })
    }

    /// Connects to `ns`: the socket is opened on a thread inside `ns` (a netlink socket talks
    /// to the namespace it was created in for its whole life) and driven by the current tokio
    /// runtime.
    pub fn in_ns(ns: &NetNs) -> Result<Netlink> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| LinkError::NoRuntime {
            path: ns.path().to_path_buf(),
        })?;
        let thread_runtime = runtime.clone();
        let (connection, handle, _) = ns
            .run(move || {
                // The socket registers with the runtime's reactor when created.
                let _guard = thread_runtime.enter();
                rtnetlink::new_connection()
            })
            .map_err(LinkError::EnterNs)?
            .map_err(|source| LinkError::ConnectInNs {
                path: ns.path().to_path_buf(),
                source,
            })?;
        Ok(Netlink {
            handle,
            connection: runtime.spawn(connection),
        })
    }

    /// The link called `name`, or `None` when there is none.
    async fn get_link(&self, name: &str) -> Result<Option<LinkMessage>> {
        let mut links = self.handle.link().get().match_name(name).execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(err) if errno(&err) == Some(libc::ENODEV) => Ok(None),
            Err(source) => Err(LinkError::GetLink {
                name: name.to_string(),
                source: source.into(),
            }),
        }
    }

    /// Index of the link called `name`, or `None` when there is none.
    pub async fn link_index(&self, name: &str) -> Result<Option<u32>> {
        Ok(self.get_link(name).await?.map(|link| link.header.index))
    }

    /// Index of the link called `name`; a missing link is an error.
    async fn require_index(&self, name: &str) -> Result<u32> {
        self.link_index(name)
            .await?
            .ok_or_else(|| LinkError::NoSuchLink {
                name: name.to_string(),
            })
    }

    /// Sends RTM_SETLINK for an existing link.
    async fn set_link(&self, name: &str, what: &'static str, message: LinkMessage) -> Result<()> {
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(|source| LinkError::SetLink {
                name: name.to_string(),
                what,
                source: source.into(),
            })
    }

    /// Makes sure a bridge called `name` exists and is up (with `mtu` when given); returns its
    /// index. An existing bridge is kept, with whatever ports it has.
    pub async fn ensure_bridge(&self, name: &str, mtu: Option<u32>) -> Result<u32> {
        if let Some(link) = self.get_link(name).await? {
            if info_kind(&link) != Some(&InfoKind::Bridge) {
                return Err(LinkError::WrongKind {
                    name: name.to_string(),
                    want: "bridge",
                });
            }
            let index = link.header.index;
            let mut change = LinkUnspec::new_with_index(index).up();
            if let Some(mtu) = mtu {
                change = change.mtu(mtu);
            }
            self.set_link(name, "mtu/up", change.build()).await?;
            return Ok(index);
        }
        let mut bridge = LinkBridge::new(name);
        if let Some(mtu) = mtu {
            bridge = bridge.mtu(mtu);
        }
        match self.handle.link().add(bridge.build()).execute().await {
            Ok(()) => {}
            // Someone else made it between the lookup and the add: theirs will do.
            Err(err) if errno(&err) == Some(libc::EEXIST) => {}
            Err(source) => {
                return Err(LinkError::AddBridge {
                    name: name.to_string(),
                    source: source.into(),
                })
            }
        }
        self.require_index(name).await
    }

    /// Makes sure a VXLAN device `name` with `vni` on UDP `port` exists, with learning off
    /// and the ARP proxy on, `mtu`, enslaved to the bridge `master` (or to no bridge: the
    /// lower device of macvlans) and up; returns its index. A device of that name with another
    /// VNI, port or flags is deleted and made anew, since the kernel cannot change those on a
    /// live device.
    pub async fn ensure_vxlan(
        &self,
        name: &str,
        vni: u32,
        port: u16,
        mtu: u32,
        master: Option<&str>,
    ) -> Result<u32> {
        let master_index = match master {
            Some(master) => Some(self.require_index(master).await?),
            None => None,
        };
        if let Some(link) = self.get_link(name).await? {
            let index = link.header.index;
            if vxlan_matches(&link, vni, port) {
                let change = LinkUnspec::new_with_index(index).mtu(mtu).up();
                let change = match master_index {
                    Some(master) => change.controller(master),
                    None => change.nocontroller(),
                };
                self.set_link(name, "mtu/master/up", change.build()).await?;
                return Ok(index);
            }
            if info_kind(&link) != Some(&InfoKind::Vxlan) {
                return Err(LinkError::WrongKind {
                    name: name.to_string(),
                    want: "vxlan",
                });
            }
            self.delete_index(name, index).await?;
        }
        let mut vxlan = LinkVxlan::new(name, vni)
            .port(port)
            .learning(false)
            .proxy(true)
            .mtu(mtu)
            .up();
        if let Some(master) = master_index {
            vxlan = vxlan.controller(master);
        }
        self.handle
            .link()
            .add(vxlan.build())
            .execute()
            .await
            .map_err(|source| LinkError::AddVxlan {
                name: name.to_string(),
                vni,
                port,
                master: master.map(str::to_string),
                source: source.into(),
            })?;
        self.require_index(name).await
    }

    /// Creates a macvlan device `name` in bridge mode on `lower`, with `mac` and the MTU of
    /// `lower`, directly inside `ns` (down), so it never clashes with a name in this namespace.
    ///
    /// A task's end of an overlay: the kernel hands frames for `mac` from `lower` straight to
    /// it and lets macvlans on the same `lower` talk to each other, which takes the veth pair
    /// and the bridge (and the bridge's netfilter pass) out of every packet's path.
    pub async fn create_macvlan(
        &self,
        name: &str,
        lower: &str,
        ns: &NetNs,
        mac: [u8; 6],
    ) -> Result<()> {
        let lower_index = self.require_index(lower).await?;
        self.add_macvlan(name, (lower, lower_index), mac, Some(ns))
            .await
    }

    async fn add_macvlan(
        &self,
        name: &str,
        (lower, lower_index): (&str, u32),
        mac: [u8; 6],
        ns: Option<&NetNs>,
    ) -> Result<()> {
        let mut macvlan =
            LinkMacVlan::new(name, lower_index, MacVlanMode::Bridge).address(mac.to_vec());
        if let Some(ns) = ns {
            // The fd stays open (borrowed from `ns`) until the kernel has answered.
            macvlan = macvlan.setns_by_fd(ns.fd().as_raw_fd());
        }
        self.handle
            .link()
            .add(macvlan.build())
            .execute()
            .await
            .map_err(|source| LinkError::AddMacvlan {
                name: name.to_string(),
                lower: lower.to_string(),
                ns: ns.map(|ns| ns.path().to_path_buf()),
                source: source.into(),
            })
    }

    /// Makes sure this namespace has a macvlan `name` in bridge mode on `lower`, with `mac`,
    /// `addr` and up (a node's own address on an overlay); a link of that name of another
    /// kind or on another device is replaced. Returns its index.
    pub async fn ensure_macvlan(
        &self,
        name: &str,
        lower: &str,
        mac: [u8; 6],
        addr: Ipv4Net,
    ) -> Result<u32> {
        let lower_index = self.require_index(lower).await?;
        if let Some(link) = self.get_link(name).await? {
            let index = link.header.index;
            let on_lower = link
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::Link(i) if *i == lower_index));
            if info_kind(&link) == Some(&InfoKind::MacVlan) && on_lower {
                self.configure(name, None, Some(mac), addr).await?;
                return Ok(index);
            }
            self.delete_index(name, index).await?;
        }
        self.add_macvlan(name, (lower, lower_index), mac, None)
            .await?;
        self.configure(name, None, None, addr).await?;
        self.require_index(name).await
    }

    /// Creates a veth pair with `mtu`: `host_name` stays in this namespace, up and, when
    /// `master` is given, a port of that bridge; `peer_name` is created directly inside
    /// `peer_ns` (down), so it never clashes with a name in this namespace. A `host_name` that
    /// already exists is an error: delete it first.
    pub async fn create_veth(
        &self,
        host_name: &str,
        peer_name: &str,
        peer_ns: &NetNs,
        master: Option<&str>,
        mtu: u32,
    ) -> Result<()> {
        let master_index = match master {
            Some(master) => Some(self.require_index(master).await?),
            None => None,
        };
        // The fd stays open (borrowed from `peer_ns`) until the kernel has answered.
        let peer = LinkUnspec::new_with_name(peer_name)
            .mtu(mtu)
            .setns_by_fd(peer_ns.fd().as_raw_fd())
            .build();
        let mut veth = LinkVeth::new(host_name, peer_name)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .mtu(mtu)
            .up();
        if let Some(index) = master_index {
            veth = veth.controller(index);
        }
        self.handle
            .link()
            .add(veth.build())
            .execute()
            .await
            .map_err(|source| LinkError::AddVeth {
                host: host_name.to_string(),
                peer: peer_name.to_string(),
                peer_ns: peer_ns.path().to_path_buf(),
                source: source.into(),
            })
    }

    /// Inside a task's namespace: renames `name` to `new_name` (when given), sets its MAC
    /// (when given), adds `addr` and brings it up. Safe to repeat: when `name` is gone but
    /// `new_name` exists, the rename already happened and the rest is applied to `new_name`.
    pub async fn configure(
        &self,
        name: &str,
        new_name: Option<&str>,
        mac: Option<[u8; 6]>,
        addr: Ipv4Net,
    ) -> Result<()> {
        let (index, current) = match (self.link_index(name).await?, new_name) {
            (Some(index), _) => (index, name),
            (None, Some(new_name)) => (self.require_index(new_name).await?, new_name),
            (None, None) => {
                return Err(LinkError::NoSuchLink {
                    name: name.to_string(),
                })
            }
        };
        let rename = new_name.filter(|new_name| *new_name != current);
        if rename.is_some() || mac.is_some() {
            // A rename needs the link down; a freshly created veth end is.
            let mut change = LinkUnspec::new_with_index(index);
            if let Some(new_name) = rename {
                change = change.name(new_name);
            }
            if let Some(mac) = mac {
                change = change.address(mac.to_vec());
            }
            self.set_link(current, "name/mac", change.build()).await?;
        }
        let current = rename.unwrap_or(current);
        self.add_address_index(current, index, addr).await?;
        self.set_link(
            current,
            "up",
            LinkUnspec::new_with_index(index).up().build(),
        )
        .await
    }

    /// Brings `name` up.
    pub async fn set_up(&self, name: &str) -> Result<()> {
        let index = self.require_index(name).await?;
        self.set_link(name, "up", LinkUnspec::new_with_index(index).up().build())
            .await
    }

    /// Adds `addr` to `name`; an address already there is Ok.
    pub async fn add_address(&self, name: &str, addr: Ipv4Net) -> Result<()> {
        let index = self.require_index(name).await?;
        self.add_address_index(name, index, addr).await
    }

    async fn add_address_index(&self, name: &str, index: u32, addr: Ipv4Net) -> Result<()> {
        match self
            .handle
            .address()
            .add(index, IpAddr::V4(addr.addr()), addr.prefix_len())
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(err) if errno(&err) == Some(libc::EEXIST) => Ok(()),
            Err(source) => Err(LinkError::AddAddress {
                name: name.to_string(),
                addr,
                source: source.into(),
            }),
        }
    }

    /// Sets (or replaces) the IPv4 default route via `gateway`.
    pub async fn add_default_route(&self, gateway: Ipv4Addr) -> Result<()> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .build();
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(|source| LinkError::AddRoute {
                gateway,
                source: source.into(),
            })
    }

    /// Deletes the link `name` (both ends, for a veth); a missing link is Ok.
    pub async fn delete_link(&self, name: &str) -> Result<()> {
        match self.link_index(name).await? {
            Some(index) => self.delete_index(name, index).await,
            None => Ok(()),
        }
    }

    async fn delete_index(&self, name: &str, index: u32) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(err) if errno(&err) == Some(libc::ENODEV) => Ok(()),
            Err(source) => Err(LinkError::DeleteLink {
                name: name.to_string(),
                source: source.into(),
            }),
        }
    }

    /// Names of all links starting with `prefix` (all links for `""`), for sweeping what a
    /// previous run left.
    pub async fn links_with_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        let links: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|source| LinkError::ListLinks(source.into()))?;
        Ok(links
            .iter()
            .filter_map(link_name)
            .filter(|name| name.starts_with(prefix))
            .map(str::to_string)
            .collect())
    }

    /// Sets a permanent neighbour entry `ip` -> `mac` on `dev` (replacing any), which the
    /// VXLAN ARP proxy answers from.
    pub async fn neigh_replace(&self, dev: &str, ip: Ipv4Addr, mac: [u8; 6]) -> Result<()> {
        let index = self.require_index(dev).await?;
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(ip))
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|source| LinkError::NeighReplace {
                dev: dev.to_string(),
                ip,
                mac,
                source: source.into(),
            })
    }

    /// Deletes the neighbour entry for `ip` on `dev`; a missing entry (or device) is Ok.
    pub async fn neigh_del(&self, dev: &str, ip: Ipv4Addr) -> Result<()> {
        let Some(index) = self.link_index(dev).await? else {
            return Ok(());
        };
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.ifindex = index;
        message
            .attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        match self.handle.neighbours().del(message).execute().await {
            Ok(()) => Ok(()),
            Err(err) if errno(&err) == Some(libc::ENOENT) => Ok(()),
            Err(source) => Err(LinkError::NeighDel {
                dev: dev.to_string(),
                ip,
                source: source.into(),
            }),
        }
    }

    /// The permanent IPv4 neighbour entries on `dev` (those shoal programs).
    pub async fn neighbours(&self, dev: &str) -> Result<Vec<(Ipv4Addr, [u8; 6])>> {
        let index = self.require_index(dev).await?;
        let entries: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet)
            .execute()
            .try_collect()
            .await
            .map_err(|source| LinkError::ListNeighbours {
                dev: dev.to_string(),
                source: source.into(),
            })?;
        Ok(entries
            .iter()
            .filter(|entry| {
                entry.header.ifindex == index && entry.header.state == NeighbourState::Permanent
            })
            .filter_map(|entry| Some((neigh_ipv4(entry)?, neigh_mac(entry)?)))
            .collect())
    }

    /// Sets the VXLAN forwarding entry `mac` -> remote VTEP `dst` on `dev` (`bridge fdb
    /// replace MAC dev DEV dst DST self permanent`), replacing any.
    pub async fn fdb_replace(&self, dev: &str, mac: [u8; 6], dst: Ipv4Addr) -> Result<()> {
        let index = self.require_index(dev).await?;
        let mut request = self
            .handle
            .neighbours()
            .add_bridge(index, &mac)
            // NTF_SELF: the entry belongs to the VXLAN device's own table, not the bridge's.
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace();
        request
            .message_mut()
            .attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
        request
            .execute()
            .await
            .map_err(|source| LinkError::FdbReplace {
                dev: dev.to_string(),
                mac,
                dst,
                source: source.into(),
            })
    }

    /// Deletes the forwarding entry for `mac` on `dev` (every destination of it); a missing
    /// entry (or device) is Ok.
    pub async fn fdb_del(&self, dev: &str, mac: [u8; 6]) -> Result<()> {
        let Some(index) = self.link_index(dev).await? else {
            return Ok(());
        };
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Bridge;
        message.header.ifindex = index;
        message.header.flags = NeighbourFlags::Own;
        message
            .attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        match self.handle.neighbours().del(message).execute().await {
            Ok(()) => Ok(()),
            Err(err) if errno(&err) == Some(libc::ENOENT) => Ok(()),
            Err(source) => Err(LinkError::FdbDel {
                dev: dev.to_string(),
                mac,
                source: source.into(),
            }),
        }
    }

    /// The forwarding entries on `dev` that carry a remote destination (those shoal
    /// programs), as (MAC, VTEP address).
    pub async fn fdb_entries(&self, dev: &str) -> Result<Vec<([u8; 6], Ipv4Addr)>> {
        let index = self.require_index(dev).await?;
        let entries: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute()
            .try_collect()
            .await
            .map_err(|source| LinkError::ListFdb {
                dev: dev.to_string(),
                source: source.into(),
            })?;
        Ok(entries
            .iter()
            .filter(|entry| entry.header.ifindex == index)
            .filter_map(|entry| Some((neigh_mac(entry)?, neigh_ipv4(entry)?)))
            .collect())
    }

    /// MTU of the interface this namespace routes `dst` through: the underlay, from which a
    /// VXLAN device's MTU is that minus 50 (its IPv4 + UDP + VXLAN + inner Ethernet headers).
    pub async fn mtu_towards(&self, dst: Ipv4Addr) -> Result<u32> {
        let query = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, 32)
            .build();
        let routes: Vec<_> = self
            .handle
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(|source| LinkError::RouteGet {
                dst,
                source: source.into(),
            })?;
        let oif = routes
            .iter()
            .flat_map(|route| &route.attributes)
            .find_map(|attr| match attr {
                RouteAttribute::Oif(index) => Some(*index),
                _ => None,
            })
            .ok_or(LinkError::NoRouteMtu { dst })?;
        let mut links = self.handle.link().get().match_index(oif).execute();
        let link = links
            .try_next()
            .await
            .map_err(|source| LinkError::RouteGet {
                dst,
                source: source.into(),
            })?
            .ok_or(LinkError::NoRouteMtu { dst })?;
        link.attributes
            .iter()
            .find_map(|attr| match attr {
                LinkAttribute::Mtu(mtu) => Some(*mtu),
                _ => None,
            })
            .ok_or(LinkError::NoRouteMtu { dst })
    }
}

fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::IfName(name) => Some(name.as_str()),
        _ => None,
    })
}

fn link_infos(link: &LinkMessage) -> impl Iterator<Item = &LinkInfo> {
    link.attributes
        .iter()
        .filter_map(|attr| match attr {
            LinkAttribute::LinkInfo(infos) => Some(infos),
            _ => None,
        })
        .flatten()
}

fn info_kind(link: &LinkMessage) -> Option<&InfoKind> {
    link_infos(link).find_map(|info| match info {
        LinkInfo::Kind(kind) => Some(kind),
        _ => None,
    })
}

/// Whether `link` is a VXLAN device with exactly the settings [`Netlink::ensure_vxlan`] makes.
fn vxlan_matches(link: &LinkMessage, vni: u32, port: u16) -> bool {
    if info_kind(link) != Some(&InfoKind::Vxlan) {
        return false;
    }
    let Some(data) = link_infos(link).find_map(|info| match info {
        LinkInfo::Data(InfoData::Vxlan(data)) => Some(data),
        _ => None,
    }) else {
        return false;
    };
    let (mut id_ok, mut port_ok, mut learning_off, mut proxy_on) = (false, false, false, false);
    for attr in data {
        match attr {
            InfoVxlan::Id(id) => id_ok = *id == vni,
            InfoVxlan::Port(p) => port_ok = *p == port,
            InfoVxlan::Learning(on) => learning_off = !on,
            InfoVxlan::Proxy(on) => proxy_on = *on,
            _ => {}
        }
    }
    id_ok && port_ok && learning_off && proxy_on
}

/// The IPv4 `NDA_DST` of a neighbour or FDB entry. FDB dumps are `AF_BRIDGE`, so the address
/// arrives unparsed and is taken when it is four bytes long.
fn neigh_ipv4(entry: &NeighbourMessage) -> Option<Ipv4Addr> {
    entry.attributes.iter().find_map(|attr| match attr {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => {
            <[u8; 4]>::try_from(bytes.as_slice())
                .ok()
                .map(Ipv4Addr::from)
        }
        _ => None,
    })
}

fn neigh_mac(entry: &NeighbourMessage) -> Option<[u8; 6]> {
    entry.attributes.iter().find_map(|attr| match attr {
        NeighbourAttribute::LinkLayerAddress(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_follows_the_address() {
        assert_eq!(
            mac_for(Ipv4Addr::new(10, 0, 1, 2)),
            [0x02, 0x42, 10, 0, 1, 2]
        );
        assert_eq!(
            fmt_mac(&mac_for(Ipv4Addr::new(198, 19, 42, 255))),
            "02:42:c6:13:2a:ff"
        );
    }
}
