//! `Runtime::remove` and `Runtime::remove_image`.

use std::time::Duration;

use super::{ContainerError, Result, Runtime, Status};
use crate::cgroups::ContainerCgroup;
use crate::image::Removed;

impl Runtime {
    /// Removes the container and everything it holds (directory, upper layer, logs, cgroup).
    /// A running container is refused unless `force`, which kills it first. Its mounts live
    /// only in its own mount namespace, so they are gone with its last process.
    pub fn remove(&self, id: &str, force: bool) -> Result<()> {
        let c = self.lookup(id)?;
        if c.state.status == Status::Running {
            if !force {
                return Err(ContainerError::Running(c.id));
            }
            self.stop(&c.id, Duration::ZERO)?;
        }
        let _guard = self.lock_container(&c.id)?;
        // Looked at again under the lock: another remove may have won, a start may have run.
        let c = match self.load(&c.id) {
            Ok(c) => c,
            Err(ContainerError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if c.state.status == Status::Running {
            if !force {
                return Err(ContainerError::Running(c.id));
            }
            self.stop(&c.id, Duration::ZERO)?;
        }
        let _lock = self.lock_containers()?;
        // The supervisor removes the cgroup when it exits; this covers a supervisor that was
        // itself killed.
        if let Err(e) = ContainerCgroup::open(&self.cfg.cgroup_parent, &c.id).remove() {
            tracing::warn!(container = %c.id, ?e, "remove cgroup");
        }
        let dir = self.container_dir(&c.id);
        // One rename takes the container away atomically; its files (a dozen unlinks, and an
        // upper layer of any size) are deleted off the caller's path. What a crash leaves in
        // trash/ is purged when the runtime is next opened.
        let trash = self.trash_dir().join(&c.id);
        match std::fs::rename(&dir, &trash) {
            Ok(()) => purge_in_background(trash),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ContainerError::Io {
                    op: "remove",
                    path: dir,
                    source,
                })
            }
        }
        // Released only once the container is gone: a crash before this line leaves a stale
        // entry, which lookups and creates drop, never a container without its entry.
        self.release_name(&c.name, &c.id)
    }

    /// `image rm`, refused while any container (running or not) uses the image.
    pub fn remove_image(&self, reference: &str, force: bool) -> Result<Vec<Removed>> {
        let image = self.images.resolve(reference)?;
        // Untagging one of several tags never deletes the image, so it is allowed in use.
        let only_untag = image.repo_tags.len() > 1
            && image
                .repo_tags
                .iter()
                .any(|t| t == reference || *t == format!("{reference}:latest"));
        if !only_untag {
            if let Some(c) = self
                .list(true)?
                .into_iter()
                .find(|c| c.image_id == image.id)
            {
                return Err(ContainerError::ImageInUse {
                    image: reference.to_string(),
                    container: c.short_id().to_string(),
                });
            }
        }
        Ok(self.images.remove(reference, force)?)
    }
}

/// Deletes a removed container's directory on a thread of its own.
fn purge_in_background(path: std::path::PathBuf) {
    let spawned = std::thread::Builder::new()
        .name("shoal-purge".into())
        .spawn({
            let path = path.clone();
            move || purge(&path)
        });
    if spawned.is_err() {
        purge(&path);
    }
}

pub(crate) fn purge(path: &std::path::Path) {
    if let Err(err) = std::fs::remove_dir_all(path) {
        if err.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), %err, "purge removed container");
        }
    }
}
