use super::MAX_ID_BYTES;

/// Everything a client can get wrong in a request. Each becomes one `ERR <reason>` line; the
/// connection stays usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("empty command; try HELP")]
    EmptyLine,
    /// The verb, with bytes that are not printable ASCII escaped so the reply stays one line.
    #[error("unknown command '{0}'; try HELP")]
    UnknownCommand(String),
    #[error("wrong number of arguments; usage: {usage}")]
    WrongArguments { usage: &'static str },
    #[error("missing message; usage: SET <id> <message> (`SET <id> ` stores an empty message)")]
    MissingMessage,
    #[error("invalid id: {0}")]
    InvalidId(#[from] IdError),
    #[error("message too large (max {max} bytes)")]
    MessageTooLarge { max: usize },
    #[error("line too long (max {max} bytes)")]
    LineTooLong { max: usize },
}

/// Why an ID was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("empty")]
    Empty,
    #[error("longer than {MAX_ID_BYTES} bytes")]
    TooLong,
    #[error("contains whitespace or a control byte")]
    ForbiddenByte,
}
