//! Log compaction's crash-atomic swap: a pass swaps in pieces of at most two segments'
//! input; a crash at each step of a swap leaves either the old segments or the cleaned
//! ones, which strict recovery accepts; the manifest still refuses a real hole; and a
//! batch whose last records were cleaned away still passes recovery.

mod common;

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::compaction::{options, segment_bases, small_segments as config, temp_dir};
use msglog::storage::check::check;
use msglog::storage::{FileSystem, Log, RealFs};

/// A process crash at a chosen step: the first operation `trip` picks fails, and so does
/// every later one, while what was done before stays on disk (as after `kill -9`).
#[derive(Debug)]
struct CrashFs {
    trip: fn(&str, &Path) -> bool,
    armed: AtomicBool,
    crashed: AtomicBool,
}

impl CrashFs {
    fn step(&self, op: &str, path: &Path) -> io::Result<()> {
        let trips = self.armed.load(Ordering::SeqCst) && (self.trip)(op, path);
        if trips {
            self.crashed.store(true, Ordering::SeqCst);
        }
        match self.crashed.load(Ordering::SeqCst) {
            true => Err(io::Error::other(format!("crashed before {op} {}", path.display()))),
            false => Ok(()),
        }
    }
}

impl FileSystem for CrashFs {
    fn create_new(&self, path: &Path) -> io::Result<std::fs::File> {
        self.step("create", path).and_then(|()| RealFs.create_new(path))
    }
    fn create(&self, path: &Path) -> io::Result<std::fs::File> {
        self.step("create", path).and_then(|()| RealFs.create(path))
    }
    fn open(&self, path: &Path) -> io::Result<std::fs::File> {
        self.step("open", path).and_then(|()| RealFs.open(path))
    }
    fn write_at(&self, file: &std::fs::File, path: &Path, bytes: &[u8], at: u64) -> io::Result<()> {
        self.step("write", path).and_then(|()| RealFs.write_at(file, path, bytes, at))
    }
    fn set_len(&self, file: &std::fs::File, path: &Path, len: u64) -> io::Result<()> {
        self.step("set_len", path).and_then(|()| RealFs.set_len(file, path, len))
    }
    fn sync_data(&self, file: &std::fs::File, path: &Path) -> io::Result<()> {
        self.step("sync", path).and_then(|()| RealFs.sync_data(file, path))
    }
    fn sync_all(&self, file: &std::fs::File, path: &Path) -> io::Result<()> {
        self.step("sync", path).and_then(|()| RealFs.sync_all(file, path))
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.step("sync_dir", dir).and_then(|()| RealFs.sync_dir(dir))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.step("rename", to).and_then(|()| RealFs.rename(from, to))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.step("remove", path).and_then(|()| RealFs.remove(path))
    }
}

fn named(path: &Path, suffix: &str) -> bool {
    path.to_string_lossy().ends_with(suffix)
}

/// Crashes a pass at one step of the swap, then checks that strict recovery accepts what
/// is left and holds either the old segments or the new ones, never a mix.
fn crash_during_swap(trip: fn(&str, &Path) -> bool, swapped: bool) {
    let dir = temp_dir();
    let log = Log::open(dir.path(), config()).unwrap();
    for n in 0..400u32 {
        log.append(format!("id-{}", n % 7).as_bytes(), format!("value {n}").as_bytes()).unwrap();
    }
    log.close().unwrap();
    let (digest, records_before) = {
        let report = check(dir.path(), &config(), |_| {}).unwrap();
        (report.logical_digest, report.records())
    };
    let fs = std::sync::Arc::new(CrashFs { trip, armed: AtomicBool::new(false), crashed: AtomicBool::new(false) });
    let log = Log::open_with(dir.path(), config(), fs.clone()).unwrap();
    let expected: Vec<Option<Vec<u8>>> = (0..7).map(|n| log.get(format!("id-{n}").as_bytes()).unwrap()).collect();
    fs.armed.store(true, Ordering::SeqCst);
    let _ = log.clean(&options(log.next_offset()));
    assert!(fs.crashed.load(Ordering::SeqCst), "the pass reached the step");
    drop(log);

    let log = Log::open(dir.path(), config()).expect("strict recovery accepts an interrupted swap");
    let found: Vec<Option<Vec<u8>>> = (0..7).map(|n| log.get(format!("id-{n}").as_bytes()).unwrap()).collect();
    assert_eq!(found, expected);
    let records_after = log.stats().records;
    log.close().unwrap();
    let leftovers: Vec<String> = std::fs::read_dir(dir.path().join("log"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".swap") || n.ends_with(".cleaned"))
        .collect();
    assert!(leftovers.is_empty(), "recovery finished or removed {leftovers:?}");
    let report = check(dir.path(), &config(), |_| {}).unwrap();
    assert!(report.damage.is_none(), "{:?}", report.damage);
    assert_eq!(report.logical_digest, digest, "the live set is the same");
    match swapped {
        true => assert!(records_after < records_before, "the cleaned segments are in"),
        false => assert_eq!(records_after, records_before, "the old segments are kept"),
    }
}

/// Notes, at each swap's commit point, the bytes of cleaned files written and not yet
/// swapped in: what a pass holds on disk beside the segments it replaces.
#[derive(Debug, Default)]
struct PendingFs {
    most_pending: AtomicU64,
}

impl PendingFs {
    fn note_pending(&self, dir: &Path) {
        let pending: u64 = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".cleaned") || named(&e.path(), ".swap"))
            .map(|e| e.metadata().unwrap().len())
            .sum();
        self.most_pending.fetch_max(pending, Ordering::SeqCst);
    }
}

impl FileSystem for PendingFs {
    fn create_new(&self, path: &Path) -> io::Result<std::fs::File> {
        RealFs.create_new(path)
    }
    fn create(&self, path: &Path) -> io::Result<std::fs::File> {
        RealFs.create(path)
    }
    fn open(&self, path: &Path) -> io::Result<std::fs::File> {
        RealFs.open(path)
    }
    fn write_at(&self, file: &std::fs::File, path: &Path, bytes: &[u8], at: u64) -> io::Result<()> {
        RealFs.write_at(file, path, bytes, at)
    }
    fn set_len(&self, file: &std::fs::File, path: &Path, len: u64) -> io::Result<()> {
        RealFs.set_len(file, path, len)
    }
    fn sync_data(&self, file: &std::fs::File, path: &Path) -> io::Result<()> {
        RealFs.sync_data(file, path)
    }
    fn sync_all(&self, file: &std::fs::File, path: &Path) -> io::Result<()> {
        RealFs.sync_all(file, path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        RealFs.sync_dir(dir)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        if named(to, ".swap") {
            self.note_pending(from.parent().unwrap());
        }
        RealFs.rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        RealFs.remove(path)
    }
}

#[test]
fn a_pass_swaps_in_pieces_of_at_most_two_segments_input_and_keeps_the_clean_point_meaning() {
    let dir = temp_dir();
    let fs = std::sync::Arc::new(PendingFs::default());
    let log = Log::open_with(dir.path(), config(), fs.clone()).unwrap();
    // Distinct IDs, then one overwrite per ten: every segment loses a record or so, so
    // nearly every byte read is written out again, and cleaned segments do not merge.
    for n in 0..600u32 {
        log.append(format!("id-{n:03}").as_bytes(), format!("first value of {n:03}").as_bytes()).unwrap();
    }
    for n in (0..600u32).step_by(10) {
        log.append(format!("id-{n:03}").as_bytes(), format!("second value of {n:03}").as_bytes()).unwrap();
    }
    log.sync().unwrap();
    let sealed_bytes = log.stats().bytes;
    let cap = 2 * config().segment_bytes;
    assert!(sealed_bytes > 10 * cap, "{sealed_bytes} bytes: many pieces' worth");
    let summary = log.clean(&options(log.next_offset())).unwrap().expect("a pass");
    assert!(summary.bytes_out * 10 > summary.bytes_in * 8, "most of the input is kept: {summary:?}");
    assert!(summary.largest_swap_bytes_in <= cap, "{summary:?}");
    assert!(summary.swaps * cap >= summary.bytes_in, "pieces cover the input: {summary:?}");
    let pending = fs.most_pending.load(Ordering::SeqCst);
    assert!(pending > 0 && pending <= cap, "{pending} bytes of cleaned files waited for a swap at once");
    // The clean point is the end of the last piece: every record below it was cleaned
    // against every later one, so a second pass up to the same point drops nothing.
    let bases = segment_bases(dir.path());
    let clean_point = std::fs::read_to_string(dir.path().join("log/CLEANED")).unwrap();
    assert_eq!(clean_point, format!("msglog-cleaned 1\n{}\n", bases[bases.len() - 1]));
    let again = log.clean(&options(log.next_offset())).unwrap();
    assert!(again.as_ref().is_none_or(|s| s.records_dropped == 0), "{again:?}");
    for n in [0u32, 5, 590, 599] {
        let which = if n % 10 == 0 { "second" } else { "first" };
        assert_eq!(
            log.get(format!("id-{n:03}").as_bytes()).unwrap(),
            Some(format!("{which} value of {n:03}").into_bytes())
        );
    }
    log.close().unwrap();
    let report = check(dir.path(), &config(), |_| {}).unwrap();
    assert!(report.damage.is_none(), "{:?}", report.damage);
    assert_eq!(report.records(), 600, "one record per ID after the pass");
}

#[test]
fn a_crash_after_the_cleaned_files_are_written_keeps_the_old_segments() {
    crash_during_swap(|op, path| op == "rename" && named(path, ".swap"), false);
}

#[test]
fn a_crash_after_the_swap_rename_rolls_forward() {
    crash_during_swap(|op, path| op == "create" && named(path, "MANIFEST.tmp"), true);
}

#[test]
fn a_crash_after_the_manifest_is_rewritten_rolls_forward() {
    crash_during_swap(|op, _| op == "remove", true);
}

#[test]
fn a_crash_after_the_merged_segments_are_deleted_rolls_forward() {
    crash_during_swap(|op, path| op == "rename" && named(path, ".log"), true);
}

#[test]
fn a_missing_segment_is_still_corruption_after_cleaning() {
    let dir = temp_dir();
    let log = Log::open(dir.path(), config()).unwrap();
    for n in 0..400u32 {
        log.append(format!("id-{}", n % 50).as_bytes(), format!("value {n}").as_bytes()).unwrap();
    }
    log.sync().unwrap();
    log.clean(&options(log.next_offset())).unwrap().expect("a pass");
    log.close().unwrap();
    let mut segments: Vec<_> = std::fs::read_dir(dir.path().join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| named(p, ".log"))
        .collect();
    segments.sort();
    assert!(segments.len() >= 3, "{segments:?}");
    std::fs::remove_file(&segments[1]).unwrap();
    let err = Log::open(dir.path(), config()).err().expect("a hole is refused");
    assert!(err.to_string().contains("segment missing"), "{err}");
}

#[test]
fn a_batch_whose_last_records_were_cleaned_away_ends_at_its_last_kept_record() {
    let dir = temp_dir();
    let log = Log::open(dir.path(), config()).unwrap();
    log.transaction(|batch| {
        for id in [&b"kept"[..], b"dropped-1", b"dropped-2"] {
            batch.set(id, b"in the batch").unwrap();
        }
    })
    .unwrap();
    for n in 0..40u32 {
        let id = if n % 2 == 0 { &b"dropped-1"[..] } else { b"dropped-2" };
        log.append(id, format!("later {n}").as_bytes()).unwrap();
    }
    log.sync().unwrap();
    log.clean(&options(log.next_offset())).unwrap().expect("a pass");
    let first = log.read_from(0, 1).unwrap();
    let record = first.records().next().unwrap().unwrap();
    assert_eq!((record.offset, record.id, record.continues), (0, &b"kept"[..], false));
    log.close().unwrap();
    let log = Log::open(dir.path(), config()).expect("strict recovery accepts the cleaned batch");
    assert_eq!(log.get(b"kept").unwrap(), Some(b"in the batch".to_vec()));
    log.close().unwrap();
}
