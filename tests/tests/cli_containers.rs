//! The container commands as an operator uses them, against a real `shoald`: exit codes,
//! logs, stop/kill/start/rm, inspect, exec, bad input, and containers that outlive a
//! `kill -9` of the daemon.

use std::time::{Duration, Instant};

use shoal_tests::Daemon;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Polls `f` until it returns true or `timeout` passes; panics with `what` then.
fn eventually(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

fn inspect(d: &Daemon, name: &str) -> serde_json::Value {
    let out = d.shoal_ok(&["container", "inspect", name]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("inspect prints JSON");
    v[0].clone()
}

#[test]
fn exit_codes_follow_docker() {
    let d = Daemon::start();
    d.import_demo("demo");
    let code = |args: &[&str]| d.shoal(args).status.code();
    assert_eq!(
        code(&["run", "--rm", "demo", "sh", "-c", "exit 42"]),
        Some(42)
    );
    let nf = d.shoal(&["run", "--rm", "demo", "no-such-command"]);
    assert_eq!(nf.status.code(), Some(127), "{}", text(&nf.stderr));
    assert!(
        text(&nf.stderr).contains("executable file not found"),
        "{}",
        text(&nf.stderr)
    );
    let ne = d.shoal(&["run", "--rm", "demo", "/etc/passwd"]);
    assert_eq!(ne.status.code(), Some(126), "{}", text(&ne.stderr));
    let ni = d.shoal(&["run", "--rm", "no-such-image", "true"]);
    assert_eq!(ni.status.code(), Some(125));
    assert!(
        text(&ni.stderr).contains("No such image"),
        "{}",
        text(&ni.stderr)
    );
    let bad = d.shoal(&["run", "--memory", "lots", "demo", "true"]);
    assert_eq!(bad.status.code(), Some(125), "{}", text(&bad.stderr));
    // None of the failed runs left a container behind (they used --rm or never existed).
    assert_eq!(d.shoal_ok(&["container", "ls", "-aq"]), "");
}

#[test]
fn detached_lifecycle() {
    let d = Daemon::start();
    d.import_demo("demo");
    let id = d
        .shoal_ok(&[
            "run", "-d", "--name", "web", "demo", "sh", "-c",
            "trap 'echo bye; exit 3' TERM; i=0; while true; do echo line $i; i=$((i+1)); sleep 0.05; done",
        ])
        .trim()
        .to_string();
    assert_eq!(id.len(), 64, "run -d prints the full id: {id}");
    let ls = d.shoal_ok(&["container", "ls"]);
    assert!(
        ls.lines()
            .next()
            .unwrap_or_default()
            .starts_with("CONTAINER ID"),
        "{ls}"
    );
    assert!(
        ls.contains(&id[..12]) && ls.contains("web") && ls.contains("Up "),
        "{ls}"
    );
    eventually(Duration::from_secs(5), "5 log lines", || {
        d.shoal_ok(&["logs", "web"]).lines().count() >= 5
    });
    let tail = d.shoal_ok(&["logs", "--tail", "2", "web"]);
    assert_eq!(tail.lines().count(), 2, "{tail}");
    let v = inspect(&d, "web");
    assert_eq!(v["State"]["Status"], "running");
    assert_eq!(v["Name"], "/web");
    assert!(v["State"]["Pid"].as_i64().unwrap_or(0) > 0);
    // A name prefix is not an id prefix; an id prefix works.
    assert!(d.shoal(&["inspect", "we"]).status.code() != Some(0));
    assert_eq!(inspect(&d, &id[..8])["Id"], id.as_str());
    let dup = d.shoal(&["run", "-d", "--name", "web", "demo", "true"]);
    assert_eq!(dup.status.code(), Some(125));
    assert!(
        text(&dup.stderr).contains("already in use"),
        "{}",
        text(&dup.stderr)
    );
    let rm = d.shoal(&["rm", "web"]);
    assert_ne!(
        rm.status.code(),
        Some(0),
        "rm of a running container must be refused"
    );
    d.shoal_ok(&["stop", "-t", "5", "web"]);
    let v = inspect(&d, "web");
    assert_eq!(v["State"]["Status"], "exited");
    assert_eq!(v["State"]["ExitCode"], 3);
    assert!(d.shoal_ok(&["logs", "web"]).contains("bye"));
    let all = d.shoal_ok(&["container", "ls", "-a"]);
    assert!(all.contains("Exited (3)"), "{all}");
    d.shoal_ok(&["start", "web"]);
    assert_eq!(inspect(&d, "web")["State"]["Status"], "running");
    d.shoal_ok(&["kill", "-s", "KILL", "web"]);
    eventually(Duration::from_secs(5), "exit after kill", || {
        inspect(&d, "web")["State"]["ExitCode"] == 137
    });
    d.shoal_ok(&["rm", "web"]);
    assert_eq!(d.shoal_ok(&["ps", "-aq"]), "");
}

#[test]
fn exec_and_stats() {
    let d = Daemon::start();
    d.import_demo("demo");
    d.shoal_ok(&[
        "run",
        "-d",
        "--name",
        "box",
        "--hostname",
        "boxhost",
        "demo",
        "sleep",
        "1000",
    ]);
    let out = d.shoal(&[
        "exec",
        "-e",
        "X=1",
        "box",
        "sh",
        "-c",
        "echo $X $(hostname); exit 6",
    ]);
    assert_eq!(out.status.code(), Some(6));
    assert_eq!(text(&out.stdout), "1 boxhost\n");
    let piped = d.shoal_with_stdin(&["exec", "-i", "box", "cat"], Some(b"through stdin\n"));
    assert_eq!(text(&piped.stdout), "through stdin\n");
    let nf = d.shoal(&["exec", "box", "nope"]);
    assert_eq!(nf.status.code(), Some(127), "{}", text(&nf.stderr));
    let stats = d.shoal_ok(&["stats", "--no-stream"]);
    assert!(
        stats.contains("box") && stats.contains("MEM USAGE"),
        "{stats}"
    );
    d.shoal_ok(&["rm", "-f", "box"]);
}

#[test]
fn foreground_run_streams_output_and_stdin() {
    let d = Daemon::start();
    d.import_demo("demo");
    let out = d.shoal(&[
        "run",
        "--rm",
        "demo",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 5",
    ]);
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");
    let big = d.shoal(&["run", "--rm", "demo", "seq", "1", "50000"]);
    let s = text(&big.stdout);
    assert_eq!(s.lines().count(), 50000);
    assert_eq!(s.lines().last(), Some("50000"));
    let piped = d.shoal_with_stdin(
        &["run", "--rm", "-i", "demo", "sh", "-c", "tr a-z A-Z"],
        Some(b"shout\n"),
    );
    assert_eq!(piped.status.code(), Some(0), "{}", text(&piped.stderr));
    assert_eq!(text(&piped.stdout), "SHOUT\n");
}

#[test]
fn containers_survive_kill_9_of_the_daemon() {
    let mut d = Daemon::start();
    d.import_demo("demo");
    d.shoal_ok(&[
        "run",
        "-d",
        "--name",
        "long",
        "demo",
        "sh",
        "-c",
        "trap 'exit 0' TERM; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done",
    ]);
    let short_id = d
        .shoal_ok(&[
            "run",
            "-d",
            "--name",
            "short",
            "demo",
            "sh",
            "-c",
            "sleep 1; echo done; exit 7",
        ])
        .trim()
        .to_string();
    let pid_before = inspect(&d, "long")["State"]["Pid"].clone();
    d.kill9();
    // While the daemon is gone, `short` exits; its supervisor records the exit.
    let exit_file = d
        .data_root()
        .join("containers")
        .join(&short_id)
        .join("exit.json");
    eventually(
        Duration::from_secs(20),
        "short to exit while the daemon is down",
        || exit_file.exists(),
    );
    d.restart();
    let ls = d.shoal_ok(&["container", "ls"]);
    assert!(ls.contains("long") && !ls.contains("short"), "{ls}");
    let long = inspect(&d, "long");
    assert_eq!(long["State"]["Status"], "running");
    assert_eq!(long["State"]["Pid"], pid_before);
    let short = inspect(&d, "short");
    assert_eq!(short["State"]["Status"], "exited");
    assert_eq!(short["State"]["ExitCode"], 7);
    assert!(d.shoal_ok(&["logs", "short"]).contains("done"));
    let before = d.shoal_ok(&["logs", "long"]).lines().count();
    eventually(Duration::from_secs(5), "logs to keep growing", || {
        d.shoal_ok(&["logs", "long"]).lines().count() > before
    });
    d.shoal_ok(&["stop", "long"]);
    assert_eq!(inspect(&d, "long")["State"]["ExitCode"], 0);
    d.shoal_ok(&["rm", "long", "short"]);
}

#[test]
fn rm_flag_is_honoured_when_the_daemon_was_down() {
    let mut d = Daemon::start();
    d.import_demo("demo");
    d.shoal_ok(&["run", "-d", "--rm", "--name", "gone", "demo", "sleep", "1"]);
    d.kill9();
    std::thread::sleep(Duration::from_millis(1500));
    d.restart();
    eventually(
        Duration::from_secs(5),
        "--rm container removed after restart",
        || d.shoal_ok(&["ps", "-aq"]).is_empty(),
    );
}

#[test]
fn hostile_image_archive_is_refused_and_leaves_nothing() {
    let d = Daemon::start();
    let bad = d.scratch().join("evil.tar");
    {
        let f = std::fs::File::create(&bad).expect("create");
        let mut b = tar::Builder::new(f);
        let mut h = tar::Header::new_gnu();
        h.set_size(4);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        // `..` cannot be written through the tar crate's safe API: set the raw name.
        let name = b"../../etc/evil";
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        b.append(&h, &b"evil"[..]).expect("append");
        b.finish().expect("finish");
    }
    let out = d.shoal(&["image", "import", bad.to_str().expect("utf8"), "evil:1"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains(".."), "{}", text(&out.stderr));
    let ls = d.shoal_ok(&["image", "ls", "-q"]);
    assert_eq!(ls, "", "a refused import left an image");
    let blobs = d.data_root().join("image/blobs/sha256");
    let n = std::fs::read_dir(&blobs).map(|r| r.count()).unwrap_or(0);
    assert_eq!(n, 0, "a refused import left blobs");
}

#[test]
fn interactive_terminal_run() {
    // `script` (util-linux, essential on Debian) gives the client a real terminal.
    let d = Daemon::start();
    d.import_demo("demo");
    let cmd = format!(
        "{} -H {} run --rm -it demo sh",
        d.bins().shoal.display(),
        d.host()
    );
    let mut script = std::process::Command::new("script");
    script.args(["-qec", &cmd, "/dev/null"]);
    let out = shoal_tests::run_with_timeout(
        script,
        Some(b"tty; echo typed-$((40+2))\nexit 3\n"),
        Duration::from_secs(30),
    );
    let screen = text(&out.stdout).replace('\r', "");
    assert!(screen.contains("typed-42"), "{screen}");
    assert!(screen.contains("/dev/pts/0"), "{screen}");
    assert_eq!(out.status.code(), Some(3), "{screen}");
    assert_eq!(d.shoal_ok(&["ps", "-aq"]), "");
}
