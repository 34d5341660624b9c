//! The metadata's JSON form in the Raft log and snapshots (docs/FORMAT.md, "Partitions",
//! cluster metadata): what was written before partitions still reads, and what is written
//! now is still read by a node of the version before partitions, in a one-partition
//! cluster upgraded node by node.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Member, Metadata, NodeId, Partition};

/// The metadata as stored, also in the form written before partitions (one `partition`).
#[derive(Deserialize)]
pub(super) struct StoredMetadata {
    cluster_id: Option<String>,
    replication_factor: usize,
    min_insync: usize,
    members: BTreeMap<NodeId, Member>,
    #[serde(default)]
    partitions: Vec<Partition>,
    #[serde(default)]
    partition: Option<Partition>,
}

/// The metadata as written: `partition` repeats partition 0, so that a node of a version
/// before partitions, in a one-partition cluster being upgraded node by node, still reads
/// it (it ignores `partitions`).
#[derive(Serialize)]
struct WrittenMetadata<'a> {
    cluster_id: &'a Option<String>,
    replication_factor: usize,
    min_insync: usize,
    members: &'a BTreeMap<NodeId, Member>,
    partitions: &'a [Partition],
    partition: &'a Partition,
}

impl Serialize for Metadata {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        WrittenMetadata {
            cluster_id: &self.cluster_id,
            replication_factor: self.replication_factor,
            min_insync: self.min_insync,
            members: &self.members,
            partitions: &self.partitions,
            partition: self.partition_or_empty(0),
        }
        .serialize(serializer)
    }
}

impl From<StoredMetadata> for Metadata {
    fn from(stored: StoredMetadata) -> Metadata {
        let mut partitions = stored.partitions;
        if partitions.is_empty() && stored.cluster_id.is_some() {
            partitions.push(stored.partition.unwrap_or_default());
        }
        Metadata {
            cluster_id: stored.cluster_id,
            replication_factor: stored.replication_factor,
            min_insync: stored.min_insync,
            members: stored.members,
            partitions,
        }
    }
}
