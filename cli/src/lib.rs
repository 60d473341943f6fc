//! shoal CLI and daemon library (to be written).
