//! `Runtime::open` and `Runtime::create`.

use super::{Container, Result, Runtime, RuntimeConfig};
use crate::image::ImageStore;
use crate::spec::ContainerSpec;

impl Runtime {
    /// Opens the runtime at `cfg.root`, creating its directories, and tidies what a crash
    /// left: containers with `--rm` that exited while the daemon was down are removed.
    pub fn open(cfg: RuntimeConfig) -> Result<Runtime> {
        let _ = cfg;
        todo!()
    }

    /// The node's image store.
    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    /// The runtime's configuration.
    pub fn config(&self) -> &RuntimeConfig {
        &self.cfg
    }

    /// Creates a container from `spec`: resolves the image and the process, prepares the
    /// container's directory. Nothing runs until [`Runtime::start`].
    pub fn create(&self, spec: ContainerSpec) -> Result<Container> {
        let _ = spec;
        todo!()
    }
}
