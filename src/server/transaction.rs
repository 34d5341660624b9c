//! Atomic execution: MULTI/EXEC transactions, and the multi-key writes (MSET, DEL) that
//! Redis applies atomically too.
//!
//! Everything runs inside one [`Log::transaction`](crate::storage::Log::transaction):
//! reads see the transaction's own earlier writes, and the writes are appended as one
//! atomic batch under the log's write lock, so a concurrent reader sees all of them or
//! none, recovery keeps or cuts them together, and followers receive them whole. The
//! reply waits, like any write's, until the batch's last offset is durable and
//! replicated per `--fsync` and `--tolerance`.
//!
//! Redis's error rules: a command that fails to queue (unknown, wrong arity, bad key)
//! is answered at once and makes EXEC answer `-EXECABORT`, applying nothing; an error
//! while executing (a storage failure, a batch over the record limit) is that command's
//! slot in EXEC's array, and the other commands still apply.

use std::sync::atomic::Ordering;

use crate::protocol::resp::{CommandError, RespCommand, RespLimits, RespParser, RespReply};
use crate::storage::Batch;

use super::Shared;
use super::execute::{Outcome, storage_failure};
use super::resp::execute_resp;

/// Most commands one transaction may queue.
pub(crate) const MAX_QUEUED_COMMANDS: usize = 100_000;

/// An open MULTI: the queued requests, kept as the client sent them (they are framed
/// again at EXEC, so the read buffer need not hold them).
#[derive(Debug, Default)]
pub(crate) struct Transaction {
    requests: Vec<u8>,
    count: usize,
    /// A command failed to queue: EXEC will refuse.
    pub(crate) dirty: bool,
    writes: bool,
}

impl Transaction {
    pub(crate) fn queued(&self) -> usize {
        self.count
    }

    /// Memory the queued requests hold, charged to the server's buffer budget.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.requests.capacity()
    }

    /// Queues `command`, whose request bytes are `raw`. Queued bytes are capped at the
    /// record limit: the transaction's writes must fit in one atomic batch.
    pub(crate) fn queue(&mut self, shared: &Shared, command: &RespCommand<'_>, raw: &[u8]) -> Result<(), CommandError> {
        let max_bytes = shared.log.max_batch_bytes();
        if self.count >= MAX_QUEUED_COMMANDS || self.requests.len() + raw.len() > max_bytes {
            return Err(CommandError::TransactionTooLarge { max_commands: MAX_QUEUED_COMMANDS, max_bytes });
        }
        self.writes |= is_write(command);
        self.requests.extend_from_slice(raw);
        self.count += 1;
        Ok(())
    }
}

/// Whether `command` may be queued; QUIT is not (it runs at once, as in Redis).
pub(crate) fn is_queueable(command: &RespCommand<'_>) -> bool {
    !matches!(command, RespCommand::Quit)
}

fn is_write(command: &RespCommand<'_>) -> bool {
    use crate::protocol::Command;
    matches!(command, RespCommand::Single(Command::Set { .. }) | RespCommand::Del(_) | RespCommand::MSet(_))
}

/// EXEC: the replies of every queued command, in order, as one array.
pub(crate) fn exec(shared: &Shared, transaction: Transaction) -> Outcome<RespReply> {
    if transaction.dirty {
        return Outcome::reply(CommandError::ExecAbort.into());
    }
    if transaction.writes
        && let Err(refusal) = shared.admit_write()
    {
        return Outcome::reply(RespReply::error(refusal));
    }
    let limits = RespLimits::for_max_message(shared.config.max_message_bytes);
    let max_message_bytes = shared.config.max_message_bytes;
    let requests = &transaction.requests[..];
    // Replies in order; `None` for commands that read server-wide state (INFO, DBSIZE,
    // CONFIG GET), answered after the batch since the log's lock is held during it.
    let mut deferred = Vec::new();
    // The whole array is bounded like any reply: queued GETs of a large message are cheap
    // to send and would otherwise cost gigabytes to answer.
    let limit = shared.config.max_reply_bytes();
    let applied = shared.log.transaction(|batch| {
        let mut parser = RespParser::new(limits);
        let mut at = 0;
        let mut replies = Vec::with_capacity(transaction.count);
        let mut bytes = 0usize;
        while let Ok(Some(request)) = parser.next_request(&requests[at..]) {
            let reply = match RespCommand::parse(request.args, max_message_bytes) {
                Ok(Some(command)) => apply(shared, batch, &command),
                // Every request parsed when it was queued, and parses the same way now.
                Ok(None) | Err(_) => Some(CommandError::ExecAbort.into()),
            };
            bytes = bytes.saturating_add(reply.as_ref().map_or(0, RespReply::encoded_len_hint));
            if bytes > limit {
                batch.discard();
                let why = format!("reply too large (at least {bytes} bytes, limit {limit}); transaction discarded");
                return (Err(RespReply::error(why)), None);
            }
            if reply.is_none() {
                deferred.push((replies.len(), at..at + request.len));
            }
            replies.push(reply);
            at += request.len;
        }
        (Ok(replies), batch.newest_read())
    });
    let (replies, mut read, written) = match applied {
        Ok(((Ok(replies), read), written)) => (replies, read, written),
        Ok(((Err(too_large), _), _)) => return Outcome::reply(too_large),
        Err(err) => return Outcome::reply(storage_failure(&err).into()),
    };
    let mut replies: Vec<RespReply> = replies.into_iter().map(|r| r.unwrap_or(RespReply::Nil)).collect();
    for (slot, range) in deferred {
        let mut parser = RespParser::new(limits);
        if let Ok(Some(request)) = parser.next_request(&requests[range])
            && let Ok(Some(command)) = RespCommand::parse(request.args, max_message_bytes)
        {
            let outcome = execute_resp(shared, command);
            // What a deferred reply shows (SCAN's and KEYS's IDs) waits to be committed too.
            read = read.max(outcome.read);
            replies[slot] = outcome.reply;
        }
    }
    Outcome { written, read, ..Outcome::reply(RespReply::Array(replies)) }
}

/// MSET and DEL outside a transaction: all keys in one atomic batch.
pub(crate) fn atomic(shared: &Shared, command: RespCommand<'_>) -> Outcome<RespReply> {
    if let Err(refusal) = shared.admit_write() {
        return Outcome::reply(RespReply::error(refusal));
    }
    let all_or_nothing = matches!(command, RespCommand::MSet(_));
    let applied = shared.log.transaction(|batch| {
        let reply = apply(shared, batch, &command).unwrap_or(RespReply::Nil);
        // MSET either sets every key or none of them.
        if all_or_nothing && matches!(reply, RespReply::Error { .. }) {
            batch.discard();
        }
        reply
    });
    match applied {
        Ok((reply, written)) => Outcome { written, ..Outcome::reply(reply) },
        Err(err) => Outcome::reply(storage_failure(&err).into()),
    }
}

/// One command inside a batch; `None` if it must run outside it (see [`exec`]).
fn apply(shared: &Shared, batch: &mut Batch<'_>, command: &RespCommand<'_>) -> Option<RespReply> {
    use crate::protocol::Command;
    let metrics = &shared.metrics;
    let failure = |err| Some(RespReply::from(storage_failure(&err)));
    match command {
        RespCommand::Single(Command::Set { id, message }) => {
            metrics.sets.fetch_add(1, Ordering::Relaxed);
            match batch.set(id, message) {
                Ok(()) => Some(RespReply::Simple("OK")),
                Err(err) => failure(err),
            }
        }
        RespCommand::Single(Command::Get { id }) => {
            metrics.gets.fetch_add(1, Ordering::Relaxed);
            match batch.get(id) {
                Ok(message) => Some(message.map_or(RespReply::Nil, RespReply::Bulk)),
                Err(err) => failure(err),
            }
        }
        RespCommand::MGet(keys) => Some(super::resp::mget(shared, batch, *keys)),
        RespCommand::MSet(pairs) => {
            for (id, message) in pairs.iter() {
                metrics.sets.fetch_add(1, Ordering::Relaxed);
                if let Err(err) = batch.set(id, message) {
                    return failure(err);
                }
            }
            Some(RespReply::Simple("OK"))
        }
        RespCommand::Del(keys) => {
            let mut deleted = 0;
            for id in keys.iter() {
                metrics.dels.fetch_add(1, Ordering::Relaxed);
                match batch.delete(id) {
                    Ok(found) => deleted += i64::from(found),
                    Err(err) => return failure(err),
                }
            }
            Some(RespReply::Integer(deleted))
        }
        RespCommand::Exists(keys) => {
            Some(RespReply::Integer(keys.iter().filter(|id| batch.contains(id)).count() as i64))
        }
        RespCommand::Immediate(reply) => Some(reply.clone()),
        RespCommand::Single(_) | RespCommand::Quit | RespCommand::DbSize | RespCommand::Info(_) => None,
        RespCommand::ConfigGet(_) | RespCommand::Scan(_) | RespCommand::Keys(_) => None,
    }
}
