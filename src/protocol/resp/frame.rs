//! Incremental framing of RESP2 requests: `*<count>\r\n` followed by `count` bulk strings,
//! each `$<len>\r\n<len bytes>\r\n`.
//!
//! The parser never copies an argument: it records each one's byte range in the read
//! buffer, and the caller executes the request while the buffer still holds it, then
//! advances past it. Every length a client announces is checked against a hard limit
//! before it is believed, and nothing is reserved on its word: memory grows only with the
//! bytes that actually arrive, so `*1000000\r\n` or `$2000000000\r\n` cost nothing.

use std::ops::Range;

use super::RespError;

/// Most arguments one request may carry (Redis's own limit).
pub const MAX_ARRAY_ELEMENTS: usize = 1024 * 1024;
/// Longest length line after its `*` or `$`: a sign and the 19 digits of an `i64`.
const MAX_LENGTH_DIGITS: usize = 20;
/// Argument slots reserved up front for a request, whatever count it announces.
const PREALLOCATED_ARGS: usize = 16;
/// Floor for the size of one whole request (an MSET of many keys, say).
const MIN_REQUEST_BYTES: usize = 64 * 1024 * 1024;

/// Hard bounds on what one request may claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RespLimits {
    pub max_elements: usize,
    pub max_bulk_bytes: usize,
    /// Bound on a whole request, so `max_elements` bulks of `max_bulk_bytes` cannot add up
    /// to terabytes.
    pub max_request_bytes: usize,
}

impl RespLimits {
    /// Limits for a server whose largest message is `max_message_bytes`. A bulk string may
    /// be a little longer than a message (the same slack the text protocol gives its line),
    /// so a slightly oversized SET is told "message too large" and the connection survives.
    pub fn for_max_message(max_message_bytes: usize) -> RespLimits {
        let max_bulk_bytes = crate::protocol::max_line_bytes(max_message_bytes);
        RespLimits {
            max_elements: MAX_ARRAY_ELEMENTS,
            max_bulk_bytes,
            max_request_bytes: max_bulk_bytes.saturating_mul(4).max(MIN_REQUEST_BYTES),
        }
    }
}

/// The arguments of one framed request, borrowed from the read buffer.
#[derive(Debug, Clone, Copy)]
pub struct Args<'a> {
    buf: &'a [u8],
    ranges: &'a [Range<usize>],
}

impl<'a> Args<'a> {
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn get(&self, index: usize) -> Option<&'a [u8]> {
        let (buf, ranges) = (self.buf, self.ranges);
        ranges.get(index).map(|range| &buf[range.clone()])
    }

    /// The arguments from `index` on.
    pub fn skip(&self, index: usize) -> Args<'a> {
        Args { buf: self.buf, ranges: &self.ranges[index.min(self.ranges.len())..] }
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &'a [u8]> + 'a {
        let buf = self.buf;
        self.ranges.iter().map(move |range| &buf[range.clone()])
    }
}

/// A complete request at the front of the buffer: its arguments, and how many bytes it
/// took (advance the buffer by `len` once done with `args`).
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub args: Args<'a>,
    pub len: usize,
}

/// Frames requests out of a buffer that the caller only appends to, and advances by a
/// request's `len` after each complete one. Between calls it remembers how far the current
/// request was framed, so a large request arriving in pieces is scanned once.
#[derive(Debug, Clone)]
pub struct RespParser {
    limits: RespLimits,
    /// Arguments the request being framed announced; 0 between requests.
    expected: usize,
    /// Where the first unframed argument of that request starts.
    pos: usize,
    args: Vec<Range<usize>>,
}

impl RespParser {
    /// Memory the parser holds for the request being framed (its argument ranges), for
    /// the server's buffer budget: a request of many tiny arguments costs more here than
    /// the bytes it sent.
    pub fn held_bytes(&self) -> usize {
        self.args.capacity() * std::mem::size_of::<Range<usize>>()
    }

    pub fn new(limits: RespLimits) -> RespParser {
        RespParser { limits, expected: 0, pos: 0, args: Vec::with_capacity(PREALLOCATED_ARGS) }
    }

    /// The next complete request at the front of `buf`, or `None` when more bytes are
    /// needed. An error means the stream cannot be followed: answer it and close.
    pub fn next_request<'a>(&'a mut self, buf: &'a [u8]) -> Result<Option<Request<'a>>, RespError> {
        if self.expected == 0 {
            let Some(&first) = buf.first() else { return Ok(None) };
            // Empty lines between requests are skipped, as Redis skips an empty inline
            // command (`redis-cli --pipe` sends one before its closing ECHO).
            if first == b'\r' || first == b'\n' {
                let len = buf.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
                return Ok(Some(Request { args: Args { buf, ranges: &[] }, len }));
            }
            if first != b'*' {
                return Err(unexpected('*', first));
            }
            let Some((count, next)) = length_line(buf, 0, RespError::InvalidArrayLength)? else { return Ok(None) };
            self.args.clear();
            // `*0` and the null array `*-1` carry no command; Redis skips them silently.
            if count == 0 || count == -1 {
                return Ok(Some(Request { args: Args { buf, ranges: &[] }, len: next }));
            }
            let count = usize::try_from(count)
                .ok()
                .filter(|&count| count <= self.limits.max_elements)
                .ok_or(RespError::InvalidArrayLength)?;
            self.args.reserve(count.min(PREALLOCATED_ARGS));
            self.expected = count;
            self.pos = next;
        }
        while self.args.len() < self.expected {
            let at = self.pos;
            let Some(&first) = buf.get(at) else { return Ok(None) };
            if first != b'$' {
                return Err(unexpected('$', first));
            }
            let Some((len, start)) = length_line(buf, at, RespError::InvalidBulkLength)? else { return Ok(None) };
            let len = usize::try_from(len)
                .ok()
                .filter(|&len| len <= self.limits.max_bulk_bytes)
                .ok_or(RespError::InvalidBulkLength)?;
            let end = start + len;
            if end + 2 > self.limits.max_request_bytes {
                return Err(RespError::RequestTooLarge { max: self.limits.max_request_bytes });
            }
            let Some(terminator) = buf.get(end..end + 2) else { return Ok(None) };
            if terminator != b"\r\n" {
                return Err(RespError::MissingCrlf);
            }
            self.args.push(start..end);
            self.pos = end + 2;
        }
        let len = self.pos;
        self.expected = 0;
        self.pos = 0;
        Ok(Some(Request { args: Args { buf, ranges: &self.args }, len }))
    }
}

/// Parses the length line starting at `buf[at]` (a `*` or `$`, then an integer, then
/// CRLF): the integer and where the line ends, or `None` if the line is not complete.
fn length_line(buf: &[u8], at: usize, invalid: RespError) -> Result<Option<(i64, usize)>, RespError> {
    let digits = at + 1;
    // One byte beyond the longest valid number, where its `\r` would be.
    let window = &buf[digits.min(buf.len())..buf.len().min(digits + MAX_LENGTH_DIGITS + 1)];
    let Some(cr) = memchr::memchr(b'\r', window).map(|i| digits + i) else {
        return match window.len() > MAX_LENGTH_DIGITS {
            true => Err(RespError::LengthLineTooLong),
            false => Ok(None),
        };
    };
    match buf.get(cr + 1) {
        None => Ok(None),
        Some(b'\n') => parse_integer(&buf[digits..cr]).map(|n| Some((n, cr + 2))).ok_or(invalid),
        Some(_) => Err(RespError::MissingCrlf),
    }
}

/// A decimal `i64`: an optional `-` and 1 to 19 digits, nothing else.
fn parse_integer(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text.split_first() {
        Some((b'-', digits)) => (true, digits),
        _ => (false, text),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut value: i64 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(i64::from(digit - b'0'))?;
    }
    Some(if negative { -value } else { value })
}

fn unexpected(expected: char, got: u8) -> RespError {
    RespError::UnexpectedByte { expected, got: [got].escape_ascii().to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> RespLimits {
        RespLimits { max_elements: 8, max_bulk_bytes: 16, max_request_bytes: 64 }
    }

    /// Feeds `stream` in pieces cut at `cuts`, collecting every request's arguments.
    fn frame_in_pieces(stream: &[u8], cuts: &[usize]) -> Result<Vec<Vec<Vec<u8>>>, RespError> {
        let mut parser = RespParser::new(limits());
        let mut buf = Vec::new();
        let mut got = Vec::new();
        let mut start = 0;
        for &end in cuts.iter().chain([&stream.len()]) {
            buf.extend_from_slice(&stream[start..end]);
            start = end;
            while let Some(request) = parser.next_request(&buf)? {
                got.push(request.args.iter().map(<[u8]>::to_vec).collect());
                let len = request.len;
                buf.drain(..len);
            }
        }
        Ok(got)
    }

    fn frame(stream: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, RespError> {
        frame_in_pieces(stream, &[])
    }

    fn args(list: &[&[u8]]) -> Vec<Vec<u8>> {
        list.iter().map(|a| a.to_vec()).collect()
    }

    const TWO: &[u8] = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\na\r\nb\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";

    #[test]
    fn pipelined_requests_are_framed_in_order_and_binary_safe() {
        assert_eq!(frame(TWO), Ok(vec![args(&[b"SET", b"k", b"a\r\nb"]), args(&[b"GET", b"k"])]));
    }

    #[test]
    fn a_stream_cut_at_any_byte_frames_the_same() {
        let whole = frame(TWO).unwrap();
        for cut in 0..=TWO.len() {
            assert_eq!(frame_in_pieces(TWO, &[cut]).as_ref(), Ok(&whole), "cut at {cut}");
        }
        let every_byte: Vec<usize> = (0..TWO.len()).collect();
        assert_eq!(frame_in_pieces(TWO, &every_byte), Ok(whole));
    }

    #[test]
    fn empty_lines_between_requests_are_skipped_as_redis_skips_them() {
        let stream = b"\r\n*1\r\n$4\r\nPING\r\n\n\r\n*1\r\n$4\r\nECHO\r\n";
        let framed: Vec<_> = frame(stream).unwrap().into_iter().filter(|r| !r.is_empty()).collect();
        assert_eq!(framed, vec![args(&[b"PING"]), args(&[b"ECHO"])]);
    }

    #[test]
    fn empty_and_null_arrays_are_empty_requests() {
        assert_eq!(frame(b"*0\r\n*-1\r\n*1\r\n$0\r\n\r\n"), Ok(vec![vec![], vec![], args(&[b""])]));
    }

    #[test]
    fn malformed_frames_are_errors() {
        let unexpected = |expected, got: &str| Err(RespError::UnexpectedByte { expected, got: got.into() });
        assert_eq!(frame(b"+PING\r\n"), unexpected('*', "+"));
        assert_eq!(frame(b"*1\r\n:1\r\n"), unexpected('$', ":"));
        assert_eq!(frame(b"*1\r\n*1\r\n"), unexpected('$', "*"));
        assert_eq!(frame(b"*x\r\n"), Err(RespError::InvalidArrayLength));
        assert_eq!(frame(b"*\r\n"), Err(RespError::InvalidArrayLength));
        assert_eq!(frame(b"*-2\r\n"), Err(RespError::InvalidArrayLength));
        assert_eq!(frame(b"*+1\r\n"), Err(RespError::InvalidArrayLength));
        assert_eq!(frame(b"*9\r\n"), Err(RespError::InvalidArrayLength), "over max_elements");
        assert_eq!(frame(b"*1\r\n$-1\r\n"), Err(RespError::InvalidBulkLength));
        assert_eq!(frame(b"*1\r\n$17\r\n"), Err(RespError::InvalidBulkLength), "over max_bulk_bytes");
        assert_eq!(frame(b"*1\r\n$1 \r\n"), Err(RespError::InvalidBulkLength));
        assert_eq!(frame(b"*1\r\n$1\r\nab\r\n"), Err(RespError::MissingCrlf));
        assert_eq!(frame(b"*1\nPING PING PING PING"), Err(RespError::LengthLineTooLong));
        assert_eq!(frame(b"*1\rX"), Err(RespError::MissingCrlf));
        assert_eq!(frame(b"*999999999999999999999"), Err(RespError::LengthLineTooLong));
        assert_eq!(frame(b"*9999999999999999999\r\n"), Err(RespError::InvalidArrayLength));
    }

    #[test]
    fn a_request_over_the_total_limit_is_refused_before_its_bytes_arrive() {
        let mut stream = b"*8\r\n".to_vec();
        for _ in 0..2 {
            stream.extend_from_slice(b"$16\r\n0123456789abcdef\r\n");
        }
        stream.extend_from_slice(b"$16\r\n");
        assert_eq!(frame(&stream), Err(RespError::RequestTooLarge { max: 64 }));
    }

    #[test]
    fn announced_sizes_are_not_allocated() {
        let mut parser = RespParser::new(RespLimits::for_max_message(1 << 20));
        let buf = format!("*{MAX_ARRAY_ELEMENTS}\r\n$1000000\r\nxy").into_bytes();
        assert!(parser.next_request(&buf).unwrap().is_none());
        assert!(parser.args.capacity() <= 2 * PREALLOCATED_ARGS);
    }

    #[test]
    fn incomplete_input_asks_for_more() {
        for partial in [&b""[..], b"*", b"*2", b"*2\r", b"*2\r\n$3", b"*2\r\n$3\r\nGE", b"*2\r\n$3\r\nGET\r"] {
            let mut parser = RespParser::new(limits());
            assert!(parser.next_request(partial).unwrap().is_none(), "{partial:?}");
        }
    }
}
