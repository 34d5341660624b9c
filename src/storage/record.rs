//! The record codec: how one SET or DEL is framed on disk and on the replication wire.
//!
//! All integers little-endian (see `docs/FORMAT.md`):
//!
//! ```text
//! 0   u32  body_len   bytes after the CRC field (23 + id_len + message_len)
//! 4   u32  crc        CRC-32 (IEEE, crc32fast) of the body
//! 8   u64  offset     strictly increasing within a log, gaps allowed
//! 16  u32  epoch      leader epoch that wrote the record
//! 20  i64  timestamp  milliseconds since the Unix epoch
//! 28  u8   kind       1 = SET, 2 = DEL (tombstone, empty message); bit 0x80 set means
//!                     "the atomic batch continues with the next record" (see below)
//! 29  u16  id_len     1..=65535
//! 31  [u8] id
//! ..  [u8] message    the rest of the body
//! ```
//!
//! Atomic batches (MULTI/EXEC, MSET): every record of a batch but the last carries the
//! [`BATCH_CONTINUES`] bit; a record without it ends its batch (a lone record is a batch
//! of one). Recovery cuts a batch that never ended as a torn tail, `read_from` never ends
//! a chunk inside one, and a follower appends only whole batches, so a batch is applied
//! whole or not at all everywhere.

use byteorder::{ByteOrder, LittleEndian as LE};

use super::{Epoch, Offset};

/// Bytes before the body: `body_len` and `crc`.
pub const FRAME_HEADER: usize = 8;
/// Fixed part of the body before the ID.
pub const BODY_HEADER: usize = 23;
/// Bytes a record costs on top of its ID and message.
pub const RECORD_OVERHEAD: usize = FRAME_HEADER + BODY_HEADER;

/// Kind-byte flag: the record's atomic batch continues with the next record.
pub const BATCH_CONTINUES: u8 = 0x80;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    Set = 1,
    Delete = 2,
}

impl RecordKind {
    fn from_byte(b: u8) -> Option<RecordKind> {
        match b {
            1 => Some(RecordKind::Set),
            2 => Some(RecordKind::Delete),
            _ => None,
        }
    }
}

/// A decoded record borrowing its ID and message from the buffer it was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub offset: Offset,
    pub epoch: Epoch,
    pub timestamp_ms: i64,
    pub kind: RecordKind,
    pub id: &'a [u8],
    pub message: &'a [u8],
    /// The next record belongs to the same atomic batch ([`BATCH_CONTINUES`]).
    pub continues: bool,
}

impl RecordRef<'_> {
    /// Bytes this record occupies when framed.
    pub fn framed_len(&self) -> usize {
        RECORD_OVERHEAD + self.id.len() + self.message.len()
    }
}

/// The outcome of decoding at one position of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole record whose CRC matched, and the bytes it spans.
    Record(RecordRef<'a>, usize),
    /// The buffer ends inside a record (or is empty): a torn tail, or more bytes to come.
    Incomplete,
    /// The bytes here are not a record.
    Invalid(&'static str),
}

/// Framed length of a record with this ID and message.
pub fn framed_len(id: &[u8], message: &[u8]) -> usize {
    RECORD_OVERHEAD + id.len() + message.len()
}

/// Appends one framed record to `out`, a batch of its own.
///
/// The caller checks `id.len()` is 1..=65535 and the size limits.
pub fn encode(
    out: &mut Vec<u8>,
    offset: Offset,
    epoch: Epoch,
    timestamp_ms: i64,
    kind: RecordKind,
    id: &[u8],
    message: &[u8],
) {
    encode_in_batch(out, offset, epoch, timestamp_ms, kind, id, message, false);
}

/// Appends one framed record to `out`; `continues` marks it as not the last of its batch.
#[allow(clippy::too_many_arguments)]
pub fn encode_in_batch(
    out: &mut Vec<u8>,
    offset: Offset,
    epoch: Epoch,
    timestamp_ms: i64,
    kind: RecordKind,
    id: &[u8],
    message: &[u8],
    continues: bool,
) {
    debug_assert!(!id.is_empty() && id.len() <= u16::MAX as usize);
    let start = out.len();
    let body_len = BODY_HEADER + id.len() + message.len();
    let mut head = [0u8; RECORD_OVERHEAD];
    LE::write_u32(&mut head[0..4], body_len as u32);
    LE::write_u64(&mut head[8..16], offset);
    LE::write_u32(&mut head[16..20], epoch);
    LE::write_i64(&mut head[20..28], timestamp_ms);
    head[28] = kind as u8 | if continues { BATCH_CONTINUES } else { 0 };
    LE::write_u16(&mut head[29..31], id.len() as u16);
    out.reserve(RECORD_OVERHEAD + id.len() + message.len());
    out.extend_from_slice(&head);
    out.extend_from_slice(id);
    out.extend_from_slice(message);
    let crc = crc32fast::hash(&out[start + FRAME_HEADER..]);
    LE::write_u32(&mut out[start + 4..start + 8], crc);
}

/// Decodes the record at the start of `buf`, verifying its CRC.
///
/// `max_record` bounds the framed length, so garbage lengths are rejected before any
/// CRC work and nothing ever trusts a length it has not bounded.
pub fn decode(buf: &[u8], max_record: usize) -> Decoded<'_> {
    if buf.len() < FRAME_HEADER {
        return Decoded::Incomplete;
    }
    let body_len = LE::read_u32(&buf[0..4]) as usize;
    if body_len < BODY_HEADER + 1 {
        return Decoded::Invalid("record length too small");
    }
    let total = FRAME_HEADER + body_len;
    if total > max_record {
        return Decoded::Invalid("record length over the limit");
    }
    if buf.len() < total {
        return Decoded::Incomplete;
    }
    let body = &buf[FRAME_HEADER..total];
    if crc32fast::hash(body) != LE::read_u32(&buf[4..8]) {
        return Decoded::Invalid("CRC mismatch");
    }
    let Some(kind) = RecordKind::from_byte(body[20] & !BATCH_CONTINUES) else {
        return Decoded::Invalid("unknown record kind");
    };
    let id_len = LE::read_u16(&body[21..23]) as usize;
    if id_len == 0 || BODY_HEADER + id_len > body_len {
        return Decoded::Invalid("ID length out of bounds");
    }
    let record = RecordRef {
        offset: LE::read_u64(&body[0..8]),
        epoch: LE::read_u32(&body[8..12]),
        timestamp_ms: LE::read_i64(&body[12..20]),
        kind,
        id: &body[BODY_HEADER..BODY_HEADER + id_len],
        message: &body[BODY_HEADER + id_len..],
        continues: body[20] & BATCH_CONTINUES != 0,
    };
    Decoded::Record(record, total)
}

/// Framed length and offset of the record at the start of `buf`, without checking its
/// CRC: for skipping forward over records that were verified when they were recovered
/// or appended. Bytes are only served after `decode` has checked them.
pub fn peek(buf: &[u8]) -> Option<(usize, Offset)> {
    if buf.len() < RECORD_OVERHEAD {
        return None;
    }
    let total = FRAME_HEADER + LE::read_u32(&buf[0..4]) as usize;
    Some((total, LE::read_u64(&buf[8..16])))
}

/// Iterates the records of a buffer holding whole framed records.
pub struct Records<'a> {
    buf: &'a [u8],
    position: usize,
    max_record: usize,
}

impl<'a> Records<'a> {
    pub fn new(buf: &'a [u8], max_record: usize) -> Self {
        Records { buf, position: 0, max_record }
    }
}

impl<'a> Iterator for Records<'a> {
    /// A record, or the position and reason of the first bytes that are not one.
    type Item = Result<RecordRef<'a>, (usize, &'static str)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.position >= self.buf.len() {
            return None;
        }
        match decode(&self.buf[self.position..], self.max_record) {
            Decoded::Record(record, len) => {
                self.position += len;
                Some(Ok(record))
            }
            Decoded::Incomplete => {
                let at = self.position;
                self.position = self.buf.len();
                Some(Err((at, "truncated record")))
            }
            Decoded::Invalid(reason) => {
                let at = self.position;
                self.position = self.buf.len();
                Some(Err((at, reason)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kind() -> impl Strategy<Value = RecordKind> {
        prop_oneof![Just(RecordKind::Set), Just(RecordKind::Delete)]
    }

    proptest! {
        #[test]
        fn encode_then_decode_round_trips(
            offset in any::<u64>(), epoch in any::<u32>(), ts in any::<i64>(), kind in kind(),
            id in proptest::collection::vec(any::<u8>(), 1..300),
            message in proptest::collection::vec(any::<u8>(), 0..2000),
            prefix in proptest::collection::vec(any::<u8>(), 0..10),
        ) {
            let mut buf = prefix.clone();
            encode(&mut buf, offset, epoch, ts, kind, &id, &message);
            let expected_len = framed_len(&id, &message);
            prop_assert_eq!(buf.len() - prefix.len(), expected_len);
            match decode(&buf[prefix.len()..], usize::MAX) {
                Decoded::Record(r, len) => {
                    prop_assert_eq!(len, expected_len);
                    prop_assert_eq!(r, RecordRef { offset, epoch, timestamp_ms: ts, kind, id: &id, message: &message, continues: false });
                }
                other => prop_assert!(false, "decoded {:?}", other),
            }
            // Every strict prefix is incomplete, never a record.
            for cut in [0, 1, FRAME_HEADER, expected_len - 1] {
                prop_assert_eq!(decode(&buf[prefix.len()..prefix.len() + cut], usize::MAX), Decoded::Incomplete);
            }
        }

        #[test]
        fn decoding_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes, 1 << 20);
            for item in Records::new(&bytes, 1 << 20) { let _ = item; }
        }

        #[test]
        fn any_flipped_bit_is_detected(
            id in proptest::collection::vec(any::<u8>(), 1..40),
            message in proptest::collection::vec(any::<u8>(), 0..200),
            bit in any::<prop::sample::Index>(),
        ) {
            let mut buf = Vec::new();
            encode(&mut buf, 7, 1, 0, RecordKind::Set, &id, &message);
            let bit = bit.index(buf.len() * 8);
            buf[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(!matches!(decode(&buf, 1 << 20), Decoded::Record(r, _) if r.id == &id[..] && r.message == &message[..] && r.offset == 7));
        }
    }

    #[test]
    fn the_batch_flag_round_trips_beside_the_kind() {
        let mut buf = Vec::new();
        encode_in_batch(&mut buf, 1, 1, 0, RecordKind::Delete, b"id", b"", true);
        encode_in_batch(&mut buf, 2, 1, 0, RecordKind::Set, b"id", b"m", false);
        let records: Vec<_> = Records::new(&buf, 1 << 20).map(Result::unwrap).collect();
        assert_eq!((records[0].kind, records[0].continues), (RecordKind::Delete, true));
        assert_eq!((records[1].kind, records[1].continues), (RecordKind::Set, false));
    }

    #[test]
    fn oversized_length_is_rejected_before_reading() {
        let mut buf = vec![0u8; 16];
        LE::write_u32(&mut buf[0..4], u32::MAX);
        assert_eq!(decode(&buf, 1024), Decoded::Invalid("record length over the limit"));
    }
}
