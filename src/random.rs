//! Random bits for ids that must differ between processes and runs (a log's id, a cluster's
//! id, a process's incarnation). Not for keys or secrets.

use std::hash::{BuildHasher, Hasher};

/// 64 bits that differ per call: std's hasher keys are seeded from the OS's randomness once
/// per thread and stepped per `RandomState`, and the time and process id are mixed in so
/// two processes seeded alike still differ.
pub(crate) fn random_u64() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher
        .write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    hasher.write_u32(std::process::id());
    hasher.finish()
}

#[cfg(test)]
mod tests {
    #[test]
    fn calls_in_a_row_differ() {
        let drawn: std::collections::HashSet<u64> = (0..1000).map(|_| super::random_u64()).collect();
        assert_eq!(drawn.len(), 1000);
    }
}
