//! Finding containers by name, id or id prefix, and listing them.

use super::{Container, Result, Runtime};

impl Runtime {
    /// Finds a container by full id, name (with or without a leading `/`) or unique id
    /// prefix, in Docker's order of precedence, with its current state.
    pub fn lookup(&self, needle: &str) -> Result<Container> {
        let _ = needle;
        todo!()
    }

    /// All containers (only running ones unless `all`), newest first.
    pub fn list(&self, all: bool) -> Result<Vec<Container>> {
        let _ = all;
        todo!()
    }
}

impl Runtime {
    /// `<data-root>/containers/<id>`.
    pub fn container_dir(&self, id: &str) -> std::path::PathBuf {
        self.cfg.root.join("containers").join(id)
    }
}
