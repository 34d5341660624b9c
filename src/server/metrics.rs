//! Prometheus metrics (`--metrics-listen`): the only module that knows prometheus-client.
//!
//! Connections record into [`Metrics`] as they answer (counters per command and result,
//! latency histograms per command, connections); everything else is read at scrape time
//! from the values that already exist (the log's stats and fsync buckets, replication's
//! status), so an unscraped node pays nothing for it. The HTTP side is a minimal GET
//! responder: one request per connection, bounded in size, time and concurrency.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use super::Route;
use crate::storage::Log;

/// What a connection records; shared by every connection of a server.
#[derive(Debug)]
pub struct Metrics {
    commands: Family<CommandResult, Counter>,
    latency: Family<CommandName, Histogram, fn() -> Histogram>,
    connections: Gauge,
    accepted: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandResult {
    command: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandName {
    command: &'static str,
}

/// How a request was answered, as the `result` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandOutcome {
    Ok,
    /// A GET or EXISTS of an ID that holds nothing: not a failure, but worth telling apart.
    NotFound,
    Error,
}

impl CommandOutcome {
    fn label(self) -> &'static str {
        match self {
            CommandOutcome::Ok => "ok",
            CommandOutcome::NotFound => "not_found",
            CommandOutcome::Error => "error",
        }
    }
}

/// Commands get their own label value; any other word is `other`, so a client sending
/// garbage cannot grow the number of series without bound.
const COMMANDS: &[&str] = &[
    "set", "get", "del", "exists", "mget", "mset", "ping", "echo", "quit", "dbsize", "info", "select", "command",
    "config", "stats", "help", "multi", "exec", "discard", "watch", "unwatch", "hello", "client", "auth", "reset",
];

/// The label for a request whose first word is `verb` (any case).
pub fn command_label(verb: &[u8]) -> &'static str {
    COMMANDS.iter().find(|name| verb.eq_ignore_ascii_case(name.as_bytes())).copied().unwrap_or("other")
}

fn latency_histogram() -> Histogram {
    // 50 µs (a GET from memory) to about 3 s (a write waiting out a replication timeout).
    Histogram::new(exponential_buckets(0.000_05, 2.0, 17))
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            commands: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            connections: Gauge::default(),
            accepted: Counter::default(),
        }
    }
}

impl Metrics {
    /// A request has been answered `outcome`, `elapsed` after it was read.
    pub fn command_done(&self, command: &'static str, outcome: CommandOutcome, elapsed: Duration) {
        self.commands.get_or_create(&CommandResult { command, result: outcome.label() }).inc();
        self.latency.get_or_create(&CommandName { command }).observe(elapsed.as_secs_f64());
    }

    pub fn connection_opened(&self) {
        self.connections.inc();
        self.accepted.inc();
    }

    pub fn connection_closed(&self) {
        self.connections.dec();
    }
}

/// Replication's figures at scrape time, as plain values (the server knows no followers).
#[derive(Debug, Clone, Default)]
pub struct ReplicationFigures {
    pub leader: bool,
    pub connected_followers: u64,
    /// Per follower seen since start: records the leader has that it has not acknowledged.
    pub follower_lag: Vec<(String, u64)>,
    /// On a follower: records its leader had that it had not appended.
    pub lag_behind_leader: Option<u64>,
}

type ReplicationSource = Box<dyn Fn() -> Option<ReplicationFigures> + Send + Sync>;

/// Cluster mode's figures at scrape time, as the metadata quorum and replication see them.
#[derive(Debug, Clone, Default)]
pub struct ClusterFigures {
    /// The quorum names this node the partition's leader.
    pub leads_partition: bool,
    /// Replicas in the partition's committed in-sync set.
    pub isr_size: u64,
    /// Every record below this offset is held by every in-sync replica.
    pub high_watermark: u64,
}

type ClusterSource = Box<dyn Fn() -> Option<ClusterFigures> + Send + Sync>;

/// A node's metrics, ready to render.
pub struct Exporter {
    registry: Registry,
    /// Cluster mode: where data commands run, followed to count leader changes.
    routes: Option<(watch::Receiver<Route>, Counter)>,
}

impl Exporter {
    /// `log` is held weakly so that a scrape never keeps the log from closing at shutdown;
    /// `replication` returns `None` once replication is gone.
    pub fn new(metrics: Arc<Metrics>, log: Weak<Log>, replication: ReplicationSource) -> Exporter {
        let mut registry = Registry::with_prefix("msglog");
        registry.register("commands", "Requests answered, by command and result", metrics.commands.clone());
        registry.register(
            "command_duration_seconds",
            "From reading a request to its reply being ready (durability waits included)",
            metrics.latency.clone(),
        );
        registry.register("connections", "Client connections being served", metrics.connections.clone());
        registry.register("connections_accepted", "Client connections accepted", metrics.accepted.clone());
        registry.register_collector(Box::new(NodeCollector { log, replication }));
        Exporter { registry, routes: None }
    }

    /// Adds cluster mode's metrics: `figures` read at each scrape, and a count of leader
    /// changes taken from `routes` while [`serve`](Self::serve) runs.
    pub fn with_cluster(mut self, figures: ClusterSource, routes: watch::Receiver<Route>) -> Exporter {
        let changes = Counter::default();
        self.registry.register(
            "cluster_leader_changes",
            "Times the partition's leader, as this node learns it, became another node (the first one learnt counts)",
            changes.clone(),
        );
        self.registry.register_collector(Box::new(ClusterCollector(figures)));
        self.routes = Some((routes, changes));
        self
    }

    /// The Prometheus text exposition format, version 0.0.4.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }

    /// Answers `GET /metrics` on `listener` until `shutdown` completes.
    pub async fn serve(mut self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        if let Ok(listen) = listener.local_addr()
            && exposed(listen.ip())
        {
            tracing::warn!(
                %listen,
                "the metrics port listens beyond loopback and asks no password (neither --requirepass nor protected \
                 mode applies to it): anyone who can reach it reads this node's counts, offsets and peers' ids, \
                 though no message; listen on 127.0.0.1, or keep the port behind a firewall"
            );
        }
        let routes = self.routes.take();
        let count_leader_changes = async move {
            match routes {
                Some((routes, changes)) => count_leader_changes(routes, changes).await,
                None => std::future::pending().await,
            }
        };
        let exporter = Arc::new(self);
        let scrapes = Arc::new(Semaphore::new(MAX_SCRAPES_IN_FLIGHT));
        let accept = async {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // Out of descriptors, say: the client server matters more; wait.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let Ok(permit) = Arc::clone(&scrapes).try_acquire_owned() else { continue };
                let exporter = Arc::clone(&exporter);
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(SCRAPE_DEADLINE, answer(stream, &exporter)).await;
                    drop(permit);
                });
            }
        };
        tokio::select! {
            () = accept => {}
            () = count_leader_changes => {}
            () = shutdown => {}
        }
    }
}

/// Counts each new leader `routes` names. A route that only blinks (an election that
/// re-elects the same node) is no change; one that ends (replication stopped) ends this.
async fn count_leader_changes(mut routes: watch::Receiver<Route>, changes: Counter) {
    let mut leader: Option<String> = None;
    loop {
        let named = match &*routes.borrow_and_update() {
            Route::Local => Some(None),
            Route::Forward { leader_id, .. } => Some(Some(leader_id.clone())),
            Route::Electing => None,
        };
        // `Some(None)` is this node: no id needed, only that it differs from another's.
        if let Some(now) = named.map(|id| id.unwrap_or_default())
            && leader.as_ref() != Some(&now)
        {
            leader = Some(now);
            changes.inc();
        }
        if routes.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Whether a metrics port bound to `listen` can be reached from other machines: Prometheus
/// scrapes without credentials, so nothing but the address keeps others from it.
fn exposed(listen: IpAddr) -> bool {
    !super::is_loopback(listen)
}

/// Scrapes answered at once; more are closed unanswered.
const MAX_SCRAPES_IN_FLIGHT: usize = 8;
/// A request head larger than this is not a scrape.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// A scraper that takes longer than this to send its request and read the reply is dropped.
const SCRAPE_DEADLINE: Duration = Duration::from_secs(10);

async fn answer(mut stream: TcpStream, exporter: &Exporter) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || head.len() + n > MAX_REQUEST_BYTES {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let request_line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut words = request_line.split(|&b| b == b' ');
    let (method, target) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    let (status, content_type, body) = match (method, path) {
        (b"GET", b"/metrics") => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", exporter.render()),
        (b"GET", _) => ("404 Not Found", "text/plain", "msglog serves only /metrics here\n".to_string()),
        _ => ("405 Method Not Allowed", "text/plain", "GET /metrics\n".to_string()),
    };
    let mut reply = String::with_capacity(body.len() + 128);
    let _ = write!(
        reply,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}

/// Cluster mode's gauges, read at each scrape.
struct ClusterCollector(ClusterSource);

impl std::fmt::Debug for ClusterCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCollector").finish_non_exhaustive()
    }
}

impl Collector for ClusterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let Some(cluster) = (self.0)() else { return Ok(()) };
        let e = &mut encoder;
        gauge(
            e,
            "cluster_partition_leader",
            "1 while the quorum names this node the partition's leader.",
            u64::from(cluster.leads_partition),
        )?;
        gauge(e, "cluster_isr_size", "Replicas in the partition's committed in-sync set.", cluster.isr_size)?;
        gauge(
            e,
            "cluster_high_watermark",
            "Every record below this offset is held by every in-sync replica.",
            cluster.high_watermark,
        )
    }
}

/// Reads the figures that already exist elsewhere at each scrape.
struct NodeCollector {
    log: Weak<Log>,
    replication: ReplicationSource,
}

impl std::fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCollector").finish_non_exhaustive()
    }
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let counter = ConstCounter::new(value);
    counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)
}

/// A histogram from already-bucketed counts; `per_unit` bucket units make one of the
/// metric's (a division, so that 50 µs prints as 5e-5 rather than 4.9999999999999996e-5).
fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    (buckets, count, sum): (&[(u64, u64)], u64, u64),
    per_unit: f64,
) -> std::fmt::Result {
    let buckets: Vec<(f64, u64)> = buckets.iter().map(|&(bound, n)| (bound as f64 / per_unit, n)).collect();
    let mut metric = encoder.encode_descriptor(name, help, None, Histogram::TYPE)?;
    metric.encode_histogram::<NoLabelSet>(sum as f64 / per_unit, count, &buckets, None)
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let e = &mut encoder;
        if let Some(log) = self.log.upgrade() {
            let stats = log.stats();
            let fsync = log.fsync_stats();
            let (cleaner, retention) = (log.cleaner_stats(), log.retention_stats());
            let dirty_ratio = log.dirty_ratio(stats.durable_offset);
            let log_start = log.log_start_offset();
            drop(log);
            gauge(e, "log_records", "Records in the log (messages and tombstones).", stats.records)?;
            gauge(e, "log_ids", "IDs holding a message.", stats.ids)?;
            gauge(e, "log_segments", "Segment files.", stats.segments)?;
            gauge(e, "log_bytes", "Bytes of log on disk and in the write buffer.", stats.bytes)?;
            gauge(e, "log_next_offset", "Offset the next record will get.", stats.next_offset)?;
            gauge(e, "log_durable_offset", "Every record below this offset is durable.", stats.durable_offset)?;
            gauge(e, "epoch", "The highest leader epoch this node has begun or seen.", u64::from(stats.epoch))?;
            counter(e, "fsyncs", "Fsyncs of the log since it was opened.", fsync.fsyncs)?;
            let ratio = ConstGauge::new(dirty_ratio);
            let help = "Share of the committed sealed bytes not yet cleaned by compaction (0 to 1).";
            ratio.encode(e.encode_descriptor("cleaner_dirty_ratio", help, None, ratio.metric_type())?)?;
            let help = "Bytes of segments compaction removed from disk since start.";
            counter(e, "cleaner_cleaned_bytes", help, cleaner.cleaned_bytes)?;
            let help = "Compaction passes that swapped cleaned segments in since start.";
            counter(e, "cleaner_runs", help, cleaner.runs)?;
            gauge(e, "log_start_offset", "First offset the log keeps; retention moves it up.", log_start)?;
            let help = "Bytes of old segments retention deleted since start.";
            counter(e, "retention_deleted_bytes", help, retention.deleted_bytes)?;
            let micros = &fsync.micros;
            histogram(
                e,
                "fsync_duration_seconds",
                "How long each fsync of the log took.",
                (&micros.buckets, micros.count, micros.sum),
                1e6,
            )?;
            let records = &fsync.records_per_fsync;
            histogram(
                e,
                "records_per_fsync",
                "Records each fsync made durable (group commit batching).",
                (&records.buckets, records.count, records.sum),
                1.0,
            )?;
        }
        let Some(replication) = (self.replication)() else { return Ok(()) };
        gauge(e, "replication_leader", "1 on a leader, 0 on a follower.", u64::from(replication.leader))?;
        gauge(
            e,
            "replication_connected_followers",
            "Followers with a replication stream open.",
            replication.connected_followers,
        )?;
        if !replication.follower_lag.is_empty() {
            let mut family = e.encode_descriptor(
                "replication_follower_lag_records",
                "Records this leader has that the follower has not acknowledged.",
                None,
                MetricType::Gauge,
            )?;
            for (follower, lag) in &replication.follower_lag {
                let labels = [("follower", follower.as_str())];
                ConstGauge::new(*lag).encode(family.encode_family(&labels)?)?;
            }
        }
        if let Some(lag) = replication.lag_behind_leader {
            gauge(e, "replication_lag_records", "Records the leader had that this follower had not appended.", lag)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::exposed;

    #[test]
    fn only_a_metrics_port_beyond_loopback_counts_as_exposed() {
        for local in ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"] {
            assert!(!exposed(local.parse().unwrap()), "{local} is this machine only");
        }
        for reachable in ["0.0.0.0", "::", "10.1.2.3", "192.168.0.1", "2001:db8::1", "::ffff:10.1.2.3"] {
            assert!(exposed(reachable.parse().unwrap()), "{reachable} is reachable from other machines");
        }
    }
}
