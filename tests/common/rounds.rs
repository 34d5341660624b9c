//! How a fault scenario runs: seeded rounds (`MSGLOG_SCENARIO_ROUNDS` of them, from seed
//! `MSGLOG_SCENARIO_SEED`), and phases that each wait for a number of acknowledged writes.

use super::history::{History, Outcome};
use super::poll_until;

/// Acknowledged writes each phase of a scenario waits for: enough that a fault lands
/// mid-stream, few enough that a round takes seconds.
pub const PHASE_WRITES: usize = 150;

fn rounds() -> u64 {
    std::env::var("MSGLOG_SCENARIO_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(1)
}

pub fn first_seed() -> u64 {
    std::env::var("MSGLOG_SCENARIO_SEED").ok().and_then(|r| r.parse().ok()).unwrap_or(1)
}

/// Runs `scenario` once per round with its own seed, naming the seed if it fails.
pub fn for_each_seed(name: &str, scenario: impl Fn(u64)) {
    for seed in first_seed()..first_seed() + rounds() {
        eprintln!("{name}: seed {seed} (replay with MSGLOG_SCENARIO_SEED={seed})");
        scenario(seed);
    }
}

/// Waits until `count` more writes than now have been acknowledged.
pub fn await_acked_writes(history: &History, count: usize) {
    let target = history.counts().acked_writes + count;
    poll_until(&format!("{count} more acknowledged writes"), || {
        (history.counts().acked_writes >= target).then_some(())
    });
}

/// Writes answered with an error or given up on.
pub fn refused_writes(history: &History) -> usize {
    history.ops().iter().filter(|op| matches!(op.outcome, Outcome::WriteFailed(_) | Outcome::WriteUnknown)).count()
}
