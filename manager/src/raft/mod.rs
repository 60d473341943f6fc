//! Raft (openraft 0.9) for the cluster store: the managers replicate [`StoreBatch`]es through
//! it and each applies them, in log order, to its in-memory [`Store`].
//!
//! [`RaftNode`] is what the rest of the manager uses: open, initialize a one-manager cluster,
//! write on the leader, change the voters, and watch who leads. Underneath, `log_store.rs`
//! keeps the log in redb, `state_machine.rs` drives the store and its snapshots,
//! `network.rs` and `server.rs` carry Raft between managers over gRPC. Forwarding writes
//! from followers, authorization and TLS are the manager's, not this module's.

mod db;
mod log_store;
mod network;
mod server;
mod state_machine;
mod types;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, InitializeError};
use openraft::{ChangeMembers, Config, ServerState, SnapshotPolicy};
use shoal_proto::cluster::v1::raft_server::RaftServer;
use shoal_proto::cluster::v1::StoreBatch;
use tokio::sync::watch;

pub use self::network::ChannelFactory;
pub use self::server::{RaftRpc, RaftRpcHooks};
pub use self::types::{
    Member, Raft, RaftMetrics, RaftServerMetrics, Request, Response, TypeConfig,
};

use self::log_store::LogStore;
use self::network::Network;
use self::state_machine::StateMachine;
use crate::store::Store;

/// Heartbeat period: four of them fit in the shortest election timeout, so a heartbeat or
/// two delayed on a loaded machine does not start an election.
const HEARTBEAT_MS: u64 = 150;
/// Lower end of the election timeout: a dead leader is replaced within about a second
/// (timeout plus one vote round), well under Swarm's multi-second failover.
const ELECTION_TIMEOUT_MIN_MS: u64 = 600;
/// Upper end of the election timeout; the spread makes split votes rare.
const ELECTION_TIMEOUT_MAX_MS: u64 = 1000;
/// Entries between snapshots: the log a restarting manager replays stays short, and building
/// a snapshot (the whole store, encoded) stays rare next to the writes.
const SNAPSHOT_EVERY: u64 = 1000;
/// Entries kept behind a snapshot, so that a follower briefly behind catches up from the log
/// instead of receiving the whole store.
const LOGS_KEPT_AFTER_SNAPSHOT: u64 = 100;
/// Snapshot bytes per InstallSnapshot message. JSON inflates bytes about fourfold, so a chunk
/// stays far below [`MAX_MESSAGE_BYTES`].
const SNAPSHOT_CHUNK_BYTES: u64 = 512 * 1024;
/// Time to send and install the last snapshot chunk (restoring the store happens in it).
const INSTALL_SNAPSHOT_TIMEOUT_MS: u64 = 10_000;
/// Largest Raft gRPC message either side accepts: an AppendEntries of many large batches is
/// bigger than tonic's 4 MiB default.
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// How long [`RaftNode::add_voter`] waits for the new member's log to catch up before it
/// gives up (the member stays a learner; adding it again resumes).
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the Raft node could not start or stop.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    /// The Raft directory could not be created.
    #[error("create raft directory {dir}")]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The redb file could not be opened (or is open in another process).
    #[error("open raft database in {dir}")]
    OpenDatabase {
        /// The Raft directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: redb::Error,
    },
    /// The saved snapshot could not be loaded into the store.
    #[error("load the raft snapshot saved in {dir}")]
    LoadSnapshot {
        /// The Raft directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: openraft::StorageError<u64>,
    },
    /// The tuning constants do not make a valid openraft configuration.
    #[error("invalid raft configuration")]
    Config(#[source] openraft::ConfigError),
    /// openraft refused to start.
    #[error("start raft node {raft_id}")]
    Start {
        /// This node's Raft id.
        raft_id: u64,
        /// The cause.
        #[source]
        source: openraft::error::Fatal<u64>,
    },
    /// Initializing the cluster failed (other than by being initialized already).
    #[error("initialize the raft cluster with {member:?}")]
    Initialize {
        /// The would-be first member.
        member: Member,
        /// The cause.
        #[source]
        source: types::RaftApiError<InitializeError<u64, Member>>,
    },
    /// The Raft task did not stop cleanly.
    #[error("shut down raft node {raft_id}")]
    Shutdown {
        /// This node's Raft id.
        raft_id: u64,
        /// The cause.
        #[source]
        source: tokio::task::JoinError,
    },
}

/// Why a write (or a membership change, or a linearizable read check) did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// This node is not the leader; the leader, if known, is given so the caller can forward.
    #[error("not the raft leader (leader: {leader:?})")]
    NotLeader {
        /// The current leader, if this node knows one.
        leader: Option<Member>,
    },
    /// The entry was committed but the store refused the batch (the store's error text).
    #[error("batch refused: {0}")]
    Rejected(String),
    /// Any other Raft failure (shutting down, a membership change already in progress, …).
    #[error("raft: {0}")]
    Raft(String),
}

impl<E: std::error::Error> From<types::RaftApiError<E>> for WriteError {
    fn from(err: types::RaftApiError<E>) -> WriteError {
        WriteError::Raft(err.to_string())
    }
}

/// Turns openraft's client-write errors into [`WriteError`]s, keeping "not the leader" apart.
fn client_write_error(err: types::RaftApiError<ClientWriteError<u64, Member>>) -> WriteError {
    match err {
        openraft::error::RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            WriteError::NotLeader {
                leader: forward.leader_node,
            }
        }
        other => WriteError::from(other),
    }
}

/// One manager's Raft node. Clones share it.
#[derive(Clone)]
pub struct RaftNode {
    raft_id: u64,
    raft: Raft,
}

impl RaftNode {
    /// Opens the node's state in `dir` (`raft.redb`, created if absent), restores `store`
    /// from the saved snapshot, and starts Raft; openraft then re-applies the committed log
    /// after the snapshot. Peers are reached through channels from `channels`.
    pub async fn open(
        dir: &Path,
        raft_id: u64,
        store: Arc<Store>,
        channels: ChannelFactory,
    ) -> Result<RaftNode, RaftError> {
        let (log_store, state_machine) = open_storage(dir, store).await?;
        let config = Config {
            cluster_name: "shoal".to_string(),
            heartbeat_interval: HEARTBEAT_MS,
            election_timeout_min: ELECTION_TIMEOUT_MIN_MS,
            election_timeout_max: ELECTION_TIMEOUT_MAX_MS,
            install_snapshot_timeout: INSTALL_SNAPSHOT_TIMEOUT_MS,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY),
            max_in_snapshot_log_to_keep: LOGS_KEPT_AFTER_SNAPSHOT,
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
            ..Config::default()
        }
        .validate()
        .map_err(RaftError::Config)?;
        let raft = Raft::new(
            raft_id,
            Arc::new(config),
            Network::new(channels),
            log_store,
            state_machine,
        )
        .await
        .map_err(|source| RaftError::Start { raft_id, source })?;
        tracing::info!(raft_id, dir = %dir.display(), "raft node started");
        Ok(RaftNode { raft_id, raft })
    }

    /// This node's Raft id.
    pub fn id(&self) -> u64 {
        self.raft_id
    }

    /// openraft's handle, for what this wrapper does not cover.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Makes this node the only member of a new cluster. Does nothing when the node is
    /// already part of one (initialized before, or added by a leader).
    pub async fn initialize(&self, self_member: Member) -> Result<(), RaftError> {
        let members = BTreeMap::from([(self.raft_id, self_member.clone())]);
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(openraft::error::RaftError::APIError(InitializeError::NotAllowed(_))) => {
                tracing::debug!(raft_id = self.raft_id, "raft cluster already initialized");
                Ok(())
            }
            Err(source) => Err(RaftError::Initialize {
                member: self_member,
                source,
            }),
        }
    }

    /// Proposes `batch` and waits until it is applied here; returns its log index. Only the
    /// leader accepts writes. A batch the store refuses (a stale version, …) is committed all
    /// the same and comes back as [`WriteError::Rejected`].
    pub async fn write(&self, batch: StoreBatch) -> Result<u64, WriteError> {
        let response = self
            .raft
            .client_write(Request { batch })
            .await
            .map_err(client_write_error)?;
        match response.data.error {
            Some(error) => Err(WriteError::Rejected(error)),
            None => Ok(response.log_id.index),
        }
    }

    /// Adds a manager as a voter: first as a learner, waiting until its log has caught up,
    /// then to the voters. Leader only. Adding a current member again changes nothing; its
    /// address is not updated.
    pub async fn add_voter(&self, raft_id: u64, member: Member) -> Result<(), WriteError> {
        let added = tokio::time::timeout(
            CATCH_UP_TIMEOUT,
            self.raft.add_learner(raft_id, member, true),
        )
        .await
        .map_err(|_| {
            WriteError::Raft(format!(
                "raft node {raft_id} did not catch up within {CATCH_UP_TIMEOUT:?}"
            ))
        })?;
        added.map_err(client_write_error)?;
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([raft_id])), false)
            .await
            .map_err(client_write_error)?;
        tracing::info!(raft_id, "raft voter added");
        Ok(())
    }

    /// Removes a manager from the voters and from the membership. Leader only.
    pub async fn remove_voter(&self, raft_id: u64) -> Result<(), WriteError> {
        self.raft
            .change_membership(
                ChangeMembers::RemoveVoters(BTreeSet::from([raft_id])),
                false,
            )
            .await
            .map_err(client_write_error)?;
        tracing::info!(raft_id, "raft voter removed");
        Ok(())
    }

    /// The leader as this node last heard of it.
    pub fn leader(&self) -> Option<(u64, Member)> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let id = metrics.current_leader?;
        let member = metrics
            .membership_config
            .membership()
            .get_node(&id)?
            .clone();
        Some((id, member))
    }

    /// Whether this node believes it leads. Not linearizable: a deposed leader believes it
    /// until it hears otherwise; use [`RaftNode::ensure_linearizable`] before reads that must
    /// not be stale.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Every member of the current membership (voters and learners), by Raft id.
    pub fn members(&self) -> Vec<(u64, Member)> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        metrics
            .membership_config
            .membership()
            .nodes()
            .map(|(id, member)| (*id, member.clone()))
            .collect()
    }

    /// openraft's metrics of this node, as they change.
    pub fn metrics(&self) -> watch::Receiver<RaftMetrics> {
        self.raft.metrics()
    }

    /// The vote, role, leader and membership of this node, notified only when one of them
    /// changes. Watch this rather than [`RaftNode::metrics`] to react to leadership: the full
    /// metrics change on every heartbeat and every leadership confirmation, so a loop that
    /// confirms on each change of them never sleeps.
    pub fn server_metrics(&self) -> watch::Receiver<RaftServerMetrics> {
        self.raft.server_metrics()
    }

    /// Confirms leadership with a quorum and waits until the store has applied everything
    /// committed before: a read of the store afterwards is linearizable. Leader only.
    pub async fn ensure_linearizable(&self) -> Result<(), WriteError> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(openraft::error::RaftError::APIError(
                openraft::error::CheckIsLeaderError::ForwardToLeader(forward),
            )) => Err(WriteError::NotLeader {
                leader: forward.leader_node,
            }),
            Err(other) => Err(WriteError::from(other)),
        }
    }

    /// The gRPC service that lets peers reach this node, with `hooks` for Write and
    /// AddMember.
    pub fn server(&self, hooks: Arc<dyn RaftRpcHooks>) -> RaftServer<RaftRpc> {
        RaftServer::new(RaftRpc::new(self.raft.clone(), hooks))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Stops Raft. Calls on any clone fail afterwards.
    pub async fn shutdown(&self) -> Result<(), RaftError> {
        self.raft
            .shutdown()
            .await
            .map_err(|source| RaftError::Shutdown {
                raft_id: self.raft_id,
                source,
            })
    }
}

/// Opens the log store and the state machine of the Raft directory `dir`.
pub(crate) async fn open_storage(
    dir: &Path,
    store: Arc<Store>,
) -> Result<(LogStore, StateMachine), RaftError> {
    std::fs::create_dir_all(dir).map_err(|source| RaftError::CreateDir {
        dir: dir.to_path_buf(),
        source,
    })?;
    let db = db::open(dir).map_err(|source| RaftError::OpenDatabase {
        dir: dir.to_path_buf(),
        source,
    })?;
    let state_machine = StateMachine::open(Arc::clone(&db), store)
        .await
        .map_err(|source| RaftError::LoadSnapshot {
            dir: dir.to_path_buf(),
            source,
        })?;
    Ok((LogStore::new(db), state_machine))
}
