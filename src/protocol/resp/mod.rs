//! RESP, the Redis protocol: what a connection whose first byte is `*` speaks. RESP2 by
//! default, RESP3 once the client says `HELLO 3`.
//!
//! Three layers, as for the text protocol: [`RespParser`] frames requests (arrays of bulk
//! strings) out of the read buffer without copying them; [`RespCommand::parse`] turns a
//! request's arguments into a typed command, checking IDs and messages with the same
//! [`validate_id`](super::validate_id) and [`check_message`](super::check_message) as the
//! text protocol; [`RespReply`] encodes answers. Single-key commands map onto the
//! framing-neutral [`Command`](super::Command) and their [`Reply`](super::Reply) converts
//! into a [`RespReply`], so both protocols share one executor. [`SessionCommand`]s
//! (HELLO, CLIENT, MULTI/EXEC, RESET) concern the connection itself, not the data.

mod command;
mod error;
mod frame;
#[cfg(test)]
mod proptests;
mod reply;
mod session;

pub use command::{Keys, Pairs, RespCommand, Scan};
pub use error::{CommandError, RespError};
pub use frame::{Args, MAX_ARRAY_ELEMENTS, Request, RespLimits, RespParser};
pub use reply::{Protocol, RespReply};
pub use session::{ClientAttribute, Hello, SessionCommand, is_valid_client_name};

/// Whether a connection whose first byte is `first` speaks RESP (every Redis client opens
/// with an array, `*`) rather than the text protocol; decided once, for its whole life.
pub fn opens_resp(first: u8) -> bool {
    first == b'*'
}
