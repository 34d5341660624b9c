//! The storage engine: an append-only, segmented log of CRC-framed records.
//!
//! The only type the rest of the crate uses is the façade [`Log`]. It is synchronous and
//! `Send + Sync`; share it with `Arc<Log>`.
//!
//! Every write, truncation, fsync, rename and removal goes through a [`FileSystem`]
//! ([`fs`]): [`RealFs`] in production, test file systems that inject faults or simulate
//! power cuts through [`Log::open_with`]. Integrity rests on two records kept on disk: each
//! segment header's durable length (damage below it is corruption, never a torn tail; see
//! `segment`) and the segment manifest (a missing segment is a hole, never silently
//! skipped; see `manifest`). The on-disk format is in `docs/FORMAT.md`.

use std::path::PathBuf;
use std::time::Duration;

/// Position of a record in the log. Strictly increasing, gaps allowed.
pub type Offset = u64;
/// Leader epoch stamped on every record.
pub type Epoch = u32;

/// When an appended record counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// `fdatasync` before `sync_through` returns; concurrent callers share one fsync.
    Always,
    /// Written to the OS before `sync_through` returns; fsynced every interval.
    Interval(Duration),
    /// Written to the OS before `sync_through` returns; never fsynced by us.
    Never,
}

/// What `open` does with damage it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// Truncate a torn tail of the last segment; refuse anything else.
    #[default]
    Strict,
    /// Truncate at the first bad record wherever it is (and drop later segments).
    Repair,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub segment_bytes: u64,
    pub fsync: FsyncPolicy,
    pub recovery: RecoveryMode,
    /// Largest record accepted (header + id + message).
    pub max_record_bytes: u32,
    /// One sparse offset-index entry per this many bytes of log.
    pub index_interval_bytes: u32,
    /// Write buffer size; a full buffer is written to the segment file.
    pub write_buffer_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            segment_bytes: 128 * 1024 * 1024,
            fsync: FsyncPolicy::Always,
            recovery: RecoveryMode::Strict,
            max_record_bytes: 16 * 1024 * 1024,
            index_interval_bytes: 4096,
            write_buffer_bytes: 256 * 1024,
        }
    }
}

mod batch;
pub mod check;
mod cleaner;
mod cleaner_thread;
mod commit;
mod epoch;
mod error;
mod followers_file;
pub mod fs;
mod horizon_file;
mod id_index;
mod lineage;
mod lock;
mod log;
mod manifest;
mod offset_index;
pub mod record;
mod recovery;
mod retention;
mod rewrite;
mod segment;
mod state;
mod swap;
mod sync_group;
mod tail;

pub use batch::Batch;
pub use cleaner::{CleanOptions, CleanSummary, CleanerStats};
pub use cleaner_thread::{CleanPoints, Cleaner, CleanerSettings};
pub use error::StorageError;
pub(crate) use fs::replace_file;
pub use fs::{FileSystem, RealFs};
pub use lineage::{Lineage, Origin};
pub use log::{Chunk, Log, LogStats};
pub use record::{RecordKind, RecordRef};
pub use retention::{Retention, RetentionStats, RetentionSummary};
pub use sync_group::{SyncGroup, SyncGroupStats};

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Where a data directory keeps its segments.
pub fn log_dir(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("log")
}

/// With several partitions, where a data directory keeps one directory per partition,
/// named by its number (docs/FORMAT.md, "Partitions").
pub fn partitions_dir(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("partitions")
}

/// The partition numbers `root` (a [`partitions_dir`]) has a directory for, in order; none
/// when it does not exist. Only the names a node writes count: "01" is not partition 1.
pub fn partition_numbers(root: &std::path::Path) -> std::io::Result<Vec<u32>> {
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut numbers = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        if let Some(p) = name.to_str().and_then(|n| n.parse::<u32>().ok().filter(|p| p.to_string() == n)) {
            numbers.push(p);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// Whether the log dir `dir` (a [`log_dir`]) holds segment files; false when it does not
/// exist.
pub fn holds_segments(dir: &std::path::Path) -> std::io::Result<bool> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    for entry in entries {
        if entry?.file_name().to_str().is_some_and(|name| name.ends_with(".log")) {
            return Ok(true);
        }
    }
    Ok(false)
}
