use std::sync::Arc;

use prometheus_parse::{Scrape, Value};
use tempfile::TempDir;
use tokio::sync::watch;

use super::scrape::exposed;
use super::{ClusterFigures, Exporter, Metrics, ReplicationFigures, Route};
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
    assert!(series(&s, "msglog_fsync_rounds_total", &[]).is_empty(), "logs in no sync group have no rounds");

    let each = |figure: fn(&crate::storage::LogStats) -> u64| partitions(&stats.iter().map(figure).collect::<Vec<_>>());
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
fn shared_fsync_rounds_are_exported_where_the_logs_share_them() {
    let dirs: Vec<TempDir> = (0..3).map(|_| TempDir::new().expect("temp dir")).collect();
    let fs: Arc<dyn crate::storage::FileSystem> = Arc::new(crate::storage::RealFs);
    let group = crate::storage::SyncGroup::new(dirs[0].path()).expect("sync group");
    let logs: Vec<Arc<Log>> = dirs
        .iter()
        .map(|dir| {
            let log = Log::open_with(dir.path(), Config::default(), Arc::clone(&fs)).expect("open log");
            assert!(log.join_sync_group(&group).expect("join"), "temp dirs share a device");
            Arc::new(log)
        })
        .collect();
    // One round per sync, each waiting on one log: 3 rounds, 3 logs.
    for log in &logs {
        log.append(b"id", b"message").expect("append");
        log.sync().expect("sync");
    }
    let exporter =
        Exporter::new(Arc::new(Metrics::default()), logs.iter().map(Arc::downgrade).collect(), Box::new(Vec::new));
    let s = scrape(&exporter);
    let stats = group.stats();
    assert_eq!(total(&s, "msglog_fsync_rounds_total"), stats.rounds as f64);
    assert_eq!(total(&s, "msglog_fsync_round_logs_total"), stats.logs_synced as f64);
    assert!(stats.rounds >= 3, "one round at least for each sync: {stats:?}");
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
