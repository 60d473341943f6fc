//! shoal's gRPC API: the generated messages, clients and servers of the `.proto` files under
//! `proto/`, and the few wire conventions that are not expressible in protobuf.
//!
//! It knows nothing of the runtime: conversions between these messages and the runtime's
//! types live next to the daemon (`shoal-cli`'s `daemon::convert`), so that clients of the
//! API do not compile the runtime.
#![warn(missing_docs)]

/// The node-local API (`shoal.node.v1`): the `System`, `Images` and `Containers` services
/// a `shoald` serves on its Unix socket.
pub mod node {
    /// Version 1 of the node API.
    pub mod v1 {
        #![allow(missing_docs)]
        #![allow(clippy::all)]
        tonic::include_proto!("shoal.node.v1");
    }
}

/// The cluster API (`shoal.cluster.v1`): the objects the managers replicate, the control API,
/// node-local swarm membership, Raft transport, the dispatcher and the CA.
pub mod cluster {
    /// Version 1 of the cluster API.
    pub mod v1 {
        #![allow(missing_docs)]
        #![allow(clippy::all)]
        tonic::include_proto!("shoal.cluster.v1");

        macro_rules! into_object {
            ($($t:ident),*) => {$(
                impl From<$t> for store_object::Object {
                    fn from(o: $t) -> store_object::Object {
                        store_object::Object::$t(o)
                    }
                }
            )*};
        }
        into_object!(Cluster, Node, Service, Task, Network);
    }
}

/// Metadata key of a failed `Containers.Start` or `Containers.Attach`: the exit code Docker's
/// CLI would exit with (125 for a setup failure, 126 for a command that cannot be executed,
/// 127 for one that does not exist). Carried as metadata rather than parsed from the message,
/// so that clients never match strings.
pub const EXIT_CODE_METADATA: &str = "shoal-exit-code";

/// Size of the chunks in which byte streams (image archives, exec stdin) are sent: well under
/// tonic's default 4 MiB message limit, large enough that per-message overhead is negligible.
pub const CHUNK_SIZE: usize = 256 * 1024;
pub mod transport;
