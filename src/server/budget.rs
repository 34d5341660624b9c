//! One memory budget for the bytes every connection buffers: requests still arriving,
//! replies waiting to be written.
//!
//! A per-connection bound alone does not bound the server: 34 clients each announcing a
//! 60 MiB MSET and never finishing it are 2 GiB, whatever each one's limit. So every
//! connection reserves from a budget shared by all of them as its buffers grow beyond a
//! small free allowance, and gives back when they shrink or it closes. A connection that
//! would take the budget past its limit is told so and closed; the others carry on.
//!
//! The allowance is what an idle or ordinary connection holds (one read chunk, a few small
//! replies), so the common case touches no shared counter.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Buffered bytes a connection holds without reserving any of the budget.
pub(crate) const FREE_ALLOWANCE: usize = 64 * 1024;

/// The shared budget.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: usize,
    used: AtomicUsize,
}

/// Taking more would pass the budget's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OverBudget;

impl Budget {
    pub(crate) fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget { limit, used: AtomicUsize::new(0) })
    }

    /// Bytes reserved by all connections now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self, bytes: usize) -> Result<(), OverBudget> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let wanted = used.checked_add(bytes).filter(|&total| total <= self.limit).ok_or(OverBudget)?;
            match self.used.compare_exchange_weak(used, wanted, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(now) => used = now,
            }
        }
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// One connection's share of the budget; given back when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Arc<Budget>,
    held: usize,
}

impl Reservation {
    pub(crate) fn new(budget: Arc<Budget>) -> Reservation {
        Reservation { budget, held: 0 }
    }

    /// Makes the reservation cover a connection buffering `buffered` bytes. On error the
    /// reservation is unchanged and the caller must shrink its buffers (or close).
    pub(crate) fn cover(&mut self, buffered: usize) -> Result<(), OverBudget> {
        let needed = buffered.saturating_sub(FREE_ALLOWANCE);
        // Unchanged (nearly always 0 = 0) touches no shared cache line.
        if needed > self.held {
            self.budget.take(needed - self.held)?;
        } else if needed < self.held {
            self.budget.give_back(self.held - needed);
        }
        self.held = needed;
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.give_back(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_share_one_limit_and_give_back_when_dropped() {
        let budget = Budget::new(3 * FREE_ALLOWANCE);
        let (mut a, mut b) = (Reservation::new(budget.clone()), Reservation::new(budget.clone()));
        assert_eq!(a.cover(FREE_ALLOWANCE), Ok(()), "the allowance is free");
        assert_eq!(budget.used(), 0);
        assert_eq!(a.cover(3 * FREE_ALLOWANCE), Ok(()));
        assert_eq!(b.cover(3 * FREE_ALLOWANCE), Err(OverBudget), "two reservations of 2 allowances pass 3");
        assert_eq!(b.cover(2 * FREE_ALLOWANCE), Ok(()));
        assert_eq!(budget.used(), 3 * FREE_ALLOWANCE);
        assert_eq!(a.cover(0), Ok(()));
        assert_eq!(budget.used(), FREE_ALLOWANCE);
        drop(b);
        assert_eq!(budget.used(), 0);
    }
}
