use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use tempfile::TempDir;

use crate::storage::record::{RecordKind, encode_in_batch};
use crate::storage::segment::HEADER_LEN;
use crate::storage::{Config, Log, StorageError};

fn open(dir: &Path) -> Log {
    Log::open(dir, Config::default()).unwrap()
}

/// The one segment file of a fresh log.
fn segment(dir: &Path) -> std::path::PathBuf {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    assert_eq!(files.len(), 1);
    files.pop().unwrap()
}

#[test]
fn a_batch_reads_its_own_writes_and_appends_them_as_one() {
    let dir = TempDir::new().unwrap();
    let log = open(dir.path());
    log.append(b"old", b"0").unwrap();
    let (seen, last) = log
        .transaction(|batch| {
            batch.set(b"a", b"1").unwrap();
            let a = batch.get(b"a").unwrap();
            assert!(batch.delete(b"old").unwrap());
            assert!(!batch.delete(b"never").unwrap());
            (a, batch.contains(b"old"))
        })
        .unwrap();
    assert_eq!(seen, (Some(b"1".to_vec()), false));
    assert_eq!(last, Some(2));
    assert_eq!(log.get(b"a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(log.get(b"old").unwrap(), None);
    let chunk = log.read_from(1, 1 << 20).unwrap();
    let flags: Vec<bool> = chunk.records().map(|r| r.unwrap().continues).collect();
    assert_eq!(flags, [true, false]);
}

#[test]
fn a_batch_without_writes_appends_nothing() {
    let dir = TempDir::new().unwrap();
    let log = open(dir.path());
    let ((), last) = log.transaction(|_| ()).unwrap();
    assert_eq!((last, log.next_offset()), (None, 0));
}

#[test]
fn recovery_cuts_a_batch_that_lost_its_last_record() {
    let dir = TempDir::new().unwrap();
    let log = open(dir.path());
    log.append(b"before", b"kept").unwrap();
    log.transaction(|batch| (0..3).for_each(|i| batch.set(format!("k{i}").as_bytes(), b"v").unwrap())).unwrap();
    log.close().unwrap();
    // Tear off the batch's last record, as a crash between two writes could, before the
    // batch was fsynced: the durable mark in the header still ends before it.
    let path = segment(dir.path());
    let len = std::fs::metadata(&path).unwrap().len();
    let last_record = crate::storage::record::framed_len(b"k2", b"v") as u64;
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len - last_record).unwrap();
    let before_batch = (HEADER_LEN + crate::storage::record::framed_len(b"before", b"kept")) as u32;
    file.write_all_at(&before_batch.to_le_bytes(), 12).unwrap();

    let log = open(dir.path());
    assert_eq!(log.get(b"before").unwrap(), Some(b"kept".to_vec()));
    assert_eq!(log.get(b"k0").unwrap(), None, "half a batch must not survive recovery");
    assert_eq!(log.next_offset(), 1);
    let after_cut = std::fs::metadata(&path).unwrap().len();
    assert_eq!(after_cut, len - 3 * last_record);
}

#[test]
fn read_from_never_ends_a_chunk_inside_a_batch() {
    let dir = TempDir::new().unwrap();
    let log = open(dir.path());
    log.transaction(|batch| (0..10).for_each(|i| batch.set(format!("k{i}").as_bytes(), b"v").unwrap())).unwrap();
    log.append(b"alone", b"v").unwrap();
    let chunk = log.read_from(0, 1).unwrap();
    assert_eq!((chunk.records().count(), chunk.next), (10, 10));
}

#[test]
fn a_follower_refuses_records_that_end_inside_a_batch() {
    let dir = TempDir::new().unwrap();
    let log = open(dir.path());
    let mut bytes = Vec::new();
    encode_in_batch(&mut bytes, 0, 1, 0, RecordKind::Set, b"a", b"1", true);
    let err = log.append_raw(&bytes).unwrap_err();
    assert!(matches!(err, StorageError::InvalidBatch { .. }), "{err}");
    assert_eq!(log.next_offset(), 0);
    encode_in_batch(&mut bytes, 1, 1, 0, RecordKind::Set, b"b", b"2", false);
    assert_eq!(log.append_raw(&bytes).unwrap(), Some(1));
    assert_eq!(log.get(b"a").unwrap(), Some(b"1".to_vec()));
}

#[test]
fn a_write_that_would_take_a_batch_past_the_record_limit_is_refused_and_the_rest_applies() {
    let dir = TempDir::new().unwrap();
    let config = Config { max_record_bytes: 4096, ..Config::default() };
    let log = Log::open(dir.path(), config).unwrap();
    let (refused, _) = log
        .transaction(|batch| {
            batch.set(b"a", &[0; 3000]).unwrap();
            batch.set(b"b", &[0; 3000]).unwrap_err()
        })
        .unwrap();
    assert!(matches!(refused, StorageError::BatchTooLarge { .. }));
    assert_eq!(log.get(b"a").unwrap().map(|m| m.len()), Some(3000));
    assert_eq!(log.get(b"b").unwrap(), None);
}
