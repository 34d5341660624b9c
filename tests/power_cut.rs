//! Seeded random power cuts against concurrent writers under `--fsync always`.
//!
//! Each seed opens a log on a [`PowerCutFs`] with small segments (so rolls happen), runs
//! writer threads that SET, overwrite and DEL their own IDs and wait for `sync_through`,
//! and cuts the power after a random number of file operations. The files are then
//! rewritten to what survived (unsynced writes dropped, torn or kept out of order) and
//! the log reopened with the real file system in strict recovery. Every seed asserts:
//! 1. recovery accepts a log that only lost unsynced bytes (no repair needed);
//! 2. every acknowledged write survives with its exact value;
//! 3. no value appears that was never written.
//!
//! `MSGLOG_POWER_CUT_SEEDS=100000 cargo test --release --test power_cut` runs a long
//! campaign; `MSGLOG_POWER_CUT_FIRST_SEED` starts it elsewhere (to replay a failure).

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::fs::PowerCutFs;
use common::power_cut::History;
use common::seeded::{Rng, env_u64};
use msglog::storage::{Config, FsyncPolicy, Log, RecoveryMode};
use tempfile::TempDir;

const DEFAULT_SEEDS: u64 = 3000;
const WRITERS: u64 = 3;
const WRITES_PER_WRITER: u64 = 40;
const IDS_PER_WRITER: u64 = 4;
/// Power goes after a uniformly chosen number of file operations up to this; a run of
/// the writers above takes about this many.
const MAX_OPS_BEFORE_CUT: u64 = 600;

fn config() -> Config {
    Config {
        fsync: FsyncPolicy::Always,
        segment_bytes: 1024,
        max_record_bytes: 4096,
        index_interval_bytes: 256,
        ..Config::default()
    }
}

/// Writes batches of one to four records (as a pipelining client does), waiting for each
/// batch to be durable, until the writes run out or fail.
fn write_until_the_power_goes(log: &Log, writer: u64, seed: u64) -> HashMap<Vec<u8>, History> {
    let mut rng = Rng(seed.wrapping_mul(31).wrapping_add(writer) | 1);
    let mut histories: HashMap<Vec<u8>, History> = HashMap::new();
    let mut j = 0;
    'batches: while j < WRITES_PER_WRITER {
        let mut batch = Vec::new();
        let mut last = None;
        for _ in 0..1 + rng.below(4) {
            j += 1;
            let id = format!("w{writer}-{}", rng.below(IDS_PER_WRITER)).into_bytes();
            let history = histories.entry(id.clone()).or_default();
            let written = if rng.below(8) == 0 {
                // Recorded before the call: once it is made, the record may reach the disk.
                if history.writes.last().is_some_and(|w| w.is_some()) {
                    history.writes.push(None);
                }
                log.delete(&id)
            } else {
                let value = format!("seed {seed} writer {writer} write {j} {}", "x".repeat(j as usize % 23));
                history.writes.push(Some(value.clone().into_bytes()));
                log.append(&id, value.as_bytes()).map(Some)
            };
            match written {
                Ok(Some(offset)) => {
                    last = Some(offset);
                    batch.push((id, history.writes.len()));
                }
                Ok(None) => {}
                Err(_) => break 'batches,
            }
        }
        let Some(last) = last else { continue };
        if log.sync_through(last).is_err() {
            break;
        }
        for (id, acked) in batch {
            let history = histories.get_mut(&id).expect("written above");
            history.acked = history.acked.max(acked);
        }
    }
    histories
}

/// IDs every transaction of [`transact_until_the_power_goes`] sets together.
const TRANSACTION_IDS: [&[u8]; 3] = [b"tx-a", b"tx-b", b"tx-c"];

/// Sets all of [`TRANSACTION_IDS`] to one generation per atomic batch, waiting for each to be
/// durable, until the power goes. Returns the last acknowledged generation and the last tried.
fn transact_until_the_power_goes(log: &Log) -> (u64, u64) {
    let (mut acked, mut tried) = (0, 0);
    while tried < WRITES_PER_WRITER / 2 {
        tried += 1;
        let value = format!("generation {tried}");
        let written =
            log.transaction(|batch| TRANSACTION_IDS.iter().try_for_each(|id| batch.set(id, value.as_bytes())));
        match written {
            Ok((Ok(()), Some(last))) if log.sync_through(last).is_ok() => acked = tried,
            _ => break,
        }
    }
    (acked, tried)
}

/// A temporary data dir, in memory where there is one: the model, not the disk, decides
/// what is durable, so real fsyncs (recovery's, on reopen) would only cost time.
fn temp_dir() -> TempDir {
    let shm = std::path::Path::new("/dev/shm");
    match shm.is_dir() {
        true => tempfile::Builder::new().prefix("msglog-power-cut").tempdir_in(shm).unwrap(),
        false => TempDir::new().unwrap(),
    }
}

fn run(seed: u64) {
    let dir = temp_dir();
    let mut pick = Rng(seed.wrapping_mul(0x9e37_79b9) | 1);
    let fs = Arc::new(PowerCutFs::new(seed, Some(1 + pick.below(MAX_OPS_BEFORE_CUT))));
    let mut histories = HashMap::new();
    let mut generations = (0, 0);
    // The power may go while the log is opening: then nothing was written.
    if let Ok(log) = Log::open_with(dir.path(), config(), fs.clone()) {
        let log = Arc::new(log);
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let log = log.clone();
                std::thread::spawn(move || write_until_the_power_goes(&log, w, seed))
            })
            .collect();
        let transactions = {
            let log = log.clone();
            std::thread::spawn(move || transact_until_the_power_goes(&log))
        };
        for w in writers {
            histories.extend(w.join().expect("writer"));
        }
        generations = transactions.join().expect("transaction writer");
        fs.cut_power();
        drop(Arc::into_inner(log).expect("writers are done"));
    }
    fs.restore();

    let strict = Config { recovery: RecoveryMode::Strict, ..config() };
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
    // An atomic batch survives whole or not at all, and an acknowledged one survives.
    let held: Vec<u64> = TRANSACTION_IDS
        .iter()
        .map(|id| match log.get(id).unwrap() {
            None => 0,
            Some(v) => String::from_utf8(v).unwrap().strip_prefix("generation ").unwrap().parse().unwrap(),
        })
        .collect();
    let (acked, tried) = generations;
    assert!(held.iter().all(|&g| g == held[0]), "seed {seed}: a transaction survived in part: {held:?}");
    assert!((acked..=tried).contains(&held[0]), "seed {seed}: generation {} held, {acked} acknowledged", held[0]);
    log.close().unwrap();
}

#[test]
fn acknowledged_writes_survive_random_power_cuts_and_recovery_never_refuses() {
    let first = env_u64("MSGLOG_POWER_CUT_FIRST_SEED", 1);
    let seeds = env_u64("MSGLOG_POWER_CUT_SEEDS", DEFAULT_SEEDS);
    for seed in first..first + seeds {
        run(seed);
    }
}
