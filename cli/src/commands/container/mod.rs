//! `shoal container …`: the flags of each subcommand and the short ones' handlers. Creating,
//! running and attaching are in [`run`], exec in [`exec`], the `ls` and `stats` tables in
//! [`table`].

use std::io::Write;

use anyhow::Context;
use clap::{ArgAction, Args, Subcommand};
use shoal_proto::node::v1 as pb;
use tonic::Code;

use super::{write_out, DaemonError, OrDaemonError, EXIT_FAILED};
use crate::client::Client;
use crate::units::{parse_cpus, parse_memory};

pub mod exec;
pub mod run;
pub mod table;

/// `shoal container` subcommands.
#[derive(Debug, Subcommand)]
pub enum ContainerCommand {
    /// Create and run a new container from an image
    #[command(disable_help_flag = true)]
    Run(RunArgs),
    /// Create a new container
    #[command(disable_help_flag = true)]
    Create(CreateArgs),
    /// List containers
    #[command(visible_aliases = ["ps", "list"])]
    Ls(LsArgs),
    /// Fetch the logs of a container
    Logs(LogsArgs),
    /// Start one or more stopped containers
    Start(StartArgs),
    /// Stop one or more running containers
    Stop(StopArgs),
    /// Kill one or more running containers
    Kill(KillArgs),
    /// Remove one or more containers
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
    /// Display detailed information on one or more containers
    Inspect(InspectArgs),
    /// Execute a command in a running container
    Exec(ExecArgs),
    /// Display a live stream of container(s) resource usage statistics
    Stats(StatsArgs),
    /// Block until one or more containers stop, then print their exit codes
    Wait(WaitArgs),
}

/// `--network`: Docker's network modes, less `container:NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkArg {
    /// `none`: only a loopback interface.
    None,
    /// `host`: the host's network stack.
    Host,
    /// A node-local bridge network by name, ID or ID prefix; empty for the default `bridge`
    /// (also `default`, as Docker spells it).
    Bridge(String),
}

/// The flags `run` and `create` share (Docker's container options).
#[derive(Debug, Args)]
pub struct ContainerOptions {
    /// Assign a name to the container
    #[arg(long)]
    pub name: Option<String>,
    /// Set environment variables
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>])
    #[arg(short = 'u', long = "user")]
    pub user: Option<String>,
    /// Container host name
    #[arg(short = 'h', long)]
    pub hostname: Option<String>,
    /// Memory limit (e.g. 64m, 1g)
    #[arg(short = 'm', long, value_name = "BYTES", value_parser = memory_arg)]
    pub memory: Option<i64>,
    /// Number of CPUs
    #[arg(long, value_name = "DECIMAL", value_parser = cpus_arg)]
    pub cpus: Option<i64>,
    /// Tune container pids limit (set -1 for unlimited)
    #[arg(long, allow_negative_numbers = true)]
    pub pids_limit: Option<i64>,
    /// Mount the container's root filesystem as read only
    #[arg(long)]
    pub read_only: bool,
    /// Add Linux capabilities
    #[arg(long = "cap-add", value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop Linux capabilities
    #[arg(long = "cap-drop", value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// Connect a container to a network ("bridge", "host", "none" or a network's name)
    #[arg(
        long,
        alias = "net",
        value_name = "NETWORK",
        value_parser = run::network_arg,
        default_value = "bridge"
    )]
    pub network: NetworkArg,
    /// Publish a container's port to the host ([HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTOCOL])
    #[arg(
        short = 'p',
        long = "publish",
        value_name = "PORT",
        value_parser = run::publish_arg
    )]
    pub publish: Vec<pb::PortBinding>,
    /// Overwrite the default ENTRYPOINT of the image
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Set meta data on a container
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Automatically remove the container when it exits
    #[arg(long)]
    pub rm: bool,
    /// Keep STDIN open even if not attached
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a pseudo-TTY
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Print help (`-h` is `--hostname`, as in Docker)
    #[arg(long, action = ArgAction::Help)]
    pub help: Option<bool>,
    /// The image, then the command and its arguments
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "IMAGE [COMMAND] [ARG...]"
    )]
    pub args: Vec<String>,
}

fn memory_arg(s: &str) -> Result<i64, String> {
    parse_memory(s).map_err(|e| e.to_string())
}

fn cpus_arg(s: &str) -> Result<i64, String> {
    parse_cpus(s).map_err(|e| e.to_string())
}

/// `container create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The container's settings.
    #[command(flatten)]
    pub options: ContainerOptions,
}

/// `container run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run container in background and print container ID
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// The container's settings.
    #[command(flatten)]
    pub options: ContainerOptions,
}

/// `container ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Show all containers (default shows just running)
    #[arg(short, long)]
    pub all: bool,
    /// Only display container IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Don't truncate output
    #[arg(long)]
    pub no_trunc: bool,
}

/// `container logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Follow log output
    #[arg(short, long)]
    pub follow: bool,
    /// Number of lines to show from the end of the logs
    #[arg(
        short = 'n',
        long,
        default_value = "all",
        allow_negative_numbers = true
    )]
    pub tail: String,
    /// Show timestamps
    #[arg(short, long)]
    pub timestamps: bool,
    /// The container
    pub container: String,
}

/// `container start`.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// Attach STDOUT/STDERR and forward signals
    #[arg(short, long)]
    pub attach: bool,
    /// Attach container's STDIN
    #[arg(short, long)]
    pub interactive: bool,
    /// Containers to start
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

/// `container stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// Seconds to wait before killing the container
    #[arg(
        short = 't',
        long = "timeout",
        visible_alias = "time",
        allow_negative_numbers = true
    )]
    pub timeout: Option<i32>,
    /// Containers to stop
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

/// `container kill`.
#[derive(Debug, Args)]
pub struct KillArgs {
    /// Signal to send to the container
    #[arg(short, long, default_value = "KILL")]
    pub signal: String,
    /// Containers to kill
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

/// `container rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Force the removal of a running container (uses SIGKILL)
    #[arg(short, long)]
    pub force: bool,
    /// Containers to remove
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

/// `container inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Containers to inspect
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

/// `container exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Detached mode: run command in the background
    #[arg(short, long)]
    pub detach: bool,
    /// Keep STDIN open even if not attached
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a pseudo-TTY
    #[arg(short, long)]
    pub tty: bool,
    /// Set environment variables
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>])
    #[arg(short, long)]
    pub user: Option<String>,
    /// Working directory inside the container
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// The container, then the command and its arguments
    #[arg(
        required = true,
        num_args = 2..,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CONTAINER COMMAND [ARG...]"
    )]
    pub args: Vec<String>,
}

/// `container stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Show all containers (default shows just running)
    #[arg(short, long)]
    pub all: bool,
    /// Disable streaming stats and only pull the first result
    #[arg(long)]
    pub no_stream: bool,
    /// Do not truncate output
    #[arg(long)]
    pub no_trunc: bool,
    /// Containers (default: all running ones)
    #[arg(value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

/// `container wait`.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Containers to wait for
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

/// Runs a container subcommand; returns the exit code.
pub async fn run(client: &Client, command: ContainerCommand) -> anyhow::Result<i32> {
    match command {
        ContainerCommand::Run(args) => run::run(client, args).await,
        ContainerCommand::Create(args) => run::create(client, args).await,
        ContainerCommand::Start(args) => run::start(client, args).await,
        ContainerCommand::Exec(args) => exec::exec(client, args).await,
        ContainerCommand::Ls(args) => table::ls(client, args).await,
        ContainerCommand::Stats(args) => table::stats(client, args).await,
        ContainerCommand::Logs(args) => logs(client, args).await,
        ContainerCommand::Stop(args) => stop(client, args).await,
        ContainerCommand::Kill(args) => kill(client, args).await,
        ContainerCommand::Rm(args) => rm(client, args).await,
        ContainerCommand::Inspect(args) => inspect(client, args).await,
        ContainerCommand::Wait(args) => wait(client, args).await,
    }
}

/// `--tail`: `all` (or a negative number) is everything.
fn parse_tail(tail: &str) -> anyhow::Result<Option<u64>> {
    if tail == "all" {
        return Ok(None);
    }
    let n: i64 = tail
        .parse()
        .with_context(|| format!("invalid value for --tail: {tail:?}"))?;
    Ok(u64::try_from(n).ok())
}

async fn logs(client: &Client, args: LogsArgs) -> anyhow::Result<i32> {
    let request = pb::LogsRequest {
        id: args.container,
        follow: args.follow,
        tail: parse_tail(&args.tail)?,
    };
    let mut stream = client
        .containers
        .clone()
        .logs(request)
        .await
        .or_daemon_error()?
        .into_inner();
    while let Some(chunk) = stream.message().await.or_daemon_error()? {
        let to_stderr = chunk.stream() == pb::LogStream::Stderr;
        if args.timestamps {
            let mut line = Vec::with_capacity(chunk.time.len() + 1 + chunk.data.len());
            line.extend_from_slice(chunk.time.as_bytes());
            line.push(b' ');
            line.extend_from_slice(&chunk.data);
            write_out(to_stderr, &line);
        } else {
            write_out(to_stderr, &chunk.data);
        }
    }
    Ok(0)
}

/// Runs `op` on each container, printing the name as given on success and the daemon's
/// error otherwise, as Docker's multi-container commands do; exit 1 if any failed.
async fn each<F, Fut>(containers: Vec<String>, mut op: F) -> anyhow::Result<i32>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let mut failed = false;
    for container in containers {
        match op(container.clone()).await {
            Ok(()) => println!("{container}"),
            Err(status) => {
                eprintln!("{}", DaemonError(status));
                failed = true;
            }
        }
    }
    Ok(if failed { EXIT_FAILED } else { 0 })
}

async fn stop(client: &Client, args: StopArgs) -> anyhow::Result<i32> {
    let containers = client.containers.clone();
    each(args.containers, |id| {
        let mut containers = containers.clone();
        async move {
            let request = pb::StopContainerRequest {
                id,
                timeout_seconds: args.timeout,
            };
            containers.stop(request).await.map(drop)
        }
    })
    .await
}

async fn kill(client: &Client, args: KillArgs) -> anyhow::Result<i32> {
    let containers = client.containers.clone();
    each(args.containers, |id| {
        let mut containers = containers.clone();
        let signal = args.signal.clone();
        async move {
            let request = pb::KillContainerRequest { id, signal };
            containers.kill(request).await.map(drop)
        }
    })
    .await
}

async fn rm(client: &Client, args: RmArgs) -> anyhow::Result<i32> {
    let mut containers = client.containers.clone();
    let mut failed = false;
    for id in args.containers {
        let request = pb::RemoveContainerRequest {
            id: id.clone(),
            force: args.force,
        };
        match containers.remove(request).await {
            Ok(_) => println!("{id}"),
            // `rm -f` of a container that is not there is not a failure (Docker's rm.go).
            Err(status) if args.force && status.code() == Code::NotFound => {
                eprintln!("{}", DaemonError(status))
            }
            Err(status) => {
                eprintln!("{}", DaemonError(status));
                failed = true;
            }
        }
    }
    Ok(if failed { EXIT_FAILED } else { 0 })
}

async fn inspect(client: &Client, args: InspectArgs) -> anyhow::Result<i32> {
    let containers = client.containers.clone();
    super::inspect::inspect_each(args.containers, |id| {
        let mut containers = containers.clone();
        async move {
            let answer = containers
                .inspect(pb::InspectContainerRequest { id })
                .await?;
            Ok(answer.into_inner().json)
        }
    })
    .await
}

async fn wait(client: &Client, args: WaitArgs) -> anyhow::Result<i32> {
    let mut containers = client.containers.clone();
    let mut failed = false;
    let mut out = std::io::stdout();
    for id in args.containers {
        match containers.wait(pb::WaitContainerRequest { id }).await {
            Ok(exit) => {
                writeln!(out, "{}", exit.into_inner().exit_code)?;
                out.flush()?;
            }
            Err(status) => {
                eprintln!("{}", DaemonError(status));
                failed = true;
            }
        }
    }
    Ok(if failed { EXIT_FAILED } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Command {
        let mut argv = vec!["shoal"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv)
            .expect("valid command line")
            .command
    }

    #[test]
    fn run_stops_parsing_flags_at_the_image() {
        let Command::Run(run) = parse(&[
            "run",
            "-d",
            "--rm",
            "-e",
            "A=1",
            "-h",
            "box",
            "-m",
            "64m",
            "--cpus",
            "0.5",
            "demo",
            "sh",
            "-c",
            "echo -n hi",
        ]) else {
            panic!("not run");
        };
        assert!(run.detach);
        let o = run.options;
        assert!(o.rm);
        assert_eq!(o.env, ["A=1"]);
        assert_eq!(o.hostname.as_deref(), Some("box"));
        assert_eq!(o.memory, Some(64 << 20));
        assert_eq!(o.cpus, Some(500_000_000));
        assert_eq!(o.args, ["demo", "sh", "-c", "echo -n hi"]);
    }

    #[test]
    fn flags_after_the_image_belong_to_the_command() {
        let Command::Container(ContainerCommand::Run(run)) =
            parse(&["container", "run", "demo", "ls", "-d", "--rm"])
        else {
            panic!("not container run");
        };
        assert!(!run.detach);
        assert!(!run.options.rm);
        assert_eq!(run.options.args, ["demo", "ls", "-d", "--rm"]);
    }

    #[test]
    fn exec_takes_the_container_then_the_command() {
        let Command::Exec(exec) = parse(&["exec", "-i", "-e", "X=1", "c1", "sh", "-c", "id -u"])
        else {
            panic!("not exec");
        };
        assert!(exec.interactive);
        assert_eq!(exec.args, ["c1", "sh", "-c", "id -u"]);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for args in [
            &["run", "--memory", "64x", "demo"][..],
            &["run", "--cpus", "lots", "demo"],
            &["run", "--network", "container:web", "demo"],
            &["run", "-p", "80:http", "demo"],
            &["run", "--network", "a", "--network", "b", "demo"],
            &["run"],
            &["exec", "c1"],
        ] {
            let mut argv = vec!["shoal"];
            argv.extend_from_slice(args);
            assert!(Cli::try_parse_from(argv).is_err(), "{args:?}");
        }
    }

    #[test]
    fn tail_values() {
        assert_eq!(parse_tail("all").expect("all"), None);
        assert_eq!(parse_tail("5").expect("5"), Some(5));
        assert_eq!(parse_tail("-1").expect("-1"), None);
        assert!(parse_tail("x").is_err());
    }
}
