//! Bounded line framing: a line ends with `\n`, and a `\r` right before it is dropped.
//!
//! The bound is the point: a client cannot make the server buffer an endless line. Once a
//! line is known to be too long the framer reports it once and then drops that line's bytes
//! as they arrive, keeping nothing of them.

use bytes::{Buf, Bytes, BytesMut};

/// What the framer found at the front of the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// One complete line, without its `\n` and without a `\r` right before it.
    Line(Bytes),
    /// A line longer than the limit. Reported once per such line; its remaining bytes are
    /// discarded up to and including its `\n`.
    TooLong,
}

/// Splits a read buffer into lines of at most `max_line_bytes` bytes (line ending excluded).
#[derive(Debug, Clone)]
pub struct LineFramer {
    max_line_bytes: usize,
    /// Bytes at the front of the buffer already searched for `\n`, so a line that arrives a
    /// byte at a time is scanned once rather than once per byte.
    scanned: usize,
    /// Inside an over-long line already reported: drop bytes through the next `\n`.
    discarding: bool,
}

impl LineFramer {
    pub fn new(max_line_bytes: usize) -> LineFramer {
        LineFramer { max_line_bytes, scanned: 0, discarding: false }
    }

    pub fn max_line_bytes(&self) -> usize {
        self.max_line_bytes
    }

    /// Takes the next frame off the front of `buf`, or returns `None` when `buf` holds no
    /// complete line yet (what remains is the start of the next line, or nothing).
    pub fn next_frame(&mut self, buf: &mut BytesMut) -> Option<Frame> {
        if self.discarding {
            match memchr::memchr(b'\n', buf) {
                Some(end) => {
                    buf.advance(end + 1);
                    self.discarding = false;
                }
                None => {
                    buf.clear();
                    return None;
                }
            }
        }
        if let Some(found) = memchr::memchr(b'\n', &buf[self.scanned..]) {
            let end = self.scanned + found;
            self.scanned = 0;
            let mut line = buf.split_to(end + 1);
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.truncate(end - 1);
            }
            if line.len() > self.max_line_bytes {
                return Some(Frame::TooLong);
            }
            return Some(Frame::Line(line.freeze()));
        }
        // Everything buffered belongs to one unfinished line. Its last byte may be the `\r`
        // of a `\r\n` still to come, hence the `+ 1`.
        if buf.len() > self.max_line_bytes.saturating_add(1) {
            buf.clear();
            self.scanned = 0;
            self.discarding = true;
            return Some(Frame::TooLong);
        }
        self.scanned = buf.len();
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(framer: &mut LineFramer, buf: &mut BytesMut) -> Vec<Frame> {
        std::iter::from_fn(|| framer.next_frame(buf)).collect()
    }

    fn line(bytes: &[u8]) -> Frame {
        Frame::Line(Bytes::copy_from_slice(bytes))
    }

    #[test]
    fn splits_lines_and_drops_the_carriage_return_before_newline() {
        let mut framer = LineFramer::new(100);
        let mut buf = BytesMut::from(&b"PING\r\nGET a\nSET a b\r\rpart"[..]);
        assert_eq!(frames(&mut framer, &mut buf), vec![line(b"PING"), line(b"GET a")]);
        assert_eq!(&buf[..], b"SET a b\r\rpart");
        buf.extend_from_slice(b"\n");
        assert_eq!(frames(&mut framer, &mut buf), vec![line(b"SET a b\r\rpart")]);
        assert!(buf.is_empty());
    }

    #[test]
    fn line_arriving_byte_by_byte_is_assembled() {
        let mut framer = LineFramer::new(100);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &byte in b"SET id hello\r\n" {
            buf.extend_from_slice(&[byte]);
            got.extend(frames(&mut framer, &mut buf));
        }
        assert_eq!(got, vec![line(b"SET id hello")]);
    }

    #[test]
    fn line_at_the_limit_is_accepted_and_one_over_is_too_long() {
        let mut framer = LineFramer::new(4);
        let mut buf = BytesMut::from(&b"abcd\r\nabcde\nok\n"[..]);
        assert_eq!(frames(&mut framer, &mut buf), vec![line(b"abcd"), Frame::TooLong, line(b"ok")]);
    }

    #[test]
    fn long_line_is_reported_once_and_discarded_as_it_arrives() {
        let mut framer = LineFramer::new(8);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for _ in 0..100 {
            buf.extend_from_slice(b"xxxxxxxxxxxxxxxx");
            got.extend(frames(&mut framer, &mut buf));
            assert!(buf.len() <= 16, "discarded bytes must not accumulate");
        }
        buf.extend_from_slice(b"xx\nPING\n");
        got.extend(frames(&mut framer, &mut buf));
        assert_eq!(got, vec![Frame::TooLong, line(b"PING")]);
    }

    #[test]
    fn empty_lines_are_frames() {
        let mut framer = LineFramer::new(8);
        let mut buf = BytesMut::from(&b"\n\r\n"[..]);
        assert_eq!(frames(&mut framer, &mut buf), vec![line(b""), line(b"")]);
    }
}
