//! `msglog serve`: flags and signals around a [`Node`](crate::node::Node): start it, and on
//! SIGINT/SIGTERM shut it down cleanly.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};

use crate::node::{ClusterConfig, Node, NodeConfig};
use crate::replication::Role;
use crate::server::{self, DescriptorError, Password};
use crate::storage::{CleanerSettings, FsyncPolicy, Retention};

use super::tolerance::read_tolerance_file;
use super::units::{parse_bytes, parse_duration, parse_fsync, parse_node_id};

#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// Directory holding the log and its lock file.
    #[arg(long, env = "MSGLOG_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Address to accept clients on.
    #[arg(long, env = "MSGLOG_LISTEN", default_value = "127.0.0.1:6666", value_parser = parse_listen)]
    listen: String,
    /// When a write counts as durable: always (fsync before OK), interval=<ms>, or never.
    #[arg(long, env = "MSGLOG_FSYNC", default_value = "always", value_parser = parse_fsync)]
    fsync: FsyncPolicy,
    /// Size at which a log segment is sealed and a new one started (e.g. 134217728, 128M;
    /// at least 64K).
    #[arg(long, env = "MSGLOG_SEGMENT_BYTES", default_value = "128M", value_parser = parse_segment_bytes)]
    segment_bytes: u64,
    /// Largest message a SET may carry (e.g. 1048576, 1M).
    #[arg(long, env = "MSGLOG_MAX_MESSAGE_BYTES", default_value = "1048576", value_parser = parse_max_message_bytes)]
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
    /// with RESOURCE_EXHAUSTED [default: 64; in cluster mode 64 more than the followers
    /// this node serves if it leads every partition, --partitions × (--replication-factor − 1)].
    #[arg(long, env = "MSGLOG_MAX_REPLICATION_STREAMS", value_parser = clap::value_parser!(u32).range(1..))]
    max_replication_streams: Option<u32>,
    /// Single-threaded event loops that run the client connections, which are spread over
    /// them in turn. A loop makes durable once for everything its connections wait for,
    /// just before it sleeps (under `--fsync always` one fsync), and answers them from the
    /// same thread, as Redis's event loop does; while it syncs it serves no one. 0 runs
    /// connections on the shared multi-threaded runtime, where a commit thread fsyncs for
    /// them. Replication and forwarded requests always run on the shared runtime (README,
    /// "Serving loops"). At most 1024; more than the CPUs starts with a warning.
    #[arg(long, env = "MSGLOG_SERVING_LOOPS", default_value_t = crate::server::DEFAULT_SERVING_LOOPS as u32,
          value_parser = clap::value_parser!(u32).range(0..=1024))]
    serving_loops: u32,
    /// This node's name in STATS and logs [default: the listen address].
    #[arg(long, env = "MSGLOG_NODE_ID", value_parser = parse_node_id)]
    node_id: Option<String>,
    /// Log compaction: `compact` rewrites sealed segments in the background keeping each
    /// ID's latest record (README, "Compaction"); `none` keeps every record.
    #[arg(long, env = "MSGLOG_CLEANUP", default_value = "compact", value_parser = ["compact", "none"])]
    cleanup: String,
    /// Clean once this share (0 to 1) of the committed sealed bytes was written since the
    /// last cleaning.
    #[arg(long, env = "MSGLOG_MIN_CLEANABLE_RATIO", default_value = "0.5", value_parser = parse_ratio)]
    min_cleanable_ratio: f64,
    /// How long compaction keeps a tombstone after its DEL (e.g. 24h, 30m, 0s).
    #[arg(long, env = "MSGLOG_DELETE_RETENTION", default_value = "24h", value_parser = parse_duration)]
    delete_retention: Duration,
    /// The cleaner's read plus write rate limit, in MiB per second [default: unlimited].
    #[arg(long, env = "MSGLOG_CLEANER_MB_PER_SEC", value_parser = parse_mb_per_sec)]
    cleaner_mb_per_sec: Option<f64>,
    /// Retention by size: delete the oldest sealed segments while the log stays at least
    /// this big without them (e.g. 10G) [default: off]. On a leader; followers follow its
    /// log start.
    #[arg(long, env = "MSGLOG_RETENTION_BYTES", value_parser = parse_bytes)]
    retention_bytes: Option<u64>,
    /// Retention by age: delete sealed segments whose newest record was written longer ago
    /// than this (e.g. 7d, 12h) [default: off]. On a leader; followers follow its log start.
    #[arg(long, env = "MSGLOG_RETENTION_AGE", value_parser = parse_retention_age)]
    retention_age: Option<Duration>,
    /// How often to log a line of counts (e.g. 500ms, 10s, 1m; 0s for never).
    #[arg(long, env = "MSGLOG_STATS_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    stats_interval: Duration,
    /// Address to serve replication on: followers and `msglog tail` connect here.
    #[arg(long, env = "MSGLOG_GRPC_LISTEN", default_value = "127.0.0.1:6667", value_parser = parse_listen)]
    grpc_listen: String,
    /// Run as a read-only follower of the leader at this gRPC address (host:port). Without
    /// it, the node is a leader and starts a new leader epoch.
    #[arg(long, env = "MSGLOG_FOLLOW", value_name = "LEADER_GRPC_ADDR", value_parser = parse_host_port,
          conflicts_with = "cluster")]
    follow: Option<String>,
    /// Cluster mode: the voters of the metadata quorum, as id=host:port of each one's
    /// --grpc-listen (3, 5 or 7 of them; the same list on every node). Leaders are elected
    /// and replaced automatically. A node whose --node-id is not listed joins as a
    /// non-voting member. See README "Cluster mode".
    #[arg(long, env = "MSGLOG_CLUSTER", value_name = "ID=HOST:PORT,...", value_parser = parse_cluster)]
    cluster: Option<Voters>,
    /// This data dir, written by a msglog from before `log-id`, was the leader's: record
    /// that it began its log, so it may lead. Once; never on a follower's copy (README
    /// "Replication").
    #[arg(long, conflicts_with_all = ["follow", "cluster"])]
    adopt_log: bool,
    /// Cluster mode: a node not heard from for this long is fenced, and a leader it was
    /// is replaced; also how long a follower may lag before it leaves the in-sync replicas.
    #[arg(long, env = "MSGLOG_SESSION_TIMEOUT", default_value = "1500ms", value_parser = parse_session_timeout)]
    session_timeout: Duration,
    /// Cluster mode: a replica whose node has been gone (fenced) this long gives its place
    /// to a live node that holds no copy, which copies the log and joins the in-sync
    /// replicas, so the partition is back to --replication-factor copies; `never` keeps
    /// waiting for the node to return.
    #[arg(long, env = "MSGLOG_REPLACE_DEAD_AFTER", default_value = "30s", value_name = "DURATION|never",
          value_parser = parse_replace_dead_after)]
    replace_dead_after: ReplaceDeadAfter,
    /// Cluster mode: copies of each record, counting the leader [default: 3, at most the
    /// number of nodes that join].
    #[arg(long, env = "MSGLOG_REPLICATION_FACTOR", value_parser = clap::value_parser!(u32).range(1..=7))]
    replication_factor: Option<u32>,
    /// Cluster mode: in-sync replicas (leader included) a write must be on before OK;
    /// below it writes are refused with `ERR not enough replicas` [default: --tolerance + 1
    /// when given, else 2, at most the replication factor].
    #[arg(long, env = "MSGLOG_MIN_INSYNC", value_parser = clap::value_parser!(u32).range(1..=7))]
    min_insync: Option<u32>,
    /// Cluster mode: partitions the IDs are spread over (by a hash of the ID, docs/FORMAT.md
    /// "Partitions"), each with its own leader and --replication-factor copies placed over
    /// the nodes in --cluster, which may then be any number from 3 to 7. Fixed when the
    /// cluster forms: give every node the same value. 1 keeps every record on every replica.
    #[arg(long, env = "MSGLOG_PARTITIONS", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::cluster::metadata::MAX_PARTITIONS)))]
    partitions: u32,
    /// Followers that must hold a SET/DEL durably before the leader answers OK [default: 0].
    #[arg(long, env = "MSGLOG_TOLERANCE", conflicts_with = "tolerance_file", allow_negative_numbers = true,
          value_parser = parse_tolerance)]
    tolerance: Option<u32>,
    /// Read the tolerance from a file holding `TOLERANCE=N`, `tolerance=N` or `N` (`#`
    /// comments allowed); a malformed file stops the server, naming the line.
    #[arg(long, env = "MSGLOG_TOLERANCE_FILE", value_name = "PATH")]
    tolerance_file: Option<PathBuf>,
    /// How long a write waits for followers' acknowledgements before it is answered
    /// `ERR replication timeout` (e.g. 500ms, 5s).
    #[arg(long, env = "MSGLOG_ACK_TIMEOUT", default_value = "5s", value_parser = parse_ack_timeout)]
    ack_timeout: Duration,
    /// Local IP address a follower's connections to its leader leave from (with --follow;
    /// as Redis's `bind-source-addr`), so firewalls can tell nodes on one host apart. Must
    /// be an address of this host, of the leader's address family [default: chosen by the OS].
    #[arg(long, env = "MSGLOG_BIND_SOURCE_ADDR", value_name = "IP")]
    bind_source_addr: Option<std::net::IpAddr>,
    /// Password clients must give with AUTH before any other command (`redis-cli -a`), and
    /// followers and `msglog tail` must present to the replication port. A follower sends
    /// its own, so every node of a cluster takes the same one. Prefer the environment
    /// variable: a flag shows in `ps`.
    #[arg(long, env = "MSGLOG_PASSWORD", hide_env_values = true, value_name = "PASSWORD", value_parser = super::password::PasswordParser)]
    requirepass: Option<Password>,
    /// Redis's protected mode: without a password, a --listen address other than loopback
    /// serves only clients on this machine. `no` serves everyone (a trusted network only).
    #[arg(long, env = "MSGLOG_PROTECTED_MODE", default_value = "yes", value_name = "yes|no",
          action = clap::ArgAction::Set, value_parser = parse_yes_no)]
    pub(super) protected_mode: bool,
    /// This node's certificate chain (PEM). With --tls-key, the client port speaks TLS only
    /// (`redis-cli --tls --cacert ca.pem`); there is no second, plain port.
    #[arg(long, env = "MSGLOG_TLS_CERT", value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, RSA or EC).
    #[arg(long, env = "MSGLOG_TLS_KEY", value_name = "PEM")]
    tls_key: Option<PathBuf>,
    /// CA bundle (PEM) of the cluster. With it, the gRPC port speaks mutual TLS: every
    /// caller must present a certificate signed by it, and a node's id is the DNS name in
    /// its certificate; this node presents --tls-cert when it calls peers.
    #[arg(long, env = "MSGLOG_TLS_CA", value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    /// Serve Prometheus metrics over HTTP at http://<this address>/metrics (e.g.
    /// 127.0.0.1:9464) [default: off].
    #[arg(long, env = "MSGLOG_METRICS_LISTEN", value_name = "HOST:PORT", value_parser = parse_listen)]
    metrics_listen: Option<String>,
    /// What to log: a level (error, warn, info, debug, trace) or RUST_LOG-style directives
    /// (e.g. `info,msglog::replication=debug`). This flag (or MSGLOG_LOG_LEVEL) wins over
    /// RUST_LOG, which wins over the default, info.
    #[arg(long, env = "MSGLOG_LOG_LEVEL", value_name = "FILTER", value_parser = parse_log_filter)]
    log_level: Option<String>,
    /// Log lines as human-readable text or as one JSON object per line.
    #[arg(long, env = "MSGLOG_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Read settings from a TOML file whose keys are these flags' long names
    /// (`data-dir = "/var/lib/msglog"`). A flag, then its MSGLOG_* variable, wins over the
    /// file; an unknown key is an error. See msglog.example.toml.
    #[arg(long, env = "MSGLOG_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

pub(crate) fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_tracing(args.log_level.as_deref(), args.log_format);
    check_start(&args)?;
    // A start that fails (a port in use, say) must not leave behind a data dir it made.
    let fresh_data_dir = !args.data_dir.exists();
    let tolerance = match (&args.tolerance_file, args.tolerance) {
        (Some(path), _) => read_tolerance_file(path)?,
        (None, tolerance) => tolerance.unwrap_or(0),
    };
    let max_message_bytes =
        usize::try_from(args.max_message_bytes).context("--max-message-bytes does not fit in memory")?;
    let cluster = cluster_config(&args, tolerance)?;
    let max_replication_streams =
        args.max_replication_streams.map_or_else(|| default_replication_streams(cluster.as_ref()), u64::from);
    let max_connections = max_connections(&args, max_replication_streams)?;
    let role = match (&args.follow, &cluster) {
        (_, Some(_)) => Role::Cluster { ack_timeout: args.ack_timeout },
        (Some(leader), None) => Role::Follower { leader: leader.clone() },
        (None, None) => Role::Leader { tolerance: tolerance as usize, ack_timeout: args.ack_timeout },
    };
    let config = NodeConfig {
        data_dir: args.data_dir.clone(),
        listen: args.listen.clone(),
        grpc_listen: args.grpc_listen.clone(),
        node_id: args.node_id.clone(),
        fsync: args.fsync,
        segment_bytes: args.segment_bytes,
        max_message_bytes,
        max_connections,
        max_buffer_bytes: usize::try_from(args.max_buffer_bytes).unwrap_or(usize::MAX),
        max_replication_streams: usize::try_from(max_replication_streams).unwrap_or(usize::MAX),
        serving_loops: args.serving_loops as usize,
        stats_interval: Some(args.stats_interval),
        role,
        bind_source_addr: args.bind_source_addr,
        password: args.requirepass.clone(),
        protected_mode: args.protected_mode,
        metrics_listen: args.metrics_listen.clone(),
        cluster,
        tls: crate::tls::TlsFiles { cert: args.tls_cert.clone(), key: args.tls_key.clone(), ca: args.tls_ca.clone() },
        cleaner: cleaner_settings(&args),
    };
    if args.adopt_log {
        adopt_log(&config)?;
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let node = match Node::start(config).await {
            Ok(node) => node,
            Err(err) => {
                if fresh_data_dir {
                    let _ = std::fs::remove_dir_all(&args.data_dir);
                }
                return Err(err.into());
            }
        };
        notify_systemd("READY=1");
        let signals = async move {
            let name = tokio::select! {
                _ = terminate.recv() => "SIGTERM",
                _ = interrupt.recv() => "SIGINT",
            };
            tracing::info!(signal = name, "received shutdown signal");
            notify_systemd("STOPPING=1");
        };
        node.run_until(signals).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `--adopt-log`: marks the data dir as having begun its log, under the data dir's lock
/// (the log is opened as the node opens it), before the node starts.
fn adopt_log(config: &NodeConfig) -> anyhow::Result<()> {
    let log_config = crate::storage::Config {
        segment_bytes: config.segment_bytes,
        fsync: config.fsync,
        max_record_bytes: crate::node::max_record_bytes(config.max_message_bytes)?,
        ..crate::storage::Config::default()
    };
    let dir = config.data_dir.display();
    let log = crate::storage::Log::open(&config.data_dir, log_config).with_context(|| format!("opening {dir}"))?;
    let adopted = log.adopt_unrecorded_log().with_context(|| format!("recording the log-id of {dir}"))?;
    match log.lineage() {
        Ok(Some(lineage)) if adopted => {
            tracing::warn!(log_id = %lineage.log_id, "--adopt-log: {dir} now records that it began its log")
        }
        _ => tracing::info!("--adopt-log: {dir} needs no adopting (it records its log-id or holds no records)"),
    }
    log.close().with_context(|| format!("closing {dir}"))?;
    Ok(())
}

/// Tells systemd (a `Type=notify` unit, which sets NOTIFY_SOCKET) that the node is serving,
/// or stopping. Best effort: without systemd there is no socket and nothing to do.
fn notify_systemd(state: &str) {
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())
        }
        None => SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|addr| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr));
    if let Err(err) = sent {
        tracing::warn!(%err, socket = %path, "could not notify systemd");
    }
}

/// Checks that need more than one flag, or the file system, before anything is made.
fn check_start(args: &ServeArgs) -> anyhow::Result<()> {
    if args.data_dir.exists() && !args.data_dir.is_dir() {
        anyhow::bail!("--data-dir {} is not a directory", args.data_dir.display());
    }
    if args.tls_ca.is_some() && args.follow.is_some() && args.node_id.is_none() {
        anyhow::bail!(
            "--tls-ca with --follow needs --node-id: the leader checks it against the DNS name in --tls-cert"
        );
    }
    if let Some(leader) = &args.follow {
        let same = leader == &args.grpc_listen
            || matches!((leader.parse::<std::net::SocketAddr>(), args.grpc_listen.parse::<std::net::SocketAddr>()),
                        (Ok(a), Ok(b)) if a == b);
        if same {
            anyhow::bail!(
                "--follow {leader} names this node's own --grpc-listen; give the leader's gRPC address instead"
            );
        }
    }
    Ok(())
}

/// `--cluster`'s voters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Voters(Vec<(String, String)>);

fn parse_cluster(text: &str) -> Result<Voters, String> {
    let mut voters: Vec<(String, String)> = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((id, addr)) = entry.split_once('=') else {
            return Err(format!("expected id=host:port for each voter, not '{entry}'"));
        };
        let id = parse_node_id(id)?;
        let addr = parse_host_port(addr).map_err(|_| {
            format!("voter {id}: expected its gRPC address as host:port (its --grpc-listen), not '{addr}'")
        })?;
        if voters.iter().any(|(other, _)| *other == id) {
            return Err(format!("node id {id} is listed twice"));
        }
        voters.push((id, addr));
    }
    match voters.len() {
        0 => Err("no voters listed; expected e.g. a=127.0.0.1:7101,b=127.0.0.1:7102,c=127.0.0.1:7103".into()),
        n if n > 7 => Err(format!("{n} voters listed; at most 7 (more nodes join as non-voting members)")),
        2 => Err("two voters listed; a cluster needs 3 (or more, up to 7) to replace a failed node".into()),
        1 => Err("one voter listed; a cluster needs 3 (or 5, 7) voters to replace a failed node. \
                  For a single node, leave out --cluster"
            .into()),
        _ => Ok(Voters(voters)),
    }
}

fn parse_session_timeout(text: &str) -> Result<Duration, String> {
    let timeout = parse_duration(text)?;
    if timeout < Duration::from_millis(300) {
        return Err(format!("{text} is too short to tell a dead node from a busy one; use at least 300ms"));
    }
    Ok(timeout)
}

/// `--replace-dead-after`: a duration, or never.
#[derive(Debug, Clone, Copy)]
struct ReplaceDeadAfter(Option<Duration>);

fn parse_replace_dead_after(text: &str) -> Result<ReplaceDeadAfter, String> {
    if text.trim().eq_ignore_ascii_case("never") {
        return Ok(ReplaceDeadAfter(None));
    }
    let after = parse_duration(text)?;
    if after < Duration::from_secs(1) {
        return Err(format!(
            "{text} would copy a whole log to another node for every restart; use at least 1s, or never"
        ));
    }
    Ok(ReplaceDeadAfter(Some(after)))
}

/// Cluster mode's settings from the flags; `None` without `--cluster`.
fn cluster_config(args: &ServeArgs, tolerance: u32) -> anyhow::Result<Option<ClusterConfig>> {
    let Some(Voters(voters)) = &args.cluster else {
        for (given, flag) in [
            (args.replication_factor.is_some(), "--replication-factor"),
            (args.min_insync.is_some(), "--min-insync"),
            (args.partitions > 1, "--partitions"),
        ] {
            if given {
                anyhow::bail!("{flag} applies to cluster mode only; give --cluster too");
            }
        }
        return Ok(None);
    };
    if args.node_id.is_none() {
        anyhow::bail!("cluster mode needs --node-id: one of the ids in --cluster, or a new one to join as a non-voter");
    }
    // With several partitions the voters are also the nodes the partitions are placed on,
    // so the list names every node; with one, a further node adds no tolerance.
    if voters.len() % 2 == 0 && args.partitions == 1 {
        anyhow::bail!(
            "{} voters listed in --cluster; use an odd number (3, 5 or 7): an even one tolerates no more failures \
             than one fewer. With --partitions, the list names the nodes the partitions are placed on, and any \
             number from 3 to 7 may be listed",
            voters.len()
        );
    }
    let tolerance_given = args.tolerance.is_some() || args.tolerance_file.is_some();
    let replication_factor = args.replication_factor.unwrap_or(3.max(tolerance + 1)) as usize;
    let min_insync = match args.min_insync {
        Some(n) => n as usize,
        None if tolerance_given => tolerance as usize + 1,
        None => 2.min(replication_factor),
    };
    if let (true, Some(given)) = (tolerance_given, args.min_insync)
        && (given as usize) < tolerance as usize + 1
    {
        anyhow::bail!(
            "--min-insync {given} breaks --tolerance {tolerance}: an OK'd write must be on {} nodes to survive the \
             loss of any {tolerance}; leave out --min-insync (it follows --tolerance) or raise it",
            tolerance + 1
        );
    }
    if let Some(after) = args.replace_dead_after.0
        && after <= args.session_timeout
    {
        anyhow::bail!(
            "--replace-dead-after {after:?} is not longer than --session-timeout {:?}: a node would be replaced as \
             soon as it is fenced, and every restart would copy a whole log",
            args.session_timeout
        );
    }
    if min_insync > replication_factor {
        anyhow::bail!(
            "--min-insync {min_insync} (or --tolerance {}) needs at least as many copies, but --replication-factor is {replication_factor}",
            min_insync.saturating_sub(1)
        );
    }
    Ok(Some(ClusterConfig {
        voters: voters.clone(),
        session_timeout: args.session_timeout,
        replace_dead_after: args.replace_dead_after.0,
        replication_factor,
        min_insync,
        partitions: args.partitions,
    }))
}

fn parse_max_message_bytes(text: &str) -> Result<u64, String> {
    match parse_bytes(text)? {
        0 => Err("must be at least 1 byte: a SET carries a message".into()),
        n => Ok(n),
    }
}

fn parse_tolerance(text: &str) -> Result<u32, String> {
    text.trim().parse::<u32>().map_err(|_| {
        format!("expected how many followers must hold a write: 0 or more (e.g. --tolerance 1), not '{text}'")
    })
}

/// `--max-connections`, checked against the file descriptor limit before anything is
/// opened: explicit and too many is an error naming the numbers; the default is lowered to
/// what fits.
fn max_connections(args: &ServeArgs, streams: u64) -> anyhow::Result<usize> {
    const DEFAULT: u32 = 10_000;
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

/// `--max-replication-streams` left unset: 64 streams for `msglog tail` and standalone
/// followers, and in cluster mode as many again as the followers this node serves when it
/// leads every partition (a node may, after the others failed), so those are never refused.
fn default_replication_streams(cluster: Option<&ClusterConfig>) -> u64 {
    const SPARE: u64 = 64;
    cluster.map_or(SPARE, |cluster| {
        SPARE + u64::from(cluster.partitions) * (cluster.replication_factor as u64).saturating_sub(1)
    })
}

/// Below this a segment holds only a few records and every roll costs two fsyncs.
const MIN_SEGMENT_BYTES: u64 = 64 * 1024;

fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err(format!("'{text}' is not a ratio between 0 and 1")),
    }
}

/// The cleaner thread runs for compaction, retention or both; with neither, not at all.
fn cleaner_settings(args: &ServeArgs) -> Option<CleanerSettings> {
    let retention = Retention { bytes: args.retention_bytes, age: args.retention_age };
    let compact = args.cleanup == "compact";
    (compact || !retention.is_off()).then(|| CleanerSettings {
        min_cleanable_ratio: args.min_cleanable_ratio,
        delete_retention: args.delete_retention,
        bytes_per_sec: args.cleaner_mb_per_sec.map(|mb| (mb * 1024.0 * 1024.0) as u64),
        compact,
        retention,
        ..CleanerSettings::default()
    })
}

/// A retention age is usually days, which the shared duration units lack.
fn parse_retention_age(text: &str) -> Result<Duration, String> {
    let age = match text.trim().strip_suffix('d') {
        Some(days) => match days.parse::<u64>() {
            Ok(days) => Duration::from_secs(days.saturating_mul(24 * 3600)),
            Err(_) => return Err(format!("bad duration '{text}': expected a number and a unit, e.g. 7d, 12h, 30m")),
        },
        None => parse_duration(text)?,
    };
    match age.is_zero() {
        true => Err("must be more than 0 (leave it unset to keep every segment)".to_string()),
        false => Ok(age),
    }
}

fn parse_mb_per_sec(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate.is_finite() => Ok(rate),
        _ => Err(format!("'{text}' is not a positive rate in MiB per second")),
    }
}

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

/// Redis's words, and TOML's booleans for a config file that writes `protected-mode = false`.
fn parse_yes_no(text: &str) -> Result<bool, String> {
    match text {
        "yes" | "true" => Ok(true),
        "no" | "false" => Ok(false),
        _ => Err(format!("expected yes or no, not '{text}'")),
    }
}

/// A listening address is `host:port`; a bare port (`--listen 6666`) is the usual slip, so
/// it gets a message saying so. Anything else is left to the bind, whose error names it.
pub(crate) fn parse_listen(text: &str) -> Result<String, String> {
    match text.trim().parse::<u16>() {
        Ok(_) => Err(format!("expected host:port, e.g. 127.0.0.1:{text} or 0.0.0.0:{text}")),
        Err(_) => Ok(text.to_string()),
    }
}

fn parse_log_filter(text: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::builder()
        .parse(text)
        .map(|_| text.to_string())
        .map_err(|err| format!("bad log filter '{text}': {err} (expected e.g. info, debug or info,msglog=debug)"))
}

/// Logs go to stderr (stdout is for command output). The filter is `--log-level`, else
/// `RUST_LOG`, else `info`.
fn init_tracing(level: Option<&str>, format: LogFormat) {
    let filter = match level {
        Some(level) => tracing_subscriber::EnvFilter::new(level),
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            // openraft warns on every failed heartbeat to a peer that is down (tens of lines a
            // second); the cluster's own WARNs say the same once.
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=error")),
    };
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().with_current_span(true).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retention_age_takes_days_as_well_as_the_shared_units_and_is_never_zero() {
        assert_eq!(parse_retention_age("7d"), Ok(Duration::from_secs(7 * 24 * 3600)));
        assert_eq!(parse_retention_age("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert!(parse_retention_age("0d").is_err());
        assert!(parse_retention_age("xd").is_err());
        assert!(parse_retention_age("7").is_err());
    }

    #[test]
    fn the_default_replication_streams_cover_every_follower_of_a_node_that_leads_every_partition() {
        let cluster = |partitions, replication_factor| ClusterConfig {
            voters: Vec::new(),
            session_timeout: Duration::from_secs(1),
            replace_dead_after: None,
            replication_factor,
            min_insync: 1,
            partitions,
        };
        assert_eq!(default_replication_streams(None), 64);
        assert_eq!(default_replication_streams(Some(&cluster(1, 3))), 66);
        // 48 partitions with 2 followers each: 96 streams if one node leads them all.
        assert_eq!(default_replication_streams(Some(&cluster(48, 3))), 64 + 96);
        assert_eq!(default_replication_streams(Some(&cluster(8, 1))), 64);
    }
}
