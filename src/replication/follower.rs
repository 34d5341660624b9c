//! A follower's loop: fetch the leader's log, append it verbatim, fsync per this node's
//! policy, acknowledge. Reconnects with backoff, forever, until shutdown.
//!
//! A session starts with the divergence check: the fetch request carries this log's last
//! (offset, epoch). If the leader does not hold that record, it answers where the largest
//! epoch it shares with us ends (KIP-279); we cut our log to the lower of that and our own
//! end of that epoch, and ask again. Each round removes at least one record, so it ends.
//!
//! Appending and fsyncing overlap: chunks are appended as they arrive while a separate
//! task fsyncs whatever has been appended and acknowledges it, one fsync per round.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::cluster::metadata::PartitionId;
use crate::storage::{CleanPoints, Epoch, Log, Offset, StorageError};

use super::proto::replication_client::ReplicationClient;
use super::proto::{Ack, Diverged, FetchRequest, LastRecord, fetch_response};
use super::rules::{begins_at_leaders_start, divergence_cut};
use super::service::with_password;
use super::{CHUNK_BYTES, Replication, Role, describe_status, root_cause};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("cannot reach the leader: {}", root_cause(.0))]
    Connect(#[from] tonic::transport::Error),
    /// The shared channel connects on its first call, so a leader that cannot be reached
    /// shows as the fetch call's failure.
    #[error("cannot reach the leader: {0}")]
    Unreachable(String),
    #[error("the leader refused or broke the stream: {}", describe_status(.0))]
    Stream(#[from] tonic::Status),
    #[error("the leader closed the stream")]
    Closed,
    #[error("the leader sent something unexpected: {0}")]
    Protocol(&'static str),
    #[error(
        "leader {leader_id} writes records of up to {leader} bytes but this node accepts only {ours}; \
         restart this follower with a --max-message-bytes at least as large as the leader's"
    )]
    RecordLimit { leader_id: String, leader: u64, ours: usize },
    #[error(
        "the leader says our log diverges below offset {committed}, which it had told us is committed; \
         refusing to truncate committed records (is this the right cluster?)"
    )]
    BelowCommitted { committed: Offset },
    #[error("the leader leads epoch {theirs}, not epoch {expected} as the cluster's metadata says")]
    WrongEpoch { theirs: Epoch, expected: Epoch },
    #[error(
        "the leader answered for partition {theirs}, not partition {ours} as asked (is it an msglog older than \
         partitions?); nothing of its log is copied"
    )]
    WrongPartition { theirs: PartitionId, ours: PartitionId },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the fsync task stopped: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl SessionError {
    /// A cluster-mode leader refused the fetch (its epoch or leadership is not the one we
    /// were told of yet): the metadata is about to settle, so asking again soon is right.
    fn is_refusal(&self) -> bool {
        matches!(self, SessionError::Stream(status) if status.code() == tonic::Code::FailedPrecondition)
    }

    fn is_connection_loss(&self) -> bool {
        matches!(
            self,
            SessionError::Connect(_) | SessionError::Unreachable(_) | SessionError::Stream(_) | SessionError::Closed
        )
    }
}

/// The leader a follower loop fetches from.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub grpc_addr: String,
    /// Cluster mode: the epoch the quorum says it leads. A node leading any other epoch is
    /// refused, and refuses us.
    pub epoch: Option<Epoch>,
}

/// Aborts a spawned task when dropped, so that a session cancelled mid-way (its leader
/// changed) leaves nothing of itself running.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How a session that did not fail ended.
#[derive(Debug)]
enum SessionEnd {
    /// Our tail was cut; fetch again at once.
    Truncated,
    Shutdown,
}

/// Follows `target` until shutdown or until `stop` turns true (the leader changed).
pub(super) async fn follow(node: Arc<Replication>, target: Target, mut stop: watch::Receiver<bool>) {
    let mut shutdown = node.shutdown.clone();
    let mut backoff = FIRST_BACKOFF;
    let leader = target.grpc_addr.clone();
    loop {
        let ended = tokio::select! {
            ended = session(&node, &target) => ended,
            _ = shutdown.wait_for(|&stop| stop) => Ok(SessionEnd::Shutdown),
            _ = stop.wait_for(|&stop| stop) => Ok(SessionEnd::Shutdown),
        };
        let established = node.upstream.connected.swap(false, Ordering::Relaxed);
        match ended {
            Ok(SessionEnd::Shutdown) => return,
            Ok(SessionEnd::Truncated) => continue,
            Err(err) => {
                // A session that was established and then lost its leader earns a fast
                // retry; one that failed on what it received or on our own log does not,
                // as trying again at once would fail the same way.
                if (established && err.is_connection_loss()) || (err.is_refusal() && target.epoch.is_some()) {
                    backoff = FIRST_BACKOFF;
                }
                tracing::warn!(%leader, %err, retry_in = ?backoff, "replication session ended");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(|&stop| stop) => return,
            _ = stop.wait_for(|&stop| stop) => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// A stream's first message names the partition it compares or carries: one of another
/// partition (from a node that ignored the one asked for) must not touch this log.
fn same_partition(theirs: PartitionId, ours: PartitionId) -> Result<(), SessionError> {
    match theirs == ours {
        true => Ok(()),
        false => Err(SessionError::WrongPartition { theirs, ours }),
    }
}

/// Why the fetch call itself failed: a connection that could not be made (or broke before
/// the leader answered) says the leader cannot be reached; the rest is the leader's word.
fn fetch_failed(status: tonic::Status) -> SessionError {
    match std::error::Error::source(&status).map(root_cause) {
        // Not a plain-gRPC peer: `describe_status` says what to give instead.
        Some(cause) if status.code() == tonic::Code::Unavailable && !cause.contains("frame with invalid size") => {
            SessionError::Unreachable(cause)
        }
        _ => SessionError::Stream(status),
    }
}

async fn session(node: &Arc<Replication>, target: &Target) -> Result<SessionEnd, SessionError> {
    let leader = target.grpc_addr.as_str();
    // Shared with the node's other partitions that copy from the same leader; a lost
    // connection shows as the fetch call's error.
    let channel = node.config.peers.channel(
        leader,
        node.config.tls.as_ref().map(|tls| &tls.client),
        node.config.bind_source_addr,
    )?;
    let mut client = client(channel, node.config.max_record_bytes);
    let log = &node.log;
    let last = log.last_record();
    let request = FetchRequest {
        follower_id: node.config.node_id.clone(),
        next_offset: log.next_offset(),
        last: last.map(|(offset, epoch)| LastRecord { offset, epoch }),
        follow: true,
        known_epoch: log.stats().epoch,
        leader_epoch: target.epoch.unwrap_or(0),
        // An empty log has nothing to compare: it copies whichever log its leader holds.
        log_id: match last {
            Some(_) => log.lineage()?.map(|lineage| lineage.log_id).unwrap_or_default(),
            None => String::new(),
        },
        partition: node.partition,
    };
    let password = node.config.password.as_ref();
    let mut stream = client.fetch(with_password(request, password)).await.map_err(fetch_failed)?.into_inner();
    let hello = match stream.message().await?.and_then(|m| m.kind) {
        Some(fetch_response::Kind::Hello(hello)) => hello,
        Some(fetch_response::Kind::Diverged(diverged)) => {
            same_partition(diverged.partition, node.partition)?;
            let last = last.ok_or(SessionError::Protocol("divergence reported for an empty log"))?;
            // A leader that has us copy afresh holds every committed record: none is lost
            // by cutting below what it told us was committed (a running follower remembers
            // that; a restarted one would not, and would copy afresh all the same).
            let committed = match diverged.copy_afresh {
                true => 0,
                false => node.upstream.known_committed.load(Ordering::Relaxed),
            };
            truncate_divergent_tail(log, &diverged, last, committed)?;
            node.truncated(log.next_offset());
            return Ok(SessionEnd::Truncated);
        }
        Some(fetch_response::Kind::Records(_)) => return Err(SessionError::Protocol("records before hello")),
        None => return Err(SessionError::Closed),
    };
    same_partition(hello.partition, node.partition)?;
    if hello.max_record_bytes > node.config.max_record_bytes as u64 {
        return Err(SessionError::RecordLimit {
            leader_id: hello.leader_id,
            leader: hello.max_record_bytes,
            ours: node.config.max_record_bytes,
        });
    }
    if let Some(expected) = target.epoch
        && hello.epoch != expected
    {
        return Err(SessionError::WrongEpoch { theirs: hello.epoch, expected });
    }
    if hello.log_id.is_empty() {
        return Err(SessionError::Protocol("a hello that names no log (is the leader an older msglog?)"));
    }
    // Before anything is appended: from now on this data dir is a copy of the leader's log.
    let another_log = log.lineage()?.map(|lineage| lineage.log_id).as_deref() != Some(hello.log_id.as_str());
    log.adopt_lineage(&hello.log_id)?;
    if another_log {
        // What a leader of another log said was committed says nothing of this one.
        node.upstream.known_committed.store(0, Ordering::Relaxed);
    }
    log.observe_epoch(hello.epoch)?;
    record_leaders_horizon(log, hello.tombstones_dropped_below)?;
    // What an earlier session's leader said was about the log as it stood then; this
    // leader's first chunk says it anew.
    log.forget_leader_clean_points();
    tracing::info!(
        %leader, leader_id = %hello.leader_id, epoch = hello.epoch, from = log.next_offset(),
        leader_next = hello.next_offset, "following"
    );
    *node.upstream.leader.lock().unwrap_or_else(|e| e.into_inner()) =
        Some((hello.client_addr.clone(), hello.leader_id.clone()));
    node.upstream.leader_next.store(hello.next_offset, Ordering::Relaxed);
    node.upstream.connected.store(true, Ordering::Relaxed);

    // Acknowledgements go up their own client-streaming call on the same connection.
    let (acks, ack_stream) = mpsc::channel(16);
    let mut ack_client = client.clone();
    let ack_call = with_password(ReceiverStream::new(ack_stream), password);
    let _acknowledging = AbortOnDrop(tokio::spawn(async move { ack_client.acknowledge(ack_call).await }));
    let (appended_tx, appended_rx) = watch::channel(log.next_offset());
    let mut syncing =
        AbortOnDrop(tokio::spawn(sync_and_acknowledge(Arc::clone(node), appended_rx, acks, hello.session)));

    loop {
        let message = tokio::select! {
            message = stream.message() => message,
            synced = &mut syncing.0 => break synced.map_err(SessionError::from).and_then(|r| r),
        };
        let records = match message?.and_then(|m| m.kind) {
            Some(fetch_response::Kind::Records(records)) => records,
            Some(_) => break Err(SessionError::Protocol("a second hello or divergence mid-stream")),
            None => break Err(SessionError::Closed),
        };
        if let Err(err) = record_leaders_horizon(log, records.tombstones_dropped_below) {
            break Err(err.into());
        }
        if begins_at_leaders_start(records.log_start_offset, log.next_offset(), log.log_start_offset())
            && let Err(err) = tokio::task::block_in_place(|| begin_at_leaders_start(log, records.log_start_offset))
        {
            break Err(err.into());
        }
        // CRCs and offsets are checked for the whole chunk before any of it is appended.
        if !records.frames.is_empty()
            && let Err(err) = log.append_raw(&records.frames)
        {
            break Err(err.into());
        }
        let next = log.next_offset();
        node.upstream.leader_next.store(records.leader_next_offset, Ordering::Relaxed);
        node.upstream.known_committed.fetch_max(records.high_watermark, Ordering::Relaxed);
        log.set_leader_clean_points(records.high_watermark, records.tombstone_horizon);
        if records.log_start_offset > log.log_start_offset()
            && let Err(err) = tokio::task::block_in_place(|| log.follow_log_start(records.log_start_offset))
        {
            // Only disk is at stake: the next chunk tries again.
            tracing::warn!(%err, leader_log_start = records.log_start_offset, "deleting segments below the leader's log start failed");
        }
        node.announce(next);
        // A chunk that only moved the high watermark has nothing new to sync or acknowledge.
        appended_tx.send_if_modified(|appended| std::mem::replace(appended, next) != next);
    }
}

fn client(channel: Channel, max_record_bytes: usize) -> ReplicationClient<Channel> {
    ReplicationClient::new(channel).max_decoding_message_size(max_record_bytes + CHUNK_BYTES)
}

/// Makes whatever has been appended durable per this node's policy and tells the leader,
/// one sync per round: chunks appended during a sync go into the next one.
async fn sync_and_acknowledge(
    node: Arc<Replication>,
    mut appended: watch::Receiver<Offset>,
    acks: mpsc::Sender<Ack>,
    session: Vec<u8>,
) -> Result<SessionEnd, SessionError> {
    // The first round acknowledges what this log already held when the session began.
    appended.mark_changed();
    while appended.changed().await.is_ok() {
        let next = *appended.borrow_and_update();
        if let Some(last) = next.checked_sub(1) {
            // On this worker rather than the blocking pool: the runtime hands this worker's
            // other tasks to another one, and the fsync saves two thread hand-offs (which
            // measured 25 k → 29–32 k SET/s at tolerance 1 with three nodes on two cores).
            tokio::task::block_in_place(|| node.log.sync_through(last))?;
        }
        let ack = Ack {
            follower_id: node.config.node_id.clone(),
            durable_offset: next,
            session: session.clone(),
            partition: node.partition,
        };
        if acks.send(ack).await.is_err() {
            return Err(SessionError::Closed);
        }
    }
    Ok(SessionEnd::Shutdown)
}

/// Raises this log's tombstone horizon to the leader's before any record that came with it
/// is appended: those records may come from segments its cleaner thinned, so should this
/// node lead, a replica whose log ends below that horizon has to copy the log afresh, as it
/// would from the old leader. Most messages leave it unchanged and cost no write; a leader
/// that dropped none (or predates the field) ships 0, and this file is not even read.
fn record_leaders_horizon(log: &Log, leaders: Offset) -> Result<(), StorageError> {
    if leaders > 0 && leaders > log.tombstones_dropped_below()? {
        tokio::task::block_in_place(|| log.let_tombstones_drop_below(leaders))?;
    }
    Ok(())
}

/// Every record we hold lies below the leader's log start (its retention deleted them, or
/// this log is new; see [`begins_at_leaders_start`]): what we hold cannot be continued or
/// checked, so the log begins again at the leader's log start, and copies from there.
fn begin_at_leaders_start(log: &Log, start: Offset) -> Result<(), StorageError> {
    let dropped = log.begin_at(start)?;
    if dropped > 0 {
        tracing::warn!(
            dropped,
            leader_log_start = start,
            "the leader's retention deleted every record this log holds; dropping them and copying from its log start"
        );
    } else {
        tracing::info!(leader_log_start = start, "the leader's log starts at {start}; this log begins there");
    }
    Ok(())
}

/// Cuts our log where the leader says it diverges: at the lower of the leader's end of the
/// largest epoch we share and our own end of it, and always below our last record.
fn truncate_divergent_tail(
    log: &Log,
    diverged: &Diverged,
    (last_offset, _): (Offset, Epoch),
    committed: Offset,
) -> Result<(), SessionError> {
    let ours = match diverged.epoch {
        Some(epoch) => log.epoch_end(epoch)?.1,
        None => log.start_offset()?,
    };
    let target = divergence_cut(diverged.end_offset, ours, last_offset);
    if target < committed.min(log.next_offset()) {
        return Err(SessionError::BelowCommitted { committed });
    }
    let next = log.next_offset();
    tracing::warn!(
        truncate_to = target, dropped = next - target, leader_epoch = ?diverged.epoch,
        leader_end_offset = diverged.end_offset, "our log holds records the leader does not; truncating them"
    );
    Ok(log.truncate_to(target)?)
}

impl Replication {
    /// What a leader ships with its records for its followers' cleaners: its committed
    /// offset (cluster mode: the high watermark; otherwise what `--tolerance` followers and
    /// this node hold durably) and its tombstone horizon (every replica holds every record
    /// below it; never above the committed offset).
    pub(super) fn shipped_clean_points(&self) -> (Offset, Offset) {
        let committed = match &self.config.role {
            Role::Cluster { .. } => self.high_watermark(),
            _ => self.followers.replicated().min(self.log.durable_offset()).min(self.log.next_offset()),
        };
        let horizon = match &self.config.role {
            Role::Cluster { .. } => match self.leadership.leading_replicas() {
                Some(replicas) => self.followers.tombstone_horizon(Some((&replicas, &self.config.node_id)), 0),
                // Not leading in cluster mode: no replica's word counts for anything.
                None => 0,
            },
            Role::Leader { tolerance, .. } => self.followers.tombstone_horizon(None, *tolerance),
            Role::Follower { .. } => 0,
        };
        (committed, horizon.min(committed))
    }

    /// Where this node's cleaner may act now (`docs/FORMAT.md`, "Compaction"): a leader
    /// below its own committed offset and horizon, applying its own retention; a follower
    /// below what its leader shipped (and its own durable offset), never by its own view,
    /// so that every replica removes the same records. A follower only cleans below the
    /// leader's committed offset, which no leader ever cuts.
    ///
    /// The cleaner records the tombstone horizon in the data dir before a pass uses it, then
    /// asks for these points again and uses the lower horizon, so that this node, leading,
    /// knows which returning replicas missed deletions: a follower that registers meanwhile
    /// holds the second answer down, or reads the recorded horizon when it fetches
    /// (service.rs reads it after registering), so no fetch slips between the two.
    pub fn clean_points(&self) -> CleanPoints {
        if self.is_leader() {
            let (upto, tombstone_horizon) = self.shipped_clean_points();
            CleanPoints { upto, tombstone_horizon, own_retention: true }
        } else {
            let (committed, horizon) = self.log.leader_clean_points();
            let upto = committed.min(self.log.durable_offset());
            CleanPoints { upto, tombstone_horizon: horizon.min(upto), own_retention: false }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::{mpsc, watch};
    use tokio_stream::StreamExt;
    use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
    use tonic::{Request, Response, Status, Streaming};

    use super::super::proto::replication_server::{Replication as ReplicationRpc, ReplicationServer};
    use super::super::proto::{Ack, AckSummary, Diverged, FetchRequest, FetchResponse, Hello, fetch_response};
    use super::super::{PeerChannels, Replication, ReplicationConfig, Role};
    use super::{SessionError, Target, session};
    use crate::storage::{Config, Log};

    /// A leader older than partitions: it ignores the partition asked for and answers for
    /// its one log, partition 0, with `answer`.
    struct OlderLeader {
        answer: fetch_response::Kind,
    }

    #[tonic::async_trait]
    impl ReplicationRpc for OlderLeader {
        type FetchStream = ReceiverStream<Result<FetchResponse, Status>>;

        async fn fetch(&self, _: Request<FetchRequest>) -> Result<Response<Self::FetchStream>, Status> {
            let (tx, rx) = mpsc::channel(1);
            tx.try_send(Ok(FetchResponse { kind: Some(self.answer.clone()) })).expect("room for one");
            Ok(Response::new(ReceiverStream::new(rx)))
        }

        async fn acknowledge(&self, _: Request<Streaming<Ack>>) -> Result<Response<AckSummary>, Status> {
            Ok(Response::new(AckSummary {}))
        }
    }

    /// Starts an [`OlderLeader`] on a loopback port the OS picks and returns its address.
    async fn older_leader(answer: fetch_response::Kind) -> String {
        older_leader_counting(answer).await.0
    }

    /// [`older_leader`], and the count of TCP connections it has accepted.
    async fn older_leader_counting(answer: fetch_response::Kind) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&accepted);
        let incoming = TcpListenerStream::new(listener).map(move |accepted| {
            counted.fetch_add(1, Ordering::Relaxed);
            accepted
        });
        let server = tonic::transport::Server::builder().add_service(ReplicationServer::new(OlderLeader { answer }));
        tokio::spawn(server.serve_with_incoming(incoming));
        (addr.to_string(), accepted)
    }

    /// A replica of partition 1 whose log holds two records.
    fn replica_of_partition_1(dir: &std::path::Path, leader: &str) -> Arc<Replication> {
        replica(1, dir, leader, PeerChannels::default())
    }

    /// A replica of `partition` whose log holds two records, sharing `peers` with others.
    fn replica(partition: u32, dir: &std::path::Path, leader: &str, peers: PeerChannels) -> Arc<Replication> {
        let log = Arc::new(Log::open(dir, Config::default()).expect("open"));
        log.append(b"a", b"1").expect("append");
        log.append(b"b", b"2").expect("append");
        let config = ReplicationConfig {
            node_id: "f".to_string(),
            client_addr: "127.0.0.1:1".to_string(),
            role: Role::Follower { leader: leader.to_string() },
            max_record_bytes: 1 << 20,
            max_fetch_streams: 4,
            bind_source_addr: None,
            password: None,
            protected_mode: false,
            tls: None,
            peers,
        };
        Replication::new(partition, log, config, watch::channel(false).1)
    }

    #[tokio::test]
    async fn a_divergence_for_another_partition_cuts_nothing() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let cut_everything = Diverged { epoch: None, end_offset: 0, copy_afresh: true, partition: 0 };
        let leader = older_leader(fetch_response::Kind::Diverged(cut_everything)).await;
        let node = replica_of_partition_1(dir.path(), &leader);
        let ended = session(&node, &Target { grpc_addr: leader, epoch: None }).await;
        assert!(matches!(ended, Err(SessionError::WrongPartition { theirs: 0, ours: 1 })), "{ended:?}");
        assert_eq!(node.log.next_offset(), 2, "both records kept");
    }

    #[tokio::test]
    async fn a_hello_for_another_partition_is_refused_before_its_log_is_adopted() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let hello = Hello {
            leader_id: "old".to_string(),
            epoch: 1,
            next_offset: 9,
            max_record_bytes: 1 << 20,
            log_id: "another-log".to_string(),
            ..Hello::default()
        };
        let leader = older_leader(fetch_response::Kind::Hello(hello)).await;
        let node = replica_of_partition_1(dir.path(), &leader);
        let ended = session(&node, &Target { grpc_addr: leader, epoch: None }).await;
        assert!(matches!(ended, Err(SessionError::WrongPartition { theirs: 0, ours: 1 })), "{ended:?}");
        let lineage = node.log.lineage().expect("lineage").map(|lineage| lineage.log_id);
        assert_ne!(lineage.as_deref(), Some("another-log"), "the other partition's log id was not adopted");
    }
    #[tokio::test]
    async fn every_partition_copying_from_one_leader_shares_one_connection_to_it() {
        let dirs = [tempfile::TempDir::new().expect("temp dir"), tempfile::TempDir::new().expect("temp dir")];
        let hello = Hello { leader_id: "l".to_string(), epoch: 1, next_offset: 2, ..Hello::default() };
        let (leader, accepted) = older_leader_counting(fetch_response::Kind::Hello(hello)).await;
        let peers = PeerChannels::default();
        for (partition, dir) in [1, 2].into_iter().zip(&dirs) {
            let node = replica(partition, dir.path(), &leader, peers.clone());
            // The leader answers for partition 0 whatever is asked: each session makes its
            // call, then ends.
            let ended = session(&node, &Target { grpc_addr: leader.clone(), epoch: None }).await;
            assert!(matches!(ended, Err(SessionError::WrongPartition { theirs: 0, .. })), "{ended:?}");
        }
        assert_eq!(accepted.load(Ordering::Relaxed), 1, "both partitions' fetches came over one connection");
    }

    #[tokio::test]
    async fn a_leader_nobody_listens_for_cannot_be_reached() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        // A port that was free a moment ago: nothing listens there now.
        let leader = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").to_string()
        };
        let node = replica_of_partition_1(dir.path(), &leader);
        let ended = session(&node, &Target { grpc_addr: leader, epoch: None }).await;
        match ended {
            Err(err @ SessionError::Unreachable(_)) => {
                assert!(err.to_string().starts_with("cannot reach the leader: "), "{err}");
                assert!(err.is_connection_loss());
            }
            other => panic!("expected the leader to be unreachable, got {other:?}"),
        }
    }
}
