//! The façade: the one storage type the rest of msglog uses.
//!
//! Concurrency: one `RwLock` guards the segments, the ID index and the write buffer.
//! Appends and flushes take it for writing (a memcpy, or one `pwrite` of the buffer);
//! reads share it. `fdatasync` runs outside it, so readers and appenders carry on while
//! a sync is in flight, and the group-commit gate in [`commit`](super::commit) lets one
//! caller sync for everyone waiting.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use super::commit::{Commit, IntervalSyncer};
use super::fs::{FileSystem, RealFs};
use super::id_index::IdIndex;
use super::record::{RECORD_OVERHEAD, RecordKind, Records};
use super::recovery::{self, Recovered};
use super::segment::{ActiveSegment, HEADER_LEN, SealedSegment};
use super::sync_group::SyncGroup;
use super::{Config, Epoch, FsyncPolicy, Offset, Result, StorageError, log_dir};

/// Counters for STATS and the periodic stats line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Records in the log (SETs and tombstones).
    pub records: u64,
    /// Live IDs.
    pub ids: u64,
    pub segments: u64,
    /// Bytes of log, on disk and in the write buffer.
    pub bytes: u64,
    /// Offset the next record will get.
    pub next_offset: Offset,
    /// Every record below this offset is durable per the fsync policy.
    pub durable_offset: Offset,
    pub epoch: Epoch,
    /// Group-commit fsyncs since open.
    pub fsyncs: u64,
}

/// Bytes of log one read of a scan step takes (the step holds the read lock throughout).
const SCAN_CHUNK_BYTES: usize = 64 * 1024;

/// Whole framed records read from the log, for replication and `tail`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chunk {
    /// Framed records, CRC-checked, in offset order.
    pub bytes: Vec<u8>,
    /// The offset to read from next.
    pub next: Offset,
}

impl Chunk {
    pub fn records(&self) -> Records<'_> {
        Records::new(&self.bytes, usize::MAX)
    }

    /// The records of this chunk below offset `limit` (a committed-only reader's cut).
    pub fn below(mut self, limit: Offset) -> Chunk {
        let mut position = 0;
        while let Some((len, offset)) = super::record::peek(&self.bytes[position..]) {
            if offset >= limit {
                self.bytes.truncate(position);
                return Chunk { bytes: self.bytes, next: offset };
            }
            position += len;
        }
        self
    }
}

pub(super) struct State {
    pub sealed: Vec<SealedSegment>,
    pub active: ActiveSegment,
    pub ids: IdIndex,
    pub records: u64,
    pub next_offset: Offset,
    /// Epoch stamped on new records.
    pub epoch: Epoch,
    /// Offset and epoch of the last record.
    pub last: Option<(Offset, Epoch)>,
    /// Why writes are refused, once a write or fsync has failed.
    pub failed: Option<Failure>,
    /// The epoch in `<data_dir>/epoch`: the highest this node has begun or seen.
    pub persisted_epoch: Epoch,
    /// Bumped by every truncation that cut something: an fsync that started before the
    /// cut must not raise the durable mark over records appended after it.
    pub truncations: u64,
    /// The clean point and the cleaner's counters (see `cleaner`).
    pub compaction: super::cleaner::Compaction,
    pub retention: super::retention::Tracker,
}

/// The first write or fsync that failed.
pub(super) struct Failure {
    pub why: String,
    /// The log's next offset when it failed: records below it were appended before, so
    /// their durability failed with it; writes from here on are refused because of it.
    pub at: Offset,
}

/// State shared with the interval syncer thread.
pub(super) struct Shared {
    /// The data dir (which holds the lock and epoch files).
    pub data_dir: PathBuf,
    /// Its `log/` subdirectory, holding the segments.
    pub dir: PathBuf,
    pub config: Config,
    pub fs: Arc<dyn FileSystem>,
    pub state: RwLock<State>,
    pub commit: Commit,
    /// `<data_dir>/log-id`, read at open and kept in step by whatever writes it.
    pub lineage: RwLock<super::lineage::Cached>,
    /// Serializes changes to `<data_dir>/followers`.
    pub followers_file: std::sync::Mutex<()>,
    /// `log/HORIZON` as last read or written (`None`: not read yet).
    pub horizon_file: std::sync::Mutex<Option<Offset>>,
    /// The logs this one shares its fsyncs with, once it has joined them.
    pub sync_group: std::sync::OnceLock<Arc<SyncGroup>>,
}

/// An open log. `Send + Sync`: share it with `Arc<Log>`.
pub struct Log {
    /// `pub(super)` for the atomic-batch API, which lives in `batch`.
    pub(super) shared: Arc<Shared>,
    syncer: Option<IntervalSyncer>,
    /// Held (flocked) for the log's life.
    _lock: File,
}

impl Log {
    /// Opens (creating if needed) the log under `data_dir`: takes the directory lock,
    /// then recovers (see [`recovery`](super::recovery)).
    pub fn open(data_dir: &Path, config: Config) -> Result<Log> {
        Log::open_with(data_dir, config, Arc::new(RealFs))
    }

    /// `open`, doing every file write, truncation, fsync, rename and removal through
    /// `fs` (tests pass one that injects faults or simulates power cuts).
    pub fn open_with(data_dir: &Path, config: Config, fs: Arc<dyn FileSystem>) -> Result<Log> {
        validate(&config)?;
        std::fs::create_dir_all(data_dir)?;
        let lock = super::lock::acquire(data_dir)?;
        let dir = log_dir(data_dir);
        let Recovered { sealed, active, ids, records, last, log_start } = recovery::recover(&fs, &dir, &config)?;
        let next_offset = match last {
            Some((o, _)) => next_after(o)?,
            None => active.base,
        };
        let epoch = last.map_or(0, |(_, e)| e);
        let persisted_epoch = super::epoch::read(data_dir)?;
        let mut compaction = super::cleaner::Compaction::load(&dir)?;
        // A repair may have cut below it; what is appended from here on was never cleaned.
        if compaction.cleaned > next_offset {
            compaction.set_clean_point(fs.as_ref(), &dir, next_offset);
        }
        tracing::debug!(dir = %dir.display(), records, ids = ids.len(), next_offset, "log recovered");
        let state = State {
            sealed,
            active,
            ids,
            records,
            next_offset,
            epoch,
            last,
            failed: None,
            persisted_epoch,
            truncations: 0,
            compaction,
            retention: super::retention::Tracker { recorded_start: log_start, ..Default::default() },
        };
        let shared = Arc::new(Shared {
            data_dir: data_dir.to_path_buf(),
            dir,
            commit: Commit::new(next_offset),
            config,
            fs,
            state: RwLock::new(state),
            lineage: RwLock::new(super::lineage::load(data_dir)),
            followers_file: std::sync::Mutex::new(()),
            horizon_file: std::sync::Mutex::new(None),
            sync_group: std::sync::OnceLock::new(),
        });
        let syncer = match shared.config.fsync {
            FsyncPolicy::Interval(every) => Some(IntervalSyncer::start(shared.clone(), every)?),
            _ => None,
        };
        Ok(Log { shared, syncer, _lock: lock })
    }

    /// Appends a SET record. Visible to `get` at once; durable after `sync_through`.
    pub fn append(&self, id: &[u8], message: &[u8]) -> Result<Offset> {
        let mut st = self.shared.write();
        st.append(&self.shared, RecordKind::Set, id, message)
    }

    /// Appends a tombstone if `id` is live; `None`, writing nothing, if it is not.
    pub fn delete(&self, id: &[u8]) -> Result<Option<Offset>> {
        let mut st = self.shared.write();
        if st.locate(id).is_none() {
            return Ok(None);
        }
        st.append(&self.shared, RecordKind::Delete, id, &[]).map(Some)
    }

    /// The latest message of `id`, its CRC checked.
    pub fn get(&self, id: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.get_with_offset(id)?.map(|(_, message)| message))
    }

    /// [`get`](Log::get) with the record's offset, so a server can wait until that record
    /// is durable (`sync_through`) before it shows the message to anyone: what a reader saw
    /// must not vanish in a crash.
    pub fn get_with_offset(&self, id: &[u8]) -> Result<Option<(Offset, Vec<u8>)>> {
        let st = self.shared.read();
        let Some(at) = st.locate(id) else {
            return Ok(None);
        };
        let record = st.record_at(&self.shared.config, at)?;
        if record.id != id {
            return Err(st.corruption(at, "ID index points at another ID's record"));
        }
        Ok(Some((record.offset, record.message.to_vec())))
    }

    /// Calls `f` with every live ID and its latest message, CRC-checked, in no particular
    /// order, holding the read lock throughout (writers wait).
    pub fn for_each_live<E: From<StorageError>>(
        &self,
        mut f: impl FnMut(&[u8], &[u8]) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let st = self.shared.read();
        for at in st.ids.positions() {
            let record = st.record_at(&self.shared.config, at)?;
            f(record.id, record.message)?;
        }
        Ok(())
    }

    /// One step of a scan over the live IDs in log order: calls `f` with each ID whose
    /// latest record lies at or after `from`, looking at about `max_records` records.
    /// Returns where the next step starts and the offset of the newest record it looked at,
    /// or `None` for the first once the log's end is reached. An ID written again while a
    /// scan runs moves ahead of the scan, so every ID live throughout is seen at least once.
    pub fn scan_ids(
        &self,
        from: Offset,
        max_records: usize,
        mut f: impl FnMut(&[u8]),
    ) -> Result<(Option<Offset>, Option<Offset>)> {
        let config = &self.shared.config;
        let st = self.shared.read();
        let (mut next, mut newest, mut looked) = (from, None, 0);
        loop {
            let chunk = st.read_from(config, next, SCAN_CHUNK_BYTES)?;
            if chunk.bytes.is_empty() {
                return Ok((None, newest));
            }
            for record in chunk.records() {
                // Chunks are CRC-checked when read, so this would be a bug, not the disk.
                let record = record.map_err(|(position, reason)| StorageError::InvalidBatch {
                    position,
                    reason: format!("scanning from offset {next}: {reason}"),
                })?;
                newest = Some(record.offset);
                let latest = st.locate(record.id).map(|at| st.record_at(config, at)).transpose()?;
                if record.kind == RecordKind::Set && latest.is_some_and(|latest| latest.offset == record.offset) {
                    f(record.id);
                }
                looked += 1;
                if looked >= max_records {
                    return Ok((Some(record.offset + 1), newest));
                }
            }
            next = chunk.next;
        }
    }

    pub fn contains(&self, id: &[u8]) -> bool {
        self.shared.read().locate(id).is_some()
    }

    /// Whole records from the first one at or after `offset`, about `max_bytes` of them
    /// (at least one record if any is there), never crossing a segment. An empty chunk
    /// means the log holds nothing from `offset` yet.
    pub fn read_from(&self, offset: Offset, max_bytes: usize) -> Result<Chunk> {
        let st = self.shared.read();
        // A follower's first segment may hold records below its log start: not served.
        st.read_from(&self.shared.config, offset.max(st.retention.recorded_start), max_bytes)
    }

    /// Every chunk from `offset` to the log's current end, as `read_from` returns them
    /// (each about `max_bytes`, never crossing a segment); stops after the first error.
    pub fn chunks_from(&self, offset: Offset, max_bytes: usize) -> impl Iterator<Item = Result<Chunk>> + '_ {
        let mut next = Some(offset);
        std::iter::from_fn(move || {
            let chunk = self.read_from(next?, max_bytes);
            next = match &chunk {
                Ok(c) if !c.bytes.is_empty() => Some(c.next),
                _ => None,
            };
            chunk.map_or_else(|e| Some(Err(e)), |c| (!c.bytes.is_empty()).then_some(Ok(c)))
        })
    }

    /// Appends records received from a leader, verbatim, after checking every CRC and
    /// that their offsets continue this log. Returns the last offset appended. `bytes` must
    /// hold whole atomic batches (as `read_from` returns them): its last record must end
    /// one, and each batch is kept in one segment.
    pub fn append_raw(&self, bytes: &[u8]) -> Result<Option<Offset>> {
        let mut st = self.shared.write();
        st.check_writable()?;
        let max = self.shared.config.max_record_bytes as usize;
        // Check the whole batch before appending any of it, decoding (and CRC-checking)
        // each record once.
        let mut expected = st.next_offset;
        let mut records = Vec::new();
        let mut position = 0;
        for item in Records::new(bytes, max) {
            let r =
                item.map_err(|(position, reason)| StorageError::InvalidBatch { position, reason: reason.into() })?;
            if r.offset < expected {
                let reason = format!("offset {} is below the log's next offset {expected}", r.offset);
                return Err(StorageError::InvalidBatch { position, reason });
            }
            expected = next_after(r.offset)?;
            position += r.framed_len();
            records.push(r);
        }
        if records.last().is_some_and(|r| r.continues) {
            let reason = "the last record does not end its atomic batch".to_string();
            return Err(StorageError::InvalidBatch { position, reason });
        }
        // A batch is bounded like one written here: the active segment's mapping has room
        // for one record limit past `--segment-bytes`, and a batch never spans two segments.
        let mut position = 0;
        for i in 0..records.len() {
            match super::batch::bytes_of_batch_starting_at(&records, i) {
                Some(size) if size > max => {
                    let reason = format!("an atomic batch of {size} bytes exceeds this log's limit of {max} bytes");
                    return Err(StorageError::InvalidBatch { position, reason });
                }
                _ => position += records[i].framed_len(),
            }
        }
        let mut position = 0;
        for (i, r) in records.iter().enumerate() {
            let len = r.framed_len();
            let batch_bytes = super::batch::bytes_of_batch_starting_at(&records, i);
            st.append_framed(&self.shared, r, &bytes[position..position + len], batch_bytes)?;
            position += len;
        }
        Ok(records.last().map(|r| r.offset))
    }

    /// Removes every record at or after `offset` (a follower dropping a divergent tail),
    /// durably, and rebuilds the ID index so older values of those IDs show again.
    pub fn truncate_to(&self, offset: Offset) -> Result<()> {
        let mut st = self.shared.write();
        st.check_writable()?;
        if offset >= st.next_offset {
            return Ok(());
        }
        st.truncations += 1;
        self.shared.commit.truncations.fetch_add(1, Ordering::AcqRel);
        if let Err(e) = st.truncate_to(&self.shared, offset) {
            return Err(st.fail(format!("truncation failed: {e}")));
        }
        self.shared.commit.reset(st.next_offset);
        Ok(())
    }

    /// Blocks until every record up to `offset` is durable per the policy: fsynced under
    /// `Always` (concurrent callers share one fsync), written to the OS otherwise. Records
    /// a truncation cut are not waited for: a caller waiting for its own record compares
    /// [`Log::durable_offset`] (or [`Log::truncations`]) after.
    pub fn sync_through(&self, offset: Offset) -> Result<()> {
        match self.shared.config.fsync {
            FsyncPolicy::Always => self.shared.sync_through(offset),
            _ => self.shared.flush_through(offset),
        }
    }

    /// Writes and fsyncs everything appended so far, whatever the policy.
    pub fn sync(&self) -> Result<()> {
        let next = self.shared.read().next_offset;
        match next.checked_sub(1) {
            Some(last) => self.shared.sync_through(last),
            None => Ok(()),
        }
    }

    /// Shares this log's fsyncs under `--fsync always` with the other logs in `group`
    /// from now on (see [`SyncGroup`]). A group holds logs of its own directory's device,
    /// and a log joins one group, once: `false` if this one stays alone.
    pub fn join_sync_group(&self, group: &Arc<SyncGroup>) -> Result<bool> {
        use std::os::unix::fs::MetadataExt;
        let device = std::fs::metadata(&self.shared.dir)?.dev();
        Ok(group.admits(device, &self.shared.fs) && self.shared.sync_group.set(Arc::clone(group)).is_ok() && {
            group.joined(&self.shared);
            true
        })
    }

    /// Puts this log in its sync group's next round without waiting (a no-op outside a
    /// group): a caller about to sync several logs one after another queues them all
    /// first, so that the first sync's round makes them all durable with one call.
    pub fn queue_for_sync(&self) {
        if let Some(group) = self.shared.sync_group.get() {
            group.enqueue(&self.shared);
        }
    }

    /// How the sync group this log joined shares its rounds, if it joined one.
    pub fn sync_group_stats(&self) -> Option<super::SyncGroupStats> {
        self.shared.sync_group.get().map(|group| group.stats())
    }

    /// Truncations that cut records since the log was opened. A record appended or read
    /// before this count changed may be gone, another at its offset: whoever waits for it
    /// to be committed by offset reads the count first and compares it after.
    pub fn truncations(&self) -> u64 {
        self.shared.commit.truncations.load(Ordering::Acquire)
    }

    /// Offset the next appended record gets.
    pub fn next_offset(&self) -> Offset {
        self.shared.read().next_offset
    }

    /// Offset of the log's first record (the next offset when it is empty).
    pub fn start_offset(&self) -> Result<Offset> {
        super::epoch::start_offset(&self.shared.read(), &self.shared.config)
    }

    /// Offset and epoch of the last record, if any.
    pub fn last_record(&self) -> Option<(Offset, Epoch)> {
        self.shared.read().last
    }

    /// Every record below this offset is durable per the fsync policy (fsynced under
    /// `Always`, written to the OS otherwise). It goes down when a truncation cuts the log.
    pub fn durable_offset(&self) -> Offset {
        match self.shared.config.fsync {
            FsyncPolicy::Always => self.shared.commit.durable.load(Ordering::Acquire),
            _ => self.shared.commit.flushed.load(Ordering::Acquire),
        }
    }

    pub fn stats(&self) -> LogStats {
        let st = self.shared.read();
        let bytes = st.sealed.iter().map(|s| s.map.len() as u64).sum::<u64>() + st.active.len();
        let durable_offset = self.durable_offset();
        LogStats {
            records: st.records,
            ids: st.ids.len() as u64,
            segments: st.sealed.len() as u64 + 1,
            bytes,
            next_offset: st.next_offset,
            durable_offset,
            epoch: st.epoch.max(st.persisted_epoch),
            fsyncs: self.shared.commit.fsyncs.load(Ordering::Relaxed),
        }
    }

    /// Heap bytes of the ID index, for memory reports.
    pub fn id_index_bytes(&self) -> usize {
        self.shared.read().ids.heap_bytes()
    }

    /// Writes and fsyncs everything, stops background work and releases the lock.
    pub fn close(mut self) -> Result<()> {
        if let Some(s) = self.syncer.take() {
            s.stop();
        }
        if self.shared.read().failed.is_some() {
            return Ok(());
        }
        self.sync()?;
        // Leave the watermark exact, so the next open checks every byte against it, and
        // the file without preallocated zeros.
        let mut st = self.shared.write();
        if let Err(e) = st.active.finish() {
            let why = format!("closing {} failed: {e}", st.active.path.display());
            return Err(st.fail(why));
        }
        Ok(())
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        if let Some(s) = self.syncer.take() {
            s.stop();
        }
        // Best effort for a log dropped without `close`: hand buffered bytes to the OS.
        let mut st = self.shared.write();
        if st.failed.is_none()
            && let Err(e) = st.active.flush()
        {
            tracing::error!(error = %e, "flushing the log on drop failed");
        }
    }
}

fn validate(config: &Config) -> Result<()> {
    let invalid =
        |why: &str| Err(StorageError::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, why.to_string())));
    if config.segment_bytes < (HEADER_LEN + RECORD_OVERHEAD) as u64 {
        return invalid("segment size too small");
    }
    if config.segment_bytes + config.max_record_bytes as u64 > u32::MAX as u64 {
        return invalid("segment size plus record limit must stay under 4 GiB");
    }
    if (config.max_record_bytes as usize) < RECORD_OVERHEAD + 1 {
        return invalid("record limit too small");
    }
    Ok(())
}

/// The offset after `offset`, refusing to wrap.
pub(super) fn next_after(offset: Offset) -> Result<Offset> {
    offset.checked_add(1).ok_or(StorageError::Overflow { what: "record offset", value: offset })
}

pub(super) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Shared {
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Fsyncs through `offset`: in the log's group if it joined one, on its own otherwise.
    pub(super) fn sync_through(self: &Arc<Self>, offset: Offset) -> Result<()> {
        match self.sync_group.get() {
            Some(group) => group.sync_through(self, offset),
            None => self.commit.sync_through(self, offset),
        }
    }

    /// Writes the buffer to the OS if `offset` is still in it.
    fn flush_through(&self, offset: Offset) -> Result<()> {
        if self.commit.flushed.load(Ordering::Acquire) > offset {
            return Ok(());
        }
        let mut st = self.write();
        st.failure_for(offset)?;
        st.flush(self).map(|_| ())
    }
}
