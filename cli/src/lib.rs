//! shoal's binaries as a library: the node daemon ([`daemon`]), the client's connection to it
//! ([`client`]) and the client's commands ([`commands`]). The binaries in `src/bin/` only
//! parse arguments, set up logging and call in here, so tests can run a daemon in-process
//! on a temp socket.
#![warn(missing_docs)]

pub mod client;
pub mod commands;
pub mod daemon;
pub mod terminal;
pub mod units;
