//! The partitions a server serves, each its own log with its own committer and (in a
//! cluster) its own replication. An ID's partition is `partition_of` (docs/FORMAT.md,
//! "Partitions"); with one partition every ID is in it and nothing is hashed.

use std::sync::Arc;

use tokio::sync::watch;

use crate::cluster::partitioning::partition_of;
use crate::protocol::Command;
use crate::protocol::resp::RespCommand;
use crate::storage::Log;

use super::cluster::{Cluster, Refusal, Route};
use super::committer::CommitHandle;

/// One partition as the server serves it.
pub(crate) struct PartitionServing {
    pub(crate) partition: u32,
    pub(crate) log: Arc<Log>,
    /// Present under `--fsync always`: where connections wait for this log's group commits.
    pub(crate) commits: Option<CommitHandle>,
    /// This partition's replication; `None` is a lone leader.
    pub(crate) cluster: Option<Arc<dyn Cluster>>,
}

impl PartitionServing {
    pub(crate) fn admit_write(&self) -> Result<(), Refusal> {
        self.cluster.as_ref().map_or(Ok(()), |c| c.admit_write())
    }
}

/// Every partition of the cluster, in partition order: slot `p` serves partition `p`.
pub(crate) struct Partitions {
    slots: Vec<PartitionServing>,
}

impl Partitions {
    /// `slots[p]` must serve partition `p`, and there must be at least one.
    pub(crate) fn new(slots: Vec<PartitionServing>) -> Partitions {
        assert!(!slots.is_empty(), "a server serves at least one partition");
        assert!(slots.iter().enumerate().all(|(p, slot)| slot.partition as usize == p), "slots in partition order");
        Partitions { slots }
    }

    /// How many partitions IDs are spread over.
    pub(crate) fn count(&self) -> u32 {
        self.slots.len() as u32
    }

    /// The partition that holds `id`.
    pub(crate) fn for_key(&self, id: &[u8]) -> &PartitionServing {
        match self.slots.as_slice() {
            [only] => only,
            slots => &slots[partition_of(id, slots.len() as u32) as usize],
        }
    }

    pub(crate) fn get(&self, partition: u32) -> &PartitionServing {
        &self.slots[partition as usize]
    }

    /// Partition 0: what server-wide answers (role, replication stats) follow, and the only
    /// one of a single-partition server.
    pub(crate) fn first(&self) -> &PartitionServing {
        &self.slots[0]
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &PartitionServing> {
        self.slots.iter()
    }

    /// Every partition's routes, in partition order; `None` unless each has them.
    pub(crate) fn routes(&self) -> Option<Vec<watch::Receiver<Route>>> {
        self.slots.iter().map(|slot| slot.cluster.as_ref().and_then(|cluster| cluster.routes())).collect()
    }

    /// The partitions `command` reads or writes, in partition order, each once: where its
    /// keys lie. SCAN reads the partition its cursor names; a command without keys (DBSIZE,
    /// KEYS) is counted as partition 0's, which is where a forwarding node sends it.
    pub(crate) fn of_command(&self, command: &RespCommand<'_>) -> Vec<u32> {
        if self.slots.len() == 1 {
            return vec![0];
        }
        let mut of = Vec::new();
        match command {
            RespCommand::Scan(scan) => of.push((scan.cursor % u64::from(self.count())) as u32),
            command => super::transaction::for_each_key(command, |id| of.push(self.for_key(id).partition)),
        }
        of.sort_unstable();
        of.dedup();
        if of.is_empty() {
            of.push(0);
        }
        of
    }

    /// The partition of a text-protocol data command's key; `None` for any other line.
    pub(crate) fn of_line(&self, line: &[u8], max_message_bytes: usize) -> Option<u32> {
        match Command::parse_line(line, max_message_bytes) {
            Ok(Command::Set { id, .. } | Command::Get { id } | Command::Del { id } | Command::Exists { id }) => {
                Some(self.for_key(id).partition)
            }
            _ => None,
        }
    }

    /// The indices of `ids` grouped by partition, in partition order, each group in the
    /// order the IDs came.
    pub(crate) fn group<'a>(&self, ids: impl Iterator<Item = &'a [u8]>) -> Vec<(&PartitionServing, Vec<usize>)> {
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); self.slots.len()];
        for (index, id) in ids.enumerate() {
            groups[self.for_key(id).partition as usize].push(index);
        }
        self.slots.iter().zip(groups).filter(|(_, indices)| !indices.is_empty()).collect()
    }
}
