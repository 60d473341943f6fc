//! The openraft type configuration of the cluster store, and the aliases the rest of the
//! Raft layer uses. What an entry carries (a [`StoreBatch`]) and how it is serialized is
//! decided here; what applying it means is the store's business (`crate::store`).

use std::io::Cursor;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use prost::Message;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use shoal_proto::cluster::v1::StoreBatch;

openraft::declare_raft_types!(
    /// The cluster store's Raft: entries are store batches, nodes are managers.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The payload of a normal Raft entry: one store batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// The batch, kept as its protobuf encoding (base64) inside the entry's JSON, so that the
    /// log and the wire carry exactly the bytes the writer proposed.
    #[serde(serialize_with = "encode_batch", deserialize_with = "decode_batch")]
    pub batch: StoreBatch,
}

/// The outcome of applying a normal entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// Why the store refused the batch (the `StoreError` text), when it did. A refusal is
    /// deterministic, so every manager refuses the entry alike; it is not a Raft failure.
    pub error: Option<String>,
}

/// A manager as a Raft member.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The shoal node id of the manager.
    pub node_id: String,
    /// Where its cluster gRPC server listens (`host:port`).
    pub addr: String,
}

/// openraft's handle on the local Raft node.
pub type Raft = openraft::Raft<TypeConfig>;
/// A position in the log.
pub type LogId = openraft::LogId<u64>;
/// A Raft log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A storage failure as openraft reports it.
pub type StorageError = openraft::StorageError<u64>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<u64, Member>;
/// Membership as of a log id.
pub type StoredMembership = openraft::StoredMembership<u64, Member>;
/// Metrics of the local Raft node.
pub type RaftMetrics = openraft::RaftMetrics<u64, Member>;
/// The part of [`RaftMetrics`] that changes only with the vote, role, leader or membership.
pub type RaftServerMetrics = openraft::metrics::RaftServerMetrics<u64, Member>;
/// An error of a Raft API call, with the call's own error `E`.
pub type RaftApiError<E = openraft::error::Infallible> = openraft::error::RaftError<u64, E>;

fn encode_batch<S: Serializer>(batch: &StoreBatch, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&STANDARD.encode(batch.encode_to_vec()))
}

fn decode_batch<'de, D: Deserializer<'de>>(deserializer: D) -> Result<StoreBatch, D::Error> {
    use serde::de::Error;
    let text = String::deserialize(deserializer)?;
    let bytes = STANDARD.decode(text).map_err(D::Error::custom)?;
    StoreBatch::decode(bytes.as_slice()).map_err(D::Error::custom)
}
