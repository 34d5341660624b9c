//! Fault injection for tests: make the Nth write or fsync fail, or hold an fsync in flight.
use std::io;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Mutex, PoisonError};

/// Counters of operations left before a failure; negative means "never fail".
#[derive(Debug)]
pub struct Faults {
    writes_until_failure: AtomicI64,
    syncs_until_failure: AtomicI64,
    /// Armed by [`Faults::hold_next_sync`]: the next fsync reports that it started, then
    /// waits to be released.
    held_sync: Mutex<Option<(Sender<()>, Receiver<()>)>>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            writes_until_failure: AtomicI64::new(-1),
            syncs_until_failure: AtomicI64::new(-1),
            held_sync: Mutex::new(None),
        }
    }
}

/// The test's side of a held fsync.
#[derive(Debug)]
pub struct HeldSync {
    /// Receives once the fsync has started (its buffer is written; the fsync waits).
    pub started: Receiver<()>,
    /// Send (or drop) to let the fsync finish.
    pub release: Sender<()>,
}

impl Faults {
    /// The write after `n` more successful writes fails.
    pub fn fail_write_after(&self, n: i64) {
        self.writes_until_failure.store(n, Ordering::SeqCst);
    }
    /// The fsync after `n` more successful fsyncs fails.
    pub fn fail_sync_after(&self, n: i64) {
        self.syncs_until_failure.store(n, Ordering::SeqCst);
    }
    /// Holds the next fsync in flight, so a test can act while it is: the state lock is
    /// free and the fsync's target already decided.
    pub fn hold_next_sync(&self) -> HeldSync {
        let (started_tx, started) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        *self.held_sync.lock().unwrap_or_else(PoisonError::into_inner) = Some((started_tx, release_rx));
        HeldSync { started, release }
    }
    pub(crate) fn check_write(&self) -> io::Result<()> {
        tick(&self.writes_until_failure, "injected write failure")
    }
    pub(crate) fn check_sync(&self) -> io::Result<()> {
        let held = self.held_sync.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some((started, release)) = held {
            let _ = started.send(());
            // A dropped sender releases too.
            let _ = release.recv();
        }
        tick(&self.syncs_until_failure, "injected fsync failure")
    }
}

fn tick(counter: &AtomicI64, what: &str) -> io::Result<()> {
    let before = counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n > 0).then(|| n - 1).or(Some(n)));
    match before {
        Ok(0) => Err(io::Error::other(what.to_string())),
        _ => Ok(()),
    }
}
