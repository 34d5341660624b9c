//! Replication: a leader streams its log to followers over a gRPC server-stream; followers
//! append the bytes verbatim and report how far their copy is durable.
//!
//! - [`service`]: the gRPC service every node runs. `Fetch` checks the caller's last
//!   record against this log (KIP-101/KIP-279 divergence), then streams whole framed
//!   records, woken by appends; `Acknowledge` takes a follower's durable offsets.
//! - [`followers`]: the leader's table of followers and the quorum writes wait for.
//! - [`follower`]: a follower's loop: connect with backoff, truncate a divergent tail,
//!   append, fsync per its own policy, acknowledge.
//! - [`peers`]: one HTTP/2 connection per leader, shared by every partition's follower.
//! - [`tail`]: the client `msglog tail` uses.
//!
//! The generated protobuf types stay in this module; the server sees only
//! [`Cluster`](crate::server::Cluster), which [`Replication`] implements.

mod follower;
mod followers;
mod forward;
mod guard;
mod leadership;
mod peers;
mod replicas;
mod rules;
mod service;
mod status;
pub mod tail;

use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cluster::metadata::PartitionId;
use crate::server::{Cluster, Password, Refusal, Replicated, Route};
use crate::storage::{Log, Offset, StorageError};

use followers::{AckRule, Followers};
pub use forward::{ForwardClient, ForwardConfig, serve_forwarding};
pub use leadership::{LeaderInfo, Position};
pub use peers::PeerChannels;
pub use replicas::Replicas;
pub use status::{FollowerStatus, KnownLeader, ReplicationStatus};

/// The forward service, to serve on this node's gRPC port beside replication, so that
/// nodes that do not lead can send it their clients' requests when it leads.
pub fn with_forwarding(
    routes: tonic::service::Routes,
    endpoint: crate::server::ForwardEndpoint,
    config: ForwardConfig,
) -> tonic::service::Routes {
    routes.add_service(forward::service(endpoint, config))
}

#[allow(clippy::all, clippy::pedantic)]
mod proto {
    tonic::include_proto!("msglog.v1");
}

/// Largest chunk of records a fetch stream sends (a single larger record goes alone).
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// HTTP/2 pings on an idle connection notice a dead peer.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How this node reaches another's gRPC address (fetch streams, forwarded requests): with
/// `tls` if set, leaving from `bind_source_addr`, connect timeout, no Nagle delay, and
/// keep-alive pings that notice a dead peer while the connection idles.
fn peer_endpoint(
    grpc_addr: &str,
    tls: Option<&tonic::transport::ClientTlsConfig>,
    bind_source_addr: Option<std::net::IpAddr>,
) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
    Ok(crate::tls::endpoint(grpc_addr, tls)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .local_address(bind_source_addr))
}

/// The innermost cause of an error, without the "transport error: " layers around it:
/// what an operator can act on ("Connection refused (os error 111)").
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// A failed gRPC call in words. A status that wraps a connection error says what broke, and
/// a peer that does not speak HTTP/2 gets a hint: our text/RESP port answers the HTTP/2
/// preface with an `ERR` line, which h2 reads as a frame of impossible size.
fn describe_status(status: &tonic::Status) -> String {
    match std::error::Error::source(status).map(root_cause) {
        Some(cause) if cause.contains("frame with invalid size") => format!(
            "the peer does not speak plain gRPC ({cause}): if that is the node's --grpc-listen port, it requires \
             TLS (give --tls, --cacert and, for a node with --tls-ca, a certificate); otherwise give the node's \
             --grpc-listen address, not its client port"
        ),
        Some(cause) => format!("connection lost: {cause}"),
        None => format!("{:?}: {}", status.code(), status.message()),
    }
}

/// How this node takes part.
#[derive(Debug, Clone)]
pub enum Role {
    /// Takes writes; each waits for `tolerance` followers to hold it durably.
    Leader { tolerance: usize, ack_timeout: Duration },
    /// Copies the log of the leader at this gRPC address and refuses writes.
    Follower { leader: String },
    /// Cluster mode: leads or follows as the metadata quorum decides
    /// ([`Replication::lead`], [`Replication::follow_leader`]); writes wait for every
    /// in-sync replica.
    Cluster { ack_timeout: Duration },
}

#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    pub node_id: String,
    /// Where clients reach this node (the text/RESP listen address).
    pub client_addr: String,
    pub role: Role,
    /// Largest record the log accepts: a fetch message may hold one such record.
    pub max_record_bytes: usize,
    /// Fetch streams (followers and tails) served at once.
    pub max_fetch_streams: usize,
    /// Local address a follower's connections to its leader leave from (`None`: the OS
    /// picks), so that a node's traffic can be told apart by address, by firewalls and by
    /// network fault tests alike.
    pub bind_source_addr: Option<IpAddr>,
    /// Fetch and Acknowledge callers must present it; a follower sends it to its leader.
    pub password: Option<Password>,
    /// Without a password or mutual TLS, a port beyond loopback serves only this machine
    /// (`--protected-mode`, as on the client port).
    pub protected_mode: bool,
    /// Mutual TLS on the gRPC port and towards the leader (`--tls-ca`); `None`: plain.
    pub tls: Option<crate::tls::GrpcTls>,
    /// The connections to leaders, one per node, shared by every partition's follower.
    pub peers: PeerChannels,
}

/// One node's replication state, shared by the gRPC service, the follower loop and the
/// client connections (as their [`Cluster`]).
pub struct Replication {
    /// The partition whose log this is (0 in a cluster of one partition, and off cluster).
    partition: PartitionId,
    log: Arc<Log>,
    config: ReplicationConfig,
    /// The log's end as last announced; fetch streams sleep on it when caught up.
    appended: watch::Sender<Offset>,
    /// Where the log was last cut back (a follower dropping a divergent tail): fetch
    /// streams from this node past that point end, as what they sent is gone.
    truncations: watch::Sender<Option<Offset>>,
    shutdown: watch::Receiver<bool>,
    followers: Arc<Followers>,
    /// Follower side: what it knows of its leader.
    upstream: Upstream,
    /// Cluster mode: where this node stands, and the route its clients' requests take.
    leadership: leadership::Leadership,
}

/// A follower's view of its leader.
#[derive(Default)]
struct Upstream {
    /// Client address and node id of the leader, once a `Hello` told us.
    leader: Mutex<Option<(String, String)>>,
    /// The leader's next offset as of the last chunk received.
    leader_next: AtomicU64,
    /// Every record below this is known committed (cluster mode): the leader's high
    /// watermark as of the last chunk received, raised on a step-down to what this node's
    /// own leadership committed. A divergent tail is never cut below it, and a new
    /// leadership of this node starts its high watermark from it.
    known_committed: AtomicU64,
    connected: std::sync::atomic::AtomicBool,
}

impl Replication {
    /// A manual leader's followers from earlier runs (its data dir's `followers` file): each
    /// holds back the tombstone horizon until it connects again, as one that acknowledged
    /// nothing. Called once at start.
    pub fn recall_followers(&self) -> Result<(), StorageError> {
        if !matches!(self.config.role, Role::Leader { .. }) {
            return Ok(());
        }
        let known = self.log.known_followers()?;
        if !known.is_empty() {
            tracing::info!(followers = ?known, "this log was copied to these followers; tombstones wait until each has them (to retire one for good, stop this node and delete its line from the data dir's `followers` file)");
        }
        self.followers.know(&known);
        Ok(())
    }

    /// Replication of partition `partition`'s log. `shutdown` turning `true` ends the fetch
    /// streams and the follower loop.
    pub fn new(
        partition: PartitionId,
        log: Arc<Log>,
        config: ReplicationConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<Replication> {
        let rule = match config.role {
            Role::Leader { tolerance, .. } => AckRule::Count(tolerance),
            Role::Follower { .. } => AckRule::Count(0),
            Role::Cluster { .. } => AckRule::NotLeading,
        };
        let (appended, _) = watch::channel(log.next_offset());
        let (truncations, _) = watch::channel(None);
        Arc::new(Replication {
            partition,
            log,
            config,
            appended,
            truncations,
            shutdown,
            followers: Arc::new(Followers::new(rule)),
            upstream: Upstream::default(),
            leadership: leadership::Leadership::default(),
        })
    }

    /// The partition whose log this replicates.
    pub fn partition(&self) -> PartitionId {
        self.partition
    }

    fn is_leader(&self) -> bool {
        match self.config.role {
            Role::Leader { .. } => true,
            Role::Follower { .. } => false,
            Role::Cluster { .. } => self.is_leading(),
        }
    }

    fn is_cluster(&self) -> bool {
        matches!(self.config.role, Role::Cluster { .. })
    }

    /// Serves the replication service of every partition in `replicas` (this one among
    /// them) on `listener` and, on a follower, follows the leader, until shutdown.
    /// `extra` are further gRPC services served on the same port (the metadata quorum's).
    pub async fn run(
        self: Arc<Replication>,
        replicas: Arc<Replicas>,
        listener: TcpListener,
        extra: tonic::service::Routes,
    ) -> Result<(), tonic::transport::Error> {
        let following = match &self.config.role {
            Role::Follower { leader } => {
                let target = follower::Target { grpc_addr: leader.clone(), epoch: None };
                // A manual follower follows until shutdown: nothing else stops it.
                let (keep_open, stop) = watch::channel(false);
                let node = Arc::clone(&self);
                Some(tokio::spawn(async move {
                    let _keep_open = keep_open;
                    follower::follow(node, target, stop).await
                }))
            }
            Role::Leader { .. } | Role::Cluster { .. } => None,
        };
        let mut shutdown = self.shutdown.clone();
        let (config, stopping) = (self.config.clone(), self.shutdown.clone());
        let served = service::serve(replicas, config, stopping, listener, extra, async move {
            let _ = shutdown.wait_for(|&stop| stop).await;
        })
        .await;
        if let Some(following) = following {
            let _ = following.await;
        }
        served
    }

    /// The log was cut back to end before `next_offset`.
    fn truncated(&self, next_offset: Offset) {
        self.appended.send_replace(next_offset);
        self.truncations.send_replace(Some(next_offset));
    }

    fn announce(&self, next_offset: Offset) {
        self.appended.send_if_modified(|announced| {
            let newer = next_offset > *announced;
            if newer {
                *announced = next_offset;
            }
            newer
        });
    }
}

impl Cluster for Replication {
    fn admit_write(&self) -> Result<(), Refusal> {
        match &self.config.role {
            Role::Leader { .. } => self.followers.admit(),
            Role::Follower { leader } => {
                let known = self.upstream.leader.lock().unwrap_or_else(|e| e.into_inner());
                let leader = known.as_ref().map_or(leader.as_str(), |(client_addr, _)| client_addr.as_str());
                Err(Refusal(format!("read-only follower; leader is {leader}")))
            }
            Role::Cluster { .. } => self.followers.admit(),
        }
    }

    fn appended(&self, next_offset: Offset) {
        self.announce(next_offset);
    }

    fn replicated(&self, offset: Offset) -> Option<Replicated<'_>> {
        match self.config.role {
            // Usually so already for a read of older records: no future, no subscription.
            Role::Leader { tolerance, .. } if tolerance > 0 && self.followers.is_replicated(offset) => None,
            Role::Leader { tolerance, ack_timeout } if tolerance > 0 => {
                Some(Box::pin(self.followers.wait(offset, ack_timeout)))
            }
            // Every read and write waits for the whole ISR: nothing uncommitted is shown.
            Role::Cluster { .. } if self.followers.is_replicated(offset) => None,
            Role::Cluster { ack_timeout } => Some(Box::pin(self.followers.wait(offset, ack_timeout))),
            _ => None,
        }
    }

    fn role(&self) -> &'static str {
        if self.is_leader() { "leader" } else { "follower" }
    }

    fn routes(&self) -> Option<watch::Receiver<Route>> {
        self.is_cluster().then(|| self.leadership.routes())
    }

    fn stats(&self) -> Vec<(String, String)> {
        self.status().to_pairs()
    }
}
