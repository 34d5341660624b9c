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
//!
//! Here: what connections record and the [`Exporter`]; `collect` reads the figures at
//! scrape time, `scrape` answers the HTTP requests.

use std::sync::{Arc, Weak};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::Route;
use crate::storage::Log;
use collect::{ClusterCollector, NodeCollector};

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

mod collect;
mod scrape;
#[cfg(test)]
mod tests;
