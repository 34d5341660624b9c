//! Log compaction (Kafka's log cleaner): sealed segments are rewritten keeping only the
//! latest record of each ID, offsets unchanged (`docs/FORMAT.md`, "Compaction").
//!
//! A pass is given a clean point `upto` that the caller knows committed (the durable
//! offset standalone, the high watermark when replicated), so what it decides never
//! depends on a record that could still be cut. Only sealed segments wholly below `upto`
//! are rewritten. A record at offset `o` of ID `x` is dropped iff `x` has a newer record
//! in `(o, upto)`; the newest record of an ID is dropped only if it is a tombstone below
//! the caller's tombstone horizon and older than the delete retention. So passes with a
//! rising `upto` end where one pass with the last `upto` would.
//!
//! The pass reads and writes without the log's lock ([`rewrite`](super::rewrite)); only
//! the swap ([`swap`](super::swap)) takes the write lock, after checking that nothing it
//! read was truncated meanwhile (else it abandons the pass). The clean point reached is
//! persisted in `log/CLEANED`, so a restart does not clean everything again.

use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::cleaner_thread::{RateLimit, Unpaced};
use super::fs::replace_file;
use super::log::{State, now_ms};
use super::rewrite::{self, Group, Input, Pace, Rules};
use super::{Log, Offset, Result, StorageError};

/// What one pass may clean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanOptions {
    /// Committed end of the log: only sealed segments wholly below it are cleaned, and only
    /// records below it decide what is dropped.
    pub upto: Offset,
    /// A tombstone is dropped only below this offset (and once past `delete_retention`).
    pub tombstone_horizon: Offset,
    /// How long a tombstone is kept after it was written.
    pub delete_retention: Duration,
    /// Read plus write rate limit; `None`: unlimited.
    pub bytes_per_sec: Option<u64>,
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CleanSummary {
    pub segments_in: u64,
    pub segments_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub records_kept: u64,
    pub records_dropped: u64,
    /// Swaps the pass made (one per piece of at most two segments' worth of input).
    pub swaps: u64,
    /// Bytes of input of the largest piece: what the pass had on disk twice at most.
    pub largest_swap_bytes_in: u64,
    pub seconds: f64,
}

impl CleanSummary {
    fn add(&mut self, piece: CleanSummary) {
        self.segments_in += piece.segments_in;
        self.segments_out += piece.segments_out;
        self.bytes_in += piece.bytes_in;
        self.bytes_out += piece.bytes_out;
        self.records_kept += piece.records_kept;
        self.records_dropped += piece.records_dropped;
        self.swaps += 1;
        self.largest_swap_bytes_in = self.largest_swap_bytes_in.max(piece.bytes_in);
    }
}

/// Cleaner counters for STATS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanerStats {
    /// Passes that swapped cleaned segments in since open.
    pub runs: u64,
    /// Bytes of segments the cleaner removed from disk since open.
    pub cleaned_bytes: u64,
}

/// The cleaner's part of the log state.
#[derive(Debug, Default)]
pub(super) struct Compaction {
    /// Records below this offset were cleaned against each other (the clean point).
    pub cleaned: Offset,
    /// A pass is under way (passes do not overlap).
    pub running: bool,
    pub stats: CleanerStats,
    /// On a follower, the leader's word on where it may clean (see
    /// [`Log::leader_clean_points`]). Atomics: the follower loop sets them per chunk under
    /// the read lock.
    leader_committed: AtomicU64,
    leader_horizon: AtomicU64,
}

const CLEANED_FILE: &str = "CLEANED";
const CLEANED_FIRST_LINE: &str = "msglog-cleaned 1";

impl Compaction {
    /// The persisted clean point of the log in `dir` (0 when none was written).
    pub fn load(dir: &Path) -> Result<Compaction> {
        let path = dir.join(CLEANED_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Compaction::default()),
            Err(e) => return Err(e.into()),
        };
        let mut lines = text.lines();
        let cleaned = match (lines.next(), lines.next().map(str::parse::<Offset>)) {
            (Some(CLEANED_FIRST_LINE), Some(Ok(offset))) => offset,
            _ => {
                let reason = format!("clean point file holds {:?}", text.chars().take(48).collect::<String>());
                return Err(StorageError::Corruption { segment: path, position: 0, reason });
            }
        };
        Ok(Compaction { cleaned, ..Compaction::default() })
    }

    /// Moves the clean point and persists it. Failing to persist only costs cleaning work
    /// (a lower point on disk is always true), except when lowering it, which says so.
    pub fn set_clean_point(&mut self, fs: &dyn super::FileSystem, dir: &Path, cleaned: Offset) {
        if cleaned == self.cleaned {
            return;
        }
        let text = format!("{CLEANED_FIRST_LINE}\n{cleaned}\n");
        if let Err(e) = replace_file(fs, &dir.join(CLEANED_FILE), text.as_bytes()) {
            tracing::warn!(error = %e, cleaned, "persisting the clean point failed");
        }
        self.cleaned = cleaned;
    }
}

/// A piece's input is at most this many segments' worth of bytes (or one segment).
const PIECE_SEGMENTS: u64 = 2;

/// The prefix cut into runs of adjacent segments of at most `cap` bytes each (a longer
/// segment alone), in log order.
fn pieces(prefix: &[Input], cap: u64) -> Vec<Range<usize>> {
    let mut pieces = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, input) in prefix.iter().enumerate() {
        if i > start && bytes + input.len > cap {
            pieces.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += input.len;
    }
    if start < prefix.len() {
        pieces.push(start..prefix.len());
    }
    pieces
}

/// Sealed segments the pass may clean: the longest prefix wholly below `upto`.
fn cleanable(st: &State, upto: Offset) -> usize {
    st.sealed.iter().take_while(|s| s.last_offset.map_or(s.base < upto, |last| last < upto)).count()
}

impl Log {
    /// A follower's leader shipped its committed offset (every record below it is never
    /// cut) and its tombstone horizon (every replica holds every record below it). Kept as
    /// the highest heard in one session with one leader: a session begins with
    /// [`forget_leader_clean_points`](Log::forget_leader_clean_points), so that only what
    /// the current leader said of the log as it now stands counts.
    pub fn set_leader_clean_points(&self, committed: Offset, tombstone_horizon: Offset) {
        let st = self.shared.read();
        st.compaction.leader_committed.fetch_max(committed, Ordering::Relaxed);
        st.compaction.leader_horizon.fetch_max(tombstone_horizon, Ordering::Relaxed);
    }

    /// Back to (0, 0): the follower cleans nothing until its leader ships points again.
    /// Called when a session with a leader begins (a new leader, or the log was cut or
    /// begun again since the last points were heard).
    pub fn forget_leader_clean_points(&self) {
        let st = self.shared.read();
        st.compaction.leader_committed.store(0, Ordering::Relaxed);
        st.compaction.leader_horizon.store(0, Ordering::Relaxed);
    }

    /// What [`set_leader_clean_points`](Log::set_leader_clean_points) was last told, (0, 0)
    /// until then: a follower cleans below the committed offset (and its own durable one),
    /// dropping tombstones only below the horizon, so that what it removes depends only on
    /// its log and what the leader shipped.
    pub fn leader_clean_points(&self) -> (Offset, Offset) {
        let st = self.shared.read();
        (st.compaction.leader_committed.load(Ordering::Relaxed), st.compaction.leader_horizon.load(Ordering::Relaxed))
    }

    /// Bytes of sealed segments below `upto` not yet cleaned, over all sealed bytes below
    /// `upto` (0 when there are none).
    pub fn dirty_ratio(&self, upto: Offset) -> f64 {
        let st = self.shared.read();
        let prefix = &st.sealed[..cleanable(&st, upto)];
        let total: u64 = prefix.iter().map(|s| s.map.len() as u64).sum();
        let dirty: u64 = prefix.iter().filter(|s| s.base >= st.compaction.cleaned).map(|s| s.map.len() as u64).sum();
        if total == 0 { 0.0 } else { dirty as f64 / total as f64 }
    }

    /// Cleans the sealed segments wholly below `opts.upto`, in pieces (`docs/FORMAT.md`,
    /// "Compaction"). `None` when there was nothing to clean, another pass was under way,
    /// or the log was truncated before the first piece was swapped in (the pass is
    /// abandoned and its files removed); a truncation later ends the pass early.
    pub fn clean(&self, opts: &CleanOptions) -> Result<Option<CleanSummary>> {
        match opts.bytes_per_sec {
            Some(bytes_per_sec) => {
                self.clean_paced(opts, &mut RateLimit { bytes_per_sec, started: Instant::now(), bytes: 0 })
            }
            None => self.clean_paced(opts, &mut Unpaced),
        }
    }

    /// Cleaner counters since open.
    pub fn cleaner_stats(&self) -> CleanerStats {
        self.shared.read().compaction.stats
    }

    /// [`clean`](Log::clean), with `pace` deciding the rate and when to give up.
    pub(crate) fn clean_paced(&self, opts: &CleanOptions, pace: &mut dyn Pace) -> Result<Option<CleanSummary>> {
        let started = Instant::now();
        let shared = &self.shared;
        let max = shared.config.max_record_bytes as usize;
        // Under `--fsync never` or `interval` the caller's durable offset only means
        // written to the OS: a record that supersedes another must be fsynced before the
        // other is dropped, or a power cut could lose both. Sealed segments already are.
        let upto = opts.upto.min(self.next_offset());
        if upto > 0 && shared.commit.durable.load(std::sync::atomic::Ordering::Acquire) < upto {
            shared.sync_through(upto - 1)?;
        }
        let opts = &CleanOptions { upto, ..opts.clone() };
        let Some(snapshot) = self.snapshot(opts.upto)? else { return Ok(None) };
        let _running = Running(self);
        let Some(latest) = rewrite::latest_offsets(&snapshot.readers, snapshot.cleaned, opts.upto, max, pace)? else {
            return Ok(None);
        };
        let retention_ms = i64::try_from(opts.delete_retention.as_millis()).unwrap_or(i64::MAX);
        let (epoch_lasts, epoch_last_ids, log_start) = {
            let st = shared.read();
            let lasts = super::epoch::last_record_of_each_epoch(&st, &shared.config)?;
            // Only epochs a later one closed: a tombstone that deletes an epoch's last record
            // lies in a later epoch, so the log's last epoch shields none (and its last record
            // so far moves as records come, which would make passes depend on their timing).
            let closed = &lasts[..lasts.len().saturating_sub(1)];
            let ids = super::epoch::ids_at(&st, &shared.config, closed)?;
            (lasts, ids, st.retention.recorded_start)
        };
        let rules = Rules {
            latest: &latest,
            log_start,
            epoch_lasts: &epoch_lasts,
            epoch_last_ids: &epoch_last_ids,
            clean_point: snapshot.cleaned,
            tombstone_horizon: opts.tombstone_horizon.min(opts.upto),
            tombstones_before_ms: now_ms().saturating_sub(retention_ms),
        };
        // One table for the whole pass, but the segments are rewritten and swapped in
        // pieces, oldest first: until its swap a piece's input and output are both on
        // disk, so the piece, not the whole dirty log, bounds what a pass adds to the disk.
        let mut done = Done::default();
        for piece in pieces(&snapshot.prefix, PIECE_SEGMENTS * shared.config.segment_bytes) {
            let inputs = &snapshot.prefix[piece.clone()];
            let end = snapshot.prefix.get(piece.end).map_or(snapshot.next_base, |i| i.base);
            let (fs, dir) = (shared.fs.as_ref(), shared.dir.as_path());
            let Some(groups) = rewrite::rewrite(fs, dir, &shared.config, inputs, end, &rules, pace)? else { break };
            if !self.swap_piece(&snapshot, inputs, end, groups, &mut done)? {
                break;
            }
        }
        let Some(summary) = done.summary else { return Ok(None) };
        self.shared.write().compaction.stats.runs += 1;
        let summary = CleanSummary { seconds: started.elapsed().as_secs_f64(), ..summary };
        tracing::info!(
            segments_in = summary.segments_in,
            segments_out = summary.segments_out,
            bytes_in = summary.bytes_in,
            bytes_out = summary.bytes_out,
            records_kept = summary.records_kept,
            records_dropped = summary.records_dropped,
            swaps = summary.swaps,
            seconds = format_args!("{:.3}", summary.seconds),
            "cleaned the log"
        );
        Ok(Some(summary))
    }

    /// Swaps one piece's groups in place of its `inputs` and moves the clean point to the
    /// piece's `end`: every record below it was filtered against every record up to the
    /// pass's `upto`, as after a whole pass. False, with the piece's files removed, when
    /// the log was truncated since the snapshot (the pass is then abandoned).
    fn swap_piece(
        &self,
        snapshot: &Snapshot,
        inputs: &[Input],
        end: Offset,
        mut groups: Vec<Group>,
        done: &mut Done,
    ) -> Result<bool> {
        let shared = &self.shared;
        let (fs, dir) = (shared.fs.as_ref(), shared.dir.as_path());
        let mut st = shared.write();
        let at = done.at;
        let unchanged = st.truncations == snapshot.truncations
            && st.failed.is_none()
            && st.sealed.len() >= at + inputs.len()
            && st.sealed[at..].iter().zip(inputs).all(|(s, i)| s.base == i.base && s.map.len() as u64 == i.len);
        if !unchanged {
            drop(st);
            rewrite::discard(fs, dir, &groups);
            tracing::info!("log cleaning abandoned: the log was truncated meanwhile");
            return Ok(false);
        }
        let swapped: Vec<(Offset, Offset)> =
            groups.iter().filter(|g| g.new.is_some()).map(|g| (g.base, g.end)).collect();
        let merged_away: Vec<Offset> =
            groups.iter().flat_map(|g| inputs[g.inputs.clone()].iter().skip(1).map(|i| i.base)).collect();
        if !swapped.is_empty() {
            let bases: Vec<Offset> = st.sealed.iter().map(|s| s.base).chain([st.active.base]).collect();
            let after: Vec<Offset> = bases.into_iter().filter(|b| !merged_away.contains(b)).collect();
            let chain = (after.as_slice(), st.retention.recorded_start);
            if let Err(e) = super::swap::commit(fs, dir, &swapped, chain, &merged_away) {
                return Err(st.fail(format!("swapping cleaned segments in failed: {e}")));
            }
        }
        let (summary, whole) = super::swap::install(&mut st, &mut groups, at..at + inputs.len());
        if !whole {
            // Only a bug gets here (the index points at an ID's newest record, which is
            // always kept), but the index can always be rebuilt from the segments.
            tracing::error!("the ID index pointed at a record the cleaner dropped; rebuilding it");
            if let Err(e) = st.rebuild_indexes(shared) {
                return Err(st.fail(format!("rebuilding the ID index after cleaning failed: {e}")));
            }
        }
        let cleaned = end.max(st.compaction.cleaned);
        st.compaction.set_clean_point(fs, dir, cleaned);
        st.compaction.stats.cleaned_bytes += summary.bytes_in.saturating_sub(summary.bytes_out);
        done.add(summary);
        Ok(true)
    }

    /// What the pass reads, taken under the lock, and the pass marked as running. `None`
    /// when there is nothing to clean or a pass is running.
    fn snapshot(&self, upto: Offset) -> Result<Option<Snapshot>> {
        let mut st = self.shared.write();
        let count = cleanable(&st, upto);
        if count == 0 || st.compaction.running || st.failed.is_some() {
            return Ok(None);
        }
        let input = |s: &super::segment::SealedSegment| Input {
            base: s.base,
            path: s.path.clone(),
            file: None,
            len: s.map.len() as u64,
            last_offset: s.last_offset,
            buffered: Vec::new(),
        };
        let prefix: Vec<Input> = st.sealed[..count].iter().map(input).collect();
        let cleaned = st.compaction.cleaned;
        // Only records in `[cleaned, upto)` decide; they lie in the prefix's dirty part and
        // in the segments after it that start below `upto`.
        let mut readers = Vec::new();
        for s in st.sealed.iter().filter(|s| s.last_offset.is_some_and(|last| last >= cleaned) && s.base < upto) {
            readers.push(input(s));
        }
        let active = &st.active;
        if active.base < upto {
            readers.push(Input {
                base: active.base,
                path: active.path.clone(),
                file: Some(active.file.clone()),
                len: active.written,
                last_offset: active.last_offset,
                buffered: active.buffer.clone(),
            });
        }
        let next_base = st.sealed.get(count).map_or(st.active.base, |s| s.base);
        let truncations = st.truncations;
        st.compaction.running = true;
        Ok(Some(Snapshot { prefix, readers, next_base, cleaned, truncations }))
    }
}

struct Snapshot {
    /// The sealed segments to clean.
    prefix: Vec<Input>,
    /// The segments holding records in `[cleaned, upto)`.
    readers: Vec<Input>,
    /// Base of the first segment after the prefix.
    next_base: Offset,
    cleaned: Offset,
    truncations: u64,
}

/// The pieces of a pass swapped in so far.
#[derive(Default)]
struct Done {
    /// Where the next piece's inputs begin in the log's sealed segments.
    at: usize,
    summary: Option<CleanSummary>,
}

impl Done {
    fn add(&mut self, piece: CleanSummary) {
        self.at += piece.segments_out as usize;
        self.summary.get_or_insert_with(CleanSummary::default).add(piece);
    }
}

/// Clears the running mark when the pass ends, however it ends.
struct Running<'a>(&'a Log);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.shared.write().compaction.running = false;
    }
}
