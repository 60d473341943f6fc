//! `Runtime::remove`.

use super::{Result, Runtime};
use crate::image::Removed;

impl Runtime {
    /// Removes the container and everything it holds (directory, upper layer, logs, cgroup).
    /// A running container is refused unless `force`, which kills it first.
    pub fn remove(&self, id: &str, force: bool) -> Result<()> {
        let _ = (id, force);
        todo!()
    }

    /// `image rm`, refused while any container (running or not) uses the image.
    pub fn remove_image(&self, reference: &str, force: bool) -> Result<Vec<Removed>> {
        let _ = (reference, force);
        todo!()
    }
}
