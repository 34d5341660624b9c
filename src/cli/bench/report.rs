//! The result of a run: merged counts and latency, as an aligned table or one JSON object.

use std::fmt::{self, Write as _};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::client::ClientStats;
use super::codec::Protocol;
use super::workload::Workload;

/// What `msglog bench` measured. `requests` counts replies received; only the correct ones
/// (`ok`) count towards throughput and latency, so a server answering errors quickly never
/// looks fast.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub addr: String,
    pub protocol: Protocol,
    #[serde(serialize_with = "serialize_display")]
    pub workload: Workload,
    pub clients: usize,
    pub pipeline: usize,
    pub value_size: usize,
    pub keys: u64,
    /// Keys SET before the measured phase (`--preload`), else 0.
    pub preloaded: u64,
    /// Requests answered, rightly or wrongly.
    pub requests: u64,
    /// Requests answered correctly (`OK`, the expected value, or not found).
    pub ok: u64,
    pub sets: u64,
    pub gets: u64,
    /// GETs answered `NOT_FOUND` / `$-1`.
    pub get_misses: u64,
    /// Wrong or error replies, plus requests lost with a failed connection.
    pub errors: u64,
    /// The earliest error seen, described.
    pub first_error: Option<String>,
    /// Clients whose connection failed, which then stopped.
    pub failed_clients: usize,
    pub elapsed_secs: f64,
    /// Correct replies per second.
    pub throughput: f64,
    /// `None` when no request was answered correctly.
    pub latency_us: Option<Latency>,
    /// The merged latency histogram, in nanoseconds.
    #[serde(skip)]
    pub histogram: Histogram<u64>,
}

/// Latency percentiles of correct replies, in microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

/// The run's settings, as the report restates them.
pub(super) struct Setup {
    pub(super) addr: String,
    pub(super) protocol: Protocol,
    pub(super) workload: Workload,
    pub(super) clients: usize,
    pub(super) pipeline: usize,
    pub(super) value_size: usize,
    pub(super) keys: u64,
    pub(super) preloaded: u64,
}

impl BenchReport {
    pub(super) fn new(setup: Setup, stats: Vec<ClientStats>, elapsed: Duration) -> Self {
        let mut histogram = Histogram::new(3).expect("3 significant figures is a valid precision");
        let sum = |f: fn(&ClientStats) -> u64| stats.iter().map(f).sum::<u64>();
        let (requests, ok, sets, gets) = (sum(|s| s.requests), sum(|s| s.ok), sum(|s| s.sets), sum(|s| s.gets));
        let (get_misses, errors) = (sum(|s| s.get_misses), sum(|s| s.errors));
        for s in &stats {
            histogram.add(&s.latency).expect("auto-resizing histograms always merge");
        }
        let first_error = stats
            .iter()
            .filter_map(|s| s.first_error.as_ref())
            .min_by_key(|(at, _)| *at)
            .map(|(_, message)| message.clone());
        let us = |nanos: u64| nanos as f64 / 1000.0;
        let latency_us = (!histogram.is_empty()).then(|| Latency {
            mean: histogram.mean() / 1000.0,
            p50: us(histogram.value_at_quantile(0.50)),
            p90: us(histogram.value_at_quantile(0.90)),
            p99: us(histogram.value_at_quantile(0.99)),
            p99_9: us(histogram.value_at_quantile(0.999)),
            max: us(histogram.max()),
        });
        let elapsed_secs = elapsed.as_secs_f64();
        BenchReport {
            addr: setup.addr,
            protocol: setup.protocol,
            workload: setup.workload,
            clients: setup.clients,
            pipeline: setup.pipeline,
            value_size: setup.value_size,
            keys: setup.keys,
            preloaded: setup.preloaded,
            requests,
            ok,
            sets,
            gets,
            get_misses,
            errors,
            first_error,
            failed_clients: stats.iter().filter(|s| s.failed).count(),
            elapsed_secs,
            throughput: if elapsed_secs > 0.0 { ok as f64 / elapsed_secs } else { 0.0 },
            latency_us,
            histogram,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("the report holds only plain data")
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rows: Vec<(&str, String)> = vec![
            ("server", format!("{} ({})", self.addr, self.protocol)),
            ("workload", self.workload.to_string()),
            ("clients", self.clients.to_string()),
            ("pipeline", self.pipeline.to_string()),
            ("value size", format!("{} B", self.value_size)),
            ("keys", self.keys.to_string()),
        ];
        if self.preloaded > 0 {
            rows.push(("preloaded", format!("{} keys", self.preloaded)));
        }
        let mut requests = self.requests.to_string();
        if self.workload.has_gets() {
            write!(requests, " ({} SET, {} GET, {} not found)", self.sets, self.gets, self.get_misses)?;
        }
        rows.push(("requests", requests));
        rows.push(("errors", self.errors.to_string()));
        if let Some(first) = &self.first_error {
            rows.push(("first error", first.clone()));
        }
        if self.failed_clients > 0 {
            rows.push(("failed clients", self.failed_clients.to_string()));
        }
        rows.push(("elapsed", format!("{:.3} s", self.elapsed_secs)));
        rows.push(("throughput", format!("{:.0} req/s", self.throughput)));
        match &self.latency_us {
            Some(l) => {
                let percentiles = [("p50", l.p50), ("p90", l.p90), ("p99", l.p99), ("p99.9", l.p99_9), ("max", l.max)];
                rows.extend(percentiles.map(|(name, us)| (name, micros(us))));
            }
            None => rows.push(("latency", "n/a (no correct replies)".to_string())),
        }
        let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
        for (name, value) in rows {
            writeln!(f, "{name:<width$}  {value}")?;
        }
        Ok(())
    }
}

/// Microseconds below a millisecond, milliseconds above, right-aligned so columns line up.
fn micros(us: f64) -> String {
    match us < 1000.0 {
        true => format!("{us:>9.1} µs"),
        false => format!("{:>9.3} ms", us / 1000.0),
    }
}

fn serialize_display<S: serde::Serializer>(value: &impl fmt::Display, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn setup() -> Setup {
        Setup {
            addr: "127.0.0.1:1".into(),
            protocol: Protocol::Resp,
            workload: Workload::Mixed { set_percent: 10 },
            clients: 2,
            pipeline: 1,
            value_size: 100,
            keys: 10,
            preloaded: 0,
        }
    }

    #[test]
    fn clients_merge_into_one_report() {
        let mut a = ClientStats::new();
        let mut b = ClientStats::new();
        a.latency.record(1_000).unwrap();
        b.latency.record(3_000_000).unwrap();
        (a.requests, a.ok, a.sets) = (1, 1, 1);
        (b.requests, b.ok, b.gets, b.get_misses) = (2, 1, 2, 1);
        b.errors = 1;
        b.first_error = Some((Instant::now(), "GET key:000000000001: unexpected reply".into()));
        let report = BenchReport::new(setup(), vec![a, b], Duration::from_secs(1));
        assert_eq!((report.requests, report.ok, report.errors, report.get_misses), (3, 2, 1, 1));
        assert_eq!(report.throughput, 2.0);
        let latency = report.latency_us.unwrap();
        assert!(latency.p50 <= 1.001 && latency.max >= 2_990.0);
        let table = report.to_string();
        assert!(table.contains("3 (1 SET, 2 GET, 1 not found)"), "{table}");
        assert!(table.contains("first error  GET key:000000000001"), "{table}");
    }

    #[test]
    fn report_without_correct_replies_has_no_latency() {
        let mut stats = ClientStats::new();
        (stats.requests, stats.errors) = (5, 5);
        let report = BenchReport::new(setup(), vec![stats], Duration::from_secs(1));
        assert!(report.latency_us.is_none());
        assert!(report.to_string().contains("n/a (no correct replies)"));
        assert!(report.to_json().contains(r#""latency_us":null"#));
    }
}
