//! Requests as typed values, borrowing their ID and message from the line they came in.

use super::{IdError, MAX_ID_BYTES, ProtocolError};

/// One client request. Framing-neutral: the text protocol builds it with
/// [`Command::parse_line`]; another framing builds the variants itself after checking IDs
/// with [`validate_id`] and messages with [`check_message`]. `Exists` (does the ID hold a
/// message?) is RESP's `EXISTS`; the text protocol has no verb for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    Set { id: &'a [u8], message: &'a [u8] },
    Get { id: &'a [u8] },
    Del { id: &'a [u8] },
    Exists { id: &'a [u8] },
    Ping,
    Stats,
    Help,
    Quit,
}

const SET_USAGE: &str = "SET <id> <message>";
const GET_USAGE: &str = "GET <id>";
const DEL_USAGE: &str = "DEL <id>";

impl<'a> Command<'a> {
    /// Parses one text-protocol line (line ending already removed).
    ///
    /// Fields are separated by exactly one space: the verb ends at the first space, the ID
    /// at the next one, and a SET's message is every byte after that, kept verbatim.
    pub fn parse_line(line: &'a [u8], max_message_bytes: usize) -> Result<Command<'a>, ProtocolError> {
        if line.is_empty() {
            return Err(ProtocolError::EmptyLine);
        }
        let (verb, args) = split_at_space(line);
        let command = if verb.eq_ignore_ascii_case(b"SET") {
            let args = args.ok_or(ProtocolError::WrongArguments { usage: SET_USAGE })?;
            let (id, message) = split_at_space(args);
            validate_id(id)?;
            let message = message.ok_or(ProtocolError::MissingMessage)?;
            check_message(message, max_message_bytes)?;
            Command::Set { id, message }
        } else if verb.eq_ignore_ascii_case(b"GET") {
            Command::Get { id: single_id(args, GET_USAGE)? }
        } else if verb.eq_ignore_ascii_case(b"DEL") {
            Command::Del { id: single_id(args, DEL_USAGE)? }
        } else if verb.eq_ignore_ascii_case(b"PING") {
            no_args(args, "PING", Command::Ping)?
        } else if verb.eq_ignore_ascii_case(b"STATS") {
            no_args(args, "STATS", Command::Stats)?
        } else if verb.eq_ignore_ascii_case(b"HELP") {
            no_args(args, "HELP", Command::Help)?
        } else if verb.eq_ignore_ascii_case(b"QUIT") {
            no_args(args, "QUIT", Command::Quit)?
        } else {
            return Err(ProtocolError::UnknownCommand(printable(verb)));
        };
        Ok(command)
    }

    /// Whether the command appends to the log (and so must be durable before its reply).
    pub fn is_write(&self) -> bool {
        matches!(self, Command::Set { .. } | Command::Del { .. })
    }
}

/// The password of a text-protocol `AUTH <password>` line; `None` if the line is not an
/// AUTH. Kept out of [`Command`]: authenticating concerns the connection, never the log.
/// The password is every byte after the first space, verbatim, as a SET's message is.
pub fn parse_auth(line: &[u8]) -> Option<Result<&[u8], ProtocolError>> {
    let (verb, password) = split_at_space(line);
    if !verb.eq_ignore_ascii_case(b"AUTH") {
        return None;
    }
    Some(password.filter(|p| !p.is_empty()).ok_or(ProtocolError::WrongArguments { usage: "AUTH <password>" }))
}

/// Checks the ID rules: 1..=1024 bytes, no ASCII whitespace and no control bytes. Bytes
/// outside ASCII are allowed, so UTF-8 IDs work.
pub fn validate_id(id: &[u8]) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > MAX_ID_BYTES {
        return Err(IdError::TooLong);
    }
    if id.iter().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
        return Err(IdError::ForbiddenByte);
    }
    Ok(())
}

/// Checks a message against the configured size limit.
pub fn check_message(message: &[u8], max_message_bytes: usize) -> Result<(), ProtocolError> {
    if message.len() > max_message_bytes {
        return Err(ProtocolError::MessageTooLarge { max: max_message_bytes });
    }
    Ok(())
}

/// Splits at the first space: the bytes before it, and the bytes after it if there is one.
fn split_at_space(bytes: &[u8]) -> (&[u8], Option<&[u8]>) {
    match memchr::memchr(b' ', bytes) {
        Some(at) => (&bytes[..at], Some(&bytes[at + 1..])),
        None => (bytes, None),
    }
}

fn single_id<'a>(args: Option<&'a [u8]>, usage: &'static str) -> Result<&'a [u8], ProtocolError> {
    let id = args.ok_or(ProtocolError::WrongArguments { usage })?;
    if id.contains(&b' ') {
        return Err(ProtocolError::WrongArguments { usage });
    }
    validate_id(id)?;
    Ok(id)
}

fn no_args<'a>(args: Option<&[u8]>, usage: &'static str, command: Command<'a>) -> Result<Command<'a>, ProtocolError> {
    match args {
        None => Ok(command),
        Some(_) => Err(ProtocolError::WrongArguments { usage }),
    }
}

/// A short, single-line, printable rendering of client bytes for an error reply.
pub(crate) fn printable(bytes: &[u8]) -> String {
    const SHOWN: usize = 32;
    let mut shown = bytes[..bytes.len().min(SHOWN)].escape_ascii().to_string();
    if bytes.len() > SHOWN {
        shown.push_str("...");
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &[u8]) -> Result<Command<'_>, ProtocolError> {
        Command::parse_line(line, 16)
    }

    #[test]
    fn set_message_is_everything_after_the_space_following_the_id() {
        assert_eq!(parse(b"SET a  two  spaces  "), Ok(Command::Set { id: b"a", message: b" two  spaces  " }));
        assert_eq!(parse(b"set a "), Ok(Command::Set { id: b"a", message: b"" }));
    }

    #[test]
    fn set_without_message_or_id_is_an_error() {
        assert_eq!(parse(b"SET a"), Err(ProtocolError::MissingMessage));
        assert_eq!(parse(b"SET"), Err(ProtocolError::WrongArguments { usage: SET_USAGE }));
        assert_eq!(parse(b"SET "), Err(IdError::Empty.into()));
        assert_eq!(parse(b"SET  x"), Err(IdError::Empty.into()));
    }

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(parse(b"pInG"), Ok(Command::Ping));
        assert_eq!(parse(b"gEt k"), Ok(Command::Get { id: b"k" }));
        assert_eq!(parse(b"Del k"), Ok(Command::Del { id: b"k" }));
        assert_eq!(parse(b"stats"), Ok(Command::Stats));
        assert_eq!(parse(b"help"), Ok(Command::Help));
        assert_eq!(parse(b"quit"), Ok(Command::Quit));
    }

    #[test]
    fn ids_are_checked() {
        let longest = vec![b'i'; MAX_ID_BYTES];
        assert_eq!(parse(&[b"GET ", &longest[..]].concat()).map(|_| ()), Ok(()));
        let too_long = [b"GET ", &longest[..], b"i"].concat();
        assert_eq!(parse(&too_long), Err(IdError::TooLong.into()));
        assert_eq!(parse(b"GET a\tb"), Err(IdError::ForbiddenByte.into()));
        assert_eq!(parse(b"GET a\x7f"), Err(IdError::ForbiddenByte.into()));
        assert_eq!(parse(b"GET \xc3\xa9t\xc3\xa9"), Ok(Command::Get { id: "été".as_bytes() }));
        assert_eq!(parse(b"GET "), Err(IdError::Empty.into()));
        assert_eq!(parse(b"GET a b"), Err(ProtocolError::WrongArguments { usage: GET_USAGE }));
    }

    #[test]
    fn oversized_message_is_refused() {
        assert_eq!(parse(b"SET a 0123456789abcdefX"), Err(ProtocolError::MessageTooLarge { max: 16 }));
        assert!(parse(b"SET a 0123456789abcdef").is_ok());
    }

    #[test]
    fn auth_takes_the_rest_of_the_line_as_the_password() {
        assert_eq!(parse_auth(b"AUTH two words "), Some(Ok(&b"two words "[..])));
        assert_eq!(parse_auth(b"auth pw"), Some(Ok(&b"pw"[..])));
        assert_eq!(parse_auth(b"AUTH"), Some(Err(ProtocolError::WrongArguments { usage: "AUTH <password>" })));
        assert_eq!(parse_auth(b"AUTH "), Some(Err(ProtocolError::WrongArguments { usage: "AUTH <password>" })));
        assert_eq!(parse_auth(b"AUTHX pw"), None);
        assert_eq!(parse_auth(b"GET AUTH"), None);
    }

    #[test]
    fn unknown_verbs_and_stray_arguments_are_errors() {
        assert_eq!(parse(b"FLY\r\x00 me"), Err(ProtocolError::UnknownCommand("FLY\\r\\x00".into())));
        assert_eq!(parse(b"PING extra"), Err(ProtocolError::WrongArguments { usage: "PING" }));
        assert_eq!(parse(b""), Err(ProtocolError::EmptyLine));
    }
}
