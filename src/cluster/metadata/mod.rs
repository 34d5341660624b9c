//! The cluster's metadata: what the metadata quorum agrees on, and the one function that
//! changes it. Every node applies the same committed commands in the same order to
//! [`Metadata::apply`], which is pure (no clocks, no I/O), so every node derives the same
//! leaders, epochs and in-sync replica sets.
//!
//! The records are split over `partitions` partitions (docs/FORMAT.md, "Partitions"), each
//! with its own replicas, leader, epoch and ISR; every rule below holds per partition. A
//! member's death touches every partition it holds a copy of.
//!
//! Safety rests on these rules kept here:
//! - A leader epoch is only ever raised, and only by a committed command, so two leaders
//!   can never share one (README "Cluster mode").
//! - A new leader is chosen only from the in-sync replicas (ISR). A write is acknowledged
//!   only once every ISR member holds it, so every ISR member holds every acknowledged
//!   write, and so does any leader chosen from it. There is no "unclean" election: with no
//!   live ISR member the partition has no leader until one returns.
//! - The ISR is changed by its leader only under the epoch it leads (a deposed leader's
//!   change is refused), and by the controller when it fences a member; it never loses
//!   its last member.
//! - A replica is replaced only while it is fenced (or never registered) and out of the
//!   ISR: the ISR, which holds every acknowledged write, is untouched, and the new replica
//!   joins it only once its leader has seen it catch up. Its place goes only to a member
//!   holding no records of that partition, which could lack deletions made meanwhile.
//! - Leadership is handed over (to the preferred replica) only by the leader itself,
//!   under the epoch it leads, to a live ISR member.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::storage::Epoch;

use super::partitioning::place;

mod stored;

/// A node's id, as given by `--node-id` and listed in `--cluster`.
pub type NodeId = String;

/// A partition's number, `0..partitions`.
pub type PartitionId = u32;

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "stored::StoredMetadata")]
pub struct Metadata {
    /// Chosen when the cluster is formed; every data dir of the cluster remembers it.
    pub cluster_id: Option<String>,
    /// Copies each record gets, counting the leader.
    pub replication_factor: usize,
    /// Members an acknowledged write must be on, counting the leader.
    pub min_insync: usize,
    pub members: BTreeMap<NodeId, Member>,
    /// Every partition, by number; fixed when the cluster is formed (none before).
    pub partitions: Vec<Partition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Where other nodes reach its replication (gRPC) port.
    pub grpc_addr: String,
    /// Where clients reach it.
    pub client_addr: String,
    /// Listed in `--cluster`: votes in the metadata quorum.
    pub voter: bool,
    /// The controller stopped hearing from it, or it shut down: it leads nothing and is
    /// in no ISR (except as the last member of one) until it registers again.
    pub fenced: bool,
    /// Random per process start: a second process under the same id is told apart.
    pub incarnation: u64,
    /// The highest epoch its logs held when it registered, over every partition.
    #[serde(default)]
    pub log_epoch: Epoch,
    /// The highest epoch each partition's log held when it registered (by partition; none
    /// past the end): a member holding records of a partition is never made its replica in
    /// a dead one's place (see [`Metadata::may_take_a_place`]). Empty in metadata written
    /// before partitions, where `log_epoch` is partition 0's.
    #[serde(default)]
    pub log_epochs: Vec<Epoch>,
}

impl Member {
    /// The highest epoch its log of `partition` held when it registered.
    pub fn log_epoch_of(&self, partition: PartitionId) -> Epoch {
        match self.log_epochs.get(partition as usize) {
            Some(&epoch) => epoch,
            None if self.log_epochs.is_empty() && partition == 0 => self.log_epoch,
            None => 0,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// The nodes that store it, in preference order (the first is the preferred leader).
    pub replicas: Vec<NodeId>,
    pub leader: Option<NodeId>,
    /// The current leader epoch: records its leader appends carry it.
    pub epoch: Epoch,
    pub isr: BTreeSet<NodeId>,
    /// The highest epoch any replica's log of this partition held when it became a replica
    /// (or first registered, if placed): the next epoch is above it, so epochs never go
    /// down along a log that predates the cluster.
    pub epoch_floor: Epoch,
}

/// A change to the metadata, as proposed to the quorum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Forms the cluster; ignored once it is formed. `partitions` (at least 1) are placed
    /// over `voters` (the `--cluster` ids, sorted) as [`place`] spreads them; a partition
    /// short of `replication_factor` copies there takes members as they register.
    Init {
        cluster_id: String,
        replication_factor: usize,
        min_insync: usize,
        #[serde(default = "one_partition")]
        partitions: u32,
        #[serde(default)]
        voters: Vec<NodeId>,
    },
    /// A node started (or restarted) and can serve; `log_epoch` is the highest epoch its
    /// logs hold records of, `log_epochs` the same per partition (empty from a node that
    /// predates partitions: then `log_epoch` is partition 0's).
    Register {
        id: NodeId,
        grpc_addr: String,
        client_addr: String,
        voter: bool,
        incarnation: u64,
        log_epoch: Epoch,
        #[serde(default)]
        log_epochs: Vec<Epoch>,
    },
    /// The controller stopped hearing from `id` (its session expired), or `id` is shutting
    /// down: it loses every leadership and leaves every ISR.
    Fence { id: NodeId, incarnation: u64, reason: FenceReason },
    /// A partition's leader changes its ISR under the epoch it leads, from the ISR it last
    /// saw (`expected`): a change based on an ISR that has changed since is refused, as it
    /// could put back a member that missed writes acknowledged in between.
    AlterIsr {
        #[serde(default)]
        partition: PartitionId,
        leader: NodeId,
        epoch: Epoch,
        expected: BTreeSet<NodeId>,
        isr: BTreeSet<NodeId>,
    },
    /// The controller gives `dead`'s place among a partition's replicas to `with`, a live
    /// member holding no copy of it (`--replace-dead-after`), from the replicas it last saw
    /// (`expected`).
    ReplaceReplica {
        #[serde(default)]
        partition: PartitionId,
        dead: NodeId,
        with: NodeId,
        expected: Vec<NodeId>,
    },
    /// A partition's leader hands its leadership to the partition's preferred replica (the
    /// first in placement order), which is live and in sync, so leaderships spread again
    /// after a node returns. To be proposed by the leader itself once it has stopped
    /// serving, so that the two never serve at once; refused unless it still leads `epoch`.
    /// Nothing proposes it yet (nodes serve one partition, where it is always refused); a
    /// node of the version before partitions cannot read it, so it must stay unproposed in
    /// one-partition clusters.
    HandOver { partition: PartitionId, leader: NodeId, epoch: Epoch },
}

/// Init's partition count when it names none: it was written before partitions.
fn one_partition() -> u32 {
    1
}

/// The most partitions a cluster may have: every node keeps a log per partition it holds,
/// and an Init asking for more is refused rather than replayed into memory on every node.
pub const MAX_PARTITIONS: u32 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FenceReason {
    SessionExpired,
    ControlledShutdown,
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaOutcome {
    Applied,
    /// Valid but changed nothing (already so).
    Unchanged,
    /// Not applied, and why (the proposer acts on it).
    Rejected(String),
}

impl Metadata {
    /// Applies one committed command. Deterministic: the same commands in the same order
    /// give the same metadata on every node.
    pub fn apply(&mut self, command: &MetaCommand) -> MetaOutcome {
        match command {
            MetaCommand::Init { cluster_id, replication_factor, min_insync, partitions, voters } => {
                if self.cluster_id.is_some() {
                    return MetaOutcome::Unchanged;
                }
                if !(1..=MAX_PARTITIONS).contains(partitions) {
                    return MetaOutcome::Rejected(format!(
                        "a cluster has 1 to {MAX_PARTITIONS} partitions, not {partitions}"
                    ));
                }
                self.cluster_id = Some(cluster_id.clone());
                self.replication_factor = (*replication_factor).max(1);
                self.min_insync = (*min_insync).max(1);
                let mut voters = voters.clone();
                voters.sort();
                voters.dedup();
                self.partitions = place(*partitions, &voters, self.replication_factor)
                    .into_iter()
                    .map(|replicas| Partition { replicas, ..Partition::default() })
                    .collect();
                MetaOutcome::Applied
            }
            MetaCommand::Register { id, grpc_addr, client_addr, voter, incarnation, log_epoch, log_epochs } => {
                if self.cluster_id.is_none() {
                    return MetaOutcome::Rejected("the cluster is not formed yet".to_string());
                }
                if let Some(old) = self.members.get(id) {
                    if old.incarnation == *incarnation && !old.fenced {
                        return MetaOutcome::Unchanged;
                    }
                    if !old.fenced {
                        // A new process under a live member's id: the old one is gone (or
                        // about to be). It is fenced first, so its epochs end and the new
                        // process never leads on under them (its log may lack the tail that
                        // the old process had sent to followers).
                        self.fence(id);
                    }
                }
                let member = Member {
                    grpc_addr: grpc_addr.clone(),
                    client_addr: client_addr.clone(),
                    voter: *voter,
                    fenced: false,
                    incarnation: *incarnation,
                    log_epoch: *log_epoch,
                    log_epochs: log_epochs.clone(),
                };
                let replication_factor = self.replication_factor;
                let first_registration = !self.members.contains_key(id);
                for (p, partition) in self.partitions.iter_mut().enumerate() {
                    // A partition short of copies holds every member registered so far
                    // (placement names voters only, and fills as they come), so no member
                    // with an old copy of it is taken in here.
                    let joins = !partition.replicas.contains(id) && partition.replicas.len() < replication_factor;
                    if joins {
                        partition.replicas.push(id.clone());
                    }
                    if !partition.replicas.contains(id) {
                        continue;
                    }
                    // Only a replica's log is ever led or followed: only its epochs matter,
                    // taken when it becomes one (placed replicas: when they first arrive).
                    // A replica's later registrations hold no epoch above the partition's.
                    if joins || first_registration {
                        partition.epoch_floor = partition.epoch_floor.max(member.log_epoch_of(p as PartitionId));
                    }
                    if partition.leader.is_none() && partition.isr.is_empty() {
                        // The first replica to arrive starts the partition, alone in its ISR.
                        partition.isr.insert(id.clone());
                    }
                }
                self.members.insert(id.clone(), member);
                for p in 0..self.partitions.len() as PartitionId {
                    if self.partition_or_empty(p).leader.is_none() {
                        self.elect(p, None);
                    }
                }
                MetaOutcome::Applied
            }
            MetaCommand::Fence { id, incarnation, reason: _ } => {
                let Some(member) = self.members.get_mut(id) else {
                    return MetaOutcome::Rejected(format!("no member {id}"));
                };
                if member.incarnation != *incarnation {
                    // A newer process under this id has registered since: it is not fenced.
                    return MetaOutcome::Unchanged;
                }
                if member.fenced {
                    return MetaOutcome::Unchanged;
                }
                self.fence(id);
                MetaOutcome::Applied
            }
            MetaCommand::AlterIsr { partition: p, leader, epoch, expected, isr } => {
                let Some(partition) = self.partitions.get(*p as usize) else {
                    return MetaOutcome::Rejected(format!("no partition {p}"));
                };
                if partition.isr != *expected {
                    return MetaOutcome::Rejected(format!(
                        "the ISR is {:?} now, not {expected:?} as the change assumed",
                        partition.isr
                    ));
                }
                if partition.leader.as_ref() != Some(leader) || partition.epoch != *epoch {
                    return MetaOutcome::Rejected(format!(
                        "{leader} does not lead epoch {epoch} (the leader is {}, epoch {})",
                        partition.leader.as_deref().unwrap_or("none"),
                        partition.epoch
                    ));
                }
                if !isr.contains(leader) {
                    return MetaOutcome::Rejected("the ISR must hold its leader".to_string());
                }
                for id in isr.difference(&partition.isr) {
                    if !partition.replicas.contains(id) {
                        return MetaOutcome::Rejected(format!("{id} is not a replica"));
                    }
                    if self.members.get(id).is_none_or(|m| m.fenced) {
                        return MetaOutcome::Rejected(format!("{id} is fenced"));
                    }
                }
                if *isr == partition.isr {
                    return MetaOutcome::Unchanged;
                }
                self.partitions[*p as usize].isr = isr.clone();
                MetaOutcome::Applied
            }
            MetaCommand::HandOver { partition: p, leader, epoch } => {
                let Some(partition) = self.partition(*p) else {
                    return MetaOutcome::Rejected(format!("no partition {p}"));
                };
                if partition.leader.as_ref() != Some(leader) || partition.epoch != *epoch {
                    return MetaOutcome::Rejected(format!(
                        "{leader} does not lead epoch {epoch} (the leader is {}, epoch {})",
                        partition.leader.as_deref().unwrap_or("none"),
                        partition.epoch
                    ));
                }
                if self.partitions.len() < 2 {
                    return MetaOutcome::Rejected("a hand-over needs several partitions to spread".to_string());
                }
                let Some(preferred) = self.preferred_leader_waiting(*p).cloned() else {
                    return MetaOutcome::Rejected(format!(
                        "partition {p}'s preferred replica {} is not a live, in-sync replica other than its leader",
                        partition.replicas.first().map_or("(none)", String::as_str)
                    ));
                };
                let partition = &mut self.partitions[*p as usize];
                partition.leader = Some(preferred);
                partition.epoch = partition.epoch.max(partition.epoch_floor) + 1;
                MetaOutcome::Applied
            }
            MetaCommand::ReplaceReplica { partition: p, dead, with, expected } => {
                match self.replacement(*p, dead, with, expected) {
                    Err(why) => MetaOutcome::Rejected(why),
                    Ok(at) => {
                        // Its log of the partition is empty (see `may_take_a_place`): no epoch
                        // floor to raise.
                        self.partitions[*p as usize].replicas[at] = with.clone();
                        MetaOutcome::Applied
                    }
                }
            }
        }
    }

    /// Partition `p`, if the cluster has it.
    pub fn partition(&self, p: PartitionId) -> Option<&Partition> {
        self.partitions.get(p as usize)
    }

    /// Partition `p`; one with no replicas and no leader if the cluster has no such
    /// partition (not formed yet, or `p` out of range).
    pub fn partition_or_empty(&self, p: PartitionId) -> &Partition {
        static EMPTY: Partition =
            Partition { replicas: Vec::new(), leader: None, epoch: 0, isr: BTreeSet::new(), epoch_floor: 0 };
        self.partition(p).unwrap_or(&EMPTY)
    }

    /// Where `dead` sits among partition `p`'s replicas, if `with` may take its place.
    fn replacement(&self, p: PartitionId, dead: &NodeId, with: &NodeId, expected: &[NodeId]) -> Result<usize, String> {
        let partition = self.partition(p).ok_or_else(|| format!("no partition {p}"))?;
        if partition.replicas != expected {
            return Err(format!(
                "the replicas are {:?} now, not {expected:?} as the change assumed",
                partition.replicas
            ));
        }
        let at =
            partition.replicas.iter().position(|id| id == dead).ok_or_else(|| format!("{dead} is not a replica"))?;
        if self.members.get(dead).is_some_and(|m| !m.fenced) {
            return Err(format!("{dead} is alive"));
        }
        // Fencing keeps the last ISR member, which alone may hold every acknowledged write.
        if partition.isr.contains(dead) || partition.leader.as_ref() == Some(dead) {
            return Err(format!("{dead} is in the ISR: it may hold acknowledged writes no other replica has"));
        }
        self.may_take_a_place(p, with)?;
        Ok(at)
    }

    /// Whether member `with` may take a dead replica's place in partition `p`: alive, no
    /// replica of it yet, and registered with an empty log of it. One holding records (a
    /// replica replaced earlier, back with its old copy) would resume from that copy, and
    /// tombstones dropped meanwhile would not reach it: a deleted ID could come back.
    pub fn may_take_a_place(&self, p: PartitionId, with: &NodeId) -> Result<(), String> {
        let partition = self.partition(p).ok_or_else(|| format!("no partition {p}"))?;
        if partition.replicas.contains(with) {
            return Err(format!("{with} is a replica already"));
        }
        let Some(member) = self.members.get(with).filter(|m| !m.fenced) else {
            return Err(format!("{with} is not a live member"));
        };
        let epoch = member.log_epoch_of(p);
        if epoch > 0 {
            return Err(format!("{with} holds records from an earlier copy (log epoch {epoch})"));
        }
        Ok(())
    }

    /// Partition `p`'s preferred replica (the first in placement order), if another
    /// replica leads while it is live and in sync: the leader should hand over to it
    /// ([`MetaCommand::HandOver`]). Only with several partitions, where leaderships piling
    /// up on the nodes that stayed up is load out of balance; with one there is nothing to
    /// spread, and a hand-over would only pause writes.
    pub fn preferred_leader_waiting(&self, p: PartitionId) -> Option<&NodeId> {
        if self.partitions.len() < 2 {
            return None;
        }
        let partition = self.partition(p)?;
        let preferred = partition.replicas.first()?;
        let live = self.members.get(preferred).is_some_and(|m| !m.fenced);
        let waiting = partition.leader.is_some()
            && partition.leader.as_ref() != Some(preferred)
            && live
            && partition.isr.contains(preferred);
        waiting.then_some(preferred)
    }

    /// Whom the controller gives `dead`'s place in partition `p` to: of the members that
    /// may take it, the one holding the fewest copies (then the lowest id), so copies stay
    /// spread.
    pub fn replacement_for(&self, p: PartitionId) -> Option<&NodeId> {
        let candidates = self.live_members().map(|(id, _)| id).filter(|id| self.may_take_a_place(p, id).is_ok());
        candidates.min_by_key(|id| (self.copies_held(id), *id))
    }

    /// A voter other than `me` that leads no partition and is `caught_up` with the Raft
    /// log, for a controller leading a partition to hand its controller role to (so that
    /// losing one node does not cost two failovers in a row).
    pub fn controller_successor(&self, me: &NodeId, caught_up: impl Fn(&NodeId) -> bool) -> Option<&NodeId> {
        self.live_members()
            .find(|(id, m)| m.voter && *id != me && self.leaderships(id) == 0 && caught_up(id))
            .map(|(id, _)| id)
    }

    /// How many partitions list `id` among their replicas.
    pub fn copies_held(&self, id: &str) -> usize {
        self.partitions.iter().filter(|p| p.replicas.iter().any(|r| r == id)).count()
    }

    /// How many partitions `id` leads.
    pub fn leaderships(&self, id: &str) -> usize {
        self.partitions.iter().filter(|p| p.leader.as_deref() == Some(id)).count()
    }

    /// `id` leads nothing and leaves every ISR (unless it is the last member there).
    fn fence(&mut self, id: &NodeId) {
        if let Some(member) = self.members.get_mut(id) {
            member.fenced = true;
        }
        for p in 0..self.partitions.len() as PartitionId {
            let partition = &mut self.partitions[p as usize];
            // The last ISR member stays: it alone may hold every acknowledged write.
            if partition.isr.len() > 1 {
                partition.isr.remove(id);
            }
            if partition.leader.as_ref() == Some(id) {
                self.elect(p, Some(id));
            }
        }
    }

    /// Picks partition `p`'s leader from its live ISR members, preferred replicas first,
    /// unless one leads already; `deposed` is leaving. Every change of leader, including to
    /// none, takes a new epoch, so a deposed leader's epoch is stale everywhere.
    fn elect(&mut self, p: PartitionId, deposed: Option<&NodeId>) {
        let members = &self.members;
        let partition = &mut self.partitions[p as usize];
        if partition.leader.is_some() && partition.leader.as_ref() != deposed {
            return;
        }
        let live_isr = |id: &&NodeId| partition.isr.contains(*id) && members.get(*id).is_some_and(|m| !m.fenced);
        let next = partition.replicas.iter().find(live_isr).cloned();
        if next.is_none() && partition.leader.is_none() {
            return;
        }
        partition.leader = next;
        partition.epoch = partition.epoch.max(partition.epoch_floor) + 1;
    }

    /// The ids of the live members, sorted.
    pub fn live_members(&self) -> impl Iterator<Item = (&NodeId, &Member)> {
        self.members.iter().filter(|(_, m)| !m.fenced)
    }
}

#[cfg(test)]
mod tests;
