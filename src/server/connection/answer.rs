//! Replies as the connection queues them: in the protocol (and RESP version) the request
//! was handled in.

use bytes::{Bytes, BytesMut};

use crate::protocol::Reply;
use crate::protocol::resp::{Protocol, RespReply};

use super::forwarding::Diverted;
use crate::server::metrics::CommandOutcome;

/// A reply in the connection's protocol (for RESP, the version it was negotiated at when
/// the request was handled: HELLO may change it mid-batch).
pub(super) enum Answer {
    Text(Reply),
    Resp(RespReply, Protocol),
    /// The leader's reply, already encoded for this client.
    Relayed(Bytes),
    /// Forwarded to the leader (or waiting to be); becomes `Relayed` before it is written.
    Diverted(Box<Diverted>),
}

impl Answer {
    pub(super) fn encode(&self, dst: &mut BytesMut) {
        match self {
            Answer::Text(reply) => reply.encode_text(dst),
            Answer::Resp(reply, protocol) => reply.encode(dst, *protocol),
            Answer::Relayed(reply) => dst.extend_from_slice(reply),
            // Resolved before the batch is written.
            Answer::Diverted(_) => {}
        }
    }

    pub(super) fn encoded_len_hint(&self) -> usize {
        match self {
            Answer::Text(reply) => reply.encoded_len_hint(),
            Answer::Resp(reply, _) => reply.encoded_len_hint(),
            Answer::Relayed(reply) => reply.len(),
            Answer::Diverted(_) => 0,
        }
    }

    pub(super) fn outcome(&self) -> CommandOutcome {
        match self {
            Answer::Text(Reply::Error(_)) | Answer::Resp(RespReply::Error { .. }, _) => CommandOutcome::Error,
            Answer::Text(Reply::NotFound) | Answer::Resp(RespReply::Nil, _) => CommandOutcome::NotFound,
            Answer::Relayed(reply) => relayed_outcome(reply),
            _ => CommandOutcome::Ok,
        }
    }
}

/// What a relayed reply says, from its first bytes in either protocol.
fn relayed_outcome(reply: &[u8]) -> CommandOutcome {
    match reply {
        [b'-', ..] => CommandOutcome::Error,
        text if text.starts_with(b"ERR ") && text.ends_with(b"\r\n") => CommandOutcome::Error,
        b"_\r\n" | b"$-1\r\n" | b"NOT_FOUND\r\n" => CommandOutcome::NotFound,
        _ => CommandOutcome::Ok,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relayed_replies_are_counted_by_what_they_say() {
        for error in [&b"-ERR leader unavailable\r\n"[..], b"ERR bad id\r\n"] {
            assert_eq!(relayed_outcome(error), CommandOutcome::Error);
        }
        for absent in [&b"_\r\n"[..], b"$-1\r\n", b"NOT_FOUND\r\n"] {
            assert_eq!(relayed_outcome(absent), CommandOutcome::NotFound);
        }
        for ok in [&b"+OK\r\n"[..], b"OK\r\n", b"$2\r\nhi\r\n", b"NOT_FOUNDS\r\n", b":0\r\n"] {
            assert_eq!(relayed_outcome(ok), CommandOutcome::Ok);
        }
    }
}
