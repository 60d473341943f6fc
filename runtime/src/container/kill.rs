//! `Runtime::kill` and `Runtime::stop`.

use std::time::Duration;

use super::{Result, Runtime};

impl Runtime {
    /// Sends `signal` (a number) to the container's process. Refused when not running.
    pub fn kill(&self, id: &str, signal: i32) -> Result<()> {
        let _ = (id, signal);
        todo!()
    }

    /// `docker stop`: the stop signal (SIGTERM), `grace` to exit, then SIGKILL; blocks until
    /// the process is gone. A container that is not running is left as it is.
    pub fn stop(&self, id: &str, grace: Duration) -> Result<()> {
        let _ = (id, grace);
        todo!()
    }
}
