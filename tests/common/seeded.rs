//! What seeded, replayable tests share: their seed counts from the environment and the
//! small generator behind their choices.

/// `name` from the environment as a number, or `default` when unset or not a number.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Xorshift (13, 7, 17): deterministic per seed, so a failing seed replays exactly. The
/// state must not be 0; callers seed it with `… | 1`.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}
