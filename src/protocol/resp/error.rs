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
    #[error("invalid cursor")]
    InvalidCursor,
    /// `HELLO` with a version other than 2 or 3.
    #[error("unsupported protocol version")]
    NoProto,
    #[error("Protocol version is not an integer or out of range")]
    ProtocolNotAnInteger,
    #[error("Syntax error in HELLO option '{0}'")]
    HelloOption(String),
    /// A wrong password, or a user other than `default` (msglog has no other users).
    #[error("invalid username-password pair or user is disabled.")]
    WrongPass,
    /// Any command but AUTH, HELLO, RESET and QUIT before a password was given.
    #[error("Authentication required.")]
    NoAuth,
    /// `HELLO` without its AUTH option before a password was given; Redis's words.
    #[error(
        "HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> \
         <pass> option can be used to authenticate the client and select the RESP protocol version at the same time"
    )]
    HelloNoAuth,
    /// Redis's words for `AUTH <password>` on a server without a password.
    #[error(
        "AUTH <password> called without any password configured for the default user. \
         Are you sure your configuration is correct?"
    )]
    AuthWithoutPassword,
    #[error("Client names cannot contain spaces, newlines or special characters.")]
    BadClientName,
    #[error("{0} cannot contain spaces, newlines or special characters.")]
    BadClientAttribute(&'static str),
    #[error("Unrecognized option '{0}'")]
    UnknownClientAttribute(String),
    #[error("MULTI calls can not be nested")]
    NestedMulti,
    #[error("EXEC without MULTI")]
    ExecWithoutMulti,
    #[error("DISCARD without MULTI")]
    DiscardWithoutMulti,
    /// EXEC after a command failed to queue: nothing of the transaction is applied.
    #[error("Transaction discarded because of previous errors.")]
    ExecAbort,
    #[error("WATCH is not supported: msglog transactions are WATCH-free (EXEC applies them atomically)")]
    WatchUnsupported,
    #[error("'{0}' is not allowed inside a transaction in msglog")]
    NotInTransaction(String),
    #[error("transaction too large: at most {max_commands} commands and {max_bytes} bytes may be queued")]
    TransactionTooLarge { max_commands: usize, max_bytes: usize },
    /// Bad ID or oversized message: the same rules, and words, as the text protocol.
    #[error(transparent)]
    Invalid(#[from] ProtocolError),
}

impl CommandError {
    /// The error code Redis clients see before the reason.
    pub fn code(&self) -> &'static str {
        match self {
            CommandError::NoProto => "NOPROTO",
            CommandError::WrongPass => "WRONGPASS",
            CommandError::NoAuth | CommandError::HelloNoAuth => "NOAUTH",
            CommandError::ExecAbort => "EXECABORT",
            _ => "ERR",
        }
    }
}
