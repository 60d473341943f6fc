//! The `shoal` client's command line: one module per noun (`image`, `container`, `system`,
//! and for the cluster `swarm`, `node`, `service`),
//! Docker's flags, output and exit codes, and Docker's top-level shortcuts (`shoal run`,
//! `shoal ps`, `shoal images`, …) mapped onto the same handlers. `network` manages the
//! node's bridge networks and the cluster's overlay networks.
//!
//! Handlers return the process's exit code, or an error; [`failure_code`] maps an error to
//! the exit code Docker would use and [`failure_message`] to the text it prints, so that
//! `main` is the only place that exits.

use std::io::Write;

use clap::{Parser, Subcommand};
use tonic::Status;

use crate::client::{Client, ClientError, Host, DEFAULT_HOST, HOST_ENV};

pub mod container;
pub mod image;
pub mod inspect;
pub mod network;
pub mod node;
pub mod service;
pub mod swarm;
pub mod system;

/// Docker's exit code for a failure of the CLI or daemon itself in `run` and `create`.
pub const EXIT_SHOAL_FAILED: i32 = 125;

/// Docker's exit code for other commands' failures.
pub const EXIT_FAILED: i32 = 1;

/// `shoal`: the client of a node's `shoald`.
#[derive(Debug, Parser)]
#[command(
    name = "shoal",
    version,
    about = "The shoal client: images and containers of a node, through its shoald"
)]
pub struct Cli {
    /// Daemon socket to connect to
    #[arg(
        short = 'H',
        long = "host",
        env = HOST_ENV,
        default_value = DEFAULT_HOST,
        global = true,
        value_name = "unix:///PATH"
    )]
    pub host: String,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage images
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Manage containers
    #[command(subcommand)]
    Container(container::ContainerCommand),
    /// Show the shoal version information
    Version,
    /// Return low-level information on containers or images
    Inspect(inspect::InspectArgs),
    /// Manage the swarm
    #[command(subcommand)]
    Swarm(swarm::SwarmCommand),
    /// Manage swarm nodes
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Manage swarm services
    #[command(subcommand)]
    Service(service::ServiceCommand),
    /// Manage networks
    #[command(subcommand)]
    Network(network::NetworkCommand),
    /// Display system-wide information (the node's swarm membership)
    Info,

    /// Create and run a new container from an image
    #[command(disable_help_flag = true)]
    Run(container::RunArgs),
    /// Create a new container
    #[command(disable_help_flag = true)]
    Create(container::CreateArgs),
    /// Execute a command in a running container
    Exec(container::ExecArgs),
    /// List containers
    Ps(container::LsArgs),
    /// Fetch the logs of a container
    Logs(container::LogsArgs),
    /// Start one or more stopped containers
    Start(container::StartArgs),
    /// Stop one or more running containers
    Stop(container::StopArgs),
    /// Kill one or more running containers
    Kill(container::KillArgs),
    /// Remove one or more containers
    Rm(container::RmArgs),
    /// Block until one or more containers stop, then print their exit codes
    Wait(container::WaitArgs),
    /// Display a live stream of container(s) resource usage statistics
    Stats(container::StatsArgs),
    /// List images
    Images(image::LsArgs),
    /// Remove one or more images
    Rmi(image::RmArgs),
    /// Load an image from a tar archive or STDIN
    Load(image::LoadArgs),
    /// Import the contents from a tarball to create a filesystem image
    Import(image::ImportArgs),
}

/// A command with the shortcuts resolved to the noun commands they stand for.
#[derive(Debug)]
enum Action {
    Image(image::ImageCommand),
    Container(Box<container::ContainerCommand>),
    Inspect(inspect::InspectArgs),
    Version,
    Swarm(swarm::SwarmCommand),
    Node(node::NodeCommand),
    Service(Box<service::ServiceCommand>),
    Network(network::NetworkCommand),
    Info,
}

impl From<Command> for Action {
    fn from(command: Command) -> Action {
        use container::ContainerCommand as C;
        use image::ImageCommand as I;
        match command {
            Command::Image(c) => Action::Image(c),
            Command::Container(c) => Action::Container(Box::new(c)),
            Command::Version => Action::Version,
            Command::Inspect(a) => Action::Inspect(a),
            Command::Swarm(c) => Action::Swarm(c),
            Command::Node(c) => Action::Node(c),
            Command::Service(c) => Action::Service(Box::new(c)),
            Command::Network(c) => Action::Network(c),
            Command::Info => Action::Info,
            Command::Run(a) => Action::Container(Box::new(C::Run(a))),
            Command::Create(a) => Action::Container(Box::new(C::Create(a))),
            Command::Exec(a) => Action::Container(Box::new(C::Exec(a))),
            Command::Ps(a) => Action::Container(Box::new(C::Ls(a))),
            Command::Logs(a) => Action::Container(Box::new(C::Logs(a))),
            Command::Start(a) => Action::Container(Box::new(C::Start(a))),
            Command::Stop(a) => Action::Container(Box::new(C::Stop(a))),
            Command::Kill(a) => Action::Container(Box::new(C::Kill(a))),
            Command::Rm(a) => Action::Container(Box::new(C::Rm(a))),
            Command::Wait(a) => Action::Container(Box::new(C::Wait(a))),
            Command::Stats(a) => Action::Container(Box::new(C::Stats(a))),
            Command::Images(a) => Action::Image(I::Ls(a)),
            Command::Rmi(a) => Action::Image(I::Rm(a)),
            Command::Load(a) => Action::Image(I::Load(a)),
            Command::Import(a) => Action::Image(I::Import(a)),
        }
    }
}

impl Action {
    /// Whether Docker exits 125 (rather than 1) when this command fails by itself.
    fn fails_with_125(&self) -> bool {
        matches!(
            self,
            Action::Container(c)
                if matches!(**c, container::ContainerCommand::Run(_) | container::ContainerCommand::Create(_))
        )
    }
}

/// A request the daemon answered with an error: printed as Docker prints them.
#[derive(Debug, thiserror::Error)]
#[error("Error response from daemon: {}", .0.message())]
pub struct DaemonError(pub Status);

/// `?` for gRPC results: wraps a `Status` into a [`DaemonError`].
pub trait OrDaemonError<T> {
    /// The value, or the status as a [`DaemonError`].
    fn or_daemon_error(self) -> anyhow::Result<T>;
}

impl<T> OrDaemonError<T> for Result<T, Status> {
    fn or_daemon_error(self) -> anyhow::Result<T> {
        self.map_err(|status| DaemonError(status).into())
    }
}

/// What `main` needs to end the process: the command line's failure mode and its result.
#[derive(Debug)]
pub struct Outcome {
    /// The process's exit code when `result` is `Ok`.
    pub result: anyhow::Result<i32>,
    fails_with_125: bool,
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Outcome {
    let action = Action::from(cli.command);
    let fails_with_125 = action.fails_with_125();
    let result = dispatch(&cli.host, action).await;
    Outcome {
        result,
        fails_with_125,
    }
}

async fn dispatch(host: &str, action: Action) -> anyhow::Result<i32> {
    let host: Host = host.parse()?;
    match action {
        Action::Version => system::version(&host).await,
        Action::Inspect(args) => inspect::inspect(&Client::connect(&host).await?, args).await,
        Action::Image(cmd) => image::run(&Client::connect(&host).await?, cmd).await,
        Action::Container(cmd) => container::run(&Client::connect(&host).await?, *cmd).await,
        Action::Swarm(cmd) => swarm::run(&Client::connect(&host).await?, cmd).await,
        Action::Node(cmd) => node::run(&Client::connect(&host).await?, cmd).await,
        Action::Service(cmd) => service::run(&Client::connect(&host).await?, *cmd).await,
        Action::Network(cmd) => network::run(&host, cmd).await,
        Action::Info => swarm::info(&Client::connect(&host).await?).await,
    }
}

impl Outcome {
    /// The exit code for the outcome, printing the error (once) if there is one.
    pub fn report(self) -> i32 {
        match self.result {
            Ok(code) => code,
            Err(err) => {
                let mut stderr = std::io::stderr().lock();
                let _ = writeln!(stderr, "{}", failure_message(&err));
                failure_code(&err, self.fails_with_125)
            }
        }
    }
}

/// Docker's text for a failure: the daemon's and connection errors as they are, the
/// client's own as `Error: …` with their causes.
pub fn failure_message(err: &anyhow::Error) -> String {
    if err.downcast_ref::<DaemonError>().is_some() || err.downcast_ref::<ClientError>().is_some() {
        return err.to_string();
    }
    format!("Error: {err:#}")
}

/// Docker's exit code for a failure: a failed start's own code (126: cannot execute, 127: not
/// found) for `run`, else 125 for `run`/`create` and 1 for the rest.
pub fn failure_code(err: &anyhow::Error, fails_with_125: bool) -> i32 {
    if !fails_with_125 {
        return EXIT_FAILED;
    }
    err.downcast_ref::<DaemonError>()
        .and_then(|DaemonError(status)| start_exit_code(status))
        .unwrap_or(EXIT_SHOAL_FAILED)
}

/// The exit code a failed start carries ([`shoal_proto::EXIT_CODE_METADATA`]).
pub fn start_exit_code(status: &Status) -> Option<i32> {
    status
        .metadata()
        .get(shoal_proto::EXIT_CODE_METADATA)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Writes `bytes` to stdout or stderr and flushes, so that a container's output interleaves
/// as it was written. A closed stdout (`| head`) is not an error worth reporting.
pub fn write_out(to_stderr: bool, bytes: &[u8]) {
    if to_stderr {
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(bytes).and_then(|()| err.flush());
    } else {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(bytes).and_then(|()| out.flush());
    }
}

/// Pretty JSON as `docker inspect` prints it (4-space indent).
pub fn inspect_json(values: &[serde_json::Value]) -> String {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    serde::Serialize::serialize(values, &mut ser).expect("JSON values always serialize");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn failures_map_to_docker_exit_codes() {
        let mut status = Status::failed_precondition("exec: \"x\": executable file not found");
        status.metadata_mut().insert(
            shoal_proto::EXIT_CODE_METADATA,
            tonic::metadata::MetadataValue::from(127),
        );
        let daemon = anyhow::Error::from(DaemonError(status));
        assert_eq!(failure_code(&daemon, true), 127);
        assert_eq!(failure_code(&daemon, false), 1);
        let missing = anyhow::Error::from(DaemonError(Status::not_found("No such image: x")));
        assert_eq!(failure_code(&missing, true), 125);
        assert_eq!(
            failure_message(&missing),
            "Error response from daemon: No such image: x"
        );
        let local = anyhow::anyhow!("bad").context("open x");
        assert_eq!(failure_message(&local), "Error: open x: bad");
    }

    #[test]
    fn inspect_prints_like_docker() {
        let doc = serde_json::json!({"Id": "abc"});
        assert_eq!(
            inspect_json(&[doc]),
            "[\n    {\n        \"Id\": \"abc\"\n    }\n]"
        );
    }
}
