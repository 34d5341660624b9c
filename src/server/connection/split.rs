//! A multi-key command (MGET, EXISTS, MSET, DEL) whose keys lie in partitions that run in
//! different places: one request per partition, of the same command with that partition's
//! keys in the order given, each run where its partition's route says (here, or at its
//! leader); then their replies joined into the one the client asked for, as the local split
//! joins them (`resp::read_keys`, `transaction::split_by_partition`).
//!
//! Parts ask for RESP2 whoever answers them, so a part's reply is either a reply built here
//! or RESP2 bytes from a leader; [`PartReply`] reads both.

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::resp::{Args, Protocol, RespCommand, RespLimits, RespParser, RespReply};

use super::answer::Answer;
use super::forwarding::{Diverter, ReplyWait};
use crate::server::Shared;
use crate::server::execute::Outcome;
use crate::server::forward::ForwardDialect;
use crate::server::marks::Marks;
use crate::server::session::Session;
use crate::server::transaction::partially_applied;

/// How the parts' replies make the client's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Join {
    /// MGET: the values, in the order the keys came.
    Values { keys: usize },
    /// EXISTS: the counts summed.
    Sum,
    /// MSET (`OK` when every part is) and DEL (the counts summed): a write whose parts
    /// apply one by one, so a failed part leaves the others applied, and says so.
    Write { mset: bool },
}

/// One partition's share of the command.
pub(super) struct Part {
    pub(super) partition: u32,
    /// Where its keys stand among the command's.
    positions: Vec<usize>,
    /// The request for it: the command's name, then its keys (with their values for MSET).
    pub(super) frame: Bytes,
}

/// Where a part's reply stands.
pub(super) enum PartState {
    Done(PartReply),
    Sent(ReplyWait),
    /// Not sent: its partition's leader is not known or could not be reached.
    Held,
}

/// A command split by partition, its parts under way.
pub(super) struct Split {
    pub(super) join: Join,
    /// The client's protocol when it asked, which the joined reply is encoded in.
    pub(super) protocol: Protocol,
    pub(super) parts: Vec<(Part, PartState)>,
}

/// The parts of `args`'s command, one per partition its keys lie in, in partition order;
/// `None` if it is not a command that splits.
pub(super) fn parts(shared: &Shared, args: Args<'_>) -> Option<(Join, Vec<Part>)> {
    let name = args.get(0)?;
    let command = RespCommand::parse(args, shared.config.max_message_bytes).ok()??;
    let (join, keys, per_key): (Join, Vec<&[u8]>, usize) = match command {
        RespCommand::MGet(keys) => (Join::Values { keys: keys.iter().len() }, keys.iter().collect(), 1),
        RespCommand::Exists(keys) => (Join::Sum, keys.iter().collect(), 1),
        RespCommand::Del(keys) => (Join::Write { mset: false }, keys.iter().collect(), 1),
        // Keys and values alternate after the name.
        RespCommand::MSet(_) => (Join::Write { mset: true }, args.skip(1).iter().collect(), 2),
        _ => return None,
    };
    let ids = keys.iter().step_by(per_key).copied();
    let parts = shared
        .partitions
        .group(ids)
        .into_iter()
        .map(|(slot, positions)| {
            let args = positions.iter().flat_map(|&i| keys[i * per_key..(i + 1) * per_key].iter().copied());
            Part { partition: slot.partition, frame: request(name, args, positions.len() * per_key), positions }
        })
        .collect();
    Some((join, parts))
}

/// `name` and `args` as one RESP request.
fn request<'a>(name: &'a [u8], args: impl Iterator<Item = &'a [u8]>, count: usize) -> Bytes {
    let mut frame = BytesMut::new();
    frame.put_slice(format!("*{}\r\n", count + 1).as_bytes());
    for arg in std::iter::once(name).chain(args) {
        frame.put_slice(format!("${}\r\n", arg.len()).as_bytes());
        frame.put_slice(arg);
        frame.put_slice(b"\r\n");
    }
    frame.freeze()
}

/// Starts every part: those whose partition is led here run now, through `session` (their
/// writes and reads are the outcome's, waited for like any request's); the others are
/// sent to their leaders, or held when they cannot be.
pub(super) fn start(
    shared: &Shared,
    session: &mut Session,
    diverter: &mut Diverter,
    (join, parts): (Join, Vec<Part>),
    protocol: Protocol,
) -> Outcome<Split> {
    let (mut written, mut read) = (Marks::default(), Marks::default());
    let parts = parts
        .into_iter()
        .map(|part| {
            let state = if diverter.is_local(part.partition) {
                let outcome = run_here(shared, session, &part.frame);
                written.merge(&outcome.written);
                read.merge(&outcome.read);
                PartState::Done(PartReply::from_resp(outcome.reply))
            } else if let Some(reply) = diverter.send(&[part.partition], ForwardDialect::Resp2, &part.frame) {
                PartState::Sent(reply)
            } else {
                diverter.hold();
                PartState::Held
            };
            (part, state)
        })
        .collect();
    Outcome { written, read, ..Outcome::reply(Split { join, protocol, parts }) }
}

/// A part run here, as the connection runs a request: no transaction is open (or the
/// command would not have been split).
fn run_here(shared: &Shared, session: &mut Session, frame: &[u8]) -> Outcome<RespReply> {
    let mut parser = RespParser::new(RespLimits::for_max_message(shared.config.max_message_bytes));
    let outcome = match parser.next_request(frame) {
        Ok(Some(request)) => session.handle(shared, request.args, &frame[..request.len]),
        _ => None,
    };
    outcome.unwrap_or_else(|| Outcome::reply(RespReply::error("a part of a split command did not frame")))
}

/// What a part's reply says, as far as joining needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PartReply {
    Ok,
    Integer(i64),
    Values(Vec<Option<Vec<u8>>>),
    /// An error reply's line, code first, without its `-`.
    Error(String),
}

impl PartReply {
    pub(super) fn from_resp(reply: RespReply) -> PartReply {
        match reply {
            RespReply::Simple("OK") => PartReply::Ok,
            RespReply::Integer(n) => PartReply::Integer(n),
            RespReply::Error { code, reason } => PartReply::Error(format!("{code} {reason}")),
            RespReply::Array(items) => items
                .into_iter()
                .map(|item| match item {
                    RespReply::Bulk(value) => Some(Some(value)),
                    RespReply::Nil => Some(None),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()
                .map_or_else(unexpected, PartReply::Values),
            _ => unexpected(),
        }
    }

    /// A part's answer as the connection resolved it: built here, or RESP2 bytes.
    pub(super) fn from_answer(answer: Answer) -> PartReply {
        match answer {
            Answer::Resp(reply, _) => PartReply::from_resp(reply),
            Answer::Relayed(bytes) => PartReply::decode(&bytes),
            Answer::Text(_) | Answer::Diverted(_) => unexpected(),
        }
    }

    /// One whole RESP2 reply of the kinds the split commands get.
    fn decode(bytes: &[u8]) -> PartReply {
        let mut reader = Reader(bytes);
        let decoded = match reader.line() {
            Some(b"+OK") => Some(PartReply::Ok),
            Some([b'-', error @ ..]) => Some(PartReply::Error(String::from_utf8_lossy(error).into_owned())),
            Some([b':', n @ ..]) => number(n).map(PartReply::Integer),
            Some([b'*', n @ ..]) => {
                number(n).and_then(|n| (0..n).map(|_| reader.bulk()).collect::<Option<Vec<_>>>()).map(PartReply::Values)
            }
            _ => None,
        };
        decoded.filter(|_| reader.0.is_empty()).unwrap_or_else(unexpected)
    }
}

fn unexpected() -> PartReply {
    PartReply::Error("ERR unexpected reply to a part of a command split by partition".to_string())
}

fn number<T: std::str::FromStr>(digits: &[u8]) -> Option<T> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Reads a RESP2 reply front to back.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// The next line, without its CRLF.
    fn line(&mut self) -> Option<&'a [u8]> {
        let end = memchr::memmem::find(self.0, b"\r\n")?;
        let line = &self.0[..end];
        self.0 = &self.0[end + 2..];
        Some(line)
    }

    /// A bulk string (`Some(None)` for `$-1`).
    fn bulk(&mut self) -> Option<Option<Vec<u8>>> {
        let len: i64 = match self.line()? {
            [b'$', n @ ..] => number(n)?,
            _ => return None,
        };
        let Ok(len) = usize::try_from(len) else { return (len == -1).then_some(None) };
        let value = self.0.get(..len)?.to_vec();
        if self.0.get(len..len + 2)? != b"\r\n" {
            return None;
        }
        self.0 = &self.0[len + 2..];
        Some(Some(value))
    }
}

/// The client's reply from its parts' (in part order), encoded in its protocol. A reply
/// over `limit` (MGET values) is refused, as a local MGET's would be.
pub(super) fn join(join: Join, protocol: Protocol, replies: Vec<(Part, PartReply)>, limit: usize) -> Answer {
    match joined(join, replies, limit) {
        Ok(reply) => Answer::Resp(reply, protocol),
        // An error line is the same in both protocols.
        Err(line) => Answer::Relayed(Bytes::from(format!("-{line}\r\n"))),
    }
}

fn joined(join: Join, replies: Vec<(Part, PartReply)>, limit: usize) -> Result<RespReply, String> {
    match join {
        Join::Values { keys } => {
            let mut values = vec![RespReply::Nil; keys];
            let mut bytes = 0usize;
            for (part, reply) in replies {
                let got = match reply {
                    PartReply::Values(got) if got.len() == part.positions.len() => got,
                    PartReply::Error(error) => return Err(error),
                    _ => return Err(error_line(unexpected())),
                };
                for (position, value) in part.positions.into_iter().zip(got) {
                    values[position] = value.map_or(RespReply::Nil, RespReply::Bulk);
                    bytes = bytes.saturating_add(values[position].encoded_len_hint());
                }
            }
            if bytes > limit {
                return Err(format!("ERR reply too large (at least {bytes} bytes, limit {limit})"));
            }
            Ok(RespReply::Array(values))
        }
        Join::Sum => replies.into_iter().try_fold(RespReply::Integer(0), |sum, (_, reply)| match (sum, reply) {
            (RespReply::Integer(sum), PartReply::Integer(n)) => Ok(RespReply::Integer(sum + n)),
            (_, PartReply::Error(error)) => Err(error),
            _ => Err(error_line(unexpected())),
        }),
        Join::Write { mset } => {
            let (mut applied, mut failed, mut deleted, mut cause) = (Vec::new(), Vec::new(), 0, None);
            for (part, reply) in replies {
                match reply {
                    PartReply::Ok if mset => applied.push(part.partition),
                    PartReply::Integer(n) if !mset => {
                        deleted += n;
                        applied.push(part.partition);
                    }
                    other => {
                        failed.push(part.partition);
                        cause.get_or_insert(error_line(other));
                    }
                }
            }
            match cause {
                None if mset => Ok(RespReply::Simple("OK")),
                None => Ok(RespReply::Integer(deleted)),
                Some(cause) if applied.is_empty() => Err(cause),
                Some(cause) => {
                    let cause = cause.strip_prefix("ERR ").unwrap_or(&cause);
                    Err(format!("ERR {}", partially_applied(&applied, &failed, cause)))
                }
            }
        }
    }
}

fn error_line(reply: PartReply) -> String {
    match reply {
        PartReply::Error(line) => line,
        _ => error_line(unexpected()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(partition: u32, positions: Vec<usize>) -> Part {
        Part { partition, positions, frame: Bytes::new() }
    }

    #[test]
    fn leaders_replies_are_read_as_resp2() {
        assert_eq!(PartReply::decode(b"+OK\r\n"), PartReply::Ok);
        assert_eq!(PartReply::decode(b":3\r\n"), PartReply::Integer(3));
        assert_eq!(
            PartReply::decode(b"-ERR leader unavailable: x\r\n"),
            PartReply::Error("ERR leader unavailable: x".to_string())
        );
        assert_eq!(
            PartReply::decode(b"*3\r\n$2\r\nab\r\n$-1\r\n$0\r\n\r\n"),
            PartReply::Values(vec![Some(b"ab".to_vec()), None, Some(Vec::new())])
        );
        for broken in [&b"*2\r\n$2\r\nab\r\n"[..], b"$2\r\nab\r\n", b"+OK\r\n+OK\r\n", b"*1\r\n$3\r\nab\r\n", b""] {
            assert_eq!(PartReply::decode(broken), unexpected(), "{}", broken.escape_ascii());
        }
    }

    #[test]
    fn values_come_back_in_key_order_and_counts_are_summed() {
        let replies = vec![
            (part(0, vec![1]), PartReply::Values(vec![Some(b"b".to_vec())])),
            (part(1, vec![0, 2]), PartReply::Values(vec![Some(b"a".to_vec()), None])),
        ];
        let values = joined(Join::Values { keys: 3 }, replies, 1 << 20).unwrap();
        assert_eq!(
            values,
            RespReply::Array(vec![RespReply::Bulk(b"a".to_vec()), RespReply::Bulk(b"b".to_vec()), RespReply::Nil])
        );
        let replies = vec![(part(0, vec![0]), PartReply::Integer(1)), (part(2, vec![1]), PartReply::Integer(2))];
        assert_eq!(joined(Join::Sum, replies, 0), Ok(RespReply::Integer(3)));
    }

    #[test]
    fn a_write_that_failed_in_one_partition_says_which_applied() {
        let replies = vec![
            (part(0, vec![0]), PartReply::Ok),
            (part(1, vec![1]), PartReply::Error("ERR leader unavailable: gone".to_string())),
        ];
        assert_eq!(
            joined(Join::Write { mset: true }, replies, 0),
            Err("ERR partially applied: partition(s) 0 applied, 1 failed: leader unavailable: gone".to_string())
        );
        let replies = vec![(part(1, vec![0]), PartReply::Error("READONLY no".to_string()))];
        assert_eq!(joined(Join::Write { mset: false }, replies, 0), Err("READONLY no".to_string()));
    }
}
