//! `shoal node …`: ls, inspect, update, promote, demote, rm, ps, with Docker's flags and
//! output (its `cli/command/node`), against the local `shoald`'s control API. `self` names
//! the local node, as in Docker.
//!
//! Node documents and state names come from [`super::service::format`]; `node ps` prints
//! tasks with [`super::service::ps`].

use std::fmt::Write as _;
use std::io::Write;

use anyhow::anyhow;
use clap::{Args, Subcommand, ValueEnum};
use shoal_proto::cluster::v1 as pb;
use tonic::Code;

use super::service::format::{
    availability_name, go_time_string, inspect_json, node_state_name, pretty, NodeDoc,
};
use super::service::join_errors;
use super::service::ps::{print_tasks, TaskFilter, TaskListFlags};
use super::service::table::{format_arg, natural_cmp, table, OutputFormat};
use super::{DaemonError, OrDaemonError, EXIT_FAILED};
use crate::client::Client;
use crate::units::bytes_size;

/// `shoal node` subcommands.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes in the swarm
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Display detailed information on one or more nodes
    Inspect(InspectArgs),
    /// Update a node
    Update(UpdateArgs),
    /// Promote one or more nodes to manager in the swarm
    Promote(NodesArgs),
    /// Demote one or more nodes from manager in the swarm
    Demote(NodesArgs),
    /// Remove one or more nodes from the swarm
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
    /// List tasks running on one or more nodes, defaults to current node
    Ps(PsArgs),
}

/// `node ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only display IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Format output: "table" or "json"
    #[arg(long, value_name = "FORMAT", value_parser = format_arg, default_value = "table")]
    pub format: OutputFormat,
}

/// `node inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Print the information in a human friendly format
    #[arg(long)]
    pub pretty: bool,
    /// Nodes to inspect (`self`, ID, ID prefix or hostname)
    #[arg(required = true, value_name = "self|NODE")]
    pub nodes: Vec<String>,
}

/// `--availability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AvailabilityArg {
    /// Accept new tasks
    Active,
    /// Keep the tasks it has, accept no new ones
    Pause,
    /// Move its tasks elsewhere
    Drain,
}

impl From<AvailabilityArg> for pb::NodeAvailability {
    fn from(arg: AvailabilityArg) -> pb::NodeAvailability {
        match arg {
            AvailabilityArg::Active => pb::NodeAvailability::Active,
            AvailabilityArg::Pause => pb::NodeAvailability::Pause,
            AvailabilityArg::Drain => pb::NodeAvailability::Drain,
        }
    }
}

/// `--role`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Runs tasks only
    Worker,
    /// Also holds the cluster state
    Manager,
}

impl From<RoleArg> for pb::NodeRole {
    fn from(arg: RoleArg) -> pb::NodeRole {
        match arg {
            RoleArg::Worker => pb::NodeRole::Worker,
            RoleArg::Manager => pb::NodeRole::Manager,
        }
    }
}

/// `node update`.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Availability of the node
    #[arg(long, value_enum)]
    pub availability: Option<AvailabilityArg>,
    /// Role of the node
    #[arg(long, value_enum)]
    pub role: Option<RoleArg>,
    /// Add or update a node label (key=value)
    #[arg(long = "label-add", value_name = "KEY=VALUE")]
    pub label_add: Vec<String>,
    /// Remove a node label if exists
    #[arg(long = "label-rm", value_name = "KEY")]
    pub label_rm: Vec<String>,
    /// The node
    #[arg(value_name = "NODE")]
    pub node: String,
}

/// `node promote` and `node demote`.
#[derive(Debug, Args)]
pub struct NodesArgs {
    /// Nodes (ID, ID prefix or hostname)
    #[arg(required = true, value_name = "NODE")]
    pub nodes: Vec<String>,
}

/// `node rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Force remove a node from the swarm
    #[arg(short, long)]
    pub force: bool,
    /// Nodes to remove
    #[arg(required = true, value_name = "NODE")]
    pub nodes: Vec<String>,
}

/// `node ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Output flags and filters.
    #[command(flatten)]
    pub flags: TaskListFlags,
    /// Nodes (default: self)
    #[arg(value_name = "NODE")]
    pub nodes: Vec<String>,
}

/// Errors of `node update` flags against the node's spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeUpdateError {
    /// `--label-rm` of a label the node does not have.
    #[error("key {0} doesn't exist in node's labels")]
    MissingLabel(String),
}

/// Runs a `node` subcommand.
pub async fn run(client: &Client, command: NodeCommand) -> anyhow::Result<i32> {
    match command {
        NodeCommand::Ls(args) => ls(client, args).await,
        NodeCommand::Inspect(args) => inspect(client, args).await,
        NodeCommand::Update(args) => update(client, args).await,
        NodeCommand::Promote(args) => change_role(client, args, pb::NodeRole::Manager).await,
        NodeCommand::Demote(args) => change_role(client, args, pb::NodeRole::Worker).await,
        NodeCommand::Rm(args) => rm(client, args).await,
        NodeCommand::Ps(args) => ps(client, args).await,
    }
}

/// The local node's ID, from `Swarm.Info` (empty outside a swarm).
pub async fn self_id(client: &Client) -> anyhow::Result<String> {
    Ok(client
        .swarm()
        .info(pb::InfoRequest {})
        .await
        .or_daemon_error()?
        .into_inner()
        .node_id)
}

/// Docker's `node.Reference`: `self` is the local node's ID, anything else is passed on.
async fn reference(client: &Client, node: &str) -> anyhow::Result<String> {
    if node != "self" {
        return Ok(node.to_string());
    }
    let id = self_id(client).await?;
    if id.is_empty() {
        // Outside a swarm: let the control API say why, as Docker does.
        client
            .control()
            .list_nodes(pb::ListNodesRequest {})
            .await
            .or_daemon_error()?;
        return Err(anyhow!("node ID not found in info"));
    }
    Ok(id)
}

/// Reads one node (`self`, ID, ID prefix or hostname).
async fn get_node(client: &Client, node: &str) -> anyhow::Result<pb::Node> {
    let id = reference(client, node).await?;
    client
        .control()
        .get_node(pb::GetNodeRequest { id })
        .await
        .or_daemon_error()?
        .into_inner()
        .node
        .ok_or_else(|| anyhow!("the daemon answered without the node {node:?}"))
}

/// The full ID of a node reference, for filters that take IDs.
pub async fn node_id(client: &Client, node: &str) -> anyhow::Result<String> {
    Ok(get_node(client, node)
        .await?
        .meta
        .map(|m| m.id)
        .unwrap_or_default())
}

fn id_of(node: &pb::Node) -> &str {
    node.meta.as_ref().map_or("", |m| m.id.as_str())
}

fn hostname(node: &pb::Node) -> &str {
    node.description
        .as_ref()
        .map_or("", |d| d.hostname.as_str())
}

/// Docker's MANAGER STATUS cell: Leader, Reachable, Unreachable, or empty for workers.
fn manager_status_text(node: &pb::Node) -> String {
    match &node.manager_status {
        Some(m) if m.leader => "Leader".to_string(),
        Some(m) => pretty(&m.reachability),
        None => String::new(),
    }
}

/// Writes `node ls` output, nodes sorted by hostname; `self_id` gets the `*`.
fn write_nodes(
    nodes: &mut [pb::Node],
    self_id: &str,
    args: &LsArgs,
    out: impl Write,
) -> std::io::Result<()> {
    nodes.sort_by(|a, b| natural_cmp(hostname(a), hostname(b)));
    let mut out = out;
    if args.quiet {
        for node in nodes.iter() {
            writeln!(out, "{}", id_of(node))?;
        }
        return Ok(());
    }
    let cells = |n: &pb::Node| {
        let status = n
            .status
            .as_ref()
            .map_or(pb::NodeState::Unknown, |s| s.state());
        let availability = n
            .spec
            .as_ref()
            .map_or(pb::NodeAvailability::Active, |s| s.availability());
        (
            pretty(node_state_name(status)),
            pretty(availability_name(availability)),
            manager_status_text(n),
            n.description
                .as_ref()
                .map_or(String::new(), |d| d.engine_version.clone()),
        )
    };
    match args.format {
        OutputFormat::Json => {
            for n in nodes.iter() {
                let (status, availability, manager, engine) = cells(n);
                // Keys in Go's (sorted) order.
                let doc = serde_json::json!({
                    "Availability": availability,
                    "EngineVersion": engine,
                    "Hostname": hostname(n),
                    "ID": id_of(n),
                    "ManagerStatus": manager,
                    "Self": !self_id.is_empty() && id_of(n) == self_id,
                    "Status": status,
                    "TLSStatus": "Unknown",
                });
                writeln!(out, "{doc}")?;
            }
            Ok(())
        }
        OutputFormat::Table => {
            let mut t = table(out);
            writeln!(
                t,
                "ID\tHOSTNAME\tSTATUS\tAVAILABILITY\tMANAGER STATUS\tENGINE VERSION"
            )?;
            for n in nodes.iter() {
                let (status, availability, manager, engine) = cells(n);
                let mark = if !self_id.is_empty() && id_of(n) == self_id {
                    '*'
                } else {
                    ' '
                };
                writeln!(
                    t,
                    "{} {mark}\t{}\t{status}\t{availability}\t{manager}\t{engine}",
                    id_of(n),
                    hostname(n)
                )?;
            }
            t.flush()
        }
    }
}

/// `node ls`.
async fn ls(client: &Client, args: LsArgs) -> anyhow::Result<i32> {
    let mut nodes = client
        .control()
        .list_nodes(pb::ListNodesRequest {})
        .await
        .or_daemon_error()?
        .into_inner()
        .nodes;
    let me = if args.quiet || nodes.is_empty() {
        String::new()
    } else {
        self_id(client).await?
    };
    write_nodes(&mut nodes, &me, &args, std::io::stdout().lock())?;
    Ok(0)
}

/// Docker's `node inspect --pretty` text of one node.
pub fn pretty_node(node: &pb::Node) -> String {
    let spec = node.spec.clone().unwrap_or_default();
    let description = node.description.clone().unwrap_or_default();
    let status = node.status.clone().unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(out, "ID:\t\t\t{}", id_of(node));
    if !spec.labels.is_empty() {
        out.push_str("Labels:\n");
        let mut labels: Vec<_> = spec.labels.iter().collect();
        labels.sort();
        for (k, v) in labels {
            if v.is_empty() {
                let _ = writeln!(out, " - {k}");
            } else {
                let _ = writeln!(out, " - {k}={v}");
            }
        }
    }
    let _ = writeln!(out, "Hostname:              \t{}", description.hostname);
    let created = node.meta.as_ref().map_or(0, |m| m.created_at);
    // Docker prints the time through PrettyPrint, which lower-cases all but the first letter.
    let _ = writeln!(
        out,
        "Joined at:             \t{}",
        pretty(&go_time_string(created))
    );
    out.push_str("Status:\n");
    let _ = writeln!(
        out,
        " State:\t\t\t{}",
        pretty(node_state_name(status.state()))
    );
    if !status.message.is_empty() {
        let _ = writeln!(out, " Message:              \t{}", pretty(&status.message));
    }
    let _ = writeln!(
        out,
        " Availability:         \t{}",
        pretty(availability_name(spec.availability()))
    );
    if !status.addr.is_empty() {
        let _ = writeln!(out, " Address:\t\t{}", status.addr);
    }
    if let Some(m) = &node.manager_status {
        out.push_str("Manager Status:\n");
        let _ = writeln!(out, " Address:\t\t{}", m.addr);
        let _ = writeln!(out, " Raft Status:\t\t{}", pretty(&m.reachability));
        let _ = writeln!(out, " Leader:\t\t{}", if m.leader { "Yes" } else { "No" });
    }
    out.push_str("Platform:\n");
    let _ = writeln!(out, " Operating System:\t{}", description.os);
    let _ = writeln!(out, " Architecture:\t\t{}", description.arch);
    out.push_str("Resources:\n");
    let _ = writeln!(out, " CPUs:\t\t\t{}", description.nano_cpus / 1_000_000_000);
    let memory = if description.memory_bytes == 0 {
        String::new()
    } else {
        bytes_size(u64::try_from(description.memory_bytes).unwrap_or(0))
    };
    let _ = writeln!(out, " Memory:\t\t{memory}");
    let _ = writeln!(out, "Engine Version:\t\t{}", description.engine_version);
    out
}

/// `node inspect`: the nodes found, then an error line for each one missing (exit 1 if any).
async fn inspect(client: &Client, args: InspectArgs) -> anyhow::Result<i32> {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for name in &args.nodes {
        match get_node(client, name).await {
            Ok(node) => found.push(node),
            Err(err)
                if err
                    .downcast_ref::<DaemonError>()
                    .is_some_and(|DaemonError(s)| s.code() == Code::NotFound) =>
            {
                missing.push(name.clone())
            }
            Err(err) => return Err(err),
        }
    }
    if args.pretty {
        for node in &found {
            println!("{}", pretty_node(node));
        }
    } else {
        let docs: Vec<NodeDoc> = found.iter().map(NodeDoc::new).collect();
        println!("{}", inspect_json(&docs));
    }
    for name in &missing {
        eprintln!("Error: no such node: {name}");
    }
    Ok(if missing.is_empty() { 0 } else { EXIT_FAILED })
}

/// `node update`'s changes applied to the spec read from the daemon.
fn update_node_spec(spec: &mut pb::NodeSpec, args: &UpdateArgs) -> Result<(), NodeUpdateError> {
    if let Some(role) = args.role {
        spec.set_desired_role(role.into());
    }
    if let Some(availability) = args.availability {
        spec.set_availability(availability.into());
    }
    for entry in &args.label_add {
        let (k, v) = entry.split_once('=').unwrap_or((entry.as_str(), ""));
        spec.labels.insert(k.to_string(), v.to_string());
    }
    for key in &args.label_rm {
        if spec.labels.remove(key).is_none() {
            return Err(NodeUpdateError::MissingLabel(key.clone()));
        }
    }
    Ok(())
}

/// Writes `spec` to `node` with the version read.
async fn write_spec(client: &Client, node: &pb::Node, spec: pb::NodeSpec) -> anyhow::Result<()> {
    client
        .control()
        .update_node(pb::UpdateNodeRequest {
            id: id_of(node).to_string(),
            version: node.meta.as_ref().map_or(0, |m| m.version),
            spec: Some(spec),
        })
        .await
        .or_daemon_error()?;
    Ok(())
}

/// `node update`: prints the node as named, as Docker does.
async fn update(client: &Client, args: UpdateArgs) -> anyhow::Result<i32> {
    let node = get_node(client, &args.node).await?;
    let mut spec = node.spec.clone().unwrap_or_default();
    update_node_spec(&mut spec, &args)?;
    write_spec(client, &node, spec).await?;
    println!("{}", args.node);
    Ok(0)
}

/// `node promote` / `node demote`: sets each node's desired role, skipping (with Docker's
/// note) nodes that already have it.
async fn change_role(client: &Client, args: NodesArgs, role: pb::NodeRole) -> anyhow::Result<i32> {
    for name in &args.nodes {
        let node = get_node(client, name).await?;
        let mut spec = node.spec.clone().unwrap_or_default();
        if spec.desired_role() == role {
            match role {
                pb::NodeRole::Manager => println!("Node {} is already a manager.", id_of(&node)),
                pb::NodeRole::Worker => println!("Node {} is already a worker.", id_of(&node)),
            }
            continue;
        }
        spec.set_desired_role(role);
        write_spec(client, &node, spec).await?;
        match role {
            pb::NodeRole::Manager => println!("Node {name} promoted to a manager in the swarm."),
            pb::NodeRole::Worker => println!("Manager {name} demoted in the swarm."),
        }
    }
    Ok(0)
}

/// `node rm`: removes each node (going on after a failure), printing the names.
async fn rm(client: &Client, args: RmArgs) -> anyhow::Result<i32> {
    let mut errors = Vec::new();
    for name in &args.nodes {
        let id = match reference(client, name).await {
            Ok(id) => id,
            Err(err) => {
                errors.push(err);
                continue;
            }
        };
        match client
            .control()
            .remove_node(pb::RemoveNodeRequest {
                id,
                force: args.force,
            })
            .await
        {
            Ok(_) => println!("{name}"),
            Err(status) => errors.push(DaemonError(status).into()),
        }
    }
    join_errors(errors)?;
    Ok(0)
}

/// `node ps`: the tasks of the nodes (default `self`).
async fn ps(client: &Client, args: PsArgs) -> anyhow::Result<i32> {
    let filter = TaskFilter::parse(&args.flags.filters)?;
    let names = if args.nodes.is_empty() {
        vec!["self".to_string()]
    } else {
        args.nodes.clone()
    };
    let mut node_ids = Vec::new();
    for name in names.iter().chain(&filter.nodes) {
        node_ids.push(node_id(client, name).await?);
    }
    let request = pb::ListTasksRequest {
        service_ids: Vec::new(),
        node_ids,
        desired_states: filter.desired_states.iter().map(|s| *s as i32).collect(),
    };
    print_tasks(
        &mut client.control(),
        request,
        &args.flags,
        args.flags.no_trunc,
    )
    .await?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn node(id: &str, host: &str, state: pb::NodeState, manager: Option<(bool, &str)>) -> pb::Node {
        pb::Node {
            meta: Some(pb::Meta {
                id: id.into(),
                version: 3,
                created_at: 1_704_067_200_000_000_000,
                updated_at: 0,
            }),
            spec: Some(pb::NodeSpec {
                labels: Default::default(),
                desired_role: if manager.is_some() {
                    pb::NodeRole::Manager as i32
                } else {
                    pb::NodeRole::Worker as i32
                },
                availability: pb::NodeAvailability::Active as i32,
            }),
            description: Some(pb::NodeDescription {
                hostname: host.into(),
                os: "linux".into(),
                arch: "x86_64".into(),
                nano_cpus: 4_000_000_000,
                memory_bytes: 20 << 20,
                engine_version: "0.1.0".into(),
                kernel_version: String::new(),
            }),
            status: Some(pb::NodeStatus {
                state: state as i32,
                message: String::new(),
                addr: "127.0.0.1".into(),
            }),
            role: 0,
            manager_status: manager.map(|(leader, reach)| pb::ManagerStatus {
                raft_id: 1,
                addr: "127.0.0.1:4247".into(),
                leader,
                reachability: reach.into(),
            }),
            last_heartbeat: 0,
            attachments: Vec::new(),
        }
    }

    #[test]
    fn ls_table_marks_self_and_sorts_by_hostname() {
        let mut nodes = vec![
            node("w2", "node-10", pb::NodeState::Down, None),
            node(
                "m1",
                "node-1",
                pb::NodeState::Ready,
                Some((true, "reachable")),
            ),
            node(
                "m2",
                "node-2",
                pb::NodeState::Ready,
                Some((false, "unreachable")),
            ),
        ];
        let args = LsArgs {
            quiet: false,
            format: OutputFormat::Table,
        };
        let mut out = Vec::new();
        write_nodes(&mut nodes, "m2", &args, &mut out).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
        assert_eq!(
            lines,
            [
                "ID        HOSTNAME   STATUS    AVAILABILITY   MANAGER STATUS   ENGINE VERSION",
                "m1        node-1     Ready     Active         Leader           0.1.0",
                "m2 *      node-2     Ready     Active         Unreachable      0.1.0",
                "w2        node-10    Down      Active                          0.1.0",
            ]
        );
        let args = LsArgs {
            quiet: false,
            format: OutputFormat::Json,
        };
        let mut out = Vec::new();
        write_nodes(&mut nodes, "m2", &args, &mut out).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(
            text.lines().nth(1),
            Some(
                r#"{"Availability":"Active","EngineVersion":"0.1.0","Hostname":"node-2","ID":"m2","ManagerStatus":"Unreachable","Self":true,"Status":"Ready","TLSStatus":"Unknown"}"#
            )
        );
    }

    #[test]
    fn pretty_reads_like_docker() {
        let n = node(
            "nodeID",
            "defaultNodeHostname",
            pb::NodeState::Ready,
            Some((true, "reachable")),
        );
        assert_eq!(
            pretty_node(&n),
            "ID:\t\t\tnodeID\n\
             Hostname:              \tdefaultNodeHostname\n\
             Joined at:             \t2024-01-01 00:00:00 +0000 utc\n\
             Status:\n State:\t\t\tReady\n Availability:         \tActive\n Address:\t\t127.0.0.1\n\
             Manager Status:\n Address:\t\t127.0.0.1:4247\n Raft Status:\t\tReachable\n Leader:\t\tYes\n\
             Platform:\n Operating System:\tlinux\n Architecture:\t\tx86_64\n\
             Resources:\n CPUs:\t\t\t4\n Memory:\t\t20MiB\n\
             Engine Version:\t\t0.1.0\n"
        );
    }

    #[derive(Debug, Parser)]
    struct Cmd {
        #[command(flatten)]
        args: UpdateArgs,
    }

    #[test]
    fn update_flags_change_the_spec() {
        let mut spec = pb::NodeSpec {
            labels: [("old".to_string(), "1".to_string())].into(),
            desired_role: pb::NodeRole::Worker as i32,
            availability: pb::NodeAvailability::Active as i32,
        };
        let cmd = Cmd::try_parse_from([
            "x",
            "--availability",
            "drain",
            "--label-add",
            "zone=a",
            "--label-add",
            "ssd",
            "--label-rm",
            "old",
            "--role",
            "manager",
            "n1",
        ])
        .expect("valid");
        update_node_spec(&mut spec, &cmd.args).expect("valid");
        assert_eq!(spec.availability(), pb::NodeAvailability::Drain);
        assert_eq!(spec.desired_role(), pb::NodeRole::Manager);
        assert_eq!(
            spec.labels,
            [
                ("zone".to_string(), "a".to_string()),
                ("ssd".to_string(), String::new())
            ]
            .into()
        );
        let cmd = Cmd::try_parse_from(["x", "--label-rm", "nope", "n1"]).expect("valid");
        assert_eq!(
            update_node_spec(&mut spec, &cmd.args),
            Err(NodeUpdateError::MissingLabel("nope".into()))
        );
        assert!(Cmd::try_parse_from(["x", "--availability", "busy", "n1"]).is_err());
    }
}
