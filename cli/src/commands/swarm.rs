//! `shoal swarm …` (init, join, join-token, leave) and `shoal info`'s swarm section, with
//! Docker's flags and texts (its `cli/command/swarm`). Membership goes to the local
//! `shoald`'s `Swarm` service; join tokens come from the control API, which only managers
//! serve.

use clap::{Args, Subcommand, ValueEnum};
use shoal_proto::cluster::v1 as pb;

use super::OrDaemonError;
use crate::client::Client;

/// `shoal swarm` subcommands.
#[derive(Debug, Subcommand)]
pub enum SwarmCommand {
    /// Initialize a swarm
    Init(InitArgs),
    /// Join a swarm as a node and/or manager
    Join(JoinArgs),
    /// Manage join tokens
    JoinToken(JoinTokenArgs),
    /// Leave the swarm
    Leave(LeaveArgs),
}

/// `swarm init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Advertised address (format: "<ip>[:port]")
    #[arg(long, value_name = "ADDR[:PORT]")]
    pub advertise_addr: Option<String>,
    /// Listen address (format: "<ip>[:port]")
    #[arg(long, value_name = "ADDR[:PORT]")]
    pub listen_addr: Option<String>,
    /// Force create a new cluster from current state
    #[arg(long)]
    pub force_new_cluster: bool,
}

/// `swarm join`.
#[derive(Debug, Args)]
pub struct JoinArgs {
    /// Token for entry into the swarm
    #[arg(long, required = true)]
    pub token: String,
    /// Advertised address (format: "<ip>[:port]")
    #[arg(long, value_name = "ADDR[:PORT]")]
    pub advertise_addr: Option<String>,
    /// Listen address (format: "<ip>[:port]")
    #[arg(long, value_name = "ADDR[:PORT]")]
    pub listen_addr: Option<String>,
    /// A manager's address
    #[arg(value_name = "HOST:PORT")]
    pub remote: String,
}

/// The role a join token admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TokenRole {
    /// The worker token
    Worker,
    /// The manager token
    Manager,
}

impl TokenRole {
    fn name(self) -> &'static str {
        match self {
            TokenRole::Worker => "worker",
            TokenRole::Manager => "manager",
        }
    }
}

/// `swarm join-token`.
#[derive(Debug, Args)]
pub struct JoinTokenArgs {
    /// Rotate join token
    #[arg(long)]
    pub rotate: bool,
    /// Only display token
    #[arg(short, long)]
    pub quiet: bool,
    /// Which token
    #[arg(value_enum, value_name = "worker|manager")]
    pub role: TokenRole,
}

/// `swarm leave`.
#[derive(Debug, Args)]
pub struct LeaveArgs {
    /// Force this node to leave the swarm, ignoring warnings
    #[arg(short, long)]
    pub force: bool,
}

/// Runs a `swarm` subcommand.
pub async fn run(client: &Client, command: SwarmCommand) -> anyhow::Result<i32> {
    match command {
        SwarmCommand::Init(args) => init(client, args).await,
        SwarmCommand::Join(args) => join(client, args).await,
        SwarmCommand::JoinToken(args) => join_token(client, args).await,
        SwarmCommand::Leave(args) => leave(client, args).await,
    }
}

/// Docker's instructions for joining with `token` at `addr`.
fn join_command(role: TokenRole, token: &str, addr: &str) -> String {
    format!(
        "To add a {} to this swarm, run the following command:\n\n    shoal swarm join --token {token} {addr}\n\n",
        role.name()
    )
}

/// Docker's text after `swarm init`.
fn init_text(answer: &pb::InitResponse) -> String {
    format!(
        "Swarm initialized: current node ({}) is now a manager.\n\n{}To add a manager to this swarm, run 'shoal swarm join-token manager' and follow the instructions.\n",
        answer.node_id,
        join_command(TokenRole::Worker, &answer.worker_token, &answer.advertise_addr)
    )
}

async fn init(client: &Client, args: InitArgs) -> anyhow::Result<i32> {
    let answer = client
        .swarm()
        .init(pb::InitRequest {
            advertise_addr: args.advertise_addr.unwrap_or_default(),
            listen_addr: args.listen_addr.unwrap_or_default(),
            force_new_cluster: args.force_new_cluster,
        })
        .await
        .or_daemon_error()?
        .into_inner();
    print!("{}", init_text(&answer));
    Ok(0)
}

async fn join(client: &Client, args: JoinArgs) -> anyhow::Result<i32> {
    let answer = client
        .swarm()
        .join(pb::JoinRequest {
            token: args.token,
            remote_addr: args.remote,
            advertise_addr: args.advertise_addr.unwrap_or_default(),
            listen_addr: args.listen_addr.unwrap_or_default(),
            hostname: String::new(),
        })
        .await
        .or_daemon_error()?
        .into_inner();
    match answer.role() {
        pb::NodeRole::Manager => println!("This node joined a swarm as a manager."),
        pb::NodeRole::Worker => println!("This node joined a swarm as a worker."),
    }
    Ok(0)
}

/// The address to print in join commands: this manager's cluster address (Docker's
/// `ManagerStatus.Addr` of the local node), else the node's address from `Swarm.Info`.
async fn manager_addr(client: &Client, info: &pb::InfoResponse) -> anyhow::Result<String> {
    let node = client
        .control()
        .get_node(pb::GetNodeRequest {
            id: info.node_id.clone(),
        })
        .await
        .or_daemon_error()?
        .into_inner()
        .node;
    Ok(node
        .and_then(|n| n.manager_status)
        .map(|m| m.addr)
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| info.node_addr.clone()))
}

async fn join_token(client: &Client, args: JoinTokenArgs) -> anyhow::Result<i32> {
    let mut control = client.control();
    if args.rotate {
        control
            .rotate_join_token(pb::RotateJoinTokenRequest {
                worker: args.role == TokenRole::Worker,
                manager: args.role == TokenRole::Manager,
            })
            .await
            .or_daemon_error()?;
        if !args.quiet {
            println!("Successfully rotated {} join token.\n", args.role.name());
        }
    }
    let cluster = control
        .get_cluster(pb::GetClusterRequest {})
        .await
        .or_daemon_error()?
        .into_inner();
    let token = match args.role {
        TokenRole::Worker => cluster.worker_token,
        TokenRole::Manager => cluster.manager_token,
    };
    if args.quiet {
        println!("{token}");
        return Ok(0);
    }
    let info = client
        .swarm()
        .info(pb::InfoRequest {})
        .await
        .or_daemon_error()?
        .into_inner();
    let addr = manager_addr(client, &info).await?;
    print!("{}", join_command(args.role, &token, &addr));
    Ok(0)
}

async fn leave(client: &Client, args: LeaveArgs) -> anyhow::Result<i32> {
    client
        .swarm()
        .leave(pb::LeaveRequest { force: args.force })
        .await
        .or_daemon_error()?;
    println!("Node left the swarm.");
    Ok(0)
}

/// Docker's name of a local node state (`LocalNodeState`).
fn local_state_name(state: pb::LocalNodeState) -> &'static str {
    match state {
        pb::LocalNodeState::Inactive => "inactive",
        pb::LocalNodeState::Pending => "pending",
        pb::LocalNodeState::Active => "active",
        pb::LocalNodeState::Error => "error",
        pb::LocalNodeState::Locked => "locked",
    }
}

/// The swarm section of `docker info`, as Docker indents it under "Server:".
fn info_text(info: &pb::InfoResponse) -> String {
    let state = info.state();
    let mut out = format!(" Swarm: {}\n", local_state_name(state));
    if !matches!(
        state,
        pb::LocalNodeState::Active | pb::LocalNodeState::Pending
    ) {
        if !info.error.is_empty() {
            out.push_str(&format!("  Error: {}\n", info.error));
        }
        return out;
    }
    out.push_str(&format!("  NodeID: {}\n", info.node_id));
    if !info.error.is_empty() {
        out.push_str(&format!("  Error: {}\n", info.error));
    }
    out.push_str(&format!("  Is Manager: {}\n", info.control_available));
    if info.control_available {
        out.push_str(&format!("  ClusterID: {}\n", info.cluster_id));
        out.push_str(&format!("  Managers: {}\n", info.managers.len()));
    }
    out.push_str(&format!("  Node Address: {}\n", info.node_addr));
    if !info.managers.is_empty() {
        out.push_str("  Manager Addresses:\n");
        let mut managers = info.managers.clone();
        managers.sort();
        for m in managers {
            out.push_str(&format!("   {m}\n"));
        }
    }
    out
}

/// `shoal info`: the node's swarm membership, as the Swarm part of `docker info`.
pub async fn info(client: &Client) -> anyhow::Result<i32> {
    let info = client
        .swarm()
        .info(pb::InfoRequest {})
        .await
        .or_daemon_error()?
        .into_inner();
    println!("Server:");
    print!("{}", info_text(&info));
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_prints_dockers_instructions() {
        let answer = pb::InitResponse {
            node_id: "abc123".into(),
            worker_token: "SWMTKN-1-xyz-123".into(),
            advertise_addr: "198.18.0.2:4247".into(),
        };
        assert_eq!(
            init_text(&answer),
            "Swarm initialized: current node (abc123) is now a manager.\n\n\
             To add a worker to this swarm, run the following command:\n\n    \
             shoal swarm join --token SWMTKN-1-xyz-123 198.18.0.2:4247\n\n\
             To add a manager to this swarm, run 'shoal swarm join-token manager' and follow the instructions.\n"
        );
        assert_eq!(
            join_command(TokenRole::Manager, "T", "h:1"),
            "To add a manager to this swarm, run the following command:\n\n    shoal swarm join --token T h:1\n\n"
        );
    }

    #[test]
    fn info_shows_the_swarm_section() {
        let inactive = pb::InfoResponse::default();
        assert_eq!(info_text(&inactive), " Swarm: inactive\n");
        let active = pb::InfoResponse {
            state: pb::LocalNodeState::Active as i32,
            node_id: "n1".into(),
            node_addr: "198.18.0.2".into(),
            control_available: true,
            error: String::new(),
            managers: vec!["198.18.0.3:4247".into(), "198.18.0.2:4247".into()],
            cluster_id: "c1".into(),
            leader_addr: String::new(),
        };
        assert_eq!(
            info_text(&active),
            " Swarm: active\n  NodeID: n1\n  Is Manager: true\n  ClusterID: c1\n  Managers: 2\n  \
             Node Address: 198.18.0.2\n  Manager Addresses:\n   198.18.0.2:4247\n   198.18.0.3:4247\n"
        );
    }
}
