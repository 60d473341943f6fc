//! Task controllers: one tokio task per assigned task, driving its container through the
//! runtime — fetch the image, create, start, watch for the exit, stop when the desired state
//! says so, remove when the task goes — and reporting each observed state.
//!
//! Containers are found again by their task label, so a restarted agent adopts the
//! containers its previous run started (they outlive it by design).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use shoal_proto::cluster::v1::{Task, TaskState, TaskStatus, TaskStatusUpdate};
use shoal_runtime::{ContainerSpec, Runtime, Status};
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;

use crate::images::ImageFetcher;

/// Label carrying the task id on a task's container (Swarm's name).
pub const TASK_LABEL: &str = "com.docker.swarm.task.id";
/// Swarm's default stop grace period.
const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// Unix nanos now.
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// What controllers share.
#[derive(Clone)]
pub struct Shared {
    /// The node's runtime.
    pub runtime: Runtime,
    /// Observed states go here, to be batched to the dispatcher.
    pub reports: mpsc::UnboundedSender<TaskStatusUpdate>,
    /// Managers to fetch images from.
    pub managers: watch::Receiver<Vec<(String, Channel)>>,
    /// One fetch per image.
    pub images: Arc<ImageFetcher>,
    /// This node's id (for container names of global tasks).
    pub node_id: String,
    /// Sandboxes and the node's data path.
    pub network: Arc<crate::network::NodeNetwork>,
}

struct Handle {
    task: watch::Sender<Task>,
    join: tokio::task::JoinHandle<()>,
}

/// The node's controllers, by task id.
pub struct Controllers {
    shared: Shared,
    running: HashMap<String, Handle>,
    /// Containers found at start, by task id, for adoption.
    adopted: HashMap<String, String>,
}

impl Controllers {
    /// Controllers over `shared`; lists the runtime's containers once to adopt them.
    pub async fn new(shared: Shared) -> Controllers {
        let rt = shared.runtime.clone();
        let adopted = tokio::task::spawn_blocking(move || {
            rt.list(true)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|c| {
                    c.spec
                        .labels
                        .iter()
                        .find(|(k, _)| k == TASK_LABEL)
                        .map(|(_, v)| (v.clone(), c.id.clone()))
                })
                .collect()
        })
        .await
        .unwrap_or_default();
        Controllers {
            shared,
            running: HashMap::new(),
            adopted,
        }
    }

    /// Ids of the tasks under control.
    pub fn task_ids(&self) -> Vec<String> {
        self.running.keys().cloned().collect()
    }

    /// Starts or updates the controller of `task`.
    pub fn assign(&mut self, task: Task) {
        let id = task.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default();
        if id.is_empty() {
            return;
        }
        if let Some(handle) = self.running.get(&id) {
            if !handle.join.is_finished() {
                handle.task.send_replace(task);
                return;
            }
        }
        let (tx, rx) = watch::channel(task);
        let container = self.adopted.remove(&id);
        let join = tokio::spawn(control(self.shared.clone(), id.clone(), rx, container));
        self.running.insert(id, Handle { task: tx, join });
    }

    /// The task is no longer assigned here: its container goes.
    pub fn remove(&mut self, id: &str) {
        if let Some(handle) = self.running.remove(id) {
            handle.join.abort();
            let rt = self.shared.runtime.clone();
            let network = Arc::clone(&self.shared.network);
            let task = handle.task.borrow().clone();
            let id = id.to_string();
            tokio::spawn(async move {
                let _ = handle.join.await;
                remove_container(&rt, &task, None).await;
                network.release(&id).await;
            });
        }
    }

    /// Removes every container of a task that is neither assigned nor being controlled
    /// (called after a full assignment set arrives).
    pub fn sweep_orphans(&mut self) {
        let orphans: Vec<String> = self.adopted.drain().map(|(_, c)| c).collect();
        let rt = self.shared.runtime.clone();
        if orphans.is_empty() {
            return;
        }
        tokio::task::spawn_blocking(move || {
            for id in orphans {
                if let Err(err) = rt.remove(&id, true) {
                    tracing::warn!(container = %id, %err, "remove orphaned task container");
                }
            }
        });
    }
}

fn report(shared: &Shared, task_id: &str, status: TaskStatus) {
    let _ = shared.reports.send(TaskStatusUpdate {
        task_id: task_id.to_string(),
        status: Some(status),
    });
}

fn status(state: TaskState, message: &str) -> TaskStatus {
    TaskStatus {
        state: state as i32,
        timestamp: now(),
        message: message.to_string(),
        ..Default::default()
    }
}

/// The container name Swarm gives a task: `service.slot.taskid` (node id for global tasks).
fn container_name(task: &Task, node_id: &str, task_id: &str) -> String {
    let slot = if task.slot == 0 {
        node_id.to_string()
    } else {
        task.slot.to_string()
    };
    format!("{}.{}.{}", task.service_name, slot, task_id)
}

fn container_spec(task: &Task, name: String, task_id: &str, node_id: &str) -> ContainerSpec {
    let spec = task.spec.clone().unwrap_or_default();
    let c = spec.container.unwrap_or_default();
    let limits = spec.resources.and_then(|r| r.limits).unwrap_or_default();
    let mut labels: Vec<(String, String)> = c.labels.into_iter().collect();
    labels.extend([
        (TASK_LABEL.to_string(), task_id.to_string()),
        ("com.docker.swarm.task.name".into(), name.clone()),
        (
            "com.docker.swarm.service.id".into(),
            task.service_id.clone(),
        ),
        (
            "com.docker.swarm.service.name".into(),
            task.service_name.clone(),
        ),
        ("com.docker.swarm.node.id".into(), node_id.to_string()),
    ]);
    ContainerSpec {
        name: Some(name),
        image: c.image,
        cmd: c.args,
        entrypoint: (!c.command.is_empty()).then_some(c.command),
        env: c.env,
        workdir: (!c.dir.is_empty()).then_some(c.dir),
        user: (!c.user.is_empty()).then_some(c.user),
        hostname: (!c.hostname.is_empty()).then_some(c.hostname),
        memory: (limits.memory_bytes > 0).then_some(limits.memory_bytes),
        nano_cpus: (limits.nano_cpus > 0).then_some(limits.nano_cpus),
        read_only: c.read_only,
        labels,
        // Swarm never starts a task's container again after a crash: it makes a new task.
        disposable: true,
        ..Default::default()
    }
}

fn grace(task: &Task) -> Duration {
    let nanos = task
        .spec
        .as_ref()
        .and_then(|s| s.container.as_ref())
        .map_or(0, |c| c.stop_grace_period);
    if nanos > 0 {
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(0))
    } else {
        DEFAULT_GRACE
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

async fn stop_container(rt: &Runtime, id: &str, grace: Duration) {
    let (rt, id) = (rt.clone(), id.to_string());
    let _ = blocking(move || rt.stop(&id, grace)).await;
}

/// Stops and removes the task's container: `known` (or the id its status reported) when
/// there is one, else whichever container carries the task's label — listing every container
/// only in that last case, since a node with hundreds of tasks removes them all at once.
async fn remove_container(rt: &Runtime, task: &Task, known: Option<String>) {
    let task_id = task.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default();
    let reported = task
        .status
        .as_ref()
        .map(|s| s.container_id.clone())
        .filter(|id| !id.is_empty());
    let known = known.or(reported);
    let rt2 = rt.clone();
    let grace = grace(task);
    let _ = blocking(move || {
        let id = known.or_else(|| {
            rt2.list(true)
                .unwrap_or_default()
                .into_iter()
                .find(|c| {
                    c.spec
                        .labels
                        .iter()
                        .any(|(k, v)| k == TASK_LABEL && *v == task_id)
                })
                .map(|c| c.id)
        });
        if let Some(id) = id {
            let _ = rt2.stop(&id, grace);
            match rt2.remove(&id, true) {
                Ok(()) | Err(shoal_runtime::ContainerError::NotFound(_)) => {}
                Err(err) => tracing::warn!(container = %id, %err, "remove task container"),
            }
        }
    })
    .await;
}

fn exit_status(code: i32, error: &str) -> TaskStatus {
    if !error.is_empty() {
        let mut s = status(TaskState::Failed, "task: start failed");
        s.err = error.to_string();
        s.exit_code = code;
        return s;
    }
    if code == 0 {
        let mut s = status(TaskState::Complete, "finished");
        s.exit_code = 0;
        s
    } else {
        let mut s = status(TaskState::Failed, "task: non-zero exit");
        s.err = format!("task: non-zero exit ({code})");
        s.exit_code = code;
        s
    }
}

/// Waits until the task's desired state differs from `desired`. Status echoes of the agent's
/// own reports also change the task; they must not wake the controller, or every report would
/// cause another. `Err` when the task was dropped.
async fn desired_changed(rx: &mut watch::Receiver<Task>, desired: i32) -> Result<(), ()> {
    rx.wait_for(|t| t.desired_state != desired)
        .await
        .map(|_| ())
        .map_err(|_| ())
}

/// Waits for the container's exit without holding a thread (a node may run hundreds of
/// tasks; tokio's blocking pool has 512 threads): on the supervisor's pidfd, then reads the
/// recorded exit.
async fn wait_exit(
    rt: Runtime,
    id: String,
) -> shoal_runtime::container::Result<shoal_runtime::State> {
    let fd = {
        let (rt, id) = (rt.clone(), id.clone());
        tokio::task::spawn_blocking(move || rt.exit_fd(&id))
            .await
            .unwrap_or(Ok(None))?
    };
    if let Some(fd) = fd {
        // SAFETY: the `OwnedFd` is moved into the `AsyncFd`, so the descriptor stays open and
        // refers to the same pidfd until the `AsyncFd` is dropped.
        let registered = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        };
        match registered.map_err(|e| e.into_parts().1) {
            // A pidfd turns readable once the process is gone, and stays so.
            Ok(fd) => {
                let _ = fd.readable().await;
            }
            Err(err) => tracing::warn!(container = %id, %err, "watch the supervisor's pidfd"),
        }
    }
    let id2 = id.clone();
    tokio::task::spawn_blocking(move || rt.wait(&id2))
        .await
        .unwrap_or(Err(shoal_runtime::ContainerError::NotFound(id)))
}

/// Drives one task.
async fn control(
    shared: Shared,
    task_id: String,
    mut rx: watch::Receiver<Task>,
    mut container: Option<String>,
) {
    let rt = shared.runtime.clone();
    // Whether a final state was reported: never report backwards.
    let mut done = false;
    let mut reported_running = false;
    loop {
        let task = rx.borrow_and_update().clone();
        let desired = task.desired_state();
        let wait_change = |rx: &mut watch::Receiver<Task>| {
            let mut rx = rx.clone();
            async move { desired_changed(&mut rx, desired as i32).await }
        };
        if desired as i32 > TaskState::Running as i32 {
            if let Some(id) = container.as_ref() {
                let running = {
                    let (rt, id) = (rt.clone(), id.clone());
                    blocking(move || rt.lookup(&id).map(|c| c.state.status == Status::Running))
                        .await
                        .and_then(Result::ok)
                        .unwrap_or(false)
                };
                if running {
                    stop_container(&rt, id, grace(&task)).await;
                }
            }
            // The task will not run again: its addresses may go to another task, and a
            // stopped task must not be a backend anywhere.
            shared.network.release(&task_id).await;
            if !done {
                report(&shared, &task_id, status(TaskState::Shutdown, "shutdown"));
                done = true;
            }
            if desired == TaskState::Remove {
                remove_container(&rt, &task, container.take()).await;
                // The task stays assigned until the reaper deletes it: wait for removal.
            }
            if wait_change(&mut rx).await.is_err() {
                return;
            }
            continue;
        }
        if done {
            if wait_change(&mut rx).await.is_err() {
                return;
            }
            continue;
        }
        // Desired running.
        if task.spec.as_ref().is_some_and(|s| s.attachment.is_some()) {
            // A network attachment: the daemon runs the standalone container itself; the
            // task only holds its address, live from the moment it is assigned.
            if !reported_running {
                report(&shared, &task_id, status(TaskState::Running, "attached"));
                reported_running = true;
            }
            if wait_change(&mut rx).await.is_err() {
                return;
            }
            continue;
        }
        if container.is_none() {
            let wait = task.not_before.saturating_sub(now());
            if wait > 0 {
                let delay = Duration::from_nanos(u64::try_from(wait).unwrap_or(0));
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    changed = wait_change(&mut rx) => {
                        if changed.is_err() { return; }
                        continue;
                    }
                }
            }
            let image = task
                .spec
                .as_ref()
                .and_then(|s| s.container.as_ref())
                .map(|c| c.image.clone())
                .unwrap_or_default();
            report(&shared, &task_id, status(TaskState::Preparing, "preparing"));
            let managers = shared.managers.borrow().clone();
            if let Err(err) = shared.images.ensure(&rt, &image, &managers).await {
                let mut s = status(TaskState::Rejected, "preparing");
                s.err = err.to_string();
                report(&shared, &task_id, s);
                done = true;
                continue;
            }
            let name = container_name(&task, &shared.node_id, &task_id);
            let mut spec = container_spec(&task, name, &task_id, &shared.node_id);
            match shared.network.prepare(&task).await {
                Ok(Some(prepared)) => {
                    spec.network = shoal_runtime::spec::NetworkMode::Path(prepared.netns);
                    spec.names = Some(prepared.names);
                }
                Ok(None) => {}
                Err(err) => {
                    let mut s = status(TaskState::Rejected, "preparing");
                    s.err = format!("network: {err}");
                    report(&shared, &task_id, s);
                    shared.network.release(&task_id).await;
                    done = true;
                    continue;
                }
            }
            report(&shared, &task_id, status(TaskState::Starting, "starting"));
            let rt2 = rt.clone();
            let created = blocking(move || {
                let c = rt2.create(spec)?;
                rt2.start(&c.id)
            })
            .await;
            match created {
                Some(Ok(c)) => {
                    let mut s = status(TaskState::Running, "started");
                    s.container_id = c.id.clone();
                    s.pid = c.state.pid;
                    report(&shared, &task_id, s);
                    reported_running = true;
                    container = Some(c.id);
                }
                Some(Err(err)) => {
                    let mut s = status(TaskState::Rejected, "starting");
                    s.err = err.to_string();
                    report(&shared, &task_id, s);
                    shared.network.release(&task_id).await;
                    done = true;
                    continue;
                }
                None => return,
            }
        }
        // Running (or adopted): wait for the exit or a change of desired state.
        let Some(id) = container.clone() else {
            continue;
        };
        let mut waiter = tokio::spawn(wait_exit(rt.clone(), id.clone()));
        // An adopted container reports its current state first.
        if !reported_running {
            reported_running = true;
            let adopted = {
                let (rt, id) = (rt.clone(), id.clone());
                blocking(move || rt.lookup(&id)).await.and_then(Result::ok)
            };
            match adopted {
                Some(c) if c.state.status == Status::Running => {
                    let mut s = status(TaskState::Running, "started");
                    s.container_id = c.id.clone();
                    s.pid = c.state.pid;
                    report(&shared, &task_id, s);
                }
                Some(_) => {}
                None => {
                    // Adopted container vanished: start afresh.
                    container = None;
                    waiter.abort();
                    continue;
                }
            }
        }
        tokio::select! {
            exited = &mut waiter => {
                let s = match exited {
                    Ok(Ok(state)) => exit_status(state.exit_code, &state.error),
                    Ok(Err(err)) => {
                        let mut s = status(TaskState::Failed, "task: container gone");
                        s.err = err.to_string();
                        s
                    }
                    Err(_) => return,
                };
                let mut s = s;
                s.container_id = id.clone();
                report(&shared, &task_id, s);
                // The task is over: its addresses may go to another task.
                shared.network.release(&task_id).await;
                done = true;
            }
            changed = wait_change(&mut rx) => {
                waiter.abort();
                if changed.is_err() { return; }
            }
        }
    }
}
