//! Replies as values, and their text-protocol encoding (`\r\n` line endings).

use std::fmt;

use bytes::{BufMut, BytesMut};

use super::ProtocolError;

/// An answer to one request, independent of the framing that will carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok,
    Pong,
    Bye,
    NotFound,
    /// A stored message, binary.
    Value(Vec<u8>),
    /// One line of text (HELP, STATS).
    Info(String),
    /// The reason after `ERR `.
    Error(String),
}

/// A text-protocol reply is a single line, so a message holding a line break cannot be one.
const LINE_BREAK_IN_VALUE: &str = "message holds a line break; use RESP";

impl Reply {
    pub fn error(reason: impl fmt::Display) -> Reply {
        Reply::Error(reason.to_string())
    }

    /// Appends the text-protocol encoding of the reply to `dst`.
    pub fn encode_text(&self, dst: &mut BytesMut) {
        match self {
            Reply::Ok => dst.put_slice(b"OK"),
            Reply::Pong => dst.put_slice(b"PONG"),
            Reply::Bye => dst.put_slice(b"BYE"),
            Reply::NotFound => dst.put_slice(b"NOT_FOUND"),
            Reply::Value(message) => {
                if message.contains(&b'\n') || message.contains(&b'\r') {
                    put_error(dst, LINE_BREAK_IN_VALUE);
                } else {
                    dst.put_slice(message);
                }
            }
            Reply::Info(text) => put_single_line(dst, text),
            Reply::Error(reason) => put_error(dst, reason),
        }
        dst.put_slice(b"\r\n");
    }

    /// About how many bytes the encoding takes; used to bound buffered replies.
    pub fn encoded_len_hint(&self) -> usize {
        let body = match self {
            Reply::Value(message) => message.len(),
            Reply::Info(text) | Reply::Error(text) => text.len() + 4,
            _ => 9,
        };
        body + 2
    }
}

impl From<ProtocolError> for Reply {
    fn from(err: ProtocolError) -> Reply {
        Reply::error(err)
    }
}

fn put_error(dst: &mut BytesMut, reason: &str) {
    dst.put_slice(b"ERR ");
    put_single_line(dst, reason);
}

/// Our own text could still carry a line break (an OS error message, say); a reply must not.
fn put_single_line(dst: &mut BytesMut, text: &str) {
    dst.reserve(text.len());
    for &byte in text.as_bytes() {
        dst.put_u8(if byte == b'\r' || byte == b'\n' { b' ' } else { byte });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(reply: Reply) -> Vec<u8> {
        let mut dst = BytesMut::new();
        reply.encode_text(&mut dst);
        dst.to_vec()
    }

    #[test]
    fn replies_end_with_crlf() {
        assert_eq!(text(Reply::Ok), b"OK\r\n");
        assert_eq!(text(Reply::Pong), b"PONG\r\n");
        assert_eq!(text(Reply::Bye), b"BYE\r\n");
        assert_eq!(text(Reply::NotFound), b"NOT_FOUND\r\n");
        assert_eq!(text(Reply::Value(b" a \xff ".to_vec())), b" a \xff \r\n");
        assert_eq!(text(Reply::Value(Vec::new())), b"\r\n");
        assert_eq!(text(Reply::error("bad\nthing")), b"ERR bad thing\r\n");
    }

    #[test]
    fn value_with_a_line_break_is_refused_in_text() {
        assert_eq!(text(Reply::Value(b"a\rb".to_vec())), b"ERR message holds a line break; use RESP\r\n");
    }
}
