//! Node-local bridge networks end to end (issue 5), on two `shoald`s in network namespaces
//! that form no swarm: node A runs the containers, node B is the outside world (a client of
//! A's published ports, and a server A's containers reach through outbound NAT; B has no
//! route to A's bridges, so a reply reaching a container proves the NAT).
//!
//! Covered: the default `bridge` network with `-p HOST:CONTAINER` and `-p CONTAINER` (a
//! picked port), from another node and from the node itself (127.0.0.1 and its own
//! address); outbound NAT; a user-defined network whose containers find each other by name
//! through the embedded DNS; isolation between bridges; `--internal`; Docker's errors for a
//! taken port, removing a network in use or a predefined one; a daemon killed with SIGKILL
//! finds its endpoints again; and nothing is left once containers and networks are gone.

use std::time::Duration;

use shoal_tests::cluster::{self, Cluster};
use shoal_tests::swarm_util::*;

/// httpd answering with the container's hostname.
const WHOAMI: [&str; 3] = [
    "sh",
    "-c",
    "hostname > /var/www/index.html; exec httpd -f -p 80 -h /var/www",
];

fn curl(c: &Cluster, from: &str, url: &str) -> Option<String> {
    let out = c.exec(from, &["curl", "-s", "--max-time", "3", url]);
    out.status
        .success()
        .then(|| text(&out.stdout).trim().to_string())
}

/// Runs a container in the foreground with `--rm` on `node` and returns its output, or
/// `None` when it failed.
fn run_rm(c: &Cluster, node: &str, args: &[&str]) -> Option<String> {
    let mut all = vec!["container", "run", "--rm"];
    all.extend(args);
    let out = c.shoal(node, &all);
    out.status
        .success()
        .then(|| text(&out.stdout).trim().to_string())
}

/// `wget URL` in a fresh `--rm` container (on `network`, the default bridge when `None`):
/// the body, or `None` when it failed. `timeout` runs under a shell because pid 1 ignores
/// the SIGTERM it sends (`|| exit 1` keeps the shell from exec'ing it).
fn wget_rm(c: &Cluster, node: &str, network: Option<&str>, url: &str) -> Option<String> {
    let script = format!("timeout 3 wget -qO- {url} || exit 1");
    let mut args = Vec::new();
    if let Some(network) = network {
        args.extend(["--network", network]);
    }
    args.extend(["demo:latest", "sh", "-c", script.as_str()]);
    run_rm(c, node, &args)
}

fn run_d(c: &Cluster, node: &str, args: &[&str]) -> String {
    let mut all = vec!["container", "run", "-d"];
    all.extend(args);
    c.shoal_ok(node, &all).trim().to_string()
}

/// The `(IPAddress, NetworkMode, HostPort of 80/tcp)` `inspect` shows.
fn inspect_net(c: &Cluster, node: &str, name: &str) -> (String, String, String) {
    let doc: serde_json::Value =
        serde_json::from_str(&c.shoal_ok(node, &["container", "inspect", name]))
            .expect("inspect prints JSON");
    let doc = doc.get(0).cloned().unwrap_or(doc);
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    (
        s(&doc["NetworkSettings"]["IPAddress"]),
        s(&doc["HostConfig"]["NetworkMode"]),
        s(&doc["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"]),
    )
}

fn links(c: &Cluster, node: &str) -> Vec<String> {
    c.exec_ok(node, &["ip", "-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

#[test]
fn local_bridge_networks() {
    if !cluster::can_run() {
        eprintln!("skipped: needs root, ip and nsenter");
        return;
    }
    let c = Cluster::up_no_swarm(2);
    let nodes = c.nodes();
    let (a, b) = (nodes[0].as_str(), nodes[1].as_str());
    import_demo(&c, &[a, b]);
    let a_addr = c.addr(a);
    let b_addr = c.addr(b);

    // The default bridge, a fixed and a picked port.
    let web = run_d(
        &c,
        a,
        &[
            "--name",
            "web",
            "-p",
            "8080:80",
            "demo:latest",
            "sh",
            "-c",
            WHOAMI[2],
        ],
    );
    let web_host: String = web.chars().take(12).collect();
    let (web_ip, mode, port) = inspect_net(&c, a, "web");
    assert!(web_ip.starts_with("172.17."), "web's address: {web_ip}");
    assert_eq!(mode, "bridge");
    assert_eq!(port, "8080");
    let ls = c.shoal_ok(a, &["container", "ls"]);
    assert!(ls.contains("0.0.0.0:8080->80/tcp"), "PORTS column:\n{ls}");

    let url = format!("http://{a_addr}:8080/");
    let got = wait_until(Duration::from_secs(10), "web on A's published port", || {
        curl(&c, b, &url).ok_or_else(|| "no answer".to_string())
    });
    assert_eq!(got, web_host, "from another node");
    assert_eq!(
        curl(&c, a, &url).as_deref(),
        Some(web_host.as_str()),
        "from A itself"
    );
    assert_eq!(
        curl(&c, a, "http://127.0.0.1:8080/").as_deref(),
        Some(web_host.as_str()),
        "from A through 127.0.0.1"
    );

    run_d(
        &c,
        a,
        &[
            "--name",
            "picked",
            "-p",
            "80",
            "demo:latest",
            "sh",
            "-c",
            WHOAMI[2],
        ],
    );
    let (_, _, picked) = inspect_net(&c, a, "picked");
    let picked_port: u16 = picked.parse().expect("a picked host port");
    assert!(picked_port >= 32768, "picked port {picked_port}");
    wait_until(Duration::from_secs(10), "the picked port", || {
        curl(&c, b, &format!("http://{a_addr}:{picked_port}/")).ok_or_else(|| "no answer".into())
    });

    // A taken port is refused at once, and no container is left of the attempt.
    let out = c.shoal(
        a,
        &[
            "container",
            "run",
            "-d",
            "--name",
            "clash",
            "-p",
            "8080:80",
            "demo:latest",
        ],
    );
    fails_with(
        &out,
        "a second container on 8080",
        "port is already allocated",
    );
    let all = c.shoal_ok(a, &["container", "ls", "-a"]);
    assert!(
        !all.contains("clash"),
        "the refused container exists:\n{all}"
    );

    // Outbound NAT: B serves, A's container reaches it (B has no route back to 172.17/16).
    run_d(
        &c,
        b,
        &[
            "--name",
            "outside",
            "--network",
            "host",
            "demo:latest",
            "sh",
            "-c",
            "echo outside > /tmp/i.html; exec httpd -f -p 8181 -h /tmp",
        ],
    );
    let outbound = format!("http://{b_addr}:8181/i.html");
    let got = wait_until(Duration::from_secs(10), "outbound NAT to B", || {
        wget_rm(&c, a, None, &outbound).ok_or_else(|| "no answer".into())
    });
    assert_eq!(got, "outside");

    // A user-defined network: names resolve; the default bridge cannot reach it.
    c.shoal_ok(a, &["network", "create", "appnet"]);
    let nets = c.shoal_ok(a, &["network", "ls"]);
    for name in ["appnet", "bridge", "host", "none"] {
        assert!(nets.contains(name), "network ls lacks {name}:\n{nets}");
    }
    let db = run_d(
        &c,
        a,
        &[
            "--name",
            "db",
            "--network",
            "appnet",
            "demo:latest",
            "sh",
            "-c",
            WHOAMI[2],
        ],
    );
    let db_host: String = db.chars().take(12).collect();
    let (db_ip, mode, _) = inspect_net(&c, a, "db");
    assert_eq!(mode, "appnet");
    assert!(
        !db_ip.starts_with("172.17."),
        "appnet's address {db_ip} is on the default bridge"
    );
    let got = wait_until(Duration::from_secs(10), "db by name on appnet", || {
        wget_rm(&c, a, Some("appnet"), "http://db/").ok_or_else(|| "no answer".into())
    });
    assert_eq!(got, db_host);
    assert!(
        wget_rm(&c, a, None, &format!("http://{db_ip}/")).is_none(),
        "the default bridge reached appnet's container"
    );
    assert!(
        run_rm(&c, a, &["demo:latest", "nslookup", "db"]).is_none_or(|o| !o.contains(&db_ip)),
        "the default bridge resolves appnet's names"
    );

    // --internal: no way out.
    c.shoal_ok(a, &["network", "create", "--internal", "sealed"]);
    assert!(
        wget_rm(&c, a, Some("sealed"), &outbound).is_none(),
        "an internal network reached another node"
    );

    // UDP publishing renders a UDP rule (the demo image has no UDP server to answer).
    run_d(
        &c,
        a,
        &[
            "--name",
            "udp",
            "-p",
            "5353:53/udp",
            "demo:latest",
            "sleep",
            "1000",
        ],
    );
    let table = c.exec_ok(a, &["nft", "list", "table", "ip", "shoal"]);
    assert!(table.contains("udp dport 5353"), "no UDP rule:\n{table}");

    // Docker's refusals.
    fails_with(
        &c.shoal(a, &["network", "rm", "appnet"]),
        "rm of a network in use",
        "active endpoints",
    );
    fails_with(
        &c.shoal(a, &["network", "rm", "bridge"]),
        "rm of bridge",
        "pre-defined",
    );
    fails_with(
        &c.shoal(a, &["network", "create", "appnet"]),
        "a second appnet",
        "already exists",
    );
    fails_with(
        &c.shoal(
            a,
            &[
                "network",
                "create",
                "--subnet",
                "172.17.9.0/24",
                "overlapping",
            ],
        ),
        "an overlapping subnet",
        "overlaps",
    );
    fails_with(
        &c.shoal(
            a,
            &[
                "container",
                "run",
                "--rm",
                "-p",
                "80:80",
                "--network",
                "host",
                "demo:latest",
                "true",
            ],
        ),
        "-p with host networking",
        "conflicting options",
    );

    // A daemon killed with SIGKILL finds its endpoints again.
    c.kill(a);
    c.start(a);
    assert_eq!(
        curl(&c, b, &url).as_deref(),
        Some(web_host.as_str()),
        "after a restart"
    );
    let got = wait_until(
        Duration::from_secs(10),
        "db by name after a restart",
        || wget_rm(&c, a, Some("appnet"), "http://db/").ok_or_else(|| "no answer".into()),
    );
    assert_eq!(got, db_host);

    // Everything goes with the containers and networks.
    for name in ["web", "picked", "db", "udp"] {
        c.shoal_ok(a, &["container", "rm", "-f", name]);
    }
    c.shoal_ok(b, &["container", "rm", "-f", "outside"]);
    c.shoal_ok(a, &["network", "rm", "appnet", "sealed"]);
    let left: Vec<String> = links(&c, a)
        .into_iter()
        .filter(|l| l.starts_with("sl") || l.starts_with("sbl-"))
        .collect();
    assert!(left.is_empty(), "links left on {a}: {left:?}");
    let tables = c.exec_ok(a, &["nft", "list", "tables"]);
    assert!(
        !tables.contains("ip shoal"),
        "the nft table is left on {a}:\n{tables}"
    );
    assert!(
        curl(&c, b, &url).is_none(),
        "the published port still answers after its container was removed"
    );
    let endpoints = c.data_root(a).join("networks/endpoints");
    let files: Vec<_> = std::fs::read_dir(&endpoints)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(files.is_empty(), "endpoint files left: {files:?}");
}
