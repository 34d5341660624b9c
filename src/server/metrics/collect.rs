//! The collectors: figures that exist elsewhere (the logs' stats and fsync buckets,
//! replication's and the quorum's state), read and encoded at each scrape.

use std::sync::Weak;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};

use super::{ClusterSource, Partition, ReplicationSource};
use crate::storage::Log;

/// Cluster mode's gauges, read at each scrape.
pub(super) struct ClusterCollector(pub(super) ClusterSource);

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
pub(super) struct NodeCollector {
    /// Partition `p`'s log at index `p`.
    pub(super) logs: Vec<Weak<Log>>,
    pub(super) replication: ReplicationSource,
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
    /// The sync group the logs share under `--fsync always`, if they joined one (a node's
    /// logs join one group or none, so the first log's is every log's).
    sync_group: Option<crate::storage::SyncGroupStats>,
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
        self.sync_group = self.sync_group.or_else(|| log.sync_group_stats());
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
        if let Some(group) = totals.sync_group {
            let help = "Rounds in which the node's partition logs shared one syncfs (--fsync always).";
            counter(e, "fsync_rounds", help, group.rounds)?;
            let help = "Partition logs those shared rounds made durable, summed (divided by the rounds: the sharing).";
            counter(e, "fsync_round_logs", help, group.logs_synced)?;
        }
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
