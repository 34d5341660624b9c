//! Recovery: every decision about damaged bytes found at open lives here.
//!
//! First the segment files found are checked against the manifest (see
//! [`manifest`](super::manifest)): a hole in the chain fails `open`. Then segments are
//! scanned in order and every record's CRC is checked while the ID index and the sparse
//! offset indexes are rebuilt. Zeros from the last segment's final record to the end of
//! its file, at or after its durable length, are the space preallocated for appends (see
//! [`segment`](super::segment)): not damage, and kept. Damage is handled by one rule:
//! - damage at or after the **last** segment's durable length (the watermark in its
//!   header) is a torn tail: what a crash leaves of writes that were never fsynced, so
//!   never acknowledged under `--fsync always`. It is cut off and the cut fsynced, with
//!   one warning naming file and byte offset, even if valid-looking records follow (the
//!   kernel may write unsynced pages back in any order). Segments from before the
//!   watermark existed (it reads 0) keep the older rule: a torn tail is one with no valid
//!   record after it, searched for with bounded work (see [`tail`](super::tail));
//! - anything else (damage below the watermark, in a sealed segment, a bad header) fails
//!   `open` with the file and offset, unless the mode is [`RecoveryMode::Repair`], which
//!   cuts at the first bad record and drops every later segment, saying what it dropped.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;

use super::fs::{FileSystem, remove_if_present};
use super::id_index::{IdIndex, Position, id_of};
use super::manifest;
use super::offset_index::{OffsetIndex, relative};
use super::record::{Decoded, RecordKind, RecordRef, decode};
use super::segment::{
    ActiveSegment, Figures, HEADER_LEN, Reserve, SealedSegment, check_header, durable_len, header, index_path,
    segment_path, write_mark,
};
use super::tail;
use super::{Config, Epoch, Offset, RecoveryMode, Result, StorageError};

pub(super) struct Recovered {
    pub sealed: Vec<SealedSegment>,
    pub active: ActiveSegment,
    pub ids: IdIndex,
    pub records: u64,
    /// Offset and epoch of the last record.
    pub last: Option<(Offset, Epoch)>,
    /// The log start the manifest records (0 if none).
    pub log_start: Offset,
}

/// What a scan of one segment's bytes found.
pub(super) struct Scan {
    /// Position after the last good record that ends an atomic batch: where a cut goes.
    pub end: usize,
    pub records: u64,
    pub last_offset: Option<Offset>,
    pub last_epoch: Option<Epoch>,
    pub last_indexed: u64,
    /// Of the records counted in `records`.
    pub figures: Figures,
    /// First bad bytes: position and reason.
    pub damage: Option<(usize, &'static str)>,
}

/// One segment's bytes as a scan sees them.
pub(super) struct ScanInput<'a> {
    pub bytes: &'a [u8],
    pub base: Offset,
    /// Its number in the segment list, for ID-index positions.
    pub segment: u32,
    /// Last offset of the previous segment.
    pub after: Option<Offset>,
    /// Called with every good record and its framed bytes (`msglog check` digests them).
    pub visit: Option<Visitor<'a>>,
    /// The log start: records below it are checked and walked but not indexed or counted
    /// (a follower's first segment may begin below its leader's log start).
    pub hidden_below: Offset,
}

/// Sees every good record a scan passes, with its framed bytes.
pub(super) type Visitor<'a> = &'a mut dyn FnMut(&RecordRef<'_>, &[u8]);

/// Walks the records of one segment from its header on, applying each to the ID index
/// (whose earlier positions lie in `earlier` or this segment) and the offset index.
pub(super) fn scan(
    input: ScanInput<'_>,
    ids: &mut IdIndex,
    index: &mut OffsetIndex,
    config: &Config,
    earlier: &[SealedSegment],
) -> Scan {
    let ScanInput { bytes, base, segment, after, mut visit, hidden_below } = input;
    let id_at = |at: Position| {
        let bytes = match earlier.get(at.segment as usize) {
            Some(s) if at.segment != segment => &s.map[..],
            _ => bytes,
        };
        id_of(&bytes[at.position as usize..])
    };
    let max = config.max_record_bytes as usize;
    let interval = config.index_interval_bytes as u64;
    let mut scan = Scan {
        end: HEADER_LEN,
        records: 0,
        last_offset: None,
        last_epoch: None,
        last_indexed: HEADER_LEN as u64,
        figures: Figures::default(),
        damage: None,
    };
    let mut prev = after;
    // Records of an atomic batch whose last record has not been seen yet: applied only
    // once it ends, so a batch cut by a crash leaves no trace (see `record`).
    let mut open_batch: Vec<(RecordRef<'_>, usize)> = Vec::new();
    let mut at = scan.end;
    while at < bytes.len() {
        let (record, len) = match decode(&bytes[at..], max) {
            Decoded::Record(r, len) => (r, len),
            Decoded::Incomplete => {
                scan.damage = Some((at, "truncated record"));
                break;
            }
            Decoded::Invalid(reason) => {
                scan.damage = Some((at, reason));
                break;
            }
        };
        if record.offset < base || prev.is_some_and(|p| record.offset <= p) {
            scan.damage = Some((at, "offset not above the previous record's"));
            break;
        }
        if let Some(visit) = visit.as_mut() {
            visit(&record, &bytes[at..at + len]);
        }
        prev = Some(record.offset);
        open_batch.push((record, at));
        at += len;
        if record.continues {
            continue;
        }
        for (record, position) in open_batch.drain(..) {
            let position = position as u64;
            if position - scan.last_indexed >= interval {
                index.push(relative(base, record.offset), position as u32);
                scan.last_indexed = position;
            }
            scan.last_offset = Some(record.offset);
            scan.last_epoch = Some(record.epoch);
            if record.offset < hidden_below {
                continue;
            }
            scan.figures.count(record.timestamp_ms);
            match record.kind {
                RecordKind::Set => ids.set(record.id, Position { segment, position: position as u32 }, id_at),
                RecordKind::Delete => {
                    ids.remove(record.id, id_at);
                }
            }
            scan.records += 1;
        }
        scan.end = at;
    }
    // `end` stays before an unfinished batch, so a cut drops all of it. The damage is
    // placed where the scan stopped: nothing valid follows there, which makes it a torn
    // tail when this is the last segment.
    if scan.damage.is_none() && !open_batch.is_empty() {
        scan.damage = Some((at, "atomic batch without its last record"));
    }
    scan
}

impl Scan {
    /// Of a last segment's scan of `bytes`: takes a stop where the space preallocated for
    /// appends begins for the end of the records, not damage, and says whether it did.
    /// That is nothing but zeros from the end of the records to the end of the file, at
    /// or after the durable length `mark` (see [`segment`](super::segment)); a record cut
    /// by a crash is not zeros throughout, and zeros below the mark are bytes lost.
    pub(super) fn accept_preallocated(&mut self, bytes: &[u8], mark: u64) -> bool {
        let free = self.damage.is_some_and(|(position, _)| position == self.end)
            && self.end as u64 >= mark
            && bytes[self.end..].iter().all(|&b| b == 0);
        if free {
            self.damage = None;
        }
        free
    }
}

pub(super) fn corruption(segment: &Path, position: usize, reason: impl Into<String>) -> StorageError {
    StorageError::Corruption { segment: segment.to_path_buf(), position: position as u64, reason: reason.into() }
}

/// Base offsets of the segment files in `dir`, ascending.
pub(super) fn list_segments(dir: &Path) -> Result<Vec<Offset>> {
    let mut bases = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".log")) else {
            continue;
        };
        if stem.len() == 20
            && stem.bytes().all(|b| b.is_ascii_digit())
            && let Ok(base) = stem.parse()
        {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// How far an active segment of `len` bytes may grow before it is sealed.
pub(super) fn reserve(config: &Config, len: u64) -> Reserve {
    Reserve {
        map: config.segment_bytes.max(len) + config.max_record_bytes as u64,
        preallocate_to: config.segment_bytes,
    }
}

pub(super) fn recover(fs: &Arc<dyn FileSystem>, dir: &Path, config: &Config) -> Result<Recovered> {
    std::fs::create_dir_all(dir)?;
    super::swap::roll_forward(fs.as_ref(), dir)?;
    let files = list_segments(dir)?;
    let (bases, listed) = manifest::chain(fs.as_ref(), dir, &files, config.recovery)?;
    let log_start = listed.as_ref().map_or(0, |listed| listed.log_start);
    let mut ids = IdIndex::default();
    let mut sealed = Vec::new();
    let mut records = 0;
    let mut prev: Option<Offset> = None;
    let mut last_epoch = 0;
    let mut kept = bases.len();
    for (i, &base) in bases.iter().enumerate() {
        let path = segment_path(dir, base);
        let mut is_last = i + 1 == kept;
        if prev.is_some_and(|p| base <= p) {
            return Err(corruption(&path, 0, "base offset not above the previous segment's last offset"));
        }
        let file = fs.open(&path)?;
        let len = file.metadata()?.len();
        let mut head = [0u8; HEADER_LEN];
        let head = match file.read_exact_at(&mut head, 0) {
            Ok(()) => &head[..],
            Err(_) => &[][..],
        };
        let torn = len < HEADER_LEN as u64 && is_last;
        let repair = config.recovery == RecoveryMode::Repair && check_header(head, base).is_err();
        if torn || repair {
            // A crash while creating the segment leaves a short header and no record yet;
            // repair mode rewrites any bad header, dropping what the segment held.
            tracing::warn!(segment = %path.display(), bytes = len, "rewriting a torn or bad segment header");
            fs.set_len(&file, &path, 0)?;
            fs.write_at(&file, &path, &header(base, HEADER_LEN as u32), 0)?;
            fs.sync_all(&file, &path)?;
            if !is_last {
                drop_segments(fs.as_ref(), dir, (&bases[..=i], log_start), &bases[i + 1..])?;
                (kept, is_last) = (i + 1, true);
            }
        }
        let len = file.metadata()?.len();
        // SAFETY: the data dir is flocked; nothing else changes the file while mapped.
        let map = unsafe { Mmap::map(&file)? };
        if let Err(reason) = check_header(&map, base) {
            return Err(corruption(&path, 0, reason));
        }
        let mut mark = durable_len(&map);
        let mut index = OffsetIndex::Building(Vec::new());
        let input =
            ScanInput { bytes: &map, base, segment: i as u32, after: prev, visit: None, hidden_below: log_start };
        let mut scan = scan(input, &mut ids, &mut index, config, &sealed);
        records += scan.records;
        if is_last {
            scan.accept_preallocated(&map, mark);
        }
        // Without damage the records end where the file does, or where its zeros begin.
        let mut end = scan.end as u64;
        let damage = match (scan.damage, mark > len) {
            (Some(damage), _) => Some(damage),
            (None, true) => Some((len as usize, "file shorter than its durable length")),
            (None, false) => None,
        };
        if let Some((position, reason)) = damage {
            let after = scan.last_offset.or(prev);
            let max = config.max_record_bytes as usize;
            let torn = match is_last {
                true => tail::is_torn(&map, position, mark, after, max),
                false => Ok(false),
            };
            if config.recovery == RecoveryMode::Strict {
                match torn {
                    Ok(true) => {}
                    Ok(false) => return Err(corruption(&path, position, reason)),
                    Err(why) => return Err(corruption(&path, position, format!("{reason}; {why}"))),
                }
                if mark > scan.end as u64 {
                    let why = "an atomic batch that began below the durable length never ended";
                    return Err(corruption(&path, scan.end, why));
                }
            }
            let later = &bases[i + 1..kept];
            tracing::warn!(
                segment = %path.display(), position, reason,
                dropped_bytes = len.saturating_sub(scan.end as u64), dropped_segments = later.len(),
                "truncating the log at the first bad record"
            );
            drop(map);
            // At `scan.end`, not `position`: damage inside an atomic batch drops the whole
            // batch. A durable mark always lies on a batch boundary (a batch is appended
            // and flushed under one lock), so a torn tail never cuts below it.
            let cut = scan.end as u64;
            if mark > cut {
                // Lowered durably before the cut, as every truncation does.
                mark = cut;
                write_mark(fs.as_ref(), &file, &path, mark)?;
                fs.sync_all(&file, &path)?;
            }
            fs.set_len(&file, &path, cut)?;
            fs.sync_all(&file, &path)?;
            drop_segments(fs.as_ref(), dir, (&bases[..=i], log_start), later)?;
            end = cut;
            (kept, is_last) = (i + 1, true);
        }
        prev = scan.last_offset.or(prev);
        last_epoch = scan.last_epoch.unwrap_or(last_epoch);
        if is_last {
            let (path, index, last_offset) = (path, index, scan.last_offset);
            let mut active =
                ActiveSegment::open(fs.clone(), path, base, end, mark, reserve(config, end), index, last_offset)?;
            active.last_indexed = scan.last_indexed;
            active.figures = scan.figures;
            // Bytes a crashed process left in the page cache were never fsynced: make them
            // durable now (and the watermark exact), so everything recovered is durable.
            active.sync_exact()?;
            let bases = &bases[..kept];
            if listed.as_ref().map(|l| l.bases.as_slice()) != Some(bases) {
                manifest::write(fs.as_ref(), dir, bases, log_start)?;
            }
            let last = prev.map(|p| (p, last_epoch));
            return Ok(Recovered { sealed, active, ids, records, last, log_start });
        }
        let index = index.seal(fs.as_ref(), &index_path(dir, base))?;
        sealed.push(SealedSegment::open(path, base, len, index, scan.last_offset, scan.figures)?);
    }
    let active = ActiveSegment::create(fs.clone(), dir, 0, reserve(config, 0))?;
    manifest::write(fs.as_ref(), dir, &[0], log_start)?;
    Ok(Recovered { sealed, active, ids, records, last: None, log_start })
}

/// Drops the segments `dropped` (and their indexes), durably: the manifest lists only
/// `kept` first, so a crash part way leaves files recovery knows to delete.
pub(super) fn drop_segments(
    fs: &dyn FileSystem,
    dir: &Path,
    (kept, log_start): (&[Offset], Offset),
    dropped: &[Offset],
) -> Result<()> {
    if dropped.is_empty() {
        return Ok(());
    }
    manifest::write(fs, dir, kept, log_start)?;
    remove_segment_files(fs, dir, dropped)
}

/// Deletes segment files (and their indexes), then fsyncs the directory.
pub(super) fn remove_segment_files(fs: &dyn FileSystem, dir: &Path, bases: &[Offset]) -> Result<()> {
    for &base in bases.iter().rev() {
        remove_if_present(fs, &index_path(dir, base))?;
        remove_if_present(fs, &segment_path(dir, base))?;
    }
    fs.sync_dir(dir)?;
    Ok(())
}
