//! The processes behind a container, split by role: the supervisor ([`shim`]) that owns a
//! container's stdio, logs and exit status, and the container's init ([`init`]) that sets up
//! the namespaces' view and execs the command.

pub mod attach;
pub mod init;
pub mod shim;
pub mod zygote;
