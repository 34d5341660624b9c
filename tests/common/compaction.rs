//! What the compaction tests share: tiny segments (so every few records roll one and the
//! cleaner has sealed segments to work on), clean passes that may drop every tombstone,
//! and temporary dirs in memory.

use std::fs::File;
use std::io;
use std::path::Path;
use std::time::Duration;

use msglog::storage::{CleanOptions, Config, FileSystem, FsyncPolicy};
use tempfile::TempDir;

pub fn small_segments() -> Config {
    Config {
        segment_bytes: 512,
        max_record_bytes: 400,
        index_interval_bytes: 64,
        fsync: FsyncPolicy::Never,
        ..Config::default()
    }
}

/// Every tombstone below `upto` may go: retention 0, horizon at the clean point.
pub fn options(upto: u64) -> CleanOptions {
    CleanOptions { upto, tombstone_horizon: upto, delete_retention: Duration::ZERO, bytes_per_sec: None }
}

/// A temporary dir in memory where there is one: these tests fsync a lot (tiny segments
/// roll every few records) and what they check does not depend on the disk.
pub fn temp_dir() -> TempDir {
    let shm = Path::new("/dev/shm");
    match shm.is_dir() {
        true => tempfile::Builder::new().prefix("msglog-compaction").tempdir_in(shm).unwrap(),
        false => TempDir::new().unwrap(),
    }
}

/// Base offsets of the segment files in a data dir's `log/`, ascending.
pub fn segment_bases(data_dir: &Path) -> Vec<u64> {
    let mut bases: Vec<u64> = std::fs::read_dir(data_dir.join("log"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.strip_suffix(".log")?.parse().ok())
        .collect();
    bases.sort_unstable();
    bases
}

/// The `digest:` and `logical-digest:` lines `msglog check` prints for a data dir.
pub fn check_lines(data_dir: &Path) -> (String, String) {
    let out = super::msglog().args(["check", "--data-dir"]).arg(data_dir).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let line = |key: &str| text.lines().find_map(|l| l.strip_prefix(key)).unwrap_or_else(|| panic!("{key} in {text}"));
    (line("digest: ").to_string(), line("logical-digest: ").to_string())
}

/// Counts the operations passed on to another file system, so a test can aim a fault at
/// the operations of one step (run it once to count, then cut at each).
#[derive(Debug)]
pub struct CountingFs<F> {
    inner: std::sync::Arc<F>,
    ops: std::sync::atomic::AtomicU64,
}

impl<F: FileSystem> CountingFs<F> {
    pub fn new(inner: std::sync::Arc<F>) -> CountingFs<F> {
        CountingFs { inner, ops: Default::default() }
    }

    pub fn ops(&self) -> u64 {
        self.ops.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn count(&self) -> &F {
        self.ops.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        &self.inner
    }
}

impl<F: FileSystem> FileSystem for CountingFs<F> {
    fn create_new(&self, path: &Path) -> io::Result<File> {
        self.count().create_new(path)
    }
    fn create(&self, path: &Path) -> io::Result<File> {
        self.count().create(path)
    }
    fn open(&self, path: &Path) -> io::Result<File> {
        self.count().open(path)
    }
    fn write_at(&self, file: &File, path: &Path, bytes: &[u8], position: u64) -> io::Result<()> {
        self.count().write_at(file, path, bytes, position)
    }
    fn set_len(&self, file: &File, path: &Path, len: u64) -> io::Result<()> {
        self.count().set_len(file, path, len)
    }
    fn sync_data(&self, file: &File, path: &Path) -> io::Result<()> {
        self.count().sync_data(file, path)
    }
    fn sync_all(&self, file: &File, path: &Path) -> io::Result<()> {
        self.count().sync_all(file, path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.count().sync_dir(dir)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.count().rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.count().remove(path)
    }
}
