//! Storage engine behaviour through the public façade: restart, recovery of torn and
//! corrupt logs, segment rolls, replication reads, truncation and injected I/O faults.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::fs::{FaultFs, PowerCutFs};
use msglog::storage::{Config, FsyncPolicy, Log, RecordKind, RecoveryMode, StorageError};
use tempfile::TempDir;

fn config() -> Config {
    Config { fsync: FsyncPolicy::Never, ..Config::default() }
}

fn small_segments() -> Config {
    Config { segment_bytes: 1024, index_interval_bytes: 128, ..config() }
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

fn message(i: usize) -> Vec<u8> {
    format!("message {i} {}", "x".repeat(i % 37)).into_bytes()
}

fn id(i: usize) -> Vec<u8> {
    format!("id-{i}").into_bytes()
}

#[test]
fn get_after_restart_returns_last_set() {
    let dir = TempDir::new().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    log.append(b"a", b"one").unwrap();
    log.append(b"b", b"two").unwrap();
    log.append(b"a", b"three").unwrap();
    assert_eq!(log.delete(b"b").unwrap(), Some(3));
    assert_eq!(log.delete(b"missing").unwrap(), None);
    log.append(b"c", b"").unwrap();
    log.close().unwrap();

    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(log.get(b"a").unwrap().as_deref(), Some(&b"three"[..]));
    assert_eq!(log.get(b"b").unwrap(), None);
    assert_eq!(log.get(b"c").unwrap().as_deref(), Some(&b""[..]));
    let stats = log.stats();
    assert_eq!((stats.records, stats.ids, stats.next_offset), (5, 2, 5));
    assert_eq!(log.append(b"d", b"four").unwrap(), 5);
}

#[test]
fn get_sees_records_still_in_the_write_buffer() {
    let dir = TempDir::new().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    log.append(b"k", b"v1").unwrap();
    assert_eq!(log.get(b"k").unwrap().as_deref(), Some(&b"v1"[..]));
    log.sync_through(0).unwrap();
    log.append(b"k", b"v2").unwrap();
    assert_eq!(log.get(b"k").unwrap().as_deref(), Some(&b"v2"[..]));
}

#[test]
fn dropping_without_close_keeps_synced_records() {
    let dir = TempDir::new().unwrap();
    // The power goes after the drop: only what was really fsynced is left.
    let power = Arc::new(PowerCutFs::new(7, None));
    {
        let log = Log::open_with(dir.path(), Config { fsync: FsyncPolicy::Always, ..config() }, power.clone()).unwrap();
        let last = log.append(b"k", b"v").unwrap();
        log.sync_through(last).unwrap();
        log.append(b"unsynced", b"maybe").unwrap();
    }
    power.restore();
    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(log.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
}

#[test]
fn second_open_of_a_data_dir_is_refused_while_the_first_holds_it() {
    let dir = TempDir::new().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    match Log::open(dir.path(), config()) {
        Err(StorageError::Locked { lock, .. }) => assert_eq!(lock, dir.path().join("LOCK")),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("second open succeeded"),
    }
    log.close().unwrap();
    Log::open(dir.path(), config()).unwrap();
}

/// Writes `n` records, closes, and returns the file length after each record.
fn write_records(dir: &Path, n: usize) -> Vec<u64> {
    let log = Log::open(dir, config()).unwrap();
    let mut ends = Vec::new();
    for i in 0..n {
        log.append(&id(i), &message(i)).unwrap();
        ends.push(log.stats().bytes);
    }
    log.close().unwrap();
    ends
}

#[test]
fn cutting_the_last_segment_at_every_byte_keeps_exactly_the_complete_records() {
    let original = TempDir::new().unwrap();
    let ends = write_records(original.path(), 12);
    let segment = segments(original.path()).pop().unwrap();
    let bytes = fs::read(&segment).unwrap();
    assert_eq!(bytes.len() as u64, *ends.last().unwrap());
    let from = ends[ends.len() - 5];
    // The last five records were never fsynced: the header's durable length stops before
    // them (or reads 0, as in a segment written before it existed).
    for (mark, cut) in [0, from].into_iter().flat_map(|m| (from..=bytes.len() as u64).map(move |c| (m, c))) {
        let dir = TempDir::new().unwrap();
        fs::create_dir_all(dir.path().join("log")).unwrap();
        let file = dir.path().join("log").join(segment.file_name().unwrap());
        let mut bytes = bytes[..cut as usize].to_vec();
        bytes[12..16].copy_from_slice(&(mark as u32).to_le_bytes());
        fs::write(&file, &bytes).unwrap();
        let complete = ends.iter().filter(|&&e| e <= cut).count();

        let log = Log::open(dir.path(), config()).unwrap();
        assert_eq!(log.stats().records, complete as u64, "cut at {cut}");
        assert_eq!(fs::metadata(&file).unwrap().len(), ends[complete - 1], "file cut back to a record boundary");
        for i in 0..12 {
            let expected = (i < complete).then(|| message(i));
            assert_eq!(log.get(&id(i)).unwrap(), expected, "cut at {cut}, record {i}");
        }
        // The log goes on from there.
        assert_eq!(log.append(b"after", b"cut").unwrap(), complete as u64);
    }
}

#[test]
fn garbage_after_the_last_record_is_truncated() {
    let dir = TempDir::new().unwrap();
    let ends = write_records(dir.path(), 5);
    let segment = segments(dir.path()).pop().unwrap();
    let mut bytes = fs::read(&segment).unwrap();
    bytes.extend_from_slice(&[0xAB; 100]);
    bytes.extend_from_slice(&[0; 4096]);
    fs::write(&segment, &bytes).unwrap();

    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(log.stats().records, 5);
    assert_eq!(fs::metadata(&segment).unwrap().len(), ends[4]);
}

fn always() -> Config {
    Config { fsync: FsyncPolicy::Always, ..config() }
}

/// Appends and fsyncs records `ids` one by one (as acknowledged SETs); returns where each
/// ends in the log.
fn append_synced(log: &Log, ids: std::ops::Range<usize>) -> Vec<u64> {
    ids.map(|i| {
        let at = log.append(&id(i), &message(i)).unwrap();
        log.sync_through(at).unwrap();
        log.stats().bytes
    })
    .collect()
}

fn header_mark(segment: &Path) -> u64 {
    let bytes = fs::read(segment).unwrap();
    u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as u64
}

#[test]
fn appends_land_on_preallocated_zeros_so_fsyncs_do_not_grow_the_segment() {
    let dir = TempDir::new().unwrap();
    let log = Log::open(dir.path(), always()).unwrap();
    let segment = segments(dir.path()).pop().unwrap();
    // The first flush writes the zeros after its records.
    let at = log.append(b"first", b"record").unwrap();
    log.sync_through(at).unwrap();
    let allocated = fs::metadata(&segment).unwrap().len();
    for i in 0..200 {
        let at = log.append(&id(i), &message(i)).unwrap();
        log.sync_through(at).unwrap();
        assert_eq!(fs::metadata(&segment).unwrap().len(), allocated, "record {i} grew the file");
    }
    let end = log.stats().bytes;
    assert!(allocated > end + 1024 * 1024, "{allocated} bytes allocated for {end} bytes of records");
    let bytes = fs::read(&segment).unwrap();
    assert!(bytes[end as usize..].iter().all(|&b| b == 0), "zeros after the records");
    // Closing cuts the zeros off: the file is its records.
    log.close().unwrap();
    assert_eq!(fs::metadata(&segment).unwrap().len(), end);
}

#[test]
fn the_preallocated_zeros_are_topped_up_as_the_records_reach_them() {
    const MIB: u64 = 1024 * 1024;
    let dir = TempDir::new().unwrap();
    let log = Log::open(dir.path(), always()).unwrap();
    let segment = segments(dir.path()).pop().unwrap();
    let big = vec![b'v'; 60 * 1024];
    let mut lengths = Vec::new();
    for i in 0..110 {
        let at = log.append(&id(i), &big).unwrap();
        log.sync_through(at).unwrap();
        let (len, end) = (fs::metadata(&segment).unwrap().len(), log.stats().bytes);
        assert!(len >= end + 2 * MIB, "record {i}: {len} bytes in the file for {end} of records");
        if lengths.last() != Some(&len) {
            lengths.push(len);
        }
    }
    assert!(log.stats().bytes > 6 * MIB);
    assert!((3..10).contains(&lengths.len()), "the file grew in steps of zeros: {lengths:?}");
    drop(log);
    let log = Log::open(dir.path(), always()).unwrap();
    assert_eq!(log.stats().records, 110);
    assert_eq!(log.get(&id(109)).unwrap(), Some(big));
    let end = log.stats().bytes;
    log.close().unwrap();
    assert_eq!(fs::metadata(&segment).unwrap().len(), end);
}

#[test]
fn a_failed_preallocation_is_not_a_failed_write() {
    let dir = TempDir::new().unwrap();
    let faults = Arc::new(FaultFs::default());
    let log = Log::open_with(dir.path(), always(), faults.clone()).unwrap();
    // The first flush's record lands; the zeros written after it fail (a full disk).
    faults.fail_write_after(1);
    let end = append_synced(&log, 0..20)[19];
    log.close().unwrap();
    let segment = segments(dir.path()).pop().unwrap();
    assert_eq!(fs::metadata(&segment).unwrap().len(), end, "close cut off what the failed write left");
    let log = Log::open(dir.path(), always()).unwrap();
    assert_eq!(log.stats().records, 20);
    assert_eq!(log.get(&id(19)).unwrap(), Some(message(19)));
}

#[test]
fn a_crash_leaves_the_preallocated_zeros_which_recovery_keeps_as_free_space() {
    let dir = TempDir::new().unwrap();
    let log = Log::open(dir.path(), always()).unwrap();
    let end = append_synced(&log, 0..20)[19];
    drop(log);
    let segment = segments(dir.path()).pop().unwrap();
    let allocated = fs::metadata(&segment).unwrap().len();
    assert!(allocated > end, "the zeros are still there after a crash");
    assert_eq!(header_mark(&segment), end);

    let log = Log::open(dir.path(), always()).unwrap();
    assert_eq!(log.stats().records, 20);
    assert_eq!(fs::metadata(&segment).unwrap().len(), allocated, "no torn tail was cut");
    // Appends go on from the end of the records, over the zeros.
    let at = log.append(b"after", b"restart").unwrap();
    log.sync_through(at).unwrap();
    assert_eq!(at, 20);
    drop(log);
    let log = Log::open(dir.path(), always()).unwrap();
    assert_eq!(log.stats().records, 21);
    assert_eq!(log.get(b"after").unwrap().as_deref(), Some(&b"restart"[..]));
    assert_eq!(log.get(&id(19)).unwrap(), Some(message(19)));
}

#[test]
fn zeros_below_the_durable_length_are_corruption_not_free_space() {
    let dir = TempDir::new().unwrap();
    let log = Log::open(dir.path(), always()).unwrap();
    let ends = append_synced(&log, 0..10);
    drop(log);
    let segment = segments(dir.path()).pop().unwrap();
    assert_eq!(header_mark(&segment), ends[9]);
    // The last acknowledged record reads back as zeros, like the free space after it.
    let mut bytes = fs::read(&segment).unwrap();
    bytes[ends[8] as usize..ends[9] as usize].fill(0);
    fs::write(&segment, &bytes).unwrap();

    match Log::open(dir.path(), always()) {
        Err(StorageError::Corruption { segment: path, position, .. }) => {
            assert_eq!((path, position), (segment, ends[8]));
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(log) => panic!("opened a log that lost an acknowledged record ({} records)", log.stats().records),
    }
}

#[test]
fn sealed_segments_hold_no_preallocated_zeros() {
    let dir = TempDir::new().unwrap();
    let log = Log::open(dir.path(), Config { fsync: FsyncPolicy::Always, ..small_segments() }).unwrap();
    append_synced(&log, 0..60);
    let mut files = segments(dir.path());
    assert!(files.len() > 3);
    let active = files.pop().unwrap();
    for sealed in &files {
        let bytes = fs::read(sealed).unwrap();
        assert_ne!(bytes.last(), Some(&0), "{} ends in zeros", sealed.display());
    }
    // The active one has them, up to the size at which it is sealed.
    assert_eq!(fs::metadata(&active).unwrap().len(), 1024);
    log.close().unwrap();
}

fn flip_byte(path: &Path, at: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[at as usize] ^= 0xFF;
    fs::write(path, bytes).unwrap();
}

#[test]
fn corruption_followed_by_valid_records_fails_open_naming_file_and_offset() {
    let dir = TempDir::new().unwrap();
    let ends = write_records(dir.path(), 10);
    let segment = segments(dir.path()).pop().unwrap();
    // A byte inside the fourth record's message.
    flip_byte(&segment, ends[3] - 2);

    match Log::open(dir.path(), config()) {
        Err(StorageError::Corruption { segment: s, position, reason }) => {
            assert_eq!(s, segment);
            assert_eq!(position, ends[2]);
            assert_eq!(reason, "CRC mismatch");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("opened a corrupt log"),
    }
    assert_eq!(fs::metadata(&segment).unwrap().len(), ends[9], "strict open changes nothing");

    let repair = Config { recovery: RecoveryMode::Repair, ..config() };
    let log = Log::open(dir.path(), repair).unwrap();
    assert_eq!(log.stats().records, 3);
    for i in 0..3 {
        assert_eq!(log.get(&id(i)).unwrap(), Some(message(i)));
    }
    log.close().unwrap();
    assert_eq!(Log::open(dir.path(), config()).unwrap().stats().records, 3);
}

#[test]
fn corruption_in_a_sealed_segment_fails_open_and_repair_drops_later_segments() {
    let dir = TempDir::new().unwrap();
    let log = Log::open(dir.path(), small_segments()).unwrap();
    for i in 0..100 {
        log.append(&id(i), &message(i)).unwrap();
    }
    log.close().unwrap();
    let files = segments(dir.path());
    assert!(files.len() > 3, "rolled into {} segments", files.len());
    let first = &files[0];
    let len = fs::metadata(first).unwrap().len();
    flip_byte(first, len - 3);

    let err = Log::open(dir.path(), small_segments()).err().expect("open must fail");
    let text = err.to_string();
    assert!(text.contains(&first.display().to_string()), "{text}");
    assert!(matches!(err, StorageError::Corruption { .. }));

    let log = Log::open(dir.path(), Config { recovery: RecoveryMode::Repair, ..small_segments() }).unwrap();
    let kept = log.stats().records as usize;
    assert!(kept > 0 && kept < 100);
    assert_eq!(log.stats().segments, 1);
    assert_eq!(segments(dir.path()).len(), 1);
    for i in 0..kept {
        assert_eq!(log.get(&id(i)).unwrap(), Some(message(i)));
    }
}

#[test]
fn segments_roll_and_reads_cross_their_boundaries() {
    let dir = TempDir::new().unwrap();
    let log = Log::open(dir.path(), small_segments()).unwrap();
    for i in 0..200 {
        log.append(&id(i % 50), &message(i)).unwrap();
    }
    assert!(log.stats().segments > 5);
    for i in 150..200 {
        assert_eq!(log.get(&id(i % 50)).unwrap(), Some(message(i)));
    }
    // Reading from every offset returns that record first.
    for offset in 0..200 {
        let chunk = log.read_from(offset, 64).unwrap();
        let first = chunk.records().next().unwrap().unwrap();
        assert_eq!(first.offset, offset);
        assert_eq!(first.message, message(offset as usize));
        assert!(chunk.next > offset);
    }
    // Following `next` walks the whole log once, in order.
    let mut seen = Vec::new();
    for chunk in log.chunks_from(0, 300) {
        seen.extend(chunk.unwrap().records().map(|r| r.unwrap().offset));
    }
    assert_eq!(seen, (0..200).collect::<Vec<_>>());
    log.close().unwrap();
    let reopened = Log::open(dir.path(), small_segments()).unwrap();
    assert_eq!(reopened.stats().records, 200);
    for i in 150..200 {
        assert_eq!(reopened.get(&id(i % 50)).unwrap(), Some(message(i)));
    }
}

/// Every record of `log`, as framed bytes, in one buffer.
fn all_bytes(log: &Log) -> Vec<u8> {
    log.chunks_from(0, 1 << 20).flat_map(|chunk| chunk.unwrap().bytes).collect()
}

#[test]
fn follower_appending_raw_chunks_gets_a_byte_identical_log() {
    let (leader_dir, follower_dir) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let leader = Log::open(leader_dir.path(), small_segments()).unwrap();
    leader.set_epoch(3);
    for i in 0..120 {
        leader.append(&id(i % 40), &message(i)).unwrap();
        if i % 7 == 0 {
            leader.delete(&id(i % 40)).unwrap();
        }
    }
    let follower = Log::open(follower_dir.path(), small_segments()).unwrap();
    for chunk in leader.chunks_from(0, 500) {
        follower.append_raw(&chunk.unwrap().bytes).unwrap();
    }
    assert_eq!(follower.last_record(), leader.last_record());
    assert_eq!(follower.last_record().unwrap().1, 3);
    leader.close().unwrap();
    follower.close().unwrap();
    let (l, f) = (segments(leader_dir.path()), segments(follower_dir.path()));
    assert_eq!(l.len(), f.len());
    for (a, b) in l.iter().zip(&f) {
        assert_eq!(a.file_name(), b.file_name());
        assert_eq!(fs::read(a).unwrap(), fs::read(b).unwrap());
    }
}

#[test]
fn append_raw_rejects_bad_crcs_and_offsets_that_do_not_continue_the_log() {
    let (a, b) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let leader = Log::open(a.path(), config()).unwrap();
    for i in 0..3 {
        leader.append(&id(i), &message(i)).unwrap();
    }
    let bytes = all_bytes(&leader);
    let follower = Log::open(b.path(), config()).unwrap();
    let mut bad = bytes.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(matches!(follower.append_raw(&bad), Err(StorageError::InvalidBatch { .. })));
    assert_eq!(follower.stats().records, 0, "a bad batch appends nothing");
    follower.append_raw(&bytes).unwrap();
    assert!(matches!(follower.append_raw(&bytes), Err(StorageError::InvalidBatch { .. })));
    assert_eq!(follower.stats().records, 3);
}

#[test]
fn read_from_inside_a_gap_starts_at_the_next_record() {
    let (a, b) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let leader = Log::open(a.path(), config()).unwrap();
    for i in 0..10 {
        leader.append(&id(i), &message(i)).unwrap();
    }
    let chunk = leader.read_from(0, 1 << 20).unwrap();
    // Keep only even offsets: a log with gaps, as compaction leaves.
    let mut gapped = Vec::new();
    let mut pos = 0;
    for r in chunk.records() {
        let r = r.unwrap();
        let len = r.framed_len();
        if r.offset % 2 == 0 {
            gapped.extend_from_slice(&chunk.bytes[pos..pos + len]);
        }
        pos += len;
    }
    let log = Log::open(b.path(), config()).unwrap();
    log.append_raw(&gapped).unwrap();
    let from_gap = log.read_from(3, 1 << 20).unwrap();
    let offsets: Vec<u64> = from_gap.records().map(|r| r.unwrap().offset).collect();
    assert_eq!(offsets, vec![4, 6, 8]);
    assert_eq!(from_gap.next, 9);
    assert!(log.read_from(9, 1 << 20).unwrap().bytes.is_empty());
}

#[test]
fn truncate_to_drops_the_tail_restores_older_values_and_appends_again() {
    let dir = TempDir::new().unwrap();
    let log = Log::open(dir.path(), small_segments()).unwrap();
    for i in 0..100 {
        log.append(&id(i % 10), &message(i)).unwrap();
    }
    log.delete(&id(3)).unwrap(); // offset 100
    let segments_before = log.stats().segments;
    log.truncate_to(35).unwrap();
    let stats = log.stats();
    assert_eq!((stats.records, stats.next_offset), (35, 35));
    assert!(stats.segments < segments_before);
    for k in 0..10 {
        let latest = (0..35).filter(|i| i % 10 == k).max().unwrap();
        assert_eq!(log.get(&id(k)).unwrap(), Some(message(latest)), "id {k}");
    }
    assert_eq!(log.append(b"new", b"value").unwrap(), 35);
    log.close().unwrap();
    let log = Log::open(dir.path(), small_segments()).unwrap();
    assert_eq!(log.stats().records, 36);
    assert_eq!(log.get(b"new").unwrap().as_deref(), Some(&b"value"[..]));
    assert_eq!(log.get(&id(3)).unwrap(), Some(message(33)));
}

#[test]
fn a_failed_write_refuses_later_writes_and_loses_nothing_acknowledged() {
    let dir = TempDir::new().unwrap();
    let faults = Arc::new(FaultFs::default());
    let cfg = Config { fsync: FsyncPolicy::Always, ..config() };
    let log = Log::open_with(dir.path(), cfg, faults.clone()).unwrap();
    for i in 0..10 {
        let at = log.append(&id(i), &message(i)).unwrap();
        log.sync_through(at).unwrap();
    }
    faults.fail_write_after(0);
    let at = log.append(b"doomed", b"write").unwrap();
    let err = log.sync_through(at).unwrap_err();
    assert!(err.to_string().contains("injected write failure"), "{err}");
    assert!(matches!(log.append(b"later", b"x"), Err(StorageError::Failed(_))));
    assert_eq!(log.get(&id(4)).unwrap(), Some(message(4)), "reads keep working");
    drop(log);

    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(log.stats().records, 10, "the torn write was cut back");
    for i in 0..10 {
        assert_eq!(log.get(&id(i)).unwrap(), Some(message(i)));
    }
}

#[test]
fn a_failed_fsync_is_not_retried_and_refuses_later_writes() {
    let dir = TempDir::new().unwrap();
    let faults = Arc::new(FaultFs::default());
    let cfg = Config { fsync: FsyncPolicy::Always, ..config() };
    let log = Log::open_with(dir.path(), cfg, faults.clone()).unwrap();
    let ok = log.append(b"kept", b"1").unwrap();
    log.sync_through(ok).unwrap();
    faults.fail_sync_after(0);
    let at = log.append(b"unsure", b"2").unwrap();
    assert!(log.sync_through(at).unwrap_err().to_string().contains("injected fsync failure"));
    // Asked again, the same record still hears what failed; not retried.
    assert!(matches!(log.sync_through(at), Err(StorageError::Failure(_))));
    assert_eq!(faults.data_syncs.load(std::sync::atomic::Ordering::SeqCst), 1, "only the first fsync succeeded");
    assert!(matches!(log.append(b"x", b"3"), Err(StorageError::Failed(_))));
    assert!(log.stats().durable_offset <= at);
    drop(log);
    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(log.get(b"kept").unwrap().as_deref(), Some(&b"1"[..]));
}

#[test]
fn concurrent_appenders_under_always_all_become_durable() {
    let dir = TempDir::new().unwrap();
    let log = Arc::new(Log::open(dir.path(), Config { fsync: FsyncPolicy::Always, ..config() }).unwrap());
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let at = log.append(format!("t{t}-{i}").as_bytes(), &message(i)).unwrap();
                    log.sync_through(at).unwrap();
                    assert!(log.stats().durable_offset > at);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let log = Arc::into_inner(log).unwrap();
    assert_eq!(log.stats().records, 800);
    log.close().unwrap();
    assert_eq!(Log::open(dir.path(), config()).unwrap().stats().ids, 800);
}

#[test]
fn many_appends_share_one_fsync() {
    let dir = TempDir::new().unwrap();
    let log = Log::open(dir.path(), Config { fsync: FsyncPolicy::Always, ..config() }).unwrap();
    let mut last = 0;
    for i in 0..100 {
        last = log.append(&id(i), &message(i)).unwrap();
    }
    assert_eq!(log.stats().fsyncs, 0);
    log.sync_through(last).unwrap();
    assert_eq!(log.stats().fsyncs, 1);
    for offset in 0..=last {
        log.sync_through(offset).unwrap();
    }
    assert_eq!(log.stats().fsyncs, 1, "already durable: no more fsyncs");
}

#[test]
fn interval_policy_syncs_in_the_background_and_close_makes_all_durable() {
    let dir = TempDir::new().unwrap();
    let faults = Arc::new(FaultFs::default());
    let cfg = Config { fsync: FsyncPolicy::Interval(std::time::Duration::from_millis(5)), ..config() };
    let log = Log::open_with(dir.path(), cfg, faults.clone()).unwrap();
    let at = log.append(b"k", b"v").unwrap();
    log.sync_through(at).unwrap();
    assert!(log.stats().durable_offset > at, "written to the OS");
    // No call asks for an fsync from here: the interval thread must run one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while log.stats().fsyncs == 0 {
        assert!(std::time::Instant::now() < deadline, "no background fsync within 30 s");
        std::thread::yield_now();
    }
    assert!(faults.data_syncs.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    log.close().unwrap();
    assert_eq!(Log::open(dir.path(), config()).unwrap().get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
}

#[test]
fn records_carry_kind_and_epoch() {
    let dir = TempDir::new().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    log.set_epoch(7);
    log.append(b"a", b"1").unwrap();
    log.delete(b"a").unwrap();
    let chunk = log.read_from(0, 1 << 20).unwrap();
    let kinds: Vec<_> = chunk.records().map(|r| r.map(|r| (r.kind, r.epoch)).unwrap()).collect();
    assert_eq!(kinds, vec![(RecordKind::Set, 7), (RecordKind::Delete, 7)]);
    assert_eq!(log.last_record(), Some((1, 7)));
}

/// A log whose records carry `epochs[i]`, one record per entry, offsets from 0.
fn log_with_epochs(dir: &Path, config: Config, epochs: &[u32]) -> Log {
    let log = Log::open(dir, config).unwrap();
    for (i, &epoch) in epochs.iter().enumerate() {
        log.set_epoch(epoch);
        log.append(&id(i), &message(i)).unwrap();
    }
    log
}

#[test]
fn epoch_at_answers_for_present_offsets_only() {
    let dir = TempDir::new().unwrap();
    let log = log_with_epochs(dir.path(), config(), &[1, 1, 2, 4]);
    let at: Vec<_> = (0..6).map(|o| log.epoch_at(o).unwrap()).collect();
    assert_eq!(at, vec![Some(1), Some(1), Some(2), Some(4), None, None]);
    log.truncate_to(2).unwrap();
    assert_eq!((log.epoch_at(1).unwrap(), log.epoch_at(2).unwrap()), (Some(1), None));
    log.set_epoch(5);
    log.append(b"k", b"v").unwrap();
    assert_eq!(log.epoch_at(2).unwrap(), Some(5));
}

#[test]
fn epoch_at_is_none_inside_a_gap() {
    let (a, b) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let leader = log_with_epochs(a.path(), config(), &[1, 1, 2, 2, 3]);
    let chunk = leader.read_from(0, 1 << 20).unwrap();
    // Drop offsets 1 and 3: a log with gaps, as compaction leaves.
    let mut gapped = Vec::new();
    let mut pos = 0;
    for r in chunk.records() {
        let r = r.unwrap();
        if r.offset % 2 == 0 {
            gapped.extend_from_slice(&chunk.bytes[pos..pos + r.framed_len()]);
        }
        pos += r.framed_len();
    }
    let log = Log::open(b.path(), config()).unwrap();
    log.append_raw(&gapped).unwrap();
    let at: Vec<_> = (0..5).map(|o| log.epoch_at(o).unwrap()).collect();
    assert_eq!(at, vec![Some(1), None, Some(2), None, Some(3)]);
    assert_eq!(log.epoch_end(1).unwrap(), (Some(1), 2));
    assert_eq!(log.epoch_end(2).unwrap(), (Some(2), 4));
}

#[test]
fn epoch_at_and_epoch_end_work_across_segment_rolls_and_restarts() {
    let dir = TempDir::new().unwrap();
    let epochs: Vec<u32> = (0..200).map(|i| 1 + i / 50 * 2).collect(); // 1, 3, 5, 7
    let log = log_with_epochs(dir.path(), small_segments(), &epochs);
    assert!(log.stats().segments > 4, "rolled");
    for round in 0..2 {
        for (o, &e) in epochs.iter().enumerate() {
            assert_eq!(log.epoch_at(o as u64).unwrap(), Some(e), "offset {o}, round {round}");
        }
        assert_eq!(log.epoch_end(3).unwrap(), (Some(3), 100));
        assert_eq!(log.epoch_end(4).unwrap(), (Some(3), 100));
        assert_eq!(log.epoch_end(7).unwrap(), (Some(7), 200));
        log.truncate_to(150).unwrap();
        assert_eq!(log.epoch_at(150).unwrap(), None);
        assert_eq!(log.epoch_end(7).unwrap(), (Some(5), 150));
        for (i, &epoch) in epochs.iter().enumerate().skip(150) {
            log.set_epoch(epoch);
            log.append(&id(i), &message(i)).unwrap();
        }
    }
    log.close().unwrap();
    let log = Log::open(dir.path(), small_segments()).unwrap();
    assert_eq!((log.epoch_at(0).unwrap(), log.epoch_at(199).unwrap()), (Some(1), Some(7)));
    assert_eq!(log.epoch_end(5).unwrap(), (Some(5), 150));
}

#[test]
fn epoch_end_of_a_middle_epoch_is_where_the_next_higher_epoch_starts() {
    let dir = TempDir::new().unwrap();
    let log = log_with_epochs(dir.path(), config(), &[1, 1, 1, 3, 3, 5, 5, 5, 5]);
    assert_eq!(log.epoch_end(1).unwrap(), (Some(1), 3));
    assert_eq!(log.epoch_end(3).unwrap(), (Some(3), 5));
}

#[test]
fn epoch_end_of_the_last_epoch_or_above_is_the_next_offset() {
    let dir = TempDir::new().unwrap();
    let log = log_with_epochs(dir.path(), config(), &[1, 1, 3, 5, 5]);
    assert_eq!(log.next_offset(), 5);
    assert_eq!(log.epoch_end(5).unwrap(), (Some(5), 5));
    assert_eq!(log.epoch_end(9).unwrap(), (Some(5), 5));
}

#[test]
fn epoch_end_of_an_absent_epoch_gives_the_epoch_below_and_the_start_of_the_one_above() {
    let dir = TempDir::new().unwrap();
    let log = log_with_epochs(dir.path(), config(), &[1, 1, 3, 3, 3, 6]);
    assert_eq!(log.epoch_end(2).unwrap(), (Some(1), 2));
    assert_eq!(log.epoch_end(4).unwrap(), (Some(3), 5));
    assert_eq!(log.epoch_end(5).unwrap(), (Some(3), 5));
}

#[test]
fn epoch_end_below_every_epoch_is_the_start_of_the_log() {
    let dir = TempDir::new().unwrap();
    let log = log_with_epochs(dir.path(), config(), &[2, 2, 4]);
    assert_eq!(log.start_offset().unwrap(), 0);
    assert_eq!(log.epoch_end(1).unwrap(), (None, 0));
    assert_eq!(log.epoch_end(0).unwrap(), (None, 0));
}

#[test]
fn epoch_end_on_an_empty_log_is_the_next_offset() {
    let dir = TempDir::new().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!((log.start_offset().unwrap(), log.next_offset()), (0, 0));
    assert_eq!(log.epoch_end(0).unwrap(), (None, 0));
    assert_eq!(log.epoch_end(7).unwrap(), (None, 0));
    assert_eq!(log.epoch_at(0).unwrap(), None);
}

#[test]
fn start_offset_is_the_first_record_even_after_a_gap() {
    let (a, b) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let leader = log_with_epochs(a.path(), config(), &[1, 1, 1, 2]);
    let chunk = leader.read_from(2, 1 << 20).unwrap();
    let log = Log::open(b.path(), config()).unwrap();
    log.append_raw(&chunk.bytes).unwrap();
    assert_eq!((log.start_offset().unwrap(), log.next_offset()), (2, 4));
    assert_eq!(log.epoch_end(0).unwrap(), (None, 2));
    assert_eq!(log.epoch_end(1).unwrap(), (Some(1), 3));
    assert_eq!(log.epoch_at(0).unwrap(), None);
}

#[test]
fn begin_leader_epoch_is_above_the_last_record_and_stamps_appends() {
    let dir = TempDir::new().unwrap();
    let log = log_with_epochs(dir.path(), config(), &[1, 4]);
    assert_eq!(log.begin_leader_epoch().unwrap(), 5);
    let at = log.append(b"k", b"v").unwrap();
    assert_eq!(log.epoch_at(at).unwrap(), Some(5));
    assert_eq!(log.stats().epoch, 5);
    assert_eq!(fs::read_to_string(dir.path().join("epoch")).unwrap(), "5\n");
}

#[test]
fn begin_leader_epoch_persists_across_restarts() {
    let dir = TempDir::new().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(log.begin_leader_epoch().unwrap(), 1);
    assert_eq!(log.begin_leader_epoch().unwrap(), 2);
    log.close().unwrap();
    // No record carries epoch 2: only the epoch file remembers it.
    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(log.stats().epoch, 2);
    assert_eq!(log.begin_leader_epoch().unwrap(), 3);
}

#[test]
fn observed_epochs_persist_and_never_lower_the_next_leader_epoch() {
    let dir = TempDir::new().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    log.observe_epoch(10).unwrap();
    log.observe_epoch(4).unwrap();
    assert_eq!(log.stats().epoch, 10);
    log.close().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    log.observe_epoch(3).unwrap();
    assert_eq!(fs::read_to_string(dir.path().join("epoch")).unwrap(), "10\n");
    assert_eq!(log.begin_leader_epoch().unwrap(), 11);
}

#[test]
fn a_malformed_epoch_file_fails_open_naming_the_file() {
    for content in ["", "twelve\n", "-1\n", "99999999999\n", "12 13\n"] {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("epoch");
        fs::write(&path, content).unwrap();
        let Err(e) = Log::open(dir.path(), config()) else {
            panic!("open accepted the epoch file {content:?}");
        };
        assert!(e.to_string().contains(&path.display().to_string()), "{content:?}: {e}");
    }
}

#[test]
fn epoch_end_agrees_with_a_scan_of_the_whole_log() {
    let mut seed = 0x2545_f491_u64;
    let mut random = move |n: u64| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    for round in 0..8 {
        let (a, b) = (TempDir::new().unwrap(), TempDir::new().unwrap());
        let mut epoch = random(3) as u32;
        let epochs: Vec<u32> = (0..random(120))
            .map(|_| {
                epoch += (random(4) == 0) as u32 * (1 + random(3) as u32);
                epoch
            })
            .collect();
        let leader = log_with_epochs(a.path(), small_segments(), &epochs);
        // The follower keeps a random half of the records: gaps, as compaction leaves.
        let log = Log::open(b.path(), small_segments()).unwrap();
        for chunk in leader.chunks_from(0, 1) {
            let chunk = chunk.unwrap();
            if random(2) == 0 {
                log.append_raw(&chunk.bytes).unwrap();
            }
        }
        let kept: Vec<(u64, u32)> = log
            .chunks_from(0, 1 << 20)
            .flat_map(|c| c.unwrap().records().map(|r| r.map(|r| (r.offset, r.epoch)).unwrap()).collect::<Vec<_>>())
            .collect();
        let next = log.next_offset();
        assert_eq!(log.start_offset().unwrap(), kept.first().map_or(next, |&(o, _)| o));
        for asked in 0..epoch + 2 {
            let end = kept.iter().find(|&&(_, e)| e > asked).map_or(next, |&(o, _)| o);
            let below = kept.iter().rev().find(|&&(o, _)| o < end).map(|&(_, e)| e);
            assert_eq!(log.epoch_end(asked).unwrap(), (below, end), "round {round}, epoch {asked}, log {kept:?}");
        }
        for offset in 0..next + 1 {
            let expected = kept.iter().find(|&&(o, _)| o == offset).map(|&(_, e)| e);
            assert_eq!(log.epoch_at(offset).unwrap(), expected, "round {round}, offset {offset}");
        }
    }
}

#[test]
fn an_fsync_in_flight_across_a_truncation_does_not_mark_later_records_durable() {
    let dir = TempDir::new().unwrap();
    let faults = Arc::new(FaultFs::default());
    let cfg = Config { fsync: FsyncPolicy::Always, ..config() };
    let log = Arc::new(Log::open_with(dir.path(), cfg, faults.clone()).unwrap());
    let first = log.append(b"kept", b"0").unwrap();
    log.sync_through(first).unwrap();
    for i in 1..4 {
        log.append(&id(i), b"cut").unwrap();
    }
    // A sync of offsets 0..4 starts, then stalls inside its fsync (the lock is free).
    let held = faults.hold_next_sync();
    let syncing = {
        let log = log.clone();
        std::thread::spawn(move || log.sync_through(3))
    };
    held.started.recv().unwrap();
    // Meanwhile a follower's divergence cut drops 1..4 and new records take those offsets;
    // they sit in the write buffer, not on disk.
    log.truncate_to(1).unwrap();
    assert_eq!(log.stats().durable_offset, 1);
    for i in 1..4 {
        assert_eq!(log.append(&id(i), b"new").unwrap(), i as u64);
    }
    drop(held.release);
    // The caller wanted offset 3 durable: the stale fsync must not count, so it syncs again.
    syncing.join().unwrap().unwrap();
    assert_eq!(log.stats().durable_offset, 4);
    let on_disk = segment_bytes(dir.path());
    Arc::into_inner(log).expect("the syncing thread is done").close().unwrap();
    assert_eq!(on_disk, segment_bytes(dir.path()), "records counted durable were still in the write buffer");
    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(log.get(&id(2)).unwrap().as_deref(), Some(&b"new"[..]));
}

/// Bytes of records written to the data dir's segment files (the zeros preallocated
/// after them left out).
fn segment_bytes(data: &Path) -> u64 {
    segments(data)
        .into_iter()
        .map(|p| fs::read(p).unwrap())
        .map(|bytes| bytes.iter().rposition(|&b| b != 0).map_or(0, |last| last as u64 + 1))
        .sum()
}
