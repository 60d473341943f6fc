//! The agent's session with the leader: open the dispatcher's session stream on a manager
//! (following "not the leader" answers to the leader), heartbeat on it, hand assignments to
//! the task controllers, and batch the controllers' status reports back. When the session
//! breaks — a manager died, leadership moved — it tries the other managers it knows.

use std::sync::Arc;
use std::time::Duration;

use shoal_proto::cluster::v1::dispatcher_client::DispatcherClient;
use shoal_proto::cluster::v1::{
    HeartbeatRequest, Node, NodeDescription, SessionRequest, TaskStatusUpdate,
    UpdateTaskStatusRequest,
};
use shoal_proto::transport;
use shoal_runtime::Runtime;
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;

use crate::controller::{Controllers, Shared};
use crate::images::ImageFetcher;

/// Metadata key a follower names the leader under (set by the managers).
const LEADER_METADATA: &str = "shoal-leader";
/// Longest time status reports wait to share an RPC.
const REPORT_WINDOW: Duration = Duration::from_millis(20);

/// How an agent is set up.
#[derive(Clone)]
pub struct AgentConfig {
    /// This node's id.
    pub node_id: String,
    /// Managers' cluster addresses to start from.
    pub managers: Vec<String>,
    /// Mutual-TLS client configuration with the node's certificate.
    pub tls: Arc<rustls::ClientConfig>,
    /// The node's runtime.
    pub runtime: Runtime,
    /// What the node tells the cluster about itself.
    pub description: NodeDescription,
    /// The node's networking for tasks.
    pub network: Arc<crate::network::NodeNetwork>,
}

/// What the agent tells the daemon around it.
#[derive(Debug, Clone, Default)]
pub struct AgentState {
    /// The node object as the cluster last sent it.
    pub node: Option<Node>,
    /// Managers' addresses, leader first.
    pub managers: Vec<String>,
    /// Whether a session is up.
    pub connected: bool,
}

fn channel(tls: &Arc<rustls::ClientConfig>, addr: &str) -> Option<Channel> {
    match transport::channel(addr, Arc::clone(tls)) {
        Ok(c) => Some(c),
        Err(err) => {
            tracing::warn!(%addr, %err, "invalid manager address");
            None
        }
    }
}

/// Runs the agent until `stop` turns true. `state` is kept current for the daemon.
pub async fn run(
    cfg: AgentConfig,
    state: watch::Sender<AgentState>,
    mut stop: watch::Receiver<bool>,
) {
    let (reports_tx, reports_rx) = mpsc::unbounded_channel();
    let managers_tx = watch::channel(Vec::<(String, Channel)>::new()).0;
    let set_managers = |addrs: &[String]| {
        let channels = addrs
            .iter()
            .filter_map(|a| channel(&cfg.tls, a).map(|c| (a.clone(), c)))
            .collect();
        managers_tx.send_replace(channels);
    };
    set_managers(&cfg.managers);
    let shared = Shared {
        runtime: cfg.runtime.clone(),
        reports: reports_tx,
        managers: managers_tx.subscribe(),
        images: Arc::new(ImageFetcher::default()),
        node_id: cfg.node_id.clone(),
        network: Arc::clone(&cfg.network),
    };
    let mut controllers = Controllers::new(shared).await;
    // The reporter sends through whichever dispatcher the session is on.
    let (client_tx, client_rx) = watch::channel(None::<DispatcherClient<Channel>>);
    let reporter = tokio::spawn(report_loop(reports_rx, client_rx));

    let mut known: Vec<String> = cfg.managers.clone();
    let mut next = 0usize;
    let mut backoff = Duration::from_millis(100);
    loop {
        if *stop.borrow() {
            break;
        }
        if known.is_empty() {
            tracing::warn!("no manager address known");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let addr = known[next % known.len()].clone();
        next += 1;
        let Some(ch) = channel(&cfg.tls, &addr) else {
            continue;
        };
        let mut client = DispatcherClient::new(ch).max_decoding_message_size(64 * 1024 * 1024);
        let opened = client
            .session(SessionRequest {
                description: Some(cfg.description.clone()),
            })
            .await;
        let mut stream = match opened {
            Ok(s) => s.into_inner(),
            Err(status) => {
                let hint = status
                    .metadata()
                    .get(LEADER_METADATA)
                    .and_then(|v| v.to_str().ok())
                    // A manager that names itself has not had its leadership confirmed yet:
                    // back off as for any refusal rather than ask it again at once.
                    .filter(|leader| *leader != addr);
                if let Some(leader) = hint {
                    known.retain(|a| a != leader);
                    known.insert(0, leader.to_string());
                    next = 0;
                    continue;
                }
                tracing::debug!(manager = %addr, error = %status.message(), "session refused");
                if next.is_multiple_of(known.len()) {
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                continue;
            }
        };
        tracing::info!(manager = %addr, "session open");
        backoff = Duration::from_millis(100);
        client_tx.send_replace(Some(client.clone()));
        state.send_modify(|s| s.connected = true);
        let mut heartbeat = tokio::spawn(heartbeat_loop(client.clone()));
        loop {
            let message = tokio::select! {
                m = stream.message() => m,
                _ = stop.changed() => break,
                _ = &mut heartbeat => {
                    tracing::info!(manager = %addr, "heartbeats fail: looking for the leader");
                    break;
                }
            };
            let mut message = match message {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(status) => {
                    tracing::info!(manager = %addr, error = %status.message(), "session ended");
                    if status.code() == tonic::Code::PermissionDenied {
                        state.send_modify(|s| {
                            s.connected = false;
                            s.node = None;
                        });
                    }
                    break;
                }
            };
            if !message.managers.is_empty() {
                known = message.managers.clone();
                next = 0;
                set_managers(&message.managers);
            }
            // Before the tasks: their sandboxes are built from this map.
            if let Some(map) = message.network_map.take() {
                cfg.network.set_map(map).await;
            }
            if message.full {
                let assigned: std::collections::HashSet<String> = message
                    .tasks
                    .iter()
                    .filter_map(|t| t.meta.as_ref().map(|m| m.id.clone()))
                    .collect();
                for id in controllers.task_ids() {
                    if !assigned.contains(&id) {
                        controllers.remove(&id);
                    }
                }
                cfg.network.retain(&assigned).await;
            }
            for task in message.tasks {
                controllers.assign(task);
            }
            if message.full {
                controllers.sweep_orphans();
            }
            for id in &message.removed {
                controllers.remove(id);
            }
            state.send_modify(|s| {
                if message.node.is_some() {
                    s.node = message.node.clone();
                }
                if !message.managers.is_empty() {
                    s.managers = message.managers.clone();
                }
            });
        }
        heartbeat.abort();
        client_tx.send_replace(None);
        state.send_modify(|s| s.connected = false);
    }
    reporter.abort();
}

/// Beats until three in a row fail (the manager is gone or no longer leads): the session is
/// then over.
async fn heartbeat_loop(mut client: DispatcherClient<Channel>) {
    let mut period = Duration::from_secs(1);
    let mut failed = 0;
    loop {
        let beat = tokio::time::timeout(period, client.heartbeat(HeartbeatRequest {})).await;
        match beat {
            Ok(Ok(r)) => {
                failed = 0;
                let ms = r.into_inner().period_ms;
                if ms > 0 {
                    period = Duration::from_millis(u64::from(ms));
                }
            }
            Ok(Err(status)) => {
                failed += 1;
                tracing::debug!(error = %status.message(), "heartbeat failed");
            }
            Err(_) => failed += 1,
        }
        if failed >= 3 {
            return;
        }
        // Beat at half the period, so one lost beat is not yet a missed one.
        tokio::time::sleep(period / 2).await;
    }
}

async fn report_loop(
    mut rx: mpsc::UnboundedReceiver<TaskStatusUpdate>,
    mut client: watch::Receiver<Option<DispatcherClient<Channel>>>,
) {
    let mut pending: Vec<TaskStatusUpdate> = Vec::new();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(u) => pending.push(u),
                None => return,
            }
            tokio::time::sleep(REPORT_WINDOW).await;
        }
        while let Ok(u) = rx.try_recv() {
            pending.push(u);
        }
        // Only the newest report per task matters.
        let mut latest: Vec<TaskStatusUpdate> = Vec::new();
        for u in pending.drain(..) {
            latest.retain(|l| l.task_id != u.task_id);
            latest.push(u);
        }
        let current = client.borrow_and_update().clone();
        let Some(mut c) = current else {
            pending = latest;
            let _ = client.changed().await;
            continue;
        };
        let sent = c
            .update_task_status(UpdateTaskStatusRequest {
                updates: latest.clone(),
            })
            .await;
        if let Err(status) = sent {
            tracing::debug!(error = %status.message(), "status report failed; retrying");
            pending = latest;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
