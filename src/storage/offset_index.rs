//! The sparse offset index: offset → byte position, one entry per `index_interval_bytes`.
//!
//! File `<base_offset:020>.index` beside each sealed segment; entries of 8 bytes,
//! little-endian `u32 relative_offset` (offset − base) then `u32 position`, ascending.
//! It holds nothing the log does not: recovery rebuilds it whenever it is missing or
//! disagrees with the segment, so it is never a source of truth.

use std::fs::{self, File};
use std::path::Path;

use byteorder::{ByteOrder, LittleEndian as LE};
use memmap2::Mmap;

use super::Offset;
use super::fs::{FileSystem, replace_file};

pub const ENTRY_LEN: usize = 8;

/// Entries of one segment: in memory while the segment is active, mapped once sealed.
pub enum OffsetIndex {
    Building(Vec<u8>),
    Mapped(Mmap),
    /// A sealed segment small enough to need no entry.
    Empty,
}

impl OffsetIndex {
    fn bytes(&self) -> &[u8] {
        match self {
            OffsetIndex::Building(v) => v,
            OffsetIndex::Mapped(m) => m,
            OffsetIndex::Empty => &[],
        }
    }

    pub fn push(&mut self, relative_offset: u32, position: u32) {
        if let OffsetIndex::Building(v) = self {
            let mut entry = [0u8; ENTRY_LEN];
            LE::write_u32(&mut entry[0..4], relative_offset);
            LE::write_u32(&mut entry[4..8], position);
            v.extend_from_slice(&entry);
        }
    }

    /// Position of the last indexed record whose offset is ≤ `relative_offset`.
    pub fn floor(&self, relative_offset: u64) -> Option<u32> {
        let bytes = self.bytes();
        let n = bytes.len() / ENTRY_LEN;
        let entry = |i: usize| {
            let e = &bytes[i * ENTRY_LEN..(i + 1) * ENTRY_LEN];
            (LE::read_u32(&e[0..4]) as u64, LE::read_u32(&e[4..8]))
        };
        // Index of the first entry with a larger offset.
        let (mut lo, mut hi) = (0, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if entry(mid).0 <= relative_offset { lo = mid + 1 } else { hi = mid }
        }
        (lo > 0).then(|| entry(lo - 1).1)
    }

    /// Drops entries at or beyond `position` (after a truncation).
    pub fn truncate_positions(&mut self, position: u32) {
        if let OffsetIndex::Building(v) = self {
            let keep = v.chunks_exact(ENTRY_LEN).take_while(|e| LE::read_u32(&e[4..8]) < position).count();
            v.truncate(keep * ENTRY_LEN);
        }
    }

    /// Writes the entries to `path` (temp file + rename + fsync) and maps them.
    pub fn seal(self, fs: &dyn FileSystem, path: &Path) -> std::io::Result<OffsetIndex> {
        let bytes = match &self {
            OffsetIndex::Building(v) => v.as_slice(),
            _ => return Ok(self),
        };
        let existing = fs::read(path).ok();
        if existing.as_deref() != Some(bytes) {
            replace_file(fs, path, bytes)?;
        }
        if bytes.is_empty() {
            return Ok(OffsetIndex::Empty);
        }
        let file = File::open(path)?;
        // SAFETY: the index file is ours (the data dir is flocked) and never changes once
        // written; it is replaced only by rename, which leaves this mapping intact.
        let map = unsafe { Mmap::map(&file)? };
        Ok(OffsetIndex::Mapped(map))
    }
}

pub fn relative(base: Offset, offset: Offset) -> u32 {
    // Segments never span more than u32::MAX offsets: the log rolls before that.
    (offset - base) as u32
}
