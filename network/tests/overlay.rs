//! Root tests of `netns` and `link` against the real kernel: namespaces, the overlay data path
//! between two simulated nodes (VXLAN + a macvlan per task + static FDB/neighbour entries),
//! and cleanup.
//!
//! Every namespace lives under `/run/shoal-test-netns/<test>-<pid>` and is removed by a guard,
//! also when a test fails. Traffic stays inside those namespaces: the underlay uses
//! 198.18.250.0/24 and the overlay 198.19.42.0/24 (both in the 198.18.0.0/15 test range).

#![allow(clippy::unwrap_used)] // a failed unwrap is the test's assertion

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use serial_test::serial;
use shoal_network::link::{mac_for, LinkError, Netlink};
use shoal_network::netns::{self, NetNs, NetnsError};

const NODE1: Ipv4Addr = Ipv4Addr::new(198, 18, 250, 1);
const NODE2: Ipv4Addr = Ipv4Addr::new(198, 18, 250, 2);
const TASK1: Ipv4Addr = Ipv4Addr::new(198, 19, 42, 2);
const TASK2: Ipv4Addr = Ipv4Addr::new(198, 19, 42, 3);
const VNI: u32 = 4242;
const VXLAN_PORT: u16 = 4789;
const BRIDGE: &str = "shbr-test";
const VXLAN: &str = "shvx-test";

/// Fails (under CI) or skips (elsewhere, loudly) when not root.
fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("these tests need root, and CI runs as root");
    }
    eprintln!("SKIPPED: not root");
    false
}

/// A directory of test namespaces, all unmounted and removed on drop.
struct Lab {
    dir: PathBuf,
}

impl Lab {
    fn new(test: &str) -> Lab {
        let dir = Path::new("/run/shoal-test-netns").join(format!("{test}-{}", std::process::id()));
        let lab = Lab { dir };
        lab.sweep();
        std::fs::create_dir_all(&lab.dir).unwrap();
        lab
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn ns(&self, name: &str) -> NetNs {
        NetNs::create(&self.path(name)).unwrap()
    }

    fn sweep(&self) {
        sweep_dir(&self.dir);
    }
}

/// Removes every namespace file under `dir`, then the (now empty) directories.
fn sweep_dir(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_dir = std::fs::symlink_metadata(&path).is_ok_and(|meta| meta.is_dir());
        if is_dir {
            sweep_dir(&path);
        } else if let Err(err) = NetNs::remove(&path) {
            eprintln!("cleanup: {err}");
        }
    }
    if let Err(err) = std::fs::remove_dir(dir) {
        eprintln!("cleanup: remove {}: {err}", dir.display());
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.sweep();
    }
}

/// (device, inode) of a namespace file: equal pairs are the same namespace.
fn ns_id(path: &Path) -> (u64, u64) {
    let stat = nix::sys::stat::stat(path).unwrap();
    (stat.st_dev, stat.st_ino)
}

/// Builds a node's overlay: VXLAN towards `remote`, a task macvlan with `task_ip`.
async fn build_node(node: &Netlink, task: &NetNs, task_ip: Ipv4Addr, remote: Ipv4Addr) -> Netlink {
    let underlay_mtu = node.mtu_towards(remote).await.unwrap();
    assert_eq!(underlay_mtu, 1500);
    let mtu = underlay_mtu - 50;
    node.ensure_vxlan(VXLAN, VNI, VXLAN_PORT, mtu, None)
        .await
        .unwrap();
    node.create_macvlan("tmp-eth", VXLAN, task, mac_for(task_ip))
        .await
        .unwrap();
    let task_nl = Netlink::in_ns(task).unwrap();
    let addr = Ipv4Net::new(task_ip, 24).unwrap();
    task_nl
        .configure("tmp-eth", Some("eth0"), None, addr)
        .await
        .unwrap();
    // Repeating it (a restarted agent) finds the renamed link and changes nothing.
    task_nl
        .configure("tmp-eth", Some("eth0"), Some(mac_for(task_ip)), addr)
        .await
        .unwrap();
    task_nl.set_up("lo").await.unwrap();
    task_nl
        .add_default_route(Ipv4Addr::new(198, 19, 42, 1))
        .await
        .unwrap();
    task_nl
        .add_default_route(Ipv4Addr::new(198, 19, 42, 1))
        .await
        .unwrap();
    let mut names = task_nl.links_with_prefix("").await.unwrap();
    names.sort();
    assert_eq!(names, ["eth0", "lo"]);
    assert_eq!(
        task_nl
            .mtu_towards(Ipv4Addr::new(198, 19, 42, 9))
            .await
            .unwrap(),
        mtu,
        "a task's macvlan takes the VXLAN device's MTU"
    );
    task_nl
}

/// Programs `node` to reach the remote task `ip` behind the remote node `vtep`.
async fn add_peer(node: &Netlink, ip: Ipv4Addr, vtep: Ipv4Addr) {
    node.fdb_replace(VXLAN, mac_for(ip), vtep).await.unwrap();
    node.neigh_replace(VXLAN, ip, mac_for(ip)).await.unwrap();
    // Replacing is idempotent.
    node.fdb_replace(VXLAN, mac_for(ip), vtep).await.unwrap();
    node.neigh_replace(VXLAN, ip, mac_for(ip)).await.unwrap();
    assert_eq!(
        node.fdb_entries(VXLAN).await.unwrap(),
        [(mac_for(ip), vtep)]
    );
    assert_eq!(node.neighbours(VXLAN).await.unwrap(), [(ip, mac_for(ip))]);
}

/// Accepts one connection on `listener` within `timeout`, answers "ping" with "pong" and
/// returns the client's address.
fn serve_once(listener: TcpListener, timeout: Duration) -> std::thread::JoinHandle<SocketAddr> {
    std::thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + timeout;
        let (mut stream, peer) = loop {
            match listener.accept() {
                Ok(accepted) => break accepted,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(
                        Instant::now() < deadline,
                        "no connection within {timeout:?}"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(err) => panic!("accept: {err}"),
            }
        };
        stream.set_nonblocking(false).unwrap();
        stream.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0; 4];
        stream.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        stream.write_all(b"pong").unwrap();
        peer
    })
}

#[tokio::test]
#[serial]
async fn tasks_on_two_nodes_talk_over_the_vxlan_overlay() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("overlay");
    let (ns1, ns2) = (lab.ns("node1"), lab.ns("node2"));

    // Underlay: a veth between the two node namespaces; the peer is created inside node2
    // under the same name, which would clash if it were made in node1 first.
    let nl1 = Netlink::in_ns(&ns1).unwrap();
    let nl2 = Netlink::in_ns(&ns2).unwrap();
    nl1.create_veth("ul0", "ul0", &ns2, None, 1500)
        .await
        .unwrap();
    nl1.configure("ul0", None, None, Ipv4Net::new(NODE1, 24).unwrap())
        .await
        .unwrap();
    nl2.configure("ul0", None, None, Ipv4Net::new(NODE2, 24).unwrap())
        .await
        .unwrap();

    let (task1, task2) = (lab.ns("task1"), lab.ns("task2"));
    let _task1_nl = build_node(&nl1, &task1, TASK1, NODE2).await;
    let _task2_nl = build_node(&nl2, &task2, TASK2, NODE1).await;
    add_peer(&nl1, TASK2, NODE2).await;
    add_peer(&nl2, TASK1, NODE1).await;

    let timeout = Duration::from_secs(10);
    let listener = task2
        .run(|| TcpListener::bind((TASK2, 7000)))
        .unwrap()
        .unwrap();
    let server = serve_once(listener, timeout);
    let reply = task1
        .run(|| -> std::io::Result<[u8; 4]> {
            let mut stream = TcpStream::connect_timeout(&SocketAddr::from((TASK2, 7000)), timeout)?;
            stream.set_read_timeout(Some(timeout))?;
            stream.write_all(b"ping")?;
            let mut buf = [0; 4];
            stream.read_exact(&mut buf)?;
            Ok(buf)
        })
        .unwrap()
        .unwrap();
    assert_eq!(&reply, b"pong");
    let peer = server.join().unwrap();
    assert_eq!(
        peer.ip(),
        TASK1,
        "the overlay delivers the task's own address"
    );

    // Removing the peer leaves no entry behind; removing it again is fine.
    for _ in 0..2 {
        nl1.fdb_del(VXLAN, mac_for(TASK2)).await.unwrap();
        nl1.neigh_del(VXLAN, TASK2).await.unwrap();
    }
    assert!(nl1.fdb_entries(VXLAN).await.unwrap().is_empty());
    assert!(nl1.neighbours(VXLAN).await.unwrap().is_empty());
    // The other node's entries are untouched.
    assert_eq!(nl2.fdb_entries(VXLAN).await.unwrap().len(), 1);
}

#[tokio::test]
#[serial]
async fn links_come_and_go_without_leftovers() {
    if !require_root() {
        return;
    }
    // The process's own namespace is only read here.
    let own = Netlink::new().await.unwrap();
    assert!(own.link_index("lo").await.unwrap().is_some());
    drop(own);

    let lab = Lab::new("links");
    let host = lab.ns("host");
    let peer = lab.ns("peer");
    let nl = Netlink::in_ns(&host).unwrap();
    let peer_nl = Netlink::in_ns(&peer).unwrap();

    let bridge = nl.ensure_bridge(BRIDGE, Some(1400)).await.unwrap();
    assert_eq!(nl.ensure_bridge(BRIDGE, None).await.unwrap(), bridge);
    assert_eq!(nl.link_index(BRIDGE).await.unwrap(), Some(bridge));
    assert_eq!(nl.link_index("shnone").await.unwrap(), None);

    let vxlan = nl
        .ensure_vxlan(VXLAN, VNI, VXLAN_PORT, 1400, Some(BRIDGE))
        .await
        .unwrap();
    assert_eq!(
        nl.ensure_vxlan(VXLAN, VNI, VXLAN_PORT, 1400, Some(BRIDGE))
            .await
            .unwrap(),
        vxlan,
        "same settings keep the device"
    );
    let replaced = nl
        .ensure_vxlan(VXLAN, VNI + 1, VXLAN_PORT, 1400, Some(BRIDGE))
        .await
        .unwrap();
    assert_ne!(replaced, vxlan, "another VNI makes a new device");
    assert!(matches!(
        nl.ensure_vxlan(VXLAN, VNI, VXLAN_PORT, 1400, Some("shnone"))
            .await,
        Err(LinkError::NoSuchLink { .. })
    ));

    nl.create_veth("shveth0", "eth0", &peer, Some(BRIDGE), 1400)
        .await
        .unwrap();
    assert!(matches!(
        nl.create_veth("shveth0", "eth1", &peer, Some(BRIDGE), 1400)
            .await,
        Err(LinkError::AddVeth { .. })
    ));
    assert!(matches!(
        nl.ensure_bridge("shveth0", None).await,
        Err(LinkError::WrongKind { .. })
    ));
    nl.add_address(BRIDGE, "198.19.43.1/24".parse().unwrap())
        .await
        .unwrap();
    nl.add_address(BRIDGE, "198.19.43.1/24".parse().unwrap())
        .await
        .unwrap();

    // Macvlans on the VXLAN device: a task's end (made inside its namespace, with the
    // device's MTU) and the node's own one (kept when asked again, replaced when it sits on
    // another device).
    // A bridge port cannot carry macvlans: ensuring without a master takes it off the bridge
    // (a node upgraded from bridged overlays) and keeps the device.
    assert!(matches!(
        nl.create_macvlan("tmp-mv", VXLAN, &peer, mac_for(TASK2))
            .await,
        Err(LinkError::AddMacvlan { .. })
    ));
    assert_eq!(
        nl.ensure_vxlan(VXLAN, VNI + 1, VXLAN_PORT, 1400, None)
            .await
            .unwrap(),
        replaced
    );
    let other_vxlan = "shvx-other";
    nl.ensure_vxlan(other_vxlan, VNI + 2, VXLAN_PORT + 1, 1400, None)
        .await
        .unwrap();
    nl.create_macvlan("tmp-mv", VXLAN, &peer, mac_for(TASK2))
        .await
        .unwrap();
    assert!(matches!(
        nl.create_macvlan("tmp-mv2", "shnone", &peer, mac_for(TASK2))
            .await,
        Err(LinkError::NoSuchLink { .. })
    ));
    let own_addr = "198.19.43.2/24".parse().unwrap();
    let own = nl
        .ensure_macvlan("shown", VXLAN, mac_for(TASK1), own_addr)
        .await
        .unwrap();
    assert_eq!(
        nl.ensure_macvlan("shown", VXLAN, mac_for(TASK1), own_addr)
            .await
            .unwrap(),
        own
    );
    let moved = nl
        .ensure_macvlan("shown", other_vxlan, mac_for(TASK1), own_addr)
        .await
        .unwrap();
    assert_ne!(moved, own, "a macvlan on another device is made anew");

    let mut ours = nl.links_with_prefix("sh").await.unwrap();
    ours.sort();
    assert_eq!(ours, [BRIDGE, "shown", "shveth0", other_vxlan, VXLAN]);
    let mut peer_links = peer_nl.links_with_prefix("").await.unwrap();
    peer_links.sort();
    assert_eq!(peer_links, ["eth0", "lo", "tmp-mv"]);

    nl.delete_link(VXLAN).await.unwrap();
    assert_eq!(
        peer_nl.links_with_prefix("tmp-mv").await.unwrap(),
        Vec::<String>::new(),
        "a task's macvlan goes with its VXLAN device"
    );
    for name in [other_vxlan, "shveth0", BRIDGE] {
        nl.delete_link(name).await.unwrap();
        nl.delete_link(name).await.unwrap();
    }
    assert!(nl.links_with_prefix("sh").await.unwrap().is_empty());
    assert_eq!(nl.links_with_prefix("").await.unwrap(), ["lo"]);
    assert_eq!(
        peer_nl.links_with_prefix("").await.unwrap(),
        ["lo"],
        "deleting the host end takes the peer with it"
    );
    // Entries on a device that is gone are gone too.
    nl.fdb_del(VXLAN, mac_for(TASK1)).await.unwrap();
    nl.neigh_del(VXLAN, TASK1).await.unwrap();
}

#[test]
#[serial]
fn namespaces_are_idempotent_and_removed_cleanly() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("netns");
    let own = ns_id(Path::new("/proc/thread-self/ns/net"));
    let path = lab.path("a/b/ns");

    let ns = NetNs::create(&path).unwrap();
    assert_eq!(ns.path(), path);
    assert_eq!(
        ns_id(Path::new("/proc/thread-self/ns/net")),
        own,
        "creating leaves the caller's namespace alone"
    );
    let id = ns_id(&path);
    assert_ne!(id, own);
    let again = NetNs::create(&path).unwrap();
    assert_eq!(ns_id(&path), id, "create on a mounted namespace opens it");
    let inside = again
        .run(|| ns_id(Path::new("/proc/thread-self/ns/net")))
        .unwrap();
    assert_eq!(inside, id, "run enters the namespace");

    netns::sysctl(Some(&ns), "net/ipv4/ip_forward", "1").unwrap();
    let forward = ns
        .run(|| std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward"))
        .unwrap()
        .unwrap();
    assert_eq!(forward.trim(), "1");
    assert!(matches!(
        netns::sysctl(Some(&ns), "../../etc/passwd", "x"),
        Err(NetnsError::SysctlKey { .. })
    ));

    // An empty file (a create that died before mounting) is not a namespace, and create
    // mounts over it.
    let stale = lab.path("stale");
    std::fs::write(&stale, b"").unwrap();
    assert!(matches!(
        NetNs::open(&stale),
        Err(NetnsError::NotNamespace { .. })
    ));
    let fresh = NetNs::create(&stale).unwrap();
    assert_ne!(ns_id(&stale), id);
    drop(fresh);

    NetNs::remove(&path).unwrap();
    assert!(!path.exists());
    NetNs::remove(&path).unwrap();
    assert!(matches!(NetNs::open(&path), Err(NetnsError::Open { .. })));
    // The open fds still reach the (now unnamed) namespace.
    assert_eq!(ns.run(|| 7).unwrap(), 7);
}
