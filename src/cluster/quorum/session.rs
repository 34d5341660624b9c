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
        match node.heartbeat().await {
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
        let register = MetaCommand::Register {
            id: self.config.node_id.clone(),
            grpc_addr: self.config.grpc_addr.clone(),
            client_addr: self.config.client_addr.clone(),
            voter: self.voter,
            incarnation: self.incarnation,
            log_epoch: self.config.log_epoch,
        };
        match self.propose_checked(register, true).await? {
            MetaOutcome::Applied | MetaOutcome::Unchanged => {
                tracing::info!(node = %self.config.node_id, incarnation = self.incarnation, "registered with the controller");
                Ok(())
            }
            MetaOutcome::Rejected(why) => Err(QuorumError::Busy(why)),
        }
    }

    /// One heartbeat to the controller; `None` when there is none or it did not answer.
    async fn heartbeat(&self) -> Option<HeartbeatStatus> {
        let (controller, addr) = self.known_controller()?;
        if controller == self.config.node_id {
            return Some(self.answer_heartbeat(&controller, self.incarnation).await);
        }
        let mut client = self.peers.client(&addr).ok()?;
        let request = HeartbeatRequest { id: self.config.node_id.clone(), incarnation: self.incarnation };
        let request = self.peers.request(request, RPC_TIMEOUT);
        match Peers::call(RPC_TIMEOUT, client.heartbeat(request)).await {
            Ok(reply) => HeartbeatStatus::try_from(reply.status).ok(),
            Err(status) => {
                tracing::warn!(node = %self.config.node_id, %controller, %addr, "heartbeat failed: {}", status.message());
                None
            }
        }
    }

    /// The lease holds for a session timeout from when the acknowledged heartbeat was sent:
    /// the controller heard it no earlier, so it fences this node no earlier than that.
    fn extend_lease(&self, sent: Instant) {
        let mut lease = self.lease_until.lock().unwrap_or_else(|p| p.into_inner());
        let until = sent + self.config.session_timeout;
        *lease = Some(lease.map_or(until, |old| old.max(until)));
    }
}
