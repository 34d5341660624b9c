//! The in-memory ID index: ID → where its latest SET record lies.
//!
//! The index does not keep the IDs: an entry is the ID's 64-bit hash and the position of
//! its latest record (16 bytes), and a lookup confirms a hash match by reading the ID
//! from that record, which a GET reads anyway. That halves the cache misses of a GET
//! and costs ~18–36 bytes per ID whatever the ID's length (no per-ID allocation), so
//! recovery of ten million IDs allocates a table and nothing else. The hash is seeded per
//! process, so clients cannot aim collisions at it.

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

/// Where a record lies: segment number (its place in the log's segment list) and byte
/// position in that segment. Segments are capped below 4 GiB so a `u32` position fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub segment: u32,
    pub position: u32,
}

#[derive(Clone, Copy)]
struct Entry {
    hash: u64,
    at: Position,
}

#[derive(Default)]
pub struct IdIndex {
    table: HashTable<Entry>,
    hasher: DefaultHashBuilder,
}

impl IdIndex {
    /// Looks `id` up; `id_at` returns the ID of the record at a position.
    pub fn get<'a>(&self, id: &[u8], id_at: impl Fn(Position) -> &'a [u8]) -> Option<Position> {
        let hash = self.hasher.hash_one(id);
        self.table.find(hash, |e| e.hash == hash && id_at(e.at) == id).map(|e| e.at)
    }

    /// Points `id` at a newer record.
    pub fn set<'a>(&mut self, id: &[u8], at: Position, id_at: impl Fn(Position) -> &'a [u8]) {
        let hash = self.hasher.hash_one(id);
        match self.table.find_mut(hash, |e| e.hash == hash && id_at(e.at) == id) {
            Some(entry) => entry.at = at,
            None => {
                self.table.insert_unique(hash, Entry { hash, at }, |e| e.hash);
            }
        }
    }

    pub fn remove<'a>(&mut self, id: &[u8], id_at: impl Fn(Position) -> &'a [u8]) -> bool {
        let hash = self.hasher.hash_one(id);
        match self.table.find_entry(hash, |e| e.hash == hash && id_at(e.at) == id) {
            Ok(entry) => {
                entry.remove();
                true
            }
            Err(_) => false,
        }
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn clear(&mut self) {
        self.table.clear();
    }

    /// Positions of every live ID's latest record (order unspecified).
    pub fn positions(&self) -> impl Iterator<Item = Position> + '_ {
        self.table.iter().map(|e| e.at)
    }

    /// Moves every entry to `f(position)` (the cleaner rewrote segments); returns false,
    /// leaving such entries as they were, if `f` had no new place for some.
    pub fn remap(&mut self, mut f: impl FnMut(Position) -> Option<Position>) -> bool {
        let mut whole = true;
        for entry in self.table.iter_mut() {
            match f(entry.at) {
                Some(at) => entry.at = at,
                None => whole = false,
            }
        }
        whole
    }

    /// Moves every entry to `f(position)`, dropping those `f` has no place for (retention
    /// deleted the segment holding the ID's latest record).
    pub fn retain_moved(&mut self, mut f: impl FnMut(Position) -> Option<Position>) {
        self.table.retain(|entry| match f(entry.at) {
            Some(at) => {
                entry.at = at;
                true
            }
            None => false,
        });
    }

    /// Heap bytes held by the index.
    pub fn heap_bytes(&self) -> usize {
        self.table.allocation_size()
    }
}

/// The ID of the record framed at the start of `bytes` (CRC not checked: only used to
/// confirm a hash match; bytes are served only after `record::decode` checks them).
pub fn id_of(bytes: &[u8]) -> &[u8] {
    use super::record::{FRAME_HEADER, RECORD_OVERHEAD};
    if bytes.len() < RECORD_OVERHEAD {
        return &[];
    }
    let len = u16::from_le_bytes([bytes[FRAME_HEADER + 21], bytes[FRAME_HEADER + 22]]) as usize;
    bytes.get(RECORD_OVERHEAD..RECORD_OVERHEAD + len).unwrap_or(&[])
}
