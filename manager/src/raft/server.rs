//! The receiving side of Raft between managers: the `shoal.cluster.v1.Raft` gRPC service.
//! AppendEntries, Vote and InstallSnapshot are handed to the local openraft node and its
//! whole `Result` is sent back (see `network.rs`). Write and AddMember are the manager's
//! business and go to the [`RaftRpcHooks`] it supplies. Authorization is not done here: the
//! manager wraps this service in an interceptor.

use std::sync::Arc;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;
use shoal_proto::cluster::v1::raft_server::Raft as RaftService;
use shoal_proto::cluster::v1::{
    AddMemberRequest, AddMemberResponse, RaftMessage, StoreBatch, WriteRequest, WriteResponse,
};
use tonic::{Request, Response, Status};

use shoal_proto::transport::{peer_identity, PeerIdentity};

use super::types::Raft;

/// What the manager does for the RPCs that are not Raft's own.
pub trait RaftRpcHooks: Send + Sync + 'static {
    /// Proposes `batch` (a follower forwarding a write); resolves to the log index the batch
    /// applied at. Expected to fail when this manager is not the leader.
    fn write(
        &self,
        batch: StoreBatch,
        caller: Option<PeerIdentity>,
    ) -> BoxFuture<'_, Result<u64, Status>>;
    /// Adds the asking manager to the Raft membership as a voter. Expected to fail when this
    /// manager is not the leader, and to succeed again for a manager already added.
    fn add_member(
        &self,
        req: AddMemberRequest,
        caller: Option<PeerIdentity>,
    ) -> BoxFuture<'_, Result<(), Status>>;
}

/// The `Raft` gRPC service of one manager.
pub struct RaftRpc {
    raft: Raft,
    hooks: Arc<dyn RaftRpcHooks>,
}

impl RaftRpc {
    /// The service for the local node `raft`, with `hooks` for Write and AddMember.
    pub fn new(raft: Raft, hooks: Arc<dyn RaftRpcHooks>) -> RaftRpc {
        RaftRpc { raft, hooks }
    }
}

fn decode<T: DeserializeOwned>(request: Request<RaftMessage>) -> Result<T, Status> {
    serde_json::from_slice(&request.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("decode raft message: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Response<RaftMessage>, Status> {
    serde_json::to_vec(value)
        .map(|data| Response::new(RaftMessage { data }))
        .map_err(|e| Status::internal(format!("encode raft message: {e}")))
}

#[tonic::async_trait]
impl RaftService for RaftRpc {
    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let result = self.raft.append_entries(decode(request)?).await;
        encode(&result)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let result = self.raft.vote(decode(request)?).await;
        encode(&result)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let result = self.raft.install_snapshot(decode(request)?).await;
        encode(&result)
    }

    async fn write(
        &self,
        request: Request<WriteRequest>,
    ) -> Result<Response<WriteResponse>, Status> {
        let caller = peer_identity(&request);
        let batch = request
            .into_inner()
            .batch
            .ok_or_else(|| Status::invalid_argument("write without a batch"))?;
        let index = self.hooks.write(batch, caller).await?;
        Ok(Response::new(WriteResponse { index }))
    }

    async fn add_member(
        &self,
        request: Request<AddMemberRequest>,
    ) -> Result<Response<AddMemberResponse>, Status> {
        let caller = peer_identity(&request);
        self.hooks.add_member(request.into_inner(), caller).await?;
        Ok(Response::new(AddMemberResponse {}))
    }
}
