//! The client side of the quorum's gRPC: one lazily connected channel per peer address,
//! reused by Raft replication, proposals and heartbeats alike.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::{Request, Status};

use super::proto::RaftMessage;
use super::proto::quorum_client::QuorumClient;
use super::types::{Snapshot, SnapshotTransfer, TypeConfig, Vote};
use crate::cluster::metadata::Metadata;
use crate::server::Password;

/// Bounds every quorum call: a peer that does not answer within it counts as unreachable.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Every quorum call names the caller's `--cluster` voter list: a node of another cluster
/// (or one started with another list) must never take part in this one's elections.
pub const VOTERS: &str = "x-msglog-voters";

/// The voter list as calls carry it: `id=addr` pairs, sorted, comma-separated.
pub fn voters_fingerprint(voters: &[(String, String)]) -> String {
    let mut pairs: Vec<String> = voters.iter().map(|(id, addr)| format!("{id}={addr}")).collect();
    pairs.sort();
    pairs.join(",")
}

#[derive(Clone)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    bind_source_addr: Option<IpAddr>,
    /// The `authorization` and `voters` values every call carries, made once.
    authorization: Option<MetadataValue<Ascii>>,
    voters: Option<MetadataValue<Ascii>>,
    /// This node's mutual TLS towards peers (`--tls-ca`); `None` speaks plain gRPC.
    tls: Option<tonic::transport::ClientTlsConfig>,
}

impl Peers {
    pub fn new(bind_source_addr: Option<IpAddr>, password: Option<Password>, voters: &[(String, String)]) -> Peers {
        let authorization = crate::bearer::value(password.as_ref());
        // Node ids and addresses are checked printable at start, so this always parses.
        let voters = voters_fingerprint(voters).parse().ok();
        Peers { channels: Arc::default(), bind_source_addr, authorization, voters, tls: None }
    }

    pub fn with_tls(self, tls: Option<tonic::transport::ClientTlsConfig>) -> Peers {
        Peers { tls, ..self }
    }

    pub fn client(&self, addr: &str) -> Result<QuorumClient<Channel>, Status> {
        let mut channels = self.channels.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(channel) = channels.get(addr) {
            return Ok(QuorumClient::new(channel.clone()));
        }
        let endpoint = crate::tls::endpoint(addr, self.tls.as_ref())
            .map_err(|e| Status::invalid_argument(format!("bad quorum address {addr}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .local_address(self.bind_source_addr);
        let channel = endpoint.connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(QuorumClient::new(channel))
    }

    /// `message` with the password attached (if any) and the call's deadline.
    pub fn request<T>(&self, message: T, timeout: Duration) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(timeout);
        crate::bearer::present(&mut request, self.authorization.as_ref());
        if let Some(value) = &self.voters {
            request.metadata_mut().insert(VOTERS, value.clone());
        }
        request
    }

    /// Runs one call with `timeout` as a hard bound (the channel itself has none).
    pub async fn call<F, T>(timeout: Duration, call: F) -> Result<T, Status>
    where
        F: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        match tokio::time::timeout(timeout, call).await {
            Ok(result) => result.map(tonic::Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded(format!("no answer within {timeout:?}"))),
        }
    }
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("Raft messages serialize")
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(bytes).map_err(|e| Status::invalid_argument(format!("undecodable quorum message: {e}")))
}

/// Gives Raft a [`PeerLink`] per peer.
pub struct Network {
    pub peers: Peers,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerLink;

    async fn new_client(&mut self, target: String, node: &BasicNode) -> PeerLink {
        PeerLink { target, addr: node.addr.clone(), peers: self.peers.clone() }
    }
}

pub struct PeerLink {
    target: String,
    addr: String,
    peers: Peers,
}

#[derive(Clone, Copy)]
enum Call {
    Append,
    Vote,
    Snapshot,
    TransferLeader,
}

/// An ordinary Raft call's bound: Raft's own, but never more than [`RPC_TIMEOUT`].
fn bounded(option: &RPCOption) -> Duration {
    option.hard_ttl().min(RPC_TIMEOUT)
}

impl PeerLink {
    async fn send<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        call: Call,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, Unreachable<TypeConfig>> {
        let unreachable = |status: Status| {
            Unreachable::from_string(format!("quorum peer {} at {}: {}", self.target, self.addr, status.message()))
        };
        let mut client = self.peers.client(&self.addr).map_err(unreachable)?;
        let message = self.peers.request(RaftMessage { payload: encode(request) }, timeout);
        let reply = match call {
            Call::Append => Peers::call(timeout, client.append_entries(message)).await,
            Call::Vote => Peers::call(timeout, client.vote(message)).await,
            Call::Snapshot => Peers::call(timeout, client.install_snapshot(message)).await,
            Call::TransferLeader => Peers::call(timeout, client.transfer_leader(message)).await,
        };
        let reply = reply.map_err(unreachable)?;
        decode(&reply.payload).map_err(unreachable)
    }
}

impl RaftNetworkV2<TypeConfig> for PeerLink {
    type SnapshotData = Metadata;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        Ok(self.send(Call::Append, &rpc, bounded(&option)).await?)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Ok(self.send(Call::Vote, &rpc, bounded(&option)).await?)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let transfer = SnapshotTransfer { vote, meta: snapshot.meta, metadata: snapshot.snapshot };
        let timeout = option.hard_ttl().max(RPC_TIMEOUT);
        tokio::select! {
            reply = self.send(Call::Snapshot, &transfer, timeout) => Ok(reply?),
            closed = cancel => Err(StreamingError::Closed(closed)),
        }
    }

    async fn transfer_leader(
        &mut self,
        request: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        Ok(self.send(Call::TransferLeader, &request, bounded(&option)).await?)
    }
}
