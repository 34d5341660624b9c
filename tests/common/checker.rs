//! Proves a recorded [`History`](super::history::History) linearizable, key by key, in
//! O(n log n): each key is a register whose writes store unique values, so every read names
//! the write it saw and no search over orders is needed.
//!
//! The method ("zones", Gibbons and Korach; Anderson et al. 2010, "What consistency does
//! your key-value store actually provide?"): a write and the reads that returned its value
//! form a cluster. With `f` the earliest completion in a cluster and `s` its latest
//! invocation, the write takes effect no later than `f` and its value is still there at `s`.
//! If `f < s` the value must be the register's throughout `[f, s]`, a *forward zone*; else
//! the whole cluster can take effect at one instant of `[s, f]`, a *backward zone*. A
//! history whose reads each name a write invoked before the read completed is linearizable
//! iff no two forward zones overlap and no backward zone lies inside a forward zone.
//!
//! Edge cases: the initial absence is a virtual write completed before everything, read by
//! every `NOT_FOUND`; a write that failed or got no answer may take effect at any time after
//! its invocation, so it completes "never", and it is left out when nobody read it (it can
//! take effect after everything). Reads that failed say nothing and are left out. Two ops
//! are ordered only if one completed strictly before the other was invoked.
//!
//! Usage: `let report = checker::assert_valid(&history.ops());` panics with the violations
//! (each with the few ops that witness it), else returns counts for the test's output.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use super::history::{Counts, Nanos, Op, counts, format_nanos};

/// A point in a history: the initial value exists at `Start`; a write that never got an
/// `OK` completes at `Never`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Time {
    Start,
    At(Nanos),
    Never,
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Time::Start => write!(f, "start"),
            Time::At(nanos) => write!(f, "{}", format_nanos(*nanos)),
            Time::Never => write!(f, "never"),
        }
    }
}

/// A cluster's zone and the ops that bound it: the write (absent for the initial value),
/// the op that completed first and the op invoked last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Zone {
    /// `None`: the initial absence (`NOT_FOUND`).
    pub value: Option<String>,
    pub from: Time,
    pub to: Time,
    pub witnesses: Vec<Op>,
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(f, "value {value:?}")?,
            None => write!(f, "NOT_FOUND (the initial absence)")?,
        }
        write!(f, " over [{} .. {}]", self.from, self.to)?;
        self.witnesses.iter().try_for_each(|op| write!(f, "\n      {op}"))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// A read returned a value no write of this key wrote.
    UnknownValue { key: String, read: Op },
    /// A read completed before the write of its value was invoked.
    ReadFromFuture { key: String, read: Op, write: Op },
    /// `held` must be the register's value throughout its zone, yet `newer` was written and
    /// read entirely within it: a read in `held` missed a write that had taken effect.
    StaleRead { key: String, held: Zone, newer: Zone },
    /// Two values must each be the register's value throughout overlapping windows.
    ZonesOverlap { key: String, window: (Time, Time), first: Zone, second: Zone },
    /// After healing, the final read of `key` shows neither this acknowledged write's value
    /// nor that of a write that may have taken effect after it.
    LostWrite { key: String, value: String, write: Op, final_read: Op },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::UnknownValue { key, read } => {
                write!(f, "key {key}: read of a value never written to it:\n      {read}")
            }
            Violation::ReadFromFuture { key, read, write } => {
                write!(f, "key {key}: read completed before its write was invoked:\n      {read}\n      {write}")
            }
            Violation::StaleRead { key, held, newer } => write!(
                f,
                "key {key}: stale read: the register must hold {held}\n    yet entirely within that window, {newer}"
            ),
            Violation::ZonesOverlap { key, window: (from, to), first, second } => {
                write!(f, "key {key}: two values must both be current in [{from} .. {to}]:\n    {first}\n    {second}")
            }
            Violation::LostWrite { key, value, write, final_read } => write!(
                f,
                "key {key}: acknowledged write of {value:?} lost after healing:\n      {write}\n      {final_read}"
            ),
        }
    }
}

/// Counts of one key's ops that were checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyReport {
    pub counts: Counts,
    pub forward_zones: usize,
    pub backward_zones: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub ops: usize,
    pub per_key: BTreeMap<String, KeyReport>,
    pub totals: Counts,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "checked {} ops on {} keys: {}", self.ops, self.per_key.len(), self.totals)
    }
}

/// Checks every key's register linearizability and, for keys with a final read, that no
/// acknowledged write was lost.
pub fn check(ops: &[Op]) -> Result<Report, Vec<Violation>> {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        by_key.entry(&op.key).or_default().push(op);
    }
    let mut violations = Vec::new();
    let mut report = Report { ops: ops.len(), totals: counts(ops), ..Report::default() };
    for (key, key_ops) in by_key {
        let mut key_report = check_key(key, &key_ops, &mut violations);
        key_report.counts = counts(key_ops.iter().copied());
        report.per_key.insert(key.to_string(), key_report);
    }
    violations.extend(check_final_reads(ops));
    if violations.is_empty() { Ok(report) } else { Err(violations) }
}

/// Runs [`check`] and panics with a readable list of the violations.
pub fn assert_valid(ops: &[Op]) -> Report {
    check(ops).unwrap_or_else(|violations| panic!("{}", format_violations(&violations)))
}

/// The violations one per paragraph, the first 20 only: more rarely tell anything new.
pub fn format_violations(violations: &[Violation]) -> String {
    let mut text = format!("{} violation(s) of linearizability:\n", violations.len());
    for violation in violations.iter().take(20) {
        text += &format!("  - {violation}\n");
    }
    if violations.len() > 20 {
        text += &format!("  ... and {} more\n", violations.len() - 20);
    }
    text
}

/// After healing, each acknowledged write must still be readable: each final read of its key
/// shows its value or that of a write that may have taken effect after it, i.e. any write
/// but one acknowledged before this one was invoked.
pub fn check_final_reads(ops: &[Op]) -> Vec<Violation> {
    let writes: HashMap<(&str, &str), &Op> =
        ops.iter().filter_map(|op| Some(((op.key.as_str(), op.written()?), op))).collect();
    let mut violations = Vec::new();
    for final_read in ops.iter().filter(|op| op.kind == super::history::Kind::FinalRead) {
        let Some(seen) = final_read.observed() else { continue };
        let seen_write = seen.and_then(|value| writes.get(&(final_read.key.as_str(), value)));
        for write in ops.iter().filter(|op| op.key == final_read.key && op.is_acked_write()) {
            let survives = match seen_write {
                Some(seen) if seen.id == write.id => true,
                Some(seen) => !(seen.is_acked_write() && seen.complete < Some(write.invoke)),
                None => false,
            };
            if !survives {
                violations.push(Violation::LostWrite {
                    key: write.key.clone(),
                    value: write.written().unwrap_or_default().to_string(),
                    write: write.clone(),
                    final_read: final_read.clone(),
                });
            }
        }
    }
    violations
}

/// A write and the reads of its value, reduced to the two bounds of its zone.
struct Cluster<'a> {
    value: Option<&'a str>,
    write: Option<&'a Op>,
    reads: usize,
    first_complete: (Time, Option<&'a Op>),
    last_invoke: (Time, Option<&'a Op>),
}

impl<'a> Cluster<'a> {
    fn add(&mut self, op: &'a Op, invoke: Time, complete: Time) {
        if complete < self.first_complete.0 {
            self.first_complete = (complete, Some(op));
        }
        if invoke > self.last_invoke.0 {
            self.last_invoke = (invoke, Some(op));
        }
    }

    fn zone(&self) -> Zone {
        let mut witnesses: Vec<Op> = Vec::new();
        for op in [self.write, self.first_complete.1, self.last_invoke.1].into_iter().flatten() {
            if !witnesses.iter().any(|seen| seen.id == op.id) {
                witnesses.push(op.clone());
            }
        }
        let (f, s) = (self.first_complete.0, self.last_invoke.0);
        Zone { value: self.value.map(str::to_string), from: f.min(s), to: f.max(s), witnesses }
    }

    fn is_forward(&self) -> bool {
        self.first_complete.0 < self.last_invoke.0
    }
}

fn completion(op: &Op) -> Time {
    match op.complete {
        Some(nanos) if !op.is_maybe_write() => Time::At(nanos),
        _ => Time::Never,
    }
}

fn check_key(key: &str, ops: &[&Op], violations: &mut Vec<Violation>) -> KeyReport {
    let initial = Cluster {
        value: None,
        write: None,
        reads: 0,
        first_complete: (Time::Start, None),
        last_invoke: (Time::Start, None),
    };
    let mut clusters = vec![initial];
    let mut index: HashMap<Option<&str>, usize> = HashMap::from([(None, 0)]);
    for &op in ops {
        let Some(value) = op.written() else { continue };
        assert!(!index.contains_key(&Some(value)), "value {value:?} written twice to key {key}: values must be unique");
        index.insert(Some(value), clusters.len());
        let (invoke, complete) = (Time::At(op.invoke), completion(op));
        clusters.push(Cluster {
            value: Some(value),
            write: Some(op),
            reads: 0,
            first_complete: (complete, Some(op)),
            last_invoke: (invoke, Some(op)),
        });
    }
    for &read in ops.iter().filter(|op| op.kind == super::history::Kind::Read) {
        let Some(seen) = read.observed() else { continue };
        let Some(&at) = index.get(&seen) else {
            violations.push(Violation::UnknownValue { key: key.to_string(), read: read.clone() });
            continue;
        };
        let complete = completion(read);
        if let Some(write) = clusters[at].write.filter(|write| complete < Time::At(write.invoke)) {
            let (read, write) = (read.clone(), write.clone());
            violations.push(Violation::ReadFromFuture { key: key.to_string(), read, write });
            continue;
        }
        clusters[at].reads += 1;
        clusters[at].add(read, Time::At(read.invoke), complete);
    }
    // An unread write without `OK` can take effect after everything else (its backward zone
    // reaches "never", so no forward zone holds it) and an unread initial value constrains
    // nothing: leaving both out keeps the zone counts meaningful.
    clusters.retain(|cluster| cluster.reads > 0 || cluster.write.is_some_and(Op::is_acked_write));
    let (forward, backward): (Vec<_>, Vec<_>) = clusters.iter().partition(|cluster| cluster.is_forward());
    let mut forward: Vec<Zone> = forward.into_iter().map(Cluster::zone).collect();
    let backward: Vec<Zone> = backward.into_iter().map(Cluster::zone).collect();
    forward.sort_by_key(|zone| (zone.from, zone.to));

    // Each forward zone that starts before an earlier-starting one ends is reported once,
    // against the earlier zone reaching furthest.
    let mut reach: Vec<usize> = Vec::with_capacity(forward.len());
    for (i, zone) in forward.iter().enumerate() {
        if let Some(&furthest) = reach.last() {
            let earlier = &forward[furthest];
            if zone.from < earlier.to {
                let window = (zone.from, zone.to.min(earlier.to));
                let (first, second) = (earlier.clone(), zone.clone());
                violations.push(Violation::ZonesOverlap { key: key.to_string(), window, first, second });
            }
        }
        reach.push(match reach.last() {
            Some(&furthest) if forward[furthest].to >= zone.to => furthest,
            _ => i,
        });
    }
    for zone in &backward {
        let starting_before = forward.partition_point(|held| held.from < zone.from);
        let Some(&furthest) = starting_before.checked_sub(1).and_then(|last| reach.get(last)) else { continue };
        if forward[furthest].to > zone.to {
            let (held, newer) = (forward[furthest].clone(), zone.clone());
            violations.push(Violation::StaleRead { key: key.to_string(), held, newer });
        }
    }
    KeyReport { counts: Counts::default(), forward_zones: forward.len(), backward_zones: backward.len() }
}
