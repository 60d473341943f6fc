//! Generates the Rust code of `proto/shoal/**/*.proto` without a system `protoc`: `protox`
//! parses the files into a descriptor set and `tonic-prost-build` turns that into messages,
//! clients and servers.

use std::path::{Path, PathBuf};

/// The `.proto` files, relative to the include root `proto/`.
const PROTOS: &[&str] = &[
    "shoal/node/v1/system.proto",
    "shoal/node/v1/images.proto",
    "shoal/node/v1/containers.proto",
    "shoal/node/v1/networks.proto",
    "shoal/cluster/v1/objects.proto",
    "shoal/cluster/v1/control.proto",
    "shoal/cluster/v1/swarm.proto",
    "shoal/cluster/v1/raft.proto",
    "shoal/cluster/v1/dispatcher.proto",
    "shoal/cluster/v1/ca.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    let files: Vec<PathBuf> = PROTOS.iter().map(|p| root.join(p)).collect();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let fds = protox::compile(&files, [Path::new(&root)])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
