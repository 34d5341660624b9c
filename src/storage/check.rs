//! `msglog check`: verify a data dir without changing it, and say what repair would drop.
//!
//! The walk is recovery's own scan (same CRC, length and offset rules), run read-only with
//! a visitor that counts records, and a SHA-256 digest of every record's framed bytes in
//! log order. Replicas holding the same records therefore print the same digest,
//! wherever their segments happen to roll. Compaction changes that digest, so a second,
//! *logical* digest covers only the live set (each live ID, in ID order, with its record's
//! offset and message): logs that held the same records print the same one however they
//! were cleaned since.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use sha2::{Digest, Sha256};

use super::id_index::IdIndex;
use super::manifest;
use super::offset_index::OffsetIndex;
use super::record::{RecordKind, RecordRef, Records};
use super::recovery::{ScanInput, list_segments, scan};
use super::segment::{HEADER_LEN, SealedSegment, check_header, durable_len, segment_path};
use super::{Config, Offset, Result, log_dir};

/// Counts for one segment (up to its first bad record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentReport {
    pub path: PathBuf,
    pub records: u64,
    pub tombstones: u64,
    pub bytes: u64,
    pub first_offset: Option<Offset>,
    pub last_offset: Option<Offset>,
}

/// The first bad bytes found, and what cutting the log there would drop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub segment: PathBuf,
    pub position: u64,
    pub reason: String,
    /// Bytes from the bad record to the end of the log.
    pub lost_bytes: u64,
    /// Whole segments after the damaged one.
    pub lost_segments: u64,
    /// Records in those later segments that still check out (all lost to a repair).
    pub lost_records: u64,
    /// IDs written by those records: each loses its newest value (older ones may show).
    pub lost_ids: u64,
    /// Records in the cut bytes of the damaged segment, readable or not; known when a
    /// later segment's base offset says where they end (at most that many once
    /// compaction has left gaps in the offsets).
    pub cut_records: Option<u64>,
    /// What is wrong: bad bytes, or a hole in the segment chain.
    pub kind: DamageKind,
}

/// What a check found wrong, which decides what a repair does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DamageKind {
    /// Bad bytes: a repair cuts the log there.
    Bytes,
    /// The manifest lists a segment whose file is gone: a repair forgets it (its records
    /// are lost, and older values of their IDs may show again).
    MissingSegment,
    /// A segment file the manifest does not list, before its last segment: a repair
    /// renames it to `….log.unlisted`, out of the log.
    UnlistedSegment,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub segments: Vec<SegmentReport>,
    pub live_ids: u64,
    /// SHA-256 over the framed bytes of every good record, in offset order.
    pub digest: [u8; 32],
    /// SHA-256 over the live set: for each live ID in byte order, `u32` ID length, ID,
    /// `u64` offset, `u32` message length, message (little-endian).
    pub logical_digest: [u8; 32],
    pub damage: Option<Damage>,
    /// Segment files outside the log: after the manifest's last segment (an interrupted
    /// roll or truncation left them) or before its first (retention dropped them), which
    /// opening the log deletes.
    pub leftover: Vec<PathBuf>,
}

impl CheckReport {
    pub fn records(&self) -> u64 {
        self.segments.iter().map(|s| s.records).sum()
    }
    pub fn tombstones(&self) -> u64 {
        self.segments.iter().map(|s| s.tombstones).sum()
    }
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }
    pub fn first_offset(&self) -> Option<Offset> {
        self.segments.iter().find_map(|s| s.first_offset)
    }
    pub fn last_offset(&self) -> Option<Offset> {
        self.segments.iter().rev().find_map(|s| s.last_offset)
    }
    pub fn digest_hex(&self) -> String {
        self.digest.iter().map(|b| format!("{b:02x}")).collect()
    }
    pub fn logical_digest_hex(&self) -> String {
        self.logical_digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Verifies every segment under `data_dir`, holding the data-dir lock (so a running server
/// makes it fail with `StorageError::Locked`). Changes nothing. `progress` hears the bytes
/// of each segment as it is done.
pub fn check(data_dir: &Path, config: &Config, mut progress: impl FnMut(u64)) -> Result<CheckReport> {
    let _lock = super::lock::acquire(data_dir)?;
    let dir = log_dir(data_dir);
    let files = if dir.exists() { list_segments(&dir)? } else { Vec::new() };
    // A swap a crash left committed is checked as the next open will finish it.
    let swaps = super::swap::pending(&dir)?;
    let files = files.into_iter().filter(|&b| !super::swap::merged_away(&swaps, b)).collect();
    let path_of = |base: Offset| match swaps.iter().find(|s| s.0 == base) {
        Some((_, _, swap)) => swap.clone(),
        None => segment_path(&dir, base),
    };
    let (bases, hole, log_start, leftover) = chain(&dir, files, &swaps)?;
    let mut hasher = Sha256::new();
    let mut ids = IdIndex::default();
    let mut sealed: Vec<SealedSegment> = Vec::new();
    let mut reports = Vec::new();
    let mut prev = None;
    let mut damage = None;
    for (i, &base) in bases.iter().enumerate() {
        let path = path_of(base);
        let len = std::fs::metadata(&path)?.len();
        let map = match len {
            0 => None,
            // SAFETY: the data dir is flocked; nothing changes the file while mapped.
            _ => Some(unsafe { Mmap::map(&File::open(&path)?)? }),
        };
        let bytes = map.as_deref().unwrap_or(&[]);
        let mut report = SegmentReport {
            path: path.clone(),
            records: 0,
            tombstones: 0,
            bytes: len,
            first_offset: None,
            last_offset: None,
        };
        let found = match check_header(bytes, base) {
            Err(reason) => Some((0, reason)),
            Ok(()) if durable_len(bytes) > len => Some((len as usize, "file shorter than its durable length".into())),
            Ok(()) => {
                let mut visit = |r: &RecordRef<'_>, _: &[u8]| {
                    report.first_offset.get_or_insert(r.offset);
                    report.tombstones += u64::from(r.kind == RecordKind::Delete);
                };
                let (segment, hidden_below) = (i as u32, log_start);
                let input = ScanInput { bytes, base, segment, after: prev, visit: Some(&mut visit), hidden_below };
                // The digest covers the records back to back, which in a clean segment
                // is everything after the header: hash that on a second core while this
                // one scans, and redo only the good prefix if the scan finds damage.
                let records = &bytes[HEADER_LEN..];
                let (mut found, whole) = std::thread::scope(|s| {
                    let mut ahead = hasher.clone();
                    let hashing = s.spawn(move || {
                        ahead.update(records);
                        ahead
                    });
                    let found = scan(input, &mut ids, &mut OffsetIndex::Empty, config, &sealed);
                    (found, hashing.join())
                });
                if i + 1 == bases.len() && found.accept_preallocated(bytes, durable_len(bytes)) {
                    report.bytes = found.end as u64;
                }
                // The hash ahead is the digest when the records run to the end of the file
                // (no damage, no preallocated zeros).
                match whole {
                    Ok(whole) if found.end == bytes.len() => hasher = whole,
                    _ => hasher.update(&bytes[HEADER_LEN..found.end]),
                }
                report.records = found.records;
                report.last_offset = found.last_offset;
                prev = found.last_offset.or(prev);
                found.damage.map(|(position, reason)| (position, reason.to_string()))
            }
        };
        progress(len);
        // The ID index points into every segment with good records, a damaged one's too:
        // mapped for the logical digest, which is then of the live set a repair keeps.
        if found.is_none() || report.records > 0 {
            // What retention needs is of no use to a check.
            let figures = Default::default();
            sealed.push(SealedSegment::open(path.clone(), base, len, OffsetIndex::Empty, prev, figures)?);
        }
        if let Some((position, reason)) = found {
            report.bytes = position as u64;
            let cut_from = prev.map_or(base, |last| last + 1);
            // Zeros preallocated after the records are not bytes a cut loses.
            let len = before_zeros(bytes, position);
            let cut = Cut { segment: path, position: position as u64, len, from: cut_from };
            let later: Vec<(Offset, PathBuf)> = bases[i + 1..].iter().map(|&b| (b, path_of(b))).collect();
            damage = Some(lost_after(&later, config, cut, reason)?);
            reports.push(report);
            break;
        }
        reports.push(report);
    }
    let damage = hole.or(damage);
    let logical_digest = logical_digest(&ids, &sealed, config);
    Ok(CheckReport {
        segments: reports,
        live_ids: ids.len() as u64,
        digest: hasher.finalize().into(),
        logical_digest,
        damage,
        leftover: leftover.into_iter().map(|base| segment_path(&dir, base)).collect(),
    })
}

/// The digest of the live set (see [`CheckReport::logical_digest`]). Records past damage
/// are left out, so on a damaged log it is the digest of what a repair would keep; the
/// report names the damage anyway.
fn logical_digest(ids: &IdIndex, sealed: &[SealedSegment], config: &Config) -> [u8; 32] {
    let max = config.max_record_bytes as usize;
    let mut live: Vec<RecordRef<'_>> = ids
        .positions()
        .filter_map(|at| sealed.get(at.segment as usize).map(|s| &s.map[at.position as usize..]))
        .filter_map(|bytes| Records::new(bytes, max).next()?.ok())
        .collect();
    live.sort_unstable_by(|a, b| a.id.cmp(b.id));
    let mut hasher = Sha256::new();
    for r in live {
        hasher.update((r.id.len() as u32).to_le_bytes());
        hasher.update(r.id);
        hasher.update(r.offset.to_le_bytes());
        hasher.update((r.message.len() as u32).to_le_bytes());
        hasher.update(r.message);
    }
    hasher.finalize().into()
}

/// The segments to check (the listed ones that are there), and the first hole in the
/// chain, if any. Also the log start the manifest records (0 without one): records below
/// it are not part of the log's contents; and the leftovers recovery deletes (files after
/// the manifest's last segment, or before its first), which are not checked.
#[allow(clippy::type_complexity)]
fn chain(
    dir: &Path,
    files: Vec<Offset>,
    swaps: &[(Offset, Offset, PathBuf)],
) -> Result<(Vec<Offset>, Option<Damage>, Offset, Vec<Offset>)> {
    let hole = |segment, kind, reason: &str| Damage {
        segment,
        position: 0,
        reason: reason.into(),
        lost_bytes: 0,
        lost_segments: 0,
        lost_records: 0,
        lost_ids: 0,
        cut_records: None,
        kind,
    };
    let Some(listed) = manifest::read(dir)? else {
        let damage = manifest::written_with_manifest(dir, &files)
            .map(|_| hole(manifest::manifest_path(dir), DamageKind::MissingSegment, manifest::MISSING_MANIFEST));
        return Ok((files, damage, 0, Vec::new()));
    };
    let log_start = listed.log_start;
    let listed = manifest::Listed {
        bases: listed.bases.into_iter().filter(|&b| !super::swap::merged_away(swaps, b)).collect(),
        ..listed
    };
    let found = manifest::reconcile(&listed, &files);
    let missing = "segment missing: the manifest lists it but the file is gone";
    let damage = match (found.missing.first(), found.unlisted.first()) {
        (Some(&base), _) => Some(hole(segment_path(dir, base), DamageKind::MissingSegment, missing)),
        (None, Some(&base)) => {
            Some(hole(segment_path(dir, base), DamageKind::UnlistedSegment, "segment not in the manifest"))
        }
        (None, None) => None,
    };
    // An unlisted segment is the damage named; the counts are of the listed chain, which a
    // repair keeps (it sets the unlisted one aside).
    let is_leftover = |b: &Offset| found.leftover.contains(b) || found.below_start.contains(b);
    let (leftover, files) = files.into_iter().filter(|b| !found.unlisted.contains(b)).partition(is_leftover);
    Ok((files, damage, log_start, leftover))
}

/// Length of `bytes` without the zeros they end in, but at least `from`.
fn before_zeros(bytes: &[u8], from: usize) -> u64 {
    bytes.iter().rposition(|&b| b != 0).map_or(0, |last| last + 1).max(from) as u64
}

/// Where a repair cuts: byte `position` of `segment` (`len` bytes long), whose first cut
/// record would have had offset `from`.
struct Cut {
    segment: PathBuf,
    position: u64,
    len: u64,
    from: Offset,
}

/// What a repair at `cut` drops: the rest of its segment and every later segment.
fn lost_after(later: &[(Offset, PathBuf)], config: &Config, cut: Cut, reason: String) -> Result<Damage> {
    let mut damage = Damage {
        lost_bytes: cut.len - cut.position,
        segment: cut.segment,
        position: cut.position,
        reason,
        lost_segments: later.len() as u64,
        lost_records: 0,
        lost_ids: 0,
        // The next segment's base is where the cut records end; compaction may have left
        // gaps there, so this is at most the count.
        cut_records: later.first().map(|&(next, _)| next.saturating_sub(cut.from)),
        kind: DamageKind::Bytes,
    };
    let mut ids = std::collections::HashSet::new();
    for (_, path) in later {
        let bytes = std::fs::read(path)?;
        damage.lost_bytes += before_zeros(&bytes, 0);
        let records = bytes.get(super::segment::HEADER_LEN..).unwrap_or(&[]);
        let max = config.max_record_bytes as usize;
        for record in Records::new(records, max).map_while(|r| r.ok()) {
            damage.lost_records += 1;
            if !ids.contains(record.id) {
                ids.insert(record.id.to_vec());
            }
        }
    }
    damage.lost_ids = ids.len() as u64;
    Ok(damage)
}
