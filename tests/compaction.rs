//! Log compaction: what a clean pass keeps, that offsets never move, that reads by offset
//! land on the next surviving record, that every step of the swap recovers, that disk use
//! shrinks, and that `msglog serve` cleans in the background (and `--cleanup none` not).
//!
//! The property test runs `MSGLOG_COMPACTION_SEEDS` seeded histories (default 40, a few
//! seconds); `MSGLOG_COMPACTION_FIRST_SEED` replays one.

mod common;

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{LineClient, ServerProcess, msglog, poll_until};
use msglog::storage::check::check;
use msglog::storage::{CleanOptions, Config, FileSystem, FsyncPolicy, Log, RealFs, RecordKind};
use tempfile::TempDir;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn config() -> Config {
    Config {
        segment_bytes: 512,
        max_record_bytes: 400,
        index_interval_bytes: 64,
        fsync: FsyncPolicy::Never,
        ..Config::default()
    }
}

/// Every tombstone below `upto` may go: retention 0, horizon at the clean point.
fn options(upto: u64) -> CleanOptions {
    CleanOptions { upto, tombstone_horizon: upto, delete_retention: Duration::ZERO, bytes_per_sec: None }
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// A record as reads by offset return it (timestamps differ between logs written apart).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    offset: u64,
    epoch: u32,
    kind: RecordKind,
    id: Vec<u8>,
    message: Vec<u8>,
    continues: bool,
}

fn records(log: &Log) -> Vec<Rec> {
    let mut out = Vec::new();
    for chunk in log.chunks_from(0, 1 << 12) {
        for r in chunk.unwrap().records() {
            let r = r.unwrap();
            out.push(Rec {
                offset: r.offset,
                epoch: r.epoch,
                kind: r.kind,
                id: r.id.to_vec(),
                message: r.message.to_vec(),
                continues: r.continues,
            });
        }
    }
    out
}

/// Writes one random operation to every log in `logs` alike (a SET, a DEL or an atomic
/// batch of both) and to `model` (ID → offset and message of its live record).
fn write_random(logs: &[&Log], rng: &mut Rng, step: u64, model: &mut BTreeMap<Vec<u8>, (u64, Vec<u8>)>) {
    let id = |rng: &mut Rng| format!("id-{}", rng.below(12)).into_bytes();
    let message = |step: u64, n: u64| format!("v{step}.{n}-{}", "m".repeat((step % 17) as usize)).into_bytes();
    let writes: Vec<(Vec<u8>, Option<Vec<u8>>)> = match rng.below(10) {
        0..6 => vec![(id(rng), Some(message(step, 0)))],
        6..8 => vec![(id(rng), None)],
        _ => (0..2 + rng.below(3)).map(|n| (id(rng), (rng.below(3) > 0).then(|| message(step, n)))).collect(),
    };
    for log in logs {
        log.transaction(|batch| {
            for (id, message) in &writes {
                match message {
                    Some(m) => batch.set(id, m).unwrap(),
                    None => _ = batch.delete(id).unwrap(),
                }
            }
        })
        .unwrap();
    }
    // The model follows the log that is never cleaned.
    for (id, _) in &writes {
        match logs[logs.len() - 1].get_with_offset(id).unwrap() {
            Some(found) => _ = model.insert(id.clone(), found),
            None => _ = model.remove(id),
        }
    }
}

fn assert_reads_the_model(log: &Log, model: &BTreeMap<Vec<u8>, (u64, Vec<u8>)>, what: &str) {
    for n in 0..12 {
        let id = format!("id-{n}").into_bytes();
        assert_eq!(log.get_with_offset(&id).unwrap(), model.get(&id).cloned(), "{what}: id-{n}");
    }
}

/// The first surviving record at or after every offset is what `read_from` returns.
fn assert_reads_land_on_survivors(log: &Log, survivors: &[Rec], what: &str) {
    for o in 0..log.next_offset() {
        let expected = survivors.iter().find(|r| r.offset >= o).map(|r| r.offset);
        let found = log.read_from(o, 1).unwrap().records().next().map(|r| r.unwrap().offset);
        assert_eq!(found, expected, "{what}: read_from({o})");
    }
}

/// A temporary dir in memory where there is one: these tests fsync a lot (tiny segments
/// roll every few records) and what they check does not depend on the disk.
fn temp_dir() -> TempDir {
    let shm = Path::new("/dev/shm");
    match shm.is_dir() {
        true => tempfile::Builder::new().prefix("msglog-compaction").tempdir_in(shm).unwrap(),
        false => TempDir::new().unwrap(),
    }
}

fn logical_digest(dir: &Path) -> [u8; 32] {
    check(dir, &config(), |_| {}).unwrap().logical_digest
}

fn run_history(seed: u64) {
    let dirs: Vec<TempDir> = (0..3).map(|_| temp_dir()).collect();
    let open = |i: usize| Log::open(dirs[i].path(), config()).unwrap();
    // `stepwise` is cleaned along the way, `once` only at the end, `never` not at all.
    let (stepwise, once, never) = (open(0), open(1), open(2));
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut model = BTreeMap::new();
    let mut upto = 0;
    for step in 0..300 {
        write_random(&[&stepwise, &once, &never], &mut rng, step, &mut model);
        if rng.below(8) == 0 {
            // A rising clean point anywhere up to the (synced) end.
            stepwise.sync().unwrap();
            upto += rng.below(stepwise.next_offset() - upto + 1);
            stepwise.clean(&options(upto)).unwrap();
            assert_reads_the_model(&stepwise, &model, &format!("seed {seed} step {step}"));
        }
    }
    once.sync().unwrap();
    once.clean(&options(upto)).unwrap();
    let what = format!("seed {seed}");
    let (cleaned, all) = (records(&stepwise), records(&never));
    assert_eq!(cleaned, records(&once), "{what}: passes with a rising clean point end where one pass does");
    for r in &cleaned {
        let original = all.iter().find(|o| o.offset == r.offset).expect("a kept record was written");
        let same = Rec { continues: original.continues, ..r.clone() };
        assert_eq!(&same, original, "{what}: offsets never move and records never change");
        assert!(!r.continues || original.continues, "{what}: a batch flag only ever clears");
    }
    assert!(all.iter().filter(|r| r.offset >= upto).all(|r| cleaned.contains(r)), "{what}: nothing past upto goes");
    // Twelve IDs overwritten over a hundred records leave superseded ones in the sealed
    // segments below the clean point.
    if upto >= 100 {
        assert!(cleaned.len() < all.len(), "{what}: cleaning up to {upto} dropped nothing");
    }
    assert_reads_the_model(&stepwise, &model, &what);
    assert_reads_land_on_survivors(&stepwise, &cleaned, &what);
    for log in [stepwise, once, never] {
        log.close().unwrap();
    }
    let reopened = open(0);
    assert_eq!(records(&reopened), cleaned, "{what}: reopening keeps the cleaned log");
    assert_reads_the_model(&reopened, &model, &format!("{what}, reopened"));
    reopened.close().unwrap();
    assert_eq!(logical_digest(dirs[0].path()), logical_digest(dirs[2].path()), "{what}: logical digests");
    assert_eq!(logical_digest(dirs[1].path()), logical_digest(dirs[2].path()), "{what}: logical digests");
}

#[test]
fn random_histories_keep_the_latest_records_and_the_same_live_set_however_cleaned() {
    let first = env_u64("MSGLOG_COMPACTION_FIRST_SEED", 1);
    for seed in first..first + env_u64("MSGLOG_COMPACTION_SEEDS", 40) {
        run_history(seed);
    }
}
