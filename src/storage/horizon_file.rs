//! How far this log's cleaner may have dropped tombstones, so that a replica which holds
//! records but whose log ends below it is never caught up incrementally: it would never
//! learn of the deletions and keep the deleted IDs (docs/FORMAT.md, "Tombstone horizon
//! file").
//!
//! `<data_dir>/log/HORIZON`: a first line `msglog-horizon 1`, then one offset. Raised, and
//! made durable, before the cleaner is let drop a tombstone below the new value, and by a
//! replica to its leader's before it appends records copied from that leader (which may
//! lack tombstones below it); never lowered. Absent: 0 (no tombstone was ever dropped).

use std::path::{Path, PathBuf};

use super::fs::replace_file;
use super::{Offset, Result, StorageError};

const HORIZON_FILE: &str = "HORIZON";
const FIRST_LINE: &str = "msglog-horizon 1";

fn path(log_dir: &Path) -> PathBuf {
    log_dir.join(HORIZON_FILE)
}

fn read(log_dir: &Path) -> Result<Offset> {
    let path = path(log_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut lines = text.lines();
    match (lines.next(), lines.next().map(str::parse::<Offset>), lines.next()) {
        (Some(FIRST_LINE), Some(Ok(offset)), None) => Ok(offset),
        _ => {
            let reason = format!(
                "tombstone horizon file holds {:?}, not {FIRST_LINE:?} and one offset (docs/FORMAT.md); a \
                 higher offset than the true one is safe: write the log's next offset there",
                text.chars().take(48).collect::<String>()
            );
            Err(StorageError::Corruption { segment: path, position: 0, reason })
        }
    }
}

/// The recorded horizon, read from `log_dir` the first time.
fn recorded(held: &mut Option<Offset>, log_dir: &Path) -> Result<Offset> {
    match *held {
        Some(offset) => Ok(offset),
        None => Ok(*held.insert(read(log_dir)?)),
    }
}

impl super::Log {
    /// The cleaner may have dropped tombstones below this offset: a replica whose log holds
    /// records and ends below it misses deletions and has to copy the log afresh.
    pub fn tombstones_dropped_below(&self) -> Result<Offset> {
        let mut held = self.shared.horizon_file.lock().unwrap_or_else(|e| e.into_inner());
        recorded(&mut held, &self.shared.dir)
    }

    /// Lets the cleaner drop tombstones below `horizon`: raises the recorded horizon to it,
    /// durably, first. Returns the horizon the cleaner may use: `horizon`, or the recorded
    /// one if that is higher.
    pub fn let_tombstones_drop_below(&self, horizon: Offset) -> Result<Offset> {
        // Held from the read to the write, so the recorded horizon never goes down.
        let mut held = self.shared.horizon_file.lock().unwrap_or_else(|e| e.into_inner());
        if horizon <= recorded(&mut held, &self.shared.dir)? {
            return Ok(horizon);
        }
        let text = format!("{FIRST_LINE}\n{horizon}\n");
        replace_file(self.shared.fs.as_ref(), &path(&self.shared.dir), text.as_bytes())?;
        *held = Some(horizon);
        Ok(horizon)
    }
}

#[cfg(test)]
mod tests {
    use crate::storage::{Config, Log};

    #[test]
    fn the_horizon_only_rises_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), Config::default()).unwrap();
        assert_eq!(log.tombstones_dropped_below().unwrap(), 0, "none dropped in a new log");
        assert_eq!(log.let_tombstones_drop_below(40).unwrap(), 40);
        assert_eq!(log.let_tombstones_drop_below(10).unwrap(), 10, "a lower horizon is used as given");
        assert_eq!(log.tombstones_dropped_below().unwrap(), 40, "and does not lower the record");
        drop(log);
        let log = Log::open(dir.path(), Config::default()).unwrap();
        assert_eq!(log.tombstones_dropped_below().unwrap(), 40);
        let text = std::fs::read_to_string(dir.path().join("log/HORIZON")).unwrap();
        assert_eq!(text, "msglog-horizon 1\n40\n");
    }

    #[test]
    fn a_damaged_horizon_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), Config::default()).unwrap();
        std::fs::write(dir.path().join("log/HORIZON"), "msglog-horizon 1\nnot a number\n").unwrap();
        let err = log.tombstones_dropped_below().unwrap_err().to_string();
        assert!(err.contains("msglog-horizon 1"), "{err}");
    }
}
