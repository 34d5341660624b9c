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
use std::sync::{RwLockReadGuard, RwLockWriteGuard};

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

/// What `log-id` held when the log was opened, or was last written with. Replication asks
/// on every fetch, so the file is read once; an unreadable one is kept as the reason, and
/// reported by every ask, as it was when each ask read the file.
pub(super) type Cached = std::result::Result<Option<Lineage>, Unreadable>;

/// Why `log-id` could not be read at open (errors are not `Clone`; their text is kept).
#[derive(Debug, Clone)]
pub(super) enum Unreadable {
    Damaged { path: PathBuf, reason: String },
    Io { kind: std::io::ErrorKind, message: String },
}

impl Unreadable {
    fn to_error(&self) -> StorageError {
        match self {
            Unreadable::Damaged { path, reason } => {
                StorageError::Corruption { segment: path.clone(), position: 0, reason: reason.clone() }
            }
            Unreadable::Io { kind, message } => std::io::Error::new(*kind, message.clone()).into(),
        }
    }
}

/// Reads `log-id` for the cache, when the log is opened.
pub(super) fn load(data_dir: &Path) -> Cached {
    read(data_dir).map_err(|err| match err {
        StorageError::Corruption { segment, reason, .. } => Unreadable::Damaged { path: segment, reason },
        StorageError::Io(err) => Unreadable::Io { kind: err.kind(), message: err.to_string() },
        other => Unreadable::Io { kind: std::io::ErrorKind::Other, message: other.to_string() },
    })
}

impl super::Log {
    /// The log this data dir holds; `None` before it first led or copied one (or when it
    /// was written by a version that did not record it).
    pub fn lineage(&self) -> Result<Option<Lineage>> {
        self.cached_lineage().clone().map_err(|unreadable| unreadable.to_error())
    }

    /// This data dir's lineage, begun here with a new id if it has none yet.
    pub fn begin_lineage(&self) -> Result<Lineage> {
        // Held from the look to the write, so two callers cannot begin two different logs.
        let mut cached = self.cached_lineage_mut();
        if let Some(lineage) = cached.clone().map_err(|unreadable| unreadable.to_error())? {
            return Ok(lineage);
        }
        let lineage = Lineage { log_id: new_log_id(), origin: Origin::Began };
        self.write_lineage(&mut cached, &lineage)?;
        Ok(lineage)
    }

    /// Records, on the operator's word (`msglog serve --adopt-log`), that this data dir
    /// began the log it holds: for a dir written by a msglog from before `log-id`, which
    /// holds records and no lineage. Whether it led cannot be read from the records (a
    /// follower's copy looks the same), which is why a leader start refuses such a dir
    /// without the word. `true` when it wrote the file; a dir with a lineage, or with no
    /// records, is left as it is.
    pub fn adopt_unrecorded_log(&self) -> Result<bool> {
        let mut cached = self.cached_lineage_mut();
        if cached.clone().map_err(|unreadable| unreadable.to_error())?.is_some() || self.last_record().is_none() {
            return Ok(false);
        }
        self.write_lineage(&mut cached, &Lineage { log_id: new_log_id(), origin: Origin::Began })?;
        Ok(true)
    }

    /// Records that this data dir holds a copy of `log_id`, before any of it is appended.
    /// Refused if the dir holds records of another log; an empty one has nothing to lose
    /// and becomes a copy. A malformed id is refused too: written, it would make the next
    /// open of this data dir fail.
    pub fn adopt_lineage(&self, log_id: &str) -> Result<()> {
        if !is_log_id(log_id) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "the leader names its log {:?}, which is not a log id (32 lowercase hex digits); \
                     refusing to copy it (is the leader another program?)",
                    log_id.chars().take(80).collect::<String>()
                ),
            )
            .into());
        }
        let mut cached = self.cached_lineage_mut();
        match cached.clone().map_err(|unreadable| unreadable.to_error())? {
            Some(ours) if ours.log_id == log_id && ours.origin == Origin::Copied => Ok(()),
            // The same log, but recorded as begun here: this dir was seeded by copying the
            // leader's files. It is a copy, and must never lead the log on its own.
            Some(ours) if ours.log_id == log_id => {
                self.write_lineage(&mut cached, &Lineage { origin: Origin::Copied, ..ours })
            }
            Some(ours) if self.last_record().is_some() => {
                Err(StorageError::OtherLog { ours: ours.log_id, theirs: log_id.to_string() })
            }
            _ => self.write_lineage(&mut cached, &Lineage { log_id: log_id.to_string(), origin: Origin::Copied }),
        }
    }

    /// Begins a new log here, whatever this data dir held a copy of: only for a dir that
    /// holds no records.
    pub fn begin_new_lineage(&self) -> Result<Lineage> {
        debug_assert!(self.last_record().is_none(), "a new lineage over records");
        let mut cached = self.cached_lineage_mut();
        let lineage = Lineage { log_id: new_log_id(), origin: Origin::Began };
        self.write_lineage(&mut cached, &lineage)?;
        Ok(lineage)
    }

    /// Writes the file, then the cache: a failed write leaves the cache saying what the
    /// file said before.
    fn write_lineage(&self, cached: &mut Cached, lineage: &Lineage) -> Result<()> {
        let origin = match lineage.origin {
            Origin::Began => "began",
            Origin::Copied => "copied",
        };
        let text = format!("log_id={}\norigin={origin}\n", lineage.log_id);
        replace_file(self.shared.fs.as_ref(), &path(&self.shared.data_dir), text.as_bytes())?;
        *cached = Ok(Some(lineage.clone()));
        Ok(())
    }

    fn cached_lineage(&self) -> RwLockReadGuard<'_, Cached> {
        self.shared.lineage.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn cached_lineage_mut(&self) -> RwLockWriteGuard<'_, Cached> {
        self.shared.lineage.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What `new_log_id` makes: 32 lowercase hex digits.
fn is_log_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
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
    let log_id = field("log_id").filter(|id| is_log_id(id));
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

/// 128 random bits as hex.
fn new_log_id() -> String {
    format!("{:016x}{:016x}", crate::random::random_u64(), crate::random::random_u64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Config, Log};

    #[test]
    fn only_a_dir_with_records_and_no_lineage_is_adopted_as_begun() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let log = Log::open(dir.path(), Config::default()).expect("open");
        assert!(!log.adopt_unrecorded_log().expect("empty"), "an empty dir has nothing to adopt");
        assert_eq!(log.lineage().expect("read"), None);
        log.append(b"k", b"v").expect("append");
        assert!(log.adopt_unrecorded_log().expect("adopt"));
        let adopted = log.lineage().expect("read").expect("a lineage");
        assert_eq!(adopted.origin, Origin::Began);
        assert!(!log.adopt_unrecorded_log().expect("again"), "a recorded lineage is kept");
        drop(log);
        let log = Log::open(dir.path(), Config::default()).expect("reopen");
        assert_eq!(log.lineage().expect("read"), Some(adopted), "it is on disk");
    }

    #[test]
    fn a_begun_lineage_is_kept_and_a_log_holding_records_refuses_another() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let log = Log::open(dir.path(), Config::default()).expect("open");
        assert_eq!(log.lineage().expect("read"), None);
        let began = log.begin_lineage().expect("begin");
        assert_eq!(began.origin, Origin::Began);
        assert_eq!(log.begin_lineage().expect("again"), began, "an existing lineage is kept");
        log.append(b"k", b"v").expect("append");
        let other = new_log_id();
        assert_ne!(other, began.log_id);
        assert!(matches!(log.adopt_lineage(&other), Err(StorageError::OtherLog { .. })));
        drop(log);
        let log = Log::open(dir.path(), Config::default()).expect("reopen");
        assert_eq!(log.lineage().expect("read"), Some(began.clone()), "it survives a restart");
        log.adopt_lineage(&began.log_id).expect("its own id is accepted");
    }

    #[test]
    fn an_empty_log_becomes_a_copy_of_any_log_and_records_it() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let log = Log::open(dir.path(), Config::default()).expect("open");
        log.begin_lineage().expect("begin");
        let id = new_log_id();
        log.adopt_lineage(&id).expect("adopt");
        assert_eq!(log.lineage().expect("read"), Some(Lineage { log_id: id, origin: Origin::Copied }));
        drop(log);
        std::fs::write(dir.path().join(LINEAGE_FILE), "log_id=zz\n").expect("write");
        // The log still opens (offline tools must reach a damaged dir); asking says why not.
        let log = Log::open(dir.path(), Config::default()).expect("reopen");
        assert!(matches!(log.lineage(), Err(StorageError::Corruption { .. })), "a damaged file is reported");
        assert!(matches!(log.begin_lineage(), Err(StorageError::Corruption { .. })), "and not replaced");
    }

    #[test]
    fn the_lineage_is_read_at_open_and_kept_in_step_with_its_writes() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let log = Log::open(dir.path(), Config::default()).expect("open");
        let began = log.begin_lineage().expect("begin");
        drop(log);
        let log = Log::open(dir.path(), Config::default()).expect("reopen");
        // Gone from disk after the open, still known: the file is not read again.
        std::fs::remove_file(dir.path().join(LINEAGE_FILE)).expect("remove");
        assert_eq!(log.lineage().expect("cached"), Some(began.clone()));
        let copied = new_log_id();
        log.adopt_lineage(&copied).expect("an empty log adopts");
        assert_eq!(log.lineage().expect("cached").map(|l| l.log_id), Some(copied.clone()));
        let fresh = log.begin_new_lineage().expect("a new log");
        assert_ne!(fresh.log_id, copied);
        assert_eq!(log.lineage().expect("cached"), Some(fresh.clone()));
        drop(log);
        let log = Log::open(dir.path(), Config::default()).expect("reopen");
        assert_eq!(log.lineage().expect("read"), Some(fresh), "the file says what the cache said");
    }

    #[test]
    fn a_malformed_log_id_from_a_leader_is_refused_and_nothing_is_written() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let log = Log::open(dir.path(), Config::default()).expect("open");
        let good = "0123456789abcdef0123456789abcdef".to_string();
        let malformed = [
            String::new(),
            good[..31].to_string(),
            format!("{good}0"),
            good.to_uppercase(),
            format!("{}g", &good[..31]),
            format!("{}\norigin=began", &good[..31]),
        ];
        for id in &malformed {
            let refused = log.adopt_lineage(id).expect_err(id);
            assert!(refused.to_string().contains("not a log id"), "{id:?}: {refused}");
            assert_eq!(log.lineage().expect("read"), None, "{id:?} was not adopted");
            assert!(!dir.path().join(LINEAGE_FILE).exists(), "{id:?} was written");
        }
        log.adopt_lineage(&good).expect("a well-formed id is adopted");
        drop(log);
        let log = Log::open(dir.path(), Config::default()).expect("reopen");
        assert_eq!(log.lineage().expect("read"), Some(Lineage { log_id: good, origin: Origin::Copied }));
    }

    #[test]
    fn a_dir_seeded_with_a_copy_of_the_leaders_files_becomes_a_copy_when_it_follows() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let log = Log::open(dir.path(), Config::default()).expect("open");
        let began = log.begin_lineage().expect("begin");
        assert_eq!(began.origin, Origin::Began);
        log.adopt_lineage(&began.log_id).expect("the leader's own log");
        assert_eq!(
            log.lineage().expect("read"),
            Some(Lineage { log_id: began.log_id.clone(), origin: Origin::Copied })
        );
        drop(log);
        let log = Log::open(dir.path(), Config::default()).expect("reopen");
        assert_eq!(log.lineage().expect("read").map(|l| l.origin), Some(Origin::Copied), "and it is on disk");
    }
}
