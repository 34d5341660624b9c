//! Replies as the connection queues them: in the protocol (and RESP version) the request
//! was handled in.

use bytes::BytesMut;

use crate::protocol::Reply;
use crate::protocol::resp::{Protocol, RespReply};

use crate::server::metrics::CommandOutcome;

/// A reply in the connection's protocol (for RESP, the version it was negotiated at when
/// the request was handled: HELLO may change it mid-batch).
pub(super) enum Answer {
    Text(Reply),
    Resp(RespReply, Protocol),
}

impl Answer {
    pub(super) fn encode(&self, dst: &mut BytesMut) {
        match self {
            Answer::Text(reply) => reply.encode_text(dst),
            Answer::Resp(reply, protocol) => reply.encode(dst, *protocol),
        }
    }

    pub(super) fn encoded_len_hint(&self) -> usize {
        match self {
            Answer::Text(reply) => reply.encoded_len_hint(),
            Answer::Resp(reply, _) => reply.encoded_len_hint(),
        }
    }

    pub(super) fn outcome(&self) -> CommandOutcome {
        match self {
            Answer::Text(Reply::Error(_)) | Answer::Resp(RespReply::Error { .. }, _) => CommandOutcome::Error,
            Answer::Text(Reply::NotFound) | Answer::Resp(RespReply::Nil, _) => CommandOutcome::NotFound,
            _ => CommandOutcome::Ok,
        }
    }
}
