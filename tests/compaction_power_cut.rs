//! Seeded random power cuts with log cleaning passes interleaved with the writes.
//!
//! Each seed opens a log on a [`PowerCutFs`] with tiny segments, writes SETs, DELs and
//! atomic batches over a few IDs (waiting for each to be durable), runs a clean pass up to
//! the durable offset every few writes, and cuts the power after a random number of file
//! operations, so cuts land in every step of a pass's swap. The files are rewritten to
//! what survived and the log reopened with the real file system in strict recovery:
//! 1. recovery accepts the files (no repair needed) and leaves no swap behind;
//! 2. every acknowledged write survives with its exact value (or a later one); under
//!    `--fsync never`, every write a clean pass had made durable before it cleaned;
//! 3. no value appears that was never written, and no deleted ID comes back.
//!
//! `MSGLOG_COMPACTION_POWER_CUT_SEEDS` sets the number of seeds (default 300, a few
//! seconds); `MSGLOG_COMPACTION_POWER_CUT_FIRST_SEED` starts elsewhere (to replay one).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::fs::PowerCutFs;
use common::power_cut::History;
use common::seeded::{Rng, env_u64};
use msglog::storage::{CleanOptions, Config, FsyncPolicy, Log, RecoveryMode};
use tempfile::TempDir;

const DEFAULT_SEEDS: u64 = 300;
const WRITES: u64 = 150;
const IDS: u64 = 5;
/// A run of the writes and passes above takes about this many file operations.
const MAX_OPS_BEFORE_CUT: u64 = 1700;

fn config(fsync: FsyncPolicy) -> Config {
    Config { fsync, segment_bytes: 384, max_record_bytes: 256, index_interval_bytes: 64, ..Config::default() }
}

/// Writes, acknowledges and cleans until the writes run out or the power goes. Under
/// `--fsync never` a write counts as acknowledged once a clean pass up to it returned:
/// a pass makes what it cleans against durable first.
fn write_and_clean(log: &Log, seed: u64, rng: &mut Rng, fsync: FsyncPolicy) -> HashMap<Vec<u8>, History> {
    let mut histories: HashMap<Vec<u8>, History> = HashMap::new();
    let mut unsynced: Vec<(Vec<u8>, usize)> = Vec::new();
    for n in 0..WRITES {
        let count = if rng.below(4) == 0 { 2 + rng.below(2) } else { 1 };
        let mut writes = Vec::new();
        for _ in 0..count {
            let id = format!("id-{}", rng.below(IDS)).into_bytes();
            let history = histories.entry(id.clone()).or_default();
            // Recorded before the call: once it is made, the record may reach the disk.
            let value = match rng.below(5) {
                0 if history.writes.last().is_some_and(|w| w.is_some()) => None,
                _ => Some(format!("seed {seed} write {n} {}", "v".repeat((n % 13) as usize)).into_bytes()),
            };
            history.writes.push(value.clone());
            writes.push((id, value));
        }
        let written = log.transaction(|batch| {
            writes.iter().try_for_each(|(id, value)| match value {
                Some(v) => batch.set(id, v),
                None => batch.delete(id).map(|_| ()),
            })
        });
        let last = match written {
            Ok((Ok(()), Some(last))) => last,
            _ => break,
        };
        if log.sync_through(last).is_err() {
            break;
        }
        unsynced.extend(writes.iter().map(|(id, _)| (id.clone(), histories[id].writes.len())));
        if fsync == FsyncPolicy::Always {
            acknowledge(&mut histories, &mut unsynced);
        }
        if n % 6 == 5 {
            let upto = log.durable_offset();
            let opts =
                CleanOptions { upto, tombstone_horizon: upto, delete_retention: Duration::ZERO, bytes_per_sec: None };
            if log.clean(&opts).is_err() {
                break;
            }
            acknowledge(&mut histories, &mut unsynced);
        }
    }
    histories
}

fn acknowledge(histories: &mut HashMap<Vec<u8>, History>, unsynced: &mut Vec<(Vec<u8>, usize)>) {
    for (id, written) in unsynced.drain(..) {
        let history = histories.get_mut(&id).expect("written");
        history.acked = history.acked.max(written);
    }
}

fn temp_dir() -> TempDir {
    let shm = std::path::Path::new("/dev/shm");
    match shm.is_dir() {
        true => tempfile::Builder::new().prefix("msglog-compaction-cut").tempdir_in(shm).unwrap(),
        false => TempDir::new().unwrap(),
    }
}

fn run(seed: u64, fsync: FsyncPolicy) {
    let dir = temp_dir();
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9) | 1);
    let fs = Arc::new(PowerCutFs::new(seed, Some(1 + rng.below(MAX_OPS_BEFORE_CUT))));
    let mut histories = HashMap::new();
    // The power may go while the log is opening: then nothing was written.
    if let Ok(log) = Log::open_with(dir.path(), config(fsync), fs.clone()) {
        histories = write_and_clean(&log, seed, &mut rng, fsync);
        fs.cut_power();
        drop(log);
    }
    fs.restore();

    let strict = Config { recovery: RecoveryMode::Strict, ..config(fsync) };
    let log = Log::open(dir.path(), strict)
        .unwrap_or_else(|e| panic!("seed {seed}: recovery refused a log that only lost unsynced bytes: {e}"));
    for (id, history) in &histories {
        let found = log.get(id).unwrap_or_else(|e| panic!("seed {seed}: reading {id:?}: {e}"));
        assert!(
            history.allowed().contains(&found.as_deref()),
            "seed {seed}: ID {} holds {:?}; allowed {:?} ({} of {} writes acknowledged)",
            String::from_utf8_lossy(id),
            found.as_deref().map(String::from_utf8_lossy),
            history.allowed().iter().map(|v| v.map(String::from_utf8_lossy)).collect::<Vec<_>>(),
            history.acked,
            history.writes.len()
        );
    }
    log.close().unwrap();
    let leftovers: Vec<String> = std::fs::read_dir(dir.path().join("log"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".swap") || n.ends_with(".cleaned"))
        .collect();
    assert!(leftovers.is_empty(), "seed {seed}: recovery left {leftovers:?}");
}

#[test]
fn acknowledged_writes_survive_power_cuts_during_cleaning() {
    let first = env_u64("MSGLOG_COMPACTION_POWER_CUT_FIRST_SEED", 1);
    for seed in first..first + env_u64("MSGLOG_COMPACTION_POWER_CUT_SEEDS", DEFAULT_SEEDS) {
        run(seed, FsyncPolicy::Always);
    }
}

/// Under `--fsync never` a record may supersede an older, fsynced one while it is itself
/// only in the page cache: the older one may go only once the newer is durable.
#[test]
fn under_fsync_never_what_a_pass_cleaned_against_survives_power_cuts() {
    let first = env_u64("MSGLOG_COMPACTION_POWER_CUT_FIRST_SEED", 1);
    for seed in first..first + env_u64("MSGLOG_COMPACTION_POWER_CUT_SEEDS", DEFAULT_SEEDS) {
        run(seed, FsyncPolicy::Never);
    }
}

/// Without a cut, the same writes leave passes that cleaned something: the seeds above
/// do exercise the swap.
#[test]
fn the_writes_above_do_clean() {
    let dir = temp_dir();
    let log = Log::open(dir.path(), config(FsyncPolicy::Always)).unwrap();
    write_and_clean(&log, 0, &mut Rng(7), FsyncPolicy::Always);
    let records = log.stats().records;
    assert!(records < WRITES, "{records} records left of at least {WRITES} written");
    log.close().unwrap();
}
