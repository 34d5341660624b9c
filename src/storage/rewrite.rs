//! The cleaner's heavy I/O, done without the log's lock: reading segments, deciding which
//! records survive, and writing the cleaned files (see [`cleaner`](super::cleaner)).
//!
//! Segments are read with positioned reads, never through fresh mappings: a truncation
//! that raced the pass could shrink a mapped file under us (SIGBUS), while a short or odd
//! read only makes the pass fail, or be abandoned when the swap sees the truncation.
//! Sealed segments are opened by name one at a time as the pass reaches them (only the
//! cleaner renames or deletes sealed files, and passes do not overlap), so a long log does
//! not take a file descriptor per segment.
//!
//! Memory: the pass holds every ID written since the clean point (its bytes and 32 bytes
//! of table each), one bit per record read since it, and one output segment (up to
//! `--segment-bytes`) at a time.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use super::fs::FileSystem;
use super::offset_index::{OffsetIndex, relative};
use super::record::{BATCH_CONTINUES, Decoded, FRAME_HEADER, RecordKind, RecordRef, Records, decode};
use super::segment::{Figures, HEADER_LEN, SealedSegment, header, index_path, segment_path};
use super::{Config, Offset, Result, StorageError};

mod latest;

pub(super) use latest::{Latest, latest_offsets};

/// Bytes read per positioned read.
const READ_CHUNK: usize = 1 << 20;

/// A segment as the pass sees it: a handle opened under the lock and how much of it counts.
pub(super) struct Input {
    pub base: Offset,
    pub path: PathBuf,
    /// The active segment's handle; a sealed segment is opened by `path` when read.
    pub file: Option<Arc<File>>,
    /// Bytes of the file that hold records (header included).
    pub len: u64,
    pub last_offset: Option<Offset>,
    /// Records still in the active segment's write buffer, after the file's bytes.
    pub buffered: Vec<u8>,
}

/// Paces the pass to `--cleaner-mb-per-sec` and tells it when to give up (the cleaner is
/// stopping).
pub(crate) trait Pace {
    /// Counts `bytes` of I/O done; returns false once the pass should stop.
    fn pace(&mut self, bytes: u64) -> bool;
}

/// Calls `f` with every record of `input` in order, with its framed bytes and position.
/// `f` returns false to stop early.
pub(super) fn for_each_record(
    input: &Input,
    max: usize,
    mut f: impl FnMut(&RecordRef<'_>, &[u8], u64) -> bool,
) -> Result<()> {
    let file = match &input.file {
        Some(file) => Arc::clone(file),
        None => Arc::new(File::open(&input.path)?),
    };
    // `buf[..filled]` holds file bytes from `start`; the buffer is reused, not refilled
    // with zeros per chunk.
    let mut buf: Vec<u8> = Vec::new();
    let mut filled = 0;
    let mut start = HEADER_LEN as u64;
    let mut at = 0;
    loop {
        let need_more = match decode(&buf[at..filled], max) {
            Decoded::Record(r, len) => {
                if !f(&r, &buf[at..at + len], start + at as u64) {
                    return Ok(());
                }
                at += len;
                false
            }
            Decoded::Incomplete => true,
            Decoded::Invalid(reason) => return Err(damage(&input.path, start + at as u64, reason)),
        };
        if !need_more {
            continue;
        }
        let position = start + at as u64;
        let file_end = start + filled as u64;
        if file_end >= input.len {
            if position < input.len {
                return Err(damage(&input.path, position, "truncated record"));
            }
            break;
        }
        buf.copy_within(at..filled, 0);
        filled -= at;
        (start, at) = (position, 0);
        let wanted = match filled >= FRAME_HEADER {
            true => FRAME_HEADER + u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize,
            false => 0,
        };
        let more = ((input.len - file_end) as usize).min(READ_CHUNK.max(wanted.min(max)));
        if buf.len() < filled + more {
            buf.resize(filled + more, 0);
        }
        file.read_exact_at(&mut buf[filled..filled + more], file_end)?;
        filled += more;
    }
    for (i, record) in Records::new(&input.buffered, max).enumerate() {
        let r = record.map_err(|(p, reason)| damage(&input.path, input.len + p as u64, reason))?;
        // Positions past the file are never used by the pass: only the ID map reads these.
        if !f(&r, &[], input.len + i as u64) {
            break;
        }
    }
    Ok(())
}

fn damage(path: &Path, position: u64, reason: &str) -> StorageError {
    StorageError::Corruption { segment: path.to_path_buf(), position, reason: reason.into() }
}

/// What decides a record's fate (see `docs/FORMAT.md`, "Compaction").
pub(super) struct Rules<'a> {
    pub latest: &'a Latest,
    pub clean_point: Offset,
    /// Records below the log start are not part of the log (a follower's first segment
    /// may begin below its leader's log start): always dropped, and not counted as
    /// dropped, since the log never counted them.
    pub log_start: Offset,
    /// The last record of each leader epoch, ascending: always kept.
    pub epoch_lasts: &'a [Offset],
    /// The IDs of those of epochs a later one closed, sorted: a tombstone of one of them is
    /// never dropped, or the epoch's last record, kept though the tombstone deleted it,
    /// would bring the ID back at the next open.
    pub epoch_last_ids: &'a [Vec<u8>],
    pub tombstone_horizon: Offset,
    /// Tombstones written at or before this (ms since the Unix epoch) are past retention,
    /// so a retention of 0 drops every tombstone below the horizon.
    pub tombstones_before_ms: i64,
}

impl Rules<'_> {
    /// `superseded`: a newer record of the ID lies below `upto`.
    fn keeps(&self, r: &RecordRef<'_>, superseded: bool) -> bool {
        if self.epoch_lasts.binary_search(&r.offset).is_ok() {
            return true;
        }
        if superseded {
            return false;
        }
        let expired = r.offset < self.tombstone_horizon && r.timestamp_ms <= self.tombstones_before_ms;
        let shields_epoch_last = || self.epoch_last_ids.binary_search_by(|id| id.as_slice().cmp(r.id)).is_ok();
        !(r.kind == RecordKind::Delete && expired && !shields_epoch_last())
    }
}

/// One input segment's surviving records.
struct Filtered {
    bytes: Vec<u8>,
    /// Per kept record: old position, position in `bytes`, offset.
    kept: Vec<(u32, u32, Offset)>,
    /// Of the kept records.
    figures: Figures,
    dropped: u64,
    changed: bool,
}

fn filter(input: &Input, rules: &Rules<'_>, max: usize) -> Result<Filtered> {
    let mut out =
        Filtered { bytes: Vec::new(), kept: Vec::new(), figures: Figures::default(), dropped: 0, changed: false };
    // The last kept record of the batch being read: if the batch's later records are all
    // dropped, it must end the batch instead, or recovery would take it for a torn one.
    let mut last_kept_in_batch: Option<(usize, usize)> = None;
    let (first, in_range) = rules.latest.segment(input.base);
    let mut place = first;
    for_each_record(input, max, |r, framed, position| {
        let superseded = if r.offset < rules.clean_point {
            rules.latest.holds(r.id)
        } else {
            // The same records, in the same order, as `latest_offsets` read (a truncation
            // meanwhile abandons the pass); one beyond them is kept, which is always safe.
            place += 1;
            place <= first + in_range && rules.latest.is_superseded(place - 1)
        };
        let below_start = r.offset < rules.log_start;
        if !below_start && rules.keeps(r, superseded) {
            let at = out.bytes.len();
            out.bytes.extend_from_slice(framed);
            out.kept.push((position as u32, at as u32, r.offset));
            out.figures.count(r.timestamp_ms);
            last_kept_in_batch = r.continues.then_some((at, framed.len()));
        } else {
            out.dropped += u64::from(!below_start);
            out.changed = true;
            if !r.continues
                && let Some((at, len)) = last_kept_in_batch.take()
            {
                end_batch(&mut out.bytes[at..at + len]);
            }
        }
        if !r.continues {
            last_kept_in_batch = None;
        }
        true
    })?;
    Ok(out)
}

/// Clears a framed record's batch flag and recomputes its CRC. Safe only below the
/// committed point: the batch's other records are committed too, so none can be torn.
fn end_batch(framed: &mut [u8]) {
    const KIND_AT: usize = FRAME_HEADER + 20;
    framed[KIND_AT] &= !BATCH_CONTINUES;
    let crc = crc32fast::hash(&framed[FRAME_HEADER..]);
    framed[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// A run of adjacent input segments that becomes one segment.
pub(super) struct Group {
    pub base: Offset,
    /// Base of the first segment after the group (which the group does not replace).
    pub end: Offset,
    pub inputs: Range<usize>,
    /// Per input: its kept records' (old position, new position), by old position.
    pub moved: Vec<Vec<(u32, u32)>>,
    /// The written segment, mapped from its `.cleaned` file; `None` when the group is one
    /// input left as it was.
    pub new: Option<SealedSegment>,
    pub bytes_out: u64,
    pub kept: u64,
    pub dropped: u64,
}

/// The cleaned form of `prefix` (sealed segments, in order, all below the clean point's
/// `upto`): groups of adjacent segments, each written to `<base>.log.cleaned` and fsynced
/// unless it is one segment that lost nothing. `next_base` is the base after the prefix.
/// `None` if the pacer said stop (files written so far are removed).
pub(super) fn rewrite(
    fs: &dyn FileSystem,
    dir: &Path,
    config: &Config,
    prefix: &[Input],
    next_base: Offset,
    rules: &Rules<'_>,
    pace: &mut dyn Pace,
) -> Result<Option<Vec<Group>>> {
    let max = config.max_record_bytes as usize;
    let mut groups: Vec<Group> = Vec::new();
    let mut building: Option<Building> = None;
    for (i, input) in prefix.iter().enumerate() {
        let filtered = filter(input, rules, max)?;
        let fits = building.as_ref().is_some_and(|b| {
            let span_fits = input.last_offset.is_none_or(|last| last - b.base <= u32::MAX as u64);
            b.bytes.len() as u64 + filtered.bytes.len() as u64 <= config.segment_bytes && span_fits
        });
        if !fits && let Some(done) = building.take() {
            groups.push(done.finish(fs, dir, input.base)?);
        }
        let b = building.get_or_insert_with(|| Building::new(input.base, i));
        b.add(filtered, config);
        if !pace.pace(input.len) {
            discard(fs, dir, &groups);
            return Ok(None);
        }
    }
    if let Some(done) = building.take() {
        groups.push(done.finish(fs, dir, next_base)?);
    }
    Ok(Some(groups))
}

struct Building {
    base: Offset,
    first: usize,
    /// The new segment: header, then records.
    bytes: Vec<u8>,
    index: OffsetIndex,
    last_indexed: u64,
    moved: Vec<Vec<(u32, u32)>>,
    last_offset: Option<Offset>,
    figures: Figures,
    changed: bool,
    kept: u64,
    dropped: u64,
}

impl Building {
    fn new(base: Offset, first: usize) -> Building {
        Building {
            base,
            first,
            bytes: header(base, 0).to_vec(),
            index: OffsetIndex::Building(Vec::new()),
            last_indexed: HEADER_LEN as u64,
            moved: Vec::new(),
            last_offset: None,
            figures: Figures::default(),
            changed: false,
            kept: 0,
            dropped: 0,
        }
    }

    fn add(&mut self, filtered: Filtered, config: &Config) {
        let start = self.bytes.len() as u32;
        // Spaced as recovery spaces them, so the index file it checks on open matches.
        let interval = config.index_interval_bytes as u64;
        let mut moved = Vec::with_capacity(filtered.kept.len());
        for &(old, at, offset) in &filtered.kept {
            let position = (start + at) as u64;
            if position - self.last_indexed >= interval {
                self.index.push(relative(self.base, offset), position as u32);
                self.last_indexed = position;
            }
            moved.push((old, position as u32));
            self.last_offset = Some(offset);
        }
        self.bytes.extend_from_slice(&filtered.bytes);
        self.moved.push(moved);
        self.figures.add(filtered.figures);
        self.changed |= filtered.changed;
        self.kept += filtered.kept.len() as u64;
        self.dropped += filtered.dropped;
    }

    fn finish(mut self, fs: &dyn FileSystem, dir: &Path, end: Offset) -> Result<Group> {
        let inputs = self.first..self.first + self.moved.len();
        // A merge changes the files even when no record is dropped.
        let changed = self.changed || inputs.len() > 1;
        let len = self.bytes.len() as u64;
        let mut group = Group {
            base: self.base,
            end,
            inputs,
            moved: std::mem::take(&mut self.moved),
            new: None,
            bytes_out: len,
            kept: self.kept,
            dropped: self.dropped,
        };
        if !changed {
            return Ok(group);
        }
        // A segment's durable length is exact once sealed.
        self.bytes[..HEADER_LEN].copy_from_slice(&header(self.base, len as u32));
        let path = cleaned_path(dir, self.base);
        let file = fs.create(&path)?;
        fs.write_at(&file, &path, &self.bytes, 0)?;
        fs.sync_all(&file, &path)?;
        drop(file);
        // SAFETY: the `.cleaned` file is ours (the data dir is flocked) and is only ever
        // renamed from here on, which leaves the mapping intact.
        let map = unsafe { Mmap::map(&File::open(&path)?)? };
        // Written before the swap: until it, the index names the old file's positions
        // wrongly on disk only, which recovery notices and rewrites (it never trusts one).
        let index = self.index.seal(fs, &index_path(dir, self.base))?;
        group.new = Some(SealedSegment {
            base: self.base,
            path: segment_path(dir, self.base),
            map,
            index,
            last_offset: self.last_offset,
            figures: self.figures,
        });
        Ok(group)
    }
}

/// Where a group's new segment is written before the swap.
pub(super) fn cleaned_path(dir: &Path, base: Offset) -> PathBuf {
    dir.join(format!("{base:020}.log.cleaned"))
}

/// Removes the `.cleaned` files of an abandoned pass (recovery would remove them too).
pub(super) fn discard(fs: &dyn FileSystem, dir: &Path, groups: &[Group]) {
    for group in groups.iter().filter(|g| g.new.is_some()) {
        if let Err(e) = super::fs::remove_if_present(fs, &cleaned_path(dir, group.base)) {
            tracing::warn!(error = %e, base = group.base, "removing an abandoned cleaned segment failed");
        }
    }
}
