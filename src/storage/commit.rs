//! Group commit and the interval syncer.
//!
//! Many callers wait for durability at once; one of them (the leader) writes the buffer
//! and runs `fdatasync` while the others sleep on a futex. When it finishes, every waiter
//! whose offset it covered returns; the rest elect the next leader. Records appended
//! during a sync wait for the next one, so one fsync serves everything appended while the
//! previous one ran. Waiters sleep on a generation counter rather than a mutex and
//! condition variable: a condvar makes every woken waiter re-take the mutex in turn, and
//! with 64 writers that convoy of context switches cost more than the fsync (perf).
//! An fsync error is never retried: the log stops taking writes (after a failed fsync
//! the kernel may have dropped the dirty pages).

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::fs::FileSystem;
use super::log::{Log, Shared};
use super::{Offset, Result};

pub(super) struct Commit {
    /// Whether a leader is syncing right now.
    syncing: AtomicBool,
    /// Bumped after every sync attempt; waiters sleep while it is unchanged.
    generation: AtomicU32,
    /// Every offset below this is fsynced.
    pub durable: AtomicU64,
    /// Every offset below this is written to the OS.
    pub flushed: AtomicU64,
    /// Group-commit fsyncs done, for stats: writes per fsync shows the batching.
    pub fsyncs: AtomicU64,
    /// How long each fsync took, in microseconds.
    pub fsync_micros: Buckets,
    /// Records each fsync made durable: how well group commit batches.
    pub records_per_fsync: Buckets,
    /// Truncations that cut records, as `State::truncations` counts them, readable without
    /// the lock (see [`Log::truncations`]).
    pub truncations: AtomicU64,
    /// Whether the log is in its [`SyncGroup`](super::sync_group::SyncGroup)'s list of
    /// logs to sync.
    pub queued: AtomicBool,
}

/// Upper bounds of the fsync latency buckets, microseconds: from a fast NVMe flush to a
/// disk in trouble.
const FSYNC_MICROS_BOUNDS: &[u64] =
    &[50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 1_000_000];
/// Upper bounds of the records-per-fsync buckets.
const RECORDS_BOUNDS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096];

/// A fixed-bucket histogram of atomics: one relaxed add per observation on the commit path,
/// and nothing here knows what format the server exports it in.
pub struct Buckets {
    bounds: &'static [u64],
    /// One more than `bounds`: the last counts what is above every bound.
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

/// A read of [`Buckets`]; see [`Log::fsync_stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Distribution {
    /// `(upper bound, observations above the previous bound and at or below this one)`,
    /// ascending.
    pub buckets: Vec<(u64, u64)>,
    /// Every observation, those above the last bound included.
    pub count: u64,
    pub sum: u64,
}

/// Fsync figures since the log was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsyncStats {
    pub fsyncs: u64,
    pub micros: Distribution,
    pub records_per_fsync: Distribution,
}

impl Buckets {
    fn new(bounds: &'static [u64]) -> Buckets {
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Buckets { bounds, counts, sum: AtomicU64::new(0) }
    }

    fn record(&self, value: u64) {
        let bucket = self.bounds.partition_point(|&bound| bound < value);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    fn read(&self) -> Distribution {
        let buckets: Vec<(u64, u64)> =
            self.bounds.iter().zip(self.counts.iter()).map(|(bound, c)| (*bound, c.load(Ordering::Relaxed))).collect();
        let above = self.counts.last().map_or(0, |c| c.load(Ordering::Relaxed));
        let count = buckets.iter().map(|(_, c)| c).sum::<u64>() + above;
        Distribution { buckets, count, sum: self.sum.load(Ordering::Relaxed) }
    }
}

impl Log {
    /// Fsync counts, latencies and batching, for metrics.
    pub fn fsync_stats(&self) -> FsyncStats {
        let commit = &self.shared.commit;
        FsyncStats {
            fsyncs: commit.fsyncs.load(Ordering::Relaxed),
            micros: commit.fsync_micros.read(),
            records_per_fsync: commit.records_per_fsync.read(),
        }
    }
}

impl Commit {
    /// Recovery fsyncs what it finds, so a fresh log is durable up to its end.
    pub fn new(next_offset: Offset) -> Commit {
        Commit {
            syncing: AtomicBool::new(false),
            generation: AtomicU32::new(0),
            durable: AtomicU64::new(next_offset),
            flushed: AtomicU64::new(next_offset),
            fsyncs: AtomicU64::new(0),
            fsync_micros: Buckets::new(FSYNC_MICROS_BOUNDS),
            records_per_fsync: Buckets::new(RECORDS_BOUNDS),
            queued: AtomicBool::new(false),
            truncations: AtomicU64::new(0),
        }
    }

    /// After a truncation (which fsyncs), the log is durable up to its new end.
    pub fn reset(&self, next_offset: Offset) {
        self.durable.store(next_offset, Ordering::Release);
        self.flushed.store(next_offset, Ordering::Release);
    }

    /// Blocks until every record up to `offset` that the log holds is fsynced: once a sync
    /// found the log ending at or below `offset` (a truncation cut it), it returns rather
    /// than sync again for records that may never come.
    pub fn sync_through(&self, shared: &Shared, offset: Offset) -> Result<()> {
        loop {
            if self.durable.load(Ordering::Acquire) > offset {
                return Ok(());
            }
            if self.syncing.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                let result = match self.durable.load(Ordering::Acquire) > offset {
                    true => Ok(()),
                    // Every error here has failed the log: say what failed to the callers
                    // whose records were in flight, and "read-only" only to later ones.
                    false => shared.sync_now().map_err(|e| shared.read().failure_for(offset).err().unwrap_or(e)),
                };
                self.syncing.store(false, Ordering::Release);
                self.generation.fetch_add(1, Ordering::Release);
                futex::wake_all(&self.generation);
                result?;
                if shared.read().next_offset <= offset {
                    return Ok(());
                }
                continue;
            }
            // Read the generation before re-checking, so a leader finishing in between
            // changes it and the wait below returns at once.
            let generation = self.generation.load(Ordering::Acquire);
            if self.durable.load(Ordering::Acquire) > offset {
                return Ok(());
            }
            if self.syncing.load(Ordering::Acquire) {
                futex::wait(&self.generation, generation);
            }
        }
    }
}

pub(super) mod futex {
    //! The two futex calls group commit needs (Linux).
    use std::sync::atomic::AtomicU32;

    /// Sleeps while `word` holds `expected` (or returns at once if it does not).
    pub fn wait(word: &AtomicU32, expected: u32) {
        // SAFETY: FUTEX_WAIT reads the aligned u32 behind a live reference; no timeout.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                expected,
                std::ptr::null::<libc::timespec>(),
            );
        }
    }

    pub fn wake_all(word: &AtomicU32) {
        // SAFETY: FUTEX_WAKE only uses the address as a key.
        unsafe {
            libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG, i32::MAX);
        }
    }
}

/// What one sync of a log covers, taken under its lock before the fsync.
pub(super) struct PendingSync {
    fs: Arc<dyn FileSystem>,
    pub file: Arc<File>,
    pub path: PathBuf,
    base: Offset,
    /// Every record below this is written to the OS and is what the fsync makes durable.
    target: Offset,
    synced_len: u64,
    truncations: u64,
}

impl PendingSync {
    pub fn fs(&self) -> &Arc<dyn FileSystem> {
        &self.fs
    }
}

impl Shared {
    /// Writes the buffer, then fsyncs the active segment outside the state lock.
    /// (Sealed segments were fsynced when they were sealed.)
    pub(super) fn sync_now(&self) -> Result<()> {
        let pending = self.prepare_sync()?;
        let started = Instant::now();
        if let Err(e) = pending.fs.sync_data(&pending.file, &pending.path) {
            return Err(self.write().fail(format!("fsync of {} failed: {e}", pending.path.display())));
        }
        self.finish_sync(&pending, started.elapsed())
    }

    /// The first half of a sync: writes the buffer to the OS and says what an fsync of the
    /// active segment would make durable.
    pub(super) fn prepare_sync(&self) -> Result<PendingSync> {
        let mut st = self.write();
        let target = st.flush(self)?;
        let a = &st.active;
        Ok(PendingSync {
            fs: a.fs(),
            file: a.file.clone(),
            path: a.path.clone(),
            base: a.base,
            target,
            synced_len: a.written,
            truncations: st.truncations,
        })
    }

    /// The second half, once the fsync succeeded: raises the durable mark.
    /// A truncation during the fsync voids it: the records it covered may be gone and
    /// others appended at their offsets, so the durable mark is left where the cut set it
    /// and the caller syncs again.
    /// After the fsync the segment header's watermark is raised to the bytes it covered,
    /// without another fsync: the value is true already, and the next fsync persists it.
    pub(super) fn finish_sync(&self, pending: &PendingSync, took: Duration) -> Result<()> {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.commit.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.commit.fsync_micros.record(micros);
        // Under the lock, so that no truncation (which takes it for writing) slips in
        // between the check and the raise, and no roll between the check and the mark.
        let mut st = self.write();
        if st.truncations == pending.truncations {
            let before = self.commit.durable.fetch_max(pending.target, Ordering::AcqRel);
            // Offsets are dense within a run of appends, so the raise counts the records.
            self.commit.records_per_fsync.record(pending.target.saturating_sub(before));
            if st.failed.is_none()
                && st.active.base == pending.base
                && st.active.marked < pending.synced_len
                && let Err(e) = st.active.mark(pending.synced_len)
            {
                return Err(st.fail(format!("write to {} failed: {e}", pending.path.display())));
            }
        }
        Ok(())
    }
}

/// The thread behind `FsyncPolicy::Interval`.
pub(super) struct IntervalSyncer {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl IntervalSyncer {
    pub fn start(shared: Arc<Shared>, every: Duration) -> std::io::Result<IntervalSyncer> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new().name("msglog-fsync".into()).spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                let behind = shared.commit.durable.load(Ordering::Acquire) < shared.read().next_offset;
                if behind && shared.sync_now().is_err() {
                    // `sync_now` marked the log failed and logged why; nothing more to do.
                    return;
                }
            }
        })?;
        Ok(IntervalSyncer { stop, thread })
    }

    pub fn stop(self) {
        let _ = self.stop.send(());
        if self.thread.join().is_err() {
            tracing::error!("the interval fsync thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use crate::storage::{Config, Log};

    #[test]
    fn a_sync_through_records_a_truncation_cut_returns_once_the_rest_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let log = std::sync::Arc::new(Log::open(dir.path(), Config::default()).unwrap());
        for i in 0..3 {
            log.append(format!("id-{i}").as_bytes(), b"message").unwrap();
        }
        log.sync().unwrap();
        log.truncate_to(1).unwrap();
        log.append(b"after", b"cut").unwrap();
        // Offset 2 is gone: a sync through it makes what is there durable and returns,
        // rather than fsync again and again for a record that may never come.
        let (done, returned) = mpsc::channel();
        let theirs = std::sync::Arc::clone(&log);
        std::thread::spawn(move || done.send(theirs.sync_through(2).is_ok()));
        assert_eq!(returned.recv_timeout(Duration::from_secs(20)), Ok(true), "the sync returned");
        assert_eq!(log.durable_offset(), 2, "the record appended after the cut is durable");
    }
}
