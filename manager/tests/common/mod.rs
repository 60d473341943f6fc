//! What the manager's in-process tests share: a Raft stand-in for the control API (one
//! voter, always the leader).

use futures::future::BoxFuture;
use shoal_manager::controlapi::RaftControl;
use shoal_manager::propose::ProposeError;

/// One manager that leads and never changes membership.
pub struct NoRaft;

impl RaftControl for NoRaft {
    fn leader_raft_id(&self) -> Option<u64> {
        Some(1)
    }
    fn voters(&self) -> usize {
        1
    }
    fn remove_member(&self, _: u64) -> BoxFuture<'static, Result<(), ProposeError>> {
        Box::pin(async { Ok(()) })
    }
    fn advertise_addr(&self) -> String {
        "198.18.0.11:4247".into()
    }
}
