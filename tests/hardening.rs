//! Storage hardening: the durable watermark, the segment chain, failures that name
//! themselves, a roll out of file descriptors, crafted tails and counter overflows.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::fs::FaultFs;
use msglog::storage::check::check;
use msglog::storage::record::encode;
use msglog::storage::{Config, FsyncPolicy, Log, RecordKind, RecoveryMode, StorageError};
use tempfile::TempDir;

fn config() -> Config {
    Config { fsync: FsyncPolicy::Always, ..Config::default() }
}

fn small_segments() -> Config {
    Config { segment_bytes: 1024, index_interval_bytes: 128, ..config() }
}

fn repair() -> Config {
    Config { recovery: RecoveryMode::Repair, ..small_segments() }
}

fn segments(data: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(data.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

fn id(i: usize) -> Vec<u8> {
    format!("id-{i}").into_bytes()
}

fn value(i: usize, round: usize) -> Vec<u8> {
    format!("value {i} round {round}").into_bytes()
}

/// Writes `n` IDs in `rounds` overwrites each, every one acknowledged, across rolls.
fn write_rounds(dir: &Path, n: usize, rounds: usize) {
    let log = Log::open(dir, small_segments()).unwrap();
    for round in 0..rounds {
        for i in 0..n {
            let at = log.append(&id(i), &value(i, round)).unwrap();
            log.sync_through(at).unwrap();
        }
    }
    log.close().unwrap();
}

fn corruption(result: Result<Log, StorageError>) -> (PathBuf, u64, String) {
    match result {
        Err(StorageError::Corruption { segment, position, reason }) => (segment, position, reason),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("opened a damaged log"),
    }
}

#[test]
fn a_bit_flip_in_the_last_acknowledged_record_is_corruption_not_a_torn_tail() {
    let dir = TempDir::new().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    let mut last = 0;
    for i in 0..5 {
        last = log.append(&id(i), &value(i, 0)).unwrap();
        log.sync_through(last).unwrap();
    }
    // The records end before the file does: zeros preallocated for appends follow.
    let end = log.stats().bytes as usize;
    drop(log);
    let segment = segments(dir.path()).pop().unwrap();
    let mut bytes = fs::read(&segment).unwrap();
    bytes[end - 2] ^= 0x01;
    fs::write(&segment, &bytes).unwrap();

    let (path, _, reason) = corruption(Log::open(dir.path(), config()));
    assert_eq!(path, segment);
    assert_eq!(reason, "CRC mismatch");
    assert_eq!(fs::metadata(&segment).unwrap().len() as usize, bytes.len(), "strict open cut nothing");
    let log = Log::open(dir.path(), Config { recovery: RecoveryMode::Repair, ..config() }).unwrap();
    assert_eq!(log.next_offset(), last, "repair cuts the damaged record");
}

#[test]
fn check_takes_the_preallocated_zeros_a_crash_leaves_for_free_space() {
    let dir = TempDir::new().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    for i in 0..5 {
        let at = log.append(&id(i), &value(i, 0)).unwrap();
        log.sync_through(at).unwrap();
    }
    let end = log.stats().bytes;
    drop(log);
    let segment = segments(dir.path()).pop().unwrap();
    assert!(fs::metadata(&segment).unwrap().len() > end, "zeros follow the records");

    let crashed = check(dir.path(), &config(), |_| {}).unwrap();
    assert!(crashed.damage.is_none(), "{:?}", crashed.damage);
    assert_eq!((crashed.records(), crashed.bytes()), (5, end));
    // The digest covers the records only: the same once a clean close cut the zeros off.
    Log::open(dir.path(), config()).unwrap().close().unwrap();
    assert_eq!(fs::metadata(&segment).unwrap().len(), end);
    let closed = check(dir.path(), &config(), |_| {}).unwrap();
    assert_eq!(closed.digest, crashed.digest);
}

#[test]
fn zeros_after_a_sealed_segment_or_below_the_durable_length_are_damage_to_open_and_check() {
    // A sealed segment never keeps preallocated zeros.
    let dir = TempDir::new().unwrap();
    write_rounds(dir.path(), 20, 2);
    let files = segments(dir.path());
    assert!(files.len() > 2);
    let mut bytes = fs::read(&files[0]).unwrap();
    let end = bytes.len();
    bytes.extend_from_slice(&[0; 4096]);
    fs::write(&files[0], &bytes).unwrap();
    let (path, position, _) = corruption(Log::open(dir.path(), small_segments()));
    assert_eq!((path, position as usize), (files[0].clone(), end));
    let damage = check(dir.path(), &small_segments(), |_| {}).unwrap().damage.expect("damage reported");
    assert_eq!((damage.segment, damage.position as usize), (files[0].clone(), end));

    // The last segment's last acknowledged record read back as zeros.
    let dir = TempDir::new().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    let mut ends = Vec::new();
    for i in 0..5 {
        let at = log.append(&id(i), &value(i, 0)).unwrap();
        log.sync_through(at).unwrap();
        ends.push(log.stats().bytes as usize);
    }
    drop(log);
    let segment = segments(dir.path()).pop().unwrap();
    let mut bytes = fs::read(&segment).unwrap();
    bytes[ends[3]..ends[4]].fill(0);
    fs::write(&segment, &bytes).unwrap();
    let damage = check(dir.path(), &config(), |_| {}).unwrap().damage.expect("damage reported");
    assert_eq!((damage.segment, damage.position as usize), (segment.clone(), ends[3]));
    assert_eq!(damage.lost_bytes, 0, "zeros after the damage are not counted as bytes lost");
    let (path, position, _) = corruption(Log::open(dir.path(), config()));
    assert_eq!((path, position as usize), (segment, ends[3]));
}

#[test]
fn a_segment_shorter_than_its_durable_length_is_corruption() {
    let dir = TempDir::new().unwrap();
    write_rounds(dir.path(), 3, 1);
    let segment = segments(dir.path()).pop().unwrap();
    let bytes = fs::read(&segment).unwrap();
    fs::write(&segment, &bytes[..bytes.len() - 10]).unwrap();
    let (path, _, _) = corruption(Log::open(dir.path(), small_segments()));
    assert_eq!(path, segment);
}

#[test]
fn valid_looking_records_after_the_watermark_are_cut_as_a_torn_tail() {
    let dir = TempDir::new().unwrap();
    write_rounds(dir.path(), 3, 1);
    let segment = segments(dir.path()).pop().unwrap();
    let durable = fs::metadata(&segment).unwrap().len();
    // Unsynced pages written back out of order: garbage, then a whole record.
    let mut bytes = fs::read(&segment).unwrap();
    let mut record = Vec::new();
    encode(&mut record, 100, 0, 0, RecordKind::Set, &id(2), b"never acknowledged");
    bytes.extend_from_slice(&[0u8; 64]);
    bytes.extend_from_slice(&record);
    fs::write(&segment, &bytes).unwrap();
    let log = Log::open(dir.path(), small_segments()).unwrap();
    assert_eq!(fs::metadata(&segment).unwrap().len(), durable);
    assert_eq!(log.get(&id(2)).unwrap(), Some(value(2, 0)));
}

#[test]
fn a_crafted_four_mib_tail_after_the_watermark_opens_at_once() {
    let dir = TempDir::new().unwrap();
    write_rounds(dir.path(), 3, 1);
    let segment = segments(dir.path()).pop().unwrap();
    let durable = fs::metadata(&segment).unwrap().len();
    let mut bytes = fs::read(&segment).unwrap();
    bytes.extend_from_slice(&[0x00, 0x00, 0x10, 0x00].repeat(1 << 20));
    fs::write(&segment, &bytes).unwrap();
    let log = Log::open(dir.path(), small_segments()).unwrap();
    assert_eq!(fs::metadata(&segment).unwrap().len(), durable, "cut at the watermark, no search");
    assert_eq!(log.stats().records, 3);
}

#[test]
fn a_crafted_tail_in_a_segment_without_a_watermark_is_refused_clearly() {
    let dir = TempDir::new().unwrap();
    write_rounds(dir.path(), 3, 1);
    let segment = segments(dir.path()).pop().unwrap();
    let mut bytes = fs::read(&segment).unwrap();
    bytes[12..16].copy_from_slice(&0u32.to_le_bytes());
    bytes.extend_from_slice(&[0x00, 0x00, 0x10, 0x00].repeat(1 << 20));
    fs::write(&segment, &bytes).unwrap();
    let (_, _, reason) = corruption(Log::open(dir.path(), small_segments()));
    assert!(reason.contains("bytes of CRC work") && reason.contains("--repair"), "{reason}");
}

#[test]
fn a_missing_segment_first_middle_or_last_refuses_to_start_naming_it() {
    for which in ["first", "middle", "last"] {
        let dir = TempDir::new().unwrap();
        write_rounds(dir.path(), 20, 3);
        let files = segments(dir.path());
        assert!(files.len() >= 4, "rolled into {} segments", files.len());
        let gone = match which {
            "first" => files[0].clone(),
            "middle" => files[files.len() / 2].clone(),
            _ => files[files.len() - 1].clone(),
        };
        fs::remove_file(&gone).unwrap();
        let (path, _, reason) = corruption(Log::open(dir.path(), small_segments()));
        assert_eq!(path, gone, "{which}");
        assert!(reason.contains("segment missing"), "{which}: {reason}");

        let report = check(dir.path(), &small_segments(), |_| {}).unwrap();
        let damage = report.damage.expect("check reports the hole");
        assert_eq!(damage.segment, gone, "{which}");

        let log = Log::open(dir.path(), repair()).unwrap();
        log.close().unwrap();
        assert!(check(dir.path(), &small_segments(), |_| {}).unwrap().damage.is_none(), "{which}");
        Log::open(dir.path(), small_segments()).unwrap();
    }
}

#[test]
fn a_deleted_manifest_with_a_deleted_segment_is_refused_not_taken_for_an_old_log() {
    let dir = TempDir::new().unwrap();
    write_rounds(dir.path(), 20, 3);
    let files = segments(dir.path());
    fs::remove_file(dir.path().join("log/MANIFEST")).unwrap();
    fs::remove_file(&files[files.len() / 2]).unwrap();
    let (path, _, reason) = corruption(Log::open(dir.path(), small_segments()));
    assert_eq!(path, dir.path().join("log/MANIFEST"));
    assert!(reason.contains("manifest is missing"), "{reason}");
    let report = check(dir.path(), &small_segments(), |_| {}).unwrap();
    assert!(report.damage.expect("check reports it").reason.contains("manifest is missing"));
}

#[test]
fn an_old_data_dir_without_a_manifest_opens_and_gets_one() {
    let dir = TempDir::new().unwrap();
    write_rounds(dir.path(), 20, 2);
    let manifest = dir.path().join("log/MANIFEST");
    fs::remove_file(&manifest).unwrap();
    // As an older msglog left it: version 1 headers, no durable length.
    for segment in segments(dir.path()) {
        let file = fs::OpenOptions::new().write(true).open(segment).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &[1, 0, 0, 0, 0, 0, 0, 0], 8).unwrap();
    }
    let log = Log::open(dir.path(), small_segments()).unwrap();
    assert_eq!(log.get(&id(7)).unwrap(), Some(value(7, 1)));
    drop(log);
    let listed = fs::read_to_string(&manifest).unwrap();
    assert_eq!(listed.lines().count(), 1 + segments(dir.path()).len(), "{listed}");
}

#[test]
fn the_write_that_hits_enospc_names_the_failure_and_later_ones_say_read_only() {
    let dir = TempDir::new().unwrap();
    let faults = Arc::new(FaultFs::default());
    let log = Log::open_with(dir.path(), config(), faults.clone()).unwrap();
    let ok = log.append(b"kept", b"1").unwrap();
    log.sync_through(ok).unwrap();
    faults.fail_write_after_with(0, libc::ENOSPC);
    let doomed = log.append(b"doomed", b"2").unwrap();
    let first = log.sync_through(doomed).unwrap_err();
    let text = first.to_string();
    assert!(matches!(first, StorageError::Failure(_)), "{text}");
    assert!(text.starts_with("write to ") && text.contains("00000000000000000000.log failed: No space left"), "{text}");
    let later = log.append(b"later", b"3").unwrap_err();
    assert!(later.to_string().starts_with("log is read-only after an earlier failure: write to "), "{later}");
}

#[test]
fn waiters_whose_records_were_in_the_failed_write_hear_the_failure_not_read_only() {
    let dir = TempDir::new().unwrap();
    let faults = Arc::new(FaultFs::default());
    let log = Log::open_with(dir.path(), config(), faults.clone()).unwrap();
    let first = log.append(b"a", b"1").unwrap();
    let second = log.append(b"b", b"2").unwrap();
    faults.fail_sync_after(0);
    assert!(matches!(log.sync_through(first), Err(StorageError::Failure(_))));
    // `b` was in the same failed flush and fsync: its writer is told what failed.
    let err = log.sync_through(second).unwrap_err();
    assert!(matches!(err, StorageError::Failure(_)), "{err}");
}

#[test]
fn running_out_of_file_descriptors_on_a_roll_refuses_one_append_and_the_next_retries() {
    let dir = TempDir::new().unwrap();
    let faults = Arc::new(FaultFs::default());
    let log = Log::open_with(dir.path(), small_segments(), faults.clone()).unwrap();
    let mut i = 0;
    while log.stats().bytes + 64 < 1024 {
        let at = log.append(&id(i), &value(i, 0)).unwrap();
        log.sync_through(at).unwrap();
        i += 1;
    }
    // A roll creates the index temp file, creates the new segment, then opens it:
    // failing the third leaves the new segment file behind for the retry to reuse.
    faults.fail_open_after(2, libc::EMFILE);
    let mut refused = None;
    for _ in 0..4 {
        match log.append(b"roller", &[b'x'; 100]) {
            Err(e) => {
                refused = Some(e);
                break;
            }
            Ok(at) => log.sync_through(at).unwrap(),
        }
    }
    let refused = refused.expect("the roll was refused");
    assert!(matches!(refused, StorageError::RollRefused(_)), "{refused}");
    assert!(refused.to_string().contains("Too many open files"), "{refused}");
    let at = log.append(b"after", b"retry").unwrap();
    log.sync_through(at).unwrap();
    assert!(log.stats().segments >= 2);
    log.close().unwrap();
    let log = Log::open(dir.path(), small_segments()).unwrap();
    assert_eq!(log.get(b"after").unwrap().as_deref(), Some(&b"retry"[..]));
}

#[test]
fn other_roll_failures_still_fail_the_log() {
    let dir = TempDir::new().unwrap();
    let faults = Arc::new(FaultFs::default());
    let log = Log::open_with(dir.path(), small_segments(), faults.clone()).unwrap();
    faults.fail_open_after(1, libc::EACCES);
    let failed = (0..100).find_map(|i| log.append(&id(i), &value(i, 0)).err()).expect("a roll failed");
    assert!(matches!(failed, StorageError::Failure(_)), "{failed}");
    assert!(matches!(log.append(b"x", b"y"), Err(StorageError::Failed(_))));
}

#[test]
fn an_epoch_file_at_the_largest_epoch_refuses_a_new_leader_epoch() {
    let dir = TempDir::new().unwrap();
    fs::write(dir.path().join("epoch"), format!("{}\n", u32::MAX)).unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    let err = log.begin_leader_epoch().unwrap_err();
    assert!(matches!(err, StorageError::Overflow { what: "leader epoch", .. }), "{err}");
    assert_eq!(fs::read_to_string(dir.path().join("epoch")).unwrap(), format!("{}\n", u32::MAX));
}

#[test]
fn a_record_at_the_largest_offset_refuses_to_wrap() {
    let dir = TempDir::new().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    let mut batch = Vec::new();
    encode(&mut batch, u64::MAX - 1, 1, 0, RecordKind::Set, b"k", b"v");
    log.append_raw(&batch).unwrap();
    let mut last = Vec::new();
    encode(&mut last, u64::MAX, 1, 0, RecordKind::Set, b"k", b"w");
    let err = log.append_raw(&last).unwrap_err();
    assert!(matches!(err, StorageError::Overflow { what: "record offset", .. }), "{err}");
}
