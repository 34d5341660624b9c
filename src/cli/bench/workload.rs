//! What the load is made of: the SET/GET mix, the key space and the value.

use std::fmt;
use std::str::FromStr;

/// The mix of requests `msglog bench` sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Set,
    Get,
    /// Each request is a SET with this probability (in percent), else a GET.
    Mixed {
        set_percent: u8,
    },
}

impl Workload {
    pub fn has_gets(self) -> bool {
        !matches!(self, Workload::Set)
    }

    /// Draws the next operation.
    pub(super) fn pick(self, rng: &mut Rng) -> Op {
        match self {
            Workload::Set => Op::Set,
            Workload::Get => Op::Get,
            Workload::Mixed { set_percent } => {
                if rng.below(100) < u64::from(set_percent) {
                    Op::Set
                } else {
                    Op::Get
                }
            }
        }
    }
}

impl FromStr for Workload {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "set" => Ok(Workload::Set),
            "get" => Ok(Workload::Get),
            other => {
                let percent = other
                    .strip_prefix("mixed:")
                    .ok_or_else(|| format!("unknown workload {s:?}; expected set, get or mixed:<set%>"))?;
                match percent.trim_end_matches('%').parse::<u8>() {
                    Ok(set_percent) if set_percent <= 100 => Ok(Workload::Mixed { set_percent }),
                    _ => Err(format!("bad SET percentage in {s:?}; expected 0..=100")),
                }
            }
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workload::Set => f.write_str("set"),
            Workload::Get => f.write_str("get"),
            Workload::Mixed { set_percent } => write!(f, "mixed:{set_percent}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Set,
    Get,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Set => "SET",
            Op::Get => "GET",
        })
    }
}

/// Keys are `key:` and a 12-digit zero-padded index, so every key has the same length and
/// the encoders can precompute RESP length prefixes.
pub(super) const KEY_LEN: usize = 16;
pub(super) const MAX_KEYS: u64 = 1_000_000_000_000;

pub(super) fn key_bytes(index: u64) -> [u8; KEY_LEN] {
    debug_assert!(index < MAX_KEYS);
    let mut key = *b"key:000000000000";
    let mut n = index;
    for digit in key[4..].iter_mut().rev() {
        *digit = b'0' + (n % 10) as u8;
        n /= 10;
    }
    key
}

/// The value every SET writes: printable ASCII, no spaces or line breaks, so it is valid in
/// both protocols. It depends only on its size, so a `get` run verifies what an earlier
/// `set` run with the same `--value-size` wrote.
pub(super) fn value_bytes(size: usize) -> Vec<u8> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    ALPHABET.iter().copied().cycle().take(size).collect()
}

/// SplitMix64: tiny, fast and plenty uniform for picking keys; not for cryptography.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub(super) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias is below 2^-40 for our `n`).
    pub(super) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_parses_and_displays() {
        for s in ["set", "get", "mixed:0", "mixed:30", "mixed:100"] {
            assert_eq!(s.parse::<Workload>().unwrap().to_string(), s);
        }
        assert_eq!("MIXED:20%".parse(), Ok(Workload::Mixed { set_percent: 20 }));
        assert!("mixed:101".parse::<Workload>().is_err());
        assert!("mixed:".parse::<Workload>().is_err());
        assert!("del".parse::<Workload>().is_err());
    }

    #[test]
    fn key_is_zero_padded_index() {
        assert_eq!(&key_bytes(12345), b"key:000000012345");
        assert_eq!(&key_bytes(MAX_KEYS - 1), b"key:999999999999");
    }

    #[test]
    fn value_is_printable_without_spaces() {
        let value = value_bytes(1000);
        assert_eq!(value.len(), 1000);
        assert!(value.iter().all(|b| b.is_ascii_graphic()));
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut rng = Rng::new(7);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            seen[rng.below(10) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
