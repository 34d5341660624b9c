//! Leader epochs: the persisted epoch file, and the lookups replication's divergence check
//! makes (Kafka's KIP-101 / KIP-279 "end offset for epoch").
//!
//! `<data_dir>/epoch` holds the highest leader epoch this node has begun or seen, as
//! decimal ASCII and a newline. It is replaced atomically (temp file, fsync, rename, fsync
//! of the directory) before a new epoch is used, so a node promoted after a crash never
//! reuses an epoch another leader may have written records under.
//!
//! The lookups use no per-epoch state: epochs never decrease along a log (a leader stamps
//! an epoch above every one in its log; a follower appends the leader's records after
//! cutting back to a common prefix), so a binary search over offsets, reading one record
//! per probe through the sparse offset index, finds where an epoch ends.

use std::fs;
use std::path::{Path, PathBuf};

use super::fs::{FileSystem, replace_file};
use super::log::State;
use super::{Config, Epoch, Offset, Result, StorageError};

impl super::Log {
    /// Epoch stamped on records this log appends from now on.
    pub fn set_epoch(&self, epoch: Epoch) {
        self.shared.write().epoch = epoch;
    }

    /// Begins a new leader epoch, above every epoch this node has begun, seen or holds
    /// records of; persists it durably before stamping it on appends. Returns it.
    pub fn begin_leader_epoch(&self) -> Result<Epoch> {
        let mut st = self.shared.write();
        let highest = st.persisted_epoch.max(st.epoch).max(st.last.map_or(0, |(_, e)| e));
        let epoch =
            highest.checked_add(1).ok_or(StorageError::Overflow { what: "leader epoch", value: highest as u64 })?;
        write(self.shared.fs.as_ref(), &self.shared.data_dir, epoch)?;
        st.persisted_epoch = epoch;
        st.epoch = epoch;
        Ok(epoch)
    }

    /// A follower learned of a leader at `epoch`: remember it durably, so that if this node
    /// is promoted later its epoch is higher still.
    pub fn observe_epoch(&self, epoch: Epoch) -> Result<()> {
        let mut st = self.shared.write();
        if epoch > st.persisted_epoch {
            write(self.shared.fs.as_ref(), &self.shared.data_dir, epoch)?;
            st.persisted_epoch = epoch;
        }
        Ok(())
    }

    /// Epoch of the record at exactly `offset`, if the log holds one there.
    pub fn epoch_at(&self, offset: Offset) -> Result<Option<Epoch>> {
        epoch_at(&self.shared.read(), &self.shared.config, offset)
    }

    /// Epoch of the first record at or after `offset` (compaction may have removed the one
    /// at `offset`), if the log holds one.
    pub fn epoch_at_or_after(&self, offset: Offset) -> Result<Option<Epoch>> {
        Ok(first_at_or_after(&self.shared.read(), &self.shared.config, offset)?.map(|(_, epoch)| epoch))
    }

    /// Where the log stops agreeing with a peer whose last record has `epoch` (KIP-279):
    /// the largest epoch ≤ `epoch` this log holds records of (`None` if none), and the
    /// offset where that epoch ends here (the first record of a later epoch, or the next
    /// offset). With `None`, the offset is where this log starts.
    pub fn epoch_end(&self, epoch: Epoch) -> Result<(Option<Epoch>, Offset)> {
        epoch_end(&self.shared.read(), &self.shared.config, epoch)
    }
}

/// The offset of the last record of each leader epoch in the log, ascending (the current
/// epoch's included: its last record so far). Compaction keeps these whatever supersedes
/// them (`docs/FORMAT.md`, "Compaction"), so the divergence check can still tell that a
/// follower whose last record was cleaned away here holds the same log.
pub(super) fn last_record_of_each_epoch(st: &State, config: &Config) -> Result<Vec<Offset>> {
    let mut lasts = Vec::new();
    let mut at = 0;
    while let Some((first, epoch)) = first_at_or_after(st, config, at)? {
        let (_, end) = epoch_end(st, config, epoch)?;
        // The largest probe in [first, end) with a record at or after it below `end`: the
        // first record at or after it is the epoch's last.
        let (mut low, mut high) = (first, end - 1);
        while low < high {
            let mid = low + (high - low).div_ceil(2);
            match first_at_or_after(st, config, mid)? {
                Some((offset, _)) if offset < end => low = mid,
                _ => high = mid - 1,
            }
        }
        let last = first_at_or_after(st, config, low)?.map_or(first, |(offset, _)| offset);
        lasts.push(last);
        at = end;
    }
    Ok(lasts)
}

/// The IDs of the records at `offsets` (each must hold one), sorted, without repeats.
pub(super) fn ids_at(st: &State, config: &Config, offsets: &[Offset]) -> Result<Vec<Vec<u8>>> {
    let mut ids = Vec::with_capacity(offsets.len());
    for &offset in offsets {
        let chunk = st.read_from(config, offset, 1)?;
        if let Some(Ok(r)) = chunk.records().next().filter(|r| r.as_ref().is_ok_and(|r| r.offset == offset)) {
            ids.push(r.id.to_vec());
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

const EPOCH_FILE: &str = "epoch";

pub(super) fn epoch_path(data_dir: &Path) -> PathBuf {
    data_dir.join(EPOCH_FILE)
}

/// The persisted epoch; 0 when there is no file yet.
pub(super) fn read(data_dir: &Path) -> Result<Epoch> {
    let path = epoch_path(data_dir);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    text.trim_end_matches('\n').parse().map_err(|_| StorageError::Corruption {
        segment: path,
        position: 0,
        reason: format!("epoch file holds {:?}, not a number", text.chars().take(32).collect::<String>()),
    })
}

/// Replaces the epoch file durably.
pub(super) fn write(fs: &dyn FileSystem, data_dir: &Path, epoch: Epoch) -> Result<()> {
    replace_file(fs, &epoch_path(data_dir), format!("{epoch}\n").as_bytes())?;
    Ok(())
}

/// Offset and epoch of the first record at or after `offset`.
fn first_at_or_after(st: &State, config: &Config, offset: Offset) -> Result<Option<(Offset, Epoch)>> {
    let chunk = st.read_from(config, offset, 1)?;
    Ok(chunk.records().next().and_then(|r| r.ok()).map(|r| (r.offset, r.epoch)))
}

pub(super) fn epoch_at(st: &State, config: &Config, offset: Offset) -> Result<Option<Epoch>> {
    Ok(first_at_or_after(st, config, offset)?.filter(|&(at, _)| at == offset).map(|(_, epoch)| epoch))
}

pub(super) fn start_offset(st: &State, config: &Config) -> Result<Offset> {
    Ok(first_at_or_after(st, config, 0)?.map_or(st.next_offset, |(offset, _)| offset))
}

/// The largest epoch ≤ `epoch` in the log (if any) and the offset where it ends: that of
/// the first record with a larger epoch, or the log's next offset.
pub(super) fn epoch_end(st: &State, config: &Config, epoch: Epoch) -> Result<(Option<Epoch>, Offset)> {
    let start = start_offset(st, config)?;
    let next = st.next_offset;
    // The smallest probe whose first record at or after it has a larger epoch (or none).
    let later =
        |probe: Offset| -> Result<bool> { Ok(first_at_or_after(st, config, probe)?.is_none_or(|(_, e)| e > epoch)) };
    let (mut low, mut high) = (start, next);
    while low < high {
        let mid = low + (high - low) / 2;
        if later(mid)? {
            high = mid;
        } else {
            low = mid + 1;
        }
    }
    let end = first_at_or_after(st, config, low)?.map_or(next, |(offset, _)| offset);
    if low == start {
        return Ok((None, end));
    }
    // The probe just below `low` lands on the last record of the shared epochs.
    let shared = first_at_or_after(st, config, low - 1)?.map(|(_, e)| e).filter(|&e| e <= epoch);
    Ok((shared, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{CleanOptions, Log};

    fn lasts(log: &Log) -> Vec<Offset> {
        last_record_of_each_epoch(&log.shared.read(), &log.shared.config).unwrap()
    }

    /// One pass over every sealed segment, dropping every tombstone it may.
    fn clean_everything(log: &Log) -> Option<crate::storage::CleanSummary> {
        let upto = log.next_offset();
        let options = CleanOptions {
            upto,
            tombstone_horizon: upto,
            delete_retention: std::time::Duration::ZERO,
            bytes_per_sec: None,
        };
        log.clean(&options).unwrap()
    }

    #[test]
    fn the_last_record_of_each_epoch_is_found_and_survives_cleaning() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config { segment_bytes: 512, max_record_bytes: 400, ..Config::default() };
        let log = Log::open(dir.path(), config).unwrap();
        assert!(lasts(&log).is_empty(), "an empty log has no epochs");
        // Epoch 1: offsets 0..=9, epoch 2: 10..=29, epoch 5: 30..=59; one ID throughout,
        // so every record but the newest is superseded.
        for (epoch, count) in [(1, 10), (2, 20), (5, 30)] {
            log.set_epoch(epoch);
            for n in 0..count {
                log.append(b"id", format!("{epoch}-{n}-{}", "x".repeat(40)).as_bytes()).unwrap();
            }
        }
        assert_eq!(lasts(&log), [9, 29, 59]);
        clean_everything(&log);
        assert!(log.stats().records < 60, "the cleaner dropped superseded records");
        for (offset, epoch) in [(9, 1), (29, 2)] {
            assert_eq!(log.epoch_at(offset).unwrap(), Some(epoch), "epoch {epoch}'s last record is kept");
        }
        assert_eq!(lasts(&log), [9, 29, 59], "and the epochs still end where they did");
        assert_eq!(log.get(b"id").unwrap().unwrap(), format!("5-29-{}", "x".repeat(40)).as_bytes());
    }

    #[test]
    fn an_id_whose_set_ends_an_epoch_stays_deleted_after_cleaning_and_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config { segment_bytes: 512, max_record_bytes: 400, ..Config::default() };
        let log = Log::open(dir.path(), config.clone()).unwrap();
        // The victim's SET is epoch 1's last record, kept whatever supersedes it.
        log.set_epoch(1);
        log.append(b"victim", b"old").unwrap();
        log.set_epoch(2);
        log.delete(b"victim").unwrap();
        for n in 0..40 {
            log.append(format!("id-{}", n % 4).as_bytes(), "x".repeat(40).as_bytes()).unwrap();
        }
        clean_everything(&log).expect("a pass");
        assert_eq!(log.epoch_at(0).unwrap(), Some(1), "epoch 1's last record is kept");
        assert_eq!(log.get(b"victim").unwrap(), None);
        drop(log);
        let log = Log::open(dir.path(), config).unwrap();
        assert_eq!(log.get(b"victim").unwrap(), None, "its tombstone was kept with it");
    }
}
