//! Cluster mode: a metadata quorum (Raft, through openraft) agrees on members, liveness and,
//! per partition, its replicas, leader, leader epoch and in-sync replicas; the data plane
//! (the gRPC segment stream in [`crate::replication`]) follows what it decides.
//!
//! - [`metadata`]: the replicated state and the pure function that changes it.
//! - [`partitioning`]: which partition an ID belongs to and which nodes hold each one.
//! - [`quorum`]: the Raft group holding it, its RPCs, the controller's liveness tracking.

pub mod metadata;
pub mod partitioning;
pub mod quorum;
