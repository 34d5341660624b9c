//! Requests about the connection itself rather than the data: the handshake (`HELLO`,
//! `AUTH`), naming (`CLIENT ...`), transactions (`MULTI`/`EXEC`/`DISCARD`) and `RESET`.
//! Parsed here, carried out by the server's per-connection session. Error words are
//! Redis's, since client libraries match on some of them.

use super::{Args, CommandError, Protocol};
use crate::protocol::printable;

/// A request handled by the connection's session, never queued in a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionCommand<'a> {
    Hello(Hello<'a>),
    /// `AUTH [user] password`: `default` is the only user. Without a configured password
    /// it succeeds with any password (as on a Redis without `requirepass`).
    Auth {
        user: Option<&'a [u8]>,
        password: &'a [u8],
    },
    Multi,
    Exec,
    Discard,
    Watch,
    /// Nothing is ever watched, so there is nothing to forget: `+OK`.
    Unwatch,
    /// Back to a fresh connection: RESP2, no name, no transaction.
    Reset,
    ClientId,
    ClientInfo,
    ClientList,
    ClientSetName(&'a [u8]),
    ClientGetName,
    ClientSetInfo(ClientAttribute, &'a [u8]),
}

/// `HELLO [protover [AUTH user pass] [SETNAME name]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Hello<'a> {
    /// `None`: keep the current protocol (`HELLO` alone just describes the server).
    pub protocol: Option<Protocol>,
    pub auth: Option<(&'a [u8], &'a [u8])>,
    pub name: Option<&'a [u8]>,
}

/// What `CLIENT SETINFO` may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAttribute {
    LibName,
    LibVersion,
}

impl<'a> SessionCommand<'a> {
    /// The session command `args` hold; `None` if it is a data command (or empty).
    pub fn parse(args: Args<'a>) -> Result<Option<SessionCommand<'a>>, CommandError> {
        let Some(name) = args.get(0) else { return Ok(None) };
        let rest = args.skip(1);
        let is = |expected: &str| name.eq_ignore_ascii_case(expected.as_bytes());
        let no_args = |command: &'static str, ok: SessionCommand<'a>| match rest.is_empty() {
            true => Ok(Some(ok)),
            false => Err(CommandError::WrongArity(command)),
        };
        if is("HELLO") {
            parse_hello(rest).map(|hello| Some(SessionCommand::Hello(hello)))
        } else if is("AUTH") {
            match (rest.len(), rest.get(0), rest.get(1)) {
                (1, Some(password), _) => Ok(Some(SessionCommand::Auth { user: None, password })),
                (2, Some(user), Some(password)) => Ok(Some(SessionCommand::Auth { user: Some(user), password })),
                _ => Err(CommandError::WrongArity("auth")),
            }
        } else if is("MULTI") {
            no_args("multi", SessionCommand::Multi)
        } else if is("EXEC") {
            no_args("exec", SessionCommand::Exec)
        } else if is("DISCARD") {
            no_args("discard", SessionCommand::Discard)
        } else if is("WATCH") {
            match rest.is_empty() {
                true => Err(CommandError::WrongArity("watch")),
                false => Ok(Some(SessionCommand::Watch)),
            }
        } else if is("UNWATCH") {
            no_args("unwatch", SessionCommand::Unwatch)
        } else if is("RESET") {
            no_args("reset", SessionCommand::Reset)
        } else if is("CLIENT") {
            parse_client(rest).map(Some)
        } else {
            Ok(None)
        }
    }
}

impl SessionCommand<'_> {
    /// The command's name, lowercase, as Redis names it in errors.
    pub fn name(&self) -> &'static str {
        match self {
            SessionCommand::Hello(_) => "hello",
            SessionCommand::Auth { .. } => "auth",
            SessionCommand::Multi => "multi",
            SessionCommand::Exec => "exec",
            SessionCommand::Discard => "discard",
            SessionCommand::Watch => "watch",
            SessionCommand::Unwatch => "unwatch",
            SessionCommand::Reset => "reset",
            SessionCommand::ClientId => "client|id",
            SessionCommand::ClientInfo => "client|info",
            SessionCommand::ClientList => "client|list",
            SessionCommand::ClientSetName(_) => "client|setname",
            SessionCommand::ClientGetName => "client|getname",
            SessionCommand::ClientSetInfo(..) => "client|setinfo",
        }
    }
}

fn parse_hello(rest: Args<'_>) -> Result<Hello<'_>, CommandError> {
    let mut hello = Hello::default();
    let mut options = rest;
    if let Some(version) = rest.get(0) {
        let version: i64 =
            std::str::from_utf8(version).ok().and_then(|v| v.parse().ok()).ok_or(CommandError::ProtocolNotAnInteger)?;
        hello.protocol = Some(match version {
            2 => Protocol::Resp2,
            3 => Protocol::Resp3,
            _ => return Err(CommandError::NoProto),
        });
        options = rest.skip(1);
    }
    let mut at = 0;
    while let Some(option) = options.get(at) {
        let more = options.len() - at - 1;
        if option.eq_ignore_ascii_case(b"AUTH") && more >= 2 {
            hello.auth = options.get(at + 1).zip(options.get(at + 2));
            at += 3;
        } else if option.eq_ignore_ascii_case(b"SETNAME") && more >= 1 {
            hello.name = options.get(at + 1);
            at += 2;
        } else {
            return Err(CommandError::HelloOption(printable(option)));
        }
    }
    Ok(hello)
}

fn parse_client(rest: Args<'_>) -> Result<SessionCommand<'_>, CommandError> {
    let Some(sub) = rest.get(0) else { return Err(CommandError::WrongArity("client")) };
    let is = |expected: &str| sub.eq_ignore_ascii_case(expected.as_bytes());
    let (arity, command) = if is("ID") {
        (1, SessionCommand::ClientId)
    } else if is("INFO") {
        (1, SessionCommand::ClientInfo)
    } else if is("LIST") {
        (1, SessionCommand::ClientList)
    } else if is("GETNAME") {
        (1, SessionCommand::ClientGetName)
    } else if is("SETNAME") {
        (2, SessionCommand::ClientSetName(rest.get(1).unwrap_or_default()))
    } else if is("SETINFO") {
        let attribute = rest.get(1).unwrap_or_default();
        let attribute = if attribute.eq_ignore_ascii_case(b"LIB-NAME") {
            ClientAttribute::LibName
        } else if attribute.eq_ignore_ascii_case(b"LIB-VER") {
            ClientAttribute::LibVersion
        } else if rest.len() == 3 {
            return Err(CommandError::UnknownClientAttribute(printable(attribute)));
        } else {
            return Err(CommandError::WrongArity("client|setinfo"));
        };
        (3, SessionCommand::ClientSetInfo(attribute, rest.get(2).unwrap_or_default()))
    } else {
        return Err(CommandError::UnknownSubcommand { command: "CLIENT", subcommand: printable(sub) });
    };
    match rest.len() == arity {
        true => Ok(command),
        false => Err(CommandError::WrongArity("client")),
    }
}

/// Redis's rule for names and library attributes: printable ASCII, no spaces.
pub fn is_valid_client_name(name: &[u8]) -> bool {
    name.iter().all(|&b| (b'!'..=b'~').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::resp::{RespLimits, RespParser};

    fn parse(args: &[&str]) -> Result<Option<SessionCommand<'static>>, CommandError> {
        let mut wire = format!("*{}\r\n", args.len());
        for arg in args {
            wire.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        let wire: &'static [u8] = Box::leak(wire.into_bytes().into_boxed_slice());
        let parser: &'static mut RespParser = Box::leak(Box::new(RespParser::new(RespLimits::for_max_message(64))));
        SessionCommand::parse(parser.next_request(wire).unwrap().unwrap().args)
    }

    #[test]
    fn hello_takes_a_version_auth_and_setname_as_redis_does() {
        let hello = |h| Ok(Some(SessionCommand::Hello(h)));
        assert_eq!(parse(&["HELLO"]), hello(Hello::default()));
        assert_eq!(parse(&["hello", "3"]), hello(Hello { protocol: Some(Protocol::Resp3), ..Hello::default() }));
        assert_eq!(
            parse(&["HELLO", "2", "AUTH", "default", "pw", "SETNAME", "me"]),
            hello(Hello { protocol: Some(Protocol::Resp2), auth: Some((b"default", b"pw")), name: Some(b"me") })
        );
        assert_eq!(parse(&["HELLO", "4"]), Err(CommandError::NoProto));
        assert_eq!(parse(&["HELLO", "three"]), Err(CommandError::ProtocolNotAnInteger));
        assert_eq!(parse(&["HELLO", "3", "FOO"]), Err(CommandError::HelloOption("FOO".into())));
        assert_eq!(parse(&["HELLO", "3", "AUTH", "default"]), Err(CommandError::HelloOption("AUTH".into())));
    }

    #[test]
    fn transaction_and_client_commands_check_their_arity() {
        assert_eq!(parse(&["multi"]), Ok(Some(SessionCommand::Multi)));
        assert_eq!(parse(&["MULTI", "x"]), Err(CommandError::WrongArity("multi")));
        assert_eq!(parse(&["WATCH"]), Err(CommandError::WrongArity("watch")));
        assert_eq!(parse(&["CLIENT", "SETNAME", "n"]), Ok(Some(SessionCommand::ClientSetName(b"n"))));
        assert_eq!(
            parse(&["CLIENT", "SETINFO", "LIB-VER", "1.0"]),
            Ok(Some(SessionCommand::ClientSetInfo(ClientAttribute::LibVersion, b"1.0")))
        );
        assert_eq!(parse(&["CLIENT", "SETINFO", "x", "1"]), Err(CommandError::UnknownClientAttribute("x".into())));
        assert_eq!(
            parse(&["CLIENT", "KILL", "x"]),
            Err(CommandError::UnknownSubcommand { command: "CLIENT", subcommand: "KILL".into() })
        );
        assert_eq!(parse(&["CLIENT", "SETNAME"]), Err(CommandError::WrongArity("client")));
        assert_eq!(parse(&["GET", "k"]), Ok(None));
    }

    #[test]
    fn client_names_are_printable_ascii_without_spaces() {
        assert!(is_valid_client_name(b"redis-py"));
        assert!(is_valid_client_name(b""));
        assert!(!is_valid_client_name(b"my name"));
        assert!(!is_valid_client_name(b"a\nb"));
    }
}
