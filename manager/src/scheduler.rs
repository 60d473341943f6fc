//! The scheduler (leader only): places pending tasks on nodes. A node is eligible when it is
//! ready and active, satisfies the task's constraints and has the reserved CPU and memory
//! free and none of the task's host-mode ports taken; among eligible nodes the one running the fewest tasks of the service wins, then the
//! one running the fewest tasks overall (Swarm's spread). A task no node can take stays
//! pending with the reason on the task, and is placed by a later pass when nodes or
//! resources change. All placements of a pass go in one Raft entry.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use shoal_proto::cluster::v1::{Node, PublishMode, StoreAction, Task, TaskState};
use tokio::sync::watch;

use crate::objects::{self, id_of, is_terminal, node_schedulable, now_nanos, touch};
use crate::propose::Proposer;
use crate::store::{State, Store};

#[derive(Debug, Default, Clone)]
struct NodeLoad {
    tasks: usize,
    per_service: HashMap<String, usize>,
    cpu: i64,
    memory: i64,
    /// Host-mode ports the node's tasks publish: (port, protocol).
    host_ports: HashSet<(u32, i32)>,
}

/// The host-mode ports `task`'s service publishes (each binds on the task's node).
fn host_ports(state: &State, task: &Task) -> Vec<(u32, i32)> {
    state
        .services
        .get(&task.service_id)
        .and_then(|s| s.endpoint.as_ref())
        .map(|e| {
            e.ports
                .iter()
                .filter(|p| p.publish_mode() == PublishMode::Host)
                .map(|p| (p.published_port, p.protocol))
                .collect()
        })
        .unwrap_or_default()
}

fn reservations(task: &Task) -> (i64, i64) {
    task.spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.reservations.as_ref())
        .map_or((0, 0), |r| (r.nano_cpus, r.memory_bytes))
}

fn counts_on_node(task: &Task) -> bool {
    !task.node_id.is_empty()
        && task.desired_state() as i32 <= TaskState::Running as i32
        && !is_terminal(task.status.as_ref().map_or(TaskState::New, |s| s.state()))
}

/// Ready for a node: the allocator has moved it from NEW (addresses given) to PENDING.
fn pending(task: &Task) -> bool {
    let state = task.status.as_ref().map_or(TaskState::New, |s| s.state());
    task.desired_state() == TaskState::Running && state == TaskState::Pending
}

/// Why no node took a task, in Swarm's words.
fn reason(constraints: usize, resources: usize, ports: usize, unavailable: usize) -> String {
    let mut parts = Vec::new();
    if constraints > 0 {
        parts.push(format!(
            "scheduling constraints not satisfied on {constraints} node{}",
            if constraints == 1 { "" } else { "s" }
        ));
    }
    if resources > 0 {
        parts.push(format!(
            "insufficient resources on {resources} node{}",
            if resources == 1 { "" } else { "s" }
        ));
    }
    if ports > 0 {
        parts.push(format!(
            "host-mode port already in use on {ports} node{}",
            if ports == 1 { "" } else { "s" }
        ));
    }
    if unavailable > 0 {
        parts.push(format!(
            "{unavailable} node{} not available for new tasks",
            if unavailable == 1 { "" } else { "s" }
        ));
    }
    if parts.is_empty() {
        "no suitable node (no nodes in the swarm)".to_string()
    } else {
        format!("no suitable node ({})", parts.join("; "))
    }
}

/// Computes one pass of placements over `state`.
pub fn schedule(state: &State) -> Vec<StoreAction> {
    let mut load: HashMap<&str, NodeLoad> = state
        .nodes
        .keys()
        .map(|id| (id.as_str(), NodeLoad::default()))
        .collect();
    for task in state.tasks.values().filter(|t| counts_on_node(t)) {
        if let Some(l) = load.get_mut(task.node_id.as_str()) {
            l.tasks += 1;
            *l.per_service.entry(task.service_id.clone()).or_default() += 1;
            let (cpu, memory) = reservations(task);
            l.cpu = l.cpu.saturating_add(cpu);
            l.memory = l.memory.saturating_add(memory);
            l.host_ports.extend(host_ports(state, task));
        }
    }
    let mut todo: Vec<&Task> = state.tasks.values().filter(|t| pending(t)).collect();
    todo.sort_by_key(|t| (t.service_id.as_str(), t.slot));
    let mut actions = Vec::new();
    let now = now_nanos();
    for task in todo {
        let constraints = task
            .spec
            .as_ref()
            .and_then(|s| s.placement.as_ref())
            .map(|p| objects::parse_constraints(&p.constraints).unwrap_or_default())
            .unwrap_or_default();
        let (cpu, memory) = reservations(task);
        let ports = host_ports(state, task);
        let (mut no_constraint, mut no_resources, mut no_port, mut unavailable) = (0, 0, 0, 0);
        let mut best: Option<(&Node, (usize, usize, &str))> = None;
        for (id, node) in &state.nodes {
            // Global tasks come with their node.
            if !task.node_id.is_empty() && task.node_id != *id {
                continue;
            }
            if !node_schedulable(node) {
                unavailable += 1;
                continue;
            }
            if !constraints.iter().all(|c| c.matches(node)) {
                no_constraint += 1;
                continue;
            }
            let l = &load[id.as_str()];
            let desc = node.description.clone().unwrap_or_default();
            let cpu_ok = cpu == 0 || l.cpu.saturating_add(cpu) <= desc.nano_cpus;
            let mem_ok = memory == 0 || l.memory.saturating_add(memory) <= desc.memory_bytes;
            if !cpu_ok || !mem_ok {
                no_resources += 1;
                continue;
            }
            if ports.iter().any(|p| l.host_ports.contains(p)) {
                no_port += 1;
                continue;
            }
            let key = (
                l.per_service.get(&task.service_id).copied().unwrap_or(0),
                l.tasks,
                id.as_str(),
            );
            if best.as_ref().is_none_or(|(_, k)| key < *k) {
                best = Some((node, key));
            }
        }
        let mut task = task.clone();
        let status = task.status.get_or_insert_with(Default::default);
        match best {
            Some((node, _)) => {
                let node_id = id_of(&node.meta).to_string();
                let l = load.get_mut(node_id.as_str()).expect("load has every node");
                l.tasks += 1;
                *l.per_service.entry(task.service_id.clone()).or_default() += 1;
                l.cpu = l.cpu.saturating_add(cpu);
                l.memory = l.memory.saturating_add(memory);
                l.host_ports.extend(ports.iter().copied());
                status.state = TaskState::Assigned as i32;
                status.timestamp = now;
                status.message = "scheduler assigned task to node".into();
                status.err.clear();
                task.node_id = node_id;
            }
            None => {
                let why = reason(no_constraint, no_resources, no_port, unavailable);
                if status.err == why && status.state == TaskState::Pending as i32 {
                    continue;
                }
                status.state = TaskState::Pending as i32;
                status.timestamp = now;
                status.message = "pending task scheduling".into();
                status.err = why;
            }
        }
        touch(&mut task.meta);
        actions.push(objects::update(task));
    }
    actions
}

/// Runs passes while `leading` is true (see [`crate::propose::leader_loop`]).
pub async fn run(store: Arc<Store>, proposer: Arc<dyn Proposer>, leading: watch::Receiver<bool>) {
    crate::propose::leader_loop("scheduler", store, proposer, leading, None, schedule).await
}
