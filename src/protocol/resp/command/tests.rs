use super::*;
use crate::protocol::IdError;
use crate::protocol::resp::{RespLimits, RespParser};

/// What a parsed command comes to, in owned values the tests can compare.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Set(Vec<u8>, Vec<u8>),
    Get(Vec<u8>),
    Del(Vec<Vec<u8>>),
    Exists(Vec<Vec<u8>>),
    MGet(Vec<Vec<u8>>),
    MSet(Vec<(Vec<u8>, Vec<u8>)>),
    Quit,
    DbSize,
    Scan { cursor: u64, pattern: Option<Vec<u8>>, count: usize, other_type: bool },
    Keys(Vec<u8>),
    Info(Vec<Vec<u8>>),
    ConfigGet(Vec<Vec<u8>>),
    Immediate(RespReply),
    Nothing,
}

fn owned<'a>(items: impl Iterator<Item = &'a [u8]>) -> Vec<Vec<u8>> {
    items.map(<[u8]>::to_vec).collect()
}

fn parse(args: &[&[u8]]) -> Result<Parsed, CommandError> {
    let mut wire = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        wire.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        wire.extend_from_slice(arg);
        wire.extend_from_slice(b"\r\n");
    }
    let mut parser = RespParser::new(RespLimits::for_max_message(8));
    let request = parser.next_request(&wire).expect("well framed").expect("complete");
    assert_eq!(request.len, wire.len());
    Ok(match RespCommand::parse(request.args, 8)? {
        None => Parsed::Nothing,
        Some(RespCommand::Single(Command::Set { id, message })) => Parsed::Set(id.to_vec(), message.to_vec()),
        Some(RespCommand::Single(Command::Get { id })) => Parsed::Get(id.to_vec()),
        Some(RespCommand::Single(other)) => panic!("unexpected {other:?}"),
        Some(RespCommand::Del(keys)) => Parsed::Del(owned(keys.iter())),
        Some(RespCommand::Exists(keys)) => Parsed::Exists(owned(keys.iter())),
        Some(RespCommand::MGet(keys)) => Parsed::MGet(owned(keys.iter())),
        Some(RespCommand::MSet(pairs)) => Parsed::MSet(pairs.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()),
        Some(RespCommand::Quit) => Parsed::Quit,
        Some(RespCommand::DbSize) => Parsed::DbSize,
        Some(RespCommand::Scan(Scan { cursor, pattern, count, other_type })) => {
            Parsed::Scan { cursor, pattern: pattern.map(<[u8]>::to_vec), count, other_type }
        }
        Some(RespCommand::Keys(pattern)) => Parsed::Keys(pattern.to_vec()),
        Some(RespCommand::Info(sections)) => Parsed::Info(owned(sections.iter())),
        Some(RespCommand::ConfigGet(patterns)) => Parsed::ConfigGet(owned(patterns.iter())),
        Some(RespCommand::Immediate(reply)) => Parsed::Immediate(reply),
    })
}

fn list(items: &[&[u8]]) -> Vec<Vec<u8>> {
    owned(items.iter().copied())
}

#[test]
fn names_are_case_insensitive_and_values_binary() {
    assert_eq!(parse(&[b"sEt", b"k", b"\x00\r\n"]), Ok(Parsed::Set(b"k".to_vec(), b"\x00\r\n".to_vec())));
    assert_eq!(parse(&[b"get", b"k"]), Ok(Parsed::Get(b"k".to_vec())));
    assert_eq!(parse(&[b"Del", b"a", b"b"]), Ok(Parsed::Del(list(&[b"a", b"b"]))));
    assert_eq!(parse(&[b"exists", b"a", b"a"]), Ok(Parsed::Exists(list(&[b"a", b"a"]))));
    assert_eq!(parse(&[b"mget", b"a"]), Ok(Parsed::MGet(list(&[b"a"]))));
    assert_eq!(
        parse(&[b"mset", b"a", b"1", b"b", b""]),
        Ok(Parsed::MSet(vec![(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), Vec::new())]))
    );
    assert_eq!(parse(&[b"quit"]), Ok(Parsed::Quit));
    assert_eq!(parse(&[b"dbsize"]), Ok(Parsed::DbSize));
    assert_eq!(parse(&[b"info"]), Ok(Parsed::Info(vec![])));
    assert_eq!(parse(&[b"info", b"stats"]), Ok(Parsed::Info(list(&[b"stats"]))));
    assert_eq!(parse(&[b"config", b"get", b"save"]), Ok(Parsed::ConfigGet(list(&[b"save"]))));
    assert_eq!(parse(&[]), Ok(Parsed::Nothing));
}

#[test]
fn stateless_commands_are_answered_at_parse_time() {
    let immediate = |reply| Ok(Parsed::Immediate(reply));
    assert_eq!(parse(&[b"PING"]), immediate(RespReply::Simple("PONG")));
    assert_eq!(parse(&[b"PING", b"hi"]), immediate(RespReply::Bulk(b"hi".to_vec())));
    assert_eq!(parse(&[b"ECHO", b"a b"]), immediate(RespReply::Bulk(b"a b".to_vec())));
    assert_eq!(parse(&[b"SELECT", b"0"]), immediate(RespReply::Simple("OK")));
    assert_eq!(parse(&[b"COMMAND"]), immediate(RespReply::Array(vec![])));
    assert_eq!(parse(&[b"COMMAND", b"DOCS", b"get"]), immediate(RespReply::Array(vec![])));
    assert_eq!(parse(&[b"command", b"count"]), immediate(RespReply::Integer(0)));
}

#[test]
fn wrong_arity_is_named_after_the_command() {
    for (args, name) in [
        (&[&b"SET"[..], b"k"][..], "set"),
        (&[b"GET"], "get"),
        (&[b"GET", b"a", b"b"], "get"),
        (&[b"DEL"], "del"),
        (&[b"EXISTS"], "exists"),
        (&[b"MGET"], "mget"),
        (&[b"MSET"], "mset"),
        (&[b"MSET", b"a", b"1", b"b"], "mset"),
        (&[b"PING", b"a", b"b"], "ping"),
        (&[b"ECHO"], "echo"),
        (&[b"DBSIZE", b"x"], "dbsize"),
        (&[b"SELECT"], "select"),
        (&[b"CONFIG"], "config"),
        (&[b"CONFIG", b"GET"], "config|get"),
    ] {
        assert_eq!(parse(args), Err(CommandError::WrongArity(name)), "{args:?}");
    }
}

#[test]
fn set_options_are_refused_by_name() {
    assert_eq!(parse(&[b"SET", b"k", b"v", b"ex", b"10"]), Err(CommandError::SetOption("EX".into())));
    assert_eq!(parse(&[b"SET", b"k", b"v", b"NX"]), Err(CommandError::SetOption("NX".into())));
    assert_eq!(parse(&[b"SET", b"k", b"v", b"KEEPTTL"]), Err(CommandError::SetOption("KEEPTTL".into())));
    assert_eq!(parse(&[b"SET", b"k", b"v", b"whatever"]), Err(CommandError::Syntax));
}

#[test]
fn ids_and_messages_follow_the_text_rules_for_every_key() {
    let invalid = |err: IdError| Err(CommandError::Invalid(ProtocolError::InvalidId(err)));
    assert_eq!(parse(&[b"SET", b"", b"v"]), invalid(IdError::Empty));
    assert_eq!(parse(&[b"GET", b"a b"]), invalid(IdError::ForbiddenByte));
    assert_eq!(parse(&[b"DEL", b"ok", b"tab\t"]), invalid(IdError::ForbiddenByte));
    assert_eq!(parse(&[b"MGET", b"ok", &[b'i'; 1025]]), invalid(IdError::TooLong));
    assert_eq!(parse(&[b"MSET", b"a", b"1", b"", b"2"]), invalid(IdError::Empty));
    let too_large = Err(CommandError::Invalid(ProtocolError::MessageTooLarge { max: 8 }));
    assert_eq!(parse(&[b"SET", b"k", b"123456789"]), too_large);
    assert_eq!(parse(&[b"MSET", b"a", b"1", b"b", b"123456789"]), too_large);
    assert!(parse(&[b"SET", b"k", b"12345678"]).is_ok());
}

#[test]
fn unknown_commands_subcommands_and_databases_are_errors() {
    assert_eq!(parse(&[b"FLUSHALL"]), Err(CommandError::UnknownCommand("FLUSHALL".into())));
    assert_eq!(parse(&[b"\x00bad\r\n"]), Err(CommandError::UnknownCommand("\\x00bad\\r\\n".into())));
    assert_eq!(parse(&[b"SELECT", b"1"]), Err(CommandError::NoSuchDb));
    assert_eq!(parse(&[b"SELECT", b"x"]), Err(CommandError::NotAnInteger));
    assert_eq!(
        parse(&[b"CONFIG", b"SET", b"a", b"b"]),
        Err(CommandError::UnknownSubcommand { command: "CONFIG", subcommand: "SET".into() })
    );
    assert_eq!(
        parse(&[b"COMMAND", b"GETKEYS"]),
        Err(CommandError::UnknownSubcommand { command: "COMMAND", subcommand: "GETKEYS".into() })
    );
}

#[test]
fn scan_takes_match_count_and_type_in_any_order_and_keys_one_pattern() {
    let scan = |cursor, pattern: Option<&[u8]>, count, other_type| {
        Ok(Parsed::Scan { cursor, pattern: pattern.map(<[u8]>::to_vec), count, other_type })
    };
    assert_eq!(parse(&[b"SCAN", b"0"]), scan(0, None, 10, false));
    assert_eq!(parse(&[b"scan", b"42", b"count", b"5", b"match", b"u:*"]), scan(42, Some(b"u:*"), 5, false));
    assert_eq!(parse(&[b"SCAN", b"7", b"TYPE", b"STRING"]), scan(7, None, 10, false));
    assert_eq!(parse(&[b"SCAN", b"7", b"TYPE", b"zset"]), scan(7, None, 10, true));
    assert_eq!(parse(&[b"SCAN", b"-1"]), Err(CommandError::InvalidCursor));
    assert_eq!(parse(&[b"SCAN", b"0", b"COUNT", b"x"]), Err(CommandError::NotAnInteger));
    assert_eq!(parse(&[b"SCAN", b"0", b"COUNT", b"-3"]), Err(CommandError::Syntax));
    assert_eq!(parse(&[b"SCAN"]), Err(CommandError::WrongArity("scan")));
    assert_eq!(parse(&[b"KEYS", b"a*"]), Ok(Parsed::Keys(b"a*".to_vec())));
    assert_eq!(parse(&[b"KEYS", b"a", b"b"]), Err(CommandError::WrongArity("keys")));
}
