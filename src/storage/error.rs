use std::io;
use std::path::PathBuf;

use super::Offset;

/// Everything the storage engine can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Shown as the I/O error itself: its text is the whole story, and a prefix plus the
    /// error as `source` made anyhow print it twice.
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("data dir {dir} is locked by another msglog process (lock file {lock}{holder})")]
    Locked { dir: PathBuf, lock: PathBuf, holder: String },
    #[error("corrupt log: {segment} at byte {position}: {reason}")]
    Corruption { segment: PathBuf, position: u64, reason: String },
    /// A write or fsync failed under this request: the reason names the operation and
    /// the file, e.g. `write to …/00000000000000000000.log failed: No space left on device`.
    /// The log refuses writes from now on.
    #[error("{0}")]
    Failure(String),
    /// A write refused because an earlier one failed (the reason is that failure).
    #[error("log is read-only after an earlier failure: {0}")]
    Failed(String),
    /// A roll ran out of file descriptors: this append is refused, the log stays writable
    /// and the next append retries the roll.
    #[error("rolling to a new segment failed, will retry on the next write: {0}")]
    RollRefused(std::io::Error),
    #[error("{what} would overflow: {value} is the largest there is")]
    Overflow { what: &'static str, value: u64 },
    #[error("record of {size} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge { size: usize, max: usize },
    /// An atomic batch (MULTI/EXEC, MSET) must fit in one record limit: it stays in one
    /// segment, whose read mapping has that much room past `--segment-bytes`.
    #[error("atomic batch of {size} bytes exceeds the limit of {max} bytes")]
    BatchTooLarge { size: usize, max: usize },
    #[error("invalid record batch at byte {position}: {reason}")]
    InvalidBatch { position: usize, reason: String },
    /// A leader offered records of another log than the one this data dir holds.
    #[error(
        "this data dir holds log {ours}, and the leader's log is {theirs}: they are different logs \
         (a mistyped address, or a new node in the old leader's place?); refusing to compare or \
         copy records. Point this node at the leader it copied, or give it an empty data dir"
    )]
    OtherLog { ours: String, theirs: String },
    #[error("offset {offset} is out of range (log holds {first}..={last})")]
    OffsetOutOfRange { offset: Offset, first: Offset, last: Offset },
}
