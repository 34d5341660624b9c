//! The followers a manual-mode leader's log has been copied to, so that it drops a
//! tombstone only once every one of them holds it, even one that is away across a leader
//! restart (README, "Compaction").
//!
//! `<data_dir>/followers`: a first line `msglog-followers 1`, then one node id per line.
//! Replaced atomically when a follower it does not name first fetches as a replica. To
//! retire a follower for good, stop the leader and delete its line: until then, tombstones
//! wait for it.

use std::path::{Path, PathBuf};

use super::fs::replace_file;
use super::{Result, StorageError};

const FOLLOWERS_FILE: &str = "followers";
const FIRST_LINE: &str = "msglog-followers 1";

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FOLLOWERS_FILE)
}

fn read(data_dir: &Path) -> Result<Vec<String>> {
    let path = path(data_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let damaged = |reason: String| {
        let reason = format!(
            "{reason}; it names the followers this log was copied to, one node id per line after a line \
             {FIRST_LINE:?} (docs/FORMAT.md): repair it by hand, and do not delete it (the leader would then \
             forget which followers its tombstones wait for)"
        );
        StorageError::Corruption { segment: path.clone(), position: 0, reason }
    };
    let mut lines = text.lines();
    if lines.next() != Some(FIRST_LINE) {
        return Err(damaged(format!("does not start with {FIRST_LINE:?}")));
    }
    let ids: Vec<String> = lines.map(str::trim).filter(|id| !id.is_empty()).map(str::to_string).collect();
    if let Some(bad) = ids.iter().find(|id| id.chars().any(|c| c.is_whitespace() || c.is_control())) {
        return Err(damaged(format!("line {bad:?} is not a node id")));
    }
    Ok(ids)
}

impl super::Log {
    /// The followers this data dir's log has been copied to, as recorded by
    /// [`remember_follower`](Self::remember_follower); none for a new dir.
    pub fn known_followers(&self) -> Result<Vec<String>> {
        let _held = self.shared.followers_file.lock().unwrap_or_else(|e| e.into_inner());
        read(&self.shared.data_dir)
    }

    /// Records, durably, that `id` copies this log. `true` if it was not known before.
    pub fn remember_follower(&self, id: &str) -> Result<bool> {
        if id.is_empty() || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
            let why = format!("follower id {id:?} is empty or holds whitespace, so a line cannot hold it");
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, why).into());
        }
        // Held from the read to the write: two new followers at once must both be kept.
        let _held = self.shared.followers_file.lock().unwrap_or_else(|e| e.into_inner());
        let mut known = read(&self.shared.data_dir)?;
        if known.iter().any(|k| k == id) {
            return Ok(false);
        }
        known.push(id.to_string());
        let text: String = [FIRST_LINE.to_string()].into_iter().chain(known).map(|line| line + "\n").collect();
        replace_file(self.shared.fs.as_ref(), &path(&self.shared.data_dir), text.as_bytes())?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use crate::storage::{Config, Log};

    #[test]
    fn remembered_followers_survive_a_reopen_once_each_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), Config::default()).unwrap();
        assert!(log.known_followers().unwrap().is_empty());
        assert!(log.remember_follower("b").unwrap());
        assert!(log.remember_follower("a").unwrap());
        assert!(!log.remember_follower("b").unwrap(), "already known");
        drop(log);
        let log = Log::open(dir.path(), Config::default()).unwrap();
        assert_eq!(log.known_followers().unwrap(), ["b", "a"]);
        let text = std::fs::read_to_string(dir.path().join("followers")).unwrap();
        assert_eq!(text, "msglog-followers 1\nb\na\n");
    }

    #[test]
    fn an_id_a_line_cannot_hold_is_refused_and_a_damaged_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), Config::default()).unwrap();
        assert!(log.remember_follower("a\nb").is_err());
        assert!(log.remember_follower("").is_err());
        assert!(log.known_followers().unwrap().is_empty());
        std::fs::write(dir.path().join("followers"), "garbage\n").unwrap();
        let err = log.known_followers().unwrap_err().to_string();
        assert!(err.contains("msglog-followers 1"), "{err}");
    }
}
