//! shoal's agent, run on every node: keeps a session with the leader's dispatcher, and drives
//! the embedded runtime so that the node's containers match its assigned tasks, reporting each
//! task's observed state back, and programs the node's share of the cluster's networks. Knows the managers only through `shoal-proto`.

pub mod agent;
pub mod bridge;
pub mod controller;
pub mod images;
pub mod network;
pub mod table;
