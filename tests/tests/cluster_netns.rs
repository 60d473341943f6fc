//! The one-machine cluster's plumbing (`deploy/cluster.sh` through `shoal_tests::cluster`),
//! without a swarm: each node's daemon answers on its own socket and data root, has its own
//! hostname and address, the nodes reach each other over the lab bridge, the host namespace
//! is not connected to them, a killed daemon starts again in place, and dropping the cluster
//! leaves no namespace, directory or process behind.

use std::fs;
use std::path::Path;
use std::process::Command;

use shoal_tests::cluster::{self, Cluster};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `ip ARGS…` in the host namespace and returns its stdout.
fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

/// `ping` from iputils when installed, else busybox's (busybox-static is in CI's packages).
fn ping(addr: &str) -> Vec<String> {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("ping").is_file()));
    let mut cmd: Vec<String> = if on_path {
        vec!["ping".into()]
    } else {
        vec!["/bin/busybox".into(), "ping".into()]
    };
    cmd.extend(["-c1", "-W1", addr].map(String::from));
    cmd
}

/// Pids of processes whose command line mentions `path`.
fn processes_mentioning(path: &Path) -> Vec<String> {
    let needle = path.as_os_str().as_encoded_bytes();
    fs::read_dir("/proc")
        .expect("read /proc")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| {
            let cmdline = fs::read(e.path().join("cmdline")).ok()?;
            cmdline
                .windows(needle.len())
                .any(|w| w == needle)
                .then(|| text(&cmdline).replace('\0', " "))
        })
        .collect()
}

#[test]
fn nodes_are_isolated_namespaces_on_one_bridge() {
    if !cluster::can_run() {
        return;
    }
    let cluster = Cluster::up_no_swarm(3);
    let nodes = cluster.nodes();
    assert_eq!(nodes, ["manager1", "manager2", "manager3"]);
    let subnet = cluster.subnet().to_string();

    for (i, node) in nodes.iter().enumerate() {
        // Each answers on its own socket, from its own data root.
        let version = cluster.shoal_ok(node, &["version"]);
        let root = cluster.data_root(node);
        assert!(
            version.contains(&root.display().to_string()),
            "{node} does not report data root {}:\n{version}",
            root.display()
        );
        assert_eq!(cluster.exec_ok(node, &["hostname"]).trim(), node.as_str());
        assert_eq!(cluster.addr(node), format!("{subnet}.{}", 11 + i));
        let addrs = cluster.exec_ok(node, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
        assert!(
            addrs.contains(&format!("{}/24", cluster.addr(node))),
            "{node}: {addrs}"
        );
        // Nothing leaves a node: no default route, only the cluster's own /24.
        let routes = cluster.exec_ok(node, &["ip", "-4", "route", "show"]);
        assert!(
            !routes.contains("default"),
            "{node} has a default route:\n{routes}"
        );
    }

    let ping_2 = ping(&cluster.addr(&nodes[1]));
    let ping_2: Vec<&str> = ping_2.iter().map(String::as_str).collect();
    let out = cluster.exec(&nodes[0], &ping_2);
    assert!(
        out.status.success(),
        "{} cannot ping {}:\n{}{}",
        nodes[0],
        cluster.addr(&nodes[1]),
        text(&out.stdout),
        text(&out.stderr)
    );

    // The host namespace is not connected: no address or route of its own in the subnet and
    // no veth into any of the cluster's namespaces (the only way in would be the default
    // route, which leads off the machine; no packet is sent to check that).
    let host_addrs = ip(&["-o", "addr", "show", "to", &format!("{subnet}.0/24")]);
    assert_eq!(
        host_addrs.trim(),
        "",
        "the host has an address in {subnet}.0/24"
    );
    let host_routes = ip(&[
        "route",
        "show",
        "table",
        "all",
        "to",
        "match",
        &cluster.addr(&nodes[0]),
    ]);
    for route in host_routes.lines() {
        assert!(
            route.starts_with("default"),
            "the host has a route to {subnet}.0/24: {route}"
        );
    }
    let host_links = ip(&["-o", "link", "show"]);
    assert!(
        !host_links.contains(&format!("link-netns {}-", cluster.name())),
        "a host interface leads into the cluster:\n{host_links}"
    );
    // The lab holds only the bridge and the nodes' veth ends: no address, so no route.
    let lab = cluster.lab_netns();
    assert_eq!(
        ip(&["-n", &lab, "-o", "addr", "show", "scope", "global"]).trim(),
        ""
    );
    assert_eq!(
        ip(&["-n", &lab, "route", "show", "table", "all"]).trim(),
        ""
    );

    // A killed daemon comes back on the same data root, namespaces and hostname.
    let node = &nodes[1];
    let before = cluster.pid(node).expect("manager2's shoald runs");
    cluster.kill(node);
    assert_eq!(cluster.pid(node), None, "{node}'s shoald survived kill");
    assert!(!cluster.shoal(node, &["version"]).status.success());
    cluster.start(node);
    assert_ne!(cluster.pid(node), Some(before));
    assert!(cluster
        .shoal_ok(node, &["version"])
        .contains(&cluster.data_root(node).display().to_string()));
    assert_eq!(cluster.exec_ok(node, &["hostname"]).trim(), node.as_str());

    let name = cluster.name().to_string();
    let state_dir = cluster.state_dir().to_path_buf();
    drop(cluster);

    let netns = ip(&["netns", "list"]);
    let prefix = format!("{name}-");
    let left: Vec<&str> = netns.lines().filter(|l| l.starts_with(&prefix)).collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    assert!(!state_dir.exists(), "{} is left", state_dir.display());
    let procs = processes_mentioning(&state_dir);
    assert!(procs.is_empty(), "processes left: {procs:?}");
}
