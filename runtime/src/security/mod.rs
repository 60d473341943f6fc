//! What confines a container's process besides namespaces: capabilities ([`caps`]) and the
//! default seccomp filter ([`seccomp`]).

pub mod caps;
pub mod seccomp;
