//! `container create`, `run` and `start`: the container's settings from the flags, and the
//! foreground path — start, stream the output (and with `-i` the input; with `-t` on this
//! terminal in raw mode) until the container exits, exit with its code — through the
//! daemon's `Attach`, which starts the container and removes an auto-remove one before it
//! reports the exit, so `run --rm` returns with the container gone, as Docker's does.

use std::io::IsTerminal;

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
    let network = match options.network {
        NetworkArg::None => pb::NetworkMode::None,
        NetworkArg::Host => pb::NetworkMode::Host,
    };
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
}
