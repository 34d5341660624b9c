//! The server side of the quorum's gRPC: Raft's messages, proposals, heartbeats.

use std::fmt::Display;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status};

use super::network::{RPC_TIMEOUT, VOTERS, decode, encode, voters_fingerprint};
use super::propose::Elsewhere;
use super::proto::quorum_server::{Quorum as QuorumRpc, QuorumServer};
use super::proto::{
    Applied, HeartbeatReply, HeartbeatRequest, NotController, ProposeReply, ProposeRequest, RaftMessage, Voter,
    VotersReply, VotersRequest, propose_reply,
};
use super::types::{Command, Outcome, Snapshot, SnapshotTransfer};
use super::{Quorum, QuorumError, VoterMap};
use crate::cluster::metadata::MetaCommand;

/// The quorum's gRPC service, to add to the node's gRPC server.
pub type QuorumService = QuorumServer<Service>;

pub struct Service {
    quorum: Arc<Quorum>,
    /// This node's `--cluster` as calls carry it.
    voters: String,
    refusals: crate::throttle::Throttle,
}

pub(super) fn new(quorum: Arc<Quorum>) -> QuorumService {
    let voters = voters_fingerprint(&quorum.config.voters);
    QuorumServer::new(Service { quorum, voters, refusals: Default::default() })
}

impl Service {
    fn authorize<T>(&self, request: &Request<T>, call: &str) -> Result<(), Status> {
        self.same_cluster(request, call)?;
        self.check_password(request, call)
    }

    /// Under mutual TLS, Raft's own messages come only from a voter: the caller's
    /// certificate must name one of `--cluster`'s node ids.
    fn caller_is_voter<T>(&self, request: &Request<T>, call: &str) -> Result<(), Status> {
        let Some(certificate) = crate::tls::PeerCertificate::of(request) else { return Ok(()) };
        if self.quorum.config.voters.iter().any(|(id, _)| self.is_node(&certificate, id)) {
            return Ok(());
        }
        tracing::warn!(call, "refusing a quorum call whose certificate names no voter");
        Err(Status::permission_denied(format!("{call} needs a certificate naming one of the voters")))
    }

    /// Under mutual TLS a proposal speaks for the node its certificate names: a node
    /// registers, fences and changes the ISR it leads only as itself. Voters' certificates
    /// may propose anything (their controllers form the cluster and fence other nodes).
    fn certified_for<T>(&self, request: &Request<T>, command: &MetaCommand) -> Result<(), Status> {
        let Some(certificate) = crate::tls::PeerCertificate::of(request) else { return Ok(()) };
        if self.quorum.config.voters.iter().any(|(id, _)| self.is_node(&certificate, id)) {
            return Ok(());
        }
        let subject = match command {
            MetaCommand::Register { id, .. } | MetaCommand::Fence { id, .. } => Some(id),
            MetaCommand::AlterIsr { leader, .. } | MetaCommand::HandOver { leader, .. } => Some(leader),
            // Only a controller (a voter) re-places replicas.
            MetaCommand::Init { .. } | MetaCommand::ReplaceReplica { .. } => None,
        };
        match subject {
            Some(id) if self.is_node(&certificate, id) => Ok(()),
            _ => {
                tracing::warn!(?command, "refusing a proposal about a node the caller's certificate does not name");
                Err(Status::permission_denied(
                    "Propose needs the node certificate of the node the proposal is about (or a voter's)",
                ))
            }
        }
    }

    /// Under mutual TLS, a call made on behalf of node `id` must carry that node's certificate.
    fn certified_as<T>(&self, request: &Request<T>, id: &str, call: &str) -> Result<(), Status> {
        match crate::tls::PeerCertificate::of(request).map(|certificate| self.is_node(&certificate, id)) {
            None | Some(true) => Ok(()),
            Some(false) => {
                tracing::warn!(
                    call,
                    claimed = id,
                    "refusing a quorum call whose certificate does not name its node id"
                );
                Err(Status::permission_denied(format!("{call} as {id} needs the node certificate of {id}")))
            }
        }
    }

    /// Whether `certificate` is node `id`'s: it names `id`, and (with the CA's verifier at
    /// hand) a server may present it. A consumer's client-only certificate (`msglog tail`'s)
    /// is not a node's, whatever it is called, so it can never join the cluster.
    fn is_node(&self, certificate: &crate::tls::PeerCertificate, id: &str) -> bool {
        match &self.quorum.config.node_tls {
            Some(grpc) => certificate.is_node(grpc, id),
            None => certificate.names(id),
        }
    }

    /// An authorized Raft message's request, decoded.
    fn open<T: DeserializeOwned>(&self, request: Request<RaftMessage>, call: &str) -> Result<T, Status> {
        self.authorize(&request, call)?;
        self.caller_is_voter(&request, call)?;
        decode(&request.into_inner().payload)
    }

    /// Refuses a call from a node started with another voter list (another cluster, or a
    /// typo): it would otherwise vote in, or lead, this cluster's quorum.
    fn same_cluster<T>(&self, request: &Request<T>, call: &str) -> Result<(), Status> {
        let ours = &self.voters;
        let theirs = request.metadata().get(VOTERS).and_then(|v| v.to_str().ok());
        if theirs == Some(ours.as_str()) {
            return Ok(());
        }
        let peer = request.remote_addr().map_or_else(|| "unknown".to_string(), |a| a.to_string());
        tracing::warn!(%peer, call, theirs = theirs.unwrap_or("none"), "refusing a quorum call from a node with another --cluster");
        Err(Status::permission_denied(format!(
            "{} is in the cluster of voters {ours}, but the caller was started with --cluster {}; \
             give every node the same --cluster",
            self.quorum.config.node_id,
            theirs.unwrap_or("(none)")
        )))
    }

    fn check_password<T>(&self, request: &Request<T>, call: &str) -> Result<(), Status> {
        // A certificate of the cluster's CA (mutual TLS) stands in for the password.
        if crate::tls::peer_certified(request) {
            return Ok(());
        }
        let Err(presented) = crate::bearer::check(request, self.quorum.config.password.as_ref()) else { return Ok(()) };
        let peer = request.remote_addr().map_or_else(|| "unknown".to_string(), |a| a.to_string());
        // A node with the wrong password retries many times a second.
        if let Some(held_back) = self.refusals.admit() {
            tracing::warn!(%peer, call, presented = presented.any(), held_back,
                "refusing a quorum call without the password (such refusals are logged once per 10 s)");
        }
        Err(presented.refusal(&self.quorum.config.node_id, call, "start every node with the same --requirepass"))
    }
}

/// Raft's answer to a message, encoded, or why Raft could not answer.
fn reply<T: Serialize, E: Display>(answer: Result<T, E>) -> Result<Response<RaftMessage>, Status> {
    let answer = answer.map_err(|e| Status::unavailable(format!("the metadata quorum is not running here: {e}")))?;
    Ok(Response::new(RaftMessage { payload: encode(&answer) }))
}

#[tonic::async_trait]
impl QuorumRpc for Service {
    async fn append_entries(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc = self.open(request, "AppendEntries")?;
        reply(self.quorum.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc = self.open(request, "Vote")?;
        reply(self.quorum.raft.vote(rpc).await)
    }

    async fn install_snapshot(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let transfer: SnapshotTransfer = self.open(request, "InstallSnapshot")?;
        let snapshot = Snapshot { meta: transfer.meta, snapshot: transfer.metadata };
        reply(self.quorum.raft.install_full_snapshot(transfer.vote, snapshot).await)
    }

    async fn transfer_leader(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc = self.open(request, "TransferLeader")?;
        reply(self.quorum.raft.handle_transfer_leader(rpc).await)
    }

    async fn propose(&self, request: Request<ProposeRequest>) -> Result<Response<ProposeReply>, Status> {
        self.authorize(&request, "Propose")?;
        let Command(command) = decode(&request.get_ref().command)?;
        self.certified_for(&request, &command)?;
        let request = request.into_inner();
        let voters = VoterMap(request.voters.into_iter().map(|v| (v.id, v.addr)).collect());
        let voters = (!voters.0.is_empty()).then_some(&voters);
        let result = match self.quorum.propose_here(&command, voters, RPC_TIMEOUT).await {
            Ok(Ok((outcome, index))) => {
                propose_reply::Result::Applied(Applied { outcome: encode(&Outcome(outcome)), applied_index: index })
            }
            Ok(Err(Elsewhere::NotController(known))) => {
                let (controller, controller_addr) = known.unwrap_or_default();
                propose_reply::Result::NotController(NotController { controller, controller_addr })
            }
            Err(QuorumError::Busy(why)) => propose_reply::Result::Retry(why),
            Err(QuorumError::Refused(why)) => propose_reply::Result::Refused(why),
            Err(e) => return Err(Status::unavailable(e.to_string())),
        };
        Ok(Response::new(ProposeReply { result: Some(result) }))
    }

    async fn heartbeat(&self, request: Request<HeartbeatRequest>) -> Result<Response<HeartbeatReply>, Status> {
        self.authorize(&request, "Heartbeat")?;
        self.certified_as(&request, &request.get_ref().id, "Heartbeat")?;
        let request = request.into_inner();
        let status = self.quorum.answer_heartbeat(&request.id, request.incarnation).await;
        Ok(Response::new(HeartbeatReply { status: status as i32 }))
    }

    async fn voters(&self, request: Request<VotersRequest>) -> Result<Response<VotersReply>, Status> {
        // Answered whatever the caller's list: this call is how a starting node learns that
        // its --cluster differs, and says so.
        self.check_password(&request, "Voters")?;
        let voters = self.quorum.voters_in_log();
        let list =
            voters.iter().flat_map(|v| v.0.iter()).map(|(id, addr)| Voter { id: id.clone(), addr: addr.clone() });
        Ok(Response::new(VotersReply { initialized: voters.is_some(), voters: list.collect() }))
    }
}
