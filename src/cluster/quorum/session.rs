//! A node's session with the controller: register, then heartbeat every fifth of the
//! session timeout (one heartbeat in flight, following controller changes), registering
//! again when the controller says this process is not a live member.

use std::sync::Weak;
use std::time::{Duration, Instant};

use super::network::{Peers, RPC_TIMEOUT};
use super::proto::HeartbeatRequest;
use super::proto::heartbeat_reply::Status as HeartbeatStatus;
use super::{Quorum, QuorumError};
use crate::cluster::metadata::{MetaCommand, MetaOutcome};

const FIRST_RETRY: Duration = Duration::from_millis(50);
const LAST_RETRY: Duration = Duration::from_secs(1);

pub(super) async fn run(quorum: Weak<Quorum>) {
    let mut registered = false;
    let mut retry = FIRST_RETRY;
    // Heartbeat failures are logged when they start and when they end, not each time.
    let mut failing = false;
    loop {
        let Some(node) = quorum.upgrade() else { return };
        if !registered {
            match node.register().await {
                Ok(()) => {
                    registered = true;
                    retry = FIRST_RETRY;
                }
                Err(e @ QuorumError::Refused(_)) => {
                    // A node of another cluster (or with a different --cluster) must not
                    // take part: retrying cannot help, the operator has to fix the flags.
                    tracing::error!(node = %node.config.node_id, "registration refused, not retrying: {e}");
                    node.refusal.send_replace(Some(e.to_string()));
                    return;
                }
                Err(e) => {
                    tracing::warn!(node = %node.config.node_id, "registration failed, retrying in {retry:?}: {e}");
                    drop(node);
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(LAST_RETRY);
                }
            }
            continue;
        }
        let sent = Instant::now();
        let next = sent + node.config.session_timeout / 5;
        let answer = node.heartbeat().await;
        match (&answer, failing) {
            (Err(e), false) => {
                tracing::warn!(node = %node.config.node_id, "heartbeat failed (the lease lapses unless one succeeds): {e}")
            }
            (Ok(_), true) => tracing::info!(node = %node.config.node_id, "heartbeats answered again"),
            _ => {}
        }
        failing = answer.is_err();
        match answer.ok().flatten() {
            Some(HeartbeatStatus::Ok) => node.extend_lease(sent),
            Some(HeartbeatStatus::Register) => {
                tracing::info!(node = %node.config.node_id, "the controller does not count this process as a live member: registering again");
                registered = false;
            }
            Some(HeartbeatStatus::NotController) | None => {}
        }
        drop(node);
        tokio::time::sleep_until(next.into()).await;
    }
}

impl Quorum {
    async fn register(&self) -> Result<(), QuorumError> {
        let log_epochs = self.config.log_epoch.now();
        // What a node of the version before partitions reads: its one log's epoch.
        let log_epoch = log_epochs.iter().copied().max().unwrap_or(0);
        let register = MetaCommand::Register {
            id: self.config.node_id.clone(),
            grpc_addr: self.config.grpc_addr.clone(),
            client_addr: self.config.client_addr.clone(),
            voter: self.voter,
            incarnation: self.incarnation,
            log_epoch,
            log_epochs,
        };
        match self.propose_checked(register, true).await? {
            MetaOutcome::Applied | MetaOutcome::Unchanged => {
                tracing::info!(node = %self.config.node_id, incarnation = self.incarnation, "registered with the controller");
                Ok(())
            }
            MetaOutcome::Rejected(why) => Err(QuorumError::Busy(why)),
        }
    }

    /// One heartbeat to the controller; `Ok(None)` when no controller is known.
    async fn heartbeat(&self) -> Result<Option<HeartbeatStatus>, String> {
        let Some((controller, addr)) = self.known_controller() else { return Ok(None) };
        if controller == self.config.node_id {
            return Ok(Some(self.answer_heartbeat(&controller, self.incarnation).await));
        }
        let failed = |status: tonic::Status| format!("controller {controller} at {addr}: {}", status.message());
        let mut client = self.peers.client(&addr).map_err(failed)?;
        let request = HeartbeatRequest { id: self.config.node_id.clone(), incarnation: self.incarnation };
        let request = self.peers.request(request, RPC_TIMEOUT);
        let reply = Peers::call(RPC_TIMEOUT, client.heartbeat(request)).await.map_err(failed)?;
        Ok(HeartbeatStatus::try_from(reply.status).ok())
    }

    /// The lease holds for a session timeout from when the acknowledged heartbeat was sent:
    /// the controller heard it no earlier, so it fences this node no earlier than that.
    fn extend_lease(&self, sent: Instant) {
        let mut lease = self.lease_until.lock().unwrap_or_else(|p| p.into_inner());
        let until = sent + self.config.session_timeout;
        *lease = Some(lease.map_or(until, |old| old.max(until)));
    }
}
