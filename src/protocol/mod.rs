//! The client protocols of the README ("The protocol", "Redis protocol"): bytes → frames → [`Command`]s, and [`Reply`]s → bytes.
//!
//! Pure: no I/O and no storage. Framing ([`LineFramer`] for the text protocol) is kept
//! apart from commands so the second framing, RESP2 in [`resp`] (a connection whose first
//! byte is `*`), produces the same [`Command`] values and answers with the same [`Reply`]
//! values where they fit.

mod command;
mod error;
pub mod glob;
mod line;
#[cfg(test)]
mod proptests;
mod reply;
pub mod resp;

pub(crate) use command::printable;
pub use command::{Command, check_message, parse_auth, validate_id};
pub use error::{IdError, ProtocolError};
pub use line::{Frame, LineFramer};
pub use reply::Reply;

/// Longest ID a client may use, in bytes.
pub const MAX_ID_BYTES: usize = 1024;

/// Room in a line for the verb and the spaces around the ID (`SET`, two spaces, `\r`).
pub const LINE_OVERHEAD_BYTES: usize = 64;

/// Longest text-protocol line the server accepts for a given message limit: a SET with the
/// longest ID and a maximal message must fit, so a slightly larger one is told
/// "message too large" rather than "line too long".
pub fn max_line_bytes(max_message_bytes: usize) -> usize {
    max_message_bytes.saturating_add(MAX_ID_BYTES).saturating_add(LINE_OVERHEAD_BYTES)
}

/// The one-line answer to `HELP`.
pub const HELP: &str =
    "commands: SET <id> <message> | GET <id> | DEL <id> | PING | STATS | HELP | QUIT | AUTH <password>";
