//! msglog: a durable, replicated message store.
//!
//! Modules, each ignorant of the ones above it:
//! - [`storage`]: the synchronous log engine (segments, CRC-framed records, indexes,
//!   recovery, group commit). No tokio, no sockets.
//! - [`protocol`]: bytes → typed commands → reply bytes; pure, no I/O.
//! - [`server`]: the tokio TCP listener, connection handling, limits, shutdown.
//! - [`replication`]: the gRPC log stream from leader to followers, acknowledgements,
//!   epochs and divergence; `msglog tail`'s client.
//! - [`cluster`]: cluster mode's metadata quorum (Raft) and the metadata it agrees on.
//! - [`node`]: a running node as a library value: opens the log, binds, wires the server
//!   and replication, shuts down; tests start whole clusters in-process.
//! - [`cli`]: clap commands for the `msglog` binary.
//!
//! `random` and `throttle` (warnings a peer cannot flood) are leaves any of them may use.

mod bearer;
pub mod cli;
pub mod cluster;
pub mod node;
pub mod protocol;
mod random;
pub mod replication;
pub mod server;
pub mod storage;
mod throttle;
pub mod tls;
