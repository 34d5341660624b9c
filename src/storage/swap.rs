//! The crash-atomic swap of cleaned segments into the log, and its recovery (Kafka's
//! protocol; `docs/FORMAT.md`, "Compaction"), and the switch of the log's state to them.
//!
//! A group of adjacent segments `[base, end)` is replaced by one file:
//! 1. `<base>.log.cleaned` is written and fsynced (before the swap, without the lock);
//! 2. it is renamed to `<base:020>.<end:020>.swap` and the directory fsynced: the commit
//!    point, after which recovery rolls the swap forward;
//! 3. the manifest is rewritten without the bases merged away (those in `(base, end)`);
//! 4. their files are deleted;
//! 5. the `.swap` is renamed over `<base>.log` and the directory fsynced.
//!
//! Groups are committed one at a time in log order, each durable before the next begins,
//! so a crash never keeps a later group's cleaning (a dropped tombstone) without an
//! earlier one's (the older values the tombstone superseded).

use std::ops::Range;
use std::path::{Path, PathBuf};

use super::cleaner::CleanSummary;
use super::fs::{FileSystem, remove_if_present};
use super::id_index::Position;
use super::log::State;
use super::manifest;
use super::recovery::{list_segments, remove_segment_files};
use super::rewrite::{Group, cleaned_path};
use super::segment::segment_path;
use super::{Offset, Result};

pub(super) fn swap_path(dir: &Path, base: Offset, end: Offset) -> PathBuf {
    dir.join(format!("{base:020}.{end:020}.swap"))
}

/// `(base, end)` of a `.swap` file name.
fn parse_swap(name: &str) -> Option<(Offset, Offset)> {
    let stem = name.strip_suffix(".swap")?;
    let (base, end) = stem.split_once('.')?;
    let digits = |s: &str| s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit());
    (digits(base) && digits(end)).then(|| Some((base.parse().ok()?, end.parse().ok()?)))?
}

/// Swaps the written groups `(base, end)` in, in order. `bases_after` is the whole chain
/// once done, with the log start the manifest records; `merged_away` the bases it no
/// longer lists.
pub(super) fn commit(
    fs: &dyn FileSystem,
    dir: &Path,
    groups: &[(Offset, Offset)],
    (bases_after, log_start): (&[Offset], Offset),
    merged_away: &[Offset],
) -> Result<()> {
    for &(base, end) in groups {
        fs.rename(&cleaned_path(dir, base), &swap_path(dir, base, end))?;
        fs.sync_dir(dir)?;
    }
    manifest::write(fs, dir, bases_after, log_start)?;
    remove_segment_files(fs, dir, merged_away)?;
    for &(base, end) in groups {
        fs.rename(&swap_path(dir, base, end), &segment_path(dir, base))?;
    }
    fs.sync_dir(dir)?;
    Ok(())
}

/// Swaps a crash left committed but unfinished, as `(base, end, path)`, by base.
pub(super) fn pending(dir: &Path) -> Result<Vec<(Offset, Offset, PathBuf)>> {
    let mut swaps = Vec::new();
    if !dir.exists() {
        return Ok(swaps);
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some((base, end)) = entry.file_name().to_str().and_then(parse_swap) {
            swaps.push((base, end, entry.path()));
        }
    }
    swaps.sort_unstable_by_key(|s| s.0);
    Ok(swaps)
}

/// Whether `base` is a segment a pending swap merged away.
pub(super) fn merged_away(swaps: &[(Offset, Offset, PathBuf)], base: Offset) -> bool {
    swaps.iter().any(|&(first, end, _)| base > first && base < end)
}

/// Recovery's first step: finishes every committed swap (each step is idempotent, so a
/// crash during this is finished by the next open) and deletes `.cleaned` files of passes
/// that never committed.
pub(super) fn roll_forward(fs: &dyn FileSystem, dir: &Path) -> Result<()> {
    let mut stray = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_str().is_some_and(|n| n.ends_with(".log.cleaned")) {
            stray.push(entry.path());
        }
    }
    for path in &stray {
        tracing::warn!(file = %path.display(), "deleting a cleaned segment an interrupted compaction never swapped in");
        remove_if_present(fs, path)?;
    }
    let swaps = pending(dir)?;
    if swaps.is_empty() {
        if !stray.is_empty() {
            fs.sync_dir(dir)?;
        }
        return Ok(());
    }
    if let Some(listed) = manifest::read(dir)? {
        let kept: Vec<Offset> = listed.bases.iter().copied().filter(|&b| !merged_away(&swaps, b)).collect();
        if kept != listed.bases {
            manifest::write(fs, dir, &kept, listed.log_start)?;
        }
    }
    let files: Vec<Offset> = list_segments(dir)?.into_iter().filter(|&b| merged_away(&swaps, b)).collect();
    remove_segment_files(fs, dir, &files)?;
    for (base, end, path) in &swaps {
        tracing::warn!(base, end, "finishing a compaction swap a crash interrupted");
        fs.rename(path, &segment_path(dir, *base))?;
    }
    fs.sync_dir(dir)?;
    Ok(())
}

/// A rewritten segment's kept records: (old position, new position), by old position.
type Moved = Vec<(u32, u32)>;

/// Puts the swapped groups in place of the sealed segments `replaced` and moves the ID
/// index's positions along (kept records to their new place, later segments down).
/// Returns false if some position did not map (then the index must be rebuilt).
pub(super) fn install(st: &mut State, groups: &mut [Group], replaced: Range<usize>) -> (CleanSummary, bool) {
    let (at, count) = (replaced.start, replaced.len());
    let old: Vec<_> = st.sealed.drain(replaced).collect();
    let mut summary = CleanSummary { segments_in: count as u64, ..CleanSummary::default() };
    summary.bytes_in = old.iter().map(|s| s.map.len() as u64).sum();
    let mut old: Vec<Option<_>> = old.into_iter().map(Some).collect();
    // Per old segment: its new segment number and (old, new) positions, or `None` if kept.
    let mut moves: Vec<(u32, Option<Moved>)> = Vec::with_capacity(count);
    let mut new = Vec::with_capacity(groups.len());
    for (n, group) in groups.iter_mut().enumerate() {
        let n = (at + n) as u32;
        summary.bytes_out += group.bytes_out;
        summary.records_kept += group.kept;
        summary.records_dropped += group.dropped;
        let moved = std::mem::take(&mut group.moved);
        match group.new.take() {
            Some(segment) => {
                new.push(segment);
                moves.extend(moved.into_iter().map(|m| (n, Some(m))));
            }
            None => {
                new.push(old[group.inputs.start].take().expect("each input in one group"));
                moves.push((n, None));
            }
        }
    }
    summary.segments_out = new.len() as u64;
    let shift = count as u32 - new.len() as u32;
    st.sealed.splice(at..at, new);
    st.records -= summary.records_dropped;
    let whole = st.ids.remap(|p| match (p.segment as usize).checked_sub(at).map(|i| moves.get(i)) {
        None => Some(p),
        Some(None) => Some(Position { segment: p.segment - shift, ..p }),
        Some(Some((segment, None))) => Some(Position { segment: *segment, ..p }),
        Some(Some((segment, Some(moved)))) => moved
            .binary_search_by_key(&p.position, |&(old, _)| old)
            .ok()
            .map(|i| Position { segment: *segment, position: moved[i].1 }),
    });
    (summary, whole)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_names_round_trip_and_other_names_are_not_swaps() {
        let path = swap_path(Path::new("/d"), 5, 1 << 40);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(parse_swap(name), Some((5, 1 << 40)));
        assert_eq!(parse_swap("00000000000000000005.log"), None);
        assert_eq!(parse_swap("5.6.swap"), None);
    }
}
