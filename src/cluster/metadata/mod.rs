//! The cluster's metadata: what the metadata quorum agrees on, and the one function that
//! changes it. Every node applies the same committed commands in the same order to
//! [`Metadata::apply`], which is pure (no clocks, no I/O), so every node derives the same
//! leaders, epochs and in-sync replica sets.
//!
//! Safety rests on three rules kept here:
//! - A leader epoch is only ever raised, and only by a committed command, so two leaders
//!   can never share one (README "Cluster mode").
//! - A new leader is chosen only from the in-sync replicas (ISR). A write is acknowledged
//!   only once every ISR member holds it, so every ISR member holds every acknowledged
//!   write, and so does any leader chosen from it. There is no "unclean" election: with no
//!   live ISR member the partition has no leader until one returns.
//! - The ISR is changed by its leader only under the epoch it leads (a deposed leader's
//!   change is refused), and by the controller when it fences a member; it never loses
//!   its last member.
//! - A replica is replaced only while it is fenced and out of the ISR: the ISR, which
//!   holds every acknowledged write, is untouched, and the new replica joins it only once
//!   its leader has seen it catch up.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::storage::Epoch;

/// A node's id, as given by `--node-id` and listed in `--cluster`.
pub type NodeId = String;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Chosen when the cluster is formed; every data dir of the cluster remembers it.
    pub cluster_id: Option<String>,
    /// Copies each record gets, counting the leader.
    pub replication_factor: usize,
    /// Members an acknowledged write must be on, counting the leader.
    pub min_insync: usize,
    pub members: BTreeMap<NodeId, Member>,
    /// The one partition (every record, for now).
    pub partition: Partition,
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
    /// in no ISR until it registers again.
    pub fenced: bool,
    /// Random per process start: a second process under the same id is told apart.
    pub incarnation: u64,
    /// The highest epoch its log held when it registered: a member holding records is
    /// never made a replica in a dead one's place (see [`Metadata::may_take_a_place`]).
    #[serde(default)]
    pub log_epoch: Epoch,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// The nodes that store it, in preference order (the first is the preferred leader).
    pub replicas: Vec<NodeId>,
    pub leader: Option<NodeId>,
    /// The current leader epoch: records its leader appends carry it.
    pub epoch: Epoch,
    pub isr: BTreeSet<NodeId>,
    /// The highest epoch any replica's log held when it registered: the next epoch is
    /// above it, so epochs never go down along a log that predates the cluster.
    pub epoch_floor: Epoch,
}

/// A change to the metadata, as proposed to the quorum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Forms the cluster; ignored once it is formed.
    Init { cluster_id: String, replication_factor: usize, min_insync: usize },
    /// A node started (or restarted) and can serve; `log_epoch` is the highest epoch its
    /// log holds records of.
    Register { id: NodeId, grpc_addr: String, client_addr: String, voter: bool, incarnation: u64, log_epoch: Epoch },
    /// The controller stopped hearing from `id` (its session expired), or `id` is shutting
    /// down: it loses leadership and leaves the ISR.
    Fence { id: NodeId, incarnation: u64, reason: FenceReason },
    /// The partition leader changes the ISR under the epoch it leads, from the ISR it last
    /// saw (`expected`): a change based on an ISR that has changed since is refused, as it
    /// could put back a member that missed writes acknowledged in between.
    AlterIsr { leader: NodeId, epoch: Epoch, expected: BTreeSet<NodeId>, isr: BTreeSet<NodeId> },
    /// The controller gives `dead`'s place among the replicas to `with`, a live member
    /// holding none (`--replace-dead-after`), from the replicas it last saw (`expected`).
    ReplaceReplica { dead: NodeId, with: NodeId, expected: Vec<NodeId> },
}

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
            MetaCommand::Init { cluster_id, replication_factor, min_insync } => {
                if self.cluster_id.is_some() {
                    return MetaOutcome::Unchanged;
                }
                self.cluster_id = Some(cluster_id.clone());
                self.replication_factor = (*replication_factor).max(1);
                self.min_insync = (*min_insync).max(1);
                MetaOutcome::Applied
            }
            MetaCommand::Register { id, grpc_addr, client_addr, voter, incarnation, log_epoch } => {
                if self.cluster_id.is_none() {
                    return MetaOutcome::Rejected("the cluster is not formed yet".to_string());
                }
                if let Some(old) = self.members.get(id) {
                    if old.incarnation == *incarnation && !old.fenced {
                        return MetaOutcome::Unchanged;
                    }
                    if !old.fenced {
                        // A new process under a live member's id: the old one is gone (or
                        // about to be). It is fenced first, so its epoch ends and the new
                        // process never leads on under it (its log may lack the tail that
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
                };
                self.members.insert(id.clone(), member);
                let partition = &mut self.partition;
                if !partition.replicas.contains(id) && partition.replicas.len() < self.replication_factor {
                    partition.replicas.push(id.clone());
                    // Only a replica's log is ever led or followed: only its epochs matter.
                    partition.epoch_floor = partition.epoch_floor.max(*log_epoch);
                }
                if partition.leader.is_none() {
                    if partition.isr.is_empty() && partition.replicas.contains(id) {
                        // The first replica to arrive starts the partition, alone in its ISR.
                        partition.isr.insert(id.clone());
                    }
                    self.elect(None);
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
            MetaCommand::AlterIsr { leader, epoch, expected, isr } => {
                let partition = &self.partition;
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
                self.partition.isr = isr.clone();
                MetaOutcome::Applied
            }
            MetaCommand::ReplaceReplica { dead, with, expected } => match self.replacement(dead, with, expected) {
                Err(why) => MetaOutcome::Rejected(why),
                Ok(at) => {
                    // Its log is empty (see `may_take_a_place`): no epoch floor to raise.
                    self.partition.replicas[at] = with.clone();
                    MetaOutcome::Applied
                }
            },
        }
    }

    /// Where `dead` sits among the replicas, if `with` may take its place.
    fn replacement(&self, dead: &NodeId, with: &NodeId, expected: &[NodeId]) -> Result<usize, String> {
        let partition = &self.partition;
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
        self.may_take_a_place(with)?;
        Ok(at)
    }

    /// Whether member `with` may take a dead replica's place: alive, no replica yet, and
    /// registered with an empty log. One holding records (a replica replaced earlier, back
    /// with its old copy) would resume from that copy, and tombstones dropped meanwhile
    /// would not reach it: a deleted ID could come back.
    pub fn may_take_a_place(&self, with: &NodeId) -> Result<(), String> {
        if self.partition.replicas.contains(with) {
            return Err(format!("{with} is a replica already"));
        }
        let Some(member) = self.members.get(with).filter(|m| !m.fenced) else {
            return Err(format!("{with} is not a live member"));
        };
        if member.log_epoch > 0 {
            return Err(format!("{with} holds records from an earlier copy (log epoch {})", member.log_epoch));
        }
        Ok(())
    }

    /// `id` leads nothing and leaves the ISR (unless it is the last member there).
    fn fence(&mut self, id: &NodeId) {
        if let Some(member) = self.members.get_mut(id) {
            member.fenced = true;
        }
        let partition = &mut self.partition;
        // The last ISR member stays: it alone may hold every acknowledged write.
        if partition.isr.len() > 1 {
            partition.isr.remove(id);
        }
        if partition.leader.as_ref() == Some(id) {
            self.elect(Some(id));
        }
    }

    /// Picks a leader from the live ISR members, preferred replicas first, unless one
    /// leads already; `deposed` is leaving. Every change of leader, including to none,
    /// takes a new epoch, so a deposed leader's epoch is stale everywhere.
    fn elect(&mut self, deposed: Option<&NodeId>) {
        let partition = &mut self.partition;
        if partition.leader.is_some() && partition.leader.as_ref() != deposed {
            return;
        }
        let members = &self.members;
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
