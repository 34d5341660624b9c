//! The history recorder and linearizability checker the fault scenarios rely on: planted
//! anomalies it must flag, valid concurrency it must accept, and property tests against
//! real sequential executions and a brute-force search over every order.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::checker::{self, Violation};
use common::history::{History, Kind, Op, Outcome};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Builds a history by hand with chosen times; each op gets its own client.
#[derive(Default)]
struct Planted {
    ops: Vec<Op>,
}

impl Planted {
    fn push(&mut self, key: &str, kind: Kind, invoke: u64, complete: Option<u64>, outcome: Outcome) -> &mut Self {
        let id = self.ops.len();
        self.ops.push(Op { id, client: id, key: key.to_string(), kind, invoke, complete, outcome });
        self
    }

    fn write(&mut self, key: &str, value: &str, invoke: u64, complete: u64) -> &mut Self {
        self.push(key, Kind::Write(value.into()), invoke, Some(complete), Outcome::Written)
    }

    /// A write whose error reply came at `complete`: it may have been applied, even later.
    fn maybe_write(&mut self, key: &str, value: &str, invoke: u64, complete: u64) -> &mut Self {
        self.push(key, Kind::Write(value.into()), invoke, Some(complete), Outcome::WriteFailed("ERR timeout".into()))
    }

    fn read(&mut self, key: &str, value: Option<&str>, invoke: u64, complete: u64) -> &mut Self {
        self.push(key, Kind::Read, invoke, Some(complete), Outcome::Read(value.map(Into::into)))
    }

    fn final_read(&mut self, key: &str, value: Option<&str>, at: u64) -> &mut Self {
        self.push(key, Kind::FinalRead, at, Some(at), Outcome::Read(value.map(Into::into)))
    }

    fn violations(&self) -> Vec<Violation> {
        checker::check(&self.ops).expect_err("the checker accepted a planted anomaly")
    }

    fn assert_valid(&self) {
        checker::assert_valid(&self.ops);
    }
}

/// The values of the zones a stale-read violation names: (held, newer).
fn stale_values(violation: &Violation) -> (Option<String>, Option<String>) {
    match violation {
        Violation::StaleRead { held, newer, .. } => (held.value.clone(), newer.value.clone()),
        other => panic!("expected a stale read, got {other}"),
    }
}

#[test]
fn flags_a_stale_read_of_an_older_value_after_a_newer_write_completed() {
    let violations = Planted::default()
        .write("k", "old", 0, 10)
        .write("k", "new", 20, 30)
        .read("k", Some("old"), 40, 50)
        .violations();
    assert_eq!(violations.len(), 1, "{}", checker::format_violations(&violations));
    assert_eq!(stale_values(&violations[0]), (Some("old".into()), Some("new".into())));
    // The report names the key, the values and the witnessing ops with their clients.
    let text = violations[0].to_string();
    for needle in ["key k", "\"old\"", "\"new\"", "client 2", "GET k"] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
}

#[test]
fn flags_an_acknowledged_write_missing_from_the_final_read() {
    let violations = Planted::default().write("k", "v", 0, 10).final_read("k", None, 100).violations();
    assert!(matches!(&violations[..], [Violation::LostWrite { key, value, .. }] if key == "k" && value == "v"));

    // A final read of an older acknowledged value loses only the newer write.
    let violations = Planted::default()
        .write("k", "v0", 0, 10)
        .write("k", "v1", 20, 30)
        .final_read("k", Some("v0"), 100)
        .violations();
    assert!(matches!(&violations[..], [Violation::LostWrite { value, .. }] if value == "v1"), "{violations:?}");
}

#[test]
fn flags_a_read_of_the_initial_absence_after_an_acknowledged_write() {
    let violations = Planted::default().write("k", "v", 0, 10).read("k", None, 20, 30).violations();
    assert_eq!(violations.len(), 1, "{}", checker::format_violations(&violations));
    assert_eq!(stale_values(&violations[0]), (None, Some("v".into())));

    // Once the write was seen, a later NOT_FOUND makes both values current at once.
    let violations =
        Planted::default().write("k", "v", 0, 10).read("k", Some("v"), 20, 30).read("k", None, 40, 50).violations();
    assert!(matches!(&violations[..], [Violation::ZonesOverlap { .. }]), "{violations:?}");
}

#[test]
fn flags_a_read_of_a_value_never_written() {
    let violations = Planted::default()
        .write("k", "v", 0, 10)
        .write("other", "elsewhere", 0, 10)
        .read("k", Some("elsewhere"), 20, 30)
        .violations();
    assert!(matches!(&violations[..], [Violation::UnknownValue { key, .. }] if key == "k"), "{violations:?}");
}

#[test]
fn flags_an_older_value_read_after_a_maybe_applied_write_was_seen() {
    // w1 failed but r1 saw it; r2 starts after r1 ended, so w1 had taken effect: its value
    // was truncated away.
    let violations = Planted::default()
        .write("k", "w0", 0, 10)
        .maybe_write("k", "w1", 20, 30)
        .read("k", Some("w1"), 25, 35)
        .read("k", Some("w0"), 40, 50)
        .violations();
    assert_eq!(violations.len(), 1, "{}", checker::format_violations(&violations));
    assert_eq!(stale_values(&violations[0]), (Some("w0".into()), Some("w1".into())));
}

#[test]
fn flags_a_read_from_the_future() {
    let violations = Planted::default().read("k", Some("v"), 0, 10).write("k", "v", 20, 30).violations();
    assert!(matches!(&violations[..], [Violation::ReadFromFuture { .. }]), "{violations:?}");
}

#[test]
fn accepts_overlapping_writes_read_in_either_order() {
    for (first, second) in [("a", "b"), ("b", "a")] {
        Planted::default()
            .write("k", "a", 0, 100)
            .write("k", "b", 10, 90)
            .read("k", Some(first), 20, 30)
            .read("k", Some(second), 40, 50)
            .read("k", Some(second), 110, 120)
            .final_read("k", Some(second), 200)
            .assert_valid();
    }
}

#[test]
fn accepts_maybe_applied_writes_whether_read_or_not() {
    Planted::default()
        .write("k", "w0", 0, 10)
        .maybe_write("k", "w1", 20, 30)
        .read("k", Some("w0"), 40, 50)
        // Applied after its error reply, as a replica that had it may later win.
        .read("k", Some("w1"), 60, 70)
        .maybe_write("k", "never-seen", 80, 90)
        .push("k", Kind::Write("no-outcome".into()), 85, None, Outcome::Pending)
        .final_read("k", Some("no-outcome"), 200)
        .assert_valid();
    Planted::default().maybe_write("k", "lost", 0, 10).read("k", None, 20, 30).final_read("k", None, 40).assert_valid();
}

#[test]
fn accepts_reads_concurrent_with_a_write_seeing_old_then_new() {
    Planted::default()
        .read("k", None, 0, 5)
        .write("k", "w0", 1, 10)
        .write("k", "w1", 20, 100)
        .read("k", Some("w0"), 30, 40)
        .read("k", Some("w1"), 50, 60)
        .read("k", Some("w1"), 70, 80)
        // Failed reads tell nothing, whatever they carry.
        .push("k", Kind::Read, 75, Some(76), Outcome::ReadFailed("connection reset".into()))
        .assert_valid();
}

#[test]
fn accepts_many_keys_and_reports_what_it_checked() {
    let mut planted = Planted::default();
    for key in (0..50).map(|k| format!("key{k}")) {
        planted.read(&key, None, 0, 1).write(&key, &format!("{key}-a"), 2, 3).write(&key, &format!("{key}-b"), 4, 6);
        planted.read(&key, Some(&format!("{key}-b")), 5, 8).final_read(&key, Some(&format!("{key}-b")), 100);
    }
    let report = checker::assert_valid(&planted.ops);
    assert_eq!((report.ops, report.per_key.len(), report.totals.acked_writes), (250, 50, 100));
    assert!(report.to_string().starts_with("checked 250 ops on 50 keys"), "{report}");
}

#[test]
fn history_records_concurrent_clients_with_unique_values() {
    let history = Arc::new(History::new());
    let threads: Vec<_> = (0..4)
        .map(|client| {
            let history = Arc::clone(&history);
            std::thread::spawn(move || {
                for seq in 0..100 {
                    let value = History::unique_value(client, seq);
                    let id = history.invoke_write(client, "k", &value);
                    match seq % 3 {
                        0 => history.write_ok(id),
                        1 => history.write_failed(id, "ERR not leader"),
                        _ => history.write_unknown(id),
                    }
                    let id = history.invoke_read(client, "k");
                    history.read_ok(id, Some(value));
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|thread| thread.join().expect("client thread"));
    history.final_read("k", None);
    let ops = history.ops();
    assert!(ops.iter().enumerate().all(|(i, op)| op.id == i && Some(op.invoke) <= op.complete));
    assert!(ops.windows(2).all(|pair| pair[0].invoke <= pair[1].invoke));
    let values: HashSet<_> = ops.iter().filter_map(Op::written).collect();
    assert_eq!(values.len(), 400);
    let counts = history.counts();
    assert_eq!((counts.acked_writes, counts.maybe_writes, counts.reads, counts.final_reads), (136, 264, 400, 1));
    // The final NOT_FOUND loses exactly the acknowledged writes.
    assert_eq!(checker::check_final_reads(&ops).len(), 136);
    assert_ne!(history.next_value(0), history.next_value(0));
}

/// One generated op: key, write or not, invocation, duration, where in (or, for a write
/// without `OK`, after) its interval it takes effect, and its outcome class.
type Spec = (usize, bool, u64, u64, u64, u8);

/// Runs the specs as a real register per key, in order of their points of effect, and
/// records what each read saw; a maybe-applied write takes effect or not.
fn sequential_history(specs: &[Spec]) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut effects = Vec::new();
    for (i, &(key, is_write, invoke, duration, point, outcome)) in specs.iter().enumerate() {
        let complete = invoke + duration;
        let (kind, mut at, status) = match (is_write, outcome) {
            (true, 0..=5) => (Kind::Write(format!("v{i}")), invoke + point % (duration + 1), Outcome::Written),
            (true, 6 | 7) => (Kind::Write(format!("v{i}")), invoke + point, Outcome::WriteFailed("ERR".into())),
            (true, _) => (Kind::Write(format!("v{i}")), u64::MAX, Outcome::WriteUnknown),
            (false, 9) => (Kind::Read, u64::MAX, Outcome::ReadFailed("reset".into())),
            (false, _) => (Kind::Read, invoke + point % (duration + 1), Outcome::Pending),
        };
        at = at.min(u64::MAX - 1);
        effects.push((at, i));
        ops.push(Op {
            id: i,
            client: i,
            key: format!("k{key}"),
            kind,
            invoke,
            complete: Some(complete),
            outcome: status,
        });
    }
    effects.sort();
    let mut registers = vec![None; 3];
    for (at, i) in effects {
        let key = specs[i].0;
        match (&ops[i].kind, &ops[i].outcome) {
            (Kind::Write(value), _) if at < u64::MAX - 1 => registers[key] = Some(value.clone()),
            (Kind::Read, Outcome::Pending) => ops[i].outcome = Outcome::Read(registers[key].clone()),
            _ => {}
        }
    }
    let end = ops.iter().filter_map(|op| op.complete).max().unwrap_or(0) + 1;
    for (key, value) in registers.into_iter().enumerate() {
        let id = ops.len();
        let (invoke, complete) = (end + id as u64, Some(end + id as u64));
        let outcome = Outcome::Read(value);
        ops.push(Op { id, client: id, key: format!("k{key}"), kind: Kind::FinalRead, invoke, complete, outcome });
    }
    ops
}

fn spec(keys: usize, times: u64) -> impl Strategy<Value = Spec> {
    (0..keys, any::<bool>(), 0..times, 0..times / 2, 0..times, 0u8..10)
}

fn show(ops: &[Op]) -> String {
    ops.iter().map(|op| format!("\n  {op}")).collect()
}

#[test]
fn property_sequential_executions_are_accepted() {
    let mut runner = TestRunner::new(Config { cases: 200, ..Config::default() });
    runner
        .run(&prop::collection::vec(spec(3, 200), 1..60), |specs| {
            let ops = sequential_history(&specs);
            let verdict = checker::check(&ops);
            prop_assert!(verdict.is_ok(), "{}{}", checker::format_violations(&verdict.unwrap_err()), show(&ops));
            Ok(())
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
}

/// Linearizability by exhaustive search: some order of the ops, consistent with real time
/// (an op that completed before another was invoked comes first), in which every read
/// returns the register's value. Writes without `OK` may be left out; failed reads are.
fn brute_force_linearizable(ops: &[Op]) -> bool {
    let ops: Vec<&Op> = ops.iter().filter(|op| op.written().is_some() || op.observed().is_some()).collect();
    let ends: Vec<u64> =
        ops.iter().map(|op| if op.is_maybe_write() { u64::MAX } else { op.complete.unwrap() }).collect();
    let required = ops.iter().enumerate().filter(|(_, op)| !op.is_maybe_write()).fold(0u32, |m, (i, _)| m | 1 << i);
    let mut dead_ends = HashSet::new();
    search(&ops, &ends, required, 0, None, &mut dead_ends)
}

fn search<'a>(
    ops: &[&'a Op],
    ends: &[u64],
    required: u32,
    done: u32,
    value: Option<&'a str>,
    dead_ends: &mut HashSet<(u32, Option<&'a str>)>,
) -> bool {
    if done & required == required {
        return true;
    }
    if dead_ends.contains(&(done, value)) {
        return false;
    }
    let pending = |i: usize| done & (1 << i) == 0;
    for (i, op) in ops.iter().enumerate().filter(|&(i, _)| pending(i)) {
        if (0..ops.len()).any(|j| j != i && pending(j) && ends[j] < op.invoke) {
            continue;
        }
        let next = match (op.written(), op.observed()) {
            (Some(written), _) => Some(written),
            (None, Some(seen)) if seen == value => value,
            _ => continue,
        };
        if search(ops, ends, required, done | 1 << i, next, dead_ends) {
            return true;
        }
    }
    dead_ends.insert((done, value));
    false
}

/// A small one-key history: times from a narrow range so ties are common, reads returning
/// any written value, the initial absence, or (rarely) a value never written.
fn small_history() -> impl Strategy<Value = Vec<Op>> {
    let op = (any::<bool>(), 0u64..12, 0u64..6, 0u8..10, 0usize..10);
    prop::collection::vec(op, 1..=8).prop_map(|specs| {
        let writes = specs.iter().filter(|spec| spec.0).count();
        let ops = specs.iter().enumerate().map(|(i, &(is_write, invoke, duration, outcome, pick))| {
            let (kind, outcome) = match (is_write, outcome) {
                (true, 0..=6) => (Kind::Write(format!("v{i}")), Outcome::Written),
                (true, _) => (Kind::Write(format!("v{i}")), Outcome::WriteUnknown),
                (false, 9) => (Kind::Read, Outcome::ReadFailed("reset".into())),
                (false, _) => {
                    let written: Vec<_> = specs.iter().enumerate().filter(|(_, spec)| spec.0).collect();
                    let seen = match pick % (writes + 2) {
                        0 => None,
                        n if n <= writes => Some(format!("v{}", written[n - 1].0)),
                        _ if outcome == 0 => Some("never-written".to_string()),
                        _ => None,
                    };
                    (Kind::Read, Outcome::Read(seen))
                }
            };
            Op { id: i, client: i, key: "k".into(), kind, invoke, complete: Some(invoke + duration), outcome }
        });
        ops.collect()
    })
}

#[test]
fn property_checker_agrees_with_brute_force_search() {
    let (accepted, rejected) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let mut runner = TestRunner::new(Config { cases: 400, ..Config::default() });
    runner
        .run(&small_history(), |ops| {
            let verdict = checker::check(&ops);
            let expected = brute_force_linearizable(&ops);
            let detail = verdict.as_ref().err().map(|v| checker::format_violations(v)).unwrap_or_default();
            prop_assert_eq!(verdict.is_ok(), expected, "{}{}", detail, show(&ops));
            let tally = if expected { &accepted } else { &rejected };
            tally.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
    // Both verdicts must be common, or agreement would prove little.
    let (accepted, rejected) = (accepted.into_inner(), rejected.into_inner());
    eprintln!("agreed with brute force on {accepted} accepted and {rejected} rejected histories");
    assert!(accepted >= 80 && rejected >= 80, "accepted {accepted}, rejected {rejected} of 400");
}
