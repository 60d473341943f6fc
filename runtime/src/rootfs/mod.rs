//! The container's root filesystem, set up by the container's init from inside its new mount
//! namespace: the overlay, /proc, /dev, /sys, Docker's masked and read-only paths, then
//! pivot_root. Because every mount here lives only in the container's mount namespace, the
//! kernel releases all of them when the container's last process exits — nothing to unmount
//! on the host, even after a crash.
//!
//! Split after youki's `rootfs/`: [`mount`] (the mount table), [`devices`] (/dev nodes),
//! [`pivot`] (the switch of root and the paths masked afterwards).

pub mod devices;
pub mod mount;
pub mod path;
pub mod pivot;

use std::path::PathBuf;

/// A failed setup step, with the path it worked on.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}")]
pub struct RootfsError {
    /// The operation ("mount proc on", "mknod", …).
    pub op: &'static str,
    /// Its target.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: nix::Error,
}

/// Result alias for rootfs steps.
pub type Result<T, E = RootfsError> = std::result::Result<T, E>;

pub(crate) fn err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(nix::Error) -> RootfsError {
    let path = path.into();
    move |source| RootfsError { op, path, source }
}
