//! Request encoding and incremental reply parsing for the text protocol and RESP2.
//!
//! Parsing borrows from the connection's read buffer and allocates nothing; a reply that
//! is not the expected one is handed back as its raw bytes, and only the first of those per
//! client is ever turned into a message.

use super::workload::{KEY_LEN, Op, key_bytes};

/// The wire protocol to speak (README, "The protocol").
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// One line per request: `SET <id> <message>` / `GET <id>`.
    Text,
    /// Redis RESP2 arrays of bulk strings.
    Resp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Text => "text",
            Protocol::Resp => "resp",
        })
    }
}

/// Appends requests to a write buffer. Everything after the key is the same for every SET,
/// so it is built once.
pub(super) struct Encoder {
    protocol: Protocol,
    set_tail: Vec<u8>,
}

impl Encoder {
    pub(super) fn new(protocol: Protocol, value: &[u8]) -> Self {
        let mut set_tail = Vec::with_capacity(value.len() + 24);
        match protocol {
            Protocol::Text => {
                set_tail.push(b' ');
                set_tail.extend_from_slice(value);
                set_tail.push(b'\n');
            }
            Protocol::Resp => {
                set_tail.extend_from_slice(format!("${}\r\n", value.len()).as_bytes());
                set_tail.extend_from_slice(value);
                set_tail.extend_from_slice(b"\r\n");
            }
        }
        Encoder { protocol, set_tail }
    }

    pub(super) fn encode(&self, op: Op, key: u64, out: &mut Vec<u8>) {
        // `$16` below is KEY_LEN; checked at compile time.
        const _: () = assert!(KEY_LEN == 16);
        let key = key_bytes(key);
        match (self.protocol, op) {
            (Protocol::Text, Op::Set) => {
                out.extend_from_slice(b"SET ");
                out.extend_from_slice(&key);
                out.extend_from_slice(&self.set_tail);
            }
            (Protocol::Text, Op::Get) => {
                out.extend_from_slice(b"GET ");
                out.extend_from_slice(&key);
                out.push(b'\n');
            }
            (Protocol::Resp, Op::Set) => {
                out.extend_from_slice(b"*3\r\n$3\r\nSET\r\n$16\r\n");
                out.extend_from_slice(&key);
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(&self.set_tail);
            }
            (Protocol::Resp, Op::Get) => {
                out.extend_from_slice(b"*2\r\n$3\r\nGET\r\n$16\r\n");
                out.extend_from_slice(&key);
                out.extend_from_slice(b"\r\n");
            }
        }
    }
}

/// How one complete reply answered its request.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Reply<'a> {
    /// `OK` to a SET, or to a GET the expected value or an empty one.
    Ok,
    /// `NOT_FOUND` / `$-1` to a GET: a correct answer for a key nobody set.
    NotFound,
    /// Anything else, including error replies; the raw reply bytes.
    Wrong(&'a [u8]),
}

/// The reply stream cannot be followed any more: the client must stop.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Desync(pub(super) String);

/// Parses the reply at the front of `buf` to a request `op` that expects `value` back.
/// `Ok(None)` means more bytes are needed; replies longer than `limit` are a `Desync`, so a
/// broken server cannot make us buffer without bound.
pub(super) fn parse_reply<'a>(
    protocol: Protocol,
    buf: &'a [u8],
    op: Op,
    value: &[u8],
    limit: usize,
) -> Result<Option<(usize, Reply<'a>)>, Desync> {
    match protocol {
        Protocol::Text => parse_text(buf, op, value, limit),
        Protocol::Resp => parse_resp(buf, op, value, limit),
    }
}

fn parse_text<'a>(buf: &'a [u8], op: Op, value: &[u8], limit: usize) -> Result<Option<(usize, Reply<'a>)>, Desync> {
    let Some(lf) = memchr::memchr(b'\n', buf) else {
        return match buf.len() > limit {
            true => Err(Desync(format!("reply line longer than {limit} bytes"))),
            false => Ok(None),
        };
    };
    let line = &buf[..lf];
    // Replies end with "\r\n" (README, "The protocol"); a bare "\n" is a wrong reply, not a lenient one.
    let reply = match (line.strip_suffix(b"\r"), op) {
        (Some(b"OK"), Op::Set) => Reply::Ok,
        (Some(b"NOT_FOUND"), Op::Get) => Reply::NotFound,
        (Some(body), Op::Get) if is_expected_value(body, value) => Reply::Ok,
        _ => Reply::Wrong(&buf[..=lf]),
    };
    Ok(Some((lf + 1, reply)))
}

fn parse_resp<'a>(buf: &'a [u8], op: Op, value: &[u8], limit: usize) -> Result<Option<(usize, Reply<'a>)>, Desync> {
    let Some(len) = resp_frame_len(buf, 0, limit, 0)? else {
        return Ok(None);
    };
    let frame = &buf[..len];
    let reply = match (frame, op) {
        (b"+OK\r\n", Op::Set) => Reply::Ok,
        (b"$-1\r\n", Op::Get) => Reply::NotFound,
        ([b'$', ..], Op::Get) if bulk_body(frame).is_some_and(|body| is_expected_value(body, value)) => Reply::Ok,
        _ => Reply::Wrong(frame),
    };
    Ok(Some((len, reply)))
}

/// Whether a GET's value is right: this run's value, or the empty message. An empty
/// message is a valid stored value (`SET <id> ` in text, `$0` in RESP, `--value-size 0`
/// in an earlier run), like a missing key; any other value must be exactly this run's, so
/// a server that truncates or corrupts values still shows errors.
fn is_expected_value(body: &[u8], value: &[u8]) -> bool {
    body == value || body.is_empty()
}

/// The body of a complete, non-null bulk string frame.
fn bulk_body(frame: &[u8]) -> Option<&[u8]> {
    let header_end = memchr::memchr(b'\n', frame)? + 1;
    frame.get(header_end..frame.len().checked_sub(2)?)
}

/// Length of the complete RESP value starting at `start`, or `None` if it is incomplete.
/// Unexpected types are still measured, so one odd reply does not lose the thread.
fn resp_frame_len(buf: &[u8], start: usize, limit: usize, depth: u32) -> Result<Option<usize>, Desync> {
    let Some(&kind) = buf.get(start) else {
        return Ok(None);
    };
    let Some(lf) = memchr::memchr(b'\n', &buf[start..]).map(|i| start + i) else {
        return match buf.len() - start > limit {
            true => Err(Desync(format!("RESP header longer than {limit} bytes"))),
            false => Ok(None),
        };
    };
    if lf == start || buf[lf - 1] != b'\r' {
        return Err(Desync(format!("RESP line not ended by CRLF: {}", describe(&buf[start..=lf]))));
    }
    let header = &buf[start + 1..lf - 1];
    let after_header = lf + 1;
    match kind {
        b'+' | b'-' | b':' => Ok(Some(after_header - start)),
        b'$' => match parse_int(header)? {
            -1 => Ok(Some(after_header - start)),
            n if n < 0 || n as u64 > limit as u64 => Err(Desync(format!("bulk string length {n} out of range"))),
            n => {
                let end = after_header + n as usize + 2;
                if buf.len() < end {
                    return Ok(None);
                }
                if &buf[end - 2..end] != b"\r\n" {
                    return Err(Desync("bulk string not ended by CRLF".into()));
                }
                Ok(Some(end - start))
            }
        },
        b'*' => {
            let count = parse_int(header)?;
            if depth >= 4 || !(-1..=1024).contains(&count) {
                return Err(Desync(format!("unexpected RESP array of {count} elements")));
            }
            let mut at = after_header;
            for _ in 0..count.max(0) {
                match resp_frame_len(buf, at, limit, depth + 1)? {
                    Some(n) => at += n,
                    None => return Ok(None),
                }
            }
            Ok(Some(at - start))
        }
        other => Err(Desync(format!("not a RESP reply: starts with {:?}", other as char))),
    }
}

fn parse_int(digits: &[u8]) -> Result<i64, Desync> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Desync(format!("bad RESP length {}", describe(digits))))
}

/// A short, printable rendering of reply bytes for error messages.
pub(super) fn describe(bytes: &[u8]) -> String {
    const SHOWN: usize = 80;
    let shown = &bytes[..bytes.len().min(SHOWN)];
    let mut s = format!("\"{}\"", shown.escape_ascii());
    if bytes.len() > SHOWN {
        s.push_str(&format!(" … ({} bytes)", bytes.len()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 1 << 20;

    fn text(buf: &[u8], op: Op) -> Option<(usize, Reply<'_>)> {
        parse_reply(Protocol::Text, buf, op, b"abc", LIMIT).unwrap()
    }

    fn resp(buf: &[u8], op: Op) -> Result<Option<(usize, Reply<'_>)>, Desync> {
        parse_reply(Protocol::Resp, buf, op, b"abc", LIMIT)
    }

    #[test]
    fn encodes_both_protocols() {
        let mut out = Vec::new();
        Encoder::new(Protocol::Text, b"abc").encode(Op::Set, 7, &mut out);
        Encoder::new(Protocol::Text, b"abc").encode(Op::Get, 7, &mut out);
        assert_eq!(out, b"SET key:000000000007 abc\nGET key:000000000007\n");
        out.clear();
        Encoder::new(Protocol::Resp, b"abc").encode(Op::Set, 7, &mut out);
        Encoder::new(Protocol::Resp, b"abc").encode(Op::Get, 7, &mut out);
        assert_eq!(
            out,
            b"*3\r\n$3\r\nSET\r\n$16\r\nkey:000000000007\r\n$3\r\nabc\r\n\
              *2\r\n$3\r\nGET\r\n$16\r\nkey:000000000007\r\n"
        );
    }

    #[test]
    fn text_replies_are_checked_against_the_request() {
        assert_eq!(text(b"OK\r\nabc", Op::Set), Some((4, Reply::Ok)));
        assert_eq!(text(b"abc\r\n", Op::Get), Some((5, Reply::Ok)));
        assert_eq!(text(b"NOT_FOUND\r\n", Op::Get), Some((11, Reply::NotFound)));
        assert_eq!(text(b"abd\r\n", Op::Get), Some((5, Reply::Wrong(b"abd\r\n"))));
        assert_eq!(text(b"OK\r\n", Op::Get), Some((4, Reply::Wrong(b"OK\r\n"))));
        assert_eq!(text(b"ERR x\r\n", Op::Set), Some((7, Reply::Wrong(b"ERR x\r\n"))));
        assert_eq!(text(b"OK\n", Op::Set), Some((3, Reply::Wrong(b"OK\n"))));
        assert_eq!(text(b"OK\r", Op::Set), None);
    }

    #[test]
    fn resp_replies_are_checked_against_the_request() {
        assert_eq!(resp(b"+OK\r\n", Op::Set), Ok(Some((5, Reply::Ok))));
        assert_eq!(resp(b"$3\r\nabc\r\n", Op::Get), Ok(Some((9, Reply::Ok))));
        assert_eq!(resp(b"$-1\r\n", Op::Get), Ok(Some((5, Reply::NotFound))));
        assert_eq!(resp(b"$3\r\nabd\r\n", Op::Get), Ok(Some((9, Reply::Wrong(b"$3\r\nabd\r\n")))));
        assert_eq!(resp(b"-ERR no\r\n", Op::Set), Ok(Some((9, Reply::Wrong(b"-ERR no\r\n")))));
        assert_eq!(resp(b"*2\r\n:1\r\n$-1\r\n", Op::Get).unwrap().unwrap().0, 13);
        assert_eq!(resp(b"$3\r\nabc\r", Op::Get), Ok(None));
        assert_eq!(resp(b"*2\r\n:1\r\n", Op::Get), Ok(None));
    }

    #[test]
    fn empty_value_is_a_right_get_reply_in_both_protocols() {
        assert_eq!(text(b"\r\n", Op::Get), Some((2, Reply::Ok)));
        assert_eq!(resp(b"$0\r\n\r\n", Op::Get), Ok(Some((6, Reply::Ok))));
        // Still wrong: an empty reply to a SET, a bare LF, an empty error or status.
        assert_eq!(text(b"\r\n", Op::Set), Some((2, Reply::Wrong(b"\r\n"))));
        assert_eq!(text(b"\n", Op::Get), Some((1, Reply::Wrong(b"\n"))));
        assert_eq!(text(b"ERR x\r\n", Op::Get), Some((7, Reply::Wrong(b"ERR x\r\n"))));
        assert_eq!(resp(b"$0\r\n\r\n", Op::Set), Ok(Some((6, Reply::Wrong(b"$0\r\n\r\n")))));
        assert_eq!(resp(b"+\r\n", Op::Get), Ok(Some((3, Reply::Wrong(b"+\r\n")))));
        assert_eq!(resp(b"-\r\n", Op::Get), Ok(Some((3, Reply::Wrong(b"-\r\n")))));
        assert!(resp(b"$0\r\nxx", Op::Get).is_err());
    }

    #[test]
    fn resp_replies_split_at_every_byte_are_incomplete() {
        let reply = b"$3\r\nabc\r\n";
        for cut in 0..reply.len() {
            assert_eq!(resp(&reply[..cut], Op::Get), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn broken_resp_is_a_desync() {
        assert!(resp(b"hello\r\n", Op::Set).is_err());
        assert!(resp(b"$x\r\n", Op::Get).is_err());
        assert!(resp(b"$-2\r\n", Op::Get).is_err());
        assert!(resp(b"$999999999999\r\n", Op::Get).is_err());
        assert!(resp(b"$3\r\nabcde", Op::Get).is_err());
        assert!(resp(b"+OK\n", Op::Set).is_err());
    }

    #[test]
    fn unterminated_reply_over_the_limit_is_a_desync() {
        let long = vec![b'a'; 100];
        assert!(parse_reply(Protocol::Text, &long, Op::Get, b"", 10).is_err());
        assert_eq!(parse_reply(Protocol::Text, &long, Op::Get, b"", 1000), Ok(None));
    }
}
