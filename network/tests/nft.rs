//! Root tests for `shoal_network::nft`: rulesets applied with the real `nft` inside throwaway
//! network namespaces, and traffic that only ever stays inside those namespaces
//! (198.18.0.0/15 addresses on a veth pair).
//!
//! They need root (CAP_NET_ADMIN and `ip netns`). Outside CI they skip loudly without it;
//! under `CI=true` a missing privilege fails them.

#![allow(clippy::unwrap_used)] // a failed unwrap is the test's assertion

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nftables::schema::{NfCmd, NfListObject, NfObject, Rule};
use nftables::stmt::Statement;
use nftables::types::NfFamily;
use nix::sched::CloneFlags;
use serial_test::serial;
use shoal_network::nft::{self, NftError, NodeRules, PortRule, Protocol, Vip};

/// How long a test waits for an answer that should come at once on a local link.
const REPLY_TIMEOUT: Duration = Duration::from_secs(3);

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "nft root tests need root under CI"
    );
    eprintln!("SKIPPED: nft root tests need root");
    false
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A network namespace for one test, deleted on drop (also when the test panics), which takes
/// its links, addresses, sockets' routes and nft tables with it.
struct TestNetns {
    name: String,
}

impl TestNetns {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "shoal-nft-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        let ns = TestNetns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    fn nft(&self, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", &self.name, "nft"];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// A veth pair `v0`/`v1`, both ends in this namespace and up, with `addrs` (each a /24) on
    /// `v0`. (This kernel has no dummy links.)
    fn with_link(self, addrs: &[&str]) -> Self {
        self.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
        for addr in addrs {
            self.ip(&["addr", "add", &format!("{addr}/24"), "dev", "v0"]);
        }
        self.ip(&["link", "set", "v0", "up"]);
        self.ip(&["link", "set", "v1", "up"]);
        self
    }

    /// Runs `f` on a thread that has entered this namespace, so every socket it opens lives
    /// there; the test's own threads never change namespace.
    fn run_inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = File::open(self.path()).unwrap();
        std::thread::spawn(move || {
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        match out {
            Ok(out) if out.status.success() => {}
            other => eprintln!("cleanup: ip netns del {} failed: {other:?}", self.name),
        }
    }
}

fn addr(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn tcp_port(port: u16, target_port: u16, backends: &[&str]) -> PortRule {
    PortRule {
        protocol: Protocol::Tcp,
        port,
        target_port,
        backends: backends.iter().map(|b| addr(b)).collect(),
    }
}

/// Every rule's statements in `chain` of the listed table, as nft reports them.
fn listed_rules(table: &nftables::schema::Nftables<'_>, chain: &str) -> Vec<String> {
    table
        .objects
        .iter()
        .filter_map(|object| match object {
            NfObject::ListObject(NfListObject::Rule(rule)) if rule.chain == chain => {
                Some(serde_json::to_string(&rule.expr).unwrap())
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
#[serial]
async fn nft_apply_lists_replaces_and_deletes_only_its_table() {
    if !is_root() {
        return;
    }
    let ns = TestNetns::new();
    let netns = ns.path();
    ns.nft(&["add", "table", "ip", "other"]);

    let first = NodeRules {
        ports: vec![tcp_port(8080, 8000, &["198.18.0.2"])],
        ..NodeRules::default()
    };
    nft::apply(&nft::node_ruleset(&first), Some(&netns))
        .await
        .unwrap();
    let listed = nft::list_table(Some(&netns)).await.unwrap().unwrap();
    let published = listed_rules(&listed, "published");
    assert_eq!(published.len(), 1, "{published:?}");
    assert!(published[0].contains("198.18.0.2"), "{published:?}");
    let text = ns.nft(&["list", "table", "ip", "shoal"]);
    assert!(
        text.contains("tcp dport 8080 dnat to numgen inc mod 1 map { 0 : 198.18.0.2 }:8000"),
        "{text}"
    );
    let json = ns.nft(&["-j", "list", "table", "ip", "shoal"]);
    assert!(json.contains("\"numgen\""), "{json}");

    // A second apply replaces the rules instead of adding to them.
    let second = NodeRules {
        ports: vec![tcp_port(8080, 8000, &["198.18.0.3", "198.18.0.4"])],
        ..NodeRules::default()
    };
    nft::apply(&nft::node_ruleset(&second), Some(&netns))
        .await
        .unwrap();
    let listed = nft::list_table(Some(&netns)).await.unwrap().unwrap();
    let published = listed_rules(&listed, "published");
    assert_eq!(published.len(), 1, "{published:?}");
    assert!(
        published[0].contains("198.18.0.3") && published[0].contains("198.18.0.4"),
        "{published:?}"
    );
    assert!(!published[0].contains("198.18.0.2"), "{published:?}");
    assert_eq!(listed_rules(&listed, "prerouting").len(), 1);

    nft::delete_table(Some(&netns)).await.unwrap();
    assert!(nft::list_table(Some(&netns)).await.unwrap().is_none());
    // Deleting an absent table is not an error.
    nft::delete_table(Some(&netns)).await.unwrap();
    let tables = ns.nft(&["list", "tables"]);
    assert_eq!(
        tables.trim(),
        "table ip other",
        "other tables are untouched"
    );
}

#[tokio::test]
#[serial]
async fn nft_refused_apply_keeps_previous_rules() {
    if !is_root() {
        return;
    }
    let ns = TestNetns::new();
    let netns = ns.path();
    let good = NodeRules {
        ports: vec![tcp_port(8080, 8000, &["198.18.0.2"])],
        ..NodeRules::default()
    };
    nft::apply(&nft::node_ruleset(&good), Some(&netns))
        .await
        .unwrap();

    // A replacement whose last rule names a chain that does not exist: nft refuses the whole
    // transaction, including the delete of the old table at its start.
    let replacement = NodeRules::default();
    let mut objects = nft::node_ruleset(&replacement).objects.into_owned();
    objects.push(NfObject::CmdObject(NfCmd::Add(NfListObject::Rule(Rule {
        family: NfFamily::IP,
        table: nft::TABLE.into(),
        chain: "no-such-chain".into(),
        expr: vec![Statement::Accept(None)].into(),
        ..Rule::default()
    }))));
    let bad = nftables::schema::Nftables {
        objects: objects.into(),
    };
    let err = nft::apply(&bad, Some(&netns)).await.unwrap_err();
    match &err {
        NftError::Failed {
            stderr, netns: n, ..
        } => {
            assert!(!stderr.is_empty());
            assert_eq!(n.as_deref(), Some(netns.as_path()));
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    let listed = nft::list_table(Some(&netns)).await.unwrap().unwrap();
    let published = listed_rules(&listed, "published");
    assert_eq!(
        published.len(),
        1,
        "old rules still in force: {published:?}"
    );
    assert!(published[0].contains("198.18.0.2"));
}

#[tokio::test]
#[serial]
async fn nft_missing_namespace_is_reported() {
    if !is_root() {
        return;
    }
    let path = PathBuf::from(format!(
        "/run/netns/shoal-nft-test-missing-{}",
        std::process::id()
    ));
    let err = nft::delete_table(Some(&path)).await.unwrap_err();
    match err {
        NftError::OpenNetns { path: p, .. } => assert_eq!(p, path),
        other => panic!("expected OpenNetns, got {other:?}"),
    }
}

/// Which backend address served each of `count` connections to `target`.
fn backends_reached(target: SocketAddr, count: usize) -> BTreeMap<Ipv4Addr, usize> {
    let listener = TcpListener::bind("0.0.0.0:8000").unwrap();
    let mut seen = BTreeMap::new();
    for _ in 0..count {
        let mut client = TcpStream::connect_timeout(&target, REPLY_TIMEOUT).unwrap();
        let (mut served, _) = listener.accept().unwrap();
        let std::net::IpAddr::V4(backend) = served.local_addr().unwrap().ip() else {
            panic!("IPv4 only");
        };
        *seen.entry(backend).or_insert(0) += 1;
        served.write_all(b"pong").unwrap();
        let mut reply = [0u8; 4];
        client.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        client.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"pong");
    }
    seen
}

#[tokio::test]
#[serial]
async fn nft_published_port_reaches_backends_round_robin() {
    if !is_root() {
        return;
    }
    let ns = TestNetns::new().with_link(&["198.18.0.1", "198.18.0.2", "198.18.0.3"]);
    let rules = NodeRules {
        ports: vec![
            tcp_port(8080, 8000, &["198.18.0.2", "198.18.0.3"]),
            tcp_port(8081, 8081, &[]),
            PortRule {
                protocol: Protocol::Udp,
                port: 8082,
                target_port: 8082,
                backends: vec![],
            },
        ],
        ..NodeRules::default()
    };
    nft::apply(&nft::node_ruleset(&rules), Some(&ns.path()))
        .await
        .unwrap();

    ns.run_inside(|| {
        // The nat output chain covers connections made on the node itself.
        let seen = backends_reached("198.18.0.1:8080".parse().unwrap(), 4);
        assert_eq!(
            seen,
            BTreeMap::from([(addr("198.18.0.2"), 2), (addr("198.18.0.3"), 2)]),
            "numgen inc alternates between backends"
        );

        // Something listens on the ports without backends; the rules must refuse anyway.
        let _tcp_listener = TcpListener::bind("0.0.0.0:8081").unwrap();
        let err = TcpStream::connect_timeout(&"198.18.0.1:8081".parse().unwrap(), REPLY_TIMEOUT)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");

        let _udp_listener = UdpSocket::bind("0.0.0.0:8082").unwrap();
        let client = UdpSocket::bind("198.18.0.1:0").unwrap();
        client.connect("198.18.0.1:8082").unwrap();
        client.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        client.send(b"ping").unwrap();
        let err = client.recv(&mut [0u8; 16]).unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::ConnectionRefused,
            "ICMP port unreachable: {err}"
        );
    });
}

#[tokio::test]
#[serial]
async fn nft_vip_reaches_backend_and_empty_vip_refuses() {
    if !is_root() {
        return;
    }
    let ns = TestNetns::new().with_link(&["198.18.0.1", "198.18.0.2"]);
    // The VIPs are on no interface; a route makes them reachable so the output hook sees them.
    ns.ip(&["route", "add", "198.18.1.0/24", "dev", "v0"]);
    let vips = [
        Vip {
            addr: addr("198.18.1.10"),
            backends: vec![addr("198.18.0.2")],
        },
        Vip {
            addr: addr("198.18.1.11"),
            backends: vec![],
        },
    ];
    nft::apply(&nft::vip_ruleset(&vips), Some(&ns.path()))
        .await
        .unwrap();

    ns.run_inside(|| {
        // The port is kept: the VIP's 8000 is the backend's 8000.
        let seen = backends_reached("198.18.1.10:8000".parse().unwrap(), 2);
        assert_eq!(seen, BTreeMap::from([(addr("198.18.0.2"), 2)]));

        let err = TcpStream::connect_timeout(&"198.18.1.11:8000".parse().unwrap(), REPLY_TIMEOUT)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    });
}

#[tokio::test]
#[serial]
async fn nft_finds_other_tables_dropping_forwarded_packets() {
    if !is_root() {
        return;
    }
    let ns = TestNetns::new();
    let netns = ns.path();
    // shoal's own table accepts by policy; a table with an accepting forward chain is fine.
    nft::apply(&nft::node_ruleset(&NodeRules::default()), Some(&netns))
        .await
        .unwrap();
    ns.nft(&["add", "table", "inet", "fine"]);
    ns.nft(&[
        "add",
        "chain",
        "inet",
        "fine",
        "forwarding",
        "{ type filter hook forward priority 0; policy accept; }",
    ]);
    assert!(nft::foreign_forward_drops(Some(&netns))
        .await
        .unwrap()
        .is_empty());
    // What `iptables -P FORWARD DROP` (iptables-nft) leaves.
    ns.nft(&["add", "table", "ip", "filter"]);
    ns.nft(&[
        "add",
        "chain",
        "ip",
        "filter",
        "FORWARD",
        "{ type filter hook forward priority 0; policy drop; }",
    ]);
    assert_eq!(
        nft::foreign_forward_drops(Some(&netns)).await.unwrap(),
        vec!["ip filter/FORWARD".to_string()]
    );
}
