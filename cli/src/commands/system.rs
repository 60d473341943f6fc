//! `shoal version`: the client's build, then the daemon's.

use shoal_proto::node::v1 as pb;

use super::OrDaemonError;
use crate::client::{Client, Host};
use crate::daemon::system::API_VERSION;

/// Prints the client's version, then the daemon's (failing if it cannot be reached, as
/// `docker version` does).
pub async fn version(host: &Host) -> anyhow::Result<i32> {
    println!("Client:");
    println!(" Version:      {}", env!("CARGO_PKG_VERSION"));
    println!(" API version:  {API_VERSION}");
    println!(
        " OS/Arch:      {}/{}",
        std::env::consts::OS,
        std::env::consts::ARCH
    );
    println!();
    let mut client = Client::connect(host).await?;
    let server = client
        .system
        .version(pb::VersionRequest {})
        .await
        .or_daemon_error()?
        .into_inner();
    println!("Server:");
    println!(" Version:      {}", server.version);
    println!(" API version:  {}", server.api_version);
    println!(" OS/Arch:      {}/{}", server.os, server.arch);
    println!(" Kernel:       {}", server.kernel_version);
    println!(" Data root:    {}", server.data_root);
    Ok(0)
}
