//! Opening the quorum's storage, starting Raft, and forming (or joining) the group.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::{BasicNode, Config, SnapshotPolicy};
use tokio::task::JoinSet;

use super::network::{Network, Peers, RPC_TIMEOUT};
use super::proto::VotersRequest;
use super::{Quorum, QuorumConfig, QuorumError, VoterMap, controller, log_store, state_machine, types};

/// Raft's timing: a leader heartbeats every 50 ms and a follower campaigns after 200-400 ms
/// of silence: a dead controller is replaced in about half a second, which leaves the
/// session timeout most of the failover budget (docs/BENCHMARKS.md "Failover").
const HEARTBEAT_MS: u64 = 50;
const ELECTION_MIN_MS: u64 = 200;
const ELECTION_MAX_MS: u64 = 400;
/// A controller no majority acknowledged for this long has lost its quorum.
pub(super) const SILENT_QUORUM: Duration = Duration::from_millis(2 * ELECTION_MAX_MS);
/// Snapshot (and purge the log) every this many entries.
const SNAPSHOT_EVERY: u64 = 1000;
/// How long a starting node waits to learn whether the other voters hold a group already.
const ASK_VOTERS_TIMEOUT: Duration = Duration::from_millis(500);

pub(super) async fn open(
    config: QuorumConfig,
    voters: VoterMap,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> Result<Quorum, QuorumError> {
    let storage = |source| QuorumError::Storage { dir: config.dir.clone(), source };
    std::fs::create_dir_all(&config.dir).map_err(storage)?;
    let log = log_store::LogStore::open(&config.dir).map_err(storage)?;
    let (machine, applied) = state_machine::StateMachine::open(&config.dir).map_err(storage)?;
    let raft_config = Config {
        cluster_name: "msglog".to_string(),
        heartbeat_interval: HEARTBEAT_MS,
        election_timeout_min: ELECTION_MIN_MS,
        election_timeout_max: ELECTION_MAX_MS,
        install_snapshot_timeout: RPC_TIMEOUT.as_millis() as u64,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY),
        max_in_snapshot_log_to_keep: SNAPSHOT_EVERY / 10,
        ..Config::default()
    }
    .validate()
    .map_err(|e| QuorumError::Raft(e.to_string()))?;
    let peers = Peers::new(config.bind_source_addr, config.password.clone(), &config.voters).with_tls(tls);
    let network = Network { peers: peers.clone() };
    let raft = types::Raft::new(config.node_id.clone(), Arc::new(raft_config), network, log, machine)
        .await
        .map_err(|e| QuorumError::Raft(e.to_string()))?;
    Ok(Quorum {
        voter: voters.0.contains_key(&config.node_id),
        voters,
        incarnation: crate::random::random_u64(),
        config,
        raft,
        peers,
        metadata: applied.metadata,
        applied_index: applied.index,
        lease_until: Mutex::new(None),
        sessions: Mutex::new(controller::Sessions::default()),
        tasks: Mutex::new(Vec::new()),
        refusal: tokio::sync::watch::Sender::new(None),
    })
}

impl Quorum {
    /// Checks `ours` against the group this node belongs to; on a fresh dir with no group
    /// reachable, a voter forms it (every voter may: the same list on each is harmless).
    pub(super) async fn form(&self, ours: &VoterMap) -> Result<(), QuorumError> {
        // The membership in the local log is the group this dir belongs to. Asked of Raft
        // itself: its metrics may not reflect the recovered log yet.
        let stored = self.raft.with_raft_state(|state| state.membership_state.effective().clone()).await;
        let stored = stored.map_err(|e| QuorumError::Raft(e.to_string()))?;
        if let Some(committed) = voters_of(stored.membership()) {
            return check_voters(ours, &committed);
        }
        let mut asks = JoinSet::new();
        for (id, addr) in ours.0.iter().filter(|(id, _)| **id != self.config.node_id) {
            let (id, addr, peers) = (id.clone(), addr.clone(), self.peers.clone());
            asks.spawn(async move {
                let mut client = peers.client(&addr).ok()?;
                let request = peers.request(VotersRequest {}, ASK_VOTERS_TIMEOUT);
                let reply = Peers::call(ASK_VOTERS_TIMEOUT, client.voters(request)).await;
                tracing::debug!(voter = %id, ?reply, "asked for the group's voters");
                reply.ok().filter(|r| r.initialized)
            });
        }
        let mut joined = false;
        while let Some(answer) = asks.join_next().await {
            if let Ok(Some(reply)) = answer {
                let theirs = VoterMap(reply.voters.into_iter().map(|v| (v.id, v.addr)).collect());
                check_voters(ours, &theirs)?;
                joined = true;
            }
        }
        if joined || !self.voter {
            // Its leader replicates the group to this node.
            return Ok(());
        }
        let nodes: BTreeMap<String, BasicNode> =
            ours.0.iter().map(|(id, addr)| (id.clone(), BasicNode::new(addr))).collect();
        match self.raft.initialize(nodes).await {
            Ok(()) => tracing::info!(node = %self.config.node_id, voters = %ours, "formed the metadata quorum"),
            Err(e) if e.api_error().is_some() => tracing::debug!("the metadata quorum is formed already: {e}"),
            Err(e) => return Err(QuorumError::Raft(e.to_string())),
        }
        Ok(())
    }

    /// The voters of the newest membership in this node's log, if it holds one.
    pub(super) fn voters_in_log(&self) -> Option<VoterMap> {
        voters_of(self.raft_metrics().membership_config.membership())
    }
}

fn voters_of(membership: &openraft::Membership<String, BasicNode>) -> Option<VoterMap> {
    let voters: BTreeMap<String, String> = membership
        .voter_ids()
        .map(|id| {
            let addr = membership.get_node(&id).map(|n| n.addr.clone()).unwrap_or_default();
            (id, addr)
        })
        .collect();
    (!voters.is_empty()).then_some(VoterMap(voters))
}

pub(super) fn check_voters(ours: &VoterMap, committed: &VoterMap) -> Result<(), QuorumError> {
    if ours == committed {
        return Ok(());
    }
    Err(QuorumError::VoterMismatch { ours: ours.to_string(), committed: committed.to_string() })
}
