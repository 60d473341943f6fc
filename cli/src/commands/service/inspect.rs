//! `service inspect`: Docker's JSON documents, or with `--pretty` Docker's human text (its
//! `serviceInspectPrettyTemplate`, tabs and all).

use std::fmt::Write as _;
use std::time::SystemTime;

use clap::Args;
use shoal_proto::cluster::v1 as pb;
use shoal_proto::cluster::v1::service_spec::Mode;
use tonic::Code;

use super::format::{ago, go_list, inspect_json, ServiceDoc};
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
        for service in &found {
            print!("{}", pretty(service, now));
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
pub fn pretty(service: &pb::Service, now: SystemTime) -> String {
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
    out.push_str("Endpoint Mode:\tvip\n");
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
            }),
            ..Default::default()
        };
        let text = pretty(&service, system_time(0));
        assert_eq!(
            text,
            "\nID:\t\tde179gar9d0o7ltdybungplod\nName:\t\tmy_service\nLabels:\n com.label=foo\n\
             Service Mode:\tReplicated\n Replicas:\t2\nPlacement:\n Constraints:\t[node.role==worker]\n\
             ContainerSpec:\n Image:\t\tfoo/bar\n Args:\t\tsleep 1d \n\
             Resources:\n Limits:\n  CPU:\t\t1.5\n  Memory:\t10MiB\nEndpoint Mode:\tvip\n\n"
        );
    }
}
