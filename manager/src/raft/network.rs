//! Raft between managers over gRPC: openraft's outgoing AppendEntries, Vote and
//! InstallSnapshot requests, sent to a peer's `shoal.cluster.v1.Raft` service as JSON in a
//! `RaftMessage`. The answer carries openraft's whole `Result`, so a peer's Raft error comes
//! back as a [`RemoteError`], not as a transport failure. The receiving side is `server.rs`.
//!
//! Channels (and so TLS) come from the caller's [`ChannelFactory`]; this file keeps one
//! channel per peer address, since openraft asks for a new client on every election.

use std::collections::HashMap;
use std::sync::Arc;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use shoal_proto::cluster::v1::raft_client::RaftClient;
use shoal_proto::cluster::v1::RaftMessage;
use tonic::transport::Channel;

use super::types::{Member, TypeConfig};
use super::MAX_MESSAGE_BYTES;

/// Makes the channel to a peer's cluster address (`host:port`). The manager supplies
/// mutual-TLS channels; the channel is expected to connect lazily and to reconnect by itself.
pub type ChannelFactory = Arc<dyn Fn(&str) -> Channel + Send + Sync>;

/// Creates openraft's connections to peers.
pub struct Network {
    channels: ChannelFactory,
    /// Channels by peer address, reused across connections.
    cache: HashMap<String, Channel>,
}

impl Network {
    /// A network whose channels come from `channels`.
    pub fn new(channels: ChannelFactory) -> Network {
        Network {
            channels,
            cache: HashMap::new(),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: u64, node: &Member) -> Connection {
        let channel = self
            .cache
            .entry(node.addr.clone())
            .or_insert_with(|| (self.channels)(&node.addr))
            .clone();
        Connection {
            target,
            node: node.clone(),
            client: RaftClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        }
    }
}

/// openraft's connection to one peer.
pub struct Connection {
    target: u64,
    node: Member,
    client: RaftClient<Channel>,
}

/// The RPCs of the Raft service that carry openraft messages.
#[derive(Debug, Clone, Copy)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<u64, Member, RaftError<u64, E>>>;

impl Connection {
    async fn call<Req, Resp, E>(&mut self, rpc: Rpc, req: &Req) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let data = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let message = RaftMessage { data };
        let reply = match rpc {
            Rpc::AppendEntries => self.client.append_entries(message).await,
            Rpc::Vote => self.client.vote(message).await,
            Rpc::InstallSnapshot => self.client.install_snapshot(message).await,
        };
        // Every transport failure counts as unreachable, so that openraft backs off instead
        // of retrying at once: a refused connection, a TLS failure or a peer that rejects us
        // will not heal within milliseconds.
        let reply = reply.map_err(|status| {
            tracing::debug!(target = self.target, addr = %self.node.addr, ?rpc, %status, "raft rpc failed");
            RPCError::Unreachable(Unreachable::new(&status))
        })?;
        let result: Result<Resp, RaftError<u64, E>> =
            serde_json::from_slice(&reply.into_inner().data)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        self.call(Rpc::AppendEntries, &req).await
    }

    async fn install_snapshot(
        &mut self,
        req: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        self.call(Rpc::InstallSnapshot, &req).await
    }

    async fn vote(
        &mut self,
        req: VoteRequest<u64>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>> {
        self.call(Rpc::Vote, &req).await
    }
}
