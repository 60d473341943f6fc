//! Task listings as Docker prints them (its `cli/command/task` package), shared by
//! `service ps` and `node ps`: the flags, the `-f` filters, names (`web.1`, or
//! `web.<node id>` for global services), the order (by name naturally, then newest first)
//! with ` \_ ` before the older tasks of a slot, and the table, `-q` and `--format json`
//! outputs.

use std::collections::HashMap;
use std::io::Write;
use std::time::SystemTime;

use clap::Args;
use shoal_proto::cluster::v1 as pb;
use shoal_proto::cluster::v1::control_client::ControlClient;
use tonic::transport::Channel;

use super::format::{ago, pretty, task_state_from_name, task_state_name};
use super::table::{ellipsis, format_arg, image_cell, natural_cmp, short_id, table, OutputFormat};
use crate::commands::OrDaemonError;

/// Characters of a task error the ERROR column shows unless `--no-trunc` (Docker's
/// `maxErrLength`).
const MAX_ERR_LEN: usize = 30;

/// The flags of `service ps` and `node ps`.
#[derive(Debug, Args)]
pub struct TaskListFlags {
    /// Only display task IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Do not truncate output
    #[arg(long)]
    pub no_trunc: bool,
    /// Filter output based on conditions provided (desired-state=running|shutdown|accepted,
    /// node=NODE)
    #[arg(short, long = "filter", value_name = "KEY=VALUE")]
    pub filters: Vec<String>,
    /// Format output: "table" or "json"
    #[arg(long, value_name = "FORMAT", value_parser = format_arg, default_value = "table")]
    pub format: OutputFormat,
}

/// Errors of reading `-f`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// Not `key=value`.
    #[error("bad format of filter (expected name=value): {0}")]
    Format(String),
    /// A key `ps` does not filter on.
    #[error("invalid filter '{0}'")]
    Key(String),
    /// Not a task state.
    #[error("invalid filter 'desired-state={0}'")]
    DesiredState(String),
}

/// The `-f` filters of a task listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFilter {
    /// Only tasks with one of these desired states.
    pub desired_states: Vec<pb::TaskState>,
    /// Only tasks on these nodes (references, resolved by the caller).
    pub nodes: Vec<String>,
}

impl TaskFilter {
    /// Reads `-f key=value` flags.
    pub fn parse(filters: &[String]) -> Result<TaskFilter, FilterError> {
        let mut filter = TaskFilter::default();
        for f in filters {
            let (key, value) = f
                .split_once('=')
                .ok_or_else(|| FilterError::Format(f.clone()))?;
            match key.trim().to_ascii_lowercase().as_str() {
                "desired-state" => filter.desired_states.push(
                    task_state_from_name(&value.to_ascii_lowercase())
                        .ok_or_else(|| FilterError::DesiredState(value.to_string()))?,
                ),
                "node" => filter.nodes.push(value.to_string()),
                _ => return Err(FilterError::Key(key.to_string())),
            }
        }
        Ok(filter)
    }
}

/// What rows need besides the tasks: service and node names by id.
#[derive(Debug, Clone, Default)]
pub struct Names {
    /// Service id → current name.
    pub services: HashMap<String, String>,
    /// Node id → hostname.
    pub nodes: HashMap<String, String>,
}

impl Names {
    /// Every service's and node's name (one call each, not one per task).
    pub async fn fetch(control: &mut ControlClient<Channel>) -> anyhow::Result<Names> {
        let services = control
            .list_services(pb::ListServicesRequest {})
            .await
            .or_daemon_error()?
            .into_inner()
            .services;
        let nodes = control
            .list_nodes(pb::ListNodesRequest {})
            .await
            .or_daemon_error()?
            .into_inner()
            .nodes;
        Ok(Names {
            services: services
                .into_iter()
                .filter_map(|s| {
                    let id = s.meta?.id;
                    Some((id, s.spec?.name))
                })
                .collect(),
            nodes: nodes
                .into_iter()
                .filter_map(|n| {
                    let id = n.meta?.id;
                    Some((id, n.description?.hostname))
                })
                .collect(),
        })
    }
}

/// One line of a task listing, its cells as Docker prints them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRow {
    /// Task id (cut to 12 characters unless `--no-trunc`).
    pub id: String,
    /// `web.1`, or `web.<node id>` for a global service.
    pub name: String,
    /// Whether an older task of the slot above it (printed with ` \_ `).
    pub history: bool,
    /// Image, without its digest unless `--no-trunc`.
    pub image: String,
    /// Hostname of the task's node.
    pub node: String,
    /// "Running", "Shutdown", …
    pub desired_state: String,
    /// "Running 5 seconds ago".
    pub current_state: String,
    /// The error, quoted, cut unless `--no-trunc`.
    pub error: String,
}

fn slot_name(task: &pb::Task, names: &Names) -> String {
    let service = names
        .services
        .get(&task.service_id)
        .cloned()
        .or_else(|| (!task.service_name.is_empty()).then(|| task.service_name.clone()))
        .unwrap_or_else(|| task.service_id.clone());
    if task.slot != 0 {
        format!("{service}.{}", task.slot)
    } else {
        format!("{service}.{}", task.node_id)
    }
}

fn created_at(task: &pb::Task) -> i64 {
    task.meta.as_ref().map_or(0, |m| m.created_at)
}

/// The rows of `tasks` in Docker's order: by name (naturally: `web.2` before `web.10`), the
/// newest task of a slot first and its older ones, marked as history, after it.
pub fn task_rows(
    tasks: &[pb::Task],
    names: &Names,
    now: SystemTime,
    no_trunc: bool,
) -> Vec<TaskRow> {
    let mut named: Vec<(String, &pb::Task)> =
        tasks.iter().map(|t| (slot_name(t, names), t)).collect();
    named.sort_by(|(a_name, a), (b_name, b)| {
        natural_cmp(a_name, b_name).then_with(|| created_at(b).cmp(&created_at(a)))
    });
    let mut previous: Option<String> = None;
    named
        .into_iter()
        .map(|(name, task)| {
            let history = previous.as_deref() == Some(name.as_str());
            previous = Some(name.clone());
            let status = task.status.clone().unwrap_or_default();
            let image = task
                .spec
                .as_ref()
                .and_then(|s| s.container.as_ref())
                .map(|c| c.image.as_str())
                .unwrap_or_default();
            let error = if no_trunc {
                status.err.clone()
            } else {
                ellipsis(&status.err, MAX_ERR_LEN)
            };
            TaskRow {
                id: short_id(task.meta.as_ref().map_or("", |m| m.id.as_str()), no_trunc)
                    .to_string(),
                name,
                history,
                image: image_cell(image, no_trunc),
                // Docker's resolver shows the ID of a node it cannot name (one removed).
                node: names
                    .nodes
                    .get(&task.node_id)
                    .cloned()
                    .unwrap_or_else(|| task.node_id.clone()),
                desired_state: pretty(task_state_name(task.desired_state())),
                current_state: format!(
                    "{} {}",
                    pretty(task_state_name(status.state())),
                    ago(status.timestamp, now).to_lowercase()
                ),
                error: if error.is_empty() {
                    error
                } else {
                    format!("\"{error}\"")
                },
            }
        })
        .collect()
}

/// Prints `rows`: their IDs (`quiet`), Docker's table, or one JSON object per line with the
/// keys of Docker's task formatter.
pub fn write_rows(
    rows: &[TaskRow],
    quiet: bool,
    format: OutputFormat,
    out: impl Write,
) -> std::io::Result<()> {
    if quiet {
        let mut out = out;
        for row in rows {
            writeln!(out, "{}", row.id)?;
        }
        return Ok(());
    }
    match format {
        OutputFormat::Json => {
            let mut out = out;
            for row in rows {
                // Keys in Go's (sorted) order.
                let doc = serde_json::json!({
                    "CurrentState": row.current_state,
                    "DesiredState": row.desired_state,
                    "Error": row.error,
                    "ID": row.id,
                    "Image": row.image,
                    "Name": row.name,
                    "Node": row.node,
                    "Ports": "",
                });
                writeln!(out, "{doc}")?;
            }
            Ok(())
        }
        OutputFormat::Table => {
            let mut t = table(out);
            writeln!(
                t,
                "ID\tNAME\tIMAGE\tNODE\tDESIRED STATE\tCURRENT STATE\tERROR\tPORTS"
            )?;
            for row in rows {
                let indent = if row.history { " \\_ " } else { "" };
                writeln!(
                    t,
                    "{}\t{indent}{}\t{}\t{}\t{}\t{}\t{}\t",
                    row.id,
                    row.name,
                    row.image,
                    row.node,
                    row.desired_state,
                    row.current_state,
                    row.error
                )?;
            }
            t.flush()
        }
    }
}

/// Lists the tasks `request` selects and prints them as `flags` ask.
pub async fn print_tasks(
    control: &mut ControlClient<Channel>,
    request: pb::ListTasksRequest,
    flags: &TaskListFlags,
    no_trunc: bool,
) -> anyhow::Result<()> {
    let mut tasks = control
        .list_tasks(request)
        .await
        .or_daemon_error()?
        .into_inner()
        .tasks;
    // Network attachments of standalone containers are tasks only inside the cluster; Docker
    // does not list them either (`container ls` on their node shows the containers).
    tasks.retain(|t| t.spec.as_ref().is_none_or(|s| s.attachment.is_none()));
    let names = Names::fetch(control).await?;
    let rows = task_rows(&tasks, &names, SystemTime::now(), no_trunc);
    write_rows(&rows, flags.quiet, flags.format, std::io::stdout().lock())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::service::format::system_time;

    const T0: i64 = 1_704_067_200_000_000_000; // 2024-01-01T00:00:00Z
    const SECOND: i64 = 1_000_000_000;

    fn task(
        id: &str,
        slot: u64,
        node: &str,
        created: i64,
        state: pb::TaskState,
        desired: pb::TaskState,
    ) -> pb::Task {
        pb::Task {
            meta: Some(pb::Meta {
                id: id.into(),
                version: 1,
                created_at: created,
                updated_at: created,
            }),
            service_id: "svc1".into(),
            slot,
            node_id: node.into(),
            spec: Some(pb::TaskSpec {
                container: Some(pb::ContainerSpec {
                    image: "busybox:1.36@sha256:abc".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            spec_version: 1,
            status: Some(pb::TaskStatus {
                state: state as i32,
                timestamp: created + SECOND,
                ..Default::default()
            }),
            desired_state: desired as i32,
            service_name: "old-name".into(),
            not_before: 0,
            restarts: 0,
            networks: Vec::new(),
        }
    }

    fn names() -> Names {
        Names {
            services: [("svc1".to_string(), "web".to_string())].into(),
            nodes: [
                ("n1".to_string(), "node-1".to_string()),
                ("n2".to_string(), "node-2".to_string()),
            ]
            .into(),
        }
    }

    #[test]
    fn rows_are_ordered_by_slot_then_newest_first() {
        use pb::TaskState as S;
        let tasks = vec![
            task("a1-old-0123456789", 1, "n1", T0, S::Failed, S::Shutdown),
            task(
                "b10-01234567890",
                10,
                "n2",
                T0 + 5 * SECOND,
                S::Running,
                S::Running,
            ),
            task(
                "a1-new-0123456789",
                1,
                "n2",
                T0 + 10 * SECOND,
                S::Running,
                S::Running,
            ),
            task("c2-0123456789012", 2, "n1", T0, S::Pending, S::Running),
            task(
                "a1-mid-0123456789",
                1,
                "n1",
                T0 + 5 * SECOND,
                S::Shutdown,
                S::Shutdown,
            ),
        ];
        let now = system_time(T0 + 16 * SECOND);
        let rows = task_rows(&tasks, &names(), now, false);
        let order: Vec<(&str, &str, bool)> = rows
            .iter()
            .map(|r| (r.id.as_str(), r.name.as_str(), r.history))
            .collect();
        assert_eq!(
            order,
            [
                ("a1-new-01234", "web.1", false),
                ("a1-mid-01234", "web.1", true),
                ("a1-old-01234", "web.1", true),
                ("c2-012345678", "web.2", false),
                ("b10-01234567", "web.10", false),
            ]
        );
        assert_eq!(rows[0].node, "node-2");
        assert_eq!(rows[0].image, "busybox:1.36");
        assert_eq!(rows[0].desired_state, "Running");
        assert_eq!(rows[0].current_state, "Running 5 seconds ago");
        assert_eq!(rows[2].current_state, "Failed 15 seconds ago");
        assert_eq!(rows[2].desired_state, "Shutdown");
    }

    #[test]
    fn global_tasks_are_named_by_node() {
        let mut t = task(
            "g",
            0,
            "n1",
            T0,
            pb::TaskState::Running,
            pb::TaskState::Running,
        );
        t.service_id = "gone".into();
        let rows = task_rows(&[t], &names(), system_time(T0), true);
        // A service that is gone is named as the task recorded it.
        assert_eq!(rows[0].name, "old-name.n1");
        assert_eq!(rows[0].image, "busybox:1.36@sha256:abc");
        assert_eq!(rows[0].current_state, "Running less than a second ago");
    }

    #[test]
    fn errors_are_cut_and_quoted() {
        let mut t = task(
            "e",
            1,
            "",
            T0,
            pb::TaskState::Pending,
            pb::TaskState::Running,
        );
        if let Some(status) = t.status.as_mut() {
            status.err =
                "no suitable node (scheduling constraints not satisfied on 3 nodes)".into();
        }
        let rows = task_rows(std::slice::from_ref(&t), &names(), system_time(T0), false);
        assert_eq!(rows[0].error, "\"no suitable node (scheduling …\"");
        assert_eq!(rows[0].node, "");
        let rows = task_rows(&[t], &names(), system_time(T0), true);
        assert_eq!(
            rows[0].error,
            "\"no suitable node (scheduling constraints not satisfied on 3 nodes)\""
        );
    }

    #[test]
    fn table_and_json_output() {
        use pb::TaskState as S;
        let tasks = vec![
            task(
                "new-0123456789",
                1,
                "n1",
                T0 + 10 * SECOND,
                S::Running,
                S::Running,
            ),
            task("old-0123456789", 1, "n1", T0, S::Shutdown, S::Shutdown),
        ];
        let rows = task_rows(&tasks, &names(), system_time(T0 + 16 * SECOND), false);
        let mut out = Vec::new();
        write_rows(&rows, false, OutputFormat::Table, &mut out).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
        assert_eq!(
            lines,
            [
                "ID             NAME        IMAGE          NODE      DESIRED STATE   CURRENT STATE             ERROR     PORTS",
                "new-01234567   web.1       busybox:1.36   node-1    Running         Running 5 seconds ago",
                "old-01234567    \\_ web.1   busybox:1.36   node-1    Shutdown        Shutdown 15 seconds ago",
            ]
        );

        let mut out = Vec::new();
        write_rows(&rows, false, OutputFormat::Json, &mut out).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        let first = text.lines().next().expect("a line");
        assert_eq!(
            first,
            r#"{"CurrentState":"Running 5 seconds ago","DesiredState":"Running","Error":"","ID":"new-01234567","Image":"busybox:1.36","Name":"web.1","Node":"node-1","Ports":""}"#
        );

        let mut out = Vec::new();
        write_rows(&rows, true, OutputFormat::Table, &mut out).expect("write");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "new-01234567\nold-01234567\n"
        );
    }

    #[test]
    fn filters() {
        let f = TaskFilter::parse(&[
            "desired-state=running".into(),
            "desired-state=Shutdown".into(),
            "node=self".into(),
        ])
        .expect("valid");
        assert_eq!(
            f.desired_states,
            [pb::TaskState::Running, pb::TaskState::Shutdown]
        );
        assert_eq!(f.nodes, ["self"]);
        assert_eq!(
            TaskFilter::parse(&["color=red".into()]),
            Err(FilterError::Key("color".into()))
        );
        assert_eq!(
            TaskFilter::parse(&["desired-state".into()]),
            Err(FilterError::Format("desired-state".into()))
        );
        assert_eq!(
            TaskFilter::parse(&["desired-state=sleepy".into()]),
            Err(FilterError::DesiredState("sleepy".into()))
        );
    }
}
