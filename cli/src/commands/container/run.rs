//! `container create`, `run` and `start`: the container's settings from the flags, and the
//! foreground path — start, stream the output (and with `-i` the input; with `-t` on this
//! terminal in raw mode) until the container exits, exit with its code — through the
//! daemon's `Attach`, which starts the container and removes an auto-remove one before it
//! reports the exit, so `run --rm` returns with the container gone, as Docker's does.
//! The `--network` and `-p` values are read here too, with Docker's syntax.

use std::io::IsTerminal;
use std::net::IpAddr;

use anyhow::bail;
use shoal_proto::node::v1 as pb;
use shoal_proto::node::v1::attach_container_request::Msg as AttachIn;
use shoal_proto::node::v1::attach_container_response::Event;
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{ContainerOptions, CreateArgs, NetworkArg, RunArgs, StartArgs};
use crate::client::Client;
use crate::commands::{write_out, DaemonError, OrDaemonError, EXIT_FAILED};
use crate::terminal::{self, RawMode};

/// Errors of the container options' own checks, before anything reaches the daemon.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// `--network container:NAME`.
    #[error(
        "network mode \"{0}\" is not supported: shoal containers cannot share another \
         container's network namespace"
    )]
    ContainerNetwork(String),
    /// `-p` without a container port (`-p 8080:`).
    #[error("no container port in \"{0}\"")]
    NoContainerPort(String),
    /// `-p` with `FIRST-LAST`.
    #[error("port range \"{0}\" is not supported: publish each port with its own -p")]
    PortRange(String),
    /// A container port that is not 1–65535.
    #[error("invalid container port \"{0}\": want a number from 1 to 65535")]
    ContainerPort(String),
    /// A host port that is not 0–65535.
    #[error("invalid host port \"{0}\": want a number from 0 to 65535")]
    HostPort(String),
    /// A host address that is not an IP address.
    #[error("invalid host IP address \"{0}\"")]
    HostIp(String),
    /// A protocol other than `tcp` and `udp`.
    #[error("invalid protocol \"{0}\": want tcp or udp")]
    Protocol(String),
    /// `-p` with `--network host` or `none`, whose ports cannot be published (Docker's text).
    #[error("conflicting options: port publishing and the container type network mode")]
    PublishConflict,
}

/// Reads `--network`: `none`, `host`, `bridge` (or `default`, or empty: the default bridge
/// network), `container:NAME` (refused), or a user-defined network's name or ID.
pub fn network_arg(value: &str) -> Result<NetworkArg, OptionError> {
    Ok(match value {
        "none" => NetworkArg::None,
        "host" => NetworkArg::Host,
        "" | "bridge" | "default" => NetworkArg::Bridge(String::new()),
        _ if value.starts_with("container:") => {
            return Err(OptionError::ContainerNetwork(value.to_string()))
        }
        name => NetworkArg::Bridge(name.to_string()),
    })
}

/// Reads a `-p` value: Docker's `[HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTOCOL]`, split as
/// its `nat.ParsePortSpec` splits it (the last field is the container port, the one before
/// it the host port, the rest the address, `[…]` around an IPv6 one). An empty or missing
/// host port is 0, for the daemon to pick. Unlike Docker, ranges are refused.
pub fn publish_arg(value: &str) -> Result<pb::PortBinding, OptionError> {
    // Only the address can hold more colons (an IPv6 one), so split from the right.
    let mut fields = value.rsplitn(3, ':');
    let container = fields.next().unwrap_or_default();
    let host_port = fields.next().unwrap_or_default();
    let ip = fields.next().unwrap_or_default();
    let (container_port, protocol) = container.split_once('/').unwrap_or((container, ""));
    let protocol = match protocol.to_ascii_lowercase().as_str() {
        "" | "tcp" => "tcp",
        "udp" => "udp",
        _ => return Err(OptionError::Protocol(protocol.to_string())),
    };
    if container_port.is_empty() {
        return Err(OptionError::NoContainerPort(value.to_string()));
    }
    let container_port = port(container_port, OptionError::ContainerPort)?;
    if container_port == 0 {
        return Err(OptionError::ContainerPort("0".to_string()));
    }
    let host_port = if host_port.is_empty() {
        0
    } else {
        port(host_port, OptionError::HostPort)?
    };
    let ip = ip
        .strip_prefix('[')
        .and_then(|i| i.strip_suffix(']'))
        .unwrap_or(ip);
    if !ip.is_empty() && ip.parse::<IpAddr>().is_err() {
        return Err(OptionError::HostIp(ip.to_string()));
    }
    Ok(pb::PortBinding {
        host_ip: ip.to_string(),
        host_port: host_port.into(),
        container_port: container_port.into(),
        protocol: protocol.to_string(),
    })
}

/// One port number; `invalid` makes the error of a value that is not one.
fn port(value: &str, invalid: fn(String) -> OptionError) -> Result<u16, OptionError> {
    if value.contains('-') {
        return Err(OptionError::PortRange(value.to_string()));
    }
    // `str::parse` would also take a sign, which Go's `ParseUint` (Docker's) does not.
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(value.to_string()));
    }
    value.parse().map_err(|_| invalid(value.to_string()))
}

/// The create request for `options`.
pub fn spec(options: &ContainerOptions) -> anyhow::Result<pb::ContainerSpec> {
    let Some((image, cmd)) = options.args.split_first() else {
        bail!("\"create\" requires at least 1 argument");
    };
    let env = options
        .env
        .iter()
        .filter_map(|e| {
            if e.contains('=') {
                return Some(e.clone());
            }
            // `-e NAME` passes the client's value, and nothing when it has none (Docker).
            std::env::var(e).ok().map(|value| format!("{e}={value}"))
        })
        .collect();
    let labels = options
        .labels
        .iter()
        .map(|l| {
            let (key, value) = l.split_once('=').unwrap_or((l, ""));
            pb::Label {
                key: key.to_string(),
                value: value.to_string(),
            }
        })
        .collect();
    let (network, network_name) = match &options.network {
        NetworkArg::None => (pb::NetworkMode::None, ""),
        NetworkArg::Host => (pb::NetworkMode::Host, ""),
        NetworkArg::Bridge(name) => (pb::NetworkMode::Bridge, name.as_str()),
    };
    // Docker refuses this only for `container:` mode and drops the ports with a warning for
    // `host`; refusing both here says at once that nothing will be published.
    if !options.publish.is_empty() && network != pb::NetworkMode::Bridge {
        return Err(OptionError::PublishConflict.into());
    }
    Ok(pb::ContainerSpec {
        name: options.name.clone(),
        image: image.clone(),
        cmd: cmd.to_vec(),
        // Docker's `--entrypoint` is one word; `--entrypoint ""` clears the image's.
        entrypoint: options.entrypoint.as_ref().map(|e| pb::StringList {
            values: if e.is_empty() {
                vec![]
            } else {
                vec![e.clone()]
            },
        }),
        env,
        workdir: options.workdir.clone(),
        user: options.user.clone(),
        hostname: options.hostname.clone(),
        memory: options.memory,
        // Docker: 0 CPUs is "no limit", and so is a pids limit of 0 or -1.
        nano_cpus: options.cpus.filter(|n| *n > 0),
        pids_limit: options.pids_limit.filter(|n| *n > 0),
        read_only: options.read_only,
        cap_add: options.cap_add.clone(),
        cap_drop: options.cap_drop.clone(),
        network: network.into(),
        network_name: network_name.to_string(),
        ports: options.publish.clone(),
        auto_remove: options.rm,
        tty: options.tty,
        open_stdin: options.interactive,
        labels,
    })
}

async fn create_container(client: &Client, options: &ContainerOptions) -> anyhow::Result<String> {
    let request = pb::CreateContainerRequest {
        spec: Some(spec(options)?),
    };
    let created = client
        .containers
        .clone()
        .create(request)
        .await
        .or_daemon_error()?;
    Ok(created.into_inner().id)
}

/// `container create`: prints the new container's id.
pub async fn create(client: &Client, args: CreateArgs) -> anyhow::Result<i32> {
    println!("{}", create_container(client, &args.options).await?);
    Ok(0)
}

/// `container run`: `-d` prints the id; otherwise the container's output and exit code.
pub async fn run(client: &Client, args: RunArgs) -> anyhow::Result<i32> {
    let options = &args.options;
    // A terminal session needs a terminal on this side (Docker's CheckTty wording).
    if !args.detach && options.tty && !std::io::stdin().is_terminal() {
        bail!("the input device is not a TTY");
    }
    let id = create_container(client, options).await?;
    if args.detach {
        let request = pb::StartContainerRequest { id: id.clone() };
        client
            .containers
            .clone()
            .start(request)
            .await
            .or_daemon_error()?;
        println!("{id}");
        return Ok(0);
    }
    attach(client, &id, true, options.interactive).await
}

/// `container start`: prints the names as given, or with `-a`/`-i` streams the one
/// container's output (and input) and exits with its code.
pub async fn start(client: &Client, args: StartArgs) -> anyhow::Result<i32> {
    if args.attach || args.interactive {
        let [container] = &args.containers[..] else {
            bail!("you cannot start and attach multiple containers at once");
        };
        return attach(client, container, true, args.interactive).await;
    }
    let mut containers = client.containers.clone();
    let mut failed = Vec::new();
    for id in args.containers {
        match containers
            .start(pb::StartContainerRequest { id: id.clone() })
            .await
        {
            Ok(_) => println!("{id}"),
            Err(status) => {
                eprintln!("{}", DaemonError(status));
                failed.push(id);
            }
        }
    }
    if failed.is_empty() {
        return Ok(0);
    }
    eprintln!("Error: failed to start containers: {}", failed.join(", "));
    Ok(EXIT_FAILED)
}

/// Requests buffered towards the daemon (stdin chunks, resizes).
const INPUT_BUFFER: usize = 16;

/// Size of one read of stdin.
const STDIN_CHUNK: usize = 32 * 1024;

fn terminal_size() -> Option<pb::TerminalSize> {
    terminal::size().map(|(rows, cols)| pb::TerminalSize {
        rows: rows.into(),
        cols: cols.into(),
    })
}

/// Streams the container's output (and, with `stdin`, this process's input) until it exits,
/// starting it first when `start`, and returns its exit code. For a container with a
/// terminal, this terminal is put in raw mode and its size follows the window; otherwise
/// signals this process receives are forwarded to the container, as Docker's `--sig-proxy`.
async fn attach(client: &Client, id: &str, start: bool, stdin: bool) -> anyhow::Result<i32> {
    let mut containers = client.containers.clone();
    let (tx, rx) = mpsc::channel(INPUT_BUFFER);
    let options = pb::AttachOptions {
        id: id.to_string(),
        start,
        stdin,
        size: terminal_size(),
    };
    tx.send(pb::AttachContainerRequest {
        msg: Some(AttachIn::Options(options)),
    })
    .await
    .map_err(|_| anyhow::anyhow!("the attach request stream closed before it started"))?;
    let mut stream = containers
        .attach(ReceiverStream::new(rx))
        .await
        .or_daemon_error()?
        .into_inner();
    let tty = match stream.message().await.or_daemon_error()? {
        Some(pb::AttachContainerResponse {
            event: Some(Event::Attached(attached)),
        }) => attached.tty,
        _ => bail!("the daemon did not confirm the attach"),
    };
    // Raw mode from here on, restored when this function returns (before the exit).
    let _raw = if tty { RawMode::enable()? } else { None };
    if stdin {
        tokio::spawn(pump_stdin(tx.clone()));
    }
    let mut winch = signal(SignalKind::window_change())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut quit = signal(SignalKind::quit())?;
    loop {
        let forward = tokio::select! {
            message = stream.message() => {
                match message.or_daemon_error()? {
                    Some(pb::AttachContainerResponse { event: Some(Event::Output(chunk)) }) => {
                        write_out(chunk.stream() == pb::LogStream::Stderr, &chunk.data);
                        continue;
                    }
                    Some(pb::AttachContainerResponse { event: Some(Event::Exit(exit)) }) => {
                        return Ok(exit.exit_code);
                    }
                    Some(_) => continue,
                    None => bail!("the daemon ended the output stream before the container exited"),
                }
            }
            Some(()) = winch.recv() => {
                if let (true, Some(size)) = (tty, terminal_size()) {
                    let resize = pb::AttachContainerRequest { msg: Some(AttachIn::Resize(size)) };
                    // The daemon stops reading only when the container is gone.
                    let _ = tx.send(resize).await;
                }
                continue;
            }
            Some(()) = interrupt.recv() => "INT",
            Some(()) = terminate.recv() => "TERM",
            Some(()) = hangup.recv() => "HUP",
            Some(()) = quit.recv() => "QUIT",
        };
        let request = pb::KillContainerRequest {
            id: id.to_string(),
            signal: forward.to_string(),
        };
        // The container may have exited meanwhile; its exit is reported on the stream.
        if let Err(status) = containers.kill(request).await {
            tracing::debug!(%status, "forwarding SIG{forward} failed");
        }
    }
}

/// Sends this process's stdin until it ends, then closes the container's.
async fn pump_stdin(tx: mpsc::Sender<pb::AttachContainerRequest>) {
    let mut stdin = tokio::io::stdin();
    loop {
        let mut buf = vec![0u8; STDIN_CHUNK];
        let msg = match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => AttachIn::StdinClose(true),
            Ok(n) => {
                buf.truncate(n);
                AttachIn::Stdin(buf)
            }
        };
        let done = matches!(msg, AttachIn::StdinClose(_));
        if tx
            .send(pb::AttachContainerRequest { msg: Some(msg) })
            .await
            .is_err()
            || done
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::{Cli, Command};
    use clap::Parser;

    fn run_spec(args: &[&str]) -> pb::ContainerSpec {
        let mut argv = vec!["shoal", "run"];
        argv.extend_from_slice(args);
        let Command::Run(run) = Cli::try_parse_from(argv).expect("valid").command else {
            panic!("not run");
        };
        spec(&run.options).expect("valid spec")
    }

    #[test]
    fn flags_become_the_spec() {
        let spec = run_spec(&[
            "--name",
            "web",
            "-e",
            "A=1",
            "-w",
            "/tmp",
            "-u",
            "1000:1000",
            "--pids-limit",
            "-1",
            "--cpus",
            "0",
            "--network",
            "host",
            "--label",
            "k=v",
            "--label",
            "flag",
            "--cap-add",
            "NET_ADMIN",
            "--cap-drop",
            "ALL",
            "--read-only",
            "--rm",
            "demo",
            "sh",
        ]);
        assert_eq!(spec.name.as_deref(), Some("web"));
        assert_eq!(spec.image, "demo");
        assert_eq!(spec.cmd, ["sh"]);
        assert_eq!(spec.env, ["A=1"]);
        assert_eq!(spec.workdir.as_deref(), Some("/tmp"));
        assert_eq!(spec.user.as_deref(), Some("1000:1000"));
        assert_eq!(spec.pids_limit, None);
        assert_eq!(spec.nano_cpus, None);
        assert_eq!(spec.network(), pb::NetworkMode::Host);
        assert_eq!(spec.labels.len(), 2);
        assert_eq!(spec.labels[1].value, "");
        assert_eq!(spec.cap_add, ["NET_ADMIN"]);
        assert_eq!(spec.cap_drop, ["ALL"]);
        assert!(spec.read_only && spec.auto_remove);
        assert_eq!(spec.entrypoint, None);
    }

    #[test]
    fn entrypoint_is_one_word_and_empty_clears_it() {
        let spec = run_spec(&["--entrypoint", "/bin/sh -c", "demo"]);
        assert_eq!(
            spec.entrypoint.map(|e| e.values),
            Some(vec!["/bin/sh -c".to_string()])
        );
        let spec = run_spec(&["--entrypoint", "", "demo"]);
        assert_eq!(spec.entrypoint.map(|e| e.values), Some(vec![]));
    }

    #[test]
    fn env_without_value_comes_from_the_client() {
        std::env::set_var("SHOAL_TEST_FROM_CLIENT", "yes");
        let spec = run_spec(&[
            "-e",
            "SHOAL_TEST_FROM_CLIENT",
            "-e",
            "SHOAL_TEST_SURELY_UNSET_42",
            "demo",
        ]);
        assert_eq!(spec.env, ["SHOAL_TEST_FROM_CLIENT=yes"]);
    }

    fn run_options(args: &[&str]) -> ContainerOptions {
        let mut argv = vec!["shoal", "run"];
        argv.extend_from_slice(args);
        let Command::Run(run) = Cli::try_parse_from(argv).expect("valid").command else {
            panic!("not run");
        };
        run.options
    }

    #[test]
    fn network_defaults_to_the_bridge() {
        let spec = run_spec(&["demo"]);
        assert_eq!(spec.network(), pb::NetworkMode::Bridge);
        assert_eq!(spec.network_name, "");
        assert!(spec.ports.is_empty());
        let cases = [
            (&["--network", "bridge"][..], pb::NetworkMode::Bridge, ""),
            (&["--network", "default"], pb::NetworkMode::Bridge, ""),
            (&["--network", "back"], pb::NetworkMode::Bridge, "back"),
            (&["--net", "3f2a"], pb::NetworkMode::Bridge, "3f2a"),
            (&["--network=host"], pb::NetworkMode::Host, ""),
            (&["--net", "none"], pb::NetworkMode::None, ""),
        ];
        for (args, mode, name) in cases {
            let mut argv = args.to_vec();
            argv.push("demo");
            let spec = run_spec(&argv);
            assert_eq!((spec.network(), spec.network_name.as_str()), (mode, name));
        }
        assert_eq!(
            network_arg("container:web"),
            Err(OptionError::ContainerNetwork("container:web".into()))
        );
        let argv = ["shoal", "run", "--network", "container:web", "demo"];
        let err = Cli::try_parse_from(argv).expect_err("refused");
        assert!(err.to_string().contains("is not supported"), "{err}");
    }

    fn binding(ip: &str, host: u32, container: u32, protocol: &str) -> pb::PortBinding {
        pb::PortBinding {
            host_ip: ip.into(),
            host_port: host,
            container_port: container,
            protocol: protocol.into(),
        }
    }

    #[test]
    fn publish_values() {
        let good = [
            ("80", binding("", 0, 80, "tcp")),
            ("8080:80", binding("", 8080, 80, "tcp")),
            ("8080:80/tcp", binding("", 8080, 80, "tcp")),
            ("5353:53/udp", binding("", 5353, 53, "udp")),
            ("5353:53/UDP", binding("", 5353, 53, "udp")),
            ("53/udp", binding("", 0, 53, "udp")),
            (":80", binding("", 0, 80, "tcp")),
            ("80/", binding("", 0, 80, "tcp")),
            ("0.0.0.0:8080:80", binding("0.0.0.0", 8080, 80, "tcp")),
            ("127.0.0.1::80", binding("127.0.0.1", 0, 80, "tcp")),
            ("[::1]:8080:80", binding("::1", 8080, 80, "tcp")),
            ("::1:8080:80/udp", binding("::1", 8080, 80, "udp")),
            ("65535:65535", binding("", 65535, 65535, "tcp")),
        ];
        for (value, want) in good {
            assert_eq!(publish_arg(value), Ok(want), "{value}");
        }
        let bad = [
            ("8000-8010:80", OptionError::PortRange("8000-8010".into())),
            ("80-81", OptionError::PortRange("80-81".into())),
            ("8080:0", OptionError::ContainerPort("0".into())),
            ("0", OptionError::ContainerPort("0".into())),
            ("8080:65536", OptionError::ContainerPort("65536".into())),
            ("8080:http", OptionError::ContainerPort("http".into())),
            ("+80", OptionError::ContainerPort("+80".into())),
            ("99999:80", OptionError::HostPort("99999".into())),
            ("x:80", OptionError::HostPort("x".into())),
            ("8080:", OptionError::NoContainerPort("8080:".into())),
            ("", OptionError::NoContainerPort("".into())),
            ("80/sctp", OptionError::Protocol("sctp".into())),
            ("80/tcp/x", OptionError::Protocol("tcp/x".into())),
            ("localhost:8080:80", OptionError::HostIp("localhost".into())),
            ("1.2.3:8080:80", OptionError::HostIp("1.2.3".into())),
        ];
        for (value, want) in bad {
            assert_eq!(publish_arg(value), Err(want), "{value}");
        }
        let argv = ["shoal", "run", "-p", "8000-8010:80", "demo"];
        let err = Cli::try_parse_from(argv).expect_err("refused");
        assert!(err.to_string().contains("8000-8010"), "{err}");
    }

    #[test]
    fn published_ports_reach_the_spec() {
        let sent = run_spec(&[
            "-p",
            "8080:80",
            "--publish",
            "5353:53/udp",
            "--network",
            "back",
            "demo",
        ]);
        assert_eq!(
            sent.ports,
            [binding("", 8080, 80, "tcp"), binding("", 5353, 53, "udp")]
        );
        assert_eq!(sent.network_name, "back");
        for mode in ["host", "none"] {
            let options = run_options(&["-p", "80", "--network", mode, "demo"]);
            let err = spec(&options).expect_err("conflict");
            assert_eq!(
                err.to_string(),
                "conflicting options: port publishing and the container type network mode"
            );
        }
    }
}
