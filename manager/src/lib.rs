//! shoal's managers: the cluster store replicated with Raft (openraft over redb), and what the
//! leader runs on it — the control API, the orchestrator, the allocator, the scheduler, the dispatcher and
//! the certificate authority. Knows nothing of how containers start.

pub mod allocator;
pub mod attachment;
pub mod ca;
pub mod controlapi;
pub mod dispatcher;
pub mod endpoint;
pub mod manager;
pub mod netmap;
pub mod objects;
pub mod orchestrator;
pub mod propose;
pub mod raft;
pub mod scheduler;
pub mod store;
