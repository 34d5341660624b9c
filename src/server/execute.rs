//! Applies a [`Command`] to the log. Framing-neutral: the text and RESP connections share
//! it, and this is the only place either touches the log's data.

use std::sync::atomic::Ordering;

use crate::protocol::{Command, HELP, Reply, parse_auth};
use crate::storage::StorageError;

use super::Shared;
use super::marks::{Mark, Marks};
use super::partitions::PartitionServing;
use super::stats::Snapshot;

/// The result of one command, before its write (if any) is durable. `R` is the reply type:
/// the neutral [`Reply`] here, a RESP reply where RESP commands combine several of these.
#[derive(Debug)]
pub(crate) struct Outcome<R = Reply> {
    pub(crate) reply: R,
    /// The newest record the command appended, per partition it wrote to; its reply waits
    /// until they are durable.
    pub(crate) written: Marks,
    /// The newest record the reply shows (a GET's), per partition: the reply waits until
    /// they are durable too, so no client sees a message that a crash could still take
    /// back. Only the local sync is awaited, not the followers.
    pub(crate) read: Marks,
    /// The connection closes after this reply.
    pub(crate) close: bool,
}

impl<R> Outcome<R> {
    pub(crate) fn reply(reply: R) -> Outcome<R> {
        Outcome { reply, written: Marks::default(), read: Marks::default(), close: false }
    }

    fn written(reply: R, mark: Mark) -> Outcome<R> {
        Outcome { written: mark.into(), ..Outcome::reply(reply) }
    }

    fn read(reply: R, mark: Mark) -> Outcome<R> {
        Outcome { read: mark.into(), ..Outcome::reply(reply) }
    }

    /// A reply after which the connection closes.
    pub(crate) fn closing(reply: R) -> Outcome<R> {
        Outcome { close: true, ..Outcome::reply(reply) }
    }

    pub(crate) fn map<S>(self, f: impl FnOnce(R) -> S) -> Outcome<S> {
        Outcome { reply: f(self.reply), written: self.written, read: self.read, close: self.close }
    }
}

/// Carries out one text-protocol line. With a password configured, a connection that has
/// not authenticated (`authenticated` false) may only AUTH, ask for HELP, or QUIT.
pub(crate) fn execute_line(shared: &Shared, authenticated: &mut bool, line: &[u8]) -> Outcome {
    if let Some(password) = parse_auth(line) {
        return Outcome::reply(match (password, &shared.config.password) {
            (Err(err), _) => err.into(),
            (Ok(_), None) => Reply::error("no password is set on this server; AUTH is not needed"),
            (Ok(given), Some(expected)) if expected.matches(given) => {
                *authenticated = true;
                Reply::Ok
            }
            (Ok(_), Some(_)) => Reply::error("invalid password"),
        });
    }
    match Command::parse_line(line, shared.config.max_message_bytes) {
        Ok(command @ (Command::Help | Command::Quit)) => execute(shared, command),
        Ok(_) if !*authenticated => Outcome::reply(Reply::error("NOAUTH authentication required")),
        Ok(command) => execute(shared, command),
        Err(err) => Outcome::reply(err.into()),
    }
}

pub(crate) fn execute(shared: &Shared, command: Command<'_>) -> Outcome {
    let metrics = &shared.metrics;
    match command {
        Command::Set { id, message } => {
            let slot = shared.partitions.for_key(id);
            // Refused writes (a follower's, or too few replicas) are not counted as SETs.
            if let Err(refusal) = slot.admit_write() {
                return Outcome::reply(Reply::error(refusal));
            }
            metrics.sets.fetch_add(1, Ordering::Relaxed);
            let truncations = slot.log.truncations();
            match slot.log.append(id, message) {
                Ok(offset) => Outcome::written(Reply::Ok, Mark::new(slot.partition, truncations, offset)),
                Err(err) => Outcome::reply(storage_failure(&err)),
            }
        }
        Command::Get { id } => {
            let slot = shared.partitions.for_key(id);
            metrics.gets.fetch_add(1, Ordering::Relaxed);
            let truncations = slot.log.truncations();
            match slot.log.get_with_offset(id) {
                Ok(Some((offset, message))) => {
                    Outcome::read(Reply::Value(message), Mark::new(slot.partition, truncations, offset))
                }
                Ok(None) => Outcome { read: newest_of(slot, truncations).into(), ..Outcome::reply(Reply::NotFound) },
                Err(err) => Outcome::reply(storage_failure(&err)),
            }
        }
        Command::Del { id } => {
            let slot = shared.partitions.for_key(id);
            if let Err(refusal) = slot.admit_write() {
                return Outcome::reply(Reply::error(refusal));
            }
            metrics.dels.fetch_add(1, Ordering::Relaxed);
            let truncations = slot.log.truncations();
            match slot.log.delete(id) {
                Ok(Some(offset)) => Outcome::written(Reply::Ok, Mark::new(slot.partition, truncations, offset)),
                Ok(None) => Outcome::reply(Reply::NotFound),
                Err(err) => Outcome::reply(storage_failure(&err)),
            }
        }
        Command::Exists { id } => {
            let slot = shared.partitions.for_key(id);
            let truncations = slot.log.truncations();
            let reply = if slot.log.contains(id) { Reply::Ok } else { Reply::NotFound };
            Outcome { read: newest_of(slot, truncations).into(), ..Outcome::reply(reply) }
        }
        Command::Ping => Outcome::reply(Reply::Pong),
        Command::Help => Outcome::reply(Reply::Info(HELP.to_string())),
        Command::Stats => Outcome::reply(Reply::Info(Snapshot::take(shared, false).to_string())),
        Command::Quit => Outcome::closing(Reply::Bye),
    }
}

/// The newest record of `slot`'s log now, if it has any: what a reply that says whether
/// IDs are present, without naming the record that decides it (an absent ID may be absent
/// because of a tombstone not yet durable), or about the whole key space, waits for.
/// `truncations` is the log's count read before the reply looked at the log.
pub(crate) fn newest_of(slot: &PartitionServing, truncations: u64) -> Option<Mark> {
    slot.log.next_offset().checked_sub(1).map(|last| Mark::new(slot.partition, truncations, last))
}

/// The one place a storage error becomes a wire reply.
pub(crate) fn storage_failure(err: &StorageError) -> Reply {
    Reply::error(format_args!("storage failure: {err}"))
}
