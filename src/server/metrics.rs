//! Prometheus metrics (`--metrics-listen`): the only module that knows prometheus-client.
//!
//! Connections record into [`Metrics`] as they answer (counters per command and result,
//! latency histograms per command, connections); everything else is read at scrape time
//! from the values that already exist (the log's stats and fsync buckets, replication's
//! status), so an unscraped node pays nothing for it. The HTTP side is a minimal GET
//! responder: one request per connection, bounded in size, time and concurrency.
//!
//! A node holds one log per partition. What adds up over them (records, bytes, fsyncs) is
//! exported as the node's total; what is a position in one log or one partition's state
//! (offsets, epochs, leadership, lag) carries a `partition` label, one series each, since a
//! sum of offsets of different logs names no record.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Partition {
    partition: u32,
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

/// One partition's replication figures at scrape time, as plain values (the server knows
/// no followers).
#[derive(Debug, Clone, Default)]
pub struct ReplicationFigures {
    pub partition: u32,
    pub leader: bool,
    pub connected_followers: u64,
    /// Per follower seen since start: records the leader has that it has not acknowledged.
    pub follower_lag: Vec<(String, u64)>,
    /// On a follower: records its leader had that it had not appended.
    pub lag_behind_leader: Option<u64>,
}

/// Every partition's figures; none once replication is gone.
type ReplicationSource = Box<dyn Fn() -> Vec<ReplicationFigures> + Send + Sync>;

/// One partition's figures in cluster mode at scrape time, as the metadata quorum and
/// replication see them.
#[derive(Debug, Clone, Default)]
pub struct ClusterFigures {
    pub partition: u32,
    /// The quorum names this node the partition's leader.
    pub leads_partition: bool,
    /// Replicas in the partition's committed in-sync set.
    pub isr_size: u64,
    /// Every record below this offset is held by every in-sync replica.
    pub high_watermark: u64,
}

/// Every partition's figures; none once replication is gone.
type ClusterSource = Box<dyn Fn() -> Vec<ClusterFigures> + Send + Sync>;

/// A node's metrics, ready to render.
pub struct Exporter {
    registry: Registry,
    leader_changes: Option<LeaderChanges>,
}

/// Cluster mode: where each partition's data commands run, followed to count its leader
/// changes.
struct LeaderChanges {
    /// Partition `p`'s at index `p`.
    routes: Vec<watch::Receiver<Route>>,
    counts: Family<Partition, Counter>,
}

impl Exporter {
    /// `logs` are the node's partition logs, partition `p`'s at index `p`; they are held
    /// weakly so that a scrape never keeps a log from closing at shutdown.
    pub fn new(metrics: Arc<Metrics>, logs: Vec<Weak<Log>>, replication: ReplicationSource) -> Exporter {
        let mut registry = Registry::with_prefix("msglog");
        registry.register("commands", "Requests answered, by command and result", metrics.commands.clone());
        registry.register(
            "command_duration_seconds",
            "From reading a request to its reply being ready (durability waits included)",
            metrics.latency.clone(),
        );
        registry.register("connections", "Client connections being served", metrics.connections.clone());
        registry.register("connections_accepted", "Client connections accepted", metrics.accepted.clone());
        registry.register_collector(Box::new(NodeCollector { logs, replication }));
        Exporter { registry, leader_changes: None }
    }

    /// Adds cluster mode's metrics: `figures` read at each scrape, and a count of leader
    /// changes per partition taken from `routes` (partition `p`'s at index `p`) while
    /// [`serve`](Self::serve) runs.
    pub fn with_cluster(mut self, figures: ClusterSource, routes: Vec<watch::Receiver<Route>>) -> Exporter {
        let changes = Family::<Partition, Counter>::default();
        // Every partition's series exists from the start, at 0 until its first leader is
        // learnt, so that a rate over it has a beginning.
        for partition in (0u32..).take(routes.len()) {
            let _ = changes.get_or_create(&Partition { partition });
        }
        self.registry.register(
            "cluster_leader_changes",
            "Times the partition's leader, as this node learns it, became another node (the first one learnt counts)",
            changes.clone(),
        );
        self.registry.register_collector(Box::new(ClusterCollector(figures)));
        self.leader_changes = Some(LeaderChanges { routes, counts: changes });
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
        // Dropped, and so stopped, when this returns.
        let _counting = self.count_leader_changes();
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
            () = shutdown => {}
        }
    }

    /// Starts counting each partition's leader changes, on tasks that end when the set is
    /// dropped.
    fn count_leader_changes(&mut self) -> JoinSet<()> {
        let mut counting = JoinSet::new();
        if let Some(LeaderChanges { routes, counts }) = self.leader_changes.take() {
            for (partition, routes) in (0u32..).zip(routes) {
                let counter = counts.get_or_create(&Partition { partition }).clone();
                counting.spawn(count_leader_changes(routes, counter));
            }
        }
        counting
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
            return;
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
        let partitions = (self.0)();
        if partitions.is_empty() {
            return Ok(());
        }
        let e = &mut encoder;
        let led = partitions.iter().filter(|p| p.leads_partition).count() as u64;
        gauge_per_partition(
            e,
            "cluster_partition_leader",
            "1 while the quorum names this node the partition's leader.",
            partitions.iter().map(|p| (p.partition, u64::from(p.leads_partition))),
        )?;
        gauge(e, "cluster_partitions_led", "Partitions the quorum names this node the leader of.", led)?;
        gauge_per_partition(
            e,
            "cluster_isr_size",
            "Replicas in the partition's committed in-sync set.",
            partitions.iter().map(|p| (p.partition, p.isr_size)),
        )?;
        gauge_per_partition(
            e,
            "cluster_high_watermark",
            "Every record of the partition below this offset is held by every in-sync replica.",
            partitions.iter().map(|p| (p.partition, p.high_watermark)),
        )
    }
}

/// Reads the figures that already exist elsewhere at each scrape.
struct NodeCollector {
    /// Partition `p`'s log at index `p`.
    logs: Vec<Weak<Log>>,
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

/// One gauge series per partition, labelled `partition`.
fn gauge_per_partition<N: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (u32, N)>,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (partition, value) in values {
        ConstGauge::new(value).encode(family.encode_family(&Partition { partition })?)?;
    }
    Ok(())
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let counter = ConstCounter::new(value);
    counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)
}

/// Already-bucketed counts, summed over logs: `(upper bound, count)` ascending, the count
/// of every observation, and their sum.
#[derive(Debug, Default)]
struct Buckets {
    buckets: Vec<(u64, u64)>,
    count: u64,
    sum: u64,
}

impl Buckets {
    /// Adds one log's counts. Every log buckets by the same bounds, so counts add bound by
    /// bound.
    fn add(&mut self, buckets: &[(u64, u64)], count: u64, sum: u64) {
        if self.buckets.is_empty() {
            self.buckets = buckets.to_vec();
        } else {
            for ((bound, total), (theirs, n)) in self.buckets.iter_mut().zip(buckets) {
                debug_assert_eq!(bound, theirs, "logs bucket fsyncs by the same bounds");
                *total += n;
            }
        }
        self.count += count;
        self.sum += sum;
    }
}

/// A histogram from already-bucketed counts; `per_unit` bucket units make one of the
/// metric's (a division, so that 50 µs prints as 5e-5 rather than 4.9999999999999996e-5).
fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    counts: &Buckets,
    per_unit: f64,
) -> std::fmt::Result {
    let buckets: Vec<(f64, u64)> = counts.buckets.iter().map(|&(bound, n)| (bound as f64 / per_unit, n)).collect();
    let mut metric = encoder.encode_descriptor(name, help, None, Histogram::TYPE)?;
    metric.encode_histogram::<NoLabelSet>(counts.sum as f64 / per_unit, counts.count, &buckets, None)
}

/// What the node's logs add up to: each ID, record, byte and fsync is in exactly one
/// partition's log, so the node's figure is the sum of its logs'.
#[derive(Debug, Default)]
struct LogTotals {
    records: u64,
    ids: u64,
    segments: u64,
    bytes: u64,
    fsyncs: u64,
    fsync_micros: Buckets,
    records_per_fsync: Buckets,
    cleaned_bytes: u64,
    cleaner_runs: u64,
    retention_deleted_bytes: u64,
}

/// A position or state of one partition's log: the logs count offsets and epochs each on
/// their own, so these are never summed.
#[derive(Debug)]
struct PartitionPositions {
    partition: u32,
    next_offset: u64,
    durable_offset: u64,
    start_offset: u64,
    epoch: u64,
    /// A share of that log's bytes; the logs' sealed sizes it is a share of are not known
    /// here, so it cannot be weighed into one node-wide ratio.
    dirty_ratio: f64,
}

impl LogTotals {
    /// Adds `log`'s figures to the totals and returns its positions.
    fn add(&mut self, partition: u32, log: &Log) -> PartitionPositions {
        let stats = log.stats();
        let fsync = log.fsync_stats();
        let (cleaner, retention) = (log.cleaner_stats(), log.retention_stats());
        self.records += stats.records;
        self.ids += stats.ids;
        self.segments += stats.segments;
        self.bytes += stats.bytes;
        self.fsyncs += fsync.fsyncs;
        self.fsync_micros.add(&fsync.micros.buckets, fsync.micros.count, fsync.micros.sum);
        let batches = &fsync.records_per_fsync;
        self.records_per_fsync.add(&batches.buckets, batches.count, batches.sum);
        self.cleaned_bytes += cleaner.cleaned_bytes;
        self.cleaner_runs += cleaner.runs;
        self.retention_deleted_bytes += retention.deleted_bytes;
        PartitionPositions {
            partition,
            next_offset: stats.next_offset,
            durable_offset: stats.durable_offset,
            start_offset: log.log_start_offset(),
            epoch: u64::from(stats.epoch),
            dirty_ratio: log.dirty_ratio(stats.durable_offset),
        }
    }
}

impl NodeCollector {
    fn encode_logs(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        let mut totals = LogTotals::default();
        // A log already closed (shutdown under way) is left out rather than holding it open.
        let positions: Vec<PartitionPositions> = (0u32..)
            .zip(&self.logs)
            .filter_map(|(partition, log)| log.upgrade().map(|log| totals.add(partition, &log)))
            .collect();
        if positions.is_empty() {
            return Ok(());
        }
        let per_partition =
            |read: fn(&PartitionPositions) -> u64| positions.iter().map(move |p| (p.partition, read(p)));
        gauge(e, "log_records", "Records in the node's logs (messages and tombstones).", totals.records)?;
        gauge(e, "log_ids", "IDs holding a message, over every partition the node holds.", totals.ids)?;
        gauge(e, "log_segments", "Segment files of the node's logs.", totals.segments)?;
        gauge(e, "log_bytes", "Bytes of the node's logs on disk and in the write buffers.", totals.bytes)?;
        let help = "Offset the partition's next record will get.";
        gauge_per_partition(e, "log_next_offset", help, per_partition(|p| p.next_offset))?;
        let help = "Every record of the partition's log below this offset is durable.";
        gauge_per_partition(e, "log_durable_offset", help, per_partition(|p| p.durable_offset))?;
        let help = "The highest leader epoch this node has begun or seen for the partition.";
        gauge_per_partition(e, "epoch", help, per_partition(|p| p.epoch))?;
        counter(e, "fsyncs", "Fsyncs of the node's logs since they were opened.", totals.fsyncs)?;
        let help = "Share of the partition's committed sealed bytes not yet cleaned by compaction (0 to 1).";
        gauge_per_partition(e, "cleaner_dirty_ratio", help, positions.iter().map(|p| (p.partition, p.dirty_ratio)))?;
        let help = "Bytes of segments compaction removed from disk since start.";
        counter(e, "cleaner_cleaned_bytes", help, totals.cleaned_bytes)?;
        let help = "Compaction passes that swapped cleaned segments in since start.";
        counter(e, "cleaner_runs", help, totals.cleaner_runs)?;
        let help = "First offset the partition's log keeps; retention moves it up.";
        gauge_per_partition(e, "log_start_offset", help, per_partition(|p| p.start_offset))?;
        let help = "Bytes of old segments retention deleted since start.";
        counter(e, "retention_deleted_bytes", help, totals.retention_deleted_bytes)?;
        let help = "How long each fsync of the node's logs took.";
        histogram(e, "fsync_duration_seconds", help, &totals.fsync_micros, 1e6)?;
        let help = "Records each fsync made durable (group commit batching).";
        histogram(e, "records_per_fsync", help, &totals.records_per_fsync, 1.0)
    }
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let e = &mut encoder;
        self.encode_logs(e)?;
        let replication = (self.replication)();
        if replication.is_empty() {
            return Ok(());
        }
        gauge_per_partition(
            e,
            "replication_leader",
            "1 where this node leads the partition, 0 where it follows.",
            replication.iter().map(|r| (r.partition, u64::from(r.leader))),
        )?;
        gauge_per_partition(
            e,
            "replication_connected_followers",
            "Followers of the partition with a replication stream open.",
            replication.iter().map(|r| (r.partition, r.connected_followers)),
        )?;
        if replication.iter().any(|r| !r.follower_lag.is_empty()) {
            let mut family = e.encode_descriptor(
                "replication_follower_lag_records",
                "Records of the partition this leader has that the follower has not acknowledged.",
                None,
                MetricType::Gauge,
            )?;
            for r in &replication {
                for (follower, lag) in &r.follower_lag {
                    let labels = (Partition { partition: r.partition }, [("follower", follower.as_str())]);
                    ConstGauge::new(*lag).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let behind: Vec<(u32, u64)> =
            replication.iter().filter_map(|r| Some((r.partition, r.lag_behind_leader?))).collect();
        if !behind.is_empty() {
            let help = "Records of the partition the leader had that this follower had not appended.";
            gauge_per_partition(e, "replication_lag_records", help, behind)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use prometheus_parse::{Scrape, Value};
    use tempfile::TempDir;
    use tokio::sync::watch;

    use super::{ClusterFigures, Exporter, Metrics, ReplicationFigures, Route, exposed};
    use crate::storage::{Config, Log};

    fn scrape(exporter: &Exporter) -> Scrape {
        let text = exporter.render();
        Scrape::parse(text.lines().map(|line| Ok(line.to_string()))).expect("the Prometheus text format")
    }

    /// Every sample of `metric` whose labels include `labels`, as (partition label, value).
    fn series(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Vec<(Option<String>, f64)> {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .filter_map(|s| match s.value {
                Value::Counter(v) | Value::Gauge(v) => Some((s.labels.get("partition").map(str::to_string), v)),
                _ => None,
            })
            .collect()
    }

    /// The one unlabelled sample of `metric`.
    fn total(scrape: &Scrape, metric: &str) -> f64 {
        match series(scrape, metric, &[])[..] {
            [(None, value)] => value,
            ref other => panic!("{metric}: expected one unlabelled sample, got {other:?}"),
        }
    }

    /// Every sample of `metric`, each labelled with its partition, as `(partition, value)`
    /// in partition order (a family of series is encoded in no particular order).
    fn per_partition(scrape: &Scrape, metric: &str) -> Vec<(String, f64)> {
        let mut series: Vec<(String, f64)> = series(scrape, metric, &[])
            .into_iter()
            .map(|(partition, value)| (partition.unwrap_or_else(|| panic!("{metric} without a partition")), value))
            .collect();
        series.sort_by_key(|(partition, _)| partition.parse::<u32>().expect("a partition number"));
        series
    }

    fn partitions(values: &[u64]) -> Vec<(String, f64)> {
        values.iter().enumerate().map(|(p, &v)| (p.to_string(), v as f64)).collect()
    }

    /// The `+Inf` bucket of a histogram: how many observations it holds.
    fn observations(scrape: &Scrape, metric: &str) -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == metric)
            .find_map(|s| match &s.value {
                Value::Histogram(buckets) => buckets.iter().find(|b| b.less_than.is_infinite()).map(|b| b.count),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no histogram {metric}"))
    }

    #[test]
    fn node_log_figures_are_totals_over_every_partition_and_offsets_are_per_partition() {
        let dirs: Vec<TempDir> = (0..3).map(|_| TempDir::new().expect("temp dir")).collect();
        let logs: Vec<Arc<Log>> =
            dirs.iter().map(|dir| Arc::new(Log::open(dir.path(), Config::default()).expect("open log"))).collect();
        // Partition p holds p + 1 IDs, one written twice, each write synced on its own.
        for (p, log) in logs.iter().enumerate() {
            for i in 0..=p {
                log.append(format!("id-{i}").as_bytes(), b"message").expect("append");
                log.sync().expect("sync");
            }
            log.append(b"id-0", b"again").expect("append");
            log.sync().expect("sync");
        }
        let exporter =
            Exporter::new(Arc::new(Metrics::default()), logs.iter().map(Arc::downgrade).collect(), Box::new(Vec::new));
        let s = scrape(&exporter);

        let stats: Vec<_> = logs.iter().map(|log| log.stats()).collect();
        let sum = |figure: fn(&crate::storage::LogStats) -> u64| stats.iter().map(figure).sum::<u64>() as f64;
        assert_eq!(total(&s, "msglog_log_records"), sum(|s| s.records));
        assert_eq!(total(&s, "msglog_log_records"), 9.0, "2 + 3 + 4 records");
        assert_eq!(total(&s, "msglog_log_ids"), 6.0, "1 + 2 + 3 IDs");
        assert_eq!(total(&s, "msglog_log_segments"), sum(|s| s.segments));
        assert_eq!(total(&s, "msglog_log_bytes"), sum(|s| s.bytes));
        assert_eq!(total(&s, "msglog_fsyncs_total"), sum(|s| s.fsyncs));
        assert!(total(&s, "msglog_fsyncs_total") >= 9.0, "one fsync per synced write at least");
        assert_eq!(observations(&s, "msglog_fsync_duration_seconds"), sum(|s| s.fsyncs));
        assert_eq!(observations(&s, "msglog_records_per_fsync"), sum(|s| s.fsyncs));
        assert_eq!(total(&s, "msglog_cleaner_runs_total"), 0.0);

        let each =
            |figure: fn(&crate::storage::LogStats) -> u64| partitions(&stats.iter().map(figure).collect::<Vec<_>>());
        assert_eq!(per_partition(&s, "msglog_log_next_offset"), partitions(&[2, 3, 4]));
        assert_eq!(per_partition(&s, "msglog_log_durable_offset"), each(|s| s.durable_offset));
        assert_eq!(per_partition(&s, "msglog_log_start_offset"), partitions(&[0, 0, 0]));
        assert_eq!(per_partition(&s, "msglog_epoch"), each(|s| u64::from(s.epoch)));
        assert_eq!(per_partition(&s, "msglog_cleaner_dirty_ratio").len(), 3);

        // A log closed at shutdown drops out; the others are still counted.
        drop(exporter);
        let exporter = Exporter::new(
            Arc::new(Metrics::default()),
            logs.iter().map(Arc::downgrade).chain([std::sync::Weak::new()]).collect(),
            Box::new(Vec::new),
        );
        assert_eq!(total(&scrape(&exporter), "msglog_log_records"), 9.0);
    }

    #[test]
    fn replication_gauges_carry_the_partition() {
        let replication = || {
            vec![
                ReplicationFigures {
                    partition: 0,
                    leader: true,
                    connected_followers: 2,
                    follower_lag: vec![("n1".to_string(), 0), ("n2".to_string(), 5)],
                    lag_behind_leader: None,
                },
                ReplicationFigures { partition: 1, leader: false, lag_behind_leader: Some(3), ..Default::default() },
                ReplicationFigures {
                    partition: 2,
                    leader: true,
                    connected_followers: 1,
                    follower_lag: vec![("n2".to_string(), 7)],
                    lag_behind_leader: None,
                },
            ]
        };
        let exporter = Exporter::new(Arc::new(Metrics::default()), Vec::new(), Box::new(replication));
        let s = scrape(&exporter);
        assert_eq!(per_partition(&s, "msglog_replication_leader"), partitions(&[1, 0, 1]));
        assert_eq!(per_partition(&s, "msglog_replication_connected_followers"), partitions(&[2, 0, 1]));
        let lag = |follower| series(&s, "msglog_replication_follower_lag_records", &[("follower", follower)]);
        assert_eq!(lag("n1"), [(Some("0".to_string()), 0.0)]);
        assert_eq!(lag("n2"), [(Some("0".to_string()), 5.0), (Some("2".to_string()), 7.0)], "n2 follows two");
        assert_eq!(per_partition(&s, "msglog_replication_lag_records"), [("1".to_string(), 3.0)]);
    }

    #[test]
    fn cluster_gauges_have_one_series_per_partition_and_count_the_partitions_led() {
        let figures = || {
            (0..4)
                .map(|partition| ClusterFigures {
                    partition,
                    leads_partition: partition % 2 == 0,
                    isr_size: 3 - u64::from(partition == 3),
                    high_watermark: 10 * u64::from(partition),
                })
                .collect()
        };
        let routes = (0..4).map(|_| watch::channel(Route::Electing).1).collect();
        let exporter = Exporter::new(Arc::new(Metrics::default()), Vec::new(), Box::new(Vec::new))
            .with_cluster(Box::new(figures), routes);
        let s = scrape(&exporter);
        assert_eq!(per_partition(&s, "msglog_cluster_partition_leader"), partitions(&[1, 0, 1, 0]));
        assert_eq!(total(&s, "msglog_cluster_partitions_led"), 2.0);
        assert_eq!(per_partition(&s, "msglog_cluster_isr_size"), partitions(&[3, 3, 3, 2]));
        assert_eq!(per_partition(&s, "msglog_cluster_high_watermark"), partitions(&[0, 10, 20, 30]));
        // No leader learnt yet: every partition's count is there, at 0.
        assert_eq!(per_partition(&s, "msglog_cluster_leader_changes_total"), partitions(&[0, 0, 0, 0]));
    }

    /// Lets the counting tasks run (this test's runtime has one thread) until `counts`
    /// are what each partition's leader changes read, or panics.
    async fn leader_changes_reach(exporter: &Exporter, counts: &[u64]) {
        for _ in 0..1000 {
            if per_partition(&scrape(exporter), "msglog_cluster_leader_changes_total") == partitions(counts) {
                return;
            }
            tokio::task::yield_now().await;
        }
        let now = per_partition(&scrape(exporter), "msglog_cluster_leader_changes_total");
        panic!("leader changes stayed at {now:?}, expected {counts:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn leader_changes_are_counted_per_partition() {
        let (electing, local) = (watch::channel(Route::Electing), watch::channel(Route::Local));
        let forward = |leader: &str| Route::Forward { leader_id: leader.to_string(), grpc_addr: "-".to_string() };
        let mut exporter = Exporter::new(Arc::new(Metrics::default()), Vec::new(), Box::new(Vec::new))
            .with_cluster(Box::new(Vec::new), vec![electing.1, local.1]);
        let _counting = exporter.count_leader_changes();
        // Partition 1 begins led here, which counts; partition 0 has no leader yet.
        leader_changes_reach(&exporter, &[0, 1]).await;
        electing.0.send(forward("n1")).unwrap();
        leader_changes_reach(&exporter, &[1, 1]).await;
        local.0.send(forward("n1")).unwrap();
        leader_changes_reach(&exporter, &[1, 2]).await;
        local.0.send(forward("n2")).unwrap();
        leader_changes_reach(&exporter, &[1, 3]).await;
    }

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
