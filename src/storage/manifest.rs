//! The segment manifest `log/MANIFEST`: the chain of segments the log is made of, so a
//! segment file that goes missing (first, middle or last) is noticed instead of its
//! records silently vanishing, or older values of their IDs coming back.
//!
//! Text: a first line `msglog-manifest 2`, then, once retention has deleted segments, a
//! line `log-start <offset>` (the first offset retention kept), then the base offset of
//! every segment in ascending order, one decimal number per line. It is replaced
//! atomically (temp file, fsync, rename, directory fsync) whenever the chain changes:
//! - a roll creates the new segment file durably, then lists it;
//! - a truncation (follower divergence, repair) lists only the kept segments, then
//!   deletes the others.
//!
//! - retention lists only the segments it keeps, then deletes the oldest ones.
//!
//! So a crash leaves at most segment files *after* the last listed one that the manifest
//! does not list: either a roll's new file, which never held a record (appends to it
//! begin only after the manifest lists it), or files a truncation had already decided to
//! drop; or files *before* the `log-start` line, which retention had decided to delete.
//! Recovery deletes all of them. A listed file that is missing, or any other unlisted one,
//! is corruption nothing explains: only the `log-start` line, which every rewrite carries
//! over, licenses deleting a file before the first listed segment.
//!
//! Version 1 (msglog before the `log-start` line was versioned) is still read. Its
//! writers' retention deleted files below the first listed segment with no line saying
//! so, so for a version 1 manifest without a `log-start` line, files below the first
//! listed segment are retention's leftovers, as they were then. Every rewrite writes
//! version 2, which an older msglog refuses rather than misreads.

use std::path::{Path, PathBuf};

use super::fs::{FileSystem, replace_file};
use super::recovery::remove_segment_files;
use super::segment::segment_path;
use super::{Offset, RecoveryMode, Result, StorageError};

const FIRST_LINE: &str = "msglog-manifest 2";
const FIRST_LINE_V1: &str = "msglog-manifest 1";
const LOG_START: &str = "log-start ";

/// A manifest as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Listed {
    pub bases: Vec<Offset>,
    /// The first offset retention kept; 0 if it never deleted a segment. Files below it
    /// are ones retention decided to delete.
    pub log_start: Offset,
    /// A version 1 manifest without a `log-start` line: files below the first listed
    /// segment are retention's leftovers (that version's rule).
    pub unversioned_start: bool,
}

pub(super) fn manifest_path(dir: &Path) -> PathBuf {
    dir.join("MANIFEST")
}

/// The manifest; `None` for a log written before manifests existed.
pub(super) fn read(dir: &Path) -> Result<Option<Listed>> {
    let path = manifest_path(dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let bad = |reason: String| StorageError::Corruption { segment: path.clone(), position: 0, reason };
    let mut lines = text.lines();
    let version_1 = match lines.next() {
        Some(FIRST_LINE) => false,
        Some(FIRST_LINE_V1) => true,
        _ => {
            return Err(bad(format!(
                "manifest does not start with {FIRST_LINE:?} or {FIRST_LINE_V1:?} (written by a newer msglog?)"
            )));
        }
    };
    let mut bases: Vec<Offset> = Vec::new();
    let mut log_start = None;
    for line in lines {
        if let (true, Some(at)) = (bases.is_empty(), line.strip_prefix(LOG_START)) {
            log_start = Some(at.parse().map_err(|_| bad(format!("manifest line {line:?} has no log start offset")))?);
            continue;
        }
        let base = line.parse().map_err(|_| bad(format!("manifest line {line:?} is not a base offset")))?;
        if bases.last().is_some_and(|&b| b >= base) {
            return Err(bad(format!("manifest bases are not ascending at {base}")));
        }
        bases.push(base);
    }
    Ok(Some(Listed { bases, log_start: log_start.unwrap_or(0), unversioned_start: version_1 && log_start.is_none() }))
}

/// Replaces the manifest with `bases` and `log_start` (0: retention never moved it),
/// durably. Every rewrite passes the log start the manifest already records (the log
/// keeps it in memory): one that dropped it would turn retention's leftovers into
/// unexplained files.
pub(super) fn write(fs: &dyn FileSystem, dir: &Path, bases: &[Offset], log_start: Offset) -> Result<()> {
    let mut text = format!("{FIRST_LINE}\n");
    if log_start > 0 {
        text.push_str(&format!("{LOG_START}{log_start}\n"));
    }
    for base in bases {
        text.push_str(&format!("{base}\n"));
    }
    replace_file(fs, &manifest_path(dir), text.as_bytes())?;
    Ok(())
}

/// How the files found compare with the manifest.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Reconciled {
    /// Listed segments whose file is gone.
    pub missing: Vec<Offset>,
    /// Unlisted files between listed segments.
    pub unlisted: Vec<Offset>,
    /// Unlisted files below the log start: left by a crash in retention, which lists only
    /// what it keeps before deleting the rest.
    pub below_start: Vec<Offset>,
    /// Unlisted files after the last listed segment: left by a crash in a roll or a
    /// truncation, never holding an acknowledged record the manifest still counts.
    pub leftover: Vec<Offset>,
}

pub(super) fn reconcile(manifest: &Listed, files: &[Offset]) -> Reconciled {
    let listed = &manifest.bases;
    let (first, last) = (listed.first().copied(), listed.last().copied());
    let mut r =
        Reconciled { missing: listed.iter().filter(|b| !files.contains(b)).copied().collect(), ..Default::default() };
    for &base in files.iter().filter(|b| !listed.contains(b)) {
        // An empty list explains nothing: every file is unlisted.
        match (first, last) {
            (_, Some(last)) if base > last => r.leftover.push(base),
            (Some(first), _) if base < first && (base < manifest.log_start || manifest.unversioned_start) => {
                r.below_start.push(base)
            }
            _ => r.unlisted.push(base),
        }
    }
    r
}

/// Why a missing manifest is damage rather than an older log's layout.
pub(super) const MISSING_MANIFEST: &str = "the segment manifest is missing, but the log holds segments written by a msglog that keeps one, so a missing segment could go unseen";

/// A segment in `files` whose header version is 2 or later, if any: such a log was written
/// by a msglog that keeps a manifest, so without one a deleted segment would go unseen.
/// A lone segment is let pass: a new log's first segment is created just before its first
/// manifest, so a crash between the two leaves exactly that.
pub(super) fn written_with_manifest(dir: &Path, files: &[Offset]) -> Option<Offset> {
    if files.len() < 2 {
        return None;
    }
    files.iter().copied().find(|&base| {
        let mut head = [0u8; 10];
        std::fs::File::open(segment_path(dir, base))
            .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut head, 0))
            .is_ok_and(|()| u16::from_le_bytes([head[8], head[9]]) >= 2)
    })
}

/// The segments recovery scans, in order, and the manifest as read (`None` if absent):
/// refuses a hole in the chain (or, in repair mode, forgets the missing segments and
/// sets unlisted ones aside), and deletes leftovers of an interrupted roll or truncation.
pub(super) fn chain(
    fs: &dyn FileSystem,
    dir: &Path,
    files: &[Offset],
    mode: RecoveryMode,
) -> Result<(Vec<Offset>, Option<Listed>)> {
    let Some(manifest) = read(dir)? else {
        if let (true, Some(base)) = (mode == RecoveryMode::Strict, written_with_manifest(dir, files)) {
            return Err(StorageError::Corruption {
                segment: manifest_path(dir),
                position: 0,
                reason: format!(
                    "{MISSING_MANIFEST} (segment {base} is one) (`msglog check --repair` writes one from the segments found)"
                ),
            });
        }
        if !files.is_empty() {
            tracing::info!(dir = %dir.display(), segments = files.len(), "no segment manifest (a log from an older msglog): writing one listing the segments found");
        }
        return Ok((files.to_vec(), None));
    };
    let found = reconcile(&manifest, files);
    let strict = mode == RecoveryMode::Strict;
    if let (true, Some(&base)) = (strict, found.missing.first()) {
        let reason = "segment missing: the manifest lists it but the file is gone (a hole in the log; `msglog check --repair` drops it from the chain)";
        return Err(StorageError::Corruption { segment: segment_path(dir, base), position: 0, reason: reason.into() });
    }
    if let (true, Some(&base)) = (strict, found.unlisted.first()) {
        let reason = "segment not in the manifest: nothing explains it (`msglog check --repair` sets it aside)";
        return Err(StorageError::Corruption { segment: segment_path(dir, base), position: 0, reason: reason.into() });
    }
    for &base in &found.missing {
        tracing::warn!(segment = %segment_path(dir, base).display(), "repair: forgetting a missing segment; its records are lost");
    }
    for &base in &found.unlisted {
        let path = segment_path(dir, base);
        let aside = path.with_extension("log.unlisted");
        tracing::warn!(segment = %path.display(), to = %aside.display(), "repair: setting aside a segment the manifest does not list");
        fs.rename(&path, &aside)?;
    }
    if !found.below_start.is_empty() {
        tracing::info!(dir = %dir.display(), segments = ?found.below_start, "deleting segments retention had dropped from the manifest before a restart");
        remove_segment_files(fs, dir, &found.below_start)?;
    }
    if !found.leftover.is_empty() {
        tracing::warn!(dir = %dir.display(), segments = ?found.leftover, "deleting segments an interrupted roll or truncation left after the last listed one");
        remove_segment_files(fs, dir, &found.leftover)?;
    } else if !found.unlisted.is_empty() {
        fs.sync_dir(dir)?;
    }
    let bases = manifest.bases.iter().filter(|b| !found.missing.contains(b)).copied().collect();
    Ok((bases, Some(manifest)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(bases: &[Offset], log_start: Offset) -> Listed {
        Listed { bases: bases.to_vec(), log_start, unversioned_start: false }
    }

    #[test]
    fn files_after_the_last_listed_segment_are_leftovers_and_gaps_are_missing() {
        let r = reconcile(&listed(&[0, 10, 20], 0), &[0, 5, 20, 30]);
        assert_eq!(r, Reconciled { missing: vec![10], unlisted: vec![5], leftover: vec![30], below_start: vec![] });
    }

    #[test]
    fn files_below_the_log_start_are_retention_leftovers() {
        let r = reconcile(&listed(&[20, 30], 20), &[0, 10, 20, 25, 30]);
        assert_eq!(r, Reconciled { below_start: vec![0, 10], unlisted: vec![25], ..Reconciled::default() });
    }

    #[test]
    fn files_before_the_first_listed_segment_are_unexplained_unless_retention_moved_the_start() {
        let r = reconcile(&listed(&[20, 30], 0), &[0, 10, 20, 30]);
        assert_eq!(r, Reconciled { unlisted: vec![0, 10], ..Reconciled::default() });
        let r = reconcile(&listed(&[20, 30], 10), &[0, 10, 20, 30]);
        assert_eq!(r, Reconciled { below_start: vec![0], unlisted: vec![10], ..Reconciled::default() });
    }

    #[test]
    fn the_log_start_line_is_written_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let fs = super::super::fs::RealFs;
        write(&fs, dir.path(), &[20, 30], 20).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(listed(&[20, 30], 20)));
        write(&fs, dir.path(), &[20, 30, 40], 20).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(listed(&[20, 30, 40], 20)));
        let text = std::fs::read_to_string(manifest_path(dir.path())).unwrap();
        assert_eq!(text, "msglog-manifest 2\nlog-start 20\n20\n30\n40\n");
    }

    #[test]
    fn a_version_1_manifest_is_read_with_its_own_rule_for_files_below_the_first_segment() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(manifest_path(dir.path()), "msglog-manifest 1\n20\n30\n").unwrap();
        let old = read(dir.path()).unwrap().unwrap();
        assert_eq!(old, Listed { bases: vec![20, 30], log_start: 0, unversioned_start: true });
        // Its retention deleted files below the first listed segment with no line saying so.
        let r = reconcile(&old, &[0, 10, 20, 30]);
        assert_eq!(r, Reconciled { below_start: vec![0, 10], ..Reconciled::default() });
        // A version 1 manifest with the line, and any version 2 one, follow the line.
        std::fs::write(manifest_path(dir.path()), "msglog-manifest 1\nlog-start 20\n20\n30\n").unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(listed(&[20, 30], 20)));
        std::fs::write(manifest_path(dir.path()), "msglog-manifest 2\n20\n30\n").unwrap();
        let new = read(dir.path()).unwrap().unwrap();
        assert_eq!(reconcile(&new, &[0, 20, 30]), Reconciled { unlisted: vec![0], ..Reconciled::default() });
    }

    #[test]
    fn a_manifest_of_an_unknown_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(manifest_path(dir.path()), "msglog-manifest 3\n0\n").unwrap();
        let err = read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("newer msglog"), "{err}");
    }
}
