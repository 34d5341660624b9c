//! RESP replies as values, and their encoding in RESP2 or RESP3.
//!
//! One value, two encodings: a connection speaks RESP2 until it sends `HELLO 3`, and the
//! few shapes RESP3 adds (null, map, verbatim string) fall back to their RESP2 forms
//! (`$-1`, a flat array of keys and values, a bulk string), exactly as Redis sends them.

use std::fmt;

use bytes::{BufMut, BytesMut};

use super::{CommandError, RespError};
use crate::protocol::Reply;

/// The protocol version a connection negotiated with `HELLO` (RESP2 until then).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Resp2,
    Resp3,
}

impl Protocol {
    /// The number `HELLO` takes and reports.
    pub fn version(self) -> i64 {
        match self {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        }
    }
}

/// One RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RespReply {
    /// `+OK`, `+PONG`: fixed words only, so they can never hold a line break.
    Simple(&'static str),
    /// `-<code> <reason>`; a line break in `reason` is sent as a space.
    Error {
        code: &'static str,
        reason: String,
    },
    Integer(i64),
    Bulk(Vec<u8>),
    /// A key that does not exist: `$-1` in RESP2, `_` in RESP3.
    Nil,
    Array(Vec<RespReply>),
    /// Key-value pairs (HELLO): `%` in RESP3, a flat array in RESP2.
    Map(Vec<(RespReply, RespReply)>),
    /// Text meant for people (INFO, CLIENT INFO): `=<len>\r\ntxt:...` in RESP3, a bulk
    /// string in RESP2.
    Verbatim(String),
}

impl RespReply {
    /// An `ERR` error.
    pub fn error(reason: impl fmt::Display) -> RespReply {
        RespReply::Error { code: "ERR", reason: reason.to_string() }
    }

    /// The answer to a request that cannot be framed; the connection closes after it.
    pub fn protocol_error(err: &RespError) -> RespReply {
        RespReply::error(format_args!("Protocol error: {err}"))
    }

    pub fn encode(&self, dst: &mut BytesMut, protocol: Protocol) {
        let resp3 = protocol == Protocol::Resp3;
        match self {
            RespReply::Simple(word) => {
                dst.put_u8(b'+');
                dst.put_slice(word.as_bytes());
                dst.put_slice(b"\r\n");
            }
            RespReply::Error { code, reason } => {
                dst.reserve(code.len() + reason.len() + 4);
                dst.put_u8(b'-');
                dst.put_slice(code.as_bytes());
                dst.put_u8(b' ');
                for &byte in reason.as_bytes() {
                    dst.put_u8(if byte == b'\r' || byte == b'\n' { b' ' } else { byte });
                }
                dst.put_slice(b"\r\n");
            }
            RespReply::Integer(n) => put_header(dst, b':', *n),
            RespReply::Bulk(bytes) => put_bulk(dst, b'$', b"", bytes),
            RespReply::Verbatim(text) if resp3 => put_bulk(dst, b'=', b"txt:", text.as_bytes()),
            RespReply::Verbatim(text) => put_bulk(dst, b'$', b"", text.as_bytes()),
            RespReply::Nil if resp3 => dst.put_slice(b"_\r\n"),
            RespReply::Nil => dst.put_slice(b"$-1\r\n"),
            RespReply::Array(items) => {
                put_header(dst, b'*', items.len() as i64);
                for item in items {
                    item.encode(dst, protocol);
                }
            }
            RespReply::Map(pairs) => {
                match resp3 {
                    true => put_header(dst, b'%', pairs.len() as i64),
                    false => put_header(dst, b'*', 2 * pairs.len() as i64),
                }
                for (key, value) in pairs {
                    key.encode(dst, protocol);
                    value.encode(dst, protocol);
                }
            }
        }
    }

    /// About how many bytes the encoding takes; used to bound buffered replies.
    pub fn encoded_len_hint(&self) -> usize {
        match self {
            RespReply::Bulk(bytes) => bytes.len() + 16,
            RespReply::Error { reason, .. } => reason.len() + 16,
            RespReply::Verbatim(text) => text.len() + 20,
            RespReply::Array(items) => items.iter().map(RespReply::encoded_len_hint).sum::<usize>() + 16,
            RespReply::Map(pairs) => {
                pairs.iter().map(|(k, v)| k.encoded_len_hint() + v.encoded_len_hint()).sum::<usize>() + 16
            }
            _ => 16,
        }
    }
}

/// The framing-neutral reply of a single-key command, as a Redis client expects it.
impl From<Reply> for RespReply {
    fn from(reply: Reply) -> RespReply {
        match reply {
            Reply::Ok => RespReply::Simple("OK"),
            Reply::Pong => RespReply::Simple("PONG"),
            // QUIT: Redis answers `+OK` before it closes.
            Reply::Bye => RespReply::Simple("OK"),
            Reply::NotFound => RespReply::Nil,
            Reply::Value(message) => RespReply::Bulk(message),
            Reply::Info(text) => RespReply::Bulk(text.into_bytes()),
            Reply::Error(reason) => RespReply::Error { code: "ERR", reason },
        }
    }
}

impl From<CommandError> for RespReply {
    fn from(err: CommandError) -> RespReply {
        RespReply::Error { code: err.code(), reason: err.to_string() }
    }
}

/// `<kind><len>\r\n<prefix><bytes>\r\n`, the length counting the prefix.
fn put_bulk(dst: &mut BytesMut, kind: u8, prefix: &[u8], bytes: &[u8]) {
    dst.reserve(prefix.len() + bytes.len() + 16);
    put_header(dst, kind, (prefix.len() + bytes.len()) as i64);
    dst.put_slice(prefix);
    dst.put_slice(bytes);
    dst.put_slice(b"\r\n");
}

/// `<kind><decimal>\r\n`, without going through `fmt`.
fn put_header(dst: &mut BytesMut, kind: u8, n: i64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    dst.reserve(24);
    dst.put_u8(kind);
    if n < 0 {
        dst.put_u8(b'-');
    }
    dst.put_slice(&digits[at..]);
    dst.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(reply: RespReply) -> Vec<u8> {
        wire_in(Protocol::Resp2, reply)
    }

    fn wire_in(protocol: Protocol, reply: RespReply) -> Vec<u8> {
        let mut dst = BytesMut::new();
        reply.encode(&mut dst, protocol);
        dst.to_vec()
    }

    #[test]
    fn every_kind_encodes_as_redis_does() {
        assert_eq!(wire(RespReply::Simple("OK")), b"+OK\r\n");
        assert_eq!(wire(RespReply::error("bad\r\nthing")), b"-ERR bad  thing\r\n");
        assert_eq!(wire(CommandError::NoProto.into()), b"-NOPROTO unsupported protocol version\r\n");
        assert_eq!(wire(RespReply::Integer(0)), b":0\r\n");
        assert_eq!(wire(RespReply::Integer(-42)), b":-42\r\n");
        assert_eq!(wire(RespReply::Integer(i64::MIN)), b":-9223372036854775808\r\n");
        assert_eq!(wire(RespReply::Bulk(b"a\r\nb".to_vec())), b"$4\r\na\r\nb\r\n");
        assert_eq!(wire(RespReply::Bulk(Vec::new())), b"$0\r\n\r\n");
        assert_eq!(wire(RespReply::Nil), b"$-1\r\n");
        assert_eq!(wire(RespReply::Array(vec![])), b"*0\r\n");
        assert_eq!(
            wire(RespReply::Array(vec![RespReply::Bulk(b"x".to_vec()), RespReply::Nil])),
            b"*2\r\n$1\r\nx\r\n$-1\r\n"
        );
    }

    #[test]
    fn resp3_shapes_encode_as_redis_7_does_and_fall_back_in_resp2() {
        let map = RespReply::Map(vec![(RespReply::Bulk(b"proto".to_vec()), RespReply::Integer(3))]);
        assert_eq!(wire_in(Protocol::Resp3, map.clone()), b"%1\r\n$5\r\nproto\r\n:3\r\n");
        assert_eq!(wire(map), b"*2\r\n$5\r\nproto\r\n:3\r\n");
        assert_eq!(wire_in(Protocol::Resp3, RespReply::Nil), b"_\r\n");
        let holes = RespReply::Array(vec![RespReply::Nil]);
        assert_eq!(wire_in(Protocol::Resp3, holes), b"*1\r\n_\r\n");
        let text = RespReply::Verbatim("# Keyspace\r\n".to_string());
        assert_eq!(wire_in(Protocol::Resp3, text.clone()), b"=16\r\ntxt:# Keyspace\r\n\r\n");
        assert_eq!(wire(text), b"$12\r\n# Keyspace\r\n\r\n");
    }

    #[test]
    fn neutral_replies_map_to_their_redis_forms() {
        assert_eq!(RespReply::from(Reply::Ok), RespReply::Simple("OK"));
        assert_eq!(RespReply::from(Reply::Bye), RespReply::Simple("OK"));
        assert_eq!(RespReply::from(Reply::NotFound), RespReply::Nil);
        assert_eq!(RespReply::from(Reply::Value(b"v".to_vec())), RespReply::Bulk(b"v".to_vec()));
        assert_eq!(wire(Reply::error("storage failure: disk").into()), b"-ERR storage failure: disk\r\n");
        assert_eq!(
            wire(RespReply::protocol_error(&RespError::InvalidBulkLength)),
            b"-ERR Protocol error: invalid bulk length\r\n"
        );
    }
}
