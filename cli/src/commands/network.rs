//! `shoal network …`: create, ls, inspect, rm, with Docker's flags, output and errors (its
//! `cli/command/network`), over both kinds of network: the node's own bridge networks
//! (scope `local`, the default driver of `create`, as Docker's), through the daemon's
//! `Networks` service, and the cluster's overlay networks (scope `swarm`), through its
//! control API, which only a manager serves.
//!
//! As on Docker, `ls` on a node that is not a swarm manager lists the local networks only,
//! and `inspect` and `rm` look a name up locally first, then in the cluster; creating an
//! overlay elsewhere than on a manager is the daemon's "This node is not a swarm manager …".

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::time::UNIX_EPOCH;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use serde::Serialize;
use shoal_proto::cluster::v1 as pb;
use shoal_proto::node::v1 as local;
use tonic::{Code, Status};

use super::service::format::{go_time_string, inspect_json, rfc3339_nanos};
use super::service::opts::parse_labels;
use super::service::table::{format_arg, natural_cmp, short_id, table, OutputFormat};
use super::{failure_message, DaemonError, OrDaemonError, EXIT_FAILED};
use crate::client::{Client, Host};

/// The only driver of cluster networks.
pub const OVERLAY: &str = "overlay";

/// Docker's default driver of `network create`, node-local.
pub const BRIDGE: &str = "bridge";

/// Docker's scope of cluster networks.
const SWARM_SCOPE: &str = "swarm";

/// Docker's scope of a node's own networks.
const LOCAL_SCOPE: &str = "local";

/// Docker's option key that carries an overlay's VXLAN id.
const VXLAN_ID_OPTION: &str = "com.docker.network.driver.overlay.vxlanid_list";

/// Docker's option key that names a bridge network's device.
const BRIDGE_NAME_OPTION: &str = "com.docker.network.bridge.name";

/// `shoal network` subcommands.
#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create a network
    Create(CreateArgs),
    /// List networks
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Display detailed information on one or more networks
    Inspect(InspectArgs),
    /// Remove one or more networks
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
}

/// `network create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Driver to manage the Network: "bridge" (this node) or "overlay" (across the swarm)
    #[arg(short, long, default_value = BRIDGE)]
    pub driver: String,
    /// Subnet in CIDR format that represents a network segment
    #[arg(long, value_name = "CIDR")]
    pub subnet: Option<String>,
    /// Enable manual container attachment (overlay; bridge networks always allow it)
    #[arg(long)]
    pub attachable: bool,
    /// Restrict external access to the network
    #[arg(long)]
    pub internal: bool,
    /// Set metadata on a network
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Create swarm routing-mesh network
    #[arg(long)]
    pub ingress: bool,
    /// The network's name
    #[arg(value_name = "NETWORK")]
    pub name: String,
}

/// `network ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only display network IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Do not truncate the output
    #[arg(long)]
    pub no_trunc: bool,
    /// Format output: "table" or "json"
    #[arg(long, value_name = "FORMAT", value_parser = format_arg, default_value = "table")]
    pub format: OutputFormat,
    /// Provide filter values (e.g. "name=front", "driver=bridge", "scope=local", "label=k=v")
    #[arg(short, long = "filter", value_name = "FILTER")]
    pub filters: Vec<String>,
}

/// `network inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Networks to inspect (name, ID or ID prefix)
    #[arg(required = true, value_name = "NETWORK")]
    pub networks: Vec<String>,
}

/// `network rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Do not error if the network does not exist
    #[arg(short, long)]
    pub force: bool,
    /// Networks to remove (name, ID or ID prefix)
    #[arg(required = true, value_name = "NETWORK")]
    pub networks: Vec<String>,
}

/// Errors of the network commands' own checks, before anything reaches the daemon.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    /// A driver shoal does not have at all.
    #[error(
        "network driver \"{0}\" is not supported: shoal has \"bridge\" (this node) and \
         \"overlay\" (across the swarm)"
    )]
    UnknownDriver(String),
    /// `--ingress` with a driver other than overlay.
    #[error("the routing-mesh network (--ingress) must use the overlay driver, not \"{0}\"")]
    IngressDriver(String),
    /// `--subnet` that is not an address/prefix pair.
    #[error("invalid subnet \"{0}\": want CIDR form, like 10.1.0.0/24")]
    InvalidSubnet(String),
    /// `--filter` without `=`.
    #[error("bad format of filter \"{0}\" (expected name=value)")]
    BadFilter(String),
    /// `--filter` with a key `network ls` does not filter on.
    #[error("invalid filter '{0}': network ls filters on name, id, driver, scope and label")]
    UnknownFilter(String),
}

/// Runs a `network` subcommand against the daemon at `host`. The checks that need no
/// daemon (an unknown driver, a bad `--subnet` or `--filter`) come before connecting, so
/// that they give the same error with or without one.
pub async fn run(host: &Host, command: NetworkCommand) -> anyhow::Result<i32> {
    match command {
        NetworkCommand::Create(args) => {
            let request = create_request(&args)?;
            create(&Client::connect(host).await?, request).await
        }
        NetworkCommand::Ls(args) => {
            let filter = NetworkFilter::parse(&args.filters)?;
            ls(&Client::connect(host).await?, &args, &filter).await
        }
        NetworkCommand::Inspect(args) => inspect(&Client::connect(host).await?, args).await,
        NetworkCommand::Rm(args) => rm(&Client::connect(host).await?, args).await,
    }
}

fn id_of(network: &pb::Network) -> &str {
    network.meta.as_ref().map_or("", |m| m.id.as_str())
}

/// Whether the control API refused because this node is no manager (outside a swarm or a
/// worker): then there are no cluster networks to see from here, as on a Docker worker.
fn not_a_manager(status: &Status) -> bool {
    status.code() == Code::FailedPrecondition
}

/// Reads one cluster network (by name, ID or ID prefix).
pub async fn get_network(client: &Client, reference: &str) -> anyhow::Result<pb::Network> {
    client
        .control()
        .get_network(pb::GetNetworkRequest {
            id: reference.to_string(),
        })
        .await
        .or_daemon_error()?
        .into_inner()
        .network
        .ok_or_else(|| anyhow!("the daemon answered without the network {reference:?}"))
}

/// The full ID of a cluster network reference.
pub async fn network_id(client: &Client, reference: &str) -> anyhow::Result<String> {
    Ok(id_of(&get_network(client, reference).await?).to_string())
}

/// Whether `subnet` is an IPv4 or IPv6 address with a prefix length that fits it.
fn is_cidr(subnet: &str) -> bool {
    let Some((addr, prefix)) = subnet.split_once('/') else {
        return false;
    };
    let Ok(prefix) = prefix.parse::<u8>() else {
        return false;
    };
    match addr.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => prefix <= 32,
        Ok(std::net::IpAddr::V6(_)) => prefix <= 128,
        Err(_) => false,
    }
}

/// What `network create` asks for, and of whom.
#[derive(Debug, Clone, PartialEq)]
pub enum NewNetwork {
    /// `-d bridge`: a network of this node, from its `Networks` service.
    Local(local::CreateNetworkRequest),
    /// `-d overlay`: a network of the cluster, from the control API.
    Cluster(pb::NetworkSpec),
}

/// The request `network create` sends. `--attachable` is accepted and ignored for a bridge
/// network, which any container may join (Docker ignores it too).
pub fn create_request(args: &CreateArgs) -> Result<NewNetwork, NetworkError> {
    if args.driver != OVERLAY && args.driver != BRIDGE {
        return Err(NetworkError::UnknownDriver(args.driver.clone()));
    }
    if args.ingress && args.driver != OVERLAY {
        return Err(NetworkError::IngressDriver(args.driver.clone()));
    }
    let subnet = args.subnet.clone().unwrap_or_default();
    if !subnet.is_empty() && !is_cidr(&subnet) {
        return Err(NetworkError::InvalidSubnet(subnet));
    }
    if args.driver == BRIDGE {
        return Ok(NewNetwork::Local(local::CreateNetworkRequest {
            name: args.name.clone(),
            driver: BRIDGE.to_string(),
            subnet,
            internal: args.internal,
            labels: args
                .labels
                .iter()
                .map(|l| {
                    let (key, value) = l.split_once('=').unwrap_or((l, ""));
                    local::Label {
                        key: key.to_string(),
                        value: value.to_string(),
                    }
                })
                .collect(),
        }));
    }
    Ok(NewNetwork::Cluster(pb::NetworkSpec {
        name: args.name.clone(),
        labels: parse_labels(&args.labels),
        driver: args.driver.clone(),
        attachable: args.attachable,
        ingress: args.ingress,
        subnet,
        internal: args.internal,
    }))
}

/// `network create`: prints the new network's ID.
async fn create(client: &Client, request: NewNetwork) -> anyhow::Result<i32> {
    let id = match request {
        NewNetwork::Local(request) => {
            client
                .networks()
                .create(request)
                .await
                .or_daemon_error()?
                .into_inner()
                .network
                .ok_or_else(|| anyhow!("the daemon answered without the new network"))?
                .id
        }
        NewNetwork::Cluster(spec) => {
            let network = client
                .control()
                .create_network(pb::CreateNetworkRequest { spec: Some(spec) })
                .await
                .or_daemon_error()?
                .into_inner()
                .network
                .ok_or_else(|| anyhow!("the daemon answered without the new network"))?;
            id_of(&network).to_string()
        }
    };
    println!("{id}");
    Ok(0)
}

/// One network as `network ls` shows and filters it, from either API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedNetwork {
    /// The full ID.
    pub id: String,
    /// The name.
    pub name: String,
    /// `bridge`, `host`, `null` or `overlay`.
    pub driver: String,
    /// `local` or `swarm`.
    pub scope: &'static str,
    /// No outside access.
    pub internal: bool,
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
    /// Creation time, nanoseconds since the epoch (0 when unknown).
    pub created_at: i64,
}

impl From<&pb::Network> for ListedNetwork {
    fn from(network: &pb::Network) -> ListedNetwork {
        let spec = network.spec.clone().unwrap_or_default();
        ListedNetwork {
            id: id_of(network).to_string(),
            name: spec.name,
            driver: spec.driver,
            scope: SWARM_SCOPE,
            internal: spec.internal,
            labels: spec.labels.into_iter().collect(),
            created_at: network.meta.as_ref().map_or(0, |m| m.created_at),
        }
    }
}

impl From<&local::LocalNetwork> for ListedNetwork {
    fn from(network: &local::LocalNetwork) -> ListedNetwork {
        ListedNetwork {
            id: network.id.clone(),
            name: network.name.clone(),
            driver: network.driver.clone(),
            scope: LOCAL_SCOPE,
            internal: network.internal,
            labels: labels_of(&network.labels),
            created_at: unix_nanos(&network.created),
        }
    }
}

/// Labels as a map: the last value of a key wins, as in Docker's.
fn labels_of(labels: &[local::Label]) -> BTreeMap<String, String> {
    labels
        .iter()
        .map(|l| (l.key.clone(), l.value.clone()))
        .collect()
}

/// Nanoseconds since the epoch of an RFC 3339 time; 0 (printed as the epoch) when the
/// daemon sent none.
fn unix_nanos(rfc3339: &str) -> i64 {
    humantime::parse_rfc3339_weak(rfc3339)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .unwrap_or(0)
}

/// `network ls --filter`s: values of one key are alternatives, keys must all match (Docker's
/// `filters.Args`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NetworkFilter {
    names: Vec<String>,
    ids: Vec<String>,
    drivers: Vec<String>,
    scopes: Vec<String>,
    labels: Vec<String>,
}

impl NetworkFilter {
    /// Reads `KEY=VALUE` filters.
    pub fn parse(filters: &[String]) -> Result<NetworkFilter, NetworkError> {
        let mut filter = NetworkFilter::default();
        for entry in filters {
            let (key, value) = entry
                .split_once('=')
                .ok_or_else(|| NetworkError::BadFilter(entry.clone()))?;
            let list = match key.trim().to_lowercase().as_str() {
                "name" => &mut filter.names,
                "id" => &mut filter.ids,
                "driver" => &mut filter.drivers,
                "scope" => &mut filter.scopes,
                "label" => &mut filter.labels,
                _ => return Err(NetworkError::UnknownFilter(key.to_string())),
            };
            list.push(value.to_string());
        }
        Ok(filter)
    }

    /// Whether `network` passes. Names and ids match by substring and prefix, as Docker's
    /// daemon matches them; a label filter is `KEY` or `KEY=VALUE`.
    pub fn matches(&self, network: &ListedNetwork) -> bool {
        let any = |values: &[String], test: &dyn Fn(&str) -> bool| {
            values.is_empty() || values.iter().any(|v| test(v))
        };
        any(&self.names, &|v| network.name.contains(v))
            && any(&self.ids, &|v| network.id.starts_with(v))
            && any(&self.drivers, &|v| network.driver == v)
            && any(&self.scopes, &|v| network.scope == v)
            && self.labels.iter().all(|l| match l.split_once('=') {
                Some((k, v)) => network.labels.get(k).is_some_and(|have| have == v),
                None => network.labels.contains_key(l),
            })
    }
}

/// Docker's LABELS cell: `k=v` pairs, comma separated (sorted, to be stable).
fn labels_text(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Writes `network ls` output, networks sorted by name.
fn write_networks(
    networks: &mut [ListedNetwork],
    args: &LsArgs,
    out: impl Write,
) -> std::io::Result<()> {
    networks.sort_by(|a, b| natural_cmp(&a.name, &b.name));
    let mut out = out;
    if args.quiet {
        for n in networks.iter() {
            writeln!(out, "{}", short_id(&n.id, args.no_trunc))?;
        }
        return Ok(());
    }
    match args.format {
        OutputFormat::Json => {
            for n in networks.iter() {
                // Keys in Go's (sorted) order, values as Docker's formatter prints them.
                let doc = serde_json::json!({
                    "CreatedAt": go_time_string(n.created_at),
                    "Driver": n.driver,
                    "ID": short_id(&n.id, args.no_trunc),
                    "IPv4": "true",
                    "IPv6": "false",
                    "Internal": n.internal.to_string(),
                    "Labels": labels_text(&n.labels),
                    "Name": n.name,
                    "Scope": n.scope,
                });
                writeln!(out, "{doc}")?;
            }
            Ok(())
        }
        OutputFormat::Table => {
            let mut t = table(out);
            writeln!(t, "NETWORK ID\tNAME\tDRIVER\tSCOPE")?;
            for n in networks.iter() {
                writeln!(
                    t,
                    "{}\t{}\t{}\t{}",
                    short_id(&n.id, args.no_trunc),
                    n.name,
                    n.driver,
                    n.scope
                )?;
            }
            t.flush()
        }
    }
}

/// `network ls`: the node's networks, and the cluster's when this node is a manager.
async fn ls(client: &Client, args: &LsArgs, filter: &NetworkFilter) -> anyhow::Result<i32> {
    let mut networks: Vec<ListedNetwork> = client
        .networks()
        .list(local::ListNetworksRequest {})
        .await
        .or_daemon_error()?
        .into_inner()
        .networks
        .iter()
        .map(ListedNetwork::from)
        .collect();
    match client
        .control()
        .list_networks(pb::ListNetworksRequest {})
        .await
    {
        Ok(answer) => networks.extend(answer.into_inner().networks.iter().map(ListedNetwork::from)),
        Err(status) if not_a_manager(&status) => {}
        Err(status) => return Err(DaemonError(status).into()),
    }
    networks.retain(|n| filter.matches(n));
    write_networks(&mut networks, args, std::io::stdout().lock())?;
    Ok(0)
}

/// Docker's `network inspect` document of a network, swarm-scoped or node-local.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkDoc {
    /// The network's name.
    pub name: String,
    /// The network's ID.
    pub id: String,
    /// RFC 3339 creation time.
    pub created: String,
    /// Always "swarm".
    pub scope: &'static str,
    /// Always "overlay".
    pub driver: String,
    /// Always true.
    #[serde(rename = "EnableIPv4")]
    pub enable_ipv4: bool,
    /// Always false: shoal's overlays are IPv4.
    #[serde(rename = "EnableIPv6")]
    pub enable_ipv6: bool,
    /// Addressing.
    #[serde(rename = "IPAM")]
    pub ipam: IpamDoc,
    /// No outside access.
    pub internal: bool,
    /// Standalone containers may join.
    pub attachable: bool,
    /// The routing mesh's network.
    pub ingress: bool,
    /// Docker's config-from network: never set.
    pub config_from: ConfigFromDoc,
    /// Docker's config-only networks: never.
    pub config_only: bool,
    /// A local network's containers by full ID (absent for a cluster network).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub containers: Option<BTreeMap<String, EndpointDoc>>,
    /// Driver options: the VXLAN id or the bridge device under Docker's keys.
    pub options: BTreeMap<String, String>,
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
}

/// Docker's `IPAM`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamDoc {
    /// Always "default".
    pub driver: &'static str,
    /// Null for cluster networks, `{}` for local ones, as Docker prints them.
    pub options: Option<BTreeMap<String, String>>,
    /// One entry per subnet.
    pub config: Vec<IpamConfigDoc>,
}

/// Docker's `IPAMConfig`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamConfigDoc {
    /// CIDR of the network.
    pub subnet: String,
    /// The address kept for the gateway.
    pub gateway: String,
}

/// Docker's `ConfigReference`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ConfigFromDoc {
    /// Always empty.
    pub network: String,
}

impl NetworkDoc {
    /// The document of `network`.
    pub fn new(network: &pb::Network) -> NetworkDoc {
        let spec = network.spec.clone().unwrap_or_default();
        let allocation = network.allocation.clone();
        let mut options = BTreeMap::new();
        if let Some(a) = &allocation {
            options.insert(VXLAN_ID_OPTION.to_string(), a.vni.to_string());
        }
        NetworkDoc {
            name: spec.name,
            id: id_of(network).to_string(),
            created: rfc3339_nanos(network.meta.as_ref().map_or(0, |m| m.created_at)),
            scope: SWARM_SCOPE,
            driver: spec.driver,
            enable_ipv4: true,
            enable_ipv6: false,
            ipam: IpamDoc {
                driver: "default",
                options: None,
                config: allocation
                    .into_iter()
                    .map(|a| IpamConfigDoc {
                        subnet: a.subnet,
                        gateway: a.gateway,
                    })
                    .collect(),
            },
            internal: spec.internal,
            attachable: spec.attachable,
            ingress: spec.ingress,
            config_from: ConfigFromDoc {
                network: String::new(),
            },
            config_only: false,
            containers: None,
            options,
            labels: spec.labels.into_iter().collect(),
        }
    }
}

/// Docker's `EndpointResource`: one container on a local network.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointDoc {
    /// The container's name.
    pub name: String,
    /// The container's interface address on the network.
    pub mac_address: String,
    /// Its address, CIDR.
    #[serde(rename = "IPv4Address")]
    pub ipv4_address: String,
    /// Always empty: shoal's bridges are IPv4.
    #[serde(rename = "IPv6Address")]
    pub ipv6_address: String,
}

impl NetworkDoc {
    /// The document of the node-local `network`.
    pub fn local(network: &local::LocalNetwork) -> NetworkDoc {
        let mut options = BTreeMap::new();
        if !network.bridge.is_empty() {
            options.insert(BRIDGE_NAME_OPTION.to_string(), network.bridge.clone());
        }
        let config = if network.subnet.is_empty() {
            Vec::new()
        } else {
            vec![IpamConfigDoc {
                subnet: network.subnet.clone(),
                gateway: network.gateway.clone(),
            }]
        };
        NetworkDoc {
            name: network.name.clone(),
            id: network.id.clone(),
            created: network.created.clone(),
            scope: LOCAL_SCOPE,
            driver: network.driver.clone(),
            enable_ipv4: true,
            enable_ipv6: false,
            ipam: IpamDoc {
                driver: "default",
                options: Some(BTreeMap::new()),
                config,
            },
            internal: network.internal,
            attachable: false,
            ingress: false,
            config_from: ConfigFromDoc {
                network: String::new(),
            },
            config_only: false,
            containers: Some(
                network
                    .containers
                    .iter()
                    .map(|c| {
                        let doc = EndpointDoc {
                            name: c.name.clone(),
                            mac_address: c.mac_address.clone(),
                            ipv4_address: c.ipv4_address.clone(),
                            ipv6_address: String::new(),
                        };
                        (c.container_id.clone(), doc)
                    })
                    .collect(),
            ),
            options,
            labels: labels_of(&network.labels),
        }
    }
}

/// A network found by `inspect`, local or of the cluster.
#[derive(Debug)]
enum FoundNetwork {
    Local(local::LocalNetwork),
    Cluster(pb::Network),
}

impl From<&FoundNetwork> for NetworkDoc {
    fn from(found: &FoundNetwork) -> NetworkDoc {
        match found {
            FoundNetwork::Local(n) => NetworkDoc::local(n),
            FoundNetwork::Cluster(n) => NetworkDoc::new(n),
        }
    }
}

/// Looks `reference` up on this node, then in the cluster. When neither has it, the error
/// is the node's "not found", also on a node whose control API refuses (no manager).
async fn find_network(client: &Client, reference: &str) -> anyhow::Result<FoundNetwork> {
    let request = local::InspectNetworkRequest {
        id: reference.to_string(),
    };
    let local_missing = match client.networks().inspect(request).await {
        Ok(answer) => {
            return answer
                .into_inner()
                .network
                .map(FoundNetwork::Local)
                .ok_or_else(|| anyhow!("the daemon answered without the network {reference:?}"))
        }
        Err(status) if status.code() == Code::NotFound => status,
        Err(status) => return Err(DaemonError(status).into()),
    };
    match get_network(client, reference).await {
        Ok(network) => Ok(FoundNetwork::Cluster(network)),
        Err(err) if is_missing(&err) => Err(DaemonError(local_missing).into()),
        Err(err) => Err(err),
    }
}

/// Whether `err` says the cluster has no such network, or no cluster is to be asked.
fn is_missing(err: &anyhow::Error) -> bool {
    err.downcast_ref::<DaemonError>()
        .is_some_and(|DaemonError(s)| s.code() == Code::NotFound || not_a_manager(s))
}

/// `network inspect`: the networks found as one JSON array, then the daemon's error for each
/// one missing (exit 1 if any is).
async fn inspect(client: &Client, args: InspectArgs) -> anyhow::Result<i32> {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for name in &args.networks {
        match find_network(client, name).await {
            Ok(network) => found.push(network),
            Err(err)
                if err
                    .downcast_ref::<DaemonError>()
                    .is_some_and(|DaemonError(s)| s.code() == Code::NotFound) =>
            {
                missing.push(err)
            }
            Err(err) => return Err(err),
        }
    }
    let docs: Vec<NetworkDoc> = found.iter().map(NetworkDoc::from).collect();
    println!("{}", inspect_json(&docs));
    for err in &missing {
        eprintln!("{}", failure_message(err));
    }
    Ok(if missing.is_empty() { 0 } else { EXIT_FAILED })
}

/// Docker's warning before removing the routing mesh's network.
const INGRESS_WARNING: &str = "WARNING! Before removing the routing-mesh network, make sure all \
the nodes in your swarm run the same shoald version. Otherwise, removal may not be effective \
and functionality of newly created ingress networks will be impaired.\nAre you sure you want to \
continue?";

/// Docker's `prompt.Confirm`: the question, then a line from stdin; only "y" agrees (so an
/// empty or closed stdin declines).
async fn confirm(question: &'static str) -> anyhow::Result<bool> {
    print!("{question} [y/N] ");
    std::io::stdout().flush()?;
    let line = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map(|_| line)
    })
    .await??;
    Ok(matches!(line.trim(), "y" | "Y"))
}

/// What became of one network `rm` was given.
#[derive(Debug)]
enum Removal {
    Removed,
    /// The operator declined removing the ingress network.
    Kept,
    /// The daemon's refusal, or the node's "not found" when neither API has the network.
    Failed(Status),
}

/// Removes `name` from this node, or when the node has no such network, from the cluster.
async fn remove_one(client: &Client, name: &str) -> anyhow::Result<Removal> {
    let request = local::RemoveNetworkRequest {
        id: name.to_string(),
    };
    let local_missing = match client.networks().remove(request).await {
        Ok(_) => return Ok(Removal::Removed),
        Err(status) if status.code() == Code::NotFound => status,
        Err(status) => return Ok(Removal::Failed(status)),
    };
    let network = match get_network(client, name).await {
        Ok(network) => network,
        Err(err) if is_missing(&err) => return Ok(Removal::Failed(local_missing)),
        Err(err) => match err.downcast::<DaemonError>() {
            Ok(DaemonError(status)) => return Ok(Removal::Failed(status)),
            Err(err) => return Err(err),
        },
    };
    if network.spec.as_ref().is_some_and(|s| s.ingress) && !confirm(INGRESS_WARNING).await? {
        return Ok(Removal::Kept);
    }
    let request = pb::RemoveNetworkRequest {
        id: id_of(&network).to_string(),
    };
    Ok(match client.control().remove_network(request).await {
        Ok(_) => Removal::Removed,
        Err(status) => Removal::Failed(status),
    })
}

/// `network rm`: removes each network (going on after a failure, whose error is printed),
/// printing the names removed; asks before removing the ingress network, as Docker does.
async fn rm(client: &Client, args: RmArgs) -> anyhow::Result<i32> {
    let mut failed = false;
    for name in &args.networks {
        match remove_one(client, name).await? {
            Removal::Removed => println!("{name}"),
            Removal::Kept => {}
            Removal::Failed(status) if args.force && status.code() == Code::NotFound => {}
            Removal::Failed(status) => {
                eprintln!("{}", DaemonError(status));
                failed = true;
            }
        }
    }
    Ok(if failed { EXIT_FAILED } else { 0 })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    enum Cmd {
        #[command(subcommand)]
        Network(NetworkCommand),
    }

    fn parse(args: &[&str]) -> NetworkCommand {
        let argv = ["x", "network"].iter().chain(args);
        match Cmd::try_parse_from(argv).expect("valid flags") {
            Cmd::Network(c) => c,
        }
    }

    fn create_args(args: &[&str]) -> CreateArgs {
        let mut argv = vec!["create"];
        argv.extend(args);
        match parse(&argv) {
            NetworkCommand::Create(a) => a,
            other => panic!("not create: {other:?}"),
        }
    }

    fn ls_args(args: &[&str]) -> LsArgs {
        let mut argv = vec!["ls"];
        argv.extend(args);
        match parse(&argv) {
            NetworkCommand::Ls(a) => a,
            other => panic!("not ls: {other:?}"),
        }
    }

    fn network(id: &str, name: &str, subnet: &str, vni: u32) -> pb::Network {
        pb::Network {
            meta: Some(pb::Meta {
                id: id.into(),
                version: 4,
                created_at: 1_704_067_200_500_000_000,
                updated_at: 0,
            }),
            spec: Some(pb::NetworkSpec {
                name: name.into(),
                labels: Default::default(),
                driver: OVERLAY.into(),
                attachable: false,
                ingress: false,
                subnet: String::new(),
                internal: false,
            }),
            allocation: Some(pb::NetworkAllocation {
                subnet: subnet.into(),
                gateway: subnet.replace(".0/24", ".1"),
                vni,
            }),
        }
    }

    fn cluster_spec(args: &[&str]) -> Result<pb::NetworkSpec, NetworkError> {
        match create_request(&create_args(args))? {
            NewNetwork::Cluster(spec) => Ok(spec),
            other => panic!("not a cluster network: {other:?}"),
        }
    }

    #[test]
    fn create_sends_overlay_networks_to_the_cluster() {
        let spec = cluster_spec(&[
            "-d",
            "overlay",
            "--subnet",
            "10.1.2.0/24",
            "--attachable",
            "--internal",
            "--label",
            "tier=back",
            "--label",
            "solo",
            "back",
        ])
        .expect("valid");
        assert_eq!(
            spec,
            pb::NetworkSpec {
                name: "back".into(),
                labels: [
                    ("tier".to_string(), "back".to_string()),
                    ("solo".to_string(), String::new())
                ]
                .into(),
                driver: "overlay".into(),
                attachable: true,
                ingress: false,
                subnet: "10.1.2.0/24".into(),
                internal: true,
            }
        );
        let ingress = cluster_spec(&["--driver", "overlay", "--ingress", "mesh"]).expect("valid");
        assert!(ingress.ingress);
        assert_eq!(ingress.subnet, "");
        assert!(is_cidr("fd00::/64"));
    }

    #[test]
    fn create_sends_bridge_networks_to_the_node() {
        let label = |key: &str, value: &str| local::Label {
            key: key.into(),
            value: value.into(),
        };
        let want = local::CreateNetworkRequest {
            name: "front".into(),
            driver: "bridge".into(),
            subnet: "172.20.0.0/16".into(),
            internal: true,
            labels: vec![label("tier", "web"), label("solo", "")],
        };
        for driver in [&[][..], &["-d", "bridge"]] {
            let mut argv = driver.to_vec();
            argv.extend([
                "--subnet",
                "172.20.0.0/16",
                "--internal",
                "--attachable",
                "--label",
                "tier=web",
                "--label",
                "solo",
                "front",
            ]);
            assert_eq!(
                create_request(&create_args(&argv)),
                Ok(NewNetwork::Local(want.clone())),
                "{argv:?}"
            );
        }
        let plain = create_request(&create_args(&["plain"])).expect("valid");
        assert_eq!(
            plain,
            NewNetwork::Local(local::CreateNetworkRequest {
                name: "plain".into(),
                driver: "bridge".into(),
                ..Default::default()
            })
        );
    }

    #[test]
    fn create_refuses_bad_flags() {
        let bad = [
            (
                &["-d", "macvlan", "front"][..],
                NetworkError::UnknownDriver("macvlan".into()),
            ),
            (
                &["--ingress", "mesh"],
                NetworkError::IngressDriver("bridge".into()),
            ),
            (
                &["-d", "overlay", "--subnet", "10.1.2.0", "front"],
                NetworkError::InvalidSubnet("10.1.2.0".into()),
            ),
            (
                &["--subnet", "10.1.2.0/33", "front"],
                NetworkError::InvalidSubnet("10.1.2.0/33".into()),
            ),
        ];
        for (args, want) in bad {
            assert_eq!(create_request(&create_args(args)), Err(want), "{args:?}");
        }
    }

    fn local_network(id: &str, name: &str, driver: &str) -> local::LocalNetwork {
        local::LocalNetwork {
            id: id.into(),
            name: name.into(),
            driver: driver.into(),
            created: "2024-01-01T00:00:00.25Z".into(),
            ..Default::default()
        }
    }

    #[test]
    fn ls_table_json_and_quiet() {
        let mut networks: Vec<ListedNetwork> = [
            network("zz0123456789abcdef", "front-10", "10.0.2.0/24", 4098),
            network("aa0123456789abcdef", "ingress", "10.0.0.0/24", 4096),
            network("mm0123456789abcdef", "front-9", "10.0.1.0/24", 4097),
        ]
        .iter()
        .map(ListedNetwork::from)
        .collect();
        let mut out = Vec::new();
        write_networks(&mut networks, &ls_args(&[]), &mut out).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
        assert_eq!(
            lines,
            [
                "NETWORK ID     NAME       DRIVER    SCOPE",
                "mm0123456789   front-9    overlay   swarm",
                "zz0123456789   front-10   overlay   swarm",
                "aa0123456789   ingress    overlay   swarm",
            ]
        );
        let mut out = Vec::new();
        write_networks(&mut networks, &ls_args(&["-q", "--no-trunc"]), &mut out).expect("write");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "mm0123456789abcdef\nzz0123456789abcdef\naa0123456789abcdef\n"
        );
        let mut out = Vec::new();
        write_networks(&mut networks, &ls_args(&["--format", "json"]), &mut out).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(
            text.lines().next(),
            Some(
                r#"{"CreatedAt":"2024-01-01 00:00:00.5 +0000 UTC","Driver":"overlay","ID":"mm0123456789","IPv4":"true","IPv6":"false","Internal":"false","Labels":"","Name":"front-9","Scope":"swarm"}"#
            )
        );
    }

    #[test]
    fn ls_mixes_local_and_cluster_networks_by_name() {
        let mut networks: Vec<ListedNetwork> = [
            local_network("b1b1b1b1b1b1b1b1", "bridge", "bridge"),
            local_network("c2c2c2c2c2c2c2c2", "host", "host"),
            local_network("d3d3d3d3d3d3d3d3", "none", "null"),
            local_network("e4e4e4e4e4e4e4e4", "front", "bridge"),
        ]
        .iter()
        .map(ListedNetwork::from)
        .chain([ListedNetwork::from(&network(
            "aa0123456789abcdef",
            "ingress",
            "10.0.0.0/24",
            4096,
        ))])
        .collect();
        let mut out = Vec::new();
        write_networks(&mut networks, &ls_args(&[]), &mut out).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
        assert_eq!(
            lines,
            [
                "NETWORK ID     NAME      DRIVER    SCOPE",
                "b1b1b1b1b1b1   bridge    bridge    local",
                "e4e4e4e4e4e4   front     bridge    local",
                "c2c2c2c2c2c2   host      host      local",
                "aa0123456789   ingress   overlay   swarm",
                "d3d3d3d3d3d3   none      null      local",
            ]
        );
        let mut out = Vec::new();
        let mut front = vec![networks[1].clone()];
        write_networks(&mut front, &ls_args(&["--format", "json"]), &mut out).expect("write");
        assert_eq!(
            String::from_utf8(out).expect("utf-8").trim_end(),
            r#"{"CreatedAt":"2024-01-01 00:00:00.25 +0000 UTC","Driver":"bridge","ID":"e4e4e4e4e4e4","IPv4":"true","IPv6":"false","Internal":"false","Labels":"","Name":"front","Scope":"local"}"#
        );
    }

    #[test]
    fn ls_filters() {
        let mut labelled = network("ab12", "front", "10.0.1.0/24", 4097);
        if let Some(spec) = labelled.spec.as_mut() {
            spec.labels.insert("tier".into(), "web".into());
        }
        let labelled = ListedNetwork::from(&labelled);
        let other = ListedNetwork::from(&network("cd34", "back", "10.0.2.0/24", 4098));
        let mut bridge = local_network("ef56", "front-local", "bridge");
        bridge.labels.push(local::Label {
            key: "tier".into(),
            value: "web".into(),
        });
        let bridge = ListedNetwork::from(&bridge);
        let pass = |filters: &[&str], n: &ListedNetwork| {
            let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
            NetworkFilter::parse(&filters).expect("valid").matches(n)
        };
        assert!(pass(&[], &other));
        assert!(pass(&["name=ron"], &labelled));
        assert!(!pass(&["name=ron"], &other));
        assert!(pass(&["name=ron", "name=ack"], &other));
        assert!(pass(&["id=ab"], &labelled));
        assert!(!pass(&["id=b1"], &labelled));
        assert!(pass(&["driver=overlay", "scope=swarm"], &other));
        assert!(!pass(&["scope=local"], &other));
        assert!(pass(&["label=tier"], &labelled));
        assert!(pass(&["label=tier=web"], &labelled));
        assert!(!pass(&["label=tier=db"], &labelled));
        assert!(!pass(&["label=tier"], &other));
        assert!(pass(&["scope=local", "driver=bridge"], &bridge));
        assert!(!pass(&["scope=swarm"], &bridge));
        assert!(pass(&["scope=local", "scope=swarm"], &bridge));
        assert!(pass(&["name=front", "label=tier=web"], &bridge));
        assert!(pass(&["id=ef"], &bridge));
        assert!(!pass(&["driver=overlay"], &bridge));
        assert_eq!(
            NetworkFilter::parse(&["name".to_string()]),
            Err(NetworkError::BadFilter("name".into()))
        );
        assert_eq!(
            NetworkFilter::parse(&["color=red".to_string()]),
            Err(NetworkError::UnknownFilter("color".into()))
        );
    }

    #[test]
    fn inspect_document_has_docker_shape() {
        let mut n = network("aa0123456789abcdef", "ingress", "10.0.0.0/24", 4096);
        if let Some(spec) = n.spec.as_mut() {
            spec.ingress = true;
            spec.labels.insert("k".into(), "v".into());
        }
        let doc = serde_json::to_value(NetworkDoc::new(&n)).expect("serializes");
        assert_eq!(
            doc,
            serde_json::json!({
                "Name": "ingress",
                "Id": "aa0123456789abcdef",
                "Created": "2024-01-01T00:00:00.5Z",
                "Scope": "swarm",
                "Driver": "overlay",
                "EnableIPv4": true,
                "EnableIPv6": false,
                "IPAM": {
                    "Driver": "default",
                    "Options": null,
                    "Config": [{"Subnet": "10.0.0.0/24", "Gateway": "10.0.0.1"}]
                },
                "Internal": false,
                "Attachable": false,
                "Ingress": true,
                "ConfigFrom": {"Network": ""},
                "ConfigOnly": false,
                "Options": {"com.docker.network.driver.overlay.vxlanid_list": "4096"},
                "Labels": {"k": "v"}
            })
        );
        // Docker's field order, not sorted keys.
        let text = inspect_json(&[NetworkDoc::new(&n)]);
        assert!(
            text.starts_with("[\n    {\n        \"Name\": \"ingress\",\n        \"Id\""),
            "{text}"
        );
    }

    #[test]
    fn local_inspect_document_has_docker_shape() {
        let mut n = local_network("e4e4e4e4e4e4e4e4", "front", "bridge");
        n.subnet = "172.20.0.0/16".into();
        n.gateway = "172.20.0.1".into();
        n.bridge = "shoal-e4e4e4e4".into();
        n.labels.push(local::Label {
            key: "tier".into(),
            value: "web".into(),
        });
        n.containers.push(local::NetworkEndpoint {
            container_id: "0123456789abcdef".into(),
            name: "web".into(),
            ipv4_address: "172.20.0.2/16".into(),
            mac_address: "02:42:ac:14:00:02".into(),
        });
        let doc = serde_json::to_value(NetworkDoc::local(&n)).expect("serializes");
        assert_eq!(
            doc,
            serde_json::json!({
                "Name": "front",
                "Id": "e4e4e4e4e4e4e4e4",
                "Created": "2024-01-01T00:00:00.25Z",
                "Scope": "local",
                "Driver": "bridge",
                "EnableIPv4": true,
                "EnableIPv6": false,
                "IPAM": {
                    "Driver": "default",
                    "Options": {},
                    "Config": [{"Subnet": "172.20.0.0/16", "Gateway": "172.20.0.1"}]
                },
                "Internal": false,
                "Attachable": false,
                "Ingress": false,
                "ConfigFrom": {"Network": ""},
                "ConfigOnly": false,
                "Containers": {
                    "0123456789abcdef": {
                        "Name": "web",
                        "MacAddress": "02:42:ac:14:00:02",
                        "IPv4Address": "172.20.0.2/16",
                        "IPv6Address": ""
                    }
                },
                "Options": {"com.docker.network.bridge.name": "shoal-e4e4e4e4"},
                "Labels": {"tier": "web"}
            })
        );
        // The predefined `none` has no subnet and no device.
        let none = NetworkDoc::local(&local_network("d3d3", "none", "null"));
        assert!(none.ipam.config.is_empty() && none.options.is_empty());
        // Local and cluster documents share one array, each in its own field order.
        let cluster = network("aa0123456789abcdef", "ingress", "10.0.0.0/24", 4096);
        let text = inspect_json(&[
            NetworkDoc::from(&FoundNetwork::Local(n)),
            NetworkDoc::from(&FoundNetwork::Cluster(cluster)),
        ]);
        assert!(
            text.starts_with("[\n    {\n        \"Name\": \"front\",\n        \"Id\""),
            "{text}"
        );
        assert!(text.contains("\"Scope\": \"swarm\""), "{text}");
    }

    #[test]
    fn rm_and_inspect_need_names() {
        assert!(Cmd::try_parse_from(["x", "network", "rm"]).is_err());
        assert!(Cmd::try_parse_from(["x", "network", "inspect"]).is_err());
        match parse(&["remove", "-f", "a", "b"]) {
            NetworkCommand::Rm(a) => {
                assert!(a.force);
                assert_eq!(a.networks, ["a", "b"]);
            }
            other => panic!("not rm: {other:?}"),
        }
    }
}
