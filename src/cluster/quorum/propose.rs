//! Proposing a metadata command: on the controller through Raft, elsewhere sent to the
//! controller, found from this node's Raft state or, failing that, by asking the voters.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::network::{Peers, decode, encode};
use super::proto::{ProposeRequest, Voter, propose_reply};
use super::startup::check_voters;
use super::types::{Command, Outcome};
use super::{Quorum, QuorumError, VoterMap};
use crate::cluster::metadata::{MetaCommand, MetaOutcome};

/// How long a proposal may take, including finding the controller.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// A proposal waits for commit, so it gets longer than other calls.
const PROPOSE_RPC_TIMEOUT: Duration = Duration::from_secs(2);
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Where a proposal went, when it did not apply.
pub(super) enum Elsewhere {
    /// This node does not lead; the controller it knows of, if any, and its address.
    NotController(Option<(String, String)>),
}

impl Quorum {
    /// Proposes `command`; with `check_voters` the controller first compares this node's
    /// `--cluster` with the group's voters.
    pub(super) async fn propose_checked(
        &self,
        command: MetaCommand,
        check_voters: bool,
    ) -> Result<MetaOutcome, QuorumError> {
        let deadline = Instant::now() + PROPOSE_TIMEOUT;
        let ours = &self.voters;
        let voters = check_voters.then_some(ours);
        let mut hint: Option<(String, String)> = None;
        let mut next_voter = 0;
        // The last error from each voter, to say why no controller was found.
        let mut failures: BTreeMap<String, String> = BTreeMap::new();
        // Encoded when first sent elsewhere, then the same for every voter and retry.
        let mut request: Option<ProposeRequest> = None;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(no_controller(ours, &failures));
            }
            match self.propose_here(&command, voters, remaining).await? {
                Ok((outcome, _)) => return Ok(outcome),
                Err(Elsewhere::NotController(known)) => hint = hint.or(known),
            }
            let (id, addr) = match hint.take() {
                Some(target) if target.0 != self.config.node_id => target,
                _ => {
                    // No controller known (or it is this node, not yet leading): ask a voter.
                    let voter = ours.0.iter().nth(next_voter % ours.0.len()).map(|(i, a)| (i.clone(), a.clone()));
                    next_voter += 1;
                    match voter {
                        Some(voter) if voter.0 != self.config.node_id => voter,
                        _ => {
                            tokio::time::sleep(RETRY_PAUSE.min(remaining)).await;
                            continue;
                        }
                    }
                }
            };
            let rpc_timeout = PROPOSE_RPC_TIMEOUT.min(remaining);
            let request = request.get_or_insert_with(|| propose_request(&command, voters)).clone();
            match self.propose_remote(&addr, request, rpc_timeout).await {
                Ok(propose_reply::Result::Applied(applied)) => {
                    let outcome: Outcome =
                        decode(&applied.outcome).map_err(|e| QuorumError::Raft(e.message().to_string()))?;
                    self.wait_applied(applied.applied_index, deadline).await?;
                    return Ok(outcome.0);
                }
                Ok(propose_reply::Result::NotController(known)) => {
                    failures.remove(&id);
                    // Followed after the pause: two nodes with stale views could otherwise
                    // bounce a proposal between them.
                    if !known.controller.is_empty() && known.controller != id {
                        hint = Some((known.controller, known.controller_addr));
                    }
                }
                Ok(propose_reply::Result::Retry(why)) => return Err(QuorumError::Busy(why)),
                Ok(propose_reply::Result::Refused(why)) => return Err(QuorumError::Refused(why)),
                Err(status) if status.code() == tonic::Code::Unauthenticated => {
                    return Err(QuorumError::Refused(status.message().to_string()));
                }
                Err(status) => {
                    tracing::debug!(voter = %id, %addr, "proposal not delivered: {}", status.message());
                    failures.insert(id, format!("{addr}: {}", status.message()));
                }
            }
            tokio::time::sleep(RETRY_PAUSE.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }

    /// Proposes through this node's Raft if it leads. The outer error is final; the inner
    /// one says the proposal belongs elsewhere.
    pub(super) async fn propose_here(
        &self,
        command: &MetaCommand,
        voters: Option<&VoterMap>,
        timeout: Duration,
    ) -> Result<Result<(MetaOutcome, u64), Elsewhere>, QuorumError> {
        if !self.raft.is_leader() {
            return Ok(Err(Elsewhere::NotController(self.known_controller())));
        }
        if let (Some(ours), Some(committed)) = (voters, self.voters_in_log()) {
            check_voters(ours, &committed).map_err(|e| QuorumError::Refused(e.to_string()))?;
        }
        self.admit(command)?;
        if self.metadata.borrow().cluster_id.is_none() && !matches!(command, MetaCommand::Init { .. }) {
            // Nothing applies before the cluster is formed, so this controller forms it first.
            let init = Command(self.init_command());
            match tokio::time::timeout(timeout, self.raft.client_write(init)).await {
                Ok(Ok(written)) if written.data.0 == MetaOutcome::Applied => {
                    tracing::info!(node = %self.config.node_id, "formed the cluster's metadata")
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!("forming the cluster's metadata: {e}"),
                Err(_) => {}
            }
        }
        let written = tokio::time::timeout(timeout, self.raft.client_write(Command(command.clone()))).await;
        let written =
            written.map_err(|_| QuorumError::NoController(format!("a proposal did not commit within {timeout:?}")))?;
        match written {
            Ok(response) => {
                if let MetaCommand::Register { id, grpc_addr, voter, .. } = command {
                    self.heard(id);
                    if response.data.0 == MetaOutcome::Applied {
                        tracing::info!(node = %id, addr = %grpc_addr, "a member registered");
                    }
                    if !*voter {
                        self.add_learner(id, grpc_addr).await;
                    }
                }
                Ok(Ok((response.data.0, response.log_id.index())))
            }
            Err(e) => match e.forward_to_leader() {
                Some(forward) => {
                    let known = forward.leader_id.clone().zip(forward.leader_node.as_ref().map(|n| n.addr.clone()));
                    Ok(Err(Elsewhere::NotController(known)))
                }
                None => Err(QuorumError::Raft(e.to_string())),
            },
        }
    }

    async fn propose_remote(
        &self,
        addr: &str,
        request: ProposeRequest,
        timeout: Duration,
    ) -> Result<propose_reply::Result, tonic::Status> {
        let mut client = self.peers.client(addr)?;
        let request = self.peers.request(request, timeout);
        let reply = Peers::call(timeout, client.propose(request)).await?;
        reply.result.ok_or_else(|| tonic::Status::internal("an empty proposal reply"))
    }

    /// The controller this node's Raft knows of, with its gRPC address.
    pub(super) fn known_controller(&self) -> Option<(String, String)> {
        let metrics = self.raft_metrics();
        let leader = metrics.current_leader?;
        let addr = metrics.membership_config.membership().get_node(&leader)?.addr.clone();
        Some((leader, addr))
    }

    /// Waits until this node applied the log up to `index`, so its metadata shows a
    /// proposal the controller applied.
    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), QuorumError> {
        let mut applied = self.applied_index.clone();
        let reached = applied.wait_for(|applied| applied.is_some_and(|a| a >= index));
        match tokio::time::timeout_at(deadline.into(), reached).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(QuorumError::Stopped),
            Err(_) => Err(QuorumError::Raft(format!(
                "committed, but this node did not receive the metadata up to index {index} within {PROPOSE_TIMEOUT:?}"
            ))),
        }
    }
}

/// `command` as sent to the controller, with the voters it is to check (if any).
fn propose_request(command: &MetaCommand, voters: Option<&VoterMap>) -> ProposeRequest {
    let voters = voters
        .map_or_else(Vec::new, |v| v.0.iter().map(|(id, addr)| Voter { id: id.clone(), addr: addr.clone() }).collect());
    ProposeRequest { command: encode(&Command(command.clone())), voters }
}

fn no_controller(voters: &VoterMap, failures: &BTreeMap<String, String>) -> QuorumError {
    if failures.is_empty() {
        return QuorumError::NoController(format!(
            "no controller elected within {PROPOSE_TIMEOUT:?} (voters {voters}); a majority must be up and reach each other"
        ));
    }
    let list: Vec<String> = failures.iter().map(|(id, why)| format!("{id} at {why}")).collect();
    QuorumError::NoController(format!(
        "no quorum: {} of {} voters unreachable ({})",
        failures.len(),
        voters.0.len(),
        list.join("; ")
    ))
}
