//! The orchestrator (leader only): turns services into tasks and keeps them true. Replicated
//! services get one live task per slot 1..=replicas; global services one per eligible node.
//! A task that stopped is replaced as its restart policy says; a task on a down, drained or
//! removed node is replaced at once; a task made from an older spec is replaced one slot at a
//! time. The task reaper deletes tasks marked for removal once they stopped, and keeps the
//! last few stopped tasks per slot as history.
//!
//! Network attachment tasks (standalone containers' addresses, [`crate::attachment`]) belong
//! to no service: only their removal is decided here (node removed, or stopped), and the
//! reaper deletes them like any task.
//!
//! Every pass reads the store, computes all changes and writes them as one Raft entry, so a
//! service of 500 replicas costs one entry, not 500.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use shoal_proto::cluster::v1::service_spec::Mode;
use shoal_proto::cluster::v1::{
    Node, RestartCondition, Service, StoreAction, Task, TaskState, TaskStatus,
};
use tokio::sync::watch;

use crate::attachment::is_attachment;
use crate::objects::{
    self, id_of, is_terminal, new_meta, node_keeps_tasks, node_schedulable, now_nanos, touch,
};
use crate::propose::Proposer;
use crate::store::{State, Store};

/// Swarm's default restart delay.
pub const DEFAULT_RESTART_DELAY: Duration = Duration::from_secs(5);
/// Swarm's default task history per slot.
pub const DEFAULT_HISTORY: usize = 5;

fn state_of(task: &Task) -> TaskState {
    task.status.as_ref().map_or(TaskState::New, |s| s.state())
}

/// Whether the task is meant to run (desired state running or before).
fn wanted(task: &Task) -> bool {
    task.desired_state() as i32 <= TaskState::Running as i32
}

/// A new task for `service` in `slot` (replicated) or on `node_id` (global).
fn new_task(service: &Service, slot: u64, node_id: &str, restarts: u64, not_before: i64) -> Task {
    let spec = service.spec.clone().unwrap_or_default();
    Task {
        meta: new_meta(shoal_proto::transport::random_id()),
        service_id: id_of(&service.meta).to_string(),
        slot,
        node_id: node_id.to_string(),
        spec: spec.task,
        spec_version: service.spec_version,
        // The allocator gives it its addresses and moves it on to PENDING.
        status: Some(TaskStatus {
            state: TaskState::New as i32,
            timestamp: now_nanos(),
            message: "created".into(),
            ..Default::default()
        }),
        desired_state: TaskState::Running as i32,
        service_name: spec.name,
        not_before,
        restarts,
        networks: Vec::new(),
    }
}

fn with_desired(task: &Task, desired: TaskState) -> Task {
    let mut task = task.clone();
    task.desired_state = desired as i32;
    touch(&mut task.meta);
    task
}

/// What to do with a task that is meant to run but has stopped.
fn restart_decision(service: &Service, task: &Task) -> Option<Duration> {
    let policy = service
        .spec
        .as_ref()
        .and_then(|s| s.task.as_ref())
        .and_then(|t| t.restart)
        .unwrap_or_default();
    let failed = matches!(state_of(task), TaskState::Failed | TaskState::Rejected);
    let restart = match policy.condition() {
        RestartCondition::Any => true,
        RestartCondition::OnFailure => failed || state_of(task) == TaskState::Shutdown,
        RestartCondition::None => false,
    };
    if !restart || (policy.max_attempts > 0 && task.restarts >= policy.max_attempts) {
        return None;
    }
    // Swarm's default when no delay is given.
    let delay = if policy.delay > 0 {
        Duration::from_nanos(u64::try_from(policy.delay).unwrap_or(0))
    } else if service
        .spec
        .as_ref()
        .and_then(|s| s.task.as_ref())
        .and_then(|t| t.restart.as_ref())
        .is_some()
    {
        Duration::ZERO
    } else {
        DEFAULT_RESTART_DELAY
    };
    Some(delay)
}

/// Computes one pass of changes over `state`.
pub fn reconcile(state: &State, history: usize) -> Vec<StoreAction> {
    let mut actions = Vec::new();
    let now = now_nanos();
    let nodes: &BTreeMap<String, Node> = &state.nodes;
    let node_ok = |id: &str| nodes.get(id).is_some_and(node_keeps_tasks);

    let mut by_service: HashMap<&str, Vec<&Task>> = HashMap::new();
    for task in state.tasks.values() {
        if is_attachment(task) {
            reconcile_attachment(state, task, &mut actions);
            continue;
        }
        by_service
            .entry(task.service_id.as_str())
            .or_default()
            .push(task);
    }

    for (service_id, service) in &state.services {
        let tasks = by_service.remove(service_id.as_str()).unwrap_or_default();
        match service.spec.as_ref().and_then(|s| s.mode.as_ref()) {
            Some(Mode::Global(_)) => reconcile_global(state, service, &tasks, now, &mut actions),
            Some(Mode::Replicated(r)) => {
                reconcile_replicated(service, r.replicas, &tasks, &node_ok, now, &mut actions)
            }
            None => {}
        }
    }
    // Tasks of services that are gone and were not marked yet (a removal raced a pass).
    for tasks in by_service.values() {
        for task in tasks {
            if task.desired_state() != TaskState::Remove {
                actions.push(objects::update(with_desired(task, TaskState::Remove)));
            }
        }
    }
    reap(state, history, &mut actions);
    dedupe(actions)
}

/// A network attachment task has no service to keep it true: it lives until its container
/// detaches, and also ends when its node is removed (nothing will ever detach it then) or when
/// its node reported it stopped (observed state never moves back, so it cannot run again).
/// A drained or down node keeps it: the container is not Swarm's to move.
fn reconcile_attachment(state: &State, task: &Task, actions: &mut Vec<StoreAction>) {
    if task.desired_state() != TaskState::Running {
        return;
    }
    let node_gone = !state.nodes.contains_key(&task.node_id);
    if node_gone || is_terminal(state_of(task)) {
        actions.push(objects::update(with_desired(task, TaskState::Remove)));
    }
}

/// Keeps the first action on each object: the store refuses a batch that touches one object
/// twice, and one refused pass would stall every service.
fn dedupe(actions: Vec<StoreAction>) -> Vec<StoreAction> {
    let mut seen = std::collections::HashSet::new();
    actions
        .into_iter()
        .filter(|a| {
            let key = match a.object.as_ref().and_then(|o| o.object.as_ref()) {
                Some(shoal_proto::cluster::v1::store_object::Object::Task(t)) => {
                    id_of(&t.meta).to_string()
                }
                _ => return true,
            };
            seen.insert(key)
        })
        .collect()
}

fn reconcile_replicated(
    service: &Service,
    replicas: u64,
    tasks: &[&Task],
    node_ok: &dyn Fn(&str) -> bool,
    now: i64,
    actions: &mut Vec<StoreAction>,
) {
    let mut slots: BTreeMap<u64, Vec<&Task>> = BTreeMap::new();
    for task in tasks.iter().filter(|t| wanted(t)) {
        slots.entry(task.slot).or_default().push(task);
    }
    // A rolling update replaces one slot at a time: wait while an updated task is not yet
    // running.
    let mut updating = tasks.iter().any(|t| {
        wanted(t)
            && t.spec_version == service.spec_version
            && state_of(t) < TaskState::Running
            && tasks
                .iter()
                .any(|o| o.slot == t.slot && o.spec_version != service.spec_version)
    });
    for slot in 1..=replicas {
        let live = slots.remove(&slot).unwrap_or_default();
        let Some(newest) = live
            .iter()
            .max_by_key(|t| t.meta.as_ref().map_or(0, |m| m.created_at))
        else {
            // Empty slot: a new task, counting the slot's earlier restarts.
            let restarts = tasks
                .iter()
                .filter(|t| t.slot == slot)
                .map(|t| t.restarts)
                .max()
                .unwrap_or(0);
            actions.push(objects::create(new_task(service, slot, "", restarts, 0)));
            continue;
        };
        // Duplicates in a slot (a leader change mid-pass): keep the newest.
        for extra in live.iter().filter(|t| t.meta != newest.meta) {
            actions.push(objects::update(with_desired(extra, TaskState::Shutdown)));
        }
        let assigned_away = !newest.node_id.is_empty() && !node_ok(&newest.node_id);
        if assigned_away {
            actions.push(objects::update(with_desired(newest, TaskState::Shutdown)));
            actions.push(objects::create(new_task(
                service,
                slot,
                "",
                newest.restarts,
                0,
            )));
        } else if is_terminal(state_of(newest)) {
            if let Some(delay) = restart_decision(service, newest) {
                actions.push(objects::update(with_desired(newest, TaskState::Shutdown)));
                let not_before =
                    now.saturating_add(i64::try_from(delay.as_nanos()).unwrap_or(i64::MAX));
                actions.push(objects::create(new_task(
                    service,
                    slot,
                    "",
                    newest.restarts + 1,
                    not_before,
                )));
            }
        } else if newest.spec_version != service.spec_version && !updating {
            updating = true;
            actions.push(objects::update(with_desired(newest, TaskState::Shutdown)));
            actions.push(objects::create(new_task(service, slot, "", 0, 0)));
        }
    }
    // Scaled down: the tasks of slots beyond `replicas` go away entirely.
    for task in slots.into_values().flatten() {
        actions.push(objects::update(with_desired(task, TaskState::Remove)));
    }
}

fn reconcile_global(
    state: &State,
    service: &Service,
    tasks: &[&Task],
    now: i64,
    actions: &mut Vec<StoreAction>,
) {
    let constraints = service
        .spec
        .as_ref()
        .and_then(|s| s.task.as_ref())
        .and_then(|t| t.placement.as_ref())
        .map(|p| objects::parse_constraints(&p.constraints).unwrap_or_default())
        .unwrap_or_default();
    let eligible =
        |node: &Node| node_schedulable(node) && constraints.iter().all(|c| c.matches(node));
    let mut by_node: HashMap<&str, Vec<&Task>> = HashMap::new();
    for task in tasks.iter().filter(|t| wanted(t)) {
        by_node.entry(task.node_id.as_str()).or_default().push(task);
    }
    for (node_id, node) in &state.nodes {
        let live = by_node.remove(node_id.as_str()).unwrap_or_default();
        let keep = node_keeps_tasks(node) && constraints.iter().all(|c| c.matches(node));
        if !keep {
            for task in live {
                actions.push(objects::update(with_desired(task, TaskState::Shutdown)));
            }
            continue;
        }
        let Some(newest) = live
            .iter()
            .max_by_key(|t| t.meta.as_ref().map_or(0, |m| m.created_at))
        else {
            if eligible(node) {
                let restarts = tasks
                    .iter()
                    .filter(|t| t.node_id == *node_id)
                    .map(|t| t.restarts)
                    .max()
                    .unwrap_or(0);
                actions.push(objects::create(new_task(service, 0, node_id, restarts, 0)));
            }
            continue;
        };
        for extra in live.iter().filter(|t| t.meta != newest.meta) {
            actions.push(objects::update(with_desired(extra, TaskState::Shutdown)));
        }
        if is_terminal(state_of(newest)) {
            if let Some(delay) = restart_decision(service, newest) {
                actions.push(objects::update(with_desired(newest, TaskState::Shutdown)));
                let not_before =
                    now.saturating_add(i64::try_from(delay.as_nanos()).unwrap_or(i64::MAX));
                actions.push(objects::create(new_task(
                    service,
                    0,
                    node_id,
                    newest.restarts + 1,
                    not_before,
                )));
            }
        } else if newest.spec_version != service.spec_version {
            actions.push(objects::update(with_desired(newest, TaskState::Shutdown)));
            actions.push(objects::create(new_task(service, 0, node_id, 0, 0)));
        }
    }
    // Tasks on nodes that no longer exist.
    for task in by_node.into_values().flatten() {
        actions.push(objects::update(with_desired(task, TaskState::Shutdown)));
    }
}

/// Deletes tasks that are done with: marked for removal and stopped (or on a node that can no
/// longer report), and stopped history beyond `history` per slot.
fn reap(state: &State, history: usize, out: &mut Vec<StoreAction>) {
    // A task that never reached ASSIGNED was never sent to a node: there is nothing to stop.
    let gone = |task: &Task| {
        task.node_id.is_empty()
            || state_of(task) < TaskState::Assigned
            || state.nodes.get(&task.node_id).is_none_or(is_down)
    };
    let mut slots: HashMap<(&str, u64, &str), Vec<&Task>> = HashMap::new();
    for task in state.tasks.values() {
        let stopped = is_terminal(state_of(task)) || gone(task);
        if task.desired_state() == TaskState::Remove {
            if stopped {
                out.push(objects::remove(task.clone()));
            }
            continue;
        }
        if !wanted(task) && stopped {
            let node = if task.slot == 0 {
                task.node_id.as_str()
            } else {
                ""
            };
            slots
                .entry((task.service_id.as_str(), task.slot, node))
                .or_default()
                .push(task);
        }
    }
    for mut old in slots.into_values() {
        if old.len() <= history {
            continue;
        }
        old.sort_by_key(|t| std::cmp::Reverse(t.meta.as_ref().map_or(0, |m| m.created_at)));
        for task in &old[history..] {
            out.push(objects::remove((*task).clone()));
        }
    }
}

fn is_down(node: &Node) -> bool {
    node.status.as_ref().map(|s| s.state()) == Some(shoal_proto::cluster::v1::NodeState::Down)
}

/// Runs passes while `leading` is true (see [`crate::propose::leader_loop`]).
pub async fn run(store: Arc<Store>, proposer: Arc<dyn Proposer>, leading: watch::Receiver<bool>) {
    crate::propose::leader_loop("orchestrator", store, proposer, leading, None, |state| {
        let history = state
            .cluster
            .as_ref()
            .and_then(|c| c.settings.as_ref())
            .map_or(DEFAULT_HISTORY, |s| s.task_history_limit as usize);
        reconcile(state, history.max(1))
    })
    .await
}
