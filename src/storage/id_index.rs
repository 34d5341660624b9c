//! The in-memory ID index: ID → where its latest SET record lies.
//!
//! Per ID it costs a 24-byte slot (boxed ID pointer + length + position) plus a control
//! byte in a table kept at most 7/8 full, and the heap copy of the ID itself (its length
//! rounded up to the allocator's 16-byte classes, 32 at least). `benches/storage.rs`
//! measures it.

use hashbrown::HashMap;

/// Where a record lies: segment number (its place in the log's segment list) and byte
/// position in that segment. Segments are capped below 4 GiB so a `u32` position fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub segment: u32,
    pub position: u32,
}

#[derive(Default)]
pub struct IdIndex {
    map: HashMap<Box<[u8]>, Position>,
}

impl IdIndex {
    pub fn get(&self, id: &[u8]) -> Option<Position> {
        self.map.get(id).copied()
    }

    pub fn contains(&self, id: &[u8]) -> bool {
        self.map.contains_key(id)
    }

    /// Points `id` at a newer record, copying the ID only when it is new.
    pub fn set(&mut self, id: &[u8], at: Position) {
        match self.map.get_mut(id) {
            Some(slot) => *slot = at,
            None => {
                self.map.insert(id.into(), at);
            }
        }
    }

    pub fn remove(&mut self, id: &[u8]) -> bool {
        self.map.remove(id).is_some()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// Heap bytes held by the table itself (slots and control bytes), excluding the IDs.
    pub fn table_bytes(&self) -> usize {
        self.map.allocation_size()
    }
}
