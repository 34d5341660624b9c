//! Which partition an ID belongs to, and which nodes hold each partition.
//!
//! Both are pure functions, documented in docs/FORMAT.md ("Partitions"), and must never
//! change: an ID's partition decides which log holds it, so a different answer after an
//! upgrade would make every existing record unreachable.
//!
//! - [`partition_of`] hashes an ID's bytes with the 32-bit murmur2 that Kafka's default
//!   partitioner uses, so a key lands in the same partition number as it would in a Kafka
//!   topic with as many partitions.
//! - [`place`] spreads replicas round-robin with a shift, as Kafka assigns replicas to
//!   brokers: every node leads about P/N partitions and holds about P·R/N.

/// The partition of `id` among `partitions` (at least 1).
pub fn partition_of(id: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "a log has at least one partition");
    // Kafka's `toPositive`: drop the sign bit rather than take an absolute value, so
    // i32::MIN has a partition too.
    (murmur2(id) & 0x7fff_ffff) % partitions
}

/// Murmur2, 32-bit, with Kafka's seed: the same value as Kafka's `Utils.murmur2` (read as
/// unsigned), so Kafka's published test vectors check it.
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    // Lengths past u32 wrap as Kafka's int length would; IDs are far shorter anyway.
    let mut h = SEED ^ data.len() as u32;
    let mut words = data.chunks_exact(4);
    for word in &mut words {
        let mut k = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        for (i, &byte) in tail.iter().enumerate().rev() {
            h ^= u32::from(byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// The replicas of each of `partitions` partitions over `nodes` (in the order given; the
/// first replica is the preferred leader), `replication_factor` copies each, capped at
/// the number of nodes.
///
/// Partition p's first replica is node p mod N; the others follow it at a distance that
/// grows by one after every N partitions (Kafka's "shift"), so the second copies of the
/// partitions a node leads do not all land on its neighbour, and losing one node moves
/// its leaderships onto several others.
pub fn place<T: Clone>(partitions: u32, nodes: &[T], replication_factor: usize) -> Vec<Vec<T>> {
    let n = nodes.len();
    if n == 0 {
        return vec![Vec::new(); partitions as usize];
    }
    let copies = replication_factor.clamp(1, n);
    (0..partitions as usize)
        .map(|p| {
            let first = p % n;
            let shift = p / n;
            let mut replicas = vec![nodes[first].clone()];
            for j in 0..copies - 1 {
                // 1 ..= n-1 steps away from the first replica: never the first itself, and
                // distinct for distinct j (j < n - 1).
                let distance = 1 + (shift + j) % (n - 1);
                replicas.push(nodes[(first + distance) % n].clone());
            }
            replicas
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    #[test]
    fn murmur2_matches_kafka() {
        // Kafka's UtilsTest vectors (signed ints there).
        let vectors: [(&str, i32); 6] = [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            ("abc", 479_470_107),
        ];
        for (input, expected) in vectors {
            assert_eq!(murmur2(input.as_bytes()) as i32, expected, "{input}");
        }
    }

    #[test]
    fn an_id_keeps_its_partition() {
        // Pinned values: if one changes, records already written become unreachable.
        assert_eq!(partition_of(b"foobar", 12), (-790_332_482i32 as u32 & 0x7fff_ffff) % 12);
        assert_eq!(partition_of(b"", 1), 0);
        for id in [&b"a"[..], b"user:1", b"\x00\xff"] {
            assert!(partition_of(id, 7) < 7);
            assert_eq!(partition_of(id, 7), partition_of(id, 7));
        }
    }

    #[test]
    fn every_partition_gets_distinct_replicas_and_the_load_is_even() {
        for n in 1..=7usize {
            let nodes: Vec<usize> = (0..n).collect();
            for r in 1..=n {
                let partitions = (n * 4) as u32;
                let placement = place(partitions, &nodes, r);
                let mut held = BTreeMap::<usize, usize>::new();
                let mut led = BTreeMap::<usize, usize>::new();
                for replicas in &placement {
                    assert_eq!(replicas.len(), r);
                    assert_eq!(replicas.iter().collect::<BTreeSet<_>>().len(), r, "{replicas:?}");
                    *led.entry(replicas[0]).or_default() += 1;
                    for &node in replicas {
                        *held.entry(node).or_default() += 1;
                    }
                }
                assert!(led.values().all(|&c| c == 4), "n={n} r={r} leaders {led:?}");
                assert!(held.values().all(|&c| c == 4 * r), "n={n} r={r} copies {held:?}");
            }
        }
    }

    #[test]
    fn a_nodes_second_copies_spread_over_several_nodes() {
        let nodes = ["a", "b", "c", "d"];
        let placement = place(8, &nodes, 2);
        let followers_of_a: BTreeSet<&str> =
            placement.iter().filter(|replicas| replicas[0] == "a").map(|replicas| replicas[1]).collect();
        assert!(followers_of_a.len() > 1, "{placement:?}");
    }

    #[test]
    fn a_thousand_ids_spread_within_ten_percent() {
        // The README's example: 1000 IDs on 4 nodes with 2 copies, and 6 nodes with 3.
        for (n, r) in [(4usize, 2usize), (6, 3)] {
            let nodes: Vec<usize> = (0..n).collect();
            let partitions = (n * 4) as u32;
            let placement = place(partitions, &nodes, r);
            let mut ids = vec![0usize; n];
            for i in 0..1000 {
                let p = partition_of(format!("id-{i}").as_bytes(), partitions);
                for &node in &placement[p as usize] {
                    ids[node] += 1;
                }
            }
            let share = 1000 * r / n;
            for count in &ids {
                assert!(count.abs_diff(share) * 10 <= share, "n={n} r={r}: {ids:?} against {share} each");
            }
        }
    }

    #[test]
    fn fewer_nodes_than_copies_gives_each_node_one_copy() {
        assert_eq!(place(2, &["a", "b"], 3), vec![vec!["a", "b"], vec!["b", "a"]]);
        assert_eq!(place(1, &Vec::<&str>::new(), 3), vec![Vec::<&str>::new()]);
    }
}
