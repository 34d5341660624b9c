//! The metadata quorum: a Raft group (openraft) among the `--cluster` voters that holds
//! the cluster's [`Metadata`], with every other node following it as a learner.
//!
//! Besides Raft, it runs the members' sessions: every node heartbeats the controller (the
//! Raft leader), which fences a member it has not heard from for the session timeout. A
//! node's lease ([`Quorum::lease_valid`]) runs from when it *sent* a heartbeat that the
//! controller answered after confirming it still leads, so it always lapses before the
//! controller may fence it: a partitioned partition leader stops serving in time.
//!
//! The Raft library's types stay inside this module.

mod controller;
mod files;
mod log_store;
mod network;
mod propose;
mod service;
mod session;
mod startup;
mod state_machine;
#[cfg(test)]
mod tests;
mod types;

#[allow(clippy::all, clippy::pedantic)]
mod proto {
    tonic::include_proto!("msglog.quorum.v1");
}

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::metadata::{FenceReason, MetaCommand, MetaOutcome, Metadata};
use crate::server::Password;
use crate::storage::Epoch;

pub use service::QuorumService;

/// Voters a Raft group may have: an odd number, so a split leaves one side a majority
/// (any number with several partitions, see [`voter_map`]).
const MAX_VOTERS: usize = 7;
/// How long a controlled shutdown waits for its own fence to commit.
const SHUTDOWN_FENCE_WAIT: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub struct QuorumConfig {
    pub node_id: String,
    /// `--cluster`: the voters, (node id, gRPC address), same list on every node.
    pub voters: Vec<(String, String)>,
    /// This node's own gRPC and client addresses (as others reach them).
    pub grpc_addr: String,
    pub client_addr: String,
    /// Durable Raft state (vote, log, snapshot): `<data-dir>/quorum`.
    pub dir: PathBuf,
    /// A dead node is fenced after this long without a heartbeat (`--session-timeout`).
    pub session_timeout: Duration,
    /// A replica fenced this long is replaced by a live member that holds none
    /// (`--replace-dead-after`); `None`: never.
    pub replace_dead_after: Option<Duration>,
    /// Used by the controller that forms the cluster (`MetaCommand::Init`).
    pub replication_factor: usize,
    /// Partitions of the cluster it forms (`--partitions`): with several, they are placed
    /// over the voters listed in `voters`.
    pub partitions: u32,
    pub min_insync: usize,
    /// Presented on every quorum call, required on incoming ones.
    pub password: Option<Password>,
    /// Mutual TLS (`--tls-ca`): tells a node's certificate from a consumer's, so only
    /// nodes take part in the quorum.
    pub node_tls: Option<crate::tls::GrpcTls>,
    pub bind_source_addr: Option<std::net::IpAddr>,
    /// Highest epoch each of this node's logs holds (by partition), read at every
    /// `Register`: a node that copied records since it started must not register as
    /// holding none.
    pub log_epoch: LogEpoch,
}

/// Where the highest epoch of each of this node's logs is read from, by partition.
#[derive(Clone)]
pub struct LogEpoch(Arc<dyn Fn() -> Vec<Epoch> + Send + Sync>);

impl LogEpoch {
    /// `read` gives one epoch per partition, partition 0 first.
    pub fn new(read: impl Fn() -> Vec<Epoch> + Send + Sync + 'static) -> LogEpoch {
        LogEpoch(Arc::new(read))
    }

    /// Always `epoch`, one partition (a node without a log of its own, in tests).
    pub fn fixed(epoch: Epoch) -> LogEpoch {
        LogEpoch::new(move || vec![epoch])
    }

    pub fn now(&self) -> Vec<Epoch> {
        (self.0)()
    }
}

impl std::fmt::Debug for LogEpoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LogEpoch({:?})", self.now())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QuorumError {
    #[error("invalid --cluster: {0}")]
    InvalidVoters(String),
    #[error(
        "--cluster lists the voters {ours}, but the metadata quorum's voters are {committed}: \
         give every node the same --cluster (a data dir stays with the cluster it joined)"
    )]
    VoterMismatch { ours: String, committed: String },
    #[error("the quorum dir {} is unusable: {source}", dir.display())]
    Storage { dir: PathBuf, source: std::io::Error },
    #[error("no controller: {0}")]
    NoController(String),
    /// Refused for now; worth retrying (for example, the id is held by a live process).
    #[error("{0}")]
    Busy(String),
    #[error("the controller refused: {0}")]
    Refused(String),
    #[error("the metadata quorum failed: {0}")]
    Raft(String),
    #[error("the metadata quorum is shut down")]
    Stopped,
}

pub struct Quorum {
    config: QuorumConfig,
    /// Tells this process apart from an earlier or later one under the same node id.
    incarnation: u64,
    /// `config.voters`, checked, by id.
    voters: VoterMap,
    voter: bool,
    raft: types::Raft,
    peers: network::Peers,
    metadata: watch::Receiver<Arc<Metadata>>,
    applied_index: watch::Receiver<Option<u64>>,
    /// Until when this node may act on its leases (monotonic clock).
    lease_until: Mutex<Option<Instant>>,
    /// The controller's view of members' sessions (in memory, never in the log).
    sessions: Mutex<controller::Sessions>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Why the cluster refused this node's registration for good (another cluster's
    /// password, a consumer's certificate): the node cannot serve and should stop.
    refusal: watch::Sender<Option<String>>,
}

impl Quorum {
    /// Starts the Raft node. A voter on a fresh dir forms the group from `voters` unless a
    /// reachable voter already holds it; a non-voter starts as a learner, added by the
    /// controller when it registers. Fails if `voters` differs from the group's voters.
    pub async fn start(config: QuorumConfig) -> Result<Arc<Quorum>, QuorumError> {
        Quorum::start_with_tls(config, None).await
    }

    /// [`Quorum::start`] whose calls to peers present this node's certificate (`--tls-ca`).
    pub async fn start_with_tls(
        config: QuorumConfig,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> Result<Arc<Quorum>, QuorumError> {
        let voters = voter_map(&config.voters, config.partitions > 1)?;
        let quorum = Arc::new(startup::open(config, voters, tls).await?);
        if let Err(e) = quorum.form(&quorum.voters).await {
            let _ = quorum.raft.shutdown().await;
            return Err(e);
        }
        let session = tokio::spawn(session::run(Arc::downgrade(&quorum)));
        let controller = tokio::spawn(controller::run(Arc::downgrade(&quorum)));
        quorum.lock_tasks().extend([session, controller]);
        Ok(quorum)
    }

    /// The tonic service to serve on the node's gRPC port.
    pub fn service(self: &Arc<Self>) -> QuorumService {
        service::new(Arc::clone(self))
    }

    /// Set once the cluster refuses this node's registration for good, with why.
    pub fn refusal(&self) -> watch::Receiver<Option<String>> {
        self.refusal.subscribe()
    }

    /// The applied metadata, updated on each apply, on voters and learners alike.
    pub fn metadata(&self) -> watch::Receiver<Arc<Metadata>> {
        self.metadata.clone()
    }

    /// The current controller (Raft leader) node id, if known.
    /// The voters' ids, as `--cluster` lists them.
    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    pub fn voter_ids(&self) -> Vec<&str> {
        self.config.voters.iter().map(|(id, _)| id.as_str()).collect()
    }

    pub fn controller(&self) -> Option<String> {
        self.raft_metrics().current_leader
    }

    /// Whether the metadata quorum answers now: a controller is known and, where this node
    /// is it, a majority of voters acknowledged it within two election timeouts (a
    /// controller cut off from the others keeps its title but decides nothing).
    pub fn answers(&self) -> bool {
        let metrics = self.raft_metrics();
        match metrics.current_leader {
            None => false,
            Some(controller) if controller == self.config.node_id => metrics
                .last_quorum_acked
                .is_some_and(|acked| openraft::Instant::elapsed(&*acked) < startup::SILENT_QUORUM),
            Some(_) => true,
        }
    }

    /// Proposes a command; on a non-controller it is sent to the controller. Returns once
    /// committed and applied locally (so [`Quorum::metadata`] already shows it).
    pub async fn propose(&self, command: MetaCommand) -> Result<MetaOutcome, QuorumError> {
        self.propose_checked(command, false).await
    }

    /// This process's incarnation, as its `Register` carries it: metadata about this node
    /// id under another incarnation is about another process.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Whether this node may still act as a leader: true while its last heartbeat
    /// acknowledged by a confirmed controller was sent less than the session timeout ago.
    /// The lease is given up a fifth of the
    /// session timeout before it ends: the node checks it on a timer and must have stopped
    /// acknowledging by the time the controller may fence it.
    pub fn lease_valid(&self) -> bool {
        let until = *self.lease_until.lock().unwrap_or_else(|p| p.into_inner());
        let margin = self.config.session_timeout / 5;
        until.is_some_and(|until| Instant::now() + margin < until)
    }

    /// Controlled shutdown: fences itself (bounded wait), then stops Raft.
    pub async fn shutdown(&self) {
        // The session ends first: a heartbeat told "fenced" would otherwise register again.
        self.end_session();
        let fence = MetaCommand::Fence {
            id: self.config.node_id.clone(),
            incarnation: self.incarnation,
            reason: FenceReason::ControlledShutdown,
        };
        match tokio::time::timeout(SHUTDOWN_FENCE_WAIT, self.propose(fence)).await {
            Ok(Ok(_)) => tracing::info!(node = %self.config.node_id, "fenced for a controlled shutdown"),
            Ok(Err(e)) => tracing::warn!(node = %self.config.node_id, "shutting down unfenced: {e}"),
            Err(_) => {
                tracing::warn!(node = %self.config.node_id, "shutting down unfenced: the fence did not commit in time")
            }
        }
        self.hand_over().await;
        self.halt().await;
    }

    /// A controller that leaves asks a live voter to take over now, so the others need not
    /// wait out an election timeout first.
    async fn hand_over(&self) {
        if !self.raft.is_leader() {
            return;
        }
        let metadata = self.metadata.borrow().clone();
        let me = &self.config.node_id;
        let Some(successor) = metadata.live_members().find(|(id, m)| m.voter && *id != me).map(|(id, _)| id.clone())
        else {
            return;
        };
        if self.raft.trigger().transfer_leader(successor.clone()).await.is_err() {
            return;
        }
        let mut metrics = self.raft.metrics();
        let handed = async {
            use openraft::async_runtime::watch::WatchReceiver;
            while metrics.borrow_watched().current_leader.as_ref() == Some(me) {
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        };
        if tokio::time::timeout(SHUTDOWN_FENCE_WAIT, handed).await.is_ok() {
            tracing::info!(node = %me, %successor, "handed the controller role over");
        }
    }

    /// Stops Raft and the session without telling the controller, as a crash would: the
    /// controller fences this node once its session expires.
    pub async fn halt(&self) {
        self.end_session();
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(node = %self.config.node_id, "the metadata quorum stopped uncleanly: {e}");
        }
    }

    /// Stops heartbeating (and controlling) and gives up the lease.
    fn end_session(&self) {
        self.abort_tasks();
        *self.lease_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn raft_metrics(&self) -> openraft::RaftMetrics<types::TypeConfig> {
        use openraft::async_runtime::watch::WatchReceiver;
        self.raft.metrics().borrow_watched().clone()
    }

    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn abort_tasks(&self) {
        for task in self.lock_tasks().drain(..) {
            task.abort();
        }
    }
}

impl Drop for Quorum {
    fn drop(&mut self) {
        self.abort_tasks();
    }
}

/// The voters by id, after checking the list can form a Raft group. An even count is
/// allowed only where the voters are also the nodes partitions are placed on (`spread`):
/// it tolerates as many failures as one fewer, but every node listed holds partitions.
fn voter_map(voters: &[(String, String)], spread: bool) -> Result<VoterMap, QuorumError> {
    let invalid = |why: String| Err(QuorumError::InvalidVoters(why));
    if voters.is_empty() {
        return invalid("no voters listed".to_string());
    }
    if voters.len().is_multiple_of(2) && !spread {
        return invalid(format!(
            "{} voters listed; list an odd number (3 or 5) so a majority survives a split",
            voters.len()
        ));
    }
    if voters.len() > MAX_VOTERS {
        return invalid(format!("{} voters listed; at most {MAX_VOTERS} may vote", voters.len()));
    }
    let mut map = BTreeMap::new();
    for (id, addr) in voters {
        if map.insert(id.clone(), addr.clone()).is_some() {
            return invalid(format!("node id {id} is listed twice"));
        }
    }
    Ok(VoterMap(map))
}

/// Voters by id, with their gRPC addresses; printed as `a=addr,b=addr` like `--cluster`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct VoterMap(BTreeMap<String, String>);

impl std::fmt::Display for VoterMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list: Vec<String> = self.0.iter().map(|(id, addr)| format!("{id}={addr}")).collect();
        write!(f, "{}", list.join(","))
    }
}
