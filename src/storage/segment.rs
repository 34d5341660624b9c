//! Segment files: `<base_offset:020>.log`, a 24-byte header then framed records.
//!
//! Header (little-endian): `b"MSGLOGSG"` magic, `u16` format version (2), `u16` flags
//! (0), `u32` durable length, `u64` base offset (equal to the file name's number).
//!
//! The durable length is a watermark: every byte of the segment below it was fsynced
//! (0 means unknown: files written before it existed). It is only ever written with a
//! value that is already durable: after a group-commit fsync the new mark is written to
//! the header without another fsync (the next fsync of the file persists it), and
//! sealing, closing and truncating write the exact value and fsync. A truncation lowers
//! it durably before cutting. Recovery treats damage below it as corruption, never as a
//! torn tail.
//!
//! The active segment is written through a buffer with positioned writes and read
//! through a mapping reserved at its maximum size, so the bytes already written are
//! read from the page cache and the rest from the buffer. Sealed segments are read-only
//! mappings of their exact length.
//!
//! Appends land on zeros written ahead of them ([`PREALLOCATE_BYTES`] at a time, never
//! past the size at which the segment is sealed): an `fdatasync` of bytes written over
//! blocks the file already has need not write the inode too (size and block map
//! unchanged), which makes most group commits' fsync one write to the disk instead of two
//! (the one after a top-up also carries the new zeros and the new size). So the active
//! segment may end in zeros after its records; recovery takes an all-zero tail at or after the
//! durable length for free space, not damage (see [`recovery`](super::recovery)), and
//! sealing and closing cut it off.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use byteorder::{ByteOrder, LittleEndian as LE};
use memmap2::{Mmap, MmapOptions};

use super::Offset;
use super::fs::FileSystem;
use super::offset_index::OffsetIndex;

pub const MAGIC: &[u8; 8] = b"MSGLOGSG";
/// Written in new segments. Version 2 added the durable length in the header and the
/// batch flag in the record kind byte; version 1 segments (mark 0, no flags) still open.
pub const VERSION: u16 = 2;
/// Oldest version this build reads.
const OLDEST_VERSION: u16 = 1;
pub const HEADER_LEN: usize = 24;

/// How far ahead of the appends the active segment's zeros reach (the last
/// [`PREALLOCATE_BYTES`] / 2 of them are topped up when an append reaches them).
pub const PREALLOCATE_BYTES: u64 = 4 << 20;

/// Where the durable length lies in the header.
const MARK_AT: usize = 12;

pub fn header(base: Offset, durable_len: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(MAGIC);
    LE::write_u16(&mut h[8..10], VERSION);
    LE::write_u32(&mut h[MARK_AT..MARK_AT + 4], durable_len);
    LE::write_u64(&mut h[16..24], base);
    h
}

/// The durable length recorded in a (checked) header; 0 when unknown.
pub fn durable_len(header: &[u8]) -> u64 {
    LE::read_u32(&header[MARK_AT..MARK_AT + 4]) as u64
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
    if !(OLDEST_VERSION..=VERSION).contains(&version) {
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

/// What retention needs to know of a segment: kept as the segment is written, sealed,
/// cleaned and recovered, so that deciding never reads segment files again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    pub records: u64,
    /// Largest record timestamp (Kafka's rule: a segment is as young as its newest record).
    pub newest_ms: Option<i64>,
}

impl Figures {
    pub fn count(&mut self, timestamp_ms: i64) {
        self.records += 1;
        self.newest_ms = Some(self.newest_ms.map_or(timestamp_ms, |n| n.max(timestamp_ms)));
    }

    /// Adds the figures of other records (another segment's, merged into this one).
    pub fn add(&mut self, other: Figures) {
        self.records += other.records;
        self.newest_ms = self.newest_ms.max(other.newest_ms);
    }
}

/// How far an active segment may grow.
#[derive(Debug, Clone, Copy)]
pub struct Reserve {
    /// The size its read mapping is reserved at: it is sealed before growing past it.
    pub map: u64,
    /// Zeros are preallocated up to here (the size at which it is sealed).
    pub preallocate_to: u64,
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
    /// Of the records appended (buffered ones included).
    pub figures: Figures,
    /// The durable length last written to the header.
    pub marked: u64,
    /// The file's length, at least: `written` plus the zeros preallocated after it (an
    /// upper bound after a failed write, for [`finish`](Self::finish)).
    allocated: u64,
    /// Where preallocation stops.
    preallocate_to: u64,
    /// Cleared after a preallocation failed, so each flush does not try again.
    preallocating: bool,
    fs: Arc<dyn FileSystem>,
}

impl ActiveSegment {
    /// Opens `path` for appending; its first `written` bytes are valid and the header's
    /// durable length is `marked`.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        fs: Arc<dyn FileSystem>,
        path: PathBuf,
        base: Offset,
        written: u64,
        marked: u64,
        reserve: Reserve,
        index: OffsetIndex,
        last_offset: Option<Offset>,
    ) -> io::Result<ActiveSegment> {
        let file = fs.open(&path)?;
        let allocated = file.metadata()?.len().max(written);
        let map_len = reserve.map.max(allocated).max(HEADER_LEN as u64);
        // SAFETY: the data dir is flocked, so only this process changes the file, and it
        // only reads `[0, written)`, which the file always holds (truncation lowers
        // `written` first). Pages past EOF are mapped but never touched.
        let map = unsafe { MmapOptions::new().len(map_len as usize).map(&file)? };
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
            figures: Figures::default(),
            marked,
            allocated,
            preallocate_to: reserve.preallocate_to,
            preallocating: true,
            fs,
        })
    }

    /// Creates a new, empty segment file holding only the header, durably (its first
    /// zeros are preallocated by the first flush, and made durable by the fsync after it).
    /// A file left at that name by an earlier attempt that failed (a roll is retried after
    /// running out of file descriptors) never held a record, and is reused.
    pub fn create(fs: Arc<dyn FileSystem>, dir: &Path, base: Offset, reserve: Reserve) -> io::Result<ActiveSegment> {
        let path = segment_path(dir, base);
        let file = match fs.create_new(&path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                tracing::warn!(segment = %path.display(), "reusing a segment file a failed roll left behind");
                let file = fs.open(&path)?;
                fs.set_len(&file, &path, 0)?;
                file
            }
            other => other?,
        };
        let len = HEADER_LEN as u64;
        fs.write_at(&file, &path, &header(base, len as u32), 0)?;
        fs.sync_all(&file, &path)?;
        fs.sync_dir(dir)?;
        drop(file);
        Self::open(fs, path, base, len, len, reserve, OffsetIndex::Building(Vec::new()), None)
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
        if let Err(e) = self.fs.write_at(&self.file, &self.path, &self.buffer, self.written) {
            match self.fs.set_len(&self.file, &self.path, self.written) {
                // The cut took the preallocated zeros too.
                Ok(()) => self.allocated = self.written,
                Err(cut) => {
                    tracing::error!(segment = %self.path.display(), error = %cut, "could not cut back a failed write");
                    self.allocated = self.allocated.max(self.written + self.buffer.len() as u64);
                }
            }
            return Err(e);
        }
        self.written += self.buffer.len() as u64;
        self.allocated = self.allocated.max(self.written);
        self.buffer.clear();
        self.preallocate_ahead();
        Ok(())
    }

    /// Tops up the zeros ahead of the appends once fewer than half of them are left.
    /// A failure is not a write lost (appends then grow the file, as without
    /// preallocation), so it is logged once and preallocation stops for this segment.
    fn preallocate_ahead(&mut self) {
        if !self.preallocating || self.written + PREALLOCATE_BYTES / 2 <= self.allocated {
            return;
        }
        let to = (self.written + PREALLOCATE_BYTES).min(self.preallocate_to);
        if to <= self.allocated {
            return;
        }
        match write_zeros(self.fs.as_ref(), &self.file, &self.path, self.allocated..to) {
            Ok(()) => self.allocated = to,
            Err(e) => {
                tracing::warn!(segment = %self.path.display(), error = %e, "could not preallocate space ahead of appends; the segment grows with each write instead");
                self.preallocating = false;
                // A failed write may have left part of the zeros: cutting them off at
                // sealing or closing needs only an upper bound.
                self.allocated = self.allocated.max(self.preallocate_to);
            }
        }
    }

    pub fn sync(&self) -> io::Result<()> {
        self.fs.sync_data(&self.file, &self.path)
    }

    /// The file system this segment is written through (for an fsync outside the lock).
    pub fn fs(&self) -> Arc<dyn FileSystem> {
        self.fs.clone()
    }

    /// Writes `len` as the header's durable length, without an fsync: the caller knows
    /// the first `len` bytes are durable, and the next fsync of the file persists it.
    pub fn mark(&mut self, len: u64) -> io::Result<()> {
        write_mark(self.fs.as_ref(), &self.file, &self.path, len)?;
        self.marked = len;
        Ok(())
    }

    /// Writes the buffer, cuts off the preallocated zeros after the records and makes the
    /// segment durable, its header's durable length exact (for sealing and closing: the
    /// file then ends at its last record). The fsync that makes the records durable also
    /// makes the cut so: `fdatasync` persists a changed size.
    pub fn finish(&mut self) -> io::Result<()> {
        self.flush()?;
        if self.allocated > self.written {
            self.fs.set_len(&self.file, &self.path, self.written)?;
            self.allocated = self.written;
        }
        self.sync_exact()
    }

    /// Writes the buffer and makes the whole segment durable, its header's durable length
    /// exact.
    pub fn sync_exact(&mut self) -> io::Result<()> {
        self.flush()?;
        self.sync()?;
        if self.marked != self.written {
            self.mark(self.written)?;
            self.sync()?;
        }
        Ok(())
    }

    /// Cuts the segment back to `position` (a record boundary), durably. The durable
    /// length is lowered (and that made durable) before the cut, so a crash in between
    /// never leaves a mark above the end.
    pub fn truncate(&mut self, position: u64) -> io::Result<()> {
        self.flush()?;
        if self.marked > position {
            self.mark(position)?;
            self.sync()?;
        }
        self.written = position;
        self.fs.set_len(&self.file, &self.path, position)?;
        self.allocated = position;
        self.sync()?;
        self.index.truncate_positions(position as u32);
        self.last_indexed = self.last_indexed.min(position);
        Ok(())
    }
}

/// Writes zeros over `range` of the file, in pieces of at most 1 MiB.
fn write_zeros(fs: &dyn FileSystem, file: &File, path: &Path, range: std::ops::Range<u64>) -> io::Result<()> {
    static ZEROS: [u8; 1 << 20] = [0; 1 << 20];
    let mut at = range.start;
    while at < range.end {
        let n = (range.end - at).min(ZEROS.len() as u64);
        fs.write_at(file, path, &ZEROS[..n as usize], at)?;
        at += n;
    }
    Ok(())
}

/// Writes `len` as a segment's durable length (no fsync). Segments stay under 4 GiB
/// (the config is validated so), so it fits the u32.
pub fn write_mark(fs: &dyn FileSystem, file: &File, path: &Path, len: u64) -> io::Result<()> {
    fs.write_at(file, path, &(len as u32).to_le_bytes(), MARK_AT as u64)
}

/// A full, read-only segment.
pub struct SealedSegment {
    pub base: Offset,
    pub path: PathBuf,
    pub map: Mmap,
    pub index: OffsetIndex,
    pub last_offset: Option<Offset>,
    pub figures: Figures,
}

impl SealedSegment {
    pub fn open(
        path: PathBuf,
        base: Offset,
        len: u64,
        index: OffsetIndex,
        last_offset: Option<Offset>,
        figures: Figures,
    ) -> io::Result<SealedSegment> {
        let file = File::open(&path)?;
        // SAFETY: sealed segments are never written again while the flock is held.
        let map = unsafe { MmapOptions::new().len(len as usize).map(&file)? };
        Ok(SealedSegment { base, path, map, index, last_offset, figures })
    }
}
