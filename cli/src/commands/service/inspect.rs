//! `service inspect`: Docker's JSON documents, or with `--pretty` Docker's human text (its
//! `serviceInspectPrettyTemplate`, tabs and all, with networks by name as Docker shows them).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::SystemTime;

use clap::Args;
use shoal_proto::cluster::v1 as pb;
use shoal_proto::cluster::v1::service_spec::Mode;
use tonic::Code;

use super::format::{
    ago, endpoint_mode_name, go_list, inspect_json, protocol_name, publish_mode_name, ServiceDoc,
};
use crate::client::Client;
use crate::commands::{DaemonError, EXIT_FAILED};
use crate::units::bytes_size;

/// `service inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Print the information in a human friendly format
    #[arg(long)]
    pub pretty: bool,
    /// Services to inspect (name, ID or ID prefix)
    #[arg(required = true, value_name = "SERVICE")]
    pub services: Vec<String>,
}

/// Prints the services found, then an error line for each one missing (exit 1 if any is).
pub async fn inspect(client: &Client, args: InspectArgs) -> anyhow::Result<i32> {
    let mut control = client.control();
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for name in args.services {
        match control
            .get_service(pb::GetServiceRequest { id: name.clone() })
            .await
        {
            Ok(answer) => found.extend(answer.into_inner().service),
            Err(status) if status.code() == Code::NotFound => missing.push(name),
            Err(status) => return Err(DaemonError(status).into()),
        }
    }
    if args.pretty {
        let now = SystemTime::now();
        let names = if found
            .iter()
            .any(|s| s.spec.as_ref().is_some_and(|s| !s.networks.is_empty()))
        {
            network_names(client).await
        } else {
            HashMap::new()
        };
        for service in &found {
            print!("{}", pretty(service, now, &names));
        }
    } else {
        let docs: Vec<ServiceDoc> = found.iter().map(ServiceDoc::new).collect();
        println!("{}", inspect_json(&docs));
    }
    for name in &missing {
        eprintln!("Error: no such service: {name}");
    }
    Ok(if missing.is_empty() { 0 } else { EXIT_FAILED })
}

/// Network ids to names, for `--pretty`. Docker prints ids it cannot name, so a failed
/// listing only costs the names.
async fn network_names(client: &Client) -> HashMap<String, String> {
    let networks = match client
        .control()
        .list_networks(pb::ListNetworksRequest {})
        .await
    {
        Ok(answer) => answer.into_inner().networks,
        Err(status) => {
            tracing::debug!(?status, "list networks for service inspect --pretty");
            Vec::new()
        }
    };
    networks
        .into_iter()
        .filter_map(|n| Some((n.meta?.id, n.spec?.name)))
        .collect()
}

fn cpus(nano_cpus: i64) -> f64 {
    nano_cpus as f64 / 1e9
}

fn memory(bytes: i64) -> String {
    bytes_size(u64::try_from(bytes).unwrap_or(0))
}

/// Writes Docker's `Resources:` block, if any limit or reservation is set.
fn write_resources(out: &mut String, resources: Option<&pb::ResourceRequirements>) {
    let set =
        |r: Option<&pb::Resources>| r.copied().filter(|r| r.nano_cpus > 0 || r.memory_bytes > 0);
    let reservations = set(resources.and_then(|r| r.reservations.as_ref()));
    let limits = set(resources.and_then(|r| r.limits.as_ref()));
    if reservations.is_none() && limits.is_none() {
        return;
    }
    out.push_str("Resources:\n");
    for (title, r) in [(" Reservations:", reservations), (" Limits:", limits)] {
        let Some(r) = r else { continue };
        let _ = writeln!(out, "{title}");
        if r.nano_cpus > 0 {
            let _ = writeln!(out, "  CPU:\t\t{}", cpus(r.nano_cpus));
        }
        if r.memory_bytes > 0 {
            let _ = writeln!(out, "  Memory:\t{}", memory(r.memory_bytes));
        }
    }
}

/// Docker's `service inspect --pretty` text of one service, ending with a blank line.
/// `network_names` maps network ids to names; ids missing from it are printed as they are.
pub fn pretty(
    service: &pb::Service,
    now: SystemTime,
    network_names: &HashMap<String, String>,
) -> String {
    let spec = service.spec.clone().unwrap_or_default();
    let task = spec.task.clone().unwrap_or_default();
    let container = task.container.clone().unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "ID:\t\t{}",
        service.meta.as_ref().map_or("", |m| m.id.as_str())
    );
    let _ = writeln!(out, "Name:\t\t{}", spec.name);
    if !spec.labels.is_empty() {
        out.push_str("Labels:\n");
        let mut labels: Vec<_> = spec.labels.iter().collect();
        labels.sort();
        for (k, v) in labels {
            if v.is_empty() {
                let _ = writeln!(out, " {k}");
            } else {
                let _ = writeln!(out, " {k}={v}");
            }
        }
    }
    match spec.mode {
        Some(Mode::Global(_)) => out.push_str("Service Mode:\tGlobal\n"),
        Some(Mode::Replicated(r)) => {
            let _ = writeln!(out, "Service Mode:\tReplicated\n Replicas:\t{}", r.replicas);
        }
        None => out.push_str("Service Mode:\n"),
    }
    if let Some(status) = service
        .update_status
        .as_ref()
        .filter(|u| !u.state.is_empty())
    {
        let _ = writeln!(out, "UpdateStatus:\n State:\t\t{}", status.state);
        if status.started_at != 0 {
            let _ = writeln!(out, " Started:\t{}", ago(status.started_at, now));
        }
        if status.state == "completed" && status.completed_at != 0 {
            let _ = writeln!(out, " Completed:\t{}", ago(status.completed_at, now));
        }
        let _ = writeln!(out, " Message:\t{}", status.message);
    }
    out.push_str("Placement:\n");
    if let Some(placement) = task
        .placement
        .as_ref()
        .filter(|p| !p.constraints.is_empty())
    {
        let _ = writeln!(out, " Constraints:\t{}", go_list(&placement.constraints));
    }
    out.push_str("ContainerSpec:\n");
    let _ = writeln!(out, " Image:\t\t{}", container.image);
    if !container.args.is_empty() {
        let _ = writeln!(out, " Args:\t\t{} ", container.args.join(" "));
    }
    if !container.env.is_empty() {
        let _ = writeln!(out, " Env:\t\t{} ", container.env.join(" "));
    }
    if !container.dir.is_empty() {
        let _ = writeln!(out, " Dir:\t\t{}", container.dir);
    }
    if !container.user.is_empty() {
        let _ = writeln!(out, " User: {}", container.user);
    }
    write_resources(&mut out, task.resources.as_ref());
    if !spec.networks.is_empty() {
        out.push_str("Networks:");
        for network in &spec.networks {
            let name = network_names
                .get(&network.target)
                .unwrap_or(&network.target);
            let _ = write!(out, " {name}");
        }
        out.push_str(" \n");
    }
    // Swarm fills in a missing endpoint spec with VIP mode.
    let mode = spec
        .endpoint
        .as_ref()
        .map_or(pb::EndpointMode::Vip, |e| e.mode());
    let _ = writeln!(out, "Endpoint Mode:\t{}", endpoint_mode_name(mode));
    let ports = service.endpoint.as_ref().map_or(&[][..], |e| &e.ports[..]);
    if !ports.is_empty() {
        out.push_str("Ports:");
        for port in ports {
            let _ = write!(
                out,
                "\n PublishedPort = {}\n  Protocol = {}\n  TargetPort = {}\n  PublishMode = {}",
                port.published_port,
                protocol_name(port.protocol()),
                port.target_port,
                publish_mode_name(port.publish_mode())
            );
        }
        out.push_str(" \n");
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::service::format::system_time;

    #[test]
    fn pretty_reads_like_docker() {
        let service = pb::Service {
            meta: Some(pb::Meta {
                id: "de179gar9d0o7ltdybungplod".into(),
                ..Default::default()
            }),
            spec: Some(pb::ServiceSpec {
                name: "my_service".into(),
                labels: [("com.label".to_string(), "foo".to_string())].into(),
                task: Some(pb::TaskSpec {
                    container: Some(pb::ContainerSpec {
                        image: "foo/bar".into(),
                        args: vec!["sleep".into(), "1d".into()],
                        ..Default::default()
                    }),
                    resources: Some(pb::ResourceRequirements {
                        limits: Some(pb::Resources {
                            nano_cpus: 1_500_000_000,
                            memory_bytes: 10 << 20,
                        }),
                        reservations: None,
                    }),
                    placement: Some(pb::Placement {
                        constraints: vec!["node.role==worker".into()],
                    }),
                    ..Default::default()
                }),
                mode: Some(Mode::Replicated(pb::ReplicatedMode { replicas: 2 })),
                networks: Vec::new(),
                endpoint: None,
            }),
            ..Default::default()
        };
        let text = pretty(&service, system_time(0), &HashMap::new());
        assert_eq!(
            text,
            "\nID:\t\tde179gar9d0o7ltdybungplod\nName:\t\tmy_service\nLabels:\n com.label=foo\n\
             Service Mode:\tReplicated\n Replicas:\t2\nPlacement:\n Constraints:\t[node.role==worker]\n\
             ContainerSpec:\n Image:\t\tfoo/bar\n Args:\t\tsleep 1d \n\
             Resources:\n Limits:\n  CPU:\t\t1.5\n  Memory:\t10MiB\nEndpoint Mode:\tvip\n\n"
        );
    }

    #[test]
    fn pretty_shows_networks_and_ports_like_docker() {
        let service = pb::Service {
            meta: Some(pb::Meta {
                id: "s1".into(),
                ..Default::default()
            }),
            spec: Some(pb::ServiceSpec {
                name: "web".into(),
                task: Some(pb::TaskSpec {
                    container: Some(pb::ContainerSpec {
                        image: "busybox".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                mode: Some(Mode::Global(pb::GlobalMode {})),
                networks: vec![
                    pb::NetworkAttachmentConfig {
                        target: "id-front".into(),
                        aliases: vec![],
                    },
                    pb::NetworkAttachmentConfig {
                        target: "id-gone".into(),
                        aliases: vec![],
                    },
                ],
                endpoint: Some(pb::EndpointSpec {
                    mode: pb::EndpointMode::Dnsrr as i32,
                    ports: vec![],
                }),
                ..Default::default()
            }),
            endpoint: Some(pb::Endpoint {
                ports: vec![pb::PortConfig {
                    name: String::new(),
                    protocol: pb::PortProtocol::Udp as i32,
                    target_port: 53,
                    published_port: 30000,
                    publish_mode: pb::PublishMode::Host as i32,
                }],
                virtual_ips: vec![],
            }),
            ..Default::default()
        };
        let names: HashMap<String, String> = [("id-front".to_string(), "front".to_string())].into();
        let text = pretty(&service, system_time(0), &names);
        assert!(
            text.ends_with(
                "ContainerSpec:\n Image:\t\tbusybox\n\
                 Networks: front id-gone \nEndpoint Mode:\tdnsrr\n\
                 Ports:\n PublishedPort = 30000\n  Protocol = udp\n  TargetPort = 53\n  PublishMode = host \n\n"
            ),
            "{text:?}"
        );
    }
}
