//! The tables of `container ls` and `container stats`, column for column as Docker prints
//! them (its `formatter` package: tabwriter with minimum width 10 and padding 3), and the
//! PORTS column's text (its `api/types.DisplayablePorts`).

use std::io::Write;
use std::time::{Duration, SystemTime};

use shoal_proto::node::v1 as pb;
use tabwriter::TabWriter;

use super::{LsArgs, StatsArgs};
use crate::client::Client;
use crate::commands::{DaemonError, OrDaemonError, EXIT_FAILED};
use crate::units::{bytes_size, human_duration, since};

/// Time between the two samples `stats --no-stream` takes for its CPU %: Docker's daemon
/// takes about a second; half of it is as meaningful for a percentage and keeps the
/// command snappy.
const STATS_SAMPLE_GAP: Duration = Duration::from_millis(500);

/// Refresh period of streaming `stats`, Docker's.
const STATS_REFRESH: Duration = Duration::from_secs(1);

/// Width of the COMMAND column before Docker truncates it.
const COMMAND_WIDTH: usize = 20;

fn table<W: Write>(out: W) -> TabWriter<W> {
    // Go's tabwriter counts the padding in the minimum width (10), Rust's does not.
    TabWriter::new(out).minwidth(7).padding(3)
}

fn short_id(id: &str, no_trunc: bool) -> &str {
    if no_trunc {
        id
    } else {
        &id[..12.min(id.len())]
    }
}

/// Docker's `State.String()`: "Up 5 seconds", "Exited (0) 3 seconds ago", "Created".
pub fn status_text(state: &pb::ContainerState, now: SystemTime) -> String {
    let ago = |at: &str| since(at, now).map(human_duration);
    match state.status.as_str() {
        "running" => format!("Up {}", ago(&state.started_at).unwrap_or_default()),
        "dead" => "Dead".to_string(),
        _ if state.started_at.is_empty() => "Created".to_string(),
        _ => match ago(&state.finished_at) {
            Some(d) => format!("Exited ({}) {d} ago", state.exit_code),
            None => String::new(),
        },
    }
}

/// Docker's `ellipsis`: at most `width` characters, the last one `…` when cut.
fn ellipsis(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut cut: String = s.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Go's `strconv.Quote` for the characters a command line holds.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The COMMAND column: the command line, cut to 20 characters unless `no_trunc`, quoted.
pub fn command_text(command: &[String], no_trunc: bool) -> String {
    let line = command.join(" ");
    if no_trunc {
        go_quote(&line)
    } else {
        go_quote(&ellipsis(&line, COMMAND_WIDTH))
    }
}

/// The daemon's containers (running ones unless `all`), newest first.
async fn list(client: &Client, all: bool) -> anyhow::Result<Vec<pb::ContainerSummary>> {
    Ok(client
        .containers
        .clone()
        .list(pb::ListContainersRequest { all })
        .await
        .or_daemon_error()?
        .into_inner()
        .containers)
}

/// One port of the PORTS column, as Docker's `types.Port`: `ip` is empty for a port that is
/// not (yet) bound on the host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ShownPort {
    // Field order is Docker's `comparePorts` order.
    private: u32,
    ip: String,
    public: u32,
    protocol: String,
}

impl From<&pb::PortBinding> for ShownPort {
    fn from(binding: &pb::PortBinding) -> ShownPort {
        let ip = match (binding.host_port, binding.host_ip.as_str()) {
            (0, _) => "",
            // The daemon publishes on every address when none is given, as Docker does.
            (_, "") => "0.0.0.0",
            (_, ip) => ip,
        };
        ShownPort {
            private: binding.container_port,
            ip: ip.to_string(),
            public: binding.host_port,
            protocol: if binding.protocol.is_empty() {
                "tcp".to_string()
            } else {
                binding.protocol.clone()
            },
        }
    }
}

/// Docker's `formGroup`: `80/tcp`, `0.0.0.0:80-81->80-81/tcp`.
fn port_group(ip: &str, protocol: &str, first: u32, last: u32) -> String {
    let mut group = first.to_string();
    if first != last {
        group = format!("{group}-{last}");
    }
    if !ip.is_empty() {
        group = format!("{ip}:{group}->{group}");
    }
    format!("{group}/{protocol}")
}

/// The PORTS column, as Docker's `DisplayablePorts`: sorted by container port; ports published
/// on the same number and consecutive ones grouped into ranges; the other published ones
/// (`0.0.0.0:8080->80/tcp`) last.
pub fn ports_text(bindings: &[pb::PortBinding]) -> String {
    let mut ports: Vec<ShownPort> = bindings.iter().map(ShownPort::from).collect();
    ports.sort();
    // Groups in the order their key first appeared, as Docker's `groupMapKeys`.
    let mut groups: Vec<((String, String), u32, u32)> = Vec::new();
    let mut result = Vec::new();
    let mut mappings = Vec::new();
    for port in ports {
        if !port.ip.is_empty() && port.public != port.private {
            let host = match port.ip.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V6(_)) => format!("[{}]:{}", port.ip, port.public),
                _ => format!("{}:{}", port.ip, port.public),
            };
            mappings.push(format!("{host}->{}/{}", port.private, port.protocol));
            continue;
        }
        let key = (port.ip, port.protocol);
        match groups.iter_mut().find(|(k, _, _)| *k == key) {
            None => groups.push((key, port.private, port.private)),
            Some((_, _, last)) if port.private == *last + 1 => *last = port.private,
            Some((k, first, last)) => {
                result.push(port_group(&k.0, &k.1, *first, *last));
                (*first, *last) = (port.private, port.private);
            }
        }
    }
    result.extend(
        groups
            .iter()
            .map(|((ip, protocol), first, last)| port_group(ip, protocol, *first, *last)),
    );
    result.extend(mappings);
    result.join(", ")
}

/// Writes the `container ls` table (without `-q`).
fn write_containers(
    containers: &[pb::ContainerSummary],
    no_trunc: bool,
    now: SystemTime,
    out: impl Write,
) -> std::io::Result<()> {
    let mut t = table(out);
    writeln!(
        t,
        "CONTAINER ID\tIMAGE\tCOMMAND\tCREATED\tSTATUS\tPORTS\tNAMES"
    )?;
    for c in containers {
        let created = since(&c.created, now)
            .map(|d| format!("{} ago", human_duration(d)))
            .unwrap_or_default();
        let status = c
            .state
            .as_ref()
            .map(|s| status_text(s, now))
            .unwrap_or_default();
        // Docker shows the ports of running containers only: a stopped one holds none.
        let running = c
            .state
            .as_ref()
            .is_some_and(|s| matches!(s.status.as_str(), "running" | "paused"));
        let ports = if running {
            ports_text(&c.ports)
        } else {
            String::new()
        };
        writeln!(
            t,
            "{}\t{}\t{}\t{created}\t{status}\t{ports}\t{}",
            short_id(&c.id, no_trunc),
            c.image,
            command_text(&c.command, no_trunc),
            c.name,
        )?;
    }
    t.flush()
}

/// `container ls`.
pub async fn ls(client: &Client, args: LsArgs) -> anyhow::Result<i32> {
    let containers = list(client, args.all).await?;
    let out = std::io::stdout().lock();
    if args.quiet {
        let mut out = out;
        for c in &containers {
            writeln!(out, "{}", short_id(&c.id, args.no_trunc))?;
        }
        return Ok(0);
    }
    write_containers(&containers, args.no_trunc, SystemTime::now(), out)?;
    Ok(0)
}

/// One row of `stats`; `None` figures (a container that is not running) print as zeros.
#[derive(Debug, Clone, Default, PartialEq)]
struct StatsRow {
    id: String,
    name: String,
    cpu_percent: f64,
    memory_usage: u64,
    memory_limit: u64,
    pids: u64,
}

impl StatsRow {
    /// The row from two samples of one container (CPU % needs a time span).
    fn from_samples(first: Option<&pb::StatsResponse>, last: &pb::StatsResponse) -> StatsRow {
        let cpu_percent = first
            .map(|first| {
                let cpu = last.cpu_usage_ns.saturating_sub(first.cpu_usage_ns) as f64;
                let wall = last.read_unix_nanos.saturating_sub(first.read_unix_nanos) as f64;
                if wall > 0.0 {
                    cpu / wall * 100.0
                } else {
                    0.0
                }
            })
            .unwrap_or(0.0);
        StatsRow {
            id: last.id.clone(),
            name: last.name.clone(),
            cpu_percent,
            memory_usage: last.memory_usage,
            memory_limit: last.memory_limit,
            pids: last.pids,
        }
    }

    fn memory_percent(&self) -> f64 {
        if self.memory_limit == 0 {
            0.0
        } else {
            self.memory_usage as f64 / self.memory_limit as f64 * 100.0
        }
    }
}

fn write_stats(rows: &[StatsRow], no_trunc: bool, out: impl Write) -> std::io::Result<()> {
    let mut t = table(out);
    writeln!(
        t,
        "CONTAINER ID\tNAME\tCPU %\tMEM USAGE / LIMIT\tMEM %\tPIDS"
    )?;
    for row in rows {
        writeln!(
            t,
            "{}\t{}\t{:.2}%\t{} / {}\t{:.2}%\t{}",
            short_id(&row.id, no_trunc),
            row.name,
            row.cpu_percent,
            bytes_size(row.memory_usage),
            bytes_size(row.memory_limit),
            row.memory_percent(),
            row.pids
        )?;
    }
    t.flush()
}

/// The containers `stats` shows: those named, else the running (or with `-a` all) ones.
async fn stats_targets(client: &Client, args: &StatsArgs) -> anyhow::Result<Vec<String>> {
    if !args.containers.is_empty() {
        return Ok(args.containers.clone());
    }
    let containers = list(client, args.all).await?;
    Ok(containers.into_iter().map(|c| c.id).collect())
}

/// One sample per target; a target that stopped gives `None`, one that does not exist is
/// an error when named explicitly.
async fn sample(
    client: &Client,
    targets: &[String],
    named: bool,
) -> anyhow::Result<Vec<(String, Option<pb::StatsResponse>)>> {
    let mut containers = client.containers.clone();
    let mut samples = Vec::with_capacity(targets.len());
    for id in targets {
        match containers.stats(pb::StatsRequest { id: id.clone() }).await {
            Ok(s) => samples.push((id.clone(), Some(s.into_inner()))),
            Err(status) if named && status.code() == tonic::Code::NotFound => {
                return Err(DaemonError(status).into())
            }
            Err(_) => samples.push((id.clone(), None)),
        }
    }
    Ok(samples)
}

fn rows(
    before: &[(String, Option<pb::StatsResponse>)],
    after: &[(String, Option<pb::StatsResponse>)],
) -> Vec<StatsRow> {
    after
        .iter()
        .map(|(id, last)| {
            let first = before
                .iter()
                .find(|(b, _)| b == id)
                .and_then(|(_, s)| s.as_ref());
            match last {
                Some(last) => StatsRow::from_samples(first, last),
                None => StatsRow {
                    id: id.clone(),
                    name: "--".to_string(),
                    ..StatsRow::default()
                },
            }
        })
        .collect()
}

/// `container stats`: one table with `--no-stream`, else a table redrawn every second.
pub async fn stats(client: &Client, args: StatsArgs) -> anyhow::Result<i32> {
    let named = !args.containers.is_empty();
    let targets = stats_targets(client, &args).await?;
    let mut before = sample(client, &targets, named).await?;
    if args.no_stream {
        tokio::time::sleep(STATS_SAMPLE_GAP).await;
        let after = sample(client, &targets, named).await?;
        write_stats(
            &rows(&before, &after),
            args.no_trunc,
            std::io::stdout().lock(),
        )?;
        return Ok(0);
    }
    loop {
        tokio::time::sleep(STATS_REFRESH).await;
        let targets = if named {
            targets.clone()
        } else {
            stats_targets(client, &args).await?
        };
        let after = match sample(client, &targets, named).await {
            Ok(after) => after,
            Err(err) => {
                eprintln!("{}", crate::commands::failure_message(&err));
                return Ok(EXIT_FAILED);
            }
        };
        let mut out = std::io::stdout().lock();
        // Clear the screen and go home, as Docker redraws its table.
        write!(out, "\x1b[2J\x1b[H")?;
        write_stats(&rows(&before, &after), args.no_trunc, &mut out)?;
        before = after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(status: &str, started: &str, finished: &str, code: i32) -> pb::ContainerState {
        pb::ContainerState {
            status: status.into(),
            started_at: started.into(),
            finished_at: finished.into(),
            exit_code: code,
            ..Default::default()
        }
    }

    #[test]
    fn status_reads_like_docker() {
        let now = humantime::parse_rfc3339("2024-01-01T00:01:00Z").expect("valid");
        let cases = [
            (state("created", "", "", 0), "Created"),
            (
                state("running", "2024-01-01T00:00:55Z", "", 0),
                "Up 5 seconds",
            ),
            (
                state("exited", "2024-01-01T00:00:00Z", "2024-01-01T00:00:57Z", 3),
                "Exited (3) 3 seconds ago",
            ),
            (state("exited", "", "", 127), "Created"),
            (state("dead", "2024-01-01T00:00:00Z", "", 0), "Dead"),
        ];
        for (state, want) in cases {
            assert_eq!(status_text(&state, now), want);
        }
    }

    #[test]
    fn command_column_is_cut_and_quoted() {
        let cmd = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(command_text(&cmd("echo hi"), false), "\"echo hi\"");
        assert_eq!(
            command_text(&cmd("sh -c while true; do sleep 1; done"), false),
            "\"sh -c while true; d…\""
        );
        assert_eq!(
            command_text(&cmd("sh -c while true; do sleep 1; done"), true),
            "\"sh -c while true; do sleep 1; done\""
        );
    }

    #[test]
    fn stats_table() {
        let sample = |cpu, at| pb::StatsResponse {
            id: "0123456789abcdef".into(),
            name: "web".into(),
            cpu_usage_ns: cpu,
            memory_usage: 1_572_864,
            memory_limit: 67_108_864,
            pids: 3,
            read_unix_nanos: at,
        };
        let row = StatsRow::from_samples(Some(&sample(0, 0)), &sample(250_000_000, 500_000_000));
        assert!((row.cpu_percent - 50.0).abs() < 1e-9);
        let mut out = Vec::new();
        write_stats(&[row], false, &mut out).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("CONTAINER ID   NAME      CPU %     MEM USAGE / LIMIT   MEM %     PIDS")
        );
        assert_eq!(
            lines.next(),
            Some("0123456789ab   web       50.00%    1.5MiB / 64MiB      2.34%     3")
        );
    }

    fn binding(ip: &str, host: u32, container: u32, protocol: &str) -> pb::PortBinding {
        pb::PortBinding {
            host_ip: ip.into(),
            host_port: host,
            container_port: container,
            protocol: protocol.into(),
        }
    }

    #[test]
    fn ports_read_like_docker() {
        let cases = [
            (vec![], ""),
            (vec![binding("", 8080, 80, "tcp")], "0.0.0.0:8080->80/tcp"),
            (
                vec![binding("", 8080, 80, ""), binding("", 5353, 53, "udp")],
                "0.0.0.0:5353->53/udp, 0.0.0.0:8080->80/tcp",
            ),
            (
                vec![
                    binding("", 8001, 8001, "tcp"),
                    binding("0.0.0.0", 8000, 8000, "tcp"),
                    binding("", 8003, 8003, "tcp"),
                    binding("", 9000, 90, "tcp"),
                ],
                "0.0.0.0:8000-8001->8000-8001/tcp, 0.0.0.0:8003->8003/tcp, 0.0.0.0:9000->90/tcp",
            ),
            (vec![binding("::1", 8080, 80, "tcp")], "[::1]:8080->80/tcp"),
            // Not bound yet: shown as an exposed port.
            (vec![binding("", 0, 80, "tcp")], "80/tcp"),
        ];
        for (ports, want) in cases {
            assert_eq!(ports_text(&ports), want, "{ports:?}");
        }
    }

    #[test]
    fn ls_table_has_the_ports_before_the_names() {
        let now = humantime::parse_rfc3339("2024-01-01T00:01:00Z").expect("valid");
        let container = |id: &str, name: &str, state: pb::ContainerState| pb::ContainerSummary {
            id: id.into(),
            name: name.into(),
            image: "demo".into(),
            command: vec!["httpd".into()],
            created: "2024-01-01T00:00:00Z".into(),
            state: Some(state),
            ports: vec![binding("", 8080, 80, "tcp")],
            ..Default::default()
        };
        let containers = [
            container(
                "0123456789abcdef",
                "web",
                state("running", "2024-01-01T00:00:55Z", "", 0),
            ),
            container(
                "fedcba9876543210",
                "old",
                state("exited", "2024-01-01T00:00:00Z", "2024-01-01T00:00:57Z", 0),
            ),
        ];
        let mut out = Vec::new();
        write_containers(&containers, false, now, &mut out).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
        assert_eq!(
            lines,
            [
                "CONTAINER ID   IMAGE     COMMAND   CREATED              STATUS                     PORTS                  NAMES",
                "0123456789ab   demo      \"httpd\"   About a minute ago   Up 5 seconds               0.0.0.0:8080->80/tcp   web",
                "fedcba987654   demo      \"httpd\"   About a minute ago   Exited (0) 3 seconds ago                          old",
            ]
        );
    }
}
