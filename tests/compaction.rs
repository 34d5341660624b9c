//! Log compaction: what a clean pass keeps, that offsets never move, that reads by offset
//! land on the next surviving record, that disk use shrinks, and that `msglog serve`
//! cleans in the background (and `--cleanup none` not). Crashes during the swap are in
//! `compaction_swap.rs`, power cuts in `compaction_power_cut.rs`.
//!
//! The property test runs `MSGLOG_COMPACTION_SEEDS` seeded histories (default 40, a few
//! seconds); `MSGLOG_COMPACTION_FIRST_SEED` replays one.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::compaction::{check_lines, options, small_segments as config, temp_dir};
use common::seeded::{Rng, env_u64};
use common::{LineClient, ServerProcess, once_unlocked, poll_until};
use msglog::storage::check::check;
use msglog::storage::{Config, Log, RecordKind};
use tempfile::TempDir;

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

fn logical_digest(dir: &Path) -> [u8; 32] {
    check(dir, &config(), |_| {}).unwrap().logical_digest
}

fn run_history(seed: u64) {
    let dirs: Vec<TempDir> = (0..3).map(|_| temp_dir()).collect();
    // A just-closed log's lock can still be held for a moment (see `once_unlocked`).
    let open = |i: usize| once_unlocked(|| Log::open(dirs[i].path(), config())).unwrap();
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
    // A pass cleans only sealed segments, so one that ran while a segment wholly below
    // `upto` was still being appended to left it for later; the single pass below, run
    // once that segment is sealed, cleans it. A last pass at the same point lets the
    // stepwise log see the same sealed segments before the two are compared.
    stepwise.clean(&options(upto)).unwrap();
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

#[test]
fn reads_by_offset_and_the_epoch_lookups_land_on_the_next_surviving_record() {
    let dir = temp_dir();
    let log = Log::open(dir.path(), config()).unwrap();
    // Three epochs of the same four IDs: cleaning removes most of epochs 1 and 2,
    // including the first records of epochs 2 and 3.
    for epoch in 1..=3 {
        log.set_epoch(epoch);
        for round in 0..20 {
            log.append(format!("id-{}", round % 4).as_bytes(), format!("e{epoch} r{round}").as_bytes()).unwrap();
        }
    }
    log.append(b"tail", b"keeps the last epoch-3 records in the active segment").unwrap();
    log.sync().unwrap();
    let before = records(&log);
    let upto = log.next_offset();
    log.clean(&options(upto)).unwrap().expect("sealed segments to clean");
    let survivors = records(&log);
    assert!(survivors.len() < before.len(), "something was cleaned");
    let removed: Vec<u64> =
        before.iter().map(|r| r.offset).filter(|o| !survivors.iter().any(|s| s.offset == *o)).collect();
    let first_of = |epoch| before.iter().find(|r| r.epoch == epoch).unwrap().offset;
    assert!(removed.contains(&first_of(2)) && removed.contains(&first_of(3)), "epoch starts removed: {removed:?}");
    assert_reads_land_on_survivors(&log, &survivors, "one pass");
    assert_eq!(log.start_offset().unwrap(), survivors[0].offset);
    for &o in &removed {
        assert_eq!(log.epoch_at(o).unwrap(), None, "epoch_at({o}): nothing is there");
    }
    for epoch in 0..=4 {
        let shared = survivors.iter().filter(|r| r.epoch <= epoch).map(|r| r.epoch).max();
        let end = survivors.iter().find(|r| r.epoch > epoch).map_or(log.next_offset(), |r| r.offset);
        assert_eq!(log.epoch_end(epoch).unwrap(), (shared, end), "epoch_end({epoch})");
    }
    // What `msglog export` and replication read: every survivor once, in order.
    let exported: Vec<u64> = log
        .chunks_from(before[5].offset, 64)
        .flat_map(|c| c.unwrap().records().map(|r| r.unwrap().offset).collect::<Vec<_>>())
        .collect();
    let expected: Vec<u64> = survivors.iter().map(|r| r.offset).filter(|&o| o >= before[5].offset).collect();
    assert_eq!(exported, expected);
    log.close().unwrap();
}

#[test]
fn disk_use_shrinks_to_about_the_live_set() {
    let dir = temp_dir();
    let config = Config { segment_bytes: 64 * 1024, max_record_bytes: 4096, index_interval_bytes: 4096, ..config() };
    let log = Log::open(dir.path(), config.clone()).unwrap();
    for round in 0..50 {
        for id in 0..1000 {
            log.append(format!("id-{id:04}").as_bytes(), format!("round {round:02} of id {id:04}").as_bytes()).unwrap();
        }
    }
    log.sync().unwrap();
    let before = log.stats().bytes;
    let summary = log.clean(&options(log.next_offset())).unwrap().expect("a pass");
    let mut live = 0;
    log.for_each_live(|id, message| {
        live += 31 + id.len() as u64 + message.len() as u64;
        Ok::<_, msglog::storage::StorageError>(())
    })
    .unwrap();
    let on_disk: u64 = std::fs::read_dir(dir.path().join("log"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(on_disk < 2 * live + config.segment_bytes, "{on_disk} bytes on disk for {live} live ({summary:?})");
    assert!(before > 20 * on_disk, "{before} bytes before, {on_disk} after");
    assert_eq!(summary.records_dropped + summary.records_kept, 50_000 - (log.stats().records - summary.records_kept));
    for id in [0, 499, 999] {
        let expected = format!("round 49 of id {id:04}").into_bytes();
        assert_eq!(log.get(format!("id-{id:04}").as_bytes()).unwrap(), Some(expected));
    }
    log.close().unwrap();
}

#[test]
fn serve_cleans_in_the_background_and_cleanup_none_never_does() {
    let dir = TempDir::new().unwrap();
    let args = |cleanup| ["--segment-bytes", "64K", "--fsync", "never", "--cleanup", cleanup, "--stats-interval", "0s"];
    let mut compact = ServerProcess::start(&dir.path().join("compact"), &args("compact"));
    let mut none = ServerProcess::start(&dir.path().join("none"), &args("none"));
    let mut clients = [LineClient::connect(compact.addr).unwrap(), LineClient::connect(none.addr).unwrap()];
    // 2000 SETs of 20 IDs: about five 64 KiB segments, nearly all of it superseded.
    for n in 0..2000 {
        let line = format!("SET id-{} {n:05}-{}", n % 20, "x".repeat(100));
        for client in &mut clients {
            assert_eq!(client.request(line.as_bytes()).unwrap(), b"OK");
        }
    }
    let cleaned = poll_until("a background pass", || {
        let stats = common::stats(compact.addr);
        (stats["cleaner_runs"] != "0").then_some(stats)
    });
    assert!(cleaned["cleaned_bytes"].parse::<u64>().unwrap() > 64 * 1024, "{cleaned:?}");
    assert_eq!(clients[0].request(b"GET id-7").unwrap(), format!("{:05}-{}", 1987, "x".repeat(100)).as_bytes());
    let kept = common::stats(none.addr);
    assert_eq!((kept["cleaner_runs"].as_str(), kept["cleaned_bytes"].as_str()), ("0", "0"), "{kept:?}");
    assert_eq!(kept["records"], "2000");
    assert!(kept["dirty_ratio"].parse::<f64>().unwrap() > 0.5, "{kept:?}");
    for server in [&mut compact, &mut none] {
        server.signal(libc::SIGTERM);
        assert!(server.wait_for_exit().success(), "{}", server.stderr());
    }
    assert!(compact.stderr().contains("cleaned the log"), "one INFO line per pass: {}", compact.stderr());
    let (digest, logical) = check_lines(&dir.path().join("compact"));
    let (digest_none, logical_none) = check_lines(&dir.path().join("none"));
    assert_ne!(digest, digest_none, "the cleaned log holds fewer records");
    assert_eq!(logical, logical_none, "the same live set");
}

#[test]
fn a_followers_clean_points_are_the_highest_heard_until_a_new_session_forgets_them() {
    let dir = temp_dir();
    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(log.leader_clean_points(), (0, 0), "nothing heard: nothing to clean");
    log.set_leader_clean_points(10, 5);
    log.set_leader_clean_points(8, 3);
    assert_eq!(log.leader_clean_points(), (10, 5), "within a session, the highest heard");
    log.forget_leader_clean_points();
    assert_eq!(log.leader_clean_points(), (0, 0), "a new session starts from nothing");
    log.set_leader_clean_points(4, 2);
    assert_eq!(log.leader_clean_points(), (4, 2), "and takes the new leader's lower word");
}
