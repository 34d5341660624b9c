//! Segment files: `<base_offset:020>.log`, a 24-byte header then framed records.
//!
//! Header (little-endian): `b"MSGLOGSG"` magic, `u16` format version (1), `u16` flags
//! (0), `u32` reserved (0), `u64` base offset (equal to the file name's number).
//!
//! The active segment is written through a buffer with positioned writes and read
//! through a mapping reserved at its maximum size, so the bytes already written are
//! read from the page cache and the rest from the buffer. Sealed segments are read-only
//! mappings of their exact length.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use byteorder::{ByteOrder, LittleEndian as LE};
use memmap2::{Mmap, MmapOptions};

use super::Offset;
use super::fault::Faults;
use super::offset_index::OffsetIndex;

pub const MAGIC: &[u8; 8] = b"MSGLOGSG";
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 24;

pub fn header(base: Offset) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(MAGIC);
    LE::write_u16(&mut h[8..10], VERSION);
    LE::write_u64(&mut h[16..24], base);
    h
}

/// Why a header is not ours, if it is not.
pub fn check_header(bytes: &[u8], base: Offset) -> Result<(), String> {
    if bytes.len() < HEADER_LEN {
        return Err("file shorter than the segment header".into());
    }
    if &bytes[0..8] != MAGIC {
        return Err("bad segment magic".into());
    }
    let version = LE::read_u16(&bytes[8..10]);
    if version != VERSION {
        return Err(format!("unsupported segment format version {version}"));
    }
    let in_header = LE::read_u64(&bytes[16..24]);
    if in_header != base {
        return Err(format!("header base offset {in_header} does not match the file name"));
    }
    Ok(())
}

pub fn segment_path(dir: &Path, base: Offset) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

pub fn index_path(dir: &Path, base: Offset) -> PathBuf {
    dir.join(format!("{base:020}.index"))
}

/// The segment being appended to.
pub struct ActiveSegment {
    pub base: Offset,
    pub path: PathBuf,
    pub file: Arc<File>,
    /// Reserved read mapping; only `[0, written)` is ever touched.
    map: Mmap,
    /// Bytes in the file (header included); the buffer continues from here.
    pub written: u64,
    pub buffer: Vec<u8>,
    pub index: OffsetIndex,
    /// Position of the last index entry, to space entries `index_interval` apart.
    pub last_indexed: u64,
    /// Offset of the last record, if the segment holds any.
    pub last_offset: Option<Offset>,
    faults: Option<Arc<Faults>>,
}

impl ActiveSegment {
    /// Opens `path` for appending; its first `written` bytes are valid. `reserve` is the
    /// size the segment may reach before it is sealed.
    pub fn open(
        path: PathBuf,
        base: Offset,
        written: u64,
        reserve: u64,
        index: OffsetIndex,
        last_offset: Option<Offset>,
        faults: Option<Arc<Faults>>,
    ) -> io::Result<ActiveSegment> {
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let reserve = reserve.max(written).max(HEADER_LEN as u64);
        // SAFETY: the data dir is flocked, so only this process changes the file, and it
        // only reads `[0, written)`, which the file always holds (truncation lowers
        // `written` first). Pages past EOF are mapped but never touched.
        let map = unsafe { MmapOptions::new().len(reserve as usize).map(&file)? };
        Ok(ActiveSegment {
            base,
            path,
            file: Arc::new(file),
            map,
            written,
            buffer: Vec::new(),
            index,
            last_indexed: 0,
            last_offset,
            faults,
        })
    }

    /// Creates a new, empty segment file holding only the header.
    pub fn create(dir: &Path, base: Offset, reserve: u64, faults: Option<Arc<Faults>>) -> io::Result<ActiveSegment> {
        let path = segment_path(dir, base);
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        file.write_all_at(&header(base), 0)?;
        file.sync_all()?;
        File::open(dir)?.sync_all()?;
        drop(file);
        Self::open(path, base, HEADER_LEN as u64, reserve, OffsetIndex::Building(Vec::new()), None, faults)
    }

    /// Logical size: file bytes plus buffered bytes.
    pub fn len(&self) -> u64 {
        self.written + self.buffer.len() as u64
    }

    /// Bytes from `position` to the end of the file part or of the buffer, whichever
    /// holds it: a record never spans the two, as the buffer starts at a record boundary.
    pub fn slice(&self, position: u64) -> &[u8] {
        if position >= self.written {
            &self.buffer[(position - self.written) as usize..]
        } else {
            &self.map[position as usize..self.written as usize]
        }
    }

    /// Everything from `position` to the end, as (file part, buffer part).
    pub fn tail(&self, position: u64) -> (&[u8], &[u8]) {
        if position >= self.written {
            (&[], &self.buffer[(position - self.written) as usize..])
        } else {
            (&self.map[position as usize..self.written as usize], &self.buffer)
        }
    }

    /// Writes the buffer to the file. On failure the file is cut back to what it held
    /// before, and the buffer is kept, so nothing half-written stays behind.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let result = match self.faults.as_ref().map(|f| f.check_write()) {
            // An injected failure tears the write: half the bytes land, as on a full disk.
            Some(Err(e)) => self.file.write_all_at(&self.buffer[..self.buffer.len() / 2], self.written).and(Err(e)),
            _ => self.file.write_all_at(&self.buffer, self.written),
        };
        if let Err(e) = result {
            if let Err(cut) = self.file.set_len(self.written) {
                tracing::error!(segment = %self.path.display(), error = %cut, "could not cut back a failed write");
            }
            return Err(e);
        }
        self.written += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }

    pub fn sync(&self) -> io::Result<()> {
        sync_file(&self.file, self.faults.as_deref())
    }

    /// Cuts the segment back to `position` (a record boundary), durably.
    pub fn truncate(&mut self, position: u64) -> io::Result<()> {
        self.flush()?;
        self.written = position;
        self.file.set_len(position)?;
        self.sync()?;
        self.index.truncate_positions(position as u32);
        self.last_indexed = self.last_indexed.min(position);
        Ok(())
    }
}

pub fn sync_file(file: &File, faults: Option<&Faults>) -> io::Result<()> {
    if let Some(f) = faults {
        f.check_sync()?;
    }
    file.sync_data()
}

/// A full, read-only segment.
pub struct SealedSegment {
    pub base: Offset,
    pub path: PathBuf,
    pub map: Mmap,
    pub index: OffsetIndex,
    pub last_offset: Option<Offset>,
}

impl SealedSegment {
    pub fn open(
        path: PathBuf,
        base: Offset,
        len: u64,
        index: OffsetIndex,
        last_offset: Option<Offset>,
    ) -> io::Result<SealedSegment> {
        let file = File::open(&path)?;
        // SAFETY: sealed segments are never written again while the flock is held.
        let map = unsafe { MmapOptions::new().len(len as usize).map(&file)? };
        Ok(SealedSegment { base, path, map, index, last_offset })
    }
}
