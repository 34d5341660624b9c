//! The controller's duties, run only on the Raft leader: forming the cluster's metadata,
//! tracking members' sessions from their heartbeats, fencing the silent, and adding
//! non-voters to the group as learners so they receive the metadata.

use std::collections::{HashMap, HashSet};
use std::sync::Weak;
use std::time::{Duration, Instant};

use openraft::{BasicNode, ReadPolicy};
use tokio::time::MissedTickBehavior;

use super::proto::heartbeat_reply::Status as HeartbeatStatus;
use super::{Quorum, QuorumError};
use crate::cluster::metadata::{FenceReason, MetaCommand, MetaOutcome, Metadata, PartitionId};

/// How long the controller may take to confirm it still leads before a heartbeat is
/// answered "not controller".
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(1);

/// When the controller last heard from each member. Kept in memory only: a controller
/// that takes over starts every member's clock at its takeover.
#[derive(Default)]
pub struct Sessions {
    /// The term this node controls in and when it noticed it took over; `None` while it
    /// is not the controller. A new term is a new takeover even if this node led before:
    /// members may have heartbeated another controller in between.
    took_over: Option<(u64, Instant)>,
    last_seen: HashMap<String, Instant>,
    /// Members being fenced: their heartbeats are not answered "ok" meanwhile, so none
    /// gets a lease from this controller while it fences them.
    fencing: HashSet<String>,
    /// When this controller last handed its role over because it also leads a partition.
    stepped_aside: Option<Instant>,
    /// Since when this controller has seen each replica fenced (or not registered), and
    /// whether it has warned that no spare member can take its place.
    dead_since: HashMap<String, (Instant, bool)>,
}

impl Sessions {
    /// When the controller last heard from `id` (its takeover at the earliest).
    fn heard_from(&self, id: &str) -> Option<Instant> {
        let (_, took_over) = self.took_over?;
        Some(self.last_seen.get(id).map_or(took_over, |seen| (*seen).max(took_over)))
    }
}

pub(super) async fn run(quorum: Weak<Quorum>) {
    let Some(tick) = quorum.upgrade().map(|q| q.config.session_timeout / 10) else { return };
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut known_controller = None;
    loop {
        ticks.tick().await;
        let Some(quorum) = quorum.upgrade() else { return };
        let controller = quorum.controller();
        if controller != known_controller {
            tracing::info!(node = %quorum.config.node_id, controller = controller.as_deref().unwrap_or("none"), "the controller changed");
            known_controller = controller;
        }
        quorum.controller_tick().await;
    }
}

impl Quorum {
    async fn controller_tick(&self) {
        if self.controlled_sessions().is_none() {
            return;
        }
        let metadata = self.metadata.borrow().clone();
        if metadata.cluster_id.is_none() {
            self.form_cluster().await;
            return;
        }
        self.fence_expired(&metadata).await;
        self.replace_dead(&metadata).await;
        self.add_learners(&metadata).await;
        self.step_aside(&metadata).await;
    }

    /// A controller that also leads a partition makes a crash of its node cost two
    /// failovers in a row: a Raft election, then a whole session timeout counted from the
    /// new controller's takeover before the dead leader is fenced. So it hands the
    /// controller role to a voter that holds its whole Raft log and leads no partition (the
    /// leaderships do not move: no write waits for this). With a partition led by every
    /// voter there is no such voter, and the role stays. At most once per session timeout,
    /// so that a transfer that does not take is not retried in a loop.
    async fn step_aside(&self, metadata: &Metadata) {
        let me = &self.config.node_id;
        if metadata.leaderships(me) == 0 {
            return;
        }
        let metrics = self.raft_metrics();
        let Some(last) = metrics.last_log_index else { return };
        let replication = metrics.replication.unwrap_or_default();
        let caught_up = |id: &String| replication.get(id).and_then(Option::as_ref).is_some_and(|m| m.index() >= last);
        let Some(successor) = metadata.controller_successor(me, caught_up).cloned() else { return };
        {
            let Some(mut sessions) = self.controlled_sessions() else { return };
            if sessions.stepped_aside.is_some_and(|at| at.elapsed() < self.config.session_timeout) {
                return;
            }
            sessions.stepped_aside = Some(Instant::now());
        }
        match self.raft.trigger().transfer_leader(successor.clone()).await {
            Ok(()) => {
                tracing::info!(node = %me, %successor, "this node leads a partition: handing the controller role over")
            }
            Err(e) => tracing::warn!(node = %me, %successor, "could not hand the controller role over: {e}"),
        }
    }

    /// Proposes a command only while this node controls: a decision taken on this
    /// controller's view of the sessions must not be carried out by another one.
    async fn propose_as_controller(&self, command: MetaCommand) -> Result<Option<MetaOutcome>, QuorumError> {
        match self.propose_here(&command, None, CONFIRM_TIMEOUT).await? {
            Ok((outcome, _)) => Ok(Some(outcome)),
            Err(_) => Ok(None),
        }
    }

    pub(super) fn init_command(&self) -> MetaCommand {
        MetaCommand::Init {
            cluster_id: random_hex(),
            replication_factor: self.config.replication_factor,
            min_insync: self.config.min_insync,
            partitions: self.config.partitions,
            // One partition keeps its replicas the first members to register, as before
            // partitions, so that nodes of the earlier version forming a cluster with this
            // one (they ignore `voters`) agree; placement over the voters is for several.
            voters: match self.config.partitions {
                1 => Vec::new(),
                _ => self.config.voters.iter().map(|(id, _)| id.clone()).collect(),
            },
        }
    }

    async fn form_cluster(&self) {
        match self.propose_as_controller(self.init_command()).await {
            Ok(Some(MetaOutcome::Applied)) => {
                tracing::info!(node = %self.config.node_id, "formed the cluster's metadata")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(node = %self.config.node_id, "could not form the cluster's metadata: {e}"),
        }
    }

    async fn fence_expired(&self, metadata: &Metadata) {
        let timeout = self.config.session_timeout;
        for (id, member) in metadata.live_members() {
            {
                // Checked and marked under one lock, so a heartbeat answered "ok" is either
                // seen here or answered after the mark (and then refused).
                let Some(mut sessions) = self.controlled_sessions() else { return };
                if sessions.heard_from(id).is_none_or(|heard| heard.elapsed() <= timeout) {
                    continue;
                }
                sessions.fencing.insert(id.clone());
            }
            tracing::info!(node = %id, incarnation = member.incarnation, "fencing a member: no heartbeat for {timeout:?}");
            let fence = MetaCommand::Fence {
                id: id.clone(),
                incarnation: member.incarnation,
                reason: FenceReason::SessionExpired,
            };
            if let Err(e) = self.propose_as_controller(fence).await {
                tracing::warn!(node = %id, "could not fence a silent member: {e}");
            }
            self.lock_sessions().fencing.remove(id);
        }
    }

    /// Gives the place of a replica fenced for `--replace-dead-after` (on this controller's
    /// clock, so a new controller waits the whole time again) to a live member that holds
    /// no copy of that partition, the one holding fewest copies of any, so the partition
    /// gets back to its replication factor and the copies stay spread. The new replica
    /// copies the log from the leader and joins the ISR once caught up. A replica still in
    /// the ISR (the last one, which may alone hold acknowledged writes) is never replaced.
    /// One replacement per tick: the next one is chosen on the metadata it left.
    async fn replace_dead(&self, metadata: &Metadata) {
        let Some(after) = self.config.replace_dead_after else { return };
        let fenced = |id: &String| metadata.members.get(id).is_none_or(|m| m.fenced);
        let due = {
            let Some(mut sessions) = self.controlled_sessions() else { return };
            let now = Instant::now();
            let replica = |id: &String| metadata.partitions.iter().any(|p| p.replicas.contains(id));
            sessions.dead_since.retain(|id, _| replica(id) && fenced(id));
            let mut due = Vec::new();
            for (p, partition) in metadata.partitions.iter().enumerate() {
                for id in partition.replicas.iter().filter(|id| fenced(id)) {
                    let (since, _) = *sessions.dead_since.entry(id.clone()).or_insert((now, false));
                    if now.duration_since(since) >= after && !partition.isr.contains(id) {
                        due.push((p as PartitionId, id.clone()));
                    }
                }
            }
            due
        };
        let mut stuck = None;
        for (p, dead) in due {
            let Some(with) = metadata.replacement_for(p).cloned() else {
                stuck.get_or_insert((p, dead));
                continue;
            };
            let replicas = metadata.partition_or_empty(p).replicas.clone();
            tracing::info!(partition = p, %dead, %with, "replacing a replica gone for {after:?}: its copy will be made on another node");
            let command = MetaCommand::ReplaceReplica {
                partition: p,
                dead: dead.clone(),
                with: with.clone(),
                expected: replicas,
            };
            match self.propose_as_controller(command).await {
                Ok(Some(MetaOutcome::Rejected(why))) => {
                    tracing::warn!(partition = p, %dead, %with, %why, "replacing a dead replica was refused")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(partition = p, %dead, %with, "could not replace a dead replica: {e}"),
            }
            return;
        }
        let Some((p, dead)) = stuck else { return };
        let mut sessions = self.lock_sessions();
        if let Some((_, warned @ false)) = sessions.dead_since.get_mut(&dead) {
            *warned = true;
            tracing::warn!(partition = p, %dead, replicas = ?metadata.partition_or_empty(p).replicas,
                "a replica has been gone for {after:?} but no live member with an empty log can take its place: the \
                 partition has fewer copies than --replication-factor until a node joins or it returns");
        }
    }

    /// Every live non-voter becomes a learner, so the metadata reaches it.
    async fn add_learners(&self, metadata: &Metadata) {
        let membership = self.raft_metrics().membership_config.clone();
        for (id, member) in metadata.live_members().filter(|(_, m)| !m.voter) {
            if membership.membership().get_node(id).is_some_and(|node| node.addr == member.grpc_addr) {
                continue;
            }
            self.add_learner(id, &member.grpc_addr).await;
        }
    }

    pub(super) async fn add_learner(&self, id: &str, grpc_addr: &str) {
        match self.raft.add_learner(id.to_string(), BasicNode::new(grpc_addr), false).await {
            Ok(_) => {
                tracing::info!(node = %id, addr = %grpc_addr, "added a non-voter to the metadata quorum as a learner")
            }
            Err(e) => tracing::warn!(node = %id, "could not add a non-voter as a learner: {e}"),
        }
    }

    /// Answers a member's heartbeat: only once this node confirmed it still leads, so an
    /// answer extends the member's lease only while no other controller can fence it.
    pub(super) async fn answer_heartbeat(&self, id: &str, incarnation: u64) -> HeartbeatStatus {
        if !self.raft.is_leader() {
            return HeartbeatStatus::NotController;
        }
        let confirmed =
            tokio::time::timeout(CONFIRM_TIMEOUT, self.raft.ensure_linearizable(ReadPolicy::ReadIndex)).await;
        if !matches!(confirmed, Ok(Ok(_))) {
            return HeartbeatStatus::NotController;
        }
        let live = self.metadata.borrow().members.get(id).is_some_and(|m| m.incarnation == incarnation && !m.fenced);
        let Some(mut sessions) = self.controlled_sessions() else { return HeartbeatStatus::NotController };
        if !live || sessions.fencing.contains(id) {
            return HeartbeatStatus::Register;
        }
        sessions.last_seen.insert(id.to_string(), Instant::now());
        HeartbeatStatus::Ok
    }

    /// Refuses a `Register` that would replace a live process under the same id: only once
    /// that process's session expires may a new one take the id.
    pub(super) fn admit(&self, command: &MetaCommand) -> Result<(), QuorumError> {
        let MetaCommand::Register { id, incarnation, .. } = command else { return Ok(()) };
        let metadata = self.metadata.borrow().clone();
        let Some(member) = metadata.members.get(id) else { return Ok(()) };
        if member.fenced || member.incarnation == *incarnation {
            return Ok(());
        }
        let heard = self.controlled_sessions().and_then(|sessions| sessions.heard_from(id));
        if heard.is_some_and(|heard| heard.elapsed() <= self.config.session_timeout) {
            return Err(QuorumError::Busy(format!(
                "node id {id} is in use by a live process at {}; retrying until its session expires",
                member.grpc_addr
            )));
        }
        Ok(())
    }

    /// A member that just registered is heard from now.
    pub(super) fn heard(&self, id: &str) {
        if let Some(mut sessions) = self.controlled_sessions() {
            sessions.last_seen.insert(id.to_string(), Instant::now());
        }
    }

    /// The sessions, if this node is the controller; the first call in a new term starts
    /// every member's clock.
    fn controlled_sessions(&self) -> Option<std::sync::MutexGuard<'_, Sessions>> {
        let metrics = self.raft_metrics();
        let mut sessions = self.lock_sessions();
        if !metrics.state.is_leader() {
            sessions.took_over = None;
            return None;
        }
        if sessions.took_over.is_none_or(|(term, _)| term != metrics.current_term) {
            sessions.took_over = Some((metrics.current_term, Instant::now()));
            sessions.last_seen.clear();
            sessions.dead_since.clear();
        }
        Some(sessions)
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A cluster id: 16 random hex digits.
fn random_hex() -> String {
    format!("{:016x}", crate::random::random_u64())
}
