//! Retention (Kafka's `cleanup.policy=delete`): whole sealed segments are deleted from the
//! oldest end once the log is over `--retention-bytes` or their newest record is older
//! than `--retention-age` (`docs/FORMAT.md`, "Retention").
//!
//! Deleting is crash-atomic like the compaction swap: the manifest is rewritten without
//! the deleted bases (the commit point), then their files are unlinked. Recovery deletes
//! files below the first listed base with a log line. The log start offset is the first
//! listed base, so it survives a restart with the manifest.

use std::sync::RwLockWriteGuard;
use std::time::Duration;

use super::log::State;
use super::manifest;
use super::record::Records;
use super::recovery::{remove_segment_files, reserve};
use super::segment::{ActiveSegment, HEADER_LEN, SealedSegment};
use super::{Log, Offset, Result, StorageError};

/// When whole old segments are deleted; both off by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Delete the oldest segments while the log stays at or above this size without them.
    pub bytes: Option<u64>,
    /// Delete segments whose newest record was written longer ago than this.
    pub age: Option<Duration>,
}

impl Retention {
    pub fn is_off(&self) -> bool {
        self.bytes.is_none() && self.age.is_none()
    }
}

/// What one retention step deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionSummary {
    pub segments: u64,
    pub bytes: u64,
    /// The first offset the log keeps from now on.
    pub log_start: Offset,
}

/// Retention counters since open, for STATS, INFO and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionStats {
    pub deleted_segments: u64,
    pub deleted_bytes: u64,
}

/// The retention part of the log state.
#[derive(Debug, Default)]
pub(super) struct Tracker {
    pub stats: RetentionStats,
    /// The log start the manifest records (its `log-start` line; 0 if retention never
    /// moved it), for every rewrite of the manifest to carry.
    pub recorded_start: Offset,
}

/// Whether every record of `segment` lies below `upto`.
fn wholly_below(segment: &SealedSegment, upto: Offset) -> bool {
    segment.last_offset.map_or(segment.base < upto, |last| last < upto)
}

/// How many leading sealed segments `policy` deletes: only segments wholly below `upto`,
/// and by size only while what remains is still at least the limit (Kafka's rule).
fn doomed(st: &State, policy: &Retention, upto: Offset, now_ms: i64) -> usize {
    let total: u64 = st.sealed.iter().map(|s| s.map.len() as u64).sum::<u64>() + st.active.len();
    let mut remaining = total;
    let mut count = 0;
    for segment in &st.sealed {
        if !wholly_below(segment, upto) {
            break;
        }
        let len = segment.map.len() as u64;
        let by_size = policy.bytes.is_some_and(|limit| remaining - len >= limit);
        let by_age = policy.age.is_some_and(|age| {
            let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
            // An empty segment has no age of its own: it goes with the oldest end.
            segment.figures.newest_ms.is_none_or(|newest| newest < now_ms.saturating_sub(age_ms))
        });
        if !(by_size || by_age) {
            break;
        }
        remaining -= len;
        count += 1;
    }
    count
}

impl Log {
    /// The first offset the log holds or will hold: the base of its first segment, or, on a
    /// follower whose first segment began below its leader's log start, that start.
    /// Retention moves it up; nothing else does.
    pub fn log_start_offset(&self) -> Offset {
        let st = self.shared.read();
        st.sealed.first().map_or(st.active.base, |s| s.base).max(st.retention.recorded_start)
    }

    pub fn retention_stats(&self) -> RetentionStats {
        self.shared.read().retention.stats
    }

    /// Deletes the oldest sealed segments `policy` says are past retention, only ones whose
    /// records all lie below `upto` (a committed offset), judging age against `now_ms`.
    /// `None` when nothing is due, or a cleaning pass is under way (it would swap segments
    /// this deletes).
    pub fn apply_retention(&self, policy: &Retention, upto: Offset, now_ms: i64) -> Result<Option<RetentionSummary>> {
        if policy.is_off() {
            return Ok(None);
        }
        if doomed(&self.shared.read(), policy, upto, now_ms) == 0 {
            return Ok(None);
        }
        let st = self.shared.write();
        if st.failed.is_some() || st.compaction.running {
            return Ok(None);
        }
        let count = doomed(&st, policy, upto, now_ms);
        self.delete_and_unlink(st, count)
    }

    /// A follower's leader keeps no record below `start` (its retention deleted them):
    /// deletes this log's leading sealed segments wholly below `start`, and, in a sealed
    /// segment holding records on both sides, leaves the records below `start` out of the
    /// log (not indexed, counted or served, and so after a restart: the manifest records
    /// `start` as the log start), so that the follower holds what its leader holds. The
    /// segment being appended to is sealed first when `start` lies inside it. `None` when
    /// nothing is due, or a cleaning pass is under way (the next call does it).
    pub fn follow_log_start(&self, start: Offset) -> Result<Option<RetentionSummary>> {
        if start <= self.log_start_offset() {
            return Ok(None);
        }
        let mut st = self.shared.write();
        if st.failed.is_some() || st.compaction.running {
            return Ok(None);
        }
        // The leader's start lies inside the segment being appended to: sealed here, so that
        // its records below the start can be left out like those of any first segment.
        let active = &st.active;
        if active.base < start && active.last_offset.is_some() && st.sealed.iter().all(|s| wholly_below(s, start)) {
            let next = st.next_offset;
            st.roll(&self.shared, next)?;
        }
        let count = st.sealed.iter().take_while(|s| wholly_below(s, start)).count();
        let (deleted, bases) = match count {
            0 => (None, Vec::new()),
            _ => {
                let (summary, bases) = self.delete_leading(&mut st, count)?;
                (Some(summary), bases)
            }
        };
        let hidden = self.hide_below(&mut st, start)?;
        drop(st);
        if !bases.is_empty()
            && let Err(e) = remove_segment_files(self.shared.fs.as_ref(), &self.shared.dir, &bases)
        {
            tracing::warn!(error = %e, "deleting segment files below the leader's log start failed; the next start removes them");
        }
        Ok(match (deleted, hidden) {
            (Some(summary), _) => Some(RetentionSummary { log_start: self.log_start_offset(), ..summary }),
            (None, true) => Some(RetentionSummary { segments: 0, bytes: 0, log_start: start }),
            (None, false) => None,
        })
    }

    /// Leaves the records below `start` in the first segment, when it is sealed and begins
    /// below `start`, out of the log: the manifest records `start` as the log start (the
    /// commit point: every later open leaves them out), then the ID index forgets the IDs
    /// whose latest record lies there, as retention does for deleted segments. `true` if it
    /// did.
    fn hide_below(&self, st: &mut State, start: Offset) -> Result<bool> {
        let shared = &self.shared;
        let Some(first) = st.sealed.first() else { return Ok(false) };
        let was = first.base.max(st.retention.recorded_start);
        if start <= was || first.last_offset.is_none_or(|last| last < start) {
            return Ok(false);
        }
        let max = shared.config.max_record_bytes as usize;
        // The position of the first record at or above `start`, and how many records were
        // still part of the log below it.
        let (mut end, mut hidden) = (first.map.len(), 0u64);
        let mut at = HEADER_LEN;
        for record in Records::new(&first.map[HEADER_LEN..], max) {
            let r = record.map_err(|(position, reason)| StorageError::Corruption {
                segment: super::segment::segment_path(&shared.dir, first.base),
                position: (HEADER_LEN + position) as u64,
                reason: reason.into(),
            })?;
            if r.offset >= start {
                end = at;
                break;
            }
            hidden += u64::from(r.offset >= was);
            at += r.framed_len();
        }
        let bases: Vec<Offset> = st.sealed.iter().map(|s| s.base).chain([st.active.base]).collect();
        manifest::write(shared.fs.as_ref(), &shared.dir, &bases, start)?;
        st.retention.recorded_start = start;
        st.records = st.records.saturating_sub(hidden);
        st.sealed[0].figures.records = st.sealed[0].figures.records.saturating_sub(hidden);
        st.ids.retain_moved(|at| (at.segment != 0 || at.position as usize >= end).then_some(at));
        tracing::info!(
            log_start = start,
            records = hidden,
            "the leader's log starts inside this log's first segment; the records below its start are no longer served"
        );
        Ok(true)
    }

    /// Begins the log anew at `start`, dropping every record it holds, which must all lie
    /// below `start`: a follower whose leader's log starts past everything it holds (its
    /// retention deleted them, or the follower is new), so what it holds has nothing to
    /// join. The first segment's base is `start` and the manifest's `log-start` line says
    /// so, as if retention had deleted everything below. Returns how many records went.
    pub fn begin_at(&self, start: Offset) -> Result<u64> {
        let shared = &self.shared;
        let (fs, dir) = (shared.fs.as_ref(), shared.dir.as_path());
        let mut st = shared.write();
        st.check_writable()?;
        if st.next_offset > start {
            let why = format!("the log holds records up to offset {}, not all below {start}", st.next_offset - 1);
            return Err(StorageError::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, why)));
        }
        // An active segment based at `start` is empty (every record lies below), and stays.
        let old: Vec<Offset> =
            st.sealed.iter().map(|s| s.base).chain([st.active.base]).filter(|&base| base != start).collect();
        // Created durably before the manifest lists it, as a roll does: a crash before the
        // manifest leaves a leftover file after the old chain, after it files below the
        // log start; recovery deletes either.
        let fresh = match st.active.base == start {
            true => None,
            false => Some(ActiveSegment::create(shared.fs.clone(), dir, start, reserve(&shared.config, 0))?),
        };
        manifest::write(fs, dir, &[start], start)?;
        st.retention.recorded_start = start;
        if old.is_empty() {
            return Ok(0);
        }
        let dropped = st.records;
        st.sealed.clear();
        if let Some(fresh) = fresh {
            st.active = fresh;
        }
        st.ids.clear();
        st.records = 0;
        st.next_offset = start;
        st.last = None;
        // A cleaning pass under way read segments that are gone: it must not swap them in.
        st.truncations += 1;
        shared.commit.truncations.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        st.compaction.set_clean_point(fs, dir, start);
        shared.commit.reset(start);
        drop(st);
        if let Err(e) = remove_segment_files(fs, dir, &old) {
            tracing::warn!(error = %e, "deleting the old segment files failed; the next start removes them");
        }
        Ok(dropped)
    }

    /// Deletes the first `count` sealed segments (none: `None`), then unlinks their files
    /// with the lock released.
    fn delete_and_unlink(&self, mut st: RwLockWriteGuard<'_, State>, count: usize) -> Result<Option<RetentionSummary>> {
        if count == 0 {
            return Ok(None);
        }
        let (summary, bases) = self.delete_leading(&mut st, count)?;
        drop(st);
        // Committed already (the manifest no longer lists them), and no reader can reach
        // them: unlinked without the lock. A failure only leaves files the next open deletes.
        let (fs, dir) = (self.shared.fs.as_ref(), self.shared.dir.as_path());
        if let Err(e) = remove_segment_files(fs, dir, &bases) {
            tracing::warn!(error = %e, "deleting segment files past retention failed; the next start removes them");
        }
        Ok(Some(summary))
    }

    /// Deletes the first `count` sealed segments: the manifest first (the commit point),
    /// then the state, then the files.
    fn delete_leading(&self, st: &mut State, count: usize) -> Result<(RetentionSummary, Vec<Offset>)> {
        let shared = &self.shared;
        let (fs, dir) = (shared.fs.as_ref(), shared.dir.as_path());
        let kept: Vec<Offset> = st.sealed[count..].iter().map(|s| s.base).chain([st.active.base]).collect();
        // Nothing has changed yet if this fails, and either manifest opens (recovery deletes
        // files below the log start it records): the log keeps taking writes (a full disk
        // is when retention matters most) and the next round tries again.
        manifest::write(fs, dir, &kept, kept[0])?;
        st.retention.recorded_start = kept[0];
        let gone: Vec<SealedSegment> = st.sealed.drain(..count).collect();
        let records: u64 = gone.iter().map(|s| s.figures.records).sum();
        st.records = st.records.saturating_sub(records);
        let shift = count as u32;
        // An ID whose latest record was deleted is gone, as in Kafka with `delete`.
        st.ids.retain_moved(|at| {
            (at.segment >= shift).then_some(super::id_index::Position { segment: at.segment - shift, ..at })
        });
        let bytes: u64 = gone.iter().map(|s| s.map.len() as u64).sum();
        st.retention.stats.deleted_segments += count as u64;
        st.retention.stats.deleted_bytes += bytes;
        let log_start = kept[0];
        let bases: Vec<Offset> = gone.iter().map(|s| s.base).collect();
        drop(gone);
        let summary = RetentionSummary { segments: count as u64, bytes, log_start };
        tracing::info!(segments = summary.segments, bytes, log_start, "retention deleted old segments");
        Ok((summary, bases))
    }
}
