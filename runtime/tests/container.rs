//! The container as seen from inside: isolation, confinement, limits, process and exit
//! semantics, logs. Real namespaces, mounts and cgroups: run as root (CI does).

mod common;

use std::time::Duration;

use common::{require_root, TestRuntime};
use shoal_runtime::{ContainerSpec, Status};

/// Waits until the container's log contains `marker` (the script prints it once its signal
/// traps are installed), so that no test depends on how fast a shell starts.
fn wait_for_log(t: &TestRuntime, id: &str, marker: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let logs = t.rt.logs(id).expect("logs").read_all(None).expect("read");
        if logs.iter().any(|r| r.log.contains(marker)) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{marker} never logged"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn pid_one_is_the_command_and_host_is_invisible() {
    if !require_root() {
        return;
    }
    let t = TestRuntime::new();
    let (code, out) = t.sh("echo pid=$$; ls /proc | grep -c '^[0-9]'");
    assert_eq!(code, 0, "{out}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("pid=1"));
    // sh, ls, grep: only our own processes are visible.
    let n: usize = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("count");
    assert!(n <= 4, "saw {n} processes: host processes are visible");
}

#[test]
fn hostname_and_etc_files() {
    if !require_root() {
        return;
    }
    let t = TestRuntime::new();
    let mut spec = t.spec(&[
        "sh",
        "-c",
        "hostname; cat /etc/hostname; grep -c web1 /etc/hosts",
    ]);
    spec.hostname = Some("web1".into());
    let (code, out, _) = t.run(spec);
    assert_eq!((code, out.as_str()), (0, "web1\nweb1\n1\n"));
}

#[test]
fn confinement() {
    if !require_root() {
        return;
    }
    let t = TestRuntime::new();
    // /proc/kcore exists only on kernels built with it (not this CI's): check it when it
    // does, and always check masked paths that every kernel here has.
    let kcore = std::path::Path::new("/proc/kcore").exists();
    let (code, out) = t.sh(concat!(
        "if [ -e /proc/kcore ]; then wc -c < /proc/kcore; else echo 0; fi; ",
        "cat /proc/keys /proc/timer_list | wc -c; ls /sys/firmware | wc -l; ",
        "touch /sys/x 2>/dev/null && echo sys-writable || echo sys-ro; ",
        "mkdir -p /mnt/t; mount -t tmpfs none /mnt/t 2>/dev/null && echo mounted || echo mount-denied; ",
        "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status"
    ));
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].trim(),
        "0",
        "/proc/kcore must be masked (exists: {kcore}): {out}"
    );
    assert_eq!(
        lines[1].trim(),
        "0",
        "/proc/keys and /proc/timer_list must be masked: {out}"
    );
    assert_eq!(lines[2].trim(), "0", "/sys/firmware must be masked: {out}");
    assert_eq!(lines[3], "sys-ro");
    assert_eq!(lines[4], "mount-denied");
    let field = |name: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("{name} missing in {out}"))
    };
    let cap_eff = u64::from_str_radix(&field("CapEff:"), 16).expect("hex");
    const CAP_SYS_ADMIN: u64 = 21;
    assert_eq!(cap_eff & (1 << CAP_SYS_ADMIN), 0, "CAP_SYS_ADMIN present");
    // Docker's default set is exactly 0x00000000a80425fb.
    assert_eq!(cap_eff, 0xa80425fb, "CapEff {cap_eff:x}");
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("Seccomp:"), "2");
}

#[test]
fn cap_add_and_drop() {
    if !require_root() {
        return;
    }
    let t = TestRuntime::new();
    let mut spec = t.spec(&["sh", "-c", "grep CapEff /proc/self/status"]);
    spec.cap_drop = vec!["ALL".into()];
    spec.cap_add = vec!["net_admin".into()];
    let (code, out, _) = t.run(spec);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.trim(), "CapEff:\t0000000000001000");
}

#[test]
fn env_workdir_user() {
    if !require_root() {
        return;
    }
    let t = TestRuntime::new();
    let mut spec = t.spec(&[
        "sh",
        "-c",
        "echo $FOO; pwd; id -u; id -g; id -G; grep CapEff /proc/self/status",
    ]);
    spec.env = vec!["FOO=bar baz".into()];
    spec.workdir = Some("/work/dir".into());
    spec.user = Some("shoal".into());
    let (code, out, _) = t.run(spec);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out,
        "bar baz\n/work/dir\n1000\n1000\n1000 50\nCapEff:\t0000000000000000\n"
    );
    let mut spec = t.spec(&["id"]);
    spec.user = Some("4242:4343".into());
    let (_, out, _) = t.run(spec);
    assert!(out.starts_with("uid=4242 gid=4343"), "{out}");
    let mut spec = t.spec(&["id"]);
    spec.user = Some("nosuchuser".into());
    let err = t.rt.create(spec).expect_err("unknown user");
    assert!(
        err.to_string().contains("unable to find user nosuchuser"),
        "{err}"
    );
}

#[test]
fn exit_codes_and_start_failures() {
    if !require_root() {
        return;
    }
    let t = TestRuntime::new();
    assert_eq!(t.sh("exit 3").0, 3);
    assert_eq!(t.sh("true").0, 0);
    // Signals: pid 1 gets only the signals it handles (the kernel's rule for namespace
    // inits), SIGKILL always; a death by signal reads 128 + signal, as Docker reports it.
    let c =
        t.rt.create(t.spec(&[
            "sh",
            "-c",
            "trap 'exit 7' USR1; echo ready; while true; do sleep 0.05; done",
        ]))
        .expect("create");
    t.rt.start(&c.id).expect("start");
    wait_for_log(&t, &c.id, "ready");
    t.rt.kill(&c.id, libc::SIGUSR1).expect("kill USR1");
    assert_eq!(t.rt.wait(&c.id).expect("wait").exit_code, 7);
    let c = t.rt.create(t.spec(&["sleep", "1000"])).expect("create");
    t.rt.start(&c.id).expect("start");
    t.rt.kill(&c.id, libc::SIGKILL).expect("kill");
    assert_eq!(
        t.rt.wait(&c.id).expect("wait").exit_code,
        128 + libc::SIGKILL
    );
    assert!(
        t.rt.kill(&c.id, libc::SIGKILL).is_err(),
        "kill of an exited container"
    );
    let (code, msg, _) = t.run(t.spec(&["/no/such/binary"]));
    assert_eq!(code, 127, "{msg}");
    let (code, msg, _) = t.run(t.spec(&["nosuchcommand"]));
    assert_eq!(code, 127, "{msg}");
    assert!(msg.contains("executable file not found in $PATH"), "{msg}");
    let (code, msg, id) = t.run(t.spec(&["/etc/passwd"]));
    assert_eq!(code, 126, "{msg}");
    let c = t.rt.lookup(&id).expect("lookup");
    assert_eq!(c.state.status, Status::Created);
    assert_eq!(c.state.exit_code, 126);
    assert!(!c.state.error.is_empty());
}

#[test]
fn stop_kill_and_state() {
    if !require_root() {
        return;
    }
    let t = TestRuntime::new();
    // sleep as pid 1 has no SIGTERM handler: stop must fall back to SIGKILL after the grace.
    let c = t.rt.create(t.spec(&["sleep", "1000"])).expect("create");
    let c = t.rt.start(&c.id).expect("start");
    assert_eq!(c.state.status, Status::Running);
    assert!(c.state.pid > 0);
    assert_eq!(t.rt.list(false).expect("ls").len(), 1);
    t.rt.stop(&c.id, Duration::from_millis(200)).expect("stop");
    let s = t.rt.lookup(&c.id).expect("lookup").state;
    assert_eq!((s.status, s.exit_code), (Status::Exited, 137));
    assert!(t.rt.list(false).expect("ls").is_empty());
    // A shell that traps TERM exits on its own within the grace.
    let c =
        t.rt.create(t.spec(&[
            "sh",
            "-c",
            "trap 'exit 42' TERM; echo ready; while true; do sleep 0.1; done",
        ]))
        .expect("create");
    t.rt.start(&c.id).expect("start");
    wait_for_log(&t, &c.id, "ready");
    t.rt.stop(&c.id, Duration::from_secs(10)).expect("stop");
    assert_eq!(t.rt.lookup(&c.id).expect("lookup").state.exit_code, 42);
    // Restart of an exited container works and keeps its upper layer.
    let c =
        t.rt.create(t.spec(&["sh", "-c", "echo x >> /count; wc -l < /count"]))
            .expect("create");
    t.rt.start(&c.id).expect("start");
    t.rt.wait(&c.id).expect("wait");
    t.rt.start(&c.id).expect("restart");
    t.rt.wait(&c.id).expect("wait");
    let logs =
        t.rt.logs(&c.id)
            .expect("logs")
            .read_all(None)
            .expect("read");
    let text: String = logs.iter().map(|r| r.log.as_str()).collect();
    assert_eq!(text.split_whitespace().collect::<Vec<_>>(), ["1", "2"]);
    // Removing a running container needs force.
    let c = t.rt.create(t.spec(&["sleep", "1000"])).expect("create");
    t.rt.start(&c.id).expect("start");
    assert!(t.rt.remove(&c.id, false).is_err());
    t.rt.remove(&c.id, true).expect("force remove");
    assert!(t.rt.lookup(&c.id).is_err());
}

#[test]
fn memory_limit_oom_kill_is_reported() {
    if !require_root() {
        return;
    }
    let t = TestRuntime::new();
    let mut spec = t.spec(&[
        "sh",
        "-c",
        "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
    ]);
    spec.memory = Some(32 * 1024 * 1024);
    let (code, out, id) = t.run(spec);
    assert_eq!(code, 137, "{out}");
    let c = t.rt.lookup(&id).expect("lookup");
    assert!(c.state.oom_killed, "OOMKilled not reported");
    assert_eq!(t.rt.inspect(&c)["State"]["OOMKilled"], true);
}

#[test]
fn pids_limit_stops_a_fork_bomb() {
    if !require_root() {
        return;
    }
    let t = TestRuntime::new();
    // Each subshell counts the processes it can see, then the bomb goes on forking; once
    // the limit is hit, fork fails and the shell gives up.
    let mut spec = t.spec(&[
        "sh",
        "-c",
        "n=0; while [ $n -lt 200 ]; do sleep 5 & n=$((n+1)); echo $(ls /proc | grep -c '^[0-9]'); done",
    ]);
    spec.pids_limit = Some(20);
    let (code, out, _) = t.run(spec);
    assert_ne!(code, 0, "the fork bomb was not stopped: {out}");
    assert!(out.contains("can't fork"), "{out}");
    let max = out
        .lines()
        .filter_map(|l| l.trim().parse::<usize>().ok())
        .max()
        .unwrap_or_default();
    assert!(
        max > 5 && max <= 20,
        "saw {max} processes with pids limit 20: {out}"
    );
}

#[test]
fn logs_are_complete_in_order_per_stream() {
    if !require_root() {
        return;
    }
    let t = TestRuntime::new();
    let (code, out) = t.sh("seq 1 20000; echo err >&2");
    assert_eq!(code, 0);
    let nums: Vec<&str> = out.lines().filter(|l| *l != "err").collect();
    assert_eq!(nums.len(), 20000);
    assert_eq!(nums.last(), Some(&"20000"));
    assert!(out.contains("err\n"));
}

#[test]
fn read_only_root_and_network_none() {
    if !require_root() {
        return;
    }
    let t = TestRuntime::new();
    let mut spec = t.spec(&[
        "sh",
        "-c",
        "touch /x 2>/dev/null && echo rw || echo ro; touch /tmp/y 2>/dev/null && echo tmp-rw || echo tmp-ro; ls /sys/class/net",
    ]);
    spec.read_only = true;
    let (code, out, _) = t.run(spec);
    assert_eq!(code, 0, "{out}");
    // /tmp is part of the read-only root (Docker does the same without --tmpfs).
    assert_eq!(out, "ro\ntmp-ro\nlo\n");
    // Loopback is up, as in Docker's `none` network: a server and a client can talk on it.
    let (code, out) = t.sh(
        // Retry until the listener is up (no timing assumption), then until it has written
        // what it got. Its stdin stays open: busybox nc may stop at EOF on a background job's
        // /dev/null before it has read the client's bytes.
        "(sleep 1000 | nc -l -p 7000 > /tmp/got) & i=0; until echo ping | nc 127.0.0.1 7000 2>/dev/null; do i=$((i+1)); [ $i -gt 400 ] && exit 9; sleep 0.05; done; until [ -s /tmp/got ]; do i=$((i+1)); [ $i -gt 800 ] && exit 8; sleep 0.05; done; cat /tmp/got",
    );
    assert_eq!((code, out.as_str()), (0, "ping\n"));
}

#[test]
fn many_cycles_leave_nothing_behind() {
    if !require_root() {
        return;
    }
    let t = TestRuntime::new();
    let mounts_before = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let cycles: usize = std::env::var("SHOAL_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let mut ids = Vec::new();
    for _ in 0..cycles {
        let (code, _, id) = t.run(t.spec(&["true"]));
        assert_eq!(code, 0);
        t.rt.remove(&id, false).expect("remove");
        ids.push(id);
    }
    // Removal deletes the files in the background: wait for the trash to empty.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(t.rt.trash_dir())
        .map(|d| d.count())
        .unwrap_or(0)
        > 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "removed containers not purged"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mounts_after = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert_eq!(mounts_before.lines().count(), mounts_after.lines().count());
    for id in &ids {
        assert!(!mounts_after.contains(id.as_str()), "mount left for {id}");
        assert!(!t.rt.container_dir(id).exists(), "dir left for {id}");
        for h in ["memory", "cpu", "pids", "devices", "freezer", "cpuacct"] {
            let p = std::path::Path::new("/sys/fs/cgroup")
                .join(h)
                .join("shoal")
                .join(id);
            assert!(!p.exists(), "cgroup left: {}", p.display());
        }
    }
    let shims = std::fs::read_dir("/proc")
        .expect("proc")
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("cmdline")).ok())
        .filter(|cmd| ids.iter().any(|id| cmd.contains(id.as_str())))
        .count();
    assert_eq!(shims, 0, "supervisor processes left");
}

#[test]
fn bad_specs_are_refused_cleanly() {
    if !require_root() {
        return;
    }
    let t = TestRuntime::new();
    let bad: Vec<(ContainerSpec, &str)> = vec![
        (
            ContainerSpec {
                image: "nosuch:image".into(),
                cmd: vec!["true".into()],
                ..Default::default()
            },
            "No such image",
        ),
        (t.spec(&[]), "no command specified"),
        (
            ContainerSpec {
                name: Some("bad name".into()),
                ..t.spec(&["true"])
            },
            "Invalid container name",
        ),
        (
            ContainerSpec {
                cap_add: vec!["CAP_NOPE".into()],
                ..t.spec(&["true"])
            },
            "NOPE",
        ),
        (
            ContainerSpec {
                memory: Some(1024),
                ..t.spec(&["true"])
            },
            "Minimum memory limit",
        ),
        (
            ContainerSpec {
                workdir: Some("relative".into()),
                ..t.spec(&["true"])
            },
            "absolute path",
        ),
    ];
    for (spec, want) in bad {
        let err = t.rt.create(spec).expect_err(want);
        assert!(
            err.to_string().contains(want),
            "{err} should mention {want}"
        );
    }
    assert!(
        t.rt.list(true).expect("ls").is_empty(),
        "a refused create left a container"
    );
    let named = ContainerSpec {
        name: Some("web".into()),
        ..t.spec(&["true"])
    };
    t.rt.create(named.clone()).expect("first");
    let err = t.rt.create(named).expect_err("dup name");
    assert!(err.to_string().contains("already in use"), "{err}");
}

#[test]
fn exec_joins_the_container() {
    if !require_root() {
        return;
    }
    let t = TestRuntime::new();
    let mut spec = t.spec(&["sleep", "1000"]);
    spec.hostname = Some("box".into());
    spec.env = vec!["FROM_CONTAINER=1".into()];
    let c = t.rt.create(spec).expect("create");
    t.rt.start(&c.id).expect("start");
    let exec = |spec: &shoal_runtime::ExecSpec| {
        let out =
            t.rt.exec_command(&c.id, spec)
                .expect("exec command")
                .output()
                .expect("spawn exec");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = exec(&shoal_runtime::ExecSpec {
        args: vec![
            "sh".into(),
            "-c".into(),
            "hostname; echo $FROM_CONTAINER $EXTRA; ps -o pid,comm | grep -c sleep; grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status; exit 5".into(),
        ],
        env: vec!["EXTRA=2".into()],
        ..Default::default()
    });
    assert_eq!(code, 5, "{out}{err}");
    assert_eq!(out, "box\n1 2\n1\nNoNewPrivs:\t1\nSeccomp:\t2\n");
    let (code, out, _) = exec(&shoal_runtime::ExecSpec {
        args: vec!["id".into()],
        user: Some("shoal".into()),
        ..Default::default()
    });
    assert_eq!(code, 0);
    assert!(out.starts_with("uid=1000(shoal) gid=1000(shoal)"), "{out}");
    let (code, _, err) = exec(&shoal_runtime::ExecSpec {
        args: vec!["nosuchcmd".into()],
        ..Default::default()
    });
    assert_eq!(code, 127, "{err}");
    assert!(err.contains("executable file not found"), "{err}");
    let stats = t.rt.stats(&c.id).expect("stats");
    assert!(stats.pids >= 1 && stats.memory_usage > 0, "{stats:?}");
    t.rt.stop(&c.id, Duration::ZERO).expect("stop");
    assert!(t.rt.exec_command(&c.id, &Default::default()).is_err());
    assert!(t.rt.stats(&c.id).is_err());
}

#[test]
fn containers_outlive_the_runtime_handle() {
    if !require_root() {
        return;
    }
    let t = TestRuntime::new();
    let c =
        t.rt.create(t.spec(&["sh", "-c", "echo before; sleep 1; echo after; exit 9"]))
            .expect("create");
    t.rt.start(&c.id).expect("start");
    // A second handle on the same data root (what a restarted daemon opens) sees the same
    // running container, and its exit once the supervisor records it.
    let again = shoal_runtime::Runtime::open(t.rt.config().clone()).expect("reopen");
    let seen = again.lookup(&c.short_id()[..6]).expect("by prefix");
    assert_eq!(seen.state.status, Status::Running);
    let state = again.wait(&c.id).expect("wait");
    assert_eq!((state.status, state.exit_code), (Status::Exited, 9));
    let logs = again
        .logs(&c.id)
        .expect("logs")
        .read_all(None)
        .expect("read");
    let text: String = logs.iter().map(|r| r.log.as_str()).collect();
    assert_eq!(text, "before\nafter\n");
}

/// Reads attach frames until the exit frame; returns (stdout, stderr, exit code).
fn collect_attach(stream: &mut std::os::unix::net::UnixStream) -> (String, String, i32) {
    use shoal_runtime::process::attach::{kind, read_frame};
    let (mut out, mut err) = (Vec::new(), Vec::new());
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    while let Some((k, payload)) = read_frame(stream).expect("frame") {
        match k {
            kind::STDOUT => out.extend_from_slice(&payload),
            kind::STDERR => err.extend_from_slice(&payload),
            kind::EXIT => {
                let code = i32::from_le_bytes(payload[..4].try_into().expect("4 bytes"));
                return (
                    String::from_utf8_lossy(&out).into_owned(),
                    String::from_utf8_lossy(&err).into_owned(),
                    code,
                );
            }
            other => panic!("unexpected frame {other}"),
        }
    }
    panic!("attach stream ended without an exit frame");
}

#[test]
fn attach_with_stdin_and_terminal() {
    use shoal_runtime::process::attach::{kind, write_frame};
    if !require_root() {
        return;
    }
    let t = TestRuntime::new();
    // -i: stdin reaches the process, its EOF too; stdout and stderr arrive apart.
    let mut spec = t.spec(&[
        "sh",
        "-c",
        "read a; echo got $a; cat; echo oops >&2; exit 4",
    ]);
    spec.open_stdin = true;
    let c = t.rt.create(spec).expect("create");
    let (_, mut s) = t.rt.start_attached(&c.id).expect("start attached");
    write_frame(&mut s, kind::STDIN, b"one\nrest of it\n").expect("stdin");
    write_frame(&mut s, kind::STDIN_CLOSE, b"").expect("close");
    let (out, err, code) = collect_attach(&mut s);
    assert_eq!(
        (out.as_str(), err.as_str(), code),
        ("got one\nrest of it\n", "oops\n", 4)
    );

    // -t: a terminal, resizable; output also lands in the log.
    let mut spec = t.spec(&[
        "sh",
        "-c",
        "[ -t 0 ] && echo is-a-tty; tty; read x; stty size",
    ]);
    spec.open_stdin = true;
    spec.tty = true;
    let c = t.rt.create(spec).expect("create");
    let (_, mut s) = t.rt.start_attached(&c.id).expect("start attached");
    let mut size = Vec::new();
    size.extend_from_slice(&33u16.to_le_bytes());
    size.extend_from_slice(&101u16.to_le_bytes());
    write_frame(&mut s, kind::RESIZE, &size).expect("resize");
    write_frame(&mut s, kind::STDIN, b"go\n").expect("stdin");
    let (out, _, code) = collect_attach(&mut s);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("is-a-tty"), "{out:?}");
    // The terminal is the container's own (its devpts), so it has a name in there.
    assert!(out.contains("/dev/pts/0"), "{out:?}");
    assert!(out.contains("33 101"), "{out:?}");
    let logs =
        t.rt.logs(&c.id)
            .expect("logs")
            .read_all(None)
            .expect("read");
    assert!(logs.iter().any(|r| r.log.contains("33 101")));

    // Attaching later to a running container sees its output from then on.
    let c =
        t.rt.create(t.spec(&[
            "sh",
            "-c",
            "i=0; while [ $i -lt 100 ]; do echo late; sleep 0.05; i=$((i+1)); done; exit 2",
        ]))
        .expect("create");
    t.rt.start(&c.id).expect("start");
    let mut s = t.rt.attach(&c.id).expect("attach");
    let (out, _, code) = collect_attach(&mut s);
    assert!(out.starts_with("late\n"), "{out:?}");
    assert_eq!(code, 2);
    assert!(t.rt.attach(&c.id).is_err(), "attach to an exited container");
}

#[test]
fn no_inherited_file_descriptors() {
    if !require_root() {
        return;
    }
    // Leak an fd without close-on-exec into the supervisor's environment.
    let leak = std::fs::File::open("/dev/null").expect("open");
    let raw = std::os::fd::AsRawFd::as_raw_fd(&leak);
    // SAFETY: clearing FD_CLOEXEC on an fd we own.
    unsafe { libc::fcntl(raw, libc::F_SETFD, 0) };
    let t = TestRuntime::new();
    let (code, out) = t.sh("ls /proc/self/fd | sort -n | tr '\\n' ' '");
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        "0 1 2 3",
        "ls itself holds fd 3 for the directory: {out}"
    );
    drop(leak);
}

#[test]
fn image_symlinks_cannot_reach_the_host() {
    if !require_root() {
        return;
    }
    let t = TestRuntime::new();
    let escape = std::env::temp_dir().join(format!("shoal-escape-{}", std::process::id()));
    let target = format!("{}/proc", escape.display());
    let tar = t.dir.path().join("links.tar");
    // /proc points at an absolute host path that does not exist: a naive host-side setup
    // would create it (mkdir -p) on the host and mount proc there.
    common::busybox_rootfs_tar_with_links(&tar, &[("proc", target.as_str())]);
    t.rt.images()
        .import(&mut std::fs::File::open(&tar).expect("tar"), "links:test")
        .expect("import");
    let spec = ContainerSpec {
        image: "links:test".into(),
        cmd: vec!["sh".into(), "-c".into(), "ls /proc/self/status".into()],
        ..Default::default()
    };
    let (code, out, _) = t.run(spec);
    assert!(
        !escape.exists(),
        "container setup created {} on the host",
        escape.display()
    );
    assert_eq!((code, out.as_str()), (0, "/proc/self/status\n"));

    // A /dev that points at `/` is refused instead of mounting over the whole root.
    let tar = t.dir.path().join("devroot.tar");
    common::busybox_rootfs_tar_with_links(&tar, &[("dev", "/")]);
    t.rt.images()
        .import(&mut std::fs::File::open(&tar).expect("tar"), "devroot:test")
        .expect("import");
    let (code, msg, _) = t.run(ContainerSpec {
        image: "devroot:test".into(),
        cmd: vec!["true".into()],
        ..Default::default()
    });
    assert_eq!(code, 125, "{msg}");
    assert!(msg.contains("container root"), "{msg}");
}

#[test]
fn concurrent_starts_run_one_process() {
    if !require_root() {
        return;
    }
    let t = TestRuntime::new();
    let c = t.rt.create(t.spec(&["sleep", "1000"])).expect("create");
    let pids: Vec<i32> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| t.rt.start(&c.id).expect("start").state.pid))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("join"))
            .collect()
    });
    assert!(
        pids.iter().all(|p| *p == pids[0]),
        "several processes started: {pids:?}"
    );
    let supervisors = std::fs::read_dir("/proc")
        .expect("proc")
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|cmd| {
            let cmd = String::from_utf8_lossy(cmd);
            cmd.contains("shoal-shim") && cmd.contains(c.id.as_str())
        })
        .count();
    assert_eq!(supervisors, 1);
    // A remove racing a start either removes the started container or is refused; it
    // never leaves a running process without a container.
    let c2 = t.rt.create(t.spec(&["sleep", "1000"])).expect("create");
    std::thread::scope(|s| {
        s.spawn(|| {
            let _ = t.rt.start(&c2.id);
        });
        s.spawn(|| {
            let _ = t.rt.remove(&c2.id, false);
        });
    });
    match t.rt.lookup(&c2.id) {
        Ok(c) => assert_eq!(c.state.status, Status::Running),
        Err(_) => {
            let orphans = std::fs::read_dir("/proc")
                .expect("proc")
                .filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
                .filter(|cmd| String::from_utf8_lossy(cmd).contains(c2.id.as_str()))
                .count();
            assert_eq!(orphans, 0, "a removed container's process lives on");
        }
    }
}

#[test]
fn disposable_containers_start_again_and_keep_their_upper_layer_empty() {
    if !require_root() {
        return;
    }
    let t = TestRuntime::new();
    // `--rm` (here through the API, which leaves the removal to the caller): a volatile overlay.
    let mut spec = t.spec(&[
        "sh",
        "-c",
        "test -f /etc/hosts && test -f /etc/resolv.conf && grep -q localhost /etc/hosts && echo ok",
    ]);
    spec.auto_remove = true;
    let c = t.rt.create(spec).expect("create");
    for run in 1..=2 {
        t.rt.start(&c.id)
            .unwrap_or_else(|e| panic!("start {run}: {e}"));
        let state = t.rt.wait(&c.id).expect("wait");
        assert_eq!(state.exit_code, 0, "run {run}");
    }
    let logs =
        t.rt.logs(&c.id)
            .expect("logs")
            .read_all(None)
            .expect("read");
    let lines: Vec<&str> = logs.iter().map(|r| r.log.trim()).collect();
    assert_eq!(lines, ["ok", "ok"]);
    // The mount points the image lacks come from its init layer, not from a copy-up of /etc
    // into the container's own layer.
    let upper = t.rt.container_dir(&c.id).join("upper");
    let entries: Vec<_> = std::fs::read_dir(&upper)
        .expect("upper")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert!(entries.is_empty(), "upper layer holds {entries:?}");
    let doc = t.rt.inspect(&t.rt.lookup(&c.id).expect("lookup"));
    let lower = doc["GraphDriver"]["Data"]["LowerDir"]
        .as_str()
        .expect("LowerDir");
    assert!(lower.contains("/image/init/"), "no init layer in {lower}");
}

#[test]
fn containers_of_the_previous_layout_still_start() {
    if !require_root() {
        return;
    }
    let t = TestRuntime::new();
    let c = t.rt.create(t.spec(&["echo", "old"])).expect("create");
    // Before, the RunSpec was config.json beside a container.json without it.
    let dir = t.rt.container_dir(&c.id);
    let mut stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("container.json")).expect("read"))
            .expect("parse");
    let run = stored
        .as_object_mut()
        .and_then(|o| o.remove("run"))
        .expect("run spec in container.json");
    std::fs::write(dir.join("config.json"), run.to_string()).expect("write config.json");
    std::fs::write(dir.join("container.json"), stored.to_string()).expect("rewrite");
    t.rt.start(&c.id).expect("start");
    assert_eq!(t.rt.wait(&c.id).expect("wait").exit_code, 0);
    let logs =
        t.rt.logs(&c.id)
            .expect("logs")
            .read_all(None)
            .expect("read");
    assert_eq!(logs.first().map(|r| r.log.as_str()), Some("old\n"));
}

#[test]
fn a_killed_zygote_is_replaced() {
    if !require_root() {
        return;
    }
    let t = TestRuntime::new();
    let (code, _, _) = t.run(t.spec(&["true"]));
    assert_eq!(code, 0);
    let zygote = t.rt.zygote_pid().expect("a zygote after a start");
    let cmdline = std::fs::read(format!("/proc/{zygote}/cmdline")).expect("zygote cmdline");
    assert!(String::from_utf8_lossy(&cmdline).contains("zygote"));
    let pid = nix::unistd::Pid::from_raw(zygote as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("kill zygote");
    // Dead once it is a zombie (the runtime reaps it when it next finds it gone).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(format!("/proc/{zygote}/stat"))
        .map(|s| s.contains(") Z "))
        .unwrap_or(true)
    {
        assert!(std::time::Instant::now() < deadline, "zygote did not die");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The next start finds it dead and goes through a new one.
    for _ in 0..2 {
        let (code, _, id) = t.run(t.spec(&["true"]));
        assert_eq!(code, 0, "start after the zygote died");
        t.rt.remove(&id, false).expect("remove");
    }
    let again = t.rt.zygote_pid().expect("a new zygote");
    assert_ne!(again, zygote);
    assert!(
        !std::path::Path::new(&format!("/proc/{zygote}")).exists(),
        "the dead zygote was reaped"
    );
}

#[test]
fn signals_start_at_their_defaults() {
    if !require_root() {
        return;
    }
    let t = TestRuntime::new();
    // No signal ignored or blocked: a pipeline writer dies of SIGPIPE, as under a shell.
    // Asked of grep directly: a shell would set its own dispositions for its children.
    let (code, out, _) = t.run(t.spec(&["grep", "-E", "^Sig(Ign|Blk):", "/proc/self/status"]));
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n"
    );
}

#[test]
fn names_are_reserved_once_and_released_on_remove() {
    use shoal_runtime::ContainerError;
    if !require_root() {
        return;
    }
    let t = TestRuntime::new();
    let named = |name: &str| ContainerSpec {
        name: Some(name.into()),
        ..t.spec(&["true"])
    };
    let web = t.rt.create(named("web")).expect("create web");
    assert_eq!(t.rt.lookup("web").expect("by name").id, web.id);
    assert_eq!(t.rt.lookup("/web").expect("by /name").id, web.id);
    match t.rt.create(named("/web")) {
        Err(ContainerError::NameInUse { name, id }) => {
            assert_eq!((name, id), ("web".into(), web.id.clone()))
        }
        other => panic!("second create of a taken name: {other:?}"),
    }

    // The reservation is atomic: of concurrent creates with one name exactly one wins.
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| t.rt.create(named("race"))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("join"))
            .collect()
    });
    let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for r in &results {
        match r {
            Ok(_) => {}
            Err(ContainerError::NameInUse { id, .. }) => assert_eq!(*id, winners[0].id),
            Err(e) => panic!("a losing create failed otherwise: {e}"),
        }
    }
    let listed = t.rt.list(true).expect("ls");
    assert_eq!(listed.iter().filter(|c| c.name == "race").count(), 1);

    // Removing frees the name.
    let names = t.rt.names_dir();
    t.rt.remove("web", false).expect("remove");
    assert!(!names.join("web").exists(), "entry kept after remove");
    assert!(matches!(
        t.rt.lookup("web"),
        Err(ContainerError::NotFound(_))
    ));
    let web2 = t.rt.create(named("web")).expect("name free after remove");
    assert_eq!(t.rt.lookup("web").expect("by name").id, web2.id);

    // A stale entry (a crash between steps) neither resolves nor blocks the name.
    std::fs::write(names.join("ghost"), "ab".repeat(32)).expect("write stale entry");
    assert!(matches!(
        t.rt.lookup("ghost"),
        Err(ContainerError::NotFound(_))
    ));
    assert!(
        !names.join("ghost").exists(),
        "stale entry kept after lookup"
    );
    std::fs::write(names.join("ghost"), "ab".repeat(32)).expect("write stale entry");
    let ghost =
        t.rt.create(named("ghost"))
            .expect("create over a stale entry");
    assert_eq!(t.rt.lookup("ghost").expect("by name").id, ghost.id);
    // An entry pointing at a container of another name is stale too.
    std::fs::write(names.join("alias"), &web2.id).expect("write alias entry");
    assert!(matches!(
        t.rt.lookup("alias"),
        Err(ContainerError::NotFound(_))
    ));

    // A needle is a name only if a container could have it: no path leaves names/.
    let victim = t.rt.config().root.join("victim");
    std::fs::write(&victim, "not an id").expect("write victim");
    for needle in ["../victim", &format!("/{}", victim.display())] {
        assert!(matches!(
            t.rt.lookup(needle),
            Err(ContainerError::NotFound(_))
        ));
    }
    assert!(victim.exists(), "a lookup deleted a file outside names/");

    // Generated names go through the same reservation.
    let a = t.rt.create(t.spec(&["true"])).expect("unnamed");
    let b = t.rt.create(t.spec(&["true"])).expect("unnamed");
    assert_ne!(a.name, b.name);
    for c in [&a, &b] {
        assert_eq!(t.rt.lookup(&c.name).expect("by generated name").id, c.id);
        assert_eq!(
            std::fs::read_to_string(names.join(&c.name)).expect("entry"),
            c.id
        );
    }
}

#[test]
fn name_index_is_rebuilt_on_open() {
    use shoal_runtime::{ContainerError, Runtime};
    if !require_root() {
        return;
    }
    let t = TestRuntime::new();
    let mut made = Vec::new();
    for name in ["alpha", "beta"] {
        let spec = ContainerSpec {
            name: Some(name.into()),
            ..t.spec(&["true"])
        };
        made.push(t.rt.create(spec).expect("create"));
    }
    made.push(t.rt.create(t.spec(&["true"])).expect("unnamed"));

    // A data root without an index, as one from before the index existed.
    std::fs::remove_dir_all(t.rt.names_dir()).expect("remove names/");
    let rt = Runtime::open(t.rt.config().clone()).expect("reopen");
    for c in &made {
        assert_eq!(rt.lookup(&c.name).expect("by name").id, c.id);
    }
    assert!(matches!(
        rt.create(ContainerSpec {
            name: Some("alpha".into()),
            ..t.spec(&["true"])
        }),
        Err(ContainerError::NameInUse { .. })
    ));

    // Without the marker the index is rebuilt in full: lost entries come back and entries
    // whose container is gone are dropped.
    let names = rt.names_dir();
    std::fs::remove_file(names.join("beta")).expect("remove entry");
    std::fs::write(names.join("gone"), "cd".repeat(32)).expect("write stale entry");
    std::fs::remove_file(names.join(".complete")).expect("remove marker");
    let rt = Runtime::open(t.rt.config().clone()).expect("reopen");
    assert_eq!(rt.lookup("beta").expect("by name").id, made[1].id);
    assert!(
        !names.join("gone").exists(),
        "stale entry kept by the rebuild"
    );

    // With the marker, fewer entries than containers (an entry deleted by hand, or a runtime
    // without the index wrote here) triggers the rebuild as well.
    std::fs::remove_file(names.join("beta")).expect("remove entry");
    let rt = Runtime::open(t.rt.config().clone()).expect("reopen");
    assert_eq!(rt.lookup("beta").expect("by name").id, made[1].id);
}
