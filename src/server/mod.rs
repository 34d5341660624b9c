//! The TCP server, in the shape of mini-redis: [`run`] accepts connections until the
//! `shutdown` future completes, bounds them with a semaphore, and then waits for every
//! connection to finish what it has read.

mod auth;
mod budget;
mod clients;
mod cluster;
mod committer;
mod connection;
mod descriptors;
mod execute;
mod forward;
mod loops;
mod marks;
pub mod metrics;
mod partitions;
mod resp;
mod session;
mod shutdown;
mod stats;
mod transaction;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, broadcast, mpsc};

use crate::protocol::resp::{Protocol, RespLimits, RespReply, opens_resp};
use crate::protocol::{self, Reply};
use crate::storage::{FsyncPolicy, Log};

pub use auth::{Admission, InvalidPassword, PROTECTED_MODE_REFUSAL, Password, admission, is_loopback};
pub use cluster::{Cluster, Refusal, Replicated, Route};
use connection::{ClientStream, Connection};
pub use descriptors::{DESCRIPTOR_HEADROOM, DescriptorError, DescriptorLimit, ensure_descriptors};
pub use forward::{
    DEFAULT_ROUTE_WAIT, ForwardDialect, ForwardEndpoint, ForwardFailure, ForwardedReply, ForwardedRequest,
    ForwardedStream, Forwarder, Forwarding, Outgoing, ReplySlot,
};
use partitions::{PartitionServing, Partitions};
use shutdown::Shutdown;
use stats::Metrics;

/// What the server needs to know beyond the log itself.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Names this node in STATS and the stats line.
    pub node_id: String,
    /// Must match the log's policy: it decides how a connection waits for durability.
    pub fsync: FsyncPolicy,
    /// Clients served at once; one more is told `ERR too many connections` and closed.
    pub max_connections: usize,
    /// Largest SET message; the line limit follows from it.
    pub max_message_bytes: usize,
    /// Bytes all connections together may buffer in requests still arriving and replies
    /// not yet written (beyond a small free allowance each). The client that would pass it
    /// is told `ERR server is out of memory for buffered requests; closing` and closed.
    pub max_buffer_bytes: usize,
    /// How often to log a stats line; `None` logs none.
    pub stats_interval: Option<Duration>,
    /// Clients must `AUTH` with it before any other command (README "Security").
    pub password: Option<Password>,
    /// Without a password, a listener beyond loopback serves loopback clients only.
    pub protected_mode: bool,
    /// Where connections record Prometheus figures; `None` records none.
    pub metrics: Option<Arc<metrics::Metrics>>,
    /// Present: the port speaks TLS only (`--tls-cert`; docs/SECURITY.md).
    pub tls: Option<crate::tls::ClientPortTls>,
    /// Single-threaded loops that run the client connections (`--serving-loops`); 0 runs
    /// them on the caller's runtime.
    pub serving_loops: usize,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            node_id: "msglog".to_string(),
            fsync: FsyncPolicy::Always,
            max_connections: 10_000,
            max_message_bytes: 1024 * 1024,
            max_buffer_bytes: DEFAULT_MAX_BUFFER_BYTES,
            stats_interval: Some(Duration::from_secs(10)),
            password: None,
            protected_mode: true,
            metrics: None,
            tls: None,
            serving_loops: DEFAULT_SERVING_LOOPS,
        }
    }
}

impl ServerConfig {
    /// Longest request line accepted.
    pub fn max_line_bytes(&self) -> usize {
        protocol::max_line_bytes(self.max_message_bytes)
    }

    /// Largest request a RESP client may send, and largest reply one request may get
    /// (an MGET): the same bound both ways.
    pub fn max_reply_bytes(&self) -> usize {
        RespLimits::for_max_message(self.max_message_bytes).max_request_bytes
    }
}

/// Default for [`ServerConfig::max_buffer_bytes`].
pub const DEFAULT_MAX_BUFFER_BYTES: usize = 1024 * 1024 * 1024;

/// Default for [`ServerConfig::serving_loops`]. One loop was ahead of the commit thread
/// under every fsync policy once segments were preallocated; two loops did worse than one
/// on two cores (docs/BENCHMARKS.md, "Preallocated segments with the serving loop").
pub const DEFAULT_SERVING_LOOPS: usize = 1;

/// Over-limit connections being told so at once; beyond this they are closed unanswered,
/// so refusals cannot hold more than a fixed number of descriptors.
pub const MAX_REFUSALS_IN_FLIGHT: usize = 16;

/// State every connection shares.
pub(crate) struct Shared {
    /// Each partition's log, committer and replication.
    pub(crate) partitions: Partitions,
    pub(crate) config: ServerConfig,
    pub(crate) metrics: Metrics,
    /// What every connection's buffers reserve from.
    pub(crate) budget: Arc<budget::Budget>,
    /// Present on a node that may forward data commands to their partitions' leaders.
    pub(crate) forwarding: Option<connection::Diversion>,
}

impl Shared {
    /// Partition 0, for what is not per partition yet (the only one at P = 1).
    pub(crate) fn first(&self) -> &PartitionServing {
        self.partitions.first()
    }

    /// The replication server-wide answers follow: partition 0's.
    pub(crate) fn cluster(&self) -> Option<&Arc<dyn Cluster>> {
        self.first().cluster.as_ref()
    }

    pub(crate) fn role(&self) -> &'static str {
        self.cluster().map_or("leader", |c| c.role())
    }
}

/// Serves clients on `listener` until `shutdown` completes, then stops accepting, lets every
/// connection answer the requests it has read, and returns once all of them are done.
///
/// When it returns, the server holds no reference to `log`, so the caller can
/// `Arc::try_unwrap` it and close it.
pub async fn run(
    listener: TcpListener,
    log: Arc<Log>,
    config: ServerConfig,
    shutdown: impl Future,
) -> std::io::Result<()> {
    run_node(listener, log, config, None, shutdown).await
}

/// [`run`] for a node in a cluster: writes are admitted, and acknowledged once replicated,
/// as `cluster` says.
pub async fn run_node(
    listener: TcpListener,
    log: Arc<Log>,
    config: ServerConfig,
    cluster: Option<Arc<dyn Cluster>>,
    shutdown: impl Future,
) -> std::io::Result<()> {
    run_node_with(listener, log, config, cluster, Forwarding::default(), shutdown).await
}

/// [`run_node`] for a node that forwards data commands to the leader while the cluster's
/// route says another node leads, and (with an endpoint) executes what others forward.
pub async fn run_node_with(
    listener: TcpListener,
    log: Arc<Log>,
    config: ServerConfig,
    cluster: Option<Arc<dyn Cluster>>,
    forwarding: Forwarding,
    shutdown: impl Future,
) -> std::io::Result<()> {
    serve(listener, vec![(log, cluster)], config, forwarding, shutdown).await
}

/// [`run`] over several partitions: `logs[p]` holds partition `p`, and each ID is served
/// from the log `partition_of` names (docs/FORMAT.md, "Partitions"). What nodes will call
/// once they hold several partitions; for now only tests do.
#[doc(hidden)]
pub async fn run_partitioned(
    listener: TcpListener,
    logs: Vec<Arc<Log>>,
    config: ServerConfig,
    shutdown: impl Future,
) -> std::io::Result<()> {
    let partitions = logs.into_iter().map(|log| (log, None)).collect();
    serve(listener, partitions, config, Forwarding::default(), shutdown).await
}

/// A partition to serve: its log, and its replication (`None`: a lone leader).
pub type PartitionLog = (Arc<Log>, Option<Arc<dyn Cluster>>);

/// Serves `partitions[p]` as partition `p`. Forwarding follows each partition's routes
/// (every partition has them, or none does). A node's entry (public for tests that serve
/// partitions led apart without the rest of a node).
#[doc(hidden)]
pub async fn serve(
    listener: TcpListener,
    partitions: Vec<PartitionLog>,
    config: ServerConfig,
    forwarding: Forwarding,
    shutdown: impl Future,
) -> std::io::Result<()> {
    let mut committers = Vec::new();
    let mut slots = Vec::with_capacity(partitions.len());
    for (partition, (log, cluster)) in (0u32..).zip(partitions) {
        let commits = match config.fsync {
            FsyncPolicy::Always => match committer::start(partition, Arc::clone(&log)) {
                Ok((committer, handle)) => {
                    committers.push(committer);
                    Some(handle)
                }
                Err(err) => {
                    committers.into_iter().for_each(committer::Committer::stop);
                    return Err(err);
                }
            },
            _ => None,
        };
        slots.push(PartitionServing { partition, log, commits, cluster });
    }
    let partitions = Partitions::new(slots);
    match config.serving_loops {
        0 => tracing::info!(fsync = ?config.fsync, "client connections run on the shared runtime (--serving-loops 0)"),
        loops => tracing::info!(loops, fsync = ?config.fsync, "client connections run on serving loops"),
    }
    // Each loop is a thread that runs until it has nothing to do: more of them than CPUs
    // take turns on the cores, and a loop waiting for the CPU holds its clients' replies.
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    if config.serving_loops > cpus {
        tracing::warn!(
            loops = config.serving_loops,
            cpus,
            "more serving loops than CPUs: they take turns on the cores, and a loop waiting for one delays \
             every reply it owes (README, \"Serving loops\")"
        );
    }
    let loops = match config.serving_loops {
        0 => None,
        count => match loops::Loops::start(count) {
            Ok(loops) => Some(loops),
            Err(err) => {
                committers.into_iter().for_each(committer::Committer::stop);
                return Err(err);
            }
        },
    };
    let (notify_shutdown, _) = broadcast::channel(1);
    let (shutdown_complete_tx, mut shutdown_complete_rx) = mpsc::channel(1);
    let stats_interval = config.stats_interval.filter(|every| !every.is_zero());
    let budget = budget::Budget::new(config.max_buffer_bytes);
    let listen_ip = listener.local_addr()?.ip();
    warn_if_exposed(&config, listen_ip);
    let routes = partitions.routes();
    let mut server = Listener {
        listener,
        listen_ip,
        limit: Arc::new(Semaphore::new(config.max_connections)),
        refusals: Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT)),
        shared: Arc::new(Shared {
            partitions,
            config,
            metrics: Metrics::default(),
            forwarding: forwarding.diversion(routes),
            budget,
        }),
        notify_shutdown,
        shutdown_complete_tx,
        loops,
    };
    // Forwarded streams take part in shutdown as connections do.
    let serving = forwarding.endpoint.map(|endpoint| {
        let serving = Arc::new(forward::Serving {
            shared: Arc::clone(&server.shared),
            notify_shutdown: server.notify_shutdown.clone(),
            shutdown_complete: server.shutdown_complete_tx.clone(),
        });
        endpoint.attach(&serving);
        serving
    });
    if let Some(every) = stats_interval {
        tokio::spawn(stats::report_every(
            Arc::clone(&server.shared),
            every,
            Shutdown::new(server.notify_shutdown.subscribe()),
            server.shutdown_complete_tx.clone(),
        ));
    }

    tokio::select! {
        () = server.accept_forever() => {}
        _ = shutdown => tracing::info!("shutting down: no longer accepting connections"),
    }

    // Dropping the broadcast sender tells every connection; dropping our completion sender
    // leaves only theirs, so `recv` returns `None` once the last connection is gone.
    let Listener { listener, shared, notify_shutdown, shutdown_complete_tx, loops, .. } = server;
    drop(listener);
    drop(serving);
    drop(shared);
    drop(notify_shutdown);
    drop(shutdown_complete_tx);
    let _ = shutdown_complete_rx.recv().await;
    if let Some(loops) = loops
        && tokio::task::spawn_blocking(move || loops.stop()).await.is_err()
    {
        tracing::error!("stopping the serving loops failed");
    }
    for committer in committers {
        committer.stop();
    }
    Ok(())
}

struct Listener {
    listener: TcpListener,
    /// The address bound, which protected mode judges (not the one each client reached).
    listen_ip: std::net::IpAddr,
    limit: Arc<Semaphore>,
    refusals: Arc<Semaphore>,
    shared: Arc<Shared>,
    notify_shutdown: broadcast::Sender<()>,
    shutdown_complete_tx: mpsc::Sender<()>,
    /// Where connections run, if not on the runtime that accepts them.
    loops: Option<loops::Loops>,
}

impl Listener {
    async fn accept_forever(&mut self) {
        loop {
            let (stream, peer) = self.accept().await;
            if let Err(err) = stream.set_nodelay(true) {
                tracing::debug!(%err, "could not set TCP_NODELAY");
            }
            let config = &self.shared.config;
            if admission(config.password.as_ref(), config.protected_mode, self.listen_ip, peer) == Admission::Protected
            {
                tracing::debug!(%peer, "protected mode: refusing a client that is not on this machine");
                self.refuse(stream, Reply::Error(PROTECTED_MODE_REFUSAL.to_string()));
                continue;
            }
            let Ok(permit) = Arc::clone(&self.limit).try_acquire_owned() else {
                self.refuse(stream, Reply::error("too many connections"));
                continue;
            };
            let shared = Arc::clone(&self.shared);
            let mut shutdown = Shutdown::new(self.notify_shutdown.subscribe());
            let shutdown_complete = self.shutdown_complete_tx.clone();
            // The TLS handshake runs in the connection's own task: a slow or silent client
            // must not hold up the accept loop.
            let serve = move |stream: TcpStream| async move {
                let opened = tokio::select! {
                    opened = ClientStream::open(stream, shared.config.tls.as_ref()) => opened,
                    _ = shutdown.recv() => None,
                };
                let Some(stream) = opened else { return };
                Connection::new(shared, stream, permit, shutdown, shutdown_complete).run().await;
            };
            match &self.loops {
                None => drop(tokio::spawn(serve(stream))),
                Some(loops) => match stream.into_std() {
                    Ok(stream) => loops.spawn(stream, serve),
                    Err(error) => tracing::warn!(%error, "cannot hand a connection to a serving loop"),
                },
            }
        }
    }

    /// Answers `stream` with `refusal` and closes it, unless too many refusals are under
    /// way; then dropping the stream closes it and the client sees the connection end.
    fn refuse(&self, stream: TcpStream, refusal: Reply) {
        if let Ok(refusing) = Arc::clone(&self.refusals).try_acquire_owned() {
            tokio::spawn(async move {
                refuse(stream, refusal).await;
                drop(refusing);
            });
        }
    }

    /// Accepts one connection. Errors (out of file descriptors, say) back off, doubling up
    /// to a second, rather than spin or stop serving.
    async fn accept(&mut self) -> (TcpStream, std::net::SocketAddr) {
        let mut backoff = Duration::from_millis(5);
        loop {
            match self.listener.accept().await {
                Ok(accepted) => return accepted,
                Err(err) => {
                    tracing::warn!(%err, ?backoff, "accept failed; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

/// A server reachable beyond this machine is worth a warning at start: without a password
/// protected mode refuses remote clients, and with protected mode off it serves them all.
fn warn_if_exposed(config: &ServerConfig, listen: std::net::IpAddr) {
    if config.password.is_some() || is_loopback(listen) {
        return;
    }
    match config.protected_mode {
        true => tracing::warn!(
            %listen,
            "protected mode: listening beyond loopback without a password, so only clients on this machine are \
             served; set --requirepass (or MSGLOG_PASSWORD) to serve others, or listen on 127.0.0.1"
        ),
        false => tracing::warn!(
            %listen,
            "listening beyond loopback without a password and with protected mode off: anyone who can reach \
             this port can read and write everything"
        ),
    }
}

/// Tells a refused client (over the connection limit, or kept out by protected mode) why
/// it is closed, in its protocol: a client
/// that sends at once (as Redis clients do) and starts with `*` gets a RESP error; one that
/// is silent for a moment gets the text line. Whatever it sent is read and dropped before
/// closing, since closing a socket with unread input resets the connection and could
/// destroy the reply before the client reads it. Both waits are short: a refusal holds a
/// descriptor, and at most [`MAX_REFUSALS_IN_FLIGHT`] are held at once.
async fn refuse(mut stream: TcpStream, refusal: Reply) {
    const LINGER: Duration = Duration::from_millis(500);
    const FIRST_BYTE_WAIT: Duration = Duration::from_millis(100);
    let mut reply = bytes::BytesMut::new();
    let _ = tokio::time::timeout(LINGER, async {
        let mut first = [0u8; 1024];
        let resp = match tokio::time::timeout(FIRST_BYTE_WAIT, stream.read(&mut first)).await {
            Ok(Ok(n)) => n > 0 && opens_resp(first[0]),
            Ok(Err(e)) => return Err(e),
            Err(_) => false,
        };
        match resp {
            true => RespReply::from(refusal).encode(&mut reply, Protocol::Resp2),
            false => refusal.encode_text(&mut reply),
        }
        stream.write_all(&reply).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}
