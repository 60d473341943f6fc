//! Cluster networking end to end (issue 5) on real clusters of `shoald`s in network
//! namespaces: overlay networks across nodes (by address, by service name through the VIP, by
//! `tasks.NAME`), isolation between overlays, the ingress routing mesh on every node (also one
//! without a task) balancing over every task and following scale, a killed task and a drain,
//! host-mode publishing, UDP through the mesh, clear errors for a taken port and a full subnet, and nothing left
//! behind (links, nft table, namespaces) once services and networks are gone.
//!
//! Clients are other nodes' namespaces (the lab namespace has no address): curl from node A to
//! node B's published port is a client outside B. Every task runs busybox httpd serving its
//! own hostname (the short container id), so a reply names the task that answered.

use std::collections::BTreeSet;
use std::time::Instant;

use shoal_tests::cluster::{self, Cluster};
use shoal_tests::swarm_util::*;

/// httpd answering with the container's hostname (its short id), logging each client's
/// address to the container's log (`-v`).
const WHOAMI: [&str; 3] = [
    "sh",
    "-c",
    "hostname > /var/www/index.html; exec httpd -f -v -p 80 -h /var/www",
];

/// Requests sent to see where a published port or a VIP leads.
const SAMPLES: usize = 8;

/// (id, name) of the running containers on `node`, from `container ls`.
fn container_rows(c: &Cluster, node: &str) -> Vec<(String, String)> {
    c.shoal_ok(node, &["container", "ls"])
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            Some((words.next()?.to_string(), words.next_back()?.to_string()))
        })
        .collect()
}

/// The container id of a running task of `service` on `node`.
fn task_container(c: &Cluster, node: &str, service: &str) -> String {
    let rows = container_rows(c, node);
    rows.iter()
        .find(|(_, name)| name.starts_with(&format!("{service}.")))
        .map(|(id, _)| id.clone())
        .unwrap_or_else(|| panic!("no container of {service} on {node}: {rows:?}"))
}

/// Short ids of the running containers of `service` on every node: the hostnames its tasks
/// answer with.
fn task_hostnames(c: &Cluster, service: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for node in c.nodes() {
        for (id, name) in container_rows(c, &node) {
            if name.starts_with(&format!("{service}.")) {
                names.insert(id.chars().take(12).collect());
            }
        }
    }
    names
}

fn exec_in(c: &Cluster, node: &str, container: &str, cmd: &[&str]) -> std::process::Output {
    let mut args = vec!["container", "exec", container];
    args.extend(cmd);
    c.shoal(node, &args)
}

/// `wget` inside a container: the body, or `None` when it failed.
fn wget_in(c: &Cluster, node: &str, container: &str, url: &str) -> Option<String> {
    // busybox wget segfaults with -T: bound it with timeout instead.
    let out = exec_in(c, node, container, &["timeout", "3", "wget", "-qO-", url]);
    out.status
        .success()
        .then(|| text(&out.stdout).trim().to_string())
}

/// `curl` from `from`'s namespace: the body, or `None` when it failed.
fn curl(c: &Cluster, from: &str, url: &str) -> Option<String> {
    let out = c.exec(from, &["curl", "-s", "--max-time", "3", url]);
    out.status
        .success()
        .then(|| text(&out.stdout).trim().to_string())
}

/// The hostnames `SAMPLES` requests to `addr:port` (from `from`) came back with.
fn sample(c: &Cluster, from: &str, addr: &str, port: u16) -> Result<BTreeSet<String>, String> {
    let url = format!("http://{addr}:{port}/");
    let mut seen = BTreeSet::new();
    for _ in 0..SAMPLES {
        match curl(c, from, &url) {
            Some(body) => {
                seen.insert(body);
            }
            None => return Err(format!("{from} -> {url} failed (seen so far {seen:?})")),
        }
    }
    Ok(seen)
}

/// The ingress addresses `node`'s routing-mesh rules lead to.
fn mesh_backends(c: &Cluster, node: &str) -> BTreeSet<String> {
    c.exec_ok(node, &["nft", "list", "table", "ip", "shoal"])
        .split(|ch: char| !(ch.is_ascii_digit() || ch == '.'))
        .filter(|w| w.starts_with("10.0.0.") && w.split('.').count() == 4)
        .map(str::to_string)
        .collect()
}

/// IPv4 addresses in busybox `nslookup` output (the server's own lines excluded).
fn nslookup(c: &Cluster, node: &str, container: &str, name: &str) -> BTreeSet<String> {
    let out = exec_in(c, node, container, &["nslookup", name]);
    text(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("Address:"))
        .map(str::trim)
        .filter(|a| !a.contains(':') && !a.starts_with("127."))
        .map(str::to_string)
        .collect()
}

/// Waits until no node has a shoal link, nft table or sandbox left.
fn wait_clean(c: &Cluster) {
    wait_until(CONVERGE, "no network leftovers on any node", || {
        let mut left = String::new();
        for node in c.nodes() {
            let links = c.exec_ok(&node, &["ip", "-o", "link", "show"]);
            for line in links.lines() {
                let name = line.split(':').nth(1).unwrap_or("").trim();
                let ours = ["sbr", "snd", "svx", "sv", "sg", "shoal_gwbridge"]
                    .iter()
                    .any(|p| name.starts_with(p));
                if ours {
                    left.push_str(&format!("{node}: link {name}\n"));
                }
            }
            if c.exec(&node, &["nft", "list", "table", "ip", "shoal"])
                .status
                .success()
            {
                left.push_str(&format!("{node}: nft table ip shoal\n"));
            }
            let sandboxes = c.data_root(&node).join("swarm/network");
            if let Ok(entries) = std::fs::read_dir(&sandboxes) {
                for e in entries.flatten() {
                    left.push_str(&format!("{node}: sandbox {}\n", e.path().display()));
                }
            }
        }
        if left.is_empty() {
            Ok(())
        } else {
            Err(left)
        }
    });
}

/// Two tasks on different nodes talk over an overlay by address, by service name (VIP,
/// balanced) and by `tasks.NAME`; a service on another overlay is out of reach.
#[test]
fn overlay_reaches_across_nodes_and_stays_isolated() {
    if !cluster::can_run() {
        return;
    }
    let c = Cluster::up(1, 2);
    import_demo(&c, &["manager1"]);
    c.shoal_ok("manager1", &["network", "create", "-d", "overlay", "front"]);
    c.shoal_ok("manager1", &["network", "create", "-d", "overlay", "back"]);
    create_service(
        &c,
        "manager1",
        "web",
        &["--replicas", "2", "--network", "front"],
        &WHOAMI,
    );
    let web = wait_running(&c, "manager1", "web", 2, |_| true);
    create_service(&c, "manager1", "client", &["--network", "front"], &SLEEP);
    let client = wait_running(&c, "manager1", "client", 1, |_| true);
    create_service(&c, "manager1", "other", &["--network", "back"], &WHOAMI);
    let other = wait_running(&c, "manager1", "other", 1, |_| true);

    let client_node = client[0].node.clone();
    assert!(
        web.iter().any(|t| t.node != client_node),
        "a web task must run on another node than the client:\n{}",
        show_tasks(&web)
    );
    let cid = task_container(&c, &client_node, "client");
    let hostnames = task_hostnames(&c, "web");
    assert_eq!(hostnames.len(), 2, "{hostnames:?}");

    // By address: every task, whichever node it is on.
    let addrs = wait_until(CONVERGE, "tasks.web to resolve to 2 addresses", || {
        let a = nslookup(&c, &client_node, &cid, "tasks.web");
        if a.len() == 2 {
            Ok(a)
        } else {
            Err(format!("{a:?}"))
        }
    });
    let mut by_addr = BTreeSet::new();
    for addr in &addrs {
        let body = wget_in(&c, &client_node, &cid, &format!("http://{addr}/"))
            .unwrap_or_else(|| panic!("client cannot reach web task at {addr}"));
        by_addr.insert(body);
    }
    assert_eq!(by_addr, hostnames, "each task address answers as its task");

    // By name: the VIP, balanced over both tasks.
    let vip = nslookup(&c, &client_node, &cid, "web");
    assert_eq!(vip.len(), 1, "web resolves to one VIP: {vip:?}");
    assert!(vip.is_disjoint(&addrs), "the VIP is not a task address");
    let mut by_name = BTreeSet::new();
    for _ in 0..SAMPLES {
        let body = wget_in(&c, &client_node, &cid, "http://web/").expect("web by name");
        by_name.insert(body);
    }
    assert_eq!(by_name, hostnames, "the VIP balances over every task");

    // dnsrr: the name resolves to the task addresses themselves, no VIP.
    create_service(
        &c,
        "manager1",
        "rr",
        &[
            "--replicas",
            "2",
            "--network",
            "front",
            "--endpoint-mode",
            "dnsrr",
        ],
        &WHOAMI,
    );
    wait_running(&c, "manager1", "rr", 2, |_| true);
    let rr = wait_until(CONVERGE, "rr to resolve to its 2 tasks", || {
        let by_name = nslookup(&c, &client_node, &cid, "rr");
        let tasks = nslookup(&c, &client_node, &cid, "tasks.rr");
        if by_name.len() == 2 && by_name == tasks {
            Ok(by_name)
        } else {
            Err(format!("rr {by_name:?}, tasks.rr {tasks:?}"))
        }
    });
    for addr in &rr {
        assert!(
            wget_in(&c, &client_node, &cid, &format!("http://{addr}/")).is_some(),
            "dnsrr task {addr} does not answer"
        );
    }

    // Another overlay: neither its name nor its address is reachable.
    assert!(
        nslookup(&c, &client_node, &cid, "other").is_empty(),
        "a service on another network must not resolve"
    );
    let ocid = task_container(&c, &other[0].node, "other");
    let oaddr = text(
        &exec_in(
            &c,
            &other[0].node,
            &ocid,
            &["ip", "-4", "-o", "addr", "show", "eth0"],
        )
        .stdout,
    )
    .split_whitespace()
    .nth(3)
    .and_then(|a| a.split('/').next())
    .map(str::to_string)
    .expect("other's eth0 address");
    assert!(
        wget_in(&c, &client_node, &cid, &format!("http://{oaddr}/")).is_none(),
        "a task on another overlay ({oaddr}) must be out of reach"
    );

    // A network in use cannot go; once its services are gone, nothing is left.
    fails_with(
        &c.shoal("manager1", &["network", "rm", "front"]),
        "network rm of a network in use",
        "in use by service",
    );
    c.shoal_ok(
        "manager1",
        &["service", "rm", "web", "client", "other", "rr"],
    );
    for net in ["front", "back"] {
        // Refused while the tasks are still stopping.
        wait_until(CONVERGE, &format!("network {net} to be removable"), || {
            let out = c.shoal("manager1", &["network", "rm", net]);
            if out.status.success() {
                Ok(())
            } else {
                Err(text(&out.stderr))
            }
        });
    }
    wait_clean(&c);
}

/// The routing mesh: a published port answers on every node and balances over every task,
/// follows scale, a killed task and a drain; host mode binds only where the task runs; a taken
/// port and a full subnet are errors on the command.
#[test]
fn published_ports_answer_on_every_node() {
    if !cluster::can_run() {
        return;
    }
    let c = Cluster::up(1, 2);
    import_demo(&c, &["manager1"]);
    let on_workers = ["--constraint", "node.role==worker"];
    let mut opts = vec!["--replicas", "1", "-p", "8080:80"];
    opts.extend(on_workers);
    create_service(&c, "manager1", "pub", &opts, &WHOAMI);
    wait_running(&c, "manager1", "pub", 1, |n| n != "manager1");

    // Every node answers, the manager without a task too.
    let m = c.addr("manager1");
    let w1 = c.addr("worker1");
    let w2 = c.addr("worker2");
    for (from, to) in [("worker1", &m), ("manager1", &w1), ("manager1", &w2)] {
        wait_until(CONVERGE, &format!("{from} -> {to}:8080"), || {
            sample(&c, from, to, 8080)
        });
    }

    // Beyond Swarm: on the task's node the task sees the client's own address; through a
    // node without a task it sees that node's ingress address.
    let task_node = wait_running(&c, "manager1", "pub", 1, |n| n != "manager1")[0]
        .node
        .clone();
    let other_node = if task_node == "worker1" {
        "worker2"
    } else {
        "worker1"
    };
    let pub_container = task_container(&c, &task_node, "pub");
    curl(
        &c,
        "manager1",
        &format!("http://{}:8080/", c.addr(&task_node)),
    )
    .expect("the task's node answers");
    curl(
        &c,
        "manager1",
        &format!("http://{}:8080/", c.addr(other_node)),
    )
    .expect("the other worker answers");
    let log = wait_until(CONVERGE, "httpd to log both clients", || {
        // httpd logs to stderr, which `logs` writes to its own stderr (as Docker's).
        let out = c.shoal(&task_node, &["container", "logs", &pub_container]);
        let log = text(&out.stderr);
        let clients = log.lines().filter(|l| l.contains("response:")).count();
        if clients >= 2 {
            Ok(log)
        } else {
            Err(log)
        }
    });
    // `[::ffff:198.18.0.11]:46080: response:200` (httpd listens on both families).
    let client_ips: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("response:"))
        .filter_map(|l| {
            let l = l.trim_start_matches('[').trim_start_matches("::ffff:");
            l.split([']', ':']).next()
        })
        .collect();
    assert!(
        client_ips.contains(&m.as_str()),
        "the task on {task_node} must see the client's own address {m}: {client_ips:?}"
    );
    assert!(
        client_ips.iter().any(|ip| ip.starts_with("10.0.0.")),
        "through {other_node} the task sees that node's ingress address: {client_ips:?}"
    );

    // Scaled to two: the task-less manager balances over both.
    let started = Instant::now();
    c.shoal_ok("manager1", &["service", "scale", "pub=2"]);
    wait_running(&c, "manager1", "pub", 2, |n| n != "manager1");
    let want = task_hostnames(&c, "pub");
    wait_until(CONVERGE, "the mesh to reach both tasks", || {
        let seen = sample(&c, "worker1", &m, 8080)?;
        if seen == want {
            Ok(())
        } else {
            Err(format!("seen {seen:?}, want {want:?}"))
        }
    });
    eprintln!(
        "scale to 2 reflected in the mesh after {:?}",
        started.elapsed()
    );

    // A killed task: the mesh forgets it and finds its replacement.
    let victim = task_container(&c, "worker1", "pub");
    let short: String = victim.chars().take(12).collect();
    let before = mesh_backends(&c, "manager1");
    let started = Instant::now();
    c.shoal_ok("worker1", &["container", "rm", "-f", &victim]);
    // The rule update itself, seen on a node without a task (measured, not asserted).
    let gone = wait_until(CONVERGE, "manager1's rules to drop the killed task", || {
        let now = mesh_backends(&c, "manager1");
        if now.len() < before.len() || (now != before && now.len() == before.len()) {
            Ok(started.elapsed())
        } else {
            Err(format!("backends {now:?}"))
        }
    });
    eprintln!("killed task dropped from manager1's rules after {gone:?}");
    let mut dropped = None;
    wait_until(CONVERGE, "the mesh to drop the killed task", || {
        let seen = sample(&c, "worker2", &m, 8080)?;
        if !seen.contains(&short) && dropped.is_none() {
            dropped = Some(started.elapsed());
            eprintln!(
                "killed task gone from the mesh after {:?}",
                started.elapsed()
            );
        }
        let now = task_hostnames(&c, "pub");
        if !seen.contains(&short) && now.len() == 2 && seen == now {
            Ok(())
        } else {
            Err(format!("seen {seen:?}, tasks {now:?}, killed {short}"))
        }
    });
    eprintln!(
        "killed task replaced in the mesh after {:?}",
        started.elapsed()
    );

    // worker2 drained: every answer comes from worker1's tasks.
    let started = Instant::now();
    c.shoal_ok(
        "manager1",
        &["node", "update", "--availability", "drain", "worker2"],
    );
    wait_until(CONVERGE, "the mesh to follow the drain", || {
        let on_w1: BTreeSet<String> = c
            .shoal_ok("worker1", &["container", "ls", "-q"])
            .split_whitespace()
            .map(|s| s.chars().take(12).collect())
            .collect();
        let seen = sample(&c, "worker2", &m, 8080)?;
        if on_w1.len() == 2 && seen == on_w1 {
            Ok(())
        } else {
            Err(format!("seen {seen:?}, on worker1 {on_w1:?}"))
        }
    });
    eprintln!("drain reflected in the mesh after {:?}", started.elapsed());

    // The port is taken.
    fails_with(
        &c.shoal(
            "manager1",
            &[
                "service",
                "create",
                "--name",
                "again",
                "-p",
                "8080:80",
                "demo:latest",
            ],
        ),
        "a second service on port 8080",
        "already in use",
    );

    // Host mode: only the task's node answers.
    let mut opts = vec![
        "--publish",
        "published=9090,target=80,mode=host",
        "--constraint",
        "node.role==manager",
    ];
    opts.extend(["--replicas", "1"]);
    create_service(&c, "manager1", "hostp", &opts, &WHOAMI);
    wait_running(&c, "manager1", "hostp", 1, |n| n == "manager1");
    wait_until(CONVERGE, "host-mode port on manager1", || {
        sample(&c, "worker1", &m, 9090)
    });
    assert!(
        curl(&c, "manager1", &format!("http://{w1}:9090/")).is_none(),
        "a host-mode port must not answer on a node without the task"
    );
    // A second task cannot bind the same host port on the one node it may use.
    c.shoal_ok("manager1", &["service", "scale", "-d", "hostp=2"]);
    wait_until(CONVERGE, "the second hostp task to wait for a port", || {
        let ps = c.shoal_ok("manager1", &["service", "ps", "--no-trunc", "hostp"]);
        if ps.contains("host-mode port already in use on 1 node") {
            Ok(())
        } else {
            Err(ps)
        }
    });

    // A subnet too small for the replicas asked.
    c.shoal_ok(
        "manager1",
        &[
            "network",
            "create",
            "-d",
            "overlay",
            "--subnet",
            "10.9.0.0/29",
            "tiny",
        ],
    );
    fails_with(
        &c.shoal(
            "manager1",
            &[
                "service",
                "create",
                "--name",
                "big",
                "--replicas",
                "6",
                "--network",
                "tiny",
                "demo:latest",
            ],
        ),
        "six replicas on a /29",
        "not enough addresses",
    );

    // A worker daemon killed and restarted keeps serving its running tasks.
    c.kill("worker1");
    c.start("worker1");
    let on_w1 = task_hostnames(&c, "pub");
    wait_until(
        CONVERGE,
        "the mesh after worker1's daemon restarted",
        || {
            let seen = sample(&c, "worker2", &m, 8080)?;
            if seen == on_w1 {
                Ok(())
            } else {
                Err(format!("seen {seen:?}, want {on_w1:?}"))
            }
        },
    );

    // UDP through the mesh: nodes without a task answer, and new flows reach every task.
    // (worker2 is still drained: both tasks run on worker1.)
    let dir = tempfile::tempdir().expect("temp dir for the UDP image");
    let tar = dir.path().join("udp-echo.tar");
    shoal_tests::write_binary_image(&tar, std::path::Path::new(UDP_ECHO)).expect("UDP image");
    let tar = tar.to_str().expect("temp paths are UTF-8");
    c.shoal_ok("manager1", &["image", "import", tar, "udp-echo:latest"]);
    let mut args = vec!["service", "create", "--name", "udp", "--replicas", "2"];
    args.extend(FAST_STOP);
    args.extend(["--publish", "published=5353,target=5353,protocol=udp"]);
    args.extend(on_workers);
    args.extend(["udp-echo:latest", "/bin/shoal-udp-echo", "serve", "5353"]);
    c.shoal_ok("manager1", &args);
    wait_running(&c, "manager1", "udp", 2, |n| n != "manager1");
    let want = task_hostnames(&c, "udp");
    for (from, to) in [("worker2", &m), ("manager1", &w2), ("manager1", &w1)] {
        wait_until(
            CONVERGE,
            &format!("UDP {from} -> {to}:5353 to reach every task"),
            || {
                let seen = udp_sample(&c, from, to, 5353)?;
                if seen == want {
                    Ok(())
                } else {
                    Err(format!("seen {seen:?}, want {want:?}"))
                }
            },
        );
    }

    c.shoal_ok("manager1", &["service", "rm", "pub", "hostp", "udp"]);
    c.shoal_ok("manager1", &["network", "rm", "tiny"]);
    wait_clean(&c);
}

/// The UDP echo the tests crate builds (`src/bin/udp-echo.rs`).
const UDP_ECHO: &str = env!("CARGO_BIN_EXE_shoal-udp-echo");

/// The hostnames the answers to `2 × SAMPLES` datagrams to `addr:port` (from `from`, each
/// from a new source port) came from.
fn udp_sample(c: &Cluster, from: &str, addr: &str, port: u16) -> Result<BTreeSet<String>, String> {
    let target = format!("{addr}:{port}");
    let mut seen = BTreeSet::new();
    for _ in 0..2 * SAMPLES {
        let out = c.exec(from, &[UDP_ECHO, "send", &target, "ping"]);
        let reply = text(&out.stdout);
        match reply.split_whitespace().collect::<Vec<_>>().as_slice() {
            [host, "ping"] if out.status.success() => {
                seen.insert(host.to_string());
            }
            _ => {
                return Err(format!(
                    "{from} -> {target}/udp: {reply:?} {} (seen so far {seen:?})",
                    text(&out.stderr).trim()
                ))
            }
        }
    }
    Ok(seen)
}

/// An attachable overlay takes standalone containers (`container run --network NET` on any
/// node): they reach the services on it by name across nodes; a network that is not
/// attachable refuses them; removing the container detaches it.
#[test]
fn attachable_overlay_takes_standalone_containers() {
    if !cluster::can_run() {
        return;
    }
    let c = Cluster::up(1, 1);
    import_demo(&c, &["manager1", "worker1"]);
    c.shoal_ok(
        "manager1",
        &["network", "create", "-d", "overlay", "--attachable", "att"],
    );
    c.shoal_ok(
        "manager1",
        &["network", "create", "-d", "overlay", "closed"],
    );
    create_service(
        &c,
        "manager1",
        "web",
        &["--network", "att", "--constraint", "node.role==manager"],
        &WHOAMI,
    );
    wait_running(&c, "manager1", "web", 1, |n| n == "manager1");
    let web = task_hostnames(&c, "web");

    // From the worker, through the VIP, to the task on the manager.
    let fetch = "timeout 3 wget -qO- http://web/ || exit 1";
    let got = wait_until(
        CONVERGE,
        "a standalone container on att to reach web",
        || {
            let out = c.shoal(
                "worker1",
                &[
                    "container",
                    "run",
                    "--rm",
                    "--network",
                    "att",
                    "demo:latest",
                    "sh",
                    "-c",
                    fetch,
                ],
            );
            if out.status.success() {
                Ok(text(&out.stdout).trim().to_string())
            } else {
                Err(text(&out.stderr))
            }
        },
    );
    assert!(
        web.contains(&got),
        "answer {got:?} is not web's task {web:?}"
    );

    fails_with(
        &c.shoal(
            "worker1",
            &[
                "container",
                "run",
                "--rm",
                "--network",
                "closed",
                "demo:latest",
                "true",
            ],
        ),
        "a container on a network that is not attachable",
        "not manually attachable",
    );

    // An attached container keeps the network in use until it is removed.
    c.shoal_ok(
        "worker1",
        &[
            "container",
            "run",
            "-d",
            "--name",
            "att1",
            "--network",
            "att",
            "demo:latest",
            "sleep",
            "1000",
        ],
    );
    c.shoal_ok("manager1", &["service", "rm", "web"]);
    wait_until(CONVERGE, "web's task to go", || {
        if task_hostnames(&c, "web").is_empty() {
            Ok(())
        } else {
            Err("web still runs".into())
        }
    });
    fails_with(
        &c.shoal("manager1", &["network", "rm", "att"]),
        "network rm while a container is attached",
        "in use",
    );
    c.shoal_ok("worker1", &["container", "rm", "-f", "att1"]);
    c.shoal_ok("manager1", &["network", "rm", "closed"]);
    wait_until(CONVERGE, "att to be removable", || {
        let out = c.shoal("manager1", &["network", "rm", "att"]);
        if out.status.success() {
            Ok(())
        } else {
            Err(text(&out.stderr))
        }
    });
    wait_clean(&c);
}
