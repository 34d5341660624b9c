//! The log's mutable state and the operations that run under its lock.

use std::sync::atomic::Ordering;

use super::id_index::{Position, id_of};
use super::log::{Chunk, Failure, Shared, State, now_ms};
use super::manifest;
use super::offset_index::{OffsetIndex, relative};
use super::record::{self, Decoded, RecordKind, RecordRef, decode, peek};
use super::recovery::{self, ScanInput, drop_segments, reserve};
use super::segment::{ActiveSegment, HEADER_LEN, SealedSegment};
use super::{Config, Offset, Result, StorageError};

impl State {
    pub fn check_writable(&self) -> Result<()> {
        match &self.failed {
            Some(failure) => Err(StorageError::Failed(failure.why.clone())),
            None => Ok(()),
        }
    }

    /// Refuses writes from now on, and returns the error for the write that hit the
    /// failure. The first reason is kept: it is the root cause.
    pub fn fail(&mut self, why: String) -> StorageError {
        if self.failed.is_none() {
            tracing::error!(reason = %why, "storage failed; refusing writes from now on (reads continue)");
            self.failed = Some(Failure { why: why.clone(), at: self.next_offset });
            return StorageError::Failure(why);
        }
        self.check_writable().expect_err("the log has failed")
    }

    /// The error for a caller waiting on `offset` once the log has failed: the failure
    /// itself for a record appended before it (its write is what failed), "read-only"
    /// for later ones. `Ok` if the log has not failed.
    pub fn failure_for(&self, offset: Offset) -> Result<()> {
        match &self.failed {
            Some(failure) if offset < failure.at => Err(StorageError::Failure(failure.why.clone())),
            Some(failure) => Err(StorageError::Failed(failure.why.clone())),
            None => Ok(()),
        }
    }

    pub fn append(&mut self, shared: &Shared, kind: RecordKind, id: &[u8], message: &[u8]) -> Result<Offset> {
        self.check_writable()?;
        let len = record::framed_len(id, message);
        let max = shared.config.max_record_bytes as usize;
        if len > max || id.len() > u16::MAX as usize {
            return Err(StorageError::RecordTooLarge { size: len, max });
        }
        let offset = self.next_offset;
        self.before_append(shared, offset, len)?;
        let position = self.active.len();
        let timestamp = now_ms();
        record::encode(&mut self.active.buffer, offset, self.epoch, timestamp, kind, id, message);
        self.after_append(shared, kind, id, (offset, self.epoch, timestamp), position)?;
        self.flush_if_full(shared)?;
        Ok(offset)
    }

    /// Appends `writes` as one atomic batch (see `record`'s batch flag): all of them or,
    /// on an error, none. The batch is kept in one segment (it rolls first if needed) and
    /// the write buffer is not flushed inside it, so nothing can fail half-way. Returns
    /// the last offset, `None` for an empty batch.
    pub fn append_batch(&mut self, shared: &Shared, writes: &[(RecordKind, &[u8], &[u8])]) -> Result<Option<Offset>> {
        self.check_writable()?;
        let max = shared.config.max_record_bytes as usize;
        let total: usize = writes.iter().map(|(_, id, message)| record::framed_len(id, message)).sum();
        // The active segment's read mapping has room for one record limit past
        // `--segment-bytes`, so that is also the most one batch may take.
        if total > max {
            return Err(StorageError::BatchTooLarge { size: total, max });
        }
        debug_assert!(writes.iter().all(|(_, id, _)| !id.is_empty() && id.len() <= u16::MAX as usize));
        let Some(last) = writes.len().checked_sub(1) else { return Ok(None) };
        self.before_append(shared, self.next_offset, total)?;
        let (epoch, timestamp) = (self.epoch, now_ms());
        for (i, &(kind, id, message)) in writes.iter().enumerate() {
            let offset = self.next_offset;
            let position = self.active.len();
            record::encode_in_batch(&mut self.active.buffer, offset, epoch, timestamp, kind, id, message, i < last);
            self.after_append(shared, kind, id, (offset, epoch, timestamp), position)?;
        }
        let last_offset = self.next_offset - 1;
        self.flush_if_full(shared)?;
        Ok(Some(last_offset))
    }

    /// Appends one verified record's bytes verbatim (a follower copying its leader).
    /// `batch_bytes` is given for the first record of a batch: the whole batch's length,
    /// so that a roll happens before the batch, never inside it.
    pub fn append_framed(
        &mut self,
        shared: &Shared,
        r: &RecordRef<'_>,
        framed: &[u8],
        batch_bytes: Option<usize>,
    ) -> Result<()> {
        if let Some(batch_bytes) = batch_bytes {
            self.before_append(shared, r.offset, batch_bytes)?;
        }
        let position = self.active.len();
        self.active.buffer.extend_from_slice(framed);
        self.after_append(shared, r.kind, r.id, (r.offset, r.epoch, r.timestamp_ms), position)?;
        // Only between batches: a write that failed mid-batch would leave half of it in
        // the ID index of a log that keeps serving reads.
        match r.continues {
            true => Ok(()),
            false => self.flush_if_full(shared),
        }
    }

    fn flush_if_full(&mut self, shared: &Shared) -> Result<()> {
        if self.active.buffer.len() >= shared.config.write_buffer_bytes {
            self.flush(shared)?;
        }
        Ok(())
    }

    /// Rolls to a new segment if this record would overflow the active one.
    ///
    /// Running out of file descriptors (EMFILE, ENFILE) refuses only this append: the
    /// roll changes nothing it cannot redo, so the next append retries it. Any other
    /// roll error fails the log.
    fn before_append(&mut self, shared: &Shared, offset: Offset, len: usize) -> Result<()> {
        let active = &self.active;
        let full = active.len() + len as u64 > shared.config.segment_bytes;
        let too_far = offset - active.base > u32::MAX as u64;
        if active.last_offset.is_some()
            && (full || too_far)
            && let Err(e) = self.roll(shared, offset)
        {
            let e = match e {
                StorageError::Io(io)
                    if self.failed.is_none() && matches!(io.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) =>
                {
                    tracing::warn!(error = %io, "rolling to a new segment failed; the next append retries");
                    return Err(StorageError::RollRefused(io));
                }
                e => e,
            };
            return Err(self.fail(format!("rolling to a new segment failed: {e}")));
        }
        Ok(())
    }

    fn after_append(
        &mut self,
        shared: &Shared,
        kind: RecordKind,
        id: &[u8],
        (offset, epoch, timestamp_ms): (Offset, super::Epoch, i64),
        position: u64,
    ) -> Result<()> {
        let active = &mut self.active;
        if position - active.last_indexed >= shared.config.index_interval_bytes as u64 {
            active.index.push(relative(active.base, offset), position as u32);
            active.last_indexed = position;
        }
        active.last_offset = Some(offset);
        active.figures.count(timestamp_ms);
        let at = Position { segment: self.sealed.len() as u32, position: position as u32 };
        let id_at = |p| id_of(bytes_at(&self.sealed, &self.active, p));
        match kind {
            RecordKind::Set => self.ids.set(id, at, id_at),
            RecordKind::Delete => {
                self.ids.remove(id, id_at);
            }
        }
        self.last = Some((offset, epoch));
        self.next_offset = super::log::next_after(offset)?;
        self.records += 1;
        Ok(())
    }

    /// Seals the active segment (flushed, fsynced, index written) and starts a new one
    /// at `base`. Every fallible step runs before the state changes, so a failure leaves
    /// the old segment active and readable.
    ///
    /// Order matters for a crash part way: the old segment is made whole (its watermark
    /// exact, its preallocated zeros cut off) and the new file created durably before the
    /// manifest lists it, so recovery finds either the old chain plus a leftover file
    /// holding no record, or the new one.
    /// Every step can be redone, so a roll refused for want of file descriptors is
    /// retried by the next append.
    pub(super) fn roll(&mut self, shared: &Shared, base: Offset) -> Result<()> {
        self.flush(shared)?;
        self.active.finish()?;
        let fs = shared.fs.as_ref();
        let index_path = super::segment::index_path(&shared.dir, self.active.base);
        // Sealed from a copy, so a failure leaves the active segment's index intact.
        let index = match &self.active.index {
            OffsetIndex::Building(entries) => OffsetIndex::Building(entries.clone()).seal(fs, &index_path)?,
            _ => OffsetIndex::Empty,
        };
        let old = &self.active;
        let sealed = SealedSegment::open(old.path.clone(), old.base, old.written, index, old.last_offset, old.figures)?;
        let fresh = ActiveSegment::create(shared.fs.clone(), &shared.dir, base, reserve(&shared.config, 0))?;
        let bases: Vec<Offset> = self.sealed.iter().map(|s| s.base).chain([old.base, base]).collect();
        manifest::write(fs, &shared.dir, &bases, self.retention.recorded_start)?;
        self.active = fresh;
        self.sealed.push(sealed);
        Ok(())
    }

    /// Writes the buffer to the OS. Returns the offset below which everything is written.
    pub fn flush(&mut self, shared: &Shared) -> Result<Offset> {
        self.check_writable()?;
        if let Err(e) = self.active.flush() {
            return Err(self.fail(format!("write to {} failed: {e}", self.active.path.display())));
        }
        shared.commit.flushed.fetch_max(self.next_offset, Ordering::AcqRel);
        Ok(self.next_offset)
    }

    /// Where the latest record of `id` lies, if `id` is live.
    pub fn locate(&self, id: &[u8]) -> Option<Position> {
        self.ids.get(id, |p| id_of(bytes_at(&self.sealed, &self.active, p)))
    }

    pub fn record_at(&self, config: &Config, at: Position) -> Result<RecordRef<'_>> {
        let max = config.max_record_bytes as usize;
        match decode(bytes_at(&self.sealed, &self.active, at), max) {
            Decoded::Record(r, _) => Ok(r),
            Decoded::Incomplete => Err(self.corruption(at, "truncated record")),
            Decoded::Invalid(reason) => Err(self.corruption(at, reason)),
        }
    }

    pub fn corruption(&self, at: Position, reason: &str) -> StorageError {
        let segment = match self.sealed.get(at.segment as usize) {
            Some(s) => s.path.clone(),
            None => self.active.path.clone(),
        };
        StorageError::Corruption { segment, position: at.position as u64, reason: reason.into() }
    }

    pub fn read_from(&self, config: &Config, offset: Offset, max_bytes: usize) -> Result<Chunk> {
        let max = config.max_record_bytes as usize;
        if offset >= self.next_offset {
            return Ok(Chunk { bytes: Vec::new(), next: offset });
        }
        // The last segment whose base is at or below `offset` (or the first one).
        let bases = self.sealed.iter().map(|s| s.base).chain(std::iter::once(self.active.base));
        let first = bases.clone().take_while(|&b| b <= offset).count().saturating_sub(1);
        let count = self.sealed.len() + 1;
        for segment in first..count {
            let (parts, base, index) = match self.sealed.get(segment) {
                Some(s) => ([&s.map[..], &[][..]], s.base, &s.index),
                None => {
                    let (file, buffer) = self.active.tail(0);
                    ([file, buffer], self.active.base, &self.active.index)
                }
            };
            let from = match offset.checked_sub(base) {
                Some(rel) => index.floor(rel).map_or(HEADER_LEN, |p| p as usize),
                None => HEADER_LEN,
            };
            let chunk = collect(&parts, from, offset, max_bytes, max).map_err(|(position, reason)| {
                self.corruption(Position { segment: segment as u32, position: position as u32 }, reason)
            })?;
            if let Some(chunk) = chunk {
                return Ok(chunk);
            }
        }
        Ok(Chunk { bytes: Vec::new(), next: self.next_offset })
    }

    pub fn truncate_to(&mut self, shared: &Shared, offset: Offset) -> Result<()> {
        if offset >= self.next_offset {
            return Ok(());
        }
        self.flush(shared)?;
        // Segments that start at or after `offset` go, except the first one.
        let bases: Vec<Offset> = self.sealed.iter().map(|s| s.base).chain(std::iter::once(self.active.base)).collect();
        let keep = bases.iter().take_while(|&&b| b < offset).count().max(1);
        if keep < bases.len() {
            let reopen = self.sealed.drain(keep - 1..).next().expect("a sealed segment is kept");
            let len = reopen.map.len() as u64;
            let (path, base, last) = (reopen.path.clone(), reopen.base, reopen.last_offset);
            drop(reopen);
            let log_start = self.retention.recorded_start;
            drop_segments(shared.fs.as_ref(), &shared.dir, (&bases[..keep], log_start), &bases[keep..])?;
            let index = OffsetIndex::Building(Vec::new());
            let reserve = reserve(&shared.config, len);
            // A sealed segment's watermark is its exact length.
            self.active = ActiveSegment::open(shared.fs.clone(), path, base, len, len, reserve, index, last)?;
        }
        // Cut the active segment at the first record at or after `offset`.
        let (file, _) = self.active.tail(0);
        let mut cut = HEADER_LEN;
        while let Some((len, at)) = peek(&file[cut..]) {
            if at >= offset {
                break;
            }
            cut += len;
        }
        self.active.truncate(cut as u64)?;
        // Records re-appended above the cut were never cleaned against each other.
        if offset < self.compaction.cleaned {
            self.compaction.set_clean_point(shared.fs.as_ref(), &shared.dir, offset);
        }
        self.rebuild_indexes(shared)
    }

    /// Rescans every segment to rebuild the ID index and the active offset index.
    pub(super) fn rebuild_indexes(&mut self, shared: &Shared) -> Result<()> {
        self.ids.clear();
        self.records = 0;
        let mut prev = None;
        let mut last = None;
        for (i, s) in self.sealed.iter().enumerate() {
            let mut unused = OffsetIndex::Empty;
            let config = &shared.config;
            let hidden_below = self.retention.recorded_start;
            let input =
                ScanInput { bytes: &s.map, base: s.base, segment: i as u32, after: prev, visit: None, hidden_below };
            let scan = recovery::scan(input, &mut self.ids, &mut unused, config, &self.sealed);
            self.records += scan.records;
            prev = scan.last_offset.or(prev);
            last = scan.last_offset.zip(scan.last_epoch).or(last);
        }
        let mut index = OffsetIndex::Building(Vec::new());
        let (file, _) = self.active.tail(0);
        let segment = self.sealed.len() as u32;
        let config = &shared.config;
        let scan = {
            let hidden_below = self.retention.recorded_start;
            let input =
                ScanInput { bytes: file, base: self.active.base, segment, after: prev, visit: None, hidden_below };
            recovery::scan(input, &mut self.ids, &mut index, config, &self.sealed)
        };
        if let Some((position, reason)) = scan.damage {
            return Err(self.corruption(Position { segment, position: position as u32 }, reason));
        }
        self.records += scan.records;
        self.active.index = index;
        self.active.last_indexed = scan.last_indexed;
        self.active.last_offset = scan.last_offset;
        self.active.figures = scan.figures;
        self.last = scan.last_offset.zip(scan.last_epoch).or(last);
        self.next_offset = self.last.map_or(self.active.base, |(o, _)| o + 1);
        Ok(())
    }
}

/// Bytes from a record's position to the end of the segment (or buffer) it lies in.
fn bytes_at<'a>(sealed: &'a [SealedSegment], active: &'a ActiveSegment, at: Position) -> &'a [u8] {
    match sealed.get(at.segment as usize) {
        Some(s) => &s.map[at.position as usize..],
        None => active.slice(at.position as u64),
    }
}

/// Copies whole, CRC-checked records starting with the first at or after `offset`, from
/// a segment given as up to two parts (file bytes, then buffered bytes; records never
/// straddle them). `None` if the segment holds no such record. The chunk ends only
/// between atomic batches (a batch may carry it past `max_bytes`), so a follower that
/// appends chunks always appends whole batches.
fn collect(
    parts: &[&[u8]; 2],
    from: usize,
    offset: Offset,
    max_bytes: usize,
    max: usize,
) -> std::result::Result<Option<Chunk>, (usize, &'static str)> {
    let mut out = Vec::new();
    let mut next = None;
    let mut inside_batch = false;
    let mut part_start = 0;
    for part in parts {
        let mut pos = from.saturating_sub(part_start);
        while pos < part.len() {
            let Some((len, at)) = peek(&part[pos..]) else {
                return Err((part_start + pos, "truncated record"));
            };
            // Records skipped on the way to `offset` are not CRC-checked, so a damaged
            // length must at least not carry the scan past the segment's end: that would
            // quietly skip the rest of it.
            if len > part.len() - pos {
                return Err((part_start + pos, "record length runs past the end of the segment"));
            }
            if at >= offset {
                if !out.is_empty() && !inside_batch && out.len() + len > max_bytes {
                    return Ok(Some(Chunk { bytes: out, next: next.unwrap_or(offset) }));
                }
                match decode(&part[pos..], max) {
                    Decoded::Record(r, _) => {
                        next = Some(r.offset + 1);
                        inside_batch = r.continues;
                    }
                    Decoded::Incomplete => return Err((part_start + pos, "truncated record")),
                    Decoded::Invalid(reason) => return Err((part_start + pos, reason)),
                }
                out.extend_from_slice(&part[pos..pos + len]);
            }
            pos += len;
        }
        part_start += part.len();
    }
    Ok(next.map(|next| Chunk { bytes: out, next }))
}

#[cfg(test)]
mod tests {
    use super::collect;
    use crate::storage::record::{RecordKind, encode};

    #[test]
    fn a_skipped_record_whose_length_runs_past_the_segment_is_an_error_not_an_empty_read() {
        let mut segment = Vec::new();
        for offset in 0..3 {
            encode(&mut segment, offset, 1, 0, RecordKind::Set, b"id", b"message");
        }
        let whole = collect(&[&segment, &[]], 0, 2, 1 << 20, 1 << 20).unwrap().expect("record 2");
        assert_eq!(whole.next, 3);
        // Record 0 is only skipped on the way to offset 2, so its CRC is never checked.
        segment[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = collect(&[&segment, &[]], 0, 2, 1 << 20, 1 << 20).unwrap_err();
        assert_eq!(err, (0, "record length runs past the end of the segment"));
    }
}
