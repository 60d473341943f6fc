//! `shoal service …`: create, ls, ps, inspect, scale, update, rm, with Docker's flags, output
//! and errors, against the local `shoald`'s control API (a manager's; a worker answers with
//! Docker's "This node is not a swarm manager …", printed as any daemon error).
//!
//! The flags of create/update and their specs are in [`opts`] (ports, networks and the
//! endpoint mode in [`endpoint`]), task listings (shared with `node ps`) in [`ps`], the
//! convergence wait in [`progress`], Docker-shaped JSON and names in [`format`], table
//! helpers in [`table`], `inspect` in [`inspect`].

use std::io::Write;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use shoal_proto::cluster::v1 as pb;
use shoal_proto::cluster::v1::service_spec::Mode;
use tonic::Code;

use self::ps::{print_tasks, TaskFilter, TaskListFlags};
use self::table::{format_arg, image_cell, natural_cmp, short_id, table, OutputFormat};
use crate::client::Client;
use crate::commands::network::network_id;
use crate::commands::{failure_message, DaemonError, OrDaemonError};

pub mod endpoint;
pub mod format;
pub mod inspect;
pub mod opts;
pub mod progress;
pub mod ps;
pub mod table;

/// `shoal service` subcommands.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a new service
    // Boxed: the flag structs of create and update dwarf the other commands'.
    Create(Box<opts::CreateArgs>),
    /// List services
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// List the tasks of one or more services
    Ps(PsArgs),
    /// Display detailed information on one or more services
    Inspect(inspect::InspectArgs),
    /// Scale one or multiple replicated services
    Scale(ScaleArgs),
    /// Update a service
    Update(Box<opts::UpdateArgs>),
    /// Remove one or more services
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
}

/// `service ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only display IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Format output: "table" or "json"
    #[arg(long, value_name = "FORMAT", value_parser = format_arg, default_value = "table")]
    pub format: OutputFormat,
}

/// `service ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Output flags and filters.
    #[command(flatten)]
    pub flags: TaskListFlags,
    /// Services (name, ID or ID prefix)
    #[arg(required = true, value_name = "SERVICE")]
    pub services: Vec<String>,
}

/// `service scale`.
#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// Exit immediately instead of waiting for the service to converge
    #[arg(short, long)]
    pub detach: bool,
    /// SERVICE=REPLICAS pairs
    #[arg(required = true, value_name = "SERVICE=REPLICAS", value_parser = scale_arg)]
    pub scales: Vec<(String, String)>,
}

/// `service rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Services to remove (name, ID or ID prefix)
    #[arg(required = true, value_name = "SERVICE")]
    pub services: Vec<String>,
}

fn scale_arg(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, n)) if !name.is_empty() && !n.is_empty() => {
            Ok((name.to_string(), n.to_string()))
        }
        _ => Err(format!("invalid scale specifier '{s}'")),
    }
}

/// Runs a `service` subcommand.
pub async fn run(client: &Client, command: ServiceCommand) -> anyhow::Result<i32> {
    match command {
        ServiceCommand::Create(args) => create(client, *args).await,
        ServiceCommand::Ls(args) => ls(client, args).await,
        ServiceCommand::Ps(args) => service_ps(client, args).await,
        ServiceCommand::Inspect(args) => inspect::inspect(client, args).await,
        ServiceCommand::Scale(args) => scale(client, args).await,
        ServiceCommand::Update(args) => update(client, *args).await,
        ServiceCommand::Rm(args) => rm(client, args).await,
    }
}

/// One error for several failures of a command that goes on after a failure (Docker's
/// `errors.Join`): a single failure as it is, several as their texts, one a line.
pub fn join_errors(mut errors: Vec<anyhow::Error>) -> anyhow::Result<()> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => {
            let lines: Vec<String> = errors
                .iter()
                .map(|e| failure_message(e).trim_start_matches("Error: ").to_string())
                .collect();
            Err(anyhow!(lines.join("\n")))
        }
    }
}

/// Reads one service (by name, ID or ID prefix).
pub async fn get_service(client: &Client, reference: &str) -> anyhow::Result<pb::Service> {
    client
        .control()
        .get_service(pb::GetServiceRequest {
            id: reference.to_string(),
        })
        .await
        .or_daemon_error()?
        .into_inner()
        .service
        .ok_or_else(|| anyhow!("the daemon answered without the service {reference:?}"))
}

fn service_id(service: &pb::Service) -> String {
    service
        .meta
        .as_ref()
        .map(|m| m.id.clone())
        .unwrap_or_default()
}

fn service_version(service: &pb::Service) -> u64 {
    service.meta.as_ref().map_or(0, |m| m.version)
}

/// `service create`: prints the new service's ID, then waits for it to converge unless
/// `--detach`.
async fn create(client: &Client, args: opts::CreateArgs) -> anyhow::Result<i32> {
    let spec = opts::create_spec(&args)?;
    let service = client
        .control()
        .create_service(pb::CreateServiceRequest { spec: Some(spec) })
        .await
        .or_daemon_error()?
        .into_inner()
        .service
        .ok_or_else(|| anyhow!("the daemon answered without the new service"))?;
    let id = service_id(&service);
    println!("{id}");
    if !args.flags.detach {
        progress::wait(&mut client.control(), &id, args.flags.quiet).await?;
    }
    Ok(0)
}

/// The REPLICAS cell: running/desired, from the daemon's counts.
fn replicas_text(service: &pb::Service, counts: Option<&pb::ServiceCounts>) -> String {
    match counts {
        Some(c) => format!("{}/{}", c.running, c.desired),
        None => match service.spec.as_ref().and_then(|s| s.mode) {
            Some(Mode::Replicated(r)) => format!("0/{}", r.replicas),
            _ => "0/0".to_string(),
        },
    }
}

/// Docker's IMAGE cell of `service ls`: a tagged image without its digest.
fn list_image(service: &pb::Service) -> String {
    let image = service
        .spec
        .as_ref()
        .and_then(|s| s.task.as_ref())
        .and_then(|t| t.container.as_ref())
        .map_or("", |c| c.image.as_str());
    image_cell(image, false)
}

/// Docker's PORTS cell: the ingress ports the leader published, sorted by protocol then
/// port, runs of consecutive ports folded into ranges (`*:8080-8081->80-81/tcp`), comma
/// separated. Host-mode ports are not shown, as Docker does not show them.
fn ports_cell(service: &pb::Service) -> String {
    let mut ports: Vec<&pb::PortConfig> = service
        .endpoint
        .iter()
        .flat_map(|e| &e.ports)
        .filter(|p| p.publish_mode() == pb::PublishMode::Ingress)
        .collect();
    // Docker sorts by the protocol's name, which is tcp before udp as the enum is.
    ports.sort_by_key(|p| (p.protocol, p.published_port));
    struct Run {
        published: (u32, u32),
        target: (u32, u32),
        protocol: pb::PortProtocol,
    }
    let text = |r: &Run| {
        let range = |(start, end): (u32, u32)| {
            if end > start {
                format!("{start}-{end}")
            } else {
                start.to_string()
            }
        };
        format!(
            "*:{}->{}/{}",
            range(r.published),
            range(r.target),
            format::protocol_name(r.protocol)
        )
    };
    let mut cells = Vec::new();
    let mut run: Option<Run> = None;
    for p in ports {
        if let Some(r) = &mut run {
            // Docker's rule (its `serviceContext.Ports`): a port extends the run when it has
            // the run's protocol and follows it on both sides, and the run is not a range of
            // targets that the port's target falls back into.
            // Go's unsigned subtraction: a smaller port wraps around and does not follow.
            let is_range = r.target.1 != r.target.0;
            let follows = p.protocol() == r.protocol
                && p.published_port.wrapping_sub(r.published.1) <= 1
                && p.target_port.wrapping_sub(r.target.1) <= 1;
            if follows && !(is_range && p.target_port <= r.target.1) {
                r.published.1 = p.published_port;
                r.target.1 = p.target_port;
                continue;
            }
            if r.published.0 > 0 {
                cells.push(text(r));
            }
        }
        run = Some(Run {
            published: (p.published_port, p.published_port),
            target: (p.target_port, p.target_port),
            protocol: p.protocol(),
        });
    }
    cells.extend(run.as_ref().filter(|r| r.published.0 > 0).map(text));
    cells.join(", ")
}

/// Writes `service ls` output, services sorted by name.
fn write_services(
    services: &mut [pb::Service],
    counts: &std::collections::HashMap<String, pb::ServiceCounts>,
    args: &LsArgs,
    out: impl Write,
) -> std::io::Result<()> {
    let name = |s: &pb::Service| s.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
    services.sort_by(|a, b| natural_cmp(&name(a), &name(b)));
    let mut out = out;
    if args.quiet {
        for s in services.iter() {
            writeln!(out, "{}", short_id(&service_id(s), false))?;
        }
        return Ok(());
    }
    let row = |s: &pb::Service| {
        let id = service_id(s);
        (
            short_id(&id, false).to_string(),
            name(s),
            s.spec.as_ref().map_or("", format::mode_name),
            replicas_text(s, counts.get(&id)),
            list_image(s),
            ports_cell(s),
        )
    };
    match args.format {
        OutputFormat::Json => {
            for s in services.iter() {
                let (id, name, mode, replicas, image, ports) = row(s);
                let doc = serde_json::json!({
                    "ID": id,
                    "Image": image,
                    "Mode": mode,
                    "Name": name,
                    "Ports": ports,
                    "Replicas": replicas,
                });
                writeln!(out, "{doc}")?;
            }
            Ok(())
        }
        OutputFormat::Table => {
            let mut t = table(out);
            writeln!(t, "ID\tNAME\tMODE\tREPLICAS\tIMAGE\tPORTS")?;
            for s in services.iter() {
                let (id, name, mode, replicas, image, ports) = row(s);
                writeln!(t, "{id}\t{name}\t{mode}\t{replicas}\t{image}\t{ports}")?;
            }
            t.flush()
        }
    }
}

/// `service ls`.
async fn ls(client: &Client, args: LsArgs) -> anyhow::Result<i32> {
    let answer = client
        .control()
        .list_services(pb::ListServicesRequest {})
        .await
        .or_daemon_error()?
        .into_inner();
    let mut services = answer.services;
    write_services(
        &mut services,
        &answer.counts,
        &args,
        std::io::stdout().lock(),
    )?;
    Ok(0)
}

/// `service ps`: the tasks of the services found, then an error naming those not found
/// (Docker prints what it can before failing).
async fn service_ps(client: &Client, args: PsArgs) -> anyhow::Result<i32> {
    let filter = TaskFilter::parse(&args.flags.filters)?;
    let mut control = client.control();
    let mut service_ids = Vec::new();
    let mut not_found = Vec::new();
    for name in &args.services {
        match control
            .get_service(pb::GetServiceRequest { id: name.clone() })
            .await
        {
            Ok(answer) => service_ids.extend(answer.into_inner().service.as_ref().map(service_id)),
            Err(status) if status.code() == Code::NotFound => {
                not_found.push(format!("no such service: {name}"))
            }
            Err(status) => return Err(DaemonError(status).into()),
        }
    }
    if service_ids.is_empty() {
        return Err(anyhow!(not_found.join("\n")));
    }
    let mut node_ids = Vec::new();
    for node in &filter.nodes {
        node_ids.push(crate::commands::node::node_id(client, node).await?);
    }
    let request = pb::ListTasksRequest {
        service_ids,
        node_ids,
        desired_states: filter.desired_states.iter().map(|s| *s as i32).collect(),
    };
    // Docker prints whole IDs with -q, so that they can be fed to other commands.
    let no_trunc = args.flags.no_trunc || args.flags.quiet;
    print_tasks(&mut control, request, &args.flags, no_trunc).await?;
    if !not_found.is_empty() {
        return Err(anyhow!(not_found.join("\n")));
    }
    Ok(0)
}

/// Sets one service's replica count, answering the error Docker prints for it.
async fn scale_one(client: &Client, name: &str, replicas: &str) -> anyhow::Result<u64> {
    let replicas: u64 = replicas
        .parse()
        .map_err(|e| anyhow!("invalid replicas value {replicas}: {e}"))?;
    let mut service = get_service(client, name).await?;
    let mut spec = service.spec.take().unwrap_or_default();
    if opts::set_replicas(&mut spec, replicas).is_err() {
        return Err(anyhow!("scale can only be used with replicated mode"));
    }
    client
        .control()
        .update_service(pb::UpdateServiceRequest {
            id: service_id(&service),
            version: service_version(&service),
            spec: Some(spec),
            rollback: false,
        })
        .await
        .or_daemon_error()?;
    Ok(replicas)
}

/// `service scale`: sets each count (going on after a failure), then waits for the scaled
/// services unless `--detach`.
async fn scale(client: &Client, args: ScaleArgs) -> anyhow::Result<i32> {
    let mut errors = Vec::new();
    let mut scaled = Vec::new();
    for (name, replicas) in &args.scales {
        match scale_one(client, name, replicas).await {
            Ok(n) => {
                println!("{name} scaled to {n}");
                scaled.push(name.clone());
            }
            Err(err) => errors.push(anyhow!(
                "{name}: {}",
                failure_message(&err).trim_start_matches("Error: ")
            )),
        }
    }
    if !args.detach {
        for name in &scaled {
            if let Err(err) = progress::wait(&mut client.control(), name, false).await {
                errors.push(anyhow!(
                    "{name}: {}",
                    failure_message(&err).trim_start_matches("Error: ")
                ));
            }
        }
    }
    join_errors(errors)?;
    Ok(0)
}

/// Resolves the networks `update` names to ids (Docker's `updateNetworks` inspects each,
/// so that an unknown network is an error naming it) and reads the ports the leader
/// published.
async fn update_lookups(
    client: &Client,
    service: &pb::Service,
    args: &opts::UpdateArgs,
) -> anyhow::Result<opts::UpdateLookups> {
    let mut network_ids = std::collections::HashMap::new();
    let references = args
        .network_add
        .iter()
        .map(|n| &n.target)
        .chain(&args.network_rm);
    for reference in references {
        if !network_ids.contains_key(reference) {
            let id = network_id(client, reference).await?;
            network_ids.insert(reference.clone(), id);
        }
    }
    Ok(opts::UpdateLookups {
        network_ids,
        allocated_ports: service
            .endpoint
            .as_ref()
            .map(|e| e.ports.clone())
            .unwrap_or_default(),
    })
}

/// `service update`: reads the service, applies the flags (or asks for the previous spec
/// with `--rollback`), writes it with the version read, prints the name, and waits unless
/// `--detach`.
async fn update(client: &Client, args: opts::UpdateArgs) -> anyhow::Result<i32> {
    args.check_rollback()?;
    let service = get_service(client, &args.service).await?;
    let mut spec = service.spec.clone().unwrap_or_default();
    if !args.rollback {
        let lookups = update_lookups(client, &service, &args).await?;
        opts::update_spec(&mut spec, &args, &lookups)?;
    }
    client
        .control()
        .update_service(pb::UpdateServiceRequest {
            id: service_id(&service),
            version: service_version(&service),
            spec: Some(spec),
            rollback: args.rollback,
        })
        .await
        .or_daemon_error()?;
    println!("{}", args.service);
    if !args.flags.detach {
        progress::wait(&mut client.control(), &args.service, args.flags.quiet).await?;
    }
    Ok(0)
}

/// `service rm`: removes each service (going on after a failure), printing the names.
async fn rm(client: &Client, args: RmArgs) -> anyhow::Result<i32> {
    let mut errors = Vec::new();
    for name in &args.services {
        match client
            .control()
            .remove_service(pb::RemoveServiceRequest { id: name.clone() })
            .await
        {
            Ok(_) => println!("{name}"),
            Err(status) => errors.push(DaemonError(status).into()),
        }
    }
    join_errors(errors)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn service(id: &str, name: &str, mode: Mode, image: &str) -> pb::Service {
        pb::Service {
            meta: Some(pb::Meta {
                id: id.into(),
                ..Default::default()
            }),
            spec: Some(pb::ServiceSpec {
                name: name.into(),
                task: Some(pb::TaskSpec {
                    container: Some(pb::ContainerSpec {
                        image: image.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                mode: Some(mode),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn published(ports: &[(u32, u32, pb::PortProtocol, pb::PublishMode)]) -> pb::Service {
        pb::Service {
            endpoint: Some(pb::Endpoint {
                ports: ports
                    .iter()
                    .map(|&(published, target, protocol, mode)| pb::PortConfig {
                        name: String::new(),
                        protocol: protocol as i32,
                        target_port: target,
                        published_port: published,
                        publish_mode: mode as i32,
                    })
                    .collect(),
                virtual_ips: vec![],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn ports_column_like_docker() {
        use pb::PortProtocol::{Tcp, Udp};
        use pb::PublishMode::{Host, Ingress};
        assert_eq!(ports_cell(&published(&[])), "");
        assert_eq!(
            ports_cell(&published(&[(8080, 80, Tcp, Ingress)])),
            "*:8080->80/tcp"
        );
        // Docker's `TestServiceContext_Ports` (without its sctp ports), plus a host-mode
        // port, which is left out.
        let mut ports = vec![(81, 80, Tcp, Ingress), (80, 80, Tcp, Ingress)];
        ports.extend((90..=95).rev().map(|p| (p, p, Tcp, Ingress)));
        ports.extend([95, 90, 96, 91, 92, 93, 94].map(|p| (p, p, Udp, Ingress)));
        ports.extend([(60, 60, Tcp, Ingress), (61, 61, Tcp, Ingress)]);
        ports.extend([(62, 61, Tcp, Ingress), (8080, 80, Tcp, Host)]);
        assert_eq!(
            ports_cell(&published(&ports)),
            "*:60-61->60-61/tcp, *:62->61/tcp, *:80-81->80/tcp, *:90-95->90-95/tcp, \
             *:90-96->90-96/udp"
        );
        assert_eq!(
            ports_cell(&published(&[
                (30000, 80, Tcp, Ingress),
                (53, 53, Udp, Ingress)
            ])),
            "*:30000->80/tcp, *:53->53/udp"
        );
    }

    #[test]
    fn ls_table_and_json() {
        let mut services = vec![
            service(
                "web0123456789abcdef",
                "web",
                Mode::Replicated(pb::ReplicatedMode { replicas: 3 }),
                "busybox:1.36@sha256:abc",
            ),
            service(
                "mon0123456789abcdef",
                "mon",
                Mode::Global(pb::GlobalMode {}),
                "busybox",
            ),
        ];
        services[0].endpoint =
            published(&[(8080, 80, pb::PortProtocol::Tcp, pb::PublishMode::Ingress)]).endpoint;
        let counts: HashMap<String, pb::ServiceCounts> = [(
            "web0123456789abcdef".to_string(),
            pb::ServiceCounts {
                running: 2,
                desired: 3,
            },
        )]
        .into();
        let args = |quiet, format| LsArgs { quiet, format };
        let mut out = Vec::new();
        write_services(
            &mut services,
            &counts,
            &args(false, OutputFormat::Table),
            &mut out,
        )
        .expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
        assert_eq!(
            lines,
            [
                "ID             NAME      MODE         REPLICAS   IMAGE          PORTS",
                "mon012345678   mon       global       0/0        busybox",
                "web012345678   web       replicated   2/3        busybox:1.36   *:8080->80/tcp",
            ]
        );
        let mut out = Vec::new();
        write_services(
            &mut services,
            &counts,
            &args(false, OutputFormat::Json),
            &mut out,
        )
        .expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(
            text.lines().nth(1),
            Some(
                r#"{"ID":"web012345678","Image":"busybox:1.36","Mode":"replicated","Name":"web","Ports":"*:8080->80/tcp","Replicas":"2/3"}"#
            )
        );
        let mut out = Vec::new();
        write_services(
            &mut services,
            &counts,
            &args(true, OutputFormat::Table),
            &mut out,
        )
        .expect("write");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "mon012345678\nweb012345678\n"
        );
    }

    #[test]
    fn scale_specifiers() {
        assert_eq!(scale_arg("web=3"), Ok(("web".into(), "3".into())));
        for bad in ["web", "=3", "web="] {
            assert_eq!(
                scale_arg(bad),
                Err(format!("invalid scale specifier '{bad}'"))
            );
        }
    }

    #[test]
    fn joined_errors() {
        assert!(join_errors(Vec::new()).is_ok());
        let one =
            join_errors(vec![DaemonError(tonic::Status::not_found("x")).into()]).expect_err("one");
        assert!(one.downcast_ref::<DaemonError>().is_some());
        let two = join_errors(vec![
            DaemonError(tonic::Status::not_found("no such service: a")).into(),
            anyhow!("b: bad"),
        ])
        .expect_err("two");
        assert_eq!(
            two.to_string(),
            "Error response from daemon: no such service: a\nb: bad"
        );
    }
}
