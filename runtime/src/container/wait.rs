//! Waiting for a container's process to end.

use std::os::fd::OwnedFd;

use super::{Result, Runtime, State};

impl Runtime {
    /// Blocks until the container's process has ended and returns its final state
    /// (immediately when it is not running).
    pub fn wait(&self, id: &str) -> Result<State> {
        let _ = id;
        todo!()
    }

    /// A pidfd that becomes readable when the container's supervisor exits (after it has
    /// recorded the exit), for callers that wait asynchronously; `None` when not running.
    pub fn exit_fd(&self, id: &str) -> Result<Option<OwnedFd>> {
        let _ = id;
        todo!()
    }
}
