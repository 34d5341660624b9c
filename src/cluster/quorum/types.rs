//! The Raft library's type configuration; none of these types leave `cluster::quorum`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::cluster::metadata::{MetaCommand, MetaOutcome, Metadata};

/// A log entry's command. The wrapper gives it the `Display` the Raft library logs with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Command(pub MetaCommand);

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Outcome(pub MetaOutcome);

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

openraft::declare_raft_types!(
    /// Node ids are the operator's `--node-id` strings, so no mapping can collide; a
    /// member's `BasicNode::addr` is its gRPC address.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = String,
        Node = openraft::BasicNode,
);

pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
/// A snapshot is the whole metadata: it is small enough to travel in one message.
pub type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, Metadata>;
pub type Raft = openraft::Raft<TypeConfig, super::state_machine::StateMachine>;

/// What an `InstallSnapshot` call carries.
#[derive(Serialize, Deserialize)]
pub struct SnapshotTransfer {
    pub vote: Vote,
    pub meta: SnapshotMeta,
    pub metadata: Metadata,
}
