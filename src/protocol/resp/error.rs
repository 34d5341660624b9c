use crate::protocol::ProtocolError;

/// A request that cannot be framed. The connection answers `-ERR Protocol error: <this>`
/// and closes, since the byte stream can no longer be followed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    /// The wording is Redis's, so clients that match on it keep working.
    #[error("expected '{expected}', got '{got}'")]
    UnexpectedByte { expected: char, got: String },
    #[error("invalid multibulk length")]
    InvalidArrayLength,
    #[error("invalid bulk length")]
    InvalidBulkLength,
    #[error("length line too long")]
    LengthLineTooLong,
    #[error("expected CRLF")]
    MissingCrlf,
    #[error("request larger than {max} bytes")]
    RequestTooLarge { max: usize },
}

/// A well-framed request the server will not carry out. Answered with one error reply;
/// the connection stays usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The name as sent (escaped), as Redis quotes it.
    #[error("unknown command '{0}'")]
    UnknownCommand(String),
    #[error("unknown subcommand '{subcommand}' of '{command}'")]
    UnknownSubcommand { command: &'static str, subcommand: String },
    /// Lowercase command name, as Redis writes it.
    #[error("wrong number of arguments for '{0}' command")]
    WrongArity(&'static str),
    #[error("SET option '{0}' is not supported; msglog stores plain SET key value")]
    SetOption(String),
    #[error("syntax error")]
    Syntax,
    #[error("DB index is out of range (msglog has only DB 0)")]
    NoSuchDb,
    #[error("value is not an integer or out of range")]
    NotAnInteger,
    /// `HELLO`: clients that try RESP3 first fall back to RESP2 on this error.
    #[error("unsupported protocol version; msglog speaks RESP2")]
    NoProto,
    /// Bad ID or oversized message: the same rules, and words, as the text protocol.
    #[error(transparent)]
    Invalid(#[from] ProtocolError),
}

impl CommandError {
    /// The error code Redis clients see before the reason.
    pub fn code(&self) -> &'static str {
        match self {
            CommandError::NoProto => "NOPROTO",
            _ => "ERR",
        }
    }
}
