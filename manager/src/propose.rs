//! How the leader's components write: a [`Proposer`] turns a batch of store actions into one
//! Raft entry and returns its log index once the entry is applied locally. Raft is one
//! proposer; [`LocalProposer`] applies straight to a [`Store`] so that a module's tests can run
//! without a cluster.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;
use shoal_proto::cluster::v1::{StoreAction, StoreBatch};

use crate::store::Store;

/// Why a proposal did not commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This manager is not the leader.
    #[error("this manager is not the leader{}", .leader_addr.as_ref().map(|a| format!(" (leader: {a})")).unwrap_or_default())]
    NotLeader {
        /// Cluster address of the leader, when known.
        leader_addr: Option<String>,
    },
    /// The entry committed and every manager refused it alike (a stale version, a duplicate
    /// id): the store's own error text.
    #[error("{0}")]
    Rejected(String),
    /// Raft failed (no quorum, shutting down).
    #[error("replicate the change: {0}")]
    Failed(String),
}

impl ProposeError {
    /// Whether the refusal was a version conflict: the caller should re-read and retry.
    pub fn is_conflict(&self) -> bool {
        matches!(self, ProposeError::Rejected(m) if m.starts_with("update out of sequence"))
    }
}

impl From<ProposeError> for tonic::Status {
    fn from(err: ProposeError) -> tonic::Status {
        match &err {
            ProposeError::NotLeader { .. } => tonic::Status::unavailable(err.to_string()),
            ProposeError::Rejected(m) if err.is_conflict() => {
                tonic::Status::failed_precondition(m.clone())
            }
            ProposeError::Rejected(m) => tonic::Status::invalid_argument(m.clone()),
            ProposeError::Failed(_) => tonic::Status::unavailable(err.to_string()),
        }
    }
}

/// Commits batches of store actions.
pub trait Proposer: Send + Sync + 'static {
    /// Proposes `actions` as one entry; resolves with its log index once applied here.
    fn propose(&self, actions: Vec<StoreAction>) -> BoxFuture<'static, Result<u64, ProposeError>>;
}

/// Changes the node `node_id` with `change` (which returns whether it changed anything) and
/// writes it, reading again when another writer got there first. A node that does not exist
/// is `NotFound`.
pub async fn update_node(
    store: &Store,
    proposer: &dyn Proposer,
    node_id: &str,
    change: impl Fn(&mut shoal_proto::cluster::v1::Node) -> bool,
) -> Result<(), tonic::Status> {
    for _ in 0..10 {
        let Some(mut node) = store.read().nodes.get(node_id).cloned() else {
            return Err(tonic::Status::not_found(format!(
                "node {node_id} not found"
            )));
        };
        if !change(&mut node) {
            return Ok(());
        }
        crate::objects::touch(&mut node.meta);
        match proposer.propose(vec![crate::objects::update(node)]).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(tonic::Status::aborted(format!(
        "node {node_id} keeps changing"
    )))
}

/// Runs `pass` over the store while `leading` is true: after every store change (debounced,
/// so a burst of status reports makes one pass) and every second, so that delays come due
/// and refused writes are retried. Each pass's actions are one Raft entry.
///
/// With `lock`, a pass and its write happen under it, so a writer that holds the same lock
/// (the control API handing out VIPs and ports) never works from a state this pass is about
/// to change.
pub async fn leader_loop(
    name: &'static str,
    store: Arc<Store>,
    proposer: Arc<dyn Proposer>,
    mut leading: tokio::sync::watch::Receiver<bool>,
    lock: Option<Arc<tokio::sync::Mutex<()>>>,
    pass: impl Fn(&crate::store::State) -> Vec<StoreAction>,
) {
    use std::time::Duration;
    let mut changes = store.subscribe();
    loop {
        if !*leading.borrow() {
            return;
        }
        let guard = match &lock {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        let actions = pass(&store.read());
        let written = if actions.is_empty() {
            Ok(0)
        } else {
            proposer.propose(actions).await
        };
        drop(guard);
        if let Err(err) = written {
            if !err.is_conflict() {
                tracing::warn!(error = %err, "{name} write failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            continue;
        }
        tokio::select! {
            _ = changes.recv() => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                while changes.try_recv().is_ok() {}
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = leading.changed() => {}
        }
    }
}

/// Applies batches directly to a store, numbering them itself: one process, no replication.
/// For tests of the modules above the store.
#[derive(Debug)]
pub struct LocalProposer {
    store: Arc<Store>,
    index: AtomicU64,
}

impl LocalProposer {
    /// A proposer over `store`.
    pub fn new(store: Arc<Store>) -> Arc<LocalProposer> {
        Arc::new(LocalProposer {
            store,
            index: AtomicU64::new(0),
        })
    }
}

impl Proposer for LocalProposer {
    fn propose(&self, actions: Vec<StoreAction>) -> BoxFuture<'static, Result<u64, ProposeError>> {
        let index = self.index.fetch_add(1, Ordering::SeqCst) + 1;
        let result = self
            .store
            .apply(index, &StoreBatch { actions })
            .map(|()| index)
            .map_err(|e| ProposeError::Rejected(e.to_string()));
        Box::pin(async move { result })
    }
}
