//! A node in cluster mode: follows the metadata quorum's decisions. The driver turns each
//! committed metadata change into a replication switch (lead, follow, wait for a leader),
//! and while this node leads it keeps the in-sync replica set honest: a follower that has
//! not caught up for the lag timeout is proposed out, one that has caught up is proposed in
//! (after the leader has started waiting for it, so it holds every acknowledged write by the
//! time the quorum lists it).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::metadata::{MetaCommand, MetaOutcome, Metadata};
use crate::cluster::quorum::Quorum;
use crate::replication::{LeaderInfo, Position, Replication};
use crate::storage::Offset;

use super::NodeError;

/// How often a leader reviews its ISR and every node checks its lease. Cheap: a few
/// comparisons, no I/O.
const TICK: Duration = Duration::from_millis(100);
/// A leader hands a partition to its preferred replica between writes, so that none is
/// caught mid-way; under writes that never pause it hands over after this long anyway
/// (the writes then in flight are answered that leadership changed).
const HAND_OVER_UNDER_LOAD: Duration = Duration::from_secs(10);

/// What a node in cluster mode is started with.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `--cluster`: the metadata quorum's voters, (node id, gRPC address).
    pub voters: Vec<(String, String)>,
    /// A node not heard from for this long is fenced (`--session-timeout`).
    pub session_timeout: Duration,
    /// A replica fenced this long is replaced (`--replace-dead-after`); `None`: never.
    pub replace_dead_after: Option<Duration>,
    /// Copies of each record, counting the leader (`--replication-factor`).
    pub replication_factor: usize,
    /// Members an acknowledged write is on, counting the leader (`--min-insync`).
    pub min_insync: usize,
    /// Partitions the records are spread over (`--partitions`), fixed when the cluster
    /// forms; every node of the cluster is started with the same number.
    pub partitions: u32,
}

pub(super) struct Driver {
    quorum: Arc<Quorum>,
    replication: Arc<Replication>,
    node_id: String,
    /// A follower not caught up for this long leaves the ISR.
    lag_timeout: Duration,
    identity: Identity,
    /// Per follower: when it last held everything the leader had one tick before.
    caught_up: HashMap<String, Instant>,
    /// The leader's end as of the previous tick.
    previous_end: Offset,
    /// When this node began leading (a follower never seen caught up is judged from it).
    leading_since: Option<Instant>,
    /// Since when the preferred replica has been ready to take this partition over.
    hand_over_due: Option<Instant>,
    /// The ISR change in flight, at most one.
    proposal: Option<JoinHandle<Vec<String>>>,
    /// What `<data-dir>/cluster` was last found to agree with, so it is read once.
    identity_checked: Option<String>,
    /// `--partitions`: the cluster's metadata must say the same.
    partitions: u32,
}

impl Driver {
    pub(super) fn new(
        quorum: Arc<Quorum>,
        replication: Arc<Replication>,
        node_id: String,
        config: &ClusterConfig,
        identity: Identity,
    ) -> Driver {
        Driver {
            quorum,
            replication,
            node_id,
            lag_timeout: config.session_timeout,
            identity,
            caught_up: HashMap::new(),
            previous_end: 0,
            leading_since: None,
            hand_over_due: None,
            proposal: None,
            identity_checked: None,
            partitions: config.partitions,
        }
    }

    /// Runs until `stopping`; an error is fatal to the node (a data dir of another cluster,
    /// a log that cannot record its epoch).
    pub(super) async fn run(mut self, mut stopping: watch::Receiver<bool>) -> Result<(), NodeError> {
        let mut metadata = self.quorum.metadata();
        let mut refusal = self.quorum.refusal();
        // The session may have been refused before this subscribed, which `changed` misses.
        if let Some(why) = refusal.borrow_and_update().clone() {
            return Err(NodeError::Refused(why));
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changed = metadata.changed() => if changed.is_err() { break },
                Ok(()) = refusal.changed() => if let Some(why) = refusal.borrow().clone() {
                    // Serving on would tell clients an election is under way, forever.
                    return Err(NodeError::Refused(why));
                },
                _ = tick.tick() => {}
                _ = stopping.wait_for(|&stop| stop) => break,
            }
            let current = Arc::clone(&metadata.borrow_and_update());
            self.settle_proposal().await;
            self.reconcile(&current).await?;
            if matches!(self.replication.position(), Position::Leading { .. }) {
                self.review_isr(&current);
            }
        }
        if let Some(proposal) = self.proposal.take() {
            proposal.abort();
        }
        self.replication.leave().await;
        Ok(())
    }

    /// Brings replication in line with `meta`.
    async fn reconcile(&mut self, meta: &Metadata) -> Result<(), NodeError> {
        let Some(cluster_id) = &meta.cluster_id else { return Ok(()) };
        if self.identity_checked.as_ref() != Some(cluster_id) {
            let formed = meta.partitions.len();
            if formed != self.partitions as usize {
                // Serving on would put IDs in other partitions than the cluster's nodes do.
                return Err(NodeError::Config(format!(
                    "cluster {cluster_id} has {formed} partition(s), but this node was started with --partitions {}; \
                     a cluster's partition count is fixed when it forms: start every node with --partitions {formed}",
                    self.partitions
                )));
            }
            self.identity.check(cluster_id, &self.node_id)?;
            self.identity_checked = Some(cluster_id.clone());
        }
        let partition = meta.partition_or_empty(self.replication.partition());
        let epoch = partition.epoch;
        let current = self.replication.position();
        // Only what the metadata says of this process counts: until it has registered, a
        // leadership recorded under this id belongs to the previous process, whose epoch
        // this one must never lead on under.
        let incarnation = self.quorum.incarnation();
        let me_alive = meta.members.get(&self.node_id).is_some_and(|m| !m.fenced && m.incarnation == incarnation);
        let epoch_error = |cause| NodeError::Epoch(cause);
        match &partition.leader {
            Some(leader) if *leader == self.node_id && me_alive => {
                if !self.quorum.lease_valid() {
                    // Not heard back from the controller lately: it may be fencing us.
                    if matches!(current, Position::Leading { .. }) {
                        self.replication.suspend();
                        self.leading_since = None;
                    }
                    return Ok(());
                }
                let replicas = partition.replicas.clone();
                match current {
                    Position::Leading { epoch: led, .. } if led == epoch => {
                        self.replication.update_isr(partition.isr.clone(), replicas, meta.min_insync);
                    }
                    _ => {
                        self.replication
                            .lead(epoch, partition.isr.clone(), replicas, meta.min_insync)
                            .await
                            .map_err(epoch_error)?;
                        self.leading_since = Some(Instant::now());
                        self.caught_up.clear();
                        self.previous_end = self.replication.high_watermark();
                    }
                }
            }
            Some(leader) if *leader != self.node_id => {
                let Some(member) = meta.members.get(leader) else { return Ok(()) };
                let info = LeaderInfo {
                    id: leader.clone(),
                    grpc_addr: member.grpc_addr.clone(),
                    client_addr: member.client_addr.clone(),
                };
                let replicate = partition.replicas.contains(&self.node_id);
                // A node that registers after the leader was named becomes a replica then.
                let same = matches!(&current, Position::Following { leader: l, epoch: e, replicating: r }
                    if *l == info && *e == epoch && *r == replicate);
                if !same {
                    self.leading_since = None;
                    self.replication.follow_leader(info, epoch, replicate).await.map_err(epoch_error)?;
                }
            }
            _ => {
                if !matches!(current, Position::Electing { epoch: e } if e == epoch) {
                    self.leading_since = None;
                    self.replication.await_leader(epoch).await.map_err(epoch_error)?;
                }
            }
        }
        Ok(())
    }

    /// A leader's ISR review: one proposal at a time.
    fn review_isr(&mut self, meta: &Metadata) {
        let now = Instant::now();
        let end = self.replication.log_end();
        let previous_end = std::mem::replace(&mut self.previous_end, end);
        if self.proposal.as_ref().is_some_and(|p| !p.is_finished()) {
            return;
        }
        let partition = meta.partition_or_empty(self.replication.partition());
        let since = self.leading_since.unwrap_or(now);
        for replica in partition.replicas.iter().filter(|r| **r != self.node_id) {
            let (durable, connected) = self.replication.follower_progress(replica);
            if durable >= previous_end {
                self.caught_up.insert(replica.clone(), now);
            }
            let caught_up_at = self.caught_up.get(replica).copied().unwrap_or(since).max(since);
            let fenced = meta.members.get(replica).is_none_or(|m| m.fenced);
            if partition.isr.contains(replica) {
                if now.duration_since(caught_up_at) > self.lag_timeout {
                    tracing::warn!(follower = %replica, durable, end, "a follower fell behind: proposing it out of the ISR");
                    let mut isr = partition.isr.clone();
                    isr.remove(replica);
                    self.propose_isr(meta, isr);
                    return;
                }
                continue;
            }
            match self.replication.joining(replica) {
                Some(_) if !connected || fenced => self.replication.abandon_joining(replica),
                Some(target) if durable >= target => {
                    tracing::info!(follower = %replica, "a follower caught up: proposing it into the ISR");
                    let mut isr = partition.isr.clone();
                    isr.insert(replica.clone());
                    self.propose_isr(meta, isr);
                    return;
                }
                Some(_) => {}
                None if connected && !fenced && durable >= previous_end => self.replication.begin_joining(replica),
                None => {}
            }
        }
        self.offer_leadership(meta, previous_end, end);
    }

    /// With several partitions, a leader that is not its partition's preferred replica
    /// (the first in placement order, back and in sync after a restart) hands leadership
    /// to it once it holds the whole log, so leaderships spread over the nodes again. Safe
    /// at any time: a write is acknowledged only once every ISR member holds it, and the
    /// preferred replica is one, so it holds every acknowledged write; once it leads it no
    /// longer fetches from here, so nothing more is acknowledged here.
    fn offer_leadership(&mut self, meta: &Metadata, previous_end: Offset, end: Offset) {
        let p = self.replication.partition();
        let Some(preferred) = meta.preferred_leader_waiting(p) else {
            self.hand_over_due = None;
            return;
        };
        let (durable, connected) = self.replication.follower_progress(preferred);
        if !connected || durable < previous_end {
            self.hand_over_due = None;
            return;
        }
        // Between writes (none this tick, the preferred replica holding all) nothing is
        // caught by the change; every acknowledged write is on it whenever it is handed.
        let due = *self.hand_over_due.get_or_insert_with(Instant::now);
        let quiet = end == previous_end && durable >= end;
        if !quiet && due.elapsed() < HAND_OVER_UNDER_LOAD {
            return;
        }
        self.hand_over_due = None;
        tracing::info!(partition = p, to = %preferred, "handing leadership to the partition's preferred replica");
        let command = MetaCommand::HandOver {
            partition: p,
            leader: self.node_id.clone(),
            epoch: meta.partition_or_empty(p).epoch,
        };
        self.propose(command, Vec::new());
    }

    fn propose_isr(&mut self, meta: &Metadata, isr: BTreeSet<String>) {
        let partition = meta.partition_or_empty(self.replication.partition());
        let expected = partition.isr.clone();
        let joining: Vec<String> = isr.difference(&expected).cloned().collect();
        let command = MetaCommand::AlterIsr {
            partition: self.replication.partition(),
            leader: self.node_id.clone(),
            epoch: partition.epoch,
            expected,
            isr,
        };
        self.propose(command, joining);
    }

    /// Proposes `command` (an ISR change or a hand-over) as the one proposal in flight;
    /// `joining` are the followers it adds to the ISR.
    fn propose(&mut self, command: MetaCommand, joining: Vec<String>) {
        let quorum = Arc::clone(&self.quorum);
        self.proposal = Some(tokio::spawn(async move {
            match quorum.propose(command).await {
                // Refused: those being added are not in the ISR and will not be.
                Ok(MetaOutcome::Rejected(why)) => {
                    tracing::warn!(%why, "the proposed change was refused");
                    joining
                }
                // Applied, or unknown (it may still commit): the joiners stay waited for,
                // and the next review proposes again if the metadata does not show them.
                Ok(_) => Vec::new(),
                Err(err) => {
                    tracing::warn!(%err, "the proposed change may not have been made; it will be proposed again");
                    Vec::new()
                }
            }
        }));
    }

    /// The outcome of the last ISR proposal, once it is known: followers whose addition was
    /// refused are no longer waited for.
    async fn settle_proposal(&mut self) {
        let finished = self.proposal.as_ref().is_some_and(JoinHandle::is_finished);
        if !finished {
            return;
        }
        let Some(proposal) = self.proposal.take() else { return };
        match proposal.await {
            Ok(refused) => refused.iter().for_each(|id| self.replication.abandon_joining(id)),
            // Its joiners stay waited for: the safe side until a proposal says more.
            Err(err) => tracing::error!(%err, "the ISR proposal task failed"),
        }
    }
}

/// Runs one driver per partition this node keeps a log of, until `stopping`; the first
/// to fail ends them all (the node then shuts down).
pub(super) async fn run_drivers(drivers: Vec<Driver>, stopping: watch::Receiver<bool>) -> Result<(), NodeError> {
    let mut running = tokio::task::JoinSet::new();
    for driver in drivers {
        running.spawn(driver.run(stopping.clone()));
    }
    while let Some(ended) = running.join_next().await {
        match ended {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return Err(err),
            Err(err) => return Err(NodeError::Replication(err.to_string())),
        }
    }
    Ok(())
}

const IDENTITY_FILE: &str = "cluster";

/// Whether `data_dir` has joined a cluster (it holds the file [`Identity`] writes).
pub(crate) fn is_cluster_member(data_dir: &std::path::Path) -> bool {
    data_dir.join(IDENTITY_FILE).exists()
}

/// `<data-dir>/cluster`: the cluster and node this data dir belongs to, written the first
/// time the node joins; a data dir is never used by another cluster or under another id.
/// Clones share one lock: every partition's driver checks the file, and two first writes
/// at once would race on the temporary file the replacement goes through.
#[derive(Clone)]
pub(super) struct Identity {
    path: std::path::PathBuf,
    writing: Arc<std::sync::Mutex<()>>,
}

impl Identity {
    pub(super) fn new(data_dir: &Path) -> Identity {
        Identity { path: data_dir.join(IDENTITY_FILE), writing: Arc::default() }
    }

    /// What the file records; `None` before the node first joined.
    fn read(&self) -> Result<Option<Recorded>, NodeError> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => Ok(Some(Recorded(text))),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(NodeError::Config(format!("cannot read {}: {err}", self.path.display()))),
        }
    }

    /// Refuses to start a cluster member's data dir outside its cluster: epochs there come
    /// from the quorum, and one begun here could repeat one the quorum gives another leader.
    pub(super) fn refuse_outside_cluster(&self) -> Result<(), NodeError> {
        let Some(file) = self.read()? else { return Ok(()) };
        let cluster = file.field("cluster_id").unwrap_or_default();
        Err(NodeError::Config(format!(
            "{} says this data dir belongs to cluster {cluster}: start it with that cluster's --cluster \
             (and its --node-id), or give this node another data dir",
            self.path.display()
        )))
    }

    fn check(&self, cluster_id: &str, node_id: &str) -> Result<(), NodeError> {
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let expected = format!("cluster_id={cluster_id}\nnode_id={node_id}\n");
        match self.read()? {
            Some(Recorded(text)) if text == expected => Ok(()),
            Some(Recorded(text)) => Err(NodeError::Config(format!(
                "{} says this data dir belongs to {}, but this node is {node_id} in cluster {cluster_id}; \
                 give each node its own data dir (an empty one to join a new cluster)",
                self.path.display(),
                text.trim().replace('\n', ", ")
            ))),
            None => crate::storage::replace_file(&crate::storage::RealFs, &self.path, expected.as_bytes())
                .map_err(|cause| NodeError::Config(format!("cannot write {}: {cause}", self.path.display()))),
        }
    }

    /// Refuses a data dir that belongs to another node id, before anything is started.
    pub(super) fn check_node(&self, node_id: &str) -> Result<(), NodeError> {
        let Some(file) = self.read()? else { return Ok(()) };
        let recorded = file.field("node_id").unwrap_or_default();
        if recorded != node_id {
            let data_dir = self.path.parent().unwrap_or(&self.path);
            return Err(NodeError::Config(format!(
                "the data dir {} belongs to node {recorded}, not {node_id}; start it with --node-id {recorded} \
                 or give this node its own data dir",
                data_dir.display()
            )));
        }
        Ok(())
    }
}

/// The text of `<data-dir>/cluster`: `key=value` lines.
struct Recorded(String);

impl Recorded {
    /// The value of `key`'s line, if there is one.
    fn field(&self, key: &str) -> Option<&str> {
        self.0.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
    }
}

/// The quorum's settings for this node.
pub(super) fn quorum_config(
    config: &super::NodeConfig,
    cluster: &ClusterConfig,
    node_id: &str,
    grpc_addr: std::net::SocketAddr,
    client_addr: std::net::SocketAddr,
    log_epoch: crate::cluster::quorum::LogEpoch,
    node_tls: Option<crate::tls::GrpcTls>,
) -> crate::cluster::quorum::QuorumConfig {
    crate::cluster::quorum::QuorumConfig {
        node_id: node_id.to_string(),
        voters: cluster.voters.clone(),
        grpc_addr: grpc_addr.to_string(),
        client_addr: client_addr.to_string(),
        dir: config.data_dir.join("quorum"),
        session_timeout: cluster.session_timeout,
        replace_dead_after: cluster.replace_dead_after,
        replication_factor: cluster.replication_factor,
        partitions: cluster.partitions,
        min_insync: cluster.min_insync,
        password: config.password.clone(),
        node_tls,
        bind_source_addr: config.bind_source_addr,
        log_epoch,
    }
}

/// What the client server sees of a cluster member: replication's answers, and the
/// cluster's figures added to STATS.
pub(super) struct Member {
    replication: Arc<Replication>,
    quorum: Arc<Quorum>,
}

impl Member {
    pub(super) fn new(replication: Arc<Replication>, quorum: Arc<Quorum>) -> Member {
        Member { replication, quorum }
    }

    /// A leader whose lease lapsed may have been replaced: it serves nothing more until
    /// its driver hears from the quorum (checked on every request, not only on the
    /// driver's timer, so a leader that wakes from a pause answers nothing stale).
    fn lease_lapsed(&self) -> Option<crate::server::Refusal> {
        (self.replication.is_leading() && !self.quorum.lease_valid()).then(|| {
            crate::server::Refusal("this node lost touch with the cluster and may no longer lead; retry".to_string())
        })
    }
}

impl crate::server::Cluster for Member {
    fn admit_write(&self) -> Result<(), crate::server::Refusal> {
        if let Some(refusal) = self.lease_lapsed() {
            return Err(refusal);
        }
        self.replication.admit_write()
    }

    fn appended(&self, next_offset: Offset) {
        self.replication.appended(next_offset);
    }

    fn replicated(&self, offset: Offset) -> Option<crate::server::Replicated<'_>> {
        if let Some(refusal) = self.lease_lapsed() {
            return Some(Box::pin(std::future::ready(Err(refusal))));
        }
        self.replication.replicated(offset)
    }

    fn role(&self) -> &'static str {
        self.replication.role()
    }

    fn unavailable(&self, seen: String) -> String {
        if !self.quorum.answers() {
            // Without a quorum no leader can be named or replaced, so waiting longer helps
            // only once enough voters are back.
            return format!(
                "{seen}; the cluster has no quorum: the metadata quorum does not answer (a majority of the \
                 voters {} must be up and reach each other)",
                self.quorum.voter_ids().join(",")
            );
        }
        let meta = self.quorum.metadata().borrow().clone();
        let partition = meta.partition_or_empty(self.replication.partition());
        let live = |id: &String| meta.members.get(id).is_some_and(|m| !m.fenced);
        if partition.leader.is_none() && !partition.isr.iter().any(live) {
            let isr: Vec<&str> = partition.isr.iter().map(String::as_str).collect();
            return format!(
                "no leader: no in-sync replica is alive ({} may hold acknowledged writes no other node has); \
                 writes wait for one to return",
                isr.join(",")
            );
        }
        seen
    }

    fn routes(&self) -> Option<watch::Receiver<crate::server::Route>> {
        self.replication.routes()
    }

    fn stats(&self) -> Vec<(String, String)> {
        let meta = self.quorum.metadata().borrow().clone();
        let mut pairs = vec![
            ("cluster".to_string(), meta.cluster_id.clone().unwrap_or_else(|| "forming".to_string())),
            ("controller".to_string(), self.quorum.controller().unwrap_or_else(|| "none".to_string())),
        ];
        pairs.extend(self.replication.stats());
        let partition = meta.partition_or_empty(self.replication.partition());
        let isr: Vec<&str> = partition.isr.iter().map(String::as_str).collect();
        pairs.push(("isr".to_string(), isr.join(",")));
        pairs.push(("min_insync".to_string(), meta.min_insync.to_string()));
        pairs.push(("replicas".to_string(), partition.replicas.join(",")));
        pairs.push(("partitions".to_string(), meta.partitions.len().to_string()));
        // Leaderships the quorum gives this node (whether or not it serves them yet).
        pairs.push(("partitions_led".to_string(), meta.leaderships(self.quorum.node_id()).to_string()));
        if meta.partitions.len() > 1 {
            // Every partition's leader, epoch, ISR and replicas, for `msglog cluster status`.
            for (p, partition) in meta.partitions.iter().enumerate() {
                let isr: Vec<&str> = partition.isr.iter().map(String::as_str).collect();
                pairs.push((
                    format!("partition.{p}"),
                    format!(
                        "leader:{},epoch:{},isr:{},replicas:{}",
                        partition.leader.as_deref().unwrap_or("none"),
                        partition.epoch,
                        isr.join("+"),
                        partition.replicas.join("+")
                    ),
                ));
            }
        }
        // `msglog cluster status` visits every member from here: `id@client address`.
        let members: Vec<String> = meta.members.iter().map(|(id, m)| format!("{id}@{}", m.client_addr)).collect();
        pairs.push(("members".to_string(), members.join(",")));
        let fenced: Vec<&str> = meta.members.iter().filter(|(_, m)| m.fenced).map(|(id, _)| id.as_str()).collect();
        pairs.push(("fenced".to_string(), fenced.join(",")));
        pairs
    }
}
