//! What the server needs from replication, as a trait so that the server stays ignorant of
//! gRPC and followers: `replication::Replication` implements it, and a server without one is a
//! lone leader.

use std::future::Future;
use std::pin::Pin;

use crate::storage::Offset;

/// A write's replication did not succeed; the text becomes `ERR <text>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// Where a node's data commands (reads and writes) run now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// This node leads: here.
    Local,
    /// Another node leads: forwarded to it, over its replication (gRPC) port.
    Forward { leader_id: String, grpc_addr: String },
    /// No leader is known (an election is under way): wait for one, up to the ack timeout.
    Electing,
}

pub type Replicated<'a> = Pin<Box<dyn Future<Output = Result<(), Refusal>> + Send + 'a>>;

pub trait Cluster: Send + Sync + 'static {
    /// Whether a SET/DEL may be applied now (a follower never; a leader only with enough
    /// followers connected). Checked before the write is appended.
    fn admit_write(&self) -> Result<(), Refusal>;

    /// Records up to `next_offset` (exclusive) are in the log: wakes the streams sending it.
    fn appended(&self, next_offset: Offset);

    /// Resolves once `offset` is durable on as many followers as the tolerance asks;
    /// `None` when nothing needs waiting for.
    fn replicated(&self, offset: Offset) -> Option<Replicated<'_>>;

    /// `leader` or `follower`.
    fn role(&self) -> &'static str;

    /// Where data commands run, as it changes; `None` (standalone and manual roles): always
    /// here.
    fn routes(&self) -> Option<tokio::sync::watch::Receiver<Route>> {
        None
    }

    /// Why a request that waited in vain for a leader could not run, given what the wait
    /// saw last (`seen`): the cluster may know a deeper cause.
    fn unavailable(&self, seen: String) -> String {
        seen
    }

    /// `key=value` pairs appended to STATS and the stats line (followers and their lag, or
    /// the leader and this node's lag).
    fn stats(&self) -> Vec<(String, String)>;
}
