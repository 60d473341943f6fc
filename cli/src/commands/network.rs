//! `shoal network …`: create, ls, inspect, rm, with Docker's flags, output and errors (its
//! `cli/command/network`), for the cluster's overlay networks, through the local `shoald`'s
//! control API. Like `node` and `service`, they need a manager: elsewhere the daemon
//! answers with Docker's "This node is not a swarm manager …", printed as any daemon error.
//!
//! Node-local networks (Docker's `bridge` driver, the default of `network create`) are not
//! built yet; asking for one is an error that says so, not a request to the cluster.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use anyhow::anyhow;
use clap::{Args, Subcommand};
use serde::Serialize;
use shoal_proto::cluster::v1 as pb;
use tonic::Code;

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

/// Docker's option key that carries an overlay's VXLAN id.
const VXLAN_ID_OPTION: &str = "com.docker.network.driver.overlay.vxlanid_list";

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
    /// Driver to manage the Network ("overlay": across the swarm)
    #[arg(short, long, default_value = BRIDGE)]
    pub driver: String,
    /// Subnet in CIDR format that represents a network segment
    #[arg(long, value_name = "CIDR")]
    pub subnet: Option<String>,
    /// Enable manual container attachment
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
    /// Provide filter values (e.g. "name=front", "driver=overlay", "label=k=v")
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
    /// `-d bridge` (also the default): node-local networks are not built yet.
    #[error(
        "network driver \"{0}\" makes node-local networks, which shoal does not have yet; \
         use -d overlay for a network across the swarm"
    )]
    LocalDriver(String),
    /// A driver shoal does not have at all.
    #[error("network driver \"{0}\" is not supported: shoal has \"overlay\" (across the swarm)")]
    UnknownDriver(String),
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
/// daemon (`-d bridge`, a bad `--subnet` or `--filter`) come before connecting, so that
/// they give the same error with or without one.
pub async fn run(host: &Host, command: NetworkCommand) -> anyhow::Result<i32> {
    match command {
        NetworkCommand::Create(args) => {
            let spec = create_spec(&args)?;
            create(&Client::connect(host).await?, spec).await
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

fn name_of(network: &pb::Network) -> &str {
    network.spec.as_ref().map_or("", |s| s.name.as_str())
}

/// Reads one network (by name, ID or ID prefix).
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

/// The full ID of a network reference.
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

/// The spec `network create` sends: only overlay networks go to the cluster.
pub fn create_spec(args: &CreateArgs) -> Result<pb::NetworkSpec, NetworkError> {
    match args.driver.as_str() {
        OVERLAY => {}
        BRIDGE => return Err(NetworkError::LocalDriver(args.driver.clone())),
        _ => return Err(NetworkError::UnknownDriver(args.driver.clone())),
    }
    let subnet = args.subnet.clone().unwrap_or_default();
    if !subnet.is_empty() && !is_cidr(&subnet) {
        return Err(NetworkError::InvalidSubnet(subnet));
    }
    Ok(pb::NetworkSpec {
        name: args.name.clone(),
        labels: parse_labels(&args.labels),
        driver: args.driver.clone(),
        attachable: args.attachable,
        ingress: args.ingress,
        subnet,
        internal: args.internal,
    })
}

/// `network create`: prints the new network's ID.
async fn create(client: &Client, spec: pb::NetworkSpec) -> anyhow::Result<i32> {
    let network = client
        .control()
        .create_network(pb::CreateNetworkRequest { spec: Some(spec) })
        .await
        .or_daemon_error()?
        .into_inner()
        .network
        .ok_or_else(|| anyhow!("the daemon answered without the new network"))?;
    println!("{}", id_of(&network));
    Ok(0)
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
    pub fn matches(&self, network: &pb::Network) -> bool {
        let spec = network.spec.clone().unwrap_or_default();
        let any = |values: &[String], test: &dyn Fn(&str) -> bool| {
            values.is_empty() || values.iter().any(|v| test(v))
        };
        any(&self.names, &|v| spec.name.contains(v))
            && any(&self.ids, &|v| id_of(network).starts_with(v))
            && any(&self.drivers, &|v| spec.driver == v)
            && any(&self.scopes, &|v| v == SWARM_SCOPE)
            && self.labels.iter().all(|l| match l.split_once('=') {
                Some((k, v)) => spec.labels.get(k).is_some_and(|have| have == v),
                None => spec.labels.contains_key(l),
            })
    }
}

/// Docker's LABELS cell: `k=v` pairs, comma separated (sorted, to be stable).
fn labels_text(spec: &pb::NetworkSpec) -> String {
    let labels: BTreeMap<_, _> = spec.labels.iter().collect();
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Writes `network ls` output, networks sorted by name.
fn write_networks(
    networks: &mut [pb::Network],
    args: &LsArgs,
    out: impl Write,
) -> std::io::Result<()> {
    networks.sort_by(|a, b| natural_cmp(name_of(a), name_of(b)));
    let mut out = out;
    if args.quiet {
        for n in networks.iter() {
            writeln!(out, "{}", short_id(id_of(n), args.no_trunc))?;
        }
        return Ok(());
    }
    match args.format {
        OutputFormat::Json => {
            for n in networks.iter() {
                let spec = n.spec.clone().unwrap_or_default();
                // Keys in Go's (sorted) order, values as Docker's formatter prints them.
                let doc = serde_json::json!({
                    "CreatedAt": go_time_string(n.meta.as_ref().map_or(0, |m| m.created_at)),
                    "Driver": spec.driver,
                    "ID": short_id(id_of(n), args.no_trunc),
                    "IPv4": "true",
                    "IPv6": "false",
                    "Internal": spec.internal.to_string(),
                    "Labels": labels_text(&spec),
                    "Name": spec.name,
                    "Scope": SWARM_SCOPE,
                });
                writeln!(out, "{doc}")?;
            }
            Ok(())
        }
        OutputFormat::Table => {
            let mut t = table(out);
            writeln!(t, "NETWORK ID\tNAME\tDRIVER\tSCOPE")?;
            for n in networks.iter() {
                let driver = n.spec.as_ref().map_or("", |s| s.driver.as_str());
                writeln!(
                    t,
                    "{}\t{}\t{driver}\t{SWARM_SCOPE}",
                    short_id(id_of(n), args.no_trunc),
                    name_of(n)
                )?;
            }
            t.flush()
        }
    }
}

/// `network ls`.
async fn ls(client: &Client, args: &LsArgs, filter: &NetworkFilter) -> anyhow::Result<i32> {
    let mut networks: Vec<pb::Network> = client
        .control()
        .list_networks(pb::ListNetworksRequest {})
        .await
        .or_daemon_error()?
        .into_inner()
        .networks
        .into_iter()
        .filter(|n| filter.matches(n))
        .collect();
    write_networks(&mut networks, args, std::io::stdout().lock())?;
    Ok(0)
}

/// Docker's `network inspect` document of a swarm-scoped network.
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
    /// Driver options; the VXLAN id under Docker's key.
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
    /// Always null.
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
            options,
            labels: spec.labels.into_iter().collect(),
        }
    }
}

/// `network inspect`: the networks found as one JSON array, then the daemon's error for each
/// one missing (exit 1 if any is).
async fn inspect(client: &Client, args: InspectArgs) -> anyhow::Result<i32> {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for name in &args.networks {
        match get_network(client, name).await {
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
    let docs: Vec<NetworkDoc> = found.iter().map(NetworkDoc::new).collect();
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

/// `network rm`: removes each network (going on after a failure, whose error is printed),
/// printing the names removed; asks before removing the ingress network, as Docker does.
async fn rm(client: &Client, args: RmArgs) -> anyhow::Result<i32> {
    let mut failed = false;
    for name in &args.networks {
        let ingress = match get_network(client, name).await {
            Ok(network) => network.spec.is_some_and(|s| s.ingress),
            // The removal below reports the error.
            Err(_) => false,
        };
        if ingress && !confirm(INGRESS_WARNING).await? {
            continue;
        }
        match client
            .control()
            .remove_network(pb::RemoveNetworkRequest { id: name.clone() })
            .await
        {
            Ok(_) => println!("{name}"),
            Err(status) if args.force && status.code() == Code::NotFound => {}
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

    #[test]
    fn create_sends_overlay_networks_only() {
        let spec = create_spec(&create_args(&[
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
        ]))
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
        let ingress = create_spec(&create_args(&["--driver", "overlay", "--ingress", "mesh"]))
            .expect("valid");
        assert!(ingress.ingress);
        assert_eq!(ingress.subnet, "");
        let bad = [
            (&["front"][..], NetworkError::LocalDriver("bridge".into())),
            (
                &["-d", "bridge", "front"],
                NetworkError::LocalDriver("bridge".into()),
            ),
            (
                &["-d", "macvlan", "front"],
                NetworkError::UnknownDriver("macvlan".into()),
            ),
            (
                &["-d", "overlay", "--subnet", "10.1.2.0", "front"],
                NetworkError::InvalidSubnet("10.1.2.0".into()),
            ),
            (
                &["-d", "overlay", "--subnet", "10.1.2.0/33", "front"],
                NetworkError::InvalidSubnet("10.1.2.0/33".into()),
            ),
        ];
        for (args, want) in bad {
            assert_eq!(create_spec(&create_args(args)), Err(want), "{args:?}");
        }
        assert!(NetworkError::LocalDriver("bridge".into())
            .to_string()
            .contains("use -d overlay"));
        assert!(is_cidr("fd00::/64"));
    }

    #[test]
    fn ls_table_json_and_quiet() {
        let mut networks = vec![
            network("zz0123456789abcdef", "front-10", "10.0.2.0/24", 4098),
            network("aa0123456789abcdef", "ingress", "10.0.0.0/24", 4096),
            network("mm0123456789abcdef", "front-9", "10.0.1.0/24", 4097),
        ];
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
    fn ls_filters() {
        let mut labelled = network("ab12", "front", "10.0.1.0/24", 4097);
        if let Some(spec) = labelled.spec.as_mut() {
            spec.labels.insert("tier".into(), "web".into());
        }
        let other = network("cd34", "back", "10.0.2.0/24", 4098);
        let pass = |filters: &[&str], n: &pb::Network| {
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
