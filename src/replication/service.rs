//! The gRPC service every node runs: `Fetch` streams the log, `Acknowledge` takes a
//! follower's durable offsets.
//!
//! A fetch stream is one task feeding a bounded channel: at most `STREAM_DEPTH` chunks
//! (each ≤ 1 MiB) wait for a slow reader, beyond that the task waits too; with HTTP/2
//! windows set explicitly, a reader that stops costs the leader about two chunks, never an
//! unbounded queue. At most `max_fetch_streams` streams are served at once; one more is
//! refused with RESOURCE_EXHAUSTED. Caught up, the task sleeps on the node's `appended`
//! watch: it is woken by appends, never by a timer.
//!
//! On a node with a password, both calls need it (`authorization: Bearer <password>`,
//! compared in constant time) or end UNAUTHENTICATED before touching the log.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::cluster::metadata::PartitionId;
use crate::storage::{Chunk, Offset, StorageError};

use super::followers::Registration;
use super::guard::Guard;
use super::proto::replication_server::{Replication as ReplicationRpc, ReplicationServer};
use super::proto::{Ack, AckSummary, Diverged, FetchRequest, FetchResponse, Hello, Records, fetch_response};
use super::rules::{
    FetchFacts, FetchRefusal, LastRecordCheck, admit_fetch, cut_passes_cursor, diverges, missed_deletions,
};
use super::{
    CHUNK_BYTES, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, Position, Replicas, Replication, ReplicationConfig, Role,
};

/// Chunks queued per fetch stream before its task waits for the reader: one queued, one
/// in flight in HTTP/2 is enough to keep a reading follower busy.
const STREAM_DEPTH: usize = 1;
/// HTTP/2 flow-control windows, per stream and per connection: what a peer may have sent
/// us and not yet consumed. Fixed rather than left to defaults (adaptive windows can grow
/// to megabytes per stream).
const STREAM_WINDOW_BYTES: u32 = 1024 * 1024;
const CONNECTION_WINDOW_BYTES: u32 = 4 * 1024 * 1024;

/// Serves `replicas` on `listener`. `config` is the node's (each replica's is the same but
/// for its partition); `stopping` turning `true` ends the acknowledgement calls.
pub(super) async fn serve(
    replicas: Arc<Replicas>,
    config: ReplicationConfig,
    stopping: watch::Receiver<bool>,
    listener: TcpListener,
    extra: tonic::service::Routes,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let max_message = config.max_record_bytes + CHUNK_BYTES;
    let streams = Arc::new(Semaphore::new(config.max_fetch_streams));
    let max_streams = u32::try_from(config.max_fetch_streams).unwrap_or(u32::MAX);
    // Unknown, the address counts as exposed: screening a loopback port costs nothing.
    let listen = listener.local_addr().map_or(std::net::IpAddr::from([0, 0, 0, 0]), |addr| addr.ip());
    let guard = Guard::new(&config, listen);
    let tls = config.tls.clone();
    let service = Service { replicas, config, stopping, streams, refusals: Default::default() };
    let service =
        ReplicationServer::new(service).max_decoding_message_size(max_message).max_encoding_message_size(max_message);
    let router = tonic::transport::Server::builder()
        .layer(tonic::service::InterceptorLayer::new(move |request| guard.screen(request)))
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .initial_stream_window_size(Some(STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(CONNECTION_WINDOW_BYTES))
        // Each follower also holds an Acknowledge call; the permits bound Fetch streams.
        .max_concurrent_streams(Some(max_streams.saturating_mul(2).max(8)))
        .add_routes(extra)
        .add_service(service);
    // Our own acceptor, not tonic's `tls_config`: a SIGHUP reload swaps its certificates.
    match &tls {
        None => router.serve_with_incoming_shutdown(incoming(listener), shutdown).await,
        Some(tls) => router.serve_with_incoming_shutdown(tls.incoming(listener), shutdown).await,
    }
}

/// Connections accepted on `listener`, with Nagle's algorithm off: the builder's
/// `tcp_nodelay` applies only to listeners tonic binds itself. Left on, a small message
/// (a high watermark, a reply) waits for the peer's delayed ACK, about 40 ms, and every
/// write in cluster mode waited with it.
pub(super) fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

struct Service {
    replicas: Arc<Replicas>,
    /// The node's replication configuration (its id, password, TLS, limits).
    config: ReplicationConfig,
    stopping: watch::Receiver<bool>,
    /// One permit per fetch stream being served.
    streams: Arc<Semaphore>,
    refusals: crate::throttle::Throttle,
}

type Sender = mpsc::Sender<Result<FetchResponse, Status>>;

#[tonic::async_trait]
impl ReplicationRpc for Service {
    type FetchStream = ReceiverStream<Result<FetchResponse, Status>>;

    async fn fetch(&self, request: Request<FetchRequest>) -> Result<Response<Self::FetchStream>, Status> {
        self.authorize(&request, "Fetch")?;
        if !request.get_ref().follower_id.is_empty() {
            self.certified_as(&request, &request.get_ref().follower_id, "Fetch")?;
        }
        let request = request.into_inner();
        let node = &self.replica(request.partition)?;
        let replica = !request.follower_id.is_empty();
        let epoch = node.log.stats().epoch;
        let facts = FetchFacts { replica, leading: node.is_leader(), epoch, caller_epoch: request.known_epoch };
        match admit_fetch(facts) {
            Ok(()) => {}
            Err(FetchRefusal::NotLeader) => {
                return Err(Status::failed_precondition(format!(
                    "{} is a follower and does not serve replicas; follow its leader",
                    node.config.node_id
                )));
            }
            Err(FetchRefusal::StaleLeader { ours, callers }) => {
                tracing::warn!(
                    caller = %request.follower_id, caller_epoch = callers, epoch = ours,
                    "a caller has seen a newer leader epoch than ours: this node is a stale leader"
                );
                return Err(Status::failed_precondition(format!(
                    "{} leads epoch {ours} but the caller has seen epoch {callers}: this is a stale leader; \
                     follow the current one",
                    node.config.node_id
                )));
            }
        }
        if replica && node.is_cluster() {
            fence_replica_fetch(node, &request)?;
        }
        if !replica && let Position::Following { leader, replicating: false, .. } = node.position() {
            return Err(Status::failed_precondition(format!(
                "{} is not one of the partition's replicas and holds no current copy of its log; \
                 tail its leader at {} (or another replica)",
                self.config.node_id, leader.grpc_addr
            )));
        }
        let log_id = node.log.lineage().map_err(internal)?.map(|lineage| lineage.log_id).unwrap_or_default();
        if replica && !request.log_id.is_empty() && request.log_id != log_id {
            tracing::warn!(
                caller = %request.follower_id, callers_log = %request.log_id, log = %log_id,
                "refusing a replica that holds another log"
            );
            return Err(Status::invalid_argument(format!(
                "{} holds log {log_id}, and the caller's data dir holds log {}: they are different logs, \
                 so nothing can be compared or copied; follow the leader of your own log, or start from an \
                 empty data dir",
                node.config.node_id, request.log_id
            )));
        }
        let Ok(permit) = Arc::clone(&self.streams).try_acquire_owned() else {
            return Err(Status::resource_exhausted(format!(
                "{} already serves {} replication streams (its --max-replication-streams); try again once one ends",
                self.config.node_id, self.config.max_fetch_streams
            )));
        };
        let (tx, rx) = mpsc::channel(STREAM_DEPTH);
        // A last record below our log start cannot be compared (retention deleted ours),
        // and need not be: every record the caller holds lies below it, so the first
        // chunk's `log_start_offset` has it begin again there (README, "Retention").
        let log_start = node.log.log_start_offset();
        if let Some(last) = request.last.as_ref().filter(|last| last.offset >= log_start) {
            let mut epoch_here = node.log.epoch_at(last.offset).map_err(internal)?;
            if epoch_here.is_none() {
                // Compaction may have removed our record there. A later record of the
                // caller's epoch shows we held that very record (one leader per epoch
                // writes each offset once, and both logs copy it), so the logs agree up to
                // it; telling the caller to cut could lose a tombstone it still needs.
                epoch_here = node.log.epoch_at_or_after(last.offset).map_err(internal)?.filter(|&e| e == last.epoch);
            }
            if diverges(LastRecordCheck { offset: last.offset, caller_epoch: last.epoch, epoch_here }) {
                let (epoch, end_offset) = node.log.epoch_end(last.epoch).map_err(internal)?;
                tracing::info!(
                    follower = %request.follower_id, last_offset = last.offset, last_epoch = last.epoch,
                    ?epoch, end_offset, "caller's log diverges from ours; telling it where to truncate"
                );
                let diverged = Diverged { epoch, end_offset, copy_afresh: false, partition: request.partition };
                let diverged = fetch_response::Kind::Diverged(diverged);
                let _ = tx.try_send(Ok(FetchResponse { kind: Some(diverged) }));
                drop(permit);
                return Ok(Response::new(ReceiverStream::new(rx)));
            }
        }
        if replica && matches!(node.config.role, Role::Leader { .. }) {
            remember_follower(node, &request.follower_id).await?;
        }
        let next_offset = node.log.next_offset();
        // Registered before the hello goes out: the follower's first ack (on its own call)
        // may arrive before the stream task runs, and acks of unknown sessions are ignored.
        let holds = request.next_offset.min(next_offset);
        let registration = replica.then(|| node.followers.connect(&request.follower_id, holds));
        // Read once registered: from then on the horizon waits for this follower, and the
        // cleaner records a horizon before it re-checks it against the followers and uses
        // it, so one that passed without this follower is in the file by now.
        let dropped_below = tombstones_dropped_below(node, replica).map_err(internal)?;
        if replica && request.last.is_some() && missed_deletions(request.next_offset, log_start, dropped_below) {
            tracing::warn!(
                follower = %request.follower_id, from = request.next_offset, tombstones_dropped_below = dropped_below,
                "a follower whose log ends below where tombstones were dropped (it was away, or forgotten) \
                 missed deletions: telling it to copy the log afresh from the log start {log_start}"
            );
            let diverged =
                Diverged { epoch: None, end_offset: log_start, copy_afresh: true, partition: request.partition };
            let diverged = fetch_response::Kind::Diverged(diverged);
            let _ = tx.try_send(Ok(FetchResponse { kind: Some(diverged) }));
            drop((registration, permit));
            return Ok(Response::new(ReceiverStream::new(rx)));
        }
        let hello = Hello {
            leader_id: node.config.node_id.clone(),
            client_addr: node.config.client_addr.clone(),
            epoch,
            next_offset,
            max_record_bytes: node.config.max_record_bytes as u64,
            session: registration.as_ref().map(|r| r.token().to_vec()).unwrap_or_default(),
            log_id,
            tombstones_dropped_below: dropped_below,
            partition: request.partition,
        };
        let _ = tx.try_send(Ok(FetchResponse { kind: Some(fetch_response::Kind::Hello(hello)) }));
        if replica {
            tracing::info!(follower = %request.follower_id, from = request.next_offset, "follower connected");
        }
        tokio::spawn(stream_log(Arc::clone(node), request, tx, registration, permit));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn acknowledge(&self, request: Request<Streaming<Ack>>) -> Result<Response<AckSummary>, Status> {
        self.authorize(&request, "Acknowledge")?;
        let certificate = self.config.tls.as_ref().map(|grpc| (grpc, crate::tls::PeerCertificate::of(&request)));
        let mut acks = request.into_inner();
        let mut shutdown = self.stopping.clone();
        // The caller's certificate cannot change within one call, and checking it costs a
        // chain verification: the follower id it was found to name is remembered.
        let mut certified: Option<String> = None;
        loop {
            let ack = tokio::select! {
                ack = acks.message() => ack?,
                // The follower never ends this call itself; shutdown must not wait for it.
                _ = shutdown.wait_for(|&stop| stop) => None,
            };
            let Some(ack) = ack else { break };
            if let Some((grpc, certificate)) = &certificate
                && certified.as_deref() != Some(ack.follower_id.as_str())
            {
                if certificate.as_ref().is_some_and(|certificate| certificate.is_node(grpc, &ack.follower_id)) {
                    certified = Some(ack.follower_id.clone());
                } else {
                    tracing::warn!(follower = %ack.follower_id, "refusing acknowledgements for a node the caller's certificate does not name");
                    return Err(Status::permission_denied(format!(
                        "Acknowledge as {} needs the node certificate of {}",
                        ack.follower_id, ack.follower_id
                    )));
                }
            }
            let Some(node) = self.replicas.get(ack.partition) else {
                tracing::warn!(follower = %ack.follower_id, partition = ack.partition, "ignoring an acknowledgement for a partition this node holds no replica of");
                continue;
            };
            if let Err(refusal) = node.followers.acknowledge(&ack.session, &ack.follower_id, ack.durable_offset) {
                tracing::warn!(follower = %ack.follower_id, %refusal, "ignoring an acknowledgement");
            }
        }
        Ok(Response::new(AckSummary {}))
    }
}

impl Service {
    /// The replica of `partition`, or NOT_FOUND when this node holds none.
    fn replica(&self, partition: PartitionId) -> Result<Arc<Replication>, Status> {
        self.replicas.get(partition).ok_or_else(|| {
            let held: Vec<String> = self.replicas.partitions().iter().map(u32::to_string).collect();
            let held = match held.len() {
                0 => "none".to_string(),
                1 => format!("partition {}", held[0]),
                _ => format!("partitions {}", held.join(", ")),
            };
            Status::not_found(format!(
                "{} holds no replica of partition {partition} (it holds {held}); ask a node that does",
                self.config.node_id
            ))
        })
    }

    /// Refuses a call without this node's password, when it has one. The refusal names no
    /// part of what was presented.
    fn authorize<T>(&self, request: &Request<T>, call: &str) -> Result<(), Status> {
        // Under mutual TLS a certificate of the cluster's CA stands in for the password
        // (a consumer such as `msglog tail` may present either).
        if crate::tls::peer_certified(request) {
            return Ok(());
        }
        let Err(presented) = crate::bearer::check(request, self.config.password.as_ref()) else { return Ok(()) };
        let peer = request.remote_addr().map_or_else(|| "unknown".to_string(), |a| a.to_string());
        // A follower with the wrong password retries every few hundred milliseconds.
        if let Some(held_back) = self.refusals.admit() {
            tracing::warn!(%peer, call, presented = presented.any(), held_back,
                "refusing a replication call without the password (such refusals are logged once per 10 s)");
        }
        let remedy =
            "start followers with the same --requirepass (or MSGLOG_PASSWORD), and give `msglog tail` --password";
        Err(presented.refusal(&self.config.node_id, call, remedy))
    }
}

impl Service {
    /// Under mutual TLS, refuses a caller that claims a node id its certificate does not
    /// carry: one node's certificate must not let it fetch or acknowledge as another.
    fn certified_as<T>(&self, request: &Request<T>, claimed: &str, call: &str) -> Result<(), Status> {
        let Some(grpc) = &self.config.tls else { return Ok(()) };
        if crate::tls::PeerCertificate::of(request).is_some_and(|certificate| certificate.is_node(grpc, claimed)) {
            return Ok(());
        }
        let peer = request.remote_addr().map_or_else(|| "unknown".to_string(), |a| a.to_string());
        tracing::warn!(%peer, call, claimed, "refusing a caller whose certificate does not name the node id it claims");
        Err(Status::permission_denied(format!(
            "{call} as {claimed} needs {claimed}'s node certificate (a DNS name equal to the node id, \
             and an extended key usage that allows serverAuth)"
        )))
    }
}

/// A replica's fetch in cluster mode: only from a replica of the partition, and only to the
/// leader of exactly the epoch the caller was told of (a newer one means we are deposed, an
/// older one that the caller is behind: either way the caller asks the quorum again).
fn fence_replica_fetch(node: &Replication, request: &FetchRequest) -> Result<(), Status> {
    let Position::Leading { epoch, replicas, .. } = node.position() else {
        return Err(Status::failed_precondition(format!(
            "{} does not lead the partition now; ask the cluster for its leader",
            node.config.node_id
        )));
    };
    if request.leader_epoch != epoch {
        return Err(Status::failed_precondition(format!(
            "{} leads epoch {epoch}, not epoch {} as the caller believes",
            node.config.node_id, request.leader_epoch
        )));
    }
    if !replicas.contains(&request.follower_id) {
        tracing::warn!(caller = %request.follower_id, "refusing a replica fetch from a node that is not a replica");
        return Err(Status::permission_denied(format!("{} is not a replica of this partition", request.follower_id)));
    }
    Ok(())
}

/// `request` with this node's password attached, if it has one.
pub(super) fn with_password<T>(message: T, password: Option<&crate::server::Password>) -> Request<T> {
    let mut request = Request::new(message);
    crate::bearer::present(&mut request, crate::bearer::value(password).as_ref());
    request
}

/// Sends the log from `request.next_offset` until the caller goes away or the node shuts
/// down; without `follow`, only up to the log's end as of the request.
/// Why a fetch stream ends when its session is forgotten: this node began a new leadership
/// (possibly of the same epoch, after its lease lapsed and came back), and acknowledgements
/// count only on a session opened since.
const LEADERSHIP_BEGAN_AGAIN: &str = "this node's leadership began again; fetch again to open a new session";

/// How often an idle replica's stream looks whether retention moved the log start.
const LOG_START_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

async fn stream_log(
    node: Arc<Replication>,
    request: FetchRequest,
    tx: Sender,
    registration: Option<Registration>,
    permit: OwnedSemaphorePermit,
) {
    // Held for the stream's life: the follower counts as connected, and the stream takes
    // one of the node's slots, until it ends.
    let _permit = permit;
    let until = if request.follow { Offset::MAX } else { node.log.next_offset() };
    // A consumer in cluster mode reads committed records only; a replica reads everything.
    let committed_only = node.is_cluster() && registration.is_none();
    let mut appended = node.appended.subscribe();
    let mut truncations = node.truncations.subscribe();
    // Only cuts made from now on concern this stream.
    truncations.borrow_and_update();
    let mut woken_by_cut = false;
    let mut shutdown = node.shutdown.clone();
    let mut next = request.next_offset;
    // A replica is told when the committed offset (cluster mode: the high watermark) or
    // the tombstone horizon moves even when no record does: its reads and truncation
    // depend on what is committed, and its cleaner on both.
    let mut replicated = node.followers.watch_replicated();
    let tells_watermark = registration.is_some();
    let mut told = (0, 0);
    let mut told_start = 0;
    while next < until {
        // Marked seen before reading, so an append after the read wakes the wait below.
        appended.borrow_and_update();
        let cut_now = truncations.has_changed().unwrap_or(false) || std::mem::take(&mut woken_by_cut);
        let cut = if cut_now { *truncations.borrow_and_update() } else { None };
        if let Some(end) = cut
            && cut_passes_cursor(cut, next)
        {
            let why = format!("this node's log was cut back to end at offset {end}; fetch again from there");
            let _ = tx.send(Err(Status::aborted(why))).await;
            return;
        }
        let limit = if committed_only { node.high_watermark() } else { Offset::MAX };
        let chunk = match read_below(&node, next, limit) {
            Ok(chunk) => chunk,
            Err(err) => {
                tracing::error!(%err, offset = next, "reading the log for a fetch stream failed");
                let _ = tx.send(Err(internal(err))).await;
                return;
            }
        };
        if chunk.bytes.is_empty() {
            if !request.follow {
                return;
            }
            // Checked here too, not only when records go out: a follower that already holds
            // everything gets no records, and a leader that counts none of its acks lets no
            // write in (the ISR shrinks below min-insync), so only this ends its stream.
            if registration.as_ref().is_some_and(|r| !r.is_open()) {
                let _ = tx.send(Err(Status::aborted(LEADERSHIP_BEGAN_AGAIN))).await;
                return;
            }
            if tells_watermark {
                let points = node.shipped_clean_points();
                let log_start = node.log.log_start_offset();
                if points.0 > told.0 || points.1 > told.1 || log_start > told_start {
                    (told, told_start) = (points, log_start);
                    let response = records(&node, Vec::new(), points, log_start, tells_watermark);
                    let failed = response.is_err();
                    if tx.send(response).await.is_err() || failed {
                        return;
                    }
                }
            }
            tokio::select! {
                changed = appended.changed() => if changed.is_err() { return },
                // A committed-only consumer's next records become readable when the HW moves.
                changed = replicated.changed(), if tells_watermark || committed_only => if changed.is_err() { return },
                _ = truncations.changed() => woken_by_cut = true,
                // Retention moves the log start with no record appended and tells no one:
                // an idle replica learns of it within this, and deletes its own copy below.
                () = tokio::time::sleep(LOG_START_CHECK), if tells_watermark => {}
                () = tx.closed() => return,
                _ = shutdown.wait_for(|&stop| stop) => return,
            }
            // Lets the connections that are appending right now finish first, so one
            // chunk carries their records instead of one message each.
            tokio::task::yield_now().await;
            continue;
        }
        next = chunk.next;
        if let Some(registration) = &registration
            && !registration.sending(next)
        {
            let _ = tx.send(Err(Status::aborted(LEADERSHIP_BEGAN_AGAIN))).await;
            return;
        }
        let points = node.shipped_clean_points();
        told = (told.0.max(points.0), told.1.max(points.1));
        told_start = node.log.log_start_offset();
        let response = records(&node, chunk.bytes, points, told_start, tells_watermark);
        let failed = response.is_err();
        tokio::select! {
            sent = tx.send(response) => if sent.is_err() || failed { return },
            _ = shutdown.wait_for(|&stop| stop) => return,
        }
    }
}

/// A `Records` message: `frames` (none: only the points moved) with what a replica learns
/// beside them, the leader's end, clean points (committed offset, tombstone horizon), log
/// start and, for a `replica`, where this log may lack tombstones. An error (the horizon
/// file is unreadable) ends the stream.
fn records(
    node: &Replication,
    frames: Vec<u8>,
    (high_watermark, tombstone_horizon): (Offset, Offset),
    log_start_offset: Offset,
    replica: bool,
) -> Result<FetchResponse, Status> {
    // Read after `frames`: a cleaner pass records its horizon before it swaps in segments
    // without tombstones, so what was read then is covered by what this says now.
    let tombstones_dropped_below = tombstones_dropped_below(node, replica).map_err(|err| {
        tracing::error!(%err, "reading the tombstone horizon for a fetch stream failed");
        internal(err)
    })?;
    let records = Records {
        frames,
        leader_next_offset: node.log.next_offset(),
        high_watermark,
        log_start_offset,
        tombstone_horizon,
        tombstones_dropped_below,
    };
    Ok(FetchResponse { kind: Some(fetch_response::Kind::Records(records)) })
}

/// This log's recorded tombstone horizon, which a replica copies (0 for a consumer, which
/// keeps no copy: a damaged horizon file does not stop `msglog tail`).
fn tombstones_dropped_below(node: &Replication, replica: bool) -> Result<Offset, StorageError> {
    match replica {
        true => node.log.tombstones_dropped_below(),
        false => Ok(0),
    }
}

/// A manual leader records each follower its log is copied to before it ships any record,
/// so that tombstones wait for it even across a restart of this node (README, "Compaction").
async fn remember_follower(node: &Arc<Replication>, id: &str) -> Result<(), Status> {
    if node.followers.is_known(id) {
        return Ok(());
    }
    let (log, owned) = (Arc::clone(&node.log), id.to_string());
    let remembered = tokio::task::spawn_blocking(move || log.remember_follower(&owned))
        .await
        .map_err(|err| Status::internal(format!("recording a new follower failed: {err}")))?;
    match remembered {
        Ok(true) => {
            tracing::info!(follower = %id, "a new follower: recorded in the data dir's `followers` file; tombstones wait for it from now on, across restarts too");
            Ok(())
        }
        Ok(false) => Ok(()),
        Err(StorageError::Io(err)) if err.kind() == std::io::ErrorKind::InvalidInput => {
            Err(Status::invalid_argument(err.to_string()))
        }
        Err(err) => {
            tracing::error!(follower = %id, %err, "recording a new follower failed");
            Err(internal(err))
        }
    }
}

/// Whole records from `next`, none at or above `limit`.
fn read_below(node: &Replication, next: Offset, limit: Offset) -> Result<Chunk, StorageError> {
    if next >= limit {
        return Ok(Chunk { bytes: Default::default(), next });
    }
    let chunk = node.log.read_from(next, CHUNK_BYTES)?;
    if chunk.next <= limit {
        return Ok(chunk);
    }
    Ok(chunk.below(limit))
}

fn internal(err: StorageError) -> Status {
    Status::internal(format!("storage failure: {err}"))
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use tokio_stream::StreamExt;

    use super::{Ack, FetchRequest, Hello};

    #[test]
    fn partition_0_adds_no_bytes_so_nodes_older_than_partitions_read_the_same_messages() {
        let request = FetchRequest { follower_id: "a".to_string(), next_offset: 5, ..FetchRequest::default() };
        assert_eq!(request.encode_to_vec(), b"\x0a\x01a\x10\x05");
        let ack = Ack { follower_id: "a".to_string(), durable_offset: 5, ..Ack::default() };
        assert_eq!(ack.encode_to_vec(), b"\x0a\x01a\x10\x05");
        let hello = Hello { epoch: 2, ..Hello::default() };
        assert_eq!(hello.encode_to_vec(), b"\x18\x02");
        // Another partition is field 8 of a request, 4 of an ack, 9 of a hello.
        assert_eq!(FetchRequest { partition: 3, ..request }.encode_to_vec(), b"\x0a\x01a\x10\x05\x40\x03");
        assert_eq!(Ack { partition: 3, ..ack }.encode_to_vec(), b"\x0a\x01a\x10\x05\x20\x03");
        assert_eq!(Hello { partition: 3, ..hello }.encode_to_vec(), b"\x18\x02\x48\x03");
    }

    #[tokio::test]
    async fn grpc_connections_are_accepted_with_nagles_algorithm_off() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut accepted = super::incoming(listener);
        let _caller = tokio::net::TcpStream::connect(addr).await.unwrap();
        let stream = accepted.next().await.expect("a connection").unwrap();
        assert!(stream.nodelay().unwrap(), "TCP_NODELAY on an accepted connection");
    }
}
