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
