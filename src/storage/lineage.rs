//! A log's lineage: which log a data dir holds a copy of, and whether it began that log or
//! copied it from a leader.
//!
//! `<data_dir>/log-id` holds `log_id=<32 hex digits>` and `origin=began|copied`, replaced
//! atomically. Leader epochs and offsets only mean something within one log: two logs begun
//! apart both have an epoch 1 and an offset 0, so a follower must never compare its records
//! with those of a log it did not copy (a mistyped address, a fresh node in the old
//! leader's place). Replication checks the ids before it compares anything.

use std::fs;
use std::path::{Path, PathBuf};

use super::fs::replace_file;
use super::{Result, StorageError};

const LINEAGE_FILE: &str = "log-id";

/// Whether this data dir began its log or copied it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// It took the log's first leadership here (a standalone node, a manual-mode leader,
    /// or the first leader of a cluster).
    Began,
    /// It copied the log from a leader.
    Copied,
}

/// The log a data dir holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    pub log_id: String,
    pub origin: Origin,
}

impl super::Log {
    /// The log this data dir holds; `None` before it first led or copied one (or when it
    /// was written by a version that did not record it).
    pub fn lineage(&self) -> Result<Option<Lineage>> {
        read(&self.shared.data_dir)
    }

    /// This data dir's lineage, begun here with a new id if it has none yet.
    pub fn begin_lineage(&self) -> Result<Lineage> {
        if let Some(lineage) = self.lineage()? {
            return Ok(lineage);
        }
        let lineage = Lineage { log_id: new_log_id(), origin: Origin::Began };
        self.write_lineage(&lineage)?;
        Ok(lineage)
    }

    /// Records that this data dir holds a copy of `log_id`, before any of it is appended.
    /// Refused if the dir holds records of another log; an empty one has nothing to lose
    /// and becomes a copy.
    pub fn adopt_lineage(&self, log_id: &str) -> Result<()> {
        match self.lineage()? {
            Some(ours) if ours.log_id == log_id => Ok(()),
            Some(ours) if self.last_record().is_some() => {
                Err(StorageError::OtherLog { ours: ours.log_id, theirs: log_id.to_string() })
            }
            _ => self.write_lineage(&Lineage { log_id: log_id.to_string(), origin: Origin::Copied }),
        }
    }

    /// Begins a new log here, whatever this data dir held a copy of: only for a dir that
    /// holds no records.
    pub fn begin_new_lineage(&self) -> Result<Lineage> {
        debug_assert!(self.last_record().is_none(), "a new lineage over records");
        let lineage = Lineage { log_id: new_log_id(), origin: Origin::Began };
        self.write_lineage(&lineage)?;
        Ok(lineage)
    }

    fn write_lineage(&self, lineage: &Lineage) -> Result<()> {
        let origin = match lineage.origin {
            Origin::Began => "began",
            Origin::Copied => "copied",
        };
        let text = format!("log_id={}\norigin={origin}\n", lineage.log_id);
        replace_file(self.shared.fs.as_ref(), &path(&self.shared.data_dir), text.as_bytes())?;
        Ok(())
    }
}

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(LINEAGE_FILE)
}

fn read(data_dir: &Path) -> Result<Option<Lineage>> {
    let path = path(data_dir);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let field = |key: &str| text.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix('='));
    let log_id = field("log_id").filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()));
    let origin = match field("origin") {
        Some("began") => Some(Origin::Began),
        Some("copied") => Some(Origin::Copied),
        _ => None,
    };
    match (log_id, origin) {
        (Some(log_id), Some(origin)) => Ok(Some(Lineage { log_id: log_id.to_string(), origin })),
        _ => Err(StorageError::Corruption {
            segment: path,
            position: 0,
            reason: format!("not a log-id file: {:?}", text.chars().take(80).collect::<String>()),
        }),
    }
}

/// 128 random bits as hex; std's hasher keys are seeded from the OS's randomness.
fn new_log_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let half = || {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
        );
        hasher.finish()
    };
    format!("{:016x}{:016x}", half(), half())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Config, Log};

    #[test]
    fn a_begun_lineage_is_kept_and_a_log_holding_records_refuses_another() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let log = Log::open(dir.path(), Config::default()).expect("open");
        assert_eq!(log.lineage().expect("read"), None);
        let began = log.begin_lineage().expect("begin");
        assert_eq!(began.origin, Origin::Began);
        assert_eq!(log.begin_lineage().expect("again"), began, "an existing lineage is kept");
        log.adopt_lineage(&began.log_id).expect("its own id is accepted");
        log.append(b"k", b"v").expect("append");
        let other = new_log_id();
        assert_ne!(other, began.log_id);
        assert!(matches!(log.adopt_lineage(&other), Err(StorageError::OtherLog { .. })));
        drop(log);
        let log = Log::open(dir.path(), Config::default()).expect("reopen");
        assert_eq!(log.lineage().expect("read"), Some(began), "it survives a restart");
    }

    #[test]
    fn an_empty_log_becomes_a_copy_of_any_log_and_records_it() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let log = Log::open(dir.path(), Config::default()).expect("open");
        log.begin_lineage().expect("begin");
        let id = new_log_id();
        log.adopt_lineage(&id).expect("adopt");
        assert_eq!(log.lineage().expect("read"), Some(Lineage { log_id: id, origin: Origin::Copied }));
        std::fs::write(dir.path().join(LINEAGE_FILE), "log_id=zz\n").expect("write");
        assert!(matches!(log.lineage(), Err(StorageError::Corruption { .. })), "a damaged file is reported");
    }
}
