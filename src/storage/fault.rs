//! Fault injection for tests: make the Nth write or fsync fail.
use std::io;
use std::sync::atomic::{AtomicI64, Ordering};

/// Counters of operations left before a failure; negative means "never fail".
#[derive(Debug)]
pub struct Faults {
    writes_until_failure: AtomicI64,
    syncs_until_failure: AtomicI64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            writes_until_failure: AtomicI64::new(-1),
            syncs_until_failure: AtomicI64::new(-1),
        }
    }
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
    pub(crate) fn check_write(&self) -> io::Result<()> {
        tick(&self.writes_until_failure, "injected write failure")
    }
    pub(crate) fn check_sync(&self) -> io::Result<()> {
        tick(&self.syncs_until_failure, "injected fsync failure")
    }
}

fn tick(counter: &AtomicI64, what: &str) -> io::Result<()> {
    let before = counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
        (n > 0).then(|| n - 1).or(Some(n))
    });
    match before {
        Ok(0) => Err(io::Error::other(what.to_string())),
        _ => Ok(()),
    }
}
