//! The first read of a cleaning pass: which records since the clean point a newer record
//! of the same ID supersedes (see [`rewrite`](super)).

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

use super::{Input, Pace, for_each_record};
use crate::storage::{Offset, Result};

/// What the records in `[clean_point, upto)` say: which IDs they hold, and which of them
/// a newer record of the same ID supersedes. Records below the clean point were already
/// cleaned against each other by an earlier pass, so only newer ones can supersede them.
///
/// The verdict on each record read is one bit, by its place in reading order, so that
/// filtering a record written since the clean point needs no lookup; only the survivors
/// of earlier passes are looked up by ID. The IDs lie end to end in one buffer (no
/// allocation per ID), and the hash is seeded per process, so clients cannot aim
/// collisions at it.
pub(in crate::storage) struct Latest {
    table: HashTable<Seen>,
    hasher: DefaultHashBuilder,
    ids: Vec<u8>,
    /// One bit per record read, set once a newer record of its ID was read.
    superseded: Vec<u64>,
    records: u64,
    /// Per segment read: its base, the place of its first record in range, its records in
    /// range.
    segments: Vec<(Offset, u64, u64)>,
}

struct Seen {
    hash: u64,
    id_at: usize,
    id_len: u16,
    /// Place of the ID's latest record read.
    latest: u64,
}

impl Latest {
    fn new() -> Latest {
        Latest {
            table: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            ids: Vec::new(),
            superseded: Vec::new(),
            records: 0,
            segments: Vec::new(),
        }
    }

    fn find(&self, hash: u64, id: &[u8]) -> Option<&Seen> {
        self.table.find(hash, |s| s.hash == hash && &self.ids[s.id_at..s.id_at + s.id_len as usize] == id)
    }

    /// Reads the next record in range.
    fn see(&mut self, id: &[u8]) {
        let place = self.records;
        if place.is_multiple_of(64) {
            self.superseded.push(0);
        }
        self.records += 1;
        let hash = self.hasher.hash_one(id);
        let ids = &self.ids;
        match self.table.find_mut(hash, |s| s.hash == hash && &ids[s.id_at..s.id_at + s.id_len as usize] == id) {
            Some(seen) => {
                let older = std::mem::replace(&mut seen.latest, place);
                self.superseded[(older / 64) as usize] |= 1 << (older % 64);
            }
            None => {
                let seen = Seen { hash, id_at: self.ids.len(), id_len: id.len() as u16, latest: place };
                self.ids.extend_from_slice(id);
                self.table.insert_unique(hash, seen, |s| s.hash);
            }
        }
    }

    /// Whether some record in range holds `id`.
    pub(super) fn holds(&self, id: &[u8]) -> bool {
        self.find(self.hasher.hash_one(id), id).is_some()
    }

    /// The records in range of the segment at `base`: the place of the first, and how many.
    pub(super) fn segment(&self, base: Offset) -> (u64, u64) {
        match self.segments.binary_search_by_key(&base, |&(b, _, _)| b) {
            Ok(i) => (self.segments[i].1, self.segments[i].2),
            Err(_) => (0, 0),
        }
    }

    pub(super) fn is_superseded(&self, place: u64) -> bool {
        self.superseded[(place / 64) as usize] & (1 << (place % 64)) != 0
    }
}

/// Reads the records in `[clean_point, upto)` of `inputs` (in log order).
pub(in crate::storage) fn latest_offsets(
    inputs: &[Input],
    clean_point: Offset,
    upto: Offset,
    max: usize,
    pace: &mut dyn Pace,
) -> Result<Option<Latest>> {
    let mut latest = Latest::new();
    for input in inputs {
        let mut past = false;
        let first = latest.records;
        for_each_record(input, max, |r, _, _| {
            if r.offset >= upto {
                past = true;
                return false;
            }
            if r.offset >= clean_point {
                latest.see(r.id);
            }
            true
        })?;
        if latest.records > first {
            latest.segments.push((input.base, first, latest.records - first));
        }
        if !pace.pace(input.len) {
            return Ok(None);
        }
        if past {
            break;
        }
    }
    Ok(Some(latest))
}
