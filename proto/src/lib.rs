//! shoal gRPC API (to be written).
