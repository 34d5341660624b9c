//! Refusals worth a WARN without letting a peer that retries in a loop flood the log: one
//! line per interval, saying how many like it were left out since.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a throttled warning may be logged.
const EVERY: Duration = Duration::from_secs(10);

#[derive(Default)]
pub(crate) struct Throttle {
    /// When the last line went out, and how many were held back since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    /// `Some(held back since the last line)` when this occurrence should be logged.
    pub(crate) fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (last, held) = &mut *state;
        match last {
            Some(at) if now.duration_since(*at) < EVERY => {
                *held += 1;
                None
            }
            _ => {
                *last = Some(now);
                Some(std::mem::take(held))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_counting_what_was_held_back() {
        let throttle = Throttle::default();
        let start = Instant::now();
        assert_eq!(throttle.admit_at(start), Some(0));
        assert_eq!(throttle.admit_at(start + Duration::from_secs(1)), None);
        assert_eq!(throttle.admit_at(start + Duration::from_secs(2)), None);
        assert_eq!(throttle.admit_at(start + EVERY), Some(2));
        assert_eq!(throttle.admit_at(start + EVERY), None);
    }
}
