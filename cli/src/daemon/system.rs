//! The `System` service: ping and version.

use std::sync::Arc;

use shoal_proto::node::v1 as pb;
use shoal_proto::node::v1::system_server::System;
use tonic::{Request, Response, Status};

use super::Daemon;

/// Version of the node API package this daemon serves.
pub const API_VERSION: &str = "v1";

/// The `System` service.
#[derive(Debug)]
pub struct SystemApi {
    daemon: Arc<Daemon>,
}

impl SystemApi {
    /// The service over the daemon's shared state.
    pub fn new(daemon: Arc<Daemon>) -> SystemApi {
        SystemApi { daemon }
    }
}

#[tonic::async_trait]
impl System for SystemApi {
    async fn ping(
        &self,
        _request: Request<pb::PingRequest>,
    ) -> Result<Response<pb::PingResponse>, Status> {
        Ok(Response::new(pb::PingResponse {}))
    }

    async fn version(
        &self,
        _request: Request<pb::VersionRequest>,
    ) -> Result<Response<pb::VersionResponse>, Status> {
        // Not worth failing `version` for: the kernel release is informative only.
        let kernel_version = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        Ok(Response::new(pb::VersionResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            api_version: API_VERSION.to_string(),
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
            kernel_version,
            data_root: self.daemon.runtime.config().root.display().to_string(),
        }))
    }
}
