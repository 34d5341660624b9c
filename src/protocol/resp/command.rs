//! RESP requests as typed commands. Names are case-insensitive; IDs and messages follow
//! the text protocol's rules, checked for every key before anything is executed.

use super::{Args, CommandError, RespReply};
use crate::protocol::{Command, ProtocolError, check_message, printable, validate_id};

/// One RESP request the server will carry out.
#[derive(Debug, Clone)]
pub enum RespCommand<'a> {
    /// `SET` and `GET`: exactly the framing-neutral command, its reply converted.
    Single(Command<'a>),
    /// Integer reply: how many of the keys held a message (and now hold a tombstone).
    Del(Keys<'a>),
    /// Integer reply: how many of the keys hold a message (a key named twice counts twice).
    Exists(Keys<'a>),
    MGet(Keys<'a>),
    /// Every pair is appended and durable before the one `+OK`.
    MSet(Pairs<'a>),
    /// `+OK`, then the connection closes.
    Quit,
    DbSize,
    /// `SCAN cursor [MATCH pattern] [COUNT n] [TYPE type]`.
    Scan(Scan<'a>),
    /// `KEYS pattern`: every live ID that matches, in one reply.
    Keys(&'a [u8]),
    /// The sections asked for; none means the default set.
    Info(Args<'a>),
    /// Glob patterns over the few settings msglog reports.
    ConfigGet(Args<'a>),
    /// Needs nothing from the server: PING, ECHO, SELECT 0, COMMAND ...
    Immediate(RespReply),
}

/// Keys that passed [`validate_id`].
#[derive(Debug, Clone, Copy)]
pub struct Keys<'a>(Args<'a>);

impl<'a> Keys<'a> {
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &'a [u8]> + 'a {
        self.0.iter()
    }
}

/// One step of a `SCAN`. The cursor is a place in the log (README, "Redis protocol").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan<'a> {
    pub cursor: u64,
    pub pattern: Option<&'a [u8]>,
    /// Redis's COUNT: about how many IDs one step should look at.
    pub count: usize,
    /// `TYPE` named a type other than `string`, which no msglog ID holds.
    pub other_type: bool,
}

/// `key value` pairs whose keys passed [`validate_id`] and values [`check_message`].
#[derive(Debug, Clone, Copy)]
pub struct Pairs<'a>(Args<'a>);

impl<'a> Pairs<'a> {
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let args = self.0;
        (0..args.len() / 2).filter_map(move |i| Some((args.get(2 * i)?, args.get(2 * i + 1)?)))
    }
}

/// What `SET` options look like; each is refused by name, anything else is a syntax error.
const SET_OPTIONS: [&str; 8] = ["EX", "PX", "EXAT", "PXAT", "NX", "XX", "KEEPTTL", "GET"];

impl<'a> RespCommand<'a> {
    /// The command for a framed request; `None` for an empty one (`*0`), which gets no reply.
    pub fn parse(args: Args<'a>, max_message_bytes: usize) -> Result<Option<RespCommand<'a>>, CommandError> {
        let Some(name) = args.get(0) else { return Ok(None) };
        let rest = args.skip(1);
        let is = |expected: &str| name.eq_ignore_ascii_case(expected.as_bytes());
        let command = if is("SET") {
            parse_set(rest, max_message_bytes)?
        } else if is("GET") {
            let id = exactly_one(rest, "get")?;
            valid_id(id)?;
            RespCommand::Single(Command::Get { id })
        } else if is("DEL") {
            RespCommand::Del(keys(rest, "del")?)
        } else if is("EXISTS") {
            RespCommand::Exists(keys(rest, "exists")?)
        } else if is("MGET") {
            RespCommand::MGet(keys(rest, "mget")?)
        } else if is("MSET") {
            RespCommand::MSet(pairs(rest, max_message_bytes)?)
        } else if is("PING") {
            RespCommand::Immediate(match rest.len() {
                0 => RespReply::Simple("PONG"),
                1 => bulk(rest.get(0)),
                _ => return Err(CommandError::WrongArity("ping")),
            })
        } else if is("ECHO") {
            RespCommand::Immediate(bulk(Some(exactly_one(rest, "echo")?)))
        } else if is("QUIT") {
            RespCommand::Quit
        } else if is("DBSIZE") {
            no_args(rest, "dbsize", RespCommand::DbSize)?
        } else if is("SCAN") {
            parse_scan(rest)?
        } else if is("KEYS") {
            RespCommand::Keys(exactly_one(rest, "keys")?)
        } else if is("INFO") {
            RespCommand::Info(rest)
        } else if is("SELECT") {
            parse_select(exactly_one(rest, "select")?)?
        } else if is("COMMAND") {
            parse_command(rest)?
        } else if is("CONFIG") {
            parse_config(rest)?
        } else {
            return Err(CommandError::UnknownCommand(printable(name)));
        };
        Ok(Some(command))
    }
}

fn parse_set<'a>(rest: Args<'a>, max_message_bytes: usize) -> Result<RespCommand<'a>, CommandError> {
    let (Some(id), Some(message)) = (rest.get(0), rest.get(1)) else {
        return Err(CommandError::WrongArity("set"));
    };
    if let Some(option) = rest.get(2) {
        return Err(match SET_OPTIONS.iter().find(|known| option.eq_ignore_ascii_case(known.as_bytes())) {
            Some(known) => CommandError::SetOption((*known).to_string()),
            None => CommandError::Syntax,
        });
    }
    valid_id(id)?;
    check_message(message, max_message_bytes)?;
    Ok(RespCommand::Single(Command::Set { id, message }))
}

fn parse_scan(rest: Args<'_>) -> Result<RespCommand<'_>, CommandError> {
    let Some(cursor) = rest.get(0) else { return Err(CommandError::WrongArity("scan")) };
    let cursor = std::str::from_utf8(cursor).ok().and_then(|c| c.parse().ok()).ok_or(CommandError::InvalidCursor)?;
    let mut scan = Scan { cursor, pattern: None, count: 10, other_type: false };
    let mut options = rest.skip(1).iter();
    while let Some(option) = options.next() {
        let value = options.next().ok_or(CommandError::Syntax)?;
        let is = |name: &[u8]| option.eq_ignore_ascii_case(name);
        if is(b"MATCH") {
            scan.pattern = Some(value);
        } else if is(b"COUNT") {
            let count: i64 =
                std::str::from_utf8(value).ok().and_then(|c| c.parse().ok()).ok_or(CommandError::NotAnInteger)?;
            scan.count = usize::try_from(count).ok().filter(|&c| c >= 1).ok_or(CommandError::Syntax)?;
        } else if is(b"TYPE") {
            scan.other_type = !value.eq_ignore_ascii_case(b"string");
        } else {
            return Err(CommandError::Syntax);
        }
    }
    Ok(RespCommand::Scan(scan))
}

fn parse_select(db: &[u8]) -> Result<RespCommand<'static>, CommandError> {
    let db: i64 = std::str::from_utf8(db).ok().and_then(|db| db.parse().ok()).ok_or(CommandError::NotAnInteger)?;
    match db {
        0 => Ok(RespCommand::Immediate(RespReply::Simple("OK"))),
        _ => Err(CommandError::NoSuchDb),
    }
}

/// `COMMAND` and `COMMAND DOCS` are what redis-cli asks on connect for its hints; an empty
/// table makes it fall back to its built-in help.
fn parse_command(rest: Args<'_>) -> Result<RespCommand<'static>, CommandError> {
    let Some(sub) = rest.get(0) else { return Ok(RespCommand::Immediate(RespReply::Array(Vec::new()))) };
    let reply = if sub.eq_ignore_ascii_case(b"COUNT") {
        RespReply::Integer(0)
    } else if [&b"DOCS"[..], b"INFO", b"LIST"].iter().any(|known| sub.eq_ignore_ascii_case(known)) {
        RespReply::Array(Vec::new())
    } else {
        return Err(CommandError::UnknownSubcommand { command: "COMMAND", subcommand: printable(sub) });
    };
    Ok(RespCommand::Immediate(reply))
}

fn parse_config(rest: Args<'_>) -> Result<RespCommand<'_>, CommandError> {
    let Some(sub) = rest.get(0) else { return Err(CommandError::WrongArity("config")) };
    if !sub.eq_ignore_ascii_case(b"GET") {
        return Err(CommandError::UnknownSubcommand { command: "CONFIG", subcommand: printable(sub) });
    }
    match rest.len() {
        1 => Err(CommandError::WrongArity("config|get")),
        _ => Ok(RespCommand::ConfigGet(rest.skip(1))),
    }
}

fn exactly_one<'a>(rest: Args<'a>, command: &'static str) -> Result<&'a [u8], CommandError> {
    match (rest.len(), rest.get(0)) {
        (1, Some(arg)) => Ok(arg),
        _ => Err(CommandError::WrongArity(command)),
    }
}

fn no_args<'a>(rest: Args<'_>, command: &'static str, ok: RespCommand<'a>) -> Result<RespCommand<'a>, CommandError> {
    match rest.is_empty() {
        true => Ok(ok),
        false => Err(CommandError::WrongArity(command)),
    }
}

fn keys<'a>(rest: Args<'a>, command: &'static str) -> Result<Keys<'a>, CommandError> {
    if rest.is_empty() {
        return Err(CommandError::WrongArity(command));
    }
    rest.iter().try_for_each(valid_id)?;
    Ok(Keys(rest))
}

fn pairs(rest: Args<'_>, max_message_bytes: usize) -> Result<Pairs<'_>, CommandError> {
    if rest.is_empty() || !rest.len().is_multiple_of(2) {
        return Err(CommandError::WrongArity("mset"));
    }
    let pairs = Pairs(rest);
    for (id, message) in pairs.iter() {
        valid_id(id)?;
        check_message(message, max_message_bytes)?;
    }
    Ok(pairs)
}

fn valid_id(id: &[u8]) -> Result<(), CommandError> {
    validate_id(id).map_err(|err| ProtocolError::from(err).into())
}

fn bulk(arg: Option<&[u8]>) -> RespReply {
    RespReply::Bulk(arg.unwrap_or_default().to_vec())
}

#[cfg(test)]
mod tests;
