//! The Raft log and vote, kept in memory and on disk in the quorum dir:
//! - `vote`: the last vote, replaced atomically and fsynced before Raft is told it is
//!   saved (a voter that forgets its vote could vote twice in one term);
//! - `log`: one JSON line per entry, appended and fsynced before Raft is told; rewritten
//!   whole (atomically) on the rare truncation or purge, its first line then recording what
//!   was purged;
//! - `committed`: how far the log is known committed, a hint that lets a restarted node
//!   apply its log before a leader reappears (losing it only delays that, so no fsync).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use serde::{Deserialize, Serialize};

use super::files;
use super::types::{Entry, LogId, TypeConfig, Vote};

const LOG: &str = "log";
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";

/// Borrowed when written, so an entry is not copied to be serialized.
#[derive(Serialize, Deserialize)]
enum Line<'a> {
    /// Entries up to here were purged (they are in a snapshot).
    Purged(Cow<'a, LogId>),
    Entry(Cow<'a, Entry>),
}

/// A handle to the log; clones share it (Raft reads through one while it appends).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    dir: PathBuf,
    vote: Option<Vote>,
    committed: Option<LogId>,
    purged: Option<LogId>,
    entries: BTreeMap<u64, Entry>,
    file: File,
}

impl LogStore {
    /// Opens (or creates) the log in `dir`. A torn last line, left by a crash in the middle
    /// of an append that was never acknowledged, is cut off.
    pub fn open(dir: &Path) -> io::Result<LogStore> {
        let path = dir.join(LOG);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut purged = None;
        let mut entries = BTreeMap::new();
        let mut good = 0;
        for line in bytes.split_inclusive(|b| *b == b'\n') {
            let complete = line.ends_with(b"\n");
            match serde_json::from_slice::<Line>(line) {
                Ok(Line::Purged(id)) => purged = Some(id.into_owned()),
                Ok(Line::Entry(entry)) => {
                    entries.insert(entry.log_id.index(), entry.into_owned());
                }
                Err(_) if !complete => break,
                Err(e) => {
                    let at = format!("{} at byte {good}", path.display());
                    return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{at}: {e}")));
                }
            }
            good += line.len();
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        if good < bytes.len() {
            file.set_len(good as u64)?;
            file.sync_all()?;
        }
        files::sync_dir(dir)?;
        let inner = Inner {
            dir: dir.to_path_buf(),
            vote: files::read_json(dir, VOTE)?,
            committed: files::read_json(dir, COMMITTED).unwrap_or(None),
            purged,
            entries,
            file,
        };
        Ok(LogStore { inner: Arc::new(Mutex::new(inner)) })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Inner {
    /// Writes the whole log anew, so truncation and purge are atomic.
    fn rewrite(&mut self) -> io::Result<()> {
        let mut text = Vec::new();
        if let Some(purged) = &self.purged {
            line(&mut text, &Line::Purged(Cow::Borrowed(purged)))?;
        }
        for entry in self.entries.values() {
            line(&mut text, &Line::Entry(Cow::Borrowed(entry)))?;
        }
        files::write_bytes(&self.dir, LOG, &text, true)?;
        self.file = OpenOptions::new().append(true).open(self.dir.join(LOG))?;
        Ok(())
    }
}

fn line(out: &mut Vec<u8>, line: &Line) -> io::Result<()> {
    serde_json::to_writer(&mut *out, line).map_err(io::Error::other)?;
    out.push(b'\n');
    Ok(())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(self.lock().entries.range(range).map(|(_, entry)| entry.clone()).collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.lock().vote.clone())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let inner = self.lock();
        let last = inner.entries.values().next_back().map(|entry| entry.log_id.clone());
        Ok(LogState { last_purged_log_id: inner.purged.clone(), last_log_id: last.or_else(|| inner.purged.clone()) })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let mut inner = self.lock();
        files::write_json(&inner.dir, VOTE, vote, true)?;
        inner.vote = Some(vote.clone());
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let mut inner = self.lock();
        files::write_json(&inner.dir, COMMITTED, &committed, false)?;
        inner.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.lock().committed.clone())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut text = Vec::new();
        for entry in &entries {
            line(&mut text, &Line::Entry(Cow::Borrowed(entry)))?;
        }
        // Serialized before the lock: readers wait only for the write itself.
        let mut inner = self.lock();
        let written = inner.file.write_all(&text).and_then(|()| inner.file.sync_data());
        if let Err(e) = written {
            callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
            return Err(e);
        }
        for entry in entries {
            inner.entries.insert(entry.log_id.index(), entry);
        }
        callback.io_completed(Ok(()));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let mut inner = self.lock();
        let keep_up_to = last_log_id.map(|id| id.index());
        inner.entries.retain(|index, _| keep_up_to.is_some_and(|last| *index <= last));
        inner.rewrite()
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let mut inner = self.lock();
        let upto = log_id.index();
        inner.entries.retain(|index, _| *index > upto);
        inner.purged = Some(log_id);
        inner.rewrite()
    }
}
