//! Counters for `STATS` and the periodic stats line.
//!
//! Request counters are atomics bumped by every connection; rates are computed against a
//! window that the periodic stats line rolls forward, so `set_per_sec` means "since the last
//! stats line".

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::Shared;
use super::clients::Clients;
use super::shutdown::Shutdown;

#[derive(Debug)]
pub(crate) struct Metrics {
    pub(crate) sets: AtomicU64,
    pub(crate) gets: AtomicU64,
    pub(crate) dels: AtomicU64,
    /// Connections being served now (refused ones are not counted).
    pub(crate) connections: AtomicU64,
    /// When the server started (INFO's uptime).
    pub(crate) started: Instant,
    /// The Redis-protocol connections, for CLIENT LIST.
    pub(crate) clients: Clients,
    window: Mutex<Window>,
    /// Replication refusals logged at most once per [`WARN_EVERY`]; the rest are counted.
    refusals: Mutex<RateLimit>,
}

/// How often a repeated warning (a replication timeout per write) is logged at most.
const WARN_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct RateLimit {
    last: Option<Instant>,
    suppressed: u64,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    sets: u64,
    gets: u64,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            sets: AtomicU64::new(0),
            gets: AtomicU64::new(0),
            dels: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            started: Instant::now(),
            clients: Clients::default(),
            window: Mutex::new(Window { started: Instant::now(), sets: 0, gets: 0 }),
            refusals: Mutex::new(RateLimit::default()),
        }
    }
}

impl Metrics {
    /// A write was refused for its replication (a timeout waiting for followers). Under a
    /// lost follower every write fails this way, so one line per [`WARN_EVERY`] says how
    /// many.
    pub(crate) fn warn_replication_refusal(&self, why: &str) {
        let mut limit = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if limit.last.is_some_and(|last| now.duration_since(last) < WARN_EVERY) {
            limit.suppressed += 1;
            return;
        }
        let suppressed = std::mem::take(&mut limit.suppressed);
        limit.last = Some(now);
        drop(limit);
        tracing::warn!(reason = why, similar_since_last_warning = suppressed, "a write was refused: not replicated");
    }
}

/// Everything one stats line reports.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) role: &'static str,
    pub(crate) node_id: String,
    pub(crate) records: u64,
    pub(crate) ids: u64,
    pub(crate) segments: u64,
    pub(crate) bytes: u64,
    /// Offset of the newest record, if any.
    pub(crate) last_offset: Option<u64>,
    /// Offset of the newest durable record, if any.
    pub(crate) durable_offset: Option<u64>,
    /// The highest leader epoch this node has begun or seen.
    pub(crate) epoch: u32,
    pub(crate) fsyncs: u64,
    /// Share of the durable sealed bytes not yet cleaned by compaction (0 to 1).
    pub(crate) dirty_ratio: f64,
    /// Bytes compaction removed from disk, and its passes, since start.
    pub(crate) cleaned_bytes: u64,
    pub(crate) cleaner_runs: u64,
    /// First offset the log keeps (retention moves it up), and what retention deleted.
    pub(crate) log_start_offset: u64,
    pub(crate) retention_deleted_segments: u64,
    pub(crate) retention_deleted_bytes: u64,
    pub(crate) connections: u64,
    /// Bytes of the buffer budget that connections hold now.
    pub(crate) buffered_bytes: u64,
    pub(crate) sets: u64,
    pub(crate) gets: u64,
    pub(crate) dels: u64,
    pub(crate) set_per_sec: f64,
    pub(crate) get_per_sec: f64,
    /// Replication's pairs: followers and their lag, or the leader and this node's lag.
    pub(crate) replication: Vec<(String, String)>,
}

impl Snapshot {
    /// Takes the numbers; with `roll`, also starts a new rate window (the periodic line does).
    ///
    /// With several partitions, counts (records, IDs, segments, bytes, fsyncs, what the
    /// cleaner and retention removed) are summed over them, the epoch is the highest, and
    /// the offsets and dirty ratio, which mean something only within one log, are
    /// partition 0's.
    pub(crate) fn take(shared: &Shared, roll: bool) -> Snapshot {
        let first = &shared.first().log;
        let mut log = first.stats();
        let mut cleaner = first.cleaner_stats();
        let mut retention = first.retention_stats();
        for slot in shared.partitions.iter().skip(1) {
            let (more, more_cleaner, more_retention) =
                (slot.log.stats(), slot.log.cleaner_stats(), slot.log.retention_stats());
            log.records += more.records;
            log.ids += more.ids;
            log.segments += more.segments;
            log.bytes += more.bytes;
            log.fsyncs += more.fsyncs;
            log.epoch = log.epoch.max(more.epoch);
            cleaner.cleaned_bytes += more_cleaner.cleaned_bytes;
            cleaner.runs += more_cleaner.runs;
            retention.deleted_segments += more_retention.deleted_segments;
            retention.deleted_bytes += more_retention.deleted_bytes;
        }
        let metrics = &shared.metrics;
        let sets = metrics.sets.load(Ordering::Relaxed);
        let gets = metrics.gets.load(Ordering::Relaxed);
        let now = Instant::now();
        let mut window = metrics.window.lock().unwrap_or_else(|e| e.into_inner());
        let seconds = now.duration_since(window.started).as_secs_f64();
        let rate = |now: u64, then: u64| {
            if seconds > 0.0 { now.saturating_sub(then) as f64 / seconds } else { 0.0 }
        };
        let (set_per_sec, get_per_sec) = (rate(sets, window.sets), rate(gets, window.gets));
        if roll {
            *window = Window { started: now, sets, gets };
        }
        drop(window);
        Snapshot {
            role: shared.role(),
            node_id: shared.config.node_id.clone(),
            records: log.records,
            ids: log.ids,
            segments: log.segments,
            bytes: log.bytes,
            last_offset: log.next_offset.checked_sub(1),
            durable_offset: log.durable_offset.checked_sub(1),
            epoch: log.epoch,
            fsyncs: log.fsyncs,
            dirty_ratio: first.dirty_ratio(log.durable_offset),
            cleaned_bytes: cleaner.cleaned_bytes,
            cleaner_runs: cleaner.runs,
            log_start_offset: first.log_start_offset(),
            retention_deleted_segments: retention.deleted_segments,
            retention_deleted_bytes: retention.deleted_bytes,
            connections: metrics.connections.load(Ordering::Relaxed),
            buffered_bytes: shared.budget.used() as u64,
            sets,
            gets,
            dels: metrics.dels.load(Ordering::Relaxed),
            set_per_sec,
            get_per_sec,
            replication: shared
                .cluster()
                .map_or_else(|| vec![("followers".to_string(), "0".to_string())], |c| c.stats()),
        }
    }
}

/// The `STATS` reply: `key=value` pairs separated by single spaces.
impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "role={} node_id={} records={} ids={} segments={} bytes={} last_offset={} durable_offset={} epoch={} fsyncs={} \
             dirty_ratio={:.3} cleaned_bytes={} cleaner_runs={} \
             log_start_offset={} retention_deleted_segments={} retention_deleted_bytes={} \
             connections={} buffered_bytes={} sets={} gets={} set_per_sec={:.0} get_per_sec={:.0}",
            self.role,
            self.node_id,
            self.records,
            self.ids,
            self.segments,
            self.bytes,
            OrNone(self.last_offset),
            OrNone(self.durable_offset),
            self.epoch,
            self.fsyncs,
            self.dirty_ratio,
            self.cleaned_bytes,
            self.cleaner_runs,
            self.log_start_offset,
            self.retention_deleted_segments,
            self.retention_deleted_bytes,
            self.connections,
            self.buffered_bytes,
            self.sets,
            self.gets,
            self.set_per_sec,
            self.get_per_sec,
        )?;
        for (key, value) in &self.replication {
            write!(f, " {key}={value}")?;
        }
        Ok(())
    }
}

impl Snapshot {
    /// INFO's `# Compaction` lines: the cleaner's and retention's figures, as in STATS.
    pub(crate) fn info_compaction(&self) -> Vec<(&'static str, String)> {
        vec![
            ("dirty_ratio", format!("{:.3}", self.dirty_ratio)),
            ("cleaned_bytes", self.cleaned_bytes.to_string()),
            ("cleaner_runs", self.cleaner_runs.to_string()),
            ("log_start_offset", self.log_start_offset.to_string()),
            ("retention_deleted_segments", self.retention_deleted_segments.to_string()),
            ("retention_deleted_bytes", self.retention_deleted_bytes.to_string()),
        ]
    }

    /// INFO's `# Replication` lines: Redis's fields first where one fits, so that tools
    /// reading `role:` or `master_link_status:` understand msglog, then msglog's own pairs.
    /// Offsets count records, not bytes: `master_repl_offset` is the next offset, a
    /// follower's `offset=` the one below which it holds every record durably, so `lag=`
    /// (records, not Redis's seconds) is their difference.
    pub(crate) fn info_replication(&self) -> Vec<(String, String)> {
        let pair = |key: &str| self.replication.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        let next_offset = self.last_offset.map_or(0, |last| last + 1).to_string();
        let members = pair("members").map(client_addrs).unwrap_or_default();
        // A member's client address, from the cluster's member list or, outside cluster
        // mode, from an id that is an address (the default id is the --listen address).
        let host_port = |id: &str| {
            let addr = members.iter().find(|(member, _)| member == id).map_or(id, |(_, addr)| addr.as_str());
            let (host, port) = addr.rsplit_once(':')?;
            let port: u16 = port.parse().ok()?;
            Some((host.trim_start_matches('[').trim_end_matches(']').to_string(), port))
        };
        let mut lines = Vec::new();
        let mut line = |key: &str, value: String| lines.push((key.to_string(), value));
        if self.role == "leader" {
            line("role", "master".to_string());
            line("connected_slaves", pair("followers").unwrap_or("0").to_string());
            let connected = self.followers().filter(|f| f.connected);
            for (n, follower) in connected.enumerate() {
                let address =
                    host_port(follower.id).map_or_else(String::new, |(ip, port)| format!("ip={ip},port={port},"));
                let offset = follower.acked.parse::<u64>().map_or(0, |acked| acked + 1);
                line(&format!("slave{n}"), format!("{address}state=online,offset={offset},lag={}", follower.lag));
            }
            line("master_repl_offset", next_offset);
        } else {
            line("role", "slave".to_string());
            // Cluster mode names the leader in `leader=`; a manual follower's `leader=` is
            // the gRPC address it follows, and the leader's id is `leader_id=`.
            let leader = if pair("cluster").is_some() { pair("leader") } else { pair("leader_id") };
            if let Some((host, port)) = leader.and_then(host_port) {
                line("master_host", host);
                line("master_port", port.to_string());
            }
            let up = pair("leader_connected") == Some("true");
            line("master_link_status", if up { "up" } else { "down" }.to_string());
            line("master_repl_offset", next_offset.clone());
            line("slave_repl_offset", next_offset);
            line("connected_slaves", "0".to_string());
        }
        line("msglog_role", self.role.to_string());
        for (key, value) in &self.replication {
            match Follower::parse(key, value) {
                Some(f) => {
                    let state = if f.connected { "online" } else { "disconnected" };
                    line(
                        &format!("follower_{}", info_key(f.id)),
                        format!("acked={},lag={},state={state}", f.acked, f.lag),
                    );
                }
                None => line(key, value.clone()),
            }
        }
        lines
    }

    fn followers(&self) -> impl Iterator<Item = Follower<'_>> {
        self.replication.iter().filter_map(|(key, value)| Follower::parse(key, value))
    }
}

/// A follower as STATS shows it on its leader: `follower.<id>=acked:<offset|none>,lag:<n>`,
/// with `,disconnected` once its stream is gone.
struct Follower<'a> {
    id: &'a str,
    acked: &'a str,
    lag: &'a str,
    connected: bool,
}

impl<'a> Follower<'a> {
    fn parse(key: &'a str, value: &'a str) -> Option<Follower<'a>> {
        let id = key.strip_prefix("follower.")?;
        let mut fields = value.split(',');
        let acked = fields.next()?.strip_prefix("acked:")?;
        let lag = fields.next()?.strip_prefix("lag:")?;
        Some(Follower { id, acked, lag, connected: fields.next() != Some("disconnected") })
    }
}

/// `id@client-address` pairs of the cluster's member list.
fn client_addrs(members: &str) -> Vec<(String, String)> {
    members
        .split(',')
        .filter_map(|member| member.rsplit_once('@'))
        .map(|(id, addr)| (id.to_string(), addr.to_string()))
        .collect()
}

/// An INFO key ends at the first `:`, and node ids are often addresses: anything but
/// `[A-Za-z0-9._-]` becomes `_`.
fn info_key(id: &str) -> String {
    id.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect()
}

struct OrNone(Option<u64>);

impl fmt::Display for OrNone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(offset) => write!(f, "{offset}"),
            None => f.write_str("none"),
        }
    }
}

impl Snapshot {
    /// What the periodic line compares to decide whether anything changed: every figure
    /// but the rates, which only restate the totals.
    fn figures(&self) -> impl PartialEq + use<> {
        (
            (self.role, self.records, self.ids, self.segments, self.bytes, self.last_offset, self.durable_offset),
            (self.epoch, self.fsyncs, self.connections, self.buffered_bytes, self.sets, self.gets, self.dels),
            self.replication.clone(),
            (self.cleaned_bytes, self.cleaner_runs, self.dirty_ratio.to_bits()),
            (self.log_start_offset, self.retention_deleted_segments, self.retention_deleted_bytes),
        )
    }
}

/// Logs a stats line every `every` until shutdown, skipping the ticks at which nothing
/// changed, so an idle node's log stays quiet.
pub(crate) async fn report_every(
    shared: std::sync::Arc<Shared>,
    every: Duration,
    mut shutdown: Shutdown,
    shutdown_complete: mpsc::Sender<()>,
) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = None;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.recv() => break,
        }
        let s = Snapshot::take(&shared, true);
        let figures = s.figures();
        if last.as_ref() == Some(&figures) {
            continue;
        }
        last = Some(figures);
        let replication = s.replication.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
        tracing::info!(
            role = s.role,
            node_id = %s.node_id,
            records = s.records,
            ids = s.ids,
            segments = s.segments,
            bytes = s.bytes,
            last_offset = %OrNone(s.last_offset),
            durable_offset = %OrNone(s.durable_offset),
            epoch = s.epoch,
            fsyncs = s.fsyncs,
            dirty_ratio = format_args!("{:.3}", s.dirty_ratio),
            cleaned_bytes = s.cleaned_bytes,
            cleaner_runs = s.cleaner_runs,
            log_start_offset = s.log_start_offset,
            retention_deleted_bytes = s.retention_deleted_bytes,
            connections = s.connections,
            buffered_bytes = s.buffered_bytes,
            sets = s.sets,
            gets = s.gets,
            dels = s.dels,
            set_per_sec = format_args!("{:.0}", s.set_per_sec),
            get_per_sec = format_args!("{:.0}", s.get_per_sec),
            replication = %replication,
            "stats"
        );
    }
    // The log must be free to close once the server reports completion.
    drop(shared);
    drop(shutdown_complete);
}
