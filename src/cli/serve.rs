//! `msglog serve`: open the log, serve clients and replication, and on SIGINT/SIGTERM shut
//! down cleanly.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use tokio::sync::watch;

use crate::protocol::{LINE_OVERHEAD_BYTES, MAX_ID_BYTES};
use crate::replication::{Node, NodeConfig, Role};
use crate::server::{self, Cluster, DescriptorError, ServerConfig};
use crate::storage::{Config, FsyncPolicy, Log, StorageError};

use super::tolerance::read_tolerance_file;
use super::units::{parse_bytes, parse_duration, parse_fsync, parse_node_id};

#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// Directory holding the log and its lock file.
    #[arg(long, env = "MSGLOG_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Address to accept clients on.
    #[arg(long, env = "MSGLOG_LISTEN", default_value = "127.0.0.1:6666")]
    listen: String,
    /// When a write counts as durable: always (fsync before OK), interval=<ms>, or never.
    #[arg(long, env = "MSGLOG_FSYNC", default_value = "always", value_parser = parse_fsync)]
    fsync: FsyncPolicy,
    /// Size at which a log segment is sealed and a new one started (e.g. 134217728, 128M).
    #[arg(long, env = "MSGLOG_SEGMENT_BYTES", default_value = "128M", value_parser = parse_segment_bytes)]
    segment_bytes: u64,
    /// Largest message a SET may carry (e.g. 1048576, 1M).
    #[arg(long, env = "MSGLOG_MAX_MESSAGE_BYTES", default_value = "1048576", value_parser = parse_bytes)]
    max_message_bytes: u64,
    /// Clients served at once; more are refused with `ERR too many connections`. Each
    /// holds a file descriptor: at start the server checks that this many connections,
    /// --max-replication-streams and 128 more descriptors fit under RLIMIT_NOFILE, raising
    /// the soft limit if that is enough and refusing to start otherwise. Left unset, it is
    /// lowered to what the limit allows, with a warning [default: 10000].
    #[arg(long, env = "MSGLOG_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: Option<u32>,
    /// Memory all client connections together may use to buffer requests still arriving
    /// and replies not yet read (e.g. 1G, 512M). Each connection holds 64 KiB without
    /// counting; beyond that it reserves from this budget, and the client whose request
    /// would pass it is told `ERR server is out of memory for buffered requests; closing`
    /// and disconnected, while the others are served.
    #[arg(long, env = "MSGLOG_MAX_BUFFER_BYTES", default_value = "1G", value_parser = parse_bytes)]
    max_buffer_bytes: u64,
    /// Replication streams (followers and `msglog tail`) served at once; one more is refused
    /// with RESOURCE_EXHAUSTED.
    #[arg(long, env = "MSGLOG_MAX_REPLICATION_STREAMS", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_replication_streams: u32,
    /// This node's name in STATS and logs [default: the listen address].
    #[arg(long, env = "MSGLOG_NODE_ID", value_parser = parse_node_id)]
    node_id: Option<String>,
    /// How often to log a line of counts (e.g. 500ms, 10s, 1m; 0s for never).
    #[arg(long, env = "MSGLOG_STATS_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    stats_interval: Duration,
    /// Address to serve replication on: followers and `msglog tail` connect here.
    #[arg(long, env = "MSGLOG_GRPC_LISTEN", default_value = "127.0.0.1:6667")]
    grpc_listen: String,
    /// Run as a read-only follower of the leader at this gRPC address (host:port). Without
    /// it, the node is a leader and starts a new leader epoch.
    #[arg(long, env = "MSGLOG_FOLLOW", value_name = "LEADER_GRPC_ADDR", value_parser = parse_host_port)]
    follow: Option<String>,
    /// Followers that must hold a SET/DEL durably before the leader answers OK [default: 0].
    #[arg(long, env = "MSGLOG_TOLERANCE", conflicts_with = "tolerance_file")]
    tolerance: Option<u32>,
    /// Read the tolerance from a file holding `TOLERANCE=N`, `tolerance=N` or `N` (`#`
    /// comments allowed); a malformed file stops the server, naming the line.
    #[arg(long, env = "MSGLOG_TOLERANCE_FILE", value_name = "PATH")]
    tolerance_file: Option<PathBuf>,
    /// How long a write waits for followers' acknowledgements before it is answered
    /// `ERR replication timeout` (e.g. 500ms, 5s).
    #[arg(long, env = "MSGLOG_ACK_TIMEOUT", default_value = "5s", value_parser = parse_ack_timeout)]
    ack_timeout: Duration,
}

pub(crate) fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_tracing();
    let tolerance = match (&args.tolerance_file, args.tolerance) {
        (Some(path), _) => read_tolerance_file(path)?,
        (None, tolerance) => tolerance.unwrap_or(0),
    };
    let max_message_bytes =
        usize::try_from(args.max_message_bytes).context("--max-message-bytes does not fit in memory")?;
    let max_connections = max_connections(&args)?;
    let log_config = Config {
        segment_bytes: args.segment_bytes,
        fsync: args.fsync,
        max_record_bytes: max_record_bytes(max_message_bytes)?,
        ..Config::default()
    };
    // Open (and lock) the log first, so a second server on the same directory fails on the
    // lock, naming it, whatever its listen address.
    let log = Log::open(&args.data_dir, log_config).map_err(|err| {
        let dir = args.data_dir.display();
        let hint = match err {
            StorageError::Corruption { .. } => format!(
                " (`msglog check --data-dir {dir}` shows the damage; adding `--repair` cuts the log back \
                 to before it, dropping what follows)"
            ),
            _ => String::new(),
        };
        anyhow::anyhow!("cannot open the log in {dir}: {err}{hint}")
    })?;
    let log = Arc::new(log);

    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    let served = runtime.block_on(serve(&args, max_message_bytes, max_connections, tolerance, Arc::clone(&log)));
    drop(runtime);

    // Every connection has finished, so this is the last reference; closing fsyncs what
    // is buffered and releases the lock.
    let closed = match Arc::try_unwrap(log) {
        Ok(log) => log.close().context("closing the log"),
        Err(_) => Err(anyhow::anyhow!("log still in use after shutdown; not closed cleanly")),
    };
    served?;
    closed?;
    tracing::info!("shut down cleanly");
    Ok(ExitCode::SUCCESS)
}

async fn serve(
    args: &ServeArgs,
    max_message_bytes: usize,
    max_connections: usize,
    tolerance: u32,
    log: Arc<Log>,
) -> anyhow::Result<()> {
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let listener =
        TcpListener::bind(&args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr().context("reading the listen address")?;
    let grpc_listener = TcpListener::bind(&args.grpc_listen)
        .await
        .with_context(|| format!("cannot listen for replication on {}", args.grpc_listen))?;
    let grpc_local = grpc_listener.local_addr().context("reading the replication listen address")?;
    // Only once nothing else can stop the start, so failed starts do not use up epochs.
    let role = match &args.follow {
        Some(leader) => Role::Follower { leader: leader.clone() },
        None => {
            // Records this node appends from now on carry an epoch no earlier leader used,
            // so a follower can tell our log from a previous leader's.
            let epoch = log.begin_leader_epoch().context("cannot persist the new leader epoch")?;
            tracing::info!(epoch, tolerance, "leading");
            Role::Leader { tolerance: tolerance as usize, ack_timeout: args.ack_timeout }
        }
    };
    let config = ServerConfig {
        node_id: args.node_id.clone().unwrap_or_else(|| local.to_string()),
        fsync: args.fsync,
        max_connections,
        max_message_bytes,
        max_buffer_bytes: usize::try_from(args.max_buffer_bytes).unwrap_or(usize::MAX),
        stats_interval: Some(args.stats_interval),
    };
    let (stop, stopping) = watch::channel(false);
    let node_config = NodeConfig {
        node_id: config.node_id.clone(),
        client_addr: local.to_string(),
        role,
        max_record_bytes: max_record_bytes(max_message_bytes)? as usize,
        max_fetch_streams: args.max_replication_streams as usize,
    };
    let node = Node::new(Arc::clone(&log), node_config, stopping.clone());
    tracing::info!(
        addr = %local,
        grpc_addr = %grpc_local,
        data_dir = %args.data_dir.display(),
        fsync = ?args.fsync,
        node_id = %config.node_id,
        role = node.role(),
        following = args.follow.as_deref().unwrap_or("-"),
        "msglog listening"
    );
    let replication = tokio::spawn(Arc::clone(&node).run(grpc_listener));
    let mut stopped = stopping.clone();
    let clients = server::run_node(listener, log, config, Some(node), async move {
        let _ = stopped.wait_for(|&stop| stop).await;
    });
    let signals = async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "received shutdown signal");
        let _ = stop.send(true);
    };
    let (served, ()) = tokio::join!(clients, signals);
    served.context("cannot start the commit thread")?;
    replication.await.context("the replication task failed")?.context("the replication server failed")
}

/// `--max-connections`, checked against the file descriptor limit before anything is
/// opened: explicit and too many is an error naming the numbers; the default is lowered to
/// what fits.
fn max_connections(args: &ServeArgs) -> anyhow::Result<usize> {
    const DEFAULT: u32 = 10_000;
    let streams = u64::from(args.max_replication_streams);
    let wanted = args.max_connections.unwrap_or(DEFAULT);
    match server::ensure_descriptors(u64::from(wanted), streams) {
        Ok(_) => Ok(wanted as usize),
        Err(DescriptorError::TooFew { fits, hard, .. }) if args.max_connections.is_none() && fits > 0 => {
            tracing::warn!(
                max_connections = fits,
                rlimit_nofile = hard,
                "the file descriptor limit is too low for the default of {DEFAULT} connections; serving fewer \
                 (raise `ulimit -n` or set --max-connections to silence this)"
            );
            server::ensure_descriptors(fits, streams)?;
            Ok(fits as usize)
        }
        Err(err) => Err(err.into()),
    }
}

/// Below this a segment holds only a few records and every roll costs two fsyncs.
const MIN_SEGMENT_BYTES: u64 = 64 * 1024;

fn parse_segment_bytes(text: &str) -> Result<u64, String> {
    match parse_bytes(text)? {
        n if n < MIN_SEGMENT_BYTES => Err(format!("must be at least {MIN_SEGMENT_BYTES} bytes (64K)")),
        n => Ok(n),
    }
}

fn parse_ack_timeout(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err("must be more than 0: a write cannot be acknowledged by followers in no time".into()),
        d => Ok(d),
    }
}

/// `--follow` takes the leader's gRPC address, `host:port`; checked at start rather than
/// found out by a follower that retries forever.
fn parse_host_port(text: &str) -> Result<String, String> {
    match text.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) => Ok(text.to_string()),
        _ => Err(format!("expected the leader's gRPC address as host:port (its --grpc-listen), not '{text}'")),
    }
}

/// The engine's record limit must admit the largest SET the server accepts (the record
/// header is well under the line overhead).
fn max_record_bytes(max_message_bytes: usize) -> anyhow::Result<u32> {
    let needed = max_message_bytes + MAX_ID_BYTES + LINE_OVERHEAD_BYTES;
    let needed = u32::try_from(needed).context("--max-message-bytes is above 4 GiB")?;
    Ok(needed.max(Config::default().max_record_bytes))
}

/// Logs go to stderr (stdout is for command output); `RUST_LOG` overrides the `info` default.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
