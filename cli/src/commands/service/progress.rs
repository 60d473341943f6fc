//! Waiting for a service to converge after `service create`, `scale` or `update`, with Docker's
//! progress display on a terminal (its `cli/command/service/progress` package):
//!
//! ```text
//! overall progress: 3 out of 3 tasks
//! 1/3: running   [==================================================>]
//! 2/3: running   [==================================================>]
//! 3/3: running   [==================================================>]
//! verify: Service converged
//! ```
//!
//! A service has converged when every slot (replicated) or every eligible node (global) has a
//! task of the current spec that should run and runs, and it stays so for [`STABLE_FOR`].
//! Like Docker, the wait has no deadline: a task that keeps failing shows its error on its
//! line, and Ctrl-C leaves the update to go on in the background.
//!
//! The progress model ([`ServiceProgress`], [`Lines`]) is pure; [`wait`] polls the daemon and
//! draws it.

use std::collections::{BTreeMap, HashSet};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use shoal_proto::cluster::v1 as pb;
use shoal_proto::cluster::v1::control_client::ControlClient;
use shoal_proto::cluster::v1::service_spec::Mode;
use tonic::transport::Channel;
use tonic::Code;

use super::format::task_state_name;
use super::table::{ellipsis, short_id};
use crate::commands::DaemonError;

/// How often the daemon is asked. Docker polls every 200 ms; shoal's tasks start in tens of
/// milliseconds, and three small reads ten times a second cost a manager nothing.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How long a converged service must stay converged before the wait ends. Docker waits for
/// the update monitor period (5 s by default) to catch tasks that die right after starting;
/// shoal's agents report a failed start within a heartbeat (1 s), so one second catches the
/// same failures without making every `service create` five seconds long.
pub const STABLE_FOR: Duration = Duration::from_secs(1);

/// Docker draws per-task lines only up to this many tasks.
const MAX_PROGRESS_BARS: usize = 20;

/// The position of a running task on the bar (Docker's `maxProgress`).
const MAX_PROGRESS: u32 = 9;

/// Docker cuts task errors to this width so that lines do not wrap.
const MAX_ERR_WIDTH: usize = 75;

/// Width of the state word on a task line ("preparing", the longest non-terminal state).
const STATE_WIDTH: usize = 9;

/// Docker only draws bars on terminals wider than this.
const MIN_BAR_COLUMNS: u16 = 111;

/// Docker's ordering of task states for progress (`numberedStates`); 0 for states a
/// progress display ignores.
fn numbered(state: pb::TaskState) -> u32 {
    use pb::TaskState as S;
    match state {
        S::New => 1,
        S::Pending => 3,
        S::Assigned => 4,
        S::Accepted => 5,
        S::Preparing => 6,
        S::Ready => 7,
        S::Starting => 8,
        S::Running => 9,
        S::Complete => 10,
        S::Shutdown => 11,
        S::Failed => 12,
        S::Rejected => 13,
        S::Remove | S::Orphaned => 0,
    }
}

fn terminal(state: pb::TaskState) -> bool {
    numbered(state) > numbered(pb::TaskState::Running)
}

fn task_state(task: &pb::Task) -> pb::TaskState {
    task.status
        .as_ref()
        .map_or(pb::TaskState::New, |s| s.state())
}

fn task_err(task: &pb::Task) -> &str {
    task.status.as_ref().map_or("", |s| s.err.as_str())
}

/// Of two tasks for one slot (or node), the one to show: the lowest desired state, then the
/// lowest observed state (Docker's rule for restarts and start-first updates).
fn prefer<'a>(existing: Option<&'a pb::Task>, task: &'a pb::Task) -> &'a pb::Task {
    match existing {
        Some(e) => {
            let key = |t: &pb::Task| (numbered(t.desired_state()), numbered(task_state(t)));
            if key(e) <= key(task) {
                e
            } else {
                task
            }
        }
        None => task,
    }
}

fn is_up_to_date(service: &pb::Service, task: &pb::Task) -> bool {
    task.spec_version == service.spec_version
        && numbered(task.desired_state()) != 0
        && numbered(task_state(task)) != 0
}

fn is_running(task: &pb::Task) -> bool {
    !terminal(task.desired_state()) && task_state(task) == pb::TaskState::Running
}

/// Lines of a progress display in the order they first appeared, each under an id, as
/// Docker's progress output keeps them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lines {
    lines: Vec<(String, String)>,
    changed: bool,
}

impl Lines {
    /// Sets the line `id` to `text`, adding it at the bottom if new.
    pub fn set(&mut self, id: &str, text: String) {
        let text = format!("{id}: {text}").trim_end().to_string();
        match self.lines.iter_mut().find(|(i, _)| i == id) {
            Some((_, existing)) if *existing == text => {}
            Some((_, existing)) => {
                *existing = text;
                self.changed = true;
            }
            None => {
                self.lines.push((id.to_string(), text));
                self.changed = true;
            }
        }
    }

    /// The lines' texts, top to bottom.
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().map(|(_, text)| text.as_str())
    }
}

/// Docker's progress bar for `current` of [`MAX_PROGRESS`]: 50 cells.
fn bar(current: u32) -> String {
    let percent = (current.min(MAX_PROGRESS) * 100 / MAX_PROGRESS / 2) as usize;
    format!("[{}>{}]", "=".repeat(percent), " ".repeat(50 - percent))
}

/// Follows one service's convergence into [`Lines`].
#[derive(Debug)]
pub struct ServiceProgress {
    /// The display.
    pub lines: Lines,
    bars: bool,
    initialized: bool,
    done: bool,
    /// Slot → its line number, in the order slots were first seen, so that lines stay put.
    slot_map: BTreeMap<u64, usize>,
}

impl ServiceProgress {
    /// A display; `bars` draws Docker's progress bars (wide terminals).
    pub fn new(bars: bool) -> ServiceProgress {
        ServiceProgress {
            lines: Lines::default(),
            bars,
            initialized: false,
            done: false,
            slot_map: BTreeMap::new(),
        }
    }

    fn overall(&mut self, running: usize, total: usize) {
        self.lines.set(
            "overall progress",
            format!("{running} out of {total} tasks"),
        );
    }

    fn task_line(&mut self, id: &str, task: &pb::Task) {
        let err = task_err(task);
        if !err.is_empty() {
            let err = ellipsis(&err.replace('\n', " "), MAX_ERR_WIDTH);
            self.lines.set(id, err);
            return;
        }
        let state = task_state(task);
        if !terminal(task.desired_state()) && !terminal(state) {
            let word = format!("{:<STATE_WIDTH$}", task_state_name(state));
            let text = if self.bars {
                format!("{word} {}", bar(numbered(state)))
            } else {
                word
            };
            self.lines.set(id, text);
        }
    }

    /// Takes in the service and its tasks; `active_nodes` are the nodes not down. Returns
    /// whether the service has converged.
    pub fn update(
        &mut self,
        service: &pb::Service,
        tasks: &[pb::Task],
        active_nodes: &HashSet<String>,
    ) -> bool {
        let on_active_node =
            |t: &pb::Task| t.node_id.is_empty() || active_nodes.contains(&t.node_id);
        let current: Vec<&pb::Task> = tasks
            .iter()
            .filter(|t| is_up_to_date(service, t) && on_active_node(t))
            .collect();
        match service.spec.as_ref().and_then(|s| s.mode) {
            Some(Mode::Global(_)) => self.update_global(&current),
            Some(Mode::Replicated(r)) => self.update_replicated(r.replicas, &current),
            // A spec without a mode runs nothing: nothing to wait for.
            None => true,
        }
    }

    fn update_replicated(&mut self, replicas: u64, tasks: &[&pb::Task]) -> bool {
        let total = usize::try_from(replicas).unwrap_or(usize::MAX);
        if !self.initialized {
            self.overall(0, total);
            if total <= MAX_PROGRESS_BARS {
                for i in 1..=total {
                    self.lines.set(&format!("{i}/{total}"), String::new());
                }
            }
            self.initialized = true;
        }
        let mut by_slot: BTreeMap<u64, &pb::Task> = BTreeMap::new();
        for task in tasks {
            let chosen = prefer(by_slot.get(&task.slot).copied(), task);
            by_slot.insert(task.slot, chosen);
        }
        if self.done
            && by_slot
                .values()
                .any(|t| task_state(t) != pb::TaskState::Running)
        {
            self.done = false;
        }
        let running = by_slot.values().filter(|t| is_running(t)).count();
        for (slot, task) in &by_slot {
            let next = self.slot_map.len() + 1;
            let mapped = *self.slot_map.entry(*slot).or_insert(next);
            if !self.done && total <= MAX_PROGRESS_BARS && mapped <= total {
                self.task_line(&format!("{mapped}/{total}"), task);
            }
        }
        if !self.done {
            self.overall(running, total);
            self.done = running == total;
        }
        running == total
    }

    fn update_global(&mut self, tasks: &[&pb::Task]) -> bool {
        let mut by_node: BTreeMap<&str, &pb::Task> = BTreeMap::new();
        for task in tasks {
            let chosen = prefer(by_node.get(task.node_id.as_str()).copied(), task);
            by_node.insert(task.node_id.as_str(), chosen);
        }
        let total = by_node.len();
        if !self.initialized {
            if total == 0 {
                // The orchestrator has not made the tasks yet, or no node is eligible.
                self.lines
                    .set("overall progress", "waiting for new tasks".to_string());
                return false;
            }
            self.overall(0, total);
            self.initialized = true;
        }
        if self.done
            && by_node
                .values()
                .any(|t| task_state(t) != pb::TaskState::Running)
        {
            self.done = false;
        }
        let running = by_node.values().filter(|t| is_running(t)).count();
        if !self.done && total <= MAX_PROGRESS_BARS {
            for (node, task) in &by_node {
                self.task_line(short_id(node, false), task);
            }
        }
        if !self.done {
            self.overall(running, total);
            self.done = running == total;
        }
        total > 0 && running == total
    }
}

/// Draws [`Lines`] on a terminal, redrawing them in place.
struct Screen {
    drawn: usize,
    columns: usize,
}

impl Screen {
    fn draw(&mut self, lines: &mut Lines) -> std::io::Result<()> {
        if !lines.changed {
            return Ok(());
        }
        lines.changed = false;
        let mut out = std::io::stdout().lock();
        if self.drawn > 0 {
            write!(out, "\x1b[{}A", self.drawn)?;
        }
        for text in lines.texts() {
            // A wrapped line would throw the cursor arithmetic off.
            let text = ellipsis(text, self.columns.saturating_sub(1).max(1));
            write!(out, "\r\x1b[2K{text}\n")?;
        }
        self.drawn = lines.lines.len();
        out.flush()
    }
}

/// Errors that end a wait.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// Swarm's update state machine paused the update or rollback.
    #[error("service {what} paused: {message}")]
    Paused {
        /// "update" or "rollback".
        what: &'static str,
        /// Why, as the daemon says.
        message: String,
    },
}

async fn poll_once(
    control: &mut ControlClient<Channel>,
    service_ref: &str,
) -> Result<(pb::Service, Vec<pb::Task>, HashSet<String>), tonic::Status> {
    let service = control
        .get_service(pb::GetServiceRequest {
            id: service_ref.to_string(),
        })
        .await?
        .into_inner()
        .service
        .ok_or_else(|| tonic::Status::internal("the daemon answered without a service"))?;
    let id = service
        .meta
        .as_ref()
        .map(|m| m.id.clone())
        .unwrap_or_default();
    let tasks = control
        .list_tasks(pb::ListTasksRequest {
            service_ids: vec![id],
            ..Default::default()
        })
        .await?
        .into_inner()
        .tasks;
    let active = control
        .list_nodes(pb::ListNodesRequest {})
        .await?
        .into_inner()
        .nodes
        .into_iter()
        .filter(|n| n.status.as_ref().map(|s| s.state()) != Some(pb::NodeState::Down))
        .filter_map(|n| n.meta.map(|m| m.id))
        .collect();
    Ok((service, tasks, active))
}

fn check_update_status(service: &pb::Service) -> Result<(), WaitError> {
    let Some(status) = service.update_status.as_ref() else {
        return Ok(());
    };
    let what = match status.state.as_str() {
        "paused" => "update",
        "rollback_paused" => "rollback",
        _ => return Ok(()),
    };
    Err(WaitError::Paused {
        what,
        message: status.message.clone(),
    })
}

/// Waits until the service `service_ref` converges, drawing progress on a terminal unless
/// `quiet`. Ctrl-C ends the wait (successfully: the change goes on without the client).
pub async fn wait(
    control: &mut ControlClient<Channel>,
    service_ref: &str,
    quiet: bool,
) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut screen = (!quiet && stdout.is_terminal()).then(|| Screen {
        drawn: 0,
        columns: crate::terminal::size().map_or(80, |(_, cols)| usize::from(cols)),
    });
    let bars = screen
        .as_ref()
        .is_some_and(|s| s.columns >= usize::from(MIN_BAR_COLUMNS));
    let mut progress = ServiceProgress::new(bars);
    let mut converged_at: Option<Instant> = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        match poll_once(control, service_ref).await {
            Ok((service, tasks, active)) => {
                check_update_status(&service)?;
                if converged_at.is_some_and(|at| at.elapsed() >= STABLE_FOR) {
                    progress
                        .lines
                        .set("verify", "Service converged".to_string());
                    if let Some(screen) = screen.as_mut() {
                        screen.draw(&mut progress.lines)?;
                    }
                    return Ok(());
                }
                if progress.update(&service, &tasks, &active) {
                    let at = *converged_at.get_or_insert_with(Instant::now);
                    let left = STABLE_FOR.saturating_sub(at.elapsed());
                    progress.lines.set(
                        "verify",
                        format!(
                            "Waiting {} seconds to verify that tasks are stable...",
                            left.as_secs() + 1
                        ),
                    );
                } else {
                    if converged_at.take().is_some() {
                        progress
                            .lines
                            .set("verify", "Detected task failure".to_string());
                    }
                }
            }
            // A leader election in progress: ask again rather than give up.
            Err(status) if status.code() == Code::Unavailable => {}
            Err(status) => return Err(DaemonError(status).into()),
        }
        if let Some(screen) = screen.as_mut() {
            screen.draw(&mut progress.lines)?;
        }
        tokio::select! {
            () = tokio::time::sleep(POLL_INTERVAL) => {}
            _ = &mut ctrl_c => {
                if screen.is_some() {
                    println!("Operation continuing in background.");
                    println!("Use `shoal service ps {service_ref}` to check progress.");
                }
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::TaskState as S;

    fn service(mode: Mode, spec_version: u64) -> pb::Service {
        pb::Service {
            meta: Some(pb::Meta {
                id: "svc".into(),
                ..Default::default()
            }),
            spec: Some(pb::ServiceSpec {
                name: "web".into(),
                mode: Some(mode),
                ..Default::default()
            }),
            spec_version,
            ..Default::default()
        }
    }

    fn replicated(n: u64) -> pb::Service {
        service(Mode::Replicated(pb::ReplicatedMode { replicas: n }), 2)
    }

    fn task(slot: u64, node: &str, state: S, desired: S, spec_version: u64) -> pb::Task {
        pb::Task {
            slot,
            node_id: node.into(),
            spec_version,
            status: Some(pb::TaskStatus {
                state: state as i32,
                ..Default::default()
            }),
            desired_state: desired as i32,
            ..Default::default()
        }
    }

    fn active(nodes: &[&str]) -> HashSet<String> {
        nodes.iter().map(|n| n.to_string()).collect()
    }

    fn texts(p: &ServiceProgress) -> Vec<&str> {
        p.lines.texts().collect()
    }

    #[test]
    fn replicated_service_converges_when_every_slot_runs() {
        let svc = replicated(3);
        let nodes = active(&["n1", "n2"]);
        let mut p = ServiceProgress::new(false);
        assert!(!p.update(&svc, &[], &nodes));
        assert_eq!(
            texts(&p),
            ["overall progress: 0 out of 3 tasks", "1/3:", "2/3:", "3/3:"]
        );

        let mut tasks = vec![
            task(1, "n1", S::Running, S::Running, 2),
            task(2, "n2", S::Preparing, S::Running, 2),
            task(3, "", S::Pending, S::Running, 2),
        ];
        if let Some(s) = tasks[2].status.as_mut() {
            s.err = "no suitable node (insufficient resources on 2 nodes)".into();
        }
        assert!(!p.update(&svc, &tasks, &nodes));
        assert_eq!(
            texts(&p),
            [
                "overall progress: 1 out of 3 tasks",
                "1/3: running",
                "2/3: preparing",
                "3/3: no suitable node (insufficient resources on 2 nodes)",
            ]
        );

        let tasks = vec![
            task(1, "n1", S::Running, S::Running, 2),
            task(2, "n2", S::Running, S::Running, 2),
            task(3, "n1", S::Running, S::Running, 2),
            // An old task of slot 3 shutting down, and one of the previous spec.
            task(3, "n2", S::Failed, S::Shutdown, 2),
            task(1, "n2", S::Running, S::Running, 1),
        ];
        assert!(p.update(&svc, &tasks, &nodes));
        assert_eq!(
            texts(&p),
            [
                "overall progress: 3 out of 3 tasks",
                "1/3: running",
                "2/3: running",
                "3/3: running",
            ]
        );
    }

    #[test]
    fn tasks_of_an_old_spec_or_a_down_node_do_not_count() {
        let svc = replicated(2);
        let mut p = ServiceProgress::new(false);
        let tasks = vec![
            task(1, "n1", S::Running, S::Running, 1),
            task(2, "down", S::Running, S::Running, 2),
        ];
        assert!(!p.update(&svc, &tasks, &active(&["n1"])));
        assert_eq!(texts(&p)[0], "overall progress: 0 out of 2 tasks");
    }

    #[test]
    fn scaling_down_converges_before_the_extra_tasks_stop() {
        let svc = replicated(1);
        let mut p = ServiceProgress::new(false);
        let tasks = vec![
            task(1, "n1", S::Running, S::Running, 2),
            task(2, "n1", S::Running, S::Shutdown, 2),
        ];
        assert!(p.update(&svc, &tasks, &active(&["n1"])));
        assert!(ServiceProgress::new(false).update(&replicated(0), &[], &active(&[])));
    }

    #[test]
    fn global_service_waits_for_tasks_then_for_every_node() {
        let svc = service(Mode::Global(pb::GlobalMode {}), 1);
        let nodes = active(&["node-aaaaaaaaaaaaaaaa", "node-bbbbbbbbbbbbbbbb"]);
        let mut p = ServiceProgress::new(false);
        assert!(!p.update(&svc, &[], &nodes));
        assert_eq!(texts(&p), ["overall progress: waiting for new tasks"]);
        let tasks = vec![
            task(0, "node-aaaaaaaaaaaaaaaa", S::Running, S::Running, 1),
            task(0, "node-bbbbbbbbbbbbbbbb", S::Starting, S::Running, 1),
        ];
        assert!(!p.update(&svc, &tasks, &nodes));
        assert_eq!(
            texts(&p),
            [
                "overall progress: 1 out of 2 tasks",
                "node-aaaaaaa: running",
                "node-bbbbbbb: starting",
            ]
        );
        let tasks = vec![
            task(0, "node-aaaaaaaaaaaaaaaa", S::Running, S::Running, 1),
            task(0, "node-bbbbbbbbbbbbbbbb", S::Running, S::Running, 1),
        ];
        assert!(p.update(&svc, &tasks, &nodes));
    }

    #[test]
    fn bars_fill_with_the_state() {
        assert_eq!(bar(9), format!("[{}>]", "=".repeat(50)));
        assert_eq!(bar(0), format!("[>{}]", " ".repeat(50)));
        let svc = replicated(1);
        let mut p = ServiceProgress::new(true);
        p.update(
            &svc,
            &[task(1, "n1", S::Starting, S::Running, 2)],
            &active(&["n1"]),
        );
        assert_eq!(
            texts(&p)[1],
            format!("1/1: starting  [{}>{}]", "=".repeat(44), " ".repeat(6))
        );
    }

    /// A control API that serves one service whose tasks start running after a few polls.
    struct StubControl {
        service: pb::Service,
        polls: std::sync::atomic::AtomicUsize,
    }

    fn unimplemented<T>() -> Result<tonic::Response<T>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this stub"))
    }

    #[tonic::async_trait]
    impl pb::control_server::Control for StubControl {
        async fn list_nodes(
            &self,
            _: tonic::Request<pb::ListNodesRequest>,
        ) -> Result<tonic::Response<pb::ListNodesResponse>, tonic::Status> {
            let node = pb::Node {
                meta: Some(pb::Meta {
                    id: "n1".into(),
                    ..Default::default()
                }),
                status: Some(pb::NodeStatus {
                    state: pb::NodeState::Ready as i32,
                    ..Default::default()
                }),
                ..Default::default()
            };
            Ok(tonic::Response::new(pb::ListNodesResponse {
                nodes: vec![node],
            }))
        }
        async fn get_node(
            &self,
            _: tonic::Request<pb::GetNodeRequest>,
        ) -> Result<tonic::Response<pb::GetNodeResponse>, tonic::Status> {
            unimplemented()
        }
        async fn update_node(
            &self,
            _: tonic::Request<pb::UpdateNodeRequest>,
        ) -> Result<tonic::Response<pb::UpdateNodeResponse>, tonic::Status> {
            unimplemented()
        }
        async fn remove_node(
            &self,
            _: tonic::Request<pb::RemoveNodeRequest>,
        ) -> Result<tonic::Response<pb::RemoveNodeResponse>, tonic::Status> {
            unimplemented()
        }
        async fn create_service(
            &self,
            _: tonic::Request<pb::CreateServiceRequest>,
        ) -> Result<tonic::Response<pb::CreateServiceResponse>, tonic::Status> {
            unimplemented()
        }
        async fn get_service(
            &self,
            request: tonic::Request<pb::GetServiceRequest>,
        ) -> Result<tonic::Response<pb::GetServiceResponse>, tonic::Status> {
            if request.get_ref().id != "web" {
                return Err(tonic::Status::not_found("no such service: nope"));
            }
            Ok(tonic::Response::new(pb::GetServiceResponse {
                service: Some(self.service.clone()),
            }))
        }
        async fn list_services(
            &self,
            _: tonic::Request<pb::ListServicesRequest>,
        ) -> Result<tonic::Response<pb::ListServicesResponse>, tonic::Status> {
            unimplemented()
        }
        async fn update_service(
            &self,
            _: tonic::Request<pb::UpdateServiceRequest>,
        ) -> Result<tonic::Response<pb::UpdateServiceResponse>, tonic::Status> {
            unimplemented()
        }
        async fn remove_service(
            &self,
            _: tonic::Request<pb::RemoveServiceRequest>,
        ) -> Result<tonic::Response<pb::RemoveServiceResponse>, tonic::Status> {
            unimplemented()
        }
        async fn list_tasks(
            &self,
            request: tonic::Request<pb::ListTasksRequest>,
        ) -> Result<tonic::Response<pb::ListTasksResponse>, tonic::Status> {
            assert_eq!(request.get_ref().service_ids, ["svc"]);
            let polls = self.polls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let state = if polls < 3 { S::Starting } else { S::Running };
            let tasks = (1..=2)
                .map(|slot| task(slot, "n1", state, S::Running, 2))
                .collect();
            Ok(tonic::Response::new(pb::ListTasksResponse { tasks }))
        }
        async fn create_network(
            &self,
            _: tonic::Request<pb::CreateNetworkRequest>,
        ) -> Result<tonic::Response<pb::CreateNetworkResponse>, tonic::Status> {
            unimplemented()
        }
        async fn get_network(
            &self,
            _: tonic::Request<pb::GetNetworkRequest>,
        ) -> Result<tonic::Response<pb::GetNetworkResponse>, tonic::Status> {
            unimplemented()
        }
        async fn list_networks(
            &self,
            _: tonic::Request<pb::ListNetworksRequest>,
        ) -> Result<tonic::Response<pb::ListNetworksResponse>, tonic::Status> {
            unimplemented()
        }
        async fn remove_network(
            &self,
            _: tonic::Request<pb::RemoveNetworkRequest>,
        ) -> Result<tonic::Response<pb::RemoveNetworkResponse>, tonic::Status> {
            unimplemented()
        }
        async fn get_cluster(
            &self,
            _: tonic::Request<pb::GetClusterRequest>,
        ) -> Result<tonic::Response<pb::GetClusterResponse>, tonic::Status> {
            unimplemented()
        }
        async fn rotate_join_token(
            &self,
            _: tonic::Request<pb::RotateJoinTokenRequest>,
        ) -> Result<tonic::Response<pb::RotateJoinTokenResponse>, tonic::Status> {
            unimplemented()
        }
        type WatchStream = tokio_stream::Empty<Result<pb::WatchMessage, tonic::Status>>;
        async fn watch(
            &self,
            _: tonic::Request<pb::WatchRequest>,
        ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
            unimplemented()
        }
    }

    #[tokio::test]
    async fn wait_returns_once_the_service_stays_converged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("shoal.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        let stub = StubControl {
            service: replicated(2),
            polls: Default::default(),
        };
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(pb::control_server::ControlServer::new(stub))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
        );
        let host = format!("unix://{}", path.display()).parse().expect("host");
        let client = crate::client::Client::connect(&host)
            .await
            .expect("connect");

        let started = Instant::now();
        wait(&mut client.control(), "web", true)
            .await
            .expect("converges");
        let took = started.elapsed();
        assert!(took >= STABLE_FOR + 3 * POLL_INTERVAL, "{took:?}");
        assert!(took < STABLE_FOR + Duration::from_secs(2), "{took:?}");

        let err = wait(&mut client.control(), "nope", true)
            .await
            .expect_err("no such service");
        assert_eq!(
            crate::commands::failure_message(&err),
            "Error response from daemon: no such service: nope"
        );
        server.abort();
    }

    #[test]
    fn paused_updates_end_the_wait() {
        let mut svc = replicated(1);
        assert!(check_update_status(&svc).is_ok());
        svc.update_status = Some(pb::UpdateStatus {
            state: "paused".into(),
            message: "update paused due to failure".into(),
            ..Default::default()
        });
        let err = check_update_status(&svc).expect_err("paused");
        assert_eq!(
            err.to_string(),
            "service update paused: update paused due to failure"
        );
    }
}
