//! Group commit and the interval syncer.
//!
//! Many callers wait for durability at once; one of them (the leader) writes the buffer
//! and runs `fdatasync` while the others wait on a condition variable. When it finishes,
//! every waiter whose offset it covered returns; the rest elect the next leader. Records
//! appended during a sync wait for the next one, so one fsync serves everything appended
//! while the previous one ran. An fsync error is never retried: the log stops taking
//! writes (after a failed fsync the kernel may have dropped the dirty pages).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::log::Shared;
use super::segment::sync_file;
use super::{Offset, Result};

pub(super) struct Commit {
    /// Whether a leader is syncing right now.
    syncing: Mutex<bool>,
    done: Condvar,
    /// Every offset below this is fsynced.
    pub durable: AtomicU64,
    /// Every offset below this is written to the OS.
    pub flushed: AtomicU64,
    /// Group-commit fsyncs done, for stats: writes per fsync shows the batching.
    pub fsyncs: AtomicU64,
}

impl Commit {
    /// Recovery fsyncs what it finds, so a fresh log is durable up to its end.
    pub fn new(next_offset: Offset) -> Commit {
        Commit {
            syncing: Mutex::new(false),
            done: Condvar::new(),
            durable: AtomicU64::new(next_offset),
            flushed: AtomicU64::new(next_offset),
            fsyncs: AtomicU64::new(0),
        }
    }

    /// After a truncation (which fsyncs), the log is durable up to its new end.
    pub fn reset(&self, next_offset: Offset) {
        self.durable.store(next_offset, Ordering::Release);
        self.flushed.store(next_offset, Ordering::Release);
    }

    pub fn sync_through(&self, shared: &Shared, offset: Offset) -> Result<()> {
        let mut syncing = self.syncing.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if self.durable.load(Ordering::Acquire) > offset {
                return Ok(());
            }
            if *syncing {
                syncing = self.done.wait(syncing).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            *syncing = true;
            drop(syncing);
            let result = shared.sync_now();
            syncing = self.syncing.lock().unwrap_or_else(|p| p.into_inner());
            *syncing = false;
            self.done.notify_all();
            result?;
        }
    }
}

impl Shared {
    /// Writes the buffer, then fsyncs the active segment outside the state lock.
    /// (Sealed segments were fsynced when they were sealed.)
    pub(super) fn sync_now(&self) -> Result<()> {
        let (file, path, target) = {
            let mut st = self.write();
            let target = st.flush(self)?;
            (st.active.file.clone(), st.active.path.clone(), target)
        };
        if let Err(e) = sync_file(&file, self.config.faults.as_deref()) {
            self.write().fail(format!("fsync of {} failed: {e}", path.display()));
            return Err(e.into());
        }
        self.commit.durable.fetch_max(target, Ordering::AcqRel);
        self.commit.fsyncs.fetch_add(1, Ordering::Relaxed);
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
