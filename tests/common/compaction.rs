//! What the compaction tests share: tiny segments (so every few records roll one and the
//! cleaner has sealed segments to work on), clean passes that may drop every tombstone,
//! and temporary dirs in memory.

use std::path::Path;
use std::time::Duration;

use msglog::storage::{CleanOptions, Config, FsyncPolicy};
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
