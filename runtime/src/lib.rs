//! shoal's embedded container runtime.
//!
//! It owns everything that happens on one node below the cluster: the image store
//! ([`image`]), the container lifecycle ([`Runtime`]), and the per-container supervisor
//! ([`process::shim`], run as the `shoal-shim` binary) that outlives the daemon. It knows
//! nothing of clusters, services or gRPC.
//!
//! A container's root is an overlayfs of its image's unpacked layers plus its own upper
//! directory, mounted inside the container's own mount namespace, so a container that dies
//! (or a daemon that is killed) never leaves a mount behind on the host.
#![warn(missing_docs)]

pub mod cgroups;
pub mod container;
pub mod image;
pub mod logs;
pub mod process;
pub mod rootfs;
pub mod security;
pub mod spec;

pub use container::{
    Container, ContainerError, ExecSpec, Runtime, RuntimeConfig, State, Stats, Status,
};
pub use spec::ContainerSpec;
