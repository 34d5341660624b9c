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
//!
//! Partitions: a batch is one log's, so a transaction's keys must all lie in one
//! partition; a command that would take it into a second is refused at queue time with
//! `-CROSSPARTITION` (and so EXEC aborts); on a node that forwards, that partition must be
//! led here (see [`led_elsewhere`]). MSET and DEL outside a transaction whose keys
//! span partitions run as one batch per partition: atomic per partition only
//! (docs/FORMAT.md, "Partitions").

use std::sync::atomic::Ordering;

use crate::protocol::Command;
use crate::protocol::resp::{CommandError, RespCommand, RespLimits, RespParser, RespReply};
use crate::storage::Batch;

use super::Shared;
use super::execute::{Outcome, storage_failure};
use super::marks::{Mark, Marks};
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
    /// The partition of the first key queued: every later key must be in it too.
    partition: Option<u32>,
}

/// The refusal of a command whose keys would take a transaction into a second partition.
fn cross_partition() -> RespReply {
    RespReply::Error { code: "CROSSPARTITION", reason: "keys in several partitions".to_string() }
}

/// With several partitions a transaction is not forwarded: it runs on the node the client
/// is connected to, over a partition this node leads. One of a partition another node leads
/// is refused (at queue time, so EXEC aborts; and at EXEC, if the leader changed since),
/// naming that leader.
fn led_elsewhere(shared: &Shared, partition: u32) -> Option<RespReply> {
    shared.forwarding.as_ref()?.led_elsewhere(partition).map(RespReply::error)
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
    pub(crate) fn queue(&mut self, shared: &Shared, command: &RespCommand<'_>, raw: &[u8]) -> Result<(), RespReply> {
        let max_bytes = shared.first().log.max_batch_bytes();
        if self.count >= MAX_QUEUED_COMMANDS || self.requests.len() + raw.len() > max_bytes {
            return Err(CommandError::TransactionTooLarge { max_commands: MAX_QUEUED_COMMANDS, max_bytes }.into());
        }
        if shared.partitions.count() > 1 {
            let mut partition = self.partition;
            let mut several = false;
            for_each_key(command, |id| {
                let of = shared.partitions.for_key(id).partition;
                several |= *partition.get_or_insert(of) != of;
            });
            if several {
                return Err(cross_partition());
            }
            if let Some(refusal) = partition.and_then(|of| led_elsewhere(shared, of)) {
                return Err(refusal);
            }
            self.partition = partition;
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
    matches!(command, RespCommand::Single(Command::Set { .. }) | RespCommand::Del(_) | RespCommand::MSet(_))
}

/// EXEC: the replies of every queued command, in order, as one array.
pub(crate) fn exec(shared: &Shared, transaction: Transaction) -> Outcome<RespReply> {
    if transaction.dirty {
        return Outcome::reply(CommandError::ExecAbort.into());
    }
    if let Some(refusal) = transaction.partition.and_then(|of| led_elsewhere(shared, of)) {
        return Outcome::reply(refusal);
    }
    // A transaction that queued no key (PING, DBSIZE) reads no partition's batch.
    let slot = shared.partitions.get(transaction.partition.unwrap_or(0));
    if transaction.writes
        && let Err(refusal) = slot.admit_write()
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
    let truncations = slot.log.truncations();
    let applied = slot.log.transaction(|batch| {
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
    let mark =
        |offset: Option<crate::storage::Offset>| Marks::from(offset.map(|o| Mark::new(slot.partition, truncations, o)));
    let (replies, mut read, written) = match applied {
        Ok(((Ok(replies), read), written)) => (replies, mark(read), mark(written)),
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
            read.merge(&outcome.read);
            replies[slot] = outcome.reply;
        }
    }
    Outcome { written, read, ..Outcome::reply(RespReply::Array(replies)) }
}

/// MSET and DEL outside a transaction: all keys in one atomic batch, or one per
/// partition when they span several.
pub(crate) fn atomic(shared: &Shared, command: RespCommand<'_>) -> Outcome<RespReply> {
    if shared.partitions.count() > 1 {
        return split_by_partition(shared, &command);
    }
    let slot = shared.first();
    if let Err(refusal) = slot.admit_write() {
        return Outcome::reply(RespReply::error(refusal));
    }
    let all_or_nothing = matches!(command, RespCommand::MSet(_));
    let truncations = slot.log.truncations();
    let applied = slot.log.transaction(|batch| {
        let reply = apply(shared, batch, &command).unwrap_or(RespReply::Nil);
        // MSET either sets every key or none of them.
        if all_or_nothing && matches!(reply, RespReply::Error { .. }) {
            batch.discard();
        }
        reply
    });
    match applied {
        Ok((reply, written)) => {
            let written = written.map(|offset| Mark::new(slot.partition, truncations, offset));
            Outcome { written: written.into(), ..Outcome::reply(reply) }
        }
        Err(err) => Outcome::reply(storage_failure(&err).into()),
    }
}

/// MSET or DEL over several partitions: the keys grouped by partition, one atomic batch
/// per partition, the replies joined (DEL's counts summed). Every partition must admit
/// the write before any is applied; a part that fails later does not undo the others,
/// and the reply says which partitions were applied and which failed.
fn split_by_partition(shared: &Shared, command: &RespCommand<'_>) -> Outcome<RespReply> {
    let pairs: Vec<(&[u8], &[u8])> = match command {
        RespCommand::MSet(pairs) => pairs.iter().collect(),
        RespCommand::Del(keys) => keys.iter().map(|id| (id, &[][..])).collect(),
        _ => return Outcome::reply(RespReply::error("not a multi-key write")),
    };
    let mset = matches!(command, RespCommand::MSet(_));
    let groups = shared.partitions.group(pairs.iter().map(|(id, _)| *id));
    if let Some(refusal) = groups.iter().find_map(|(slot, _)| slot.admit_write().err()) {
        return Outcome::reply(RespReply::error(refusal));
    }
    let mut written = Marks::default();
    let (mut applied, mut failed) = (Vec::new(), Vec::new());
    let mut deleted = 0;
    for (slot, indices) in groups {
        let truncations = slot.log.truncations();
        let part = slot.log.transaction(|batch| match mset {
            true => {
                let reply = set_all(shared, batch, indices.iter().map(|&i| pairs[i]));
                // MSET sets every key of a partition or none of them.
                if matches!(reply, RespReply::Error { .. }) {
                    batch.discard();
                }
                reply
            }
            false => delete_all(shared, batch, indices.iter().map(|&i| pairs[i].0)),
        });
        match part {
            Ok((reply, appended)) => {
                written.merge(&appended.map(|offset| Mark::new(slot.partition, truncations, offset)).into());
                match reply {
                    RespReply::Error { .. } => failed.push((slot, reply)),
                    RespReply::Integer(n) => {
                        deleted += n;
                        applied.push(slot);
                    }
                    _ => applied.push(slot),
                }
            }
            Err(err) => failed.push((slot, storage_failure(&err).into())),
        }
    }
    let reply = match failed.first() {
        None if mset => RespReply::Simple("OK"),
        None => RespReply::Integer(deleted),
        Some((_, cause)) if applied.is_empty() => cause.clone(),
        Some((_, cause)) => {
            let applied: Vec<u32> = applied.iter().map(|slot| slot.partition).collect();
            let failed: Vec<u32> = failed.iter().map(|(slot, _)| slot.partition).collect();
            RespReply::error(partially_applied(&applied, &failed, &cause_of(cause)))
        }
    };
    Outcome { written, ..Outcome::reply(reply) }
}

/// `partially applied: partition(s) 0,3 applied, 1 failed: <cause>`: the reason of the `ERR`
/// a multi-key write gets when some of its partitions applied and some did not, whether
/// split here or across leaders.
pub(crate) fn partially_applied(applied: &[u32], failed: &[u32], cause: &str) -> String {
    let list = |partitions: &[u32]| partitions.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    format!("partially applied: partition(s) {} applied, {} failed: {cause}", list(applied), list(failed))
}

/// An error reply as the cause in [`partially_applied`]: its reason, after its code unless
/// that is `ERR`.
fn cause_of(reply: &RespReply) -> String {
    match reply {
        RespReply::Error { code: "ERR", reason } => reason.clone(),
        RespReply::Error { code, reason } => format!("{code} {reason}"),
        other => format!("{other:?}"),
    }
}

/// Calls `f` with every key `command` reads or writes.
pub(crate) fn for_each_key<'a>(command: &RespCommand<'a>, mut f: impl FnMut(&'a [u8])) {
    match command {
        RespCommand::Single(
            Command::Set { id, .. } | Command::Get { id } | Command::Del { id } | Command::Exists { id },
        ) => f(id),
        RespCommand::Del(keys) | RespCommand::Exists(keys) | RespCommand::MGet(keys) => keys.iter().for_each(f),
        RespCommand::MSet(pairs) => pairs.iter().for_each(|(id, _)| f(id)),
        _ => {}
    }
}

/// Sets every pair in `batch`; an error at the first that fails.
fn set_all<'a>(shared: &Shared, batch: &mut Batch<'_>, pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> RespReply {
    for (id, message) in pairs {
        shared.metrics.sets.fetch_add(1, Ordering::Relaxed);
        if let Err(err) = batch.set(id, message) {
            return storage_failure(&err).into();
        }
    }
    RespReply::Simple("OK")
}

/// Deletes every ID in `batch`: how many held a message, or an error at the first that
/// fails.
fn delete_all<'a>(shared: &Shared, batch: &mut Batch<'_>, ids: impl Iterator<Item = &'a [u8]>) -> RespReply {
    let mut deleted = 0;
    for id in ids {
        shared.metrics.dels.fetch_add(1, Ordering::Relaxed);
        match batch.delete(id) {
            Ok(found) => deleted += i64::from(found),
            Err(err) => return storage_failure(&err).into(),
        }
    }
    RespReply::Integer(deleted)
}

/// One command inside a batch; `None` if it must run outside it (see [`exec`]).
fn apply(shared: &Shared, batch: &mut Batch<'_>, command: &RespCommand<'_>) -> Option<RespReply> {
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
        RespCommand::MSet(pairs) => Some(set_all(shared, batch, pairs.iter())),
        RespCommand::Del(keys) => Some(delete_all(shared, batch, keys.iter())),
        RespCommand::Exists(keys) => {
            Some(RespReply::Integer(keys.iter().filter(|id| batch.contains(id)).count() as i64))
        }
        RespCommand::Immediate(reply) => Some(reply.clone()),
        RespCommand::Single(_) | RespCommand::Quit | RespCommand::DbSize | RespCommand::Info(_) => None,
        RespCommand::ConfigGet(_) | RespCommand::Scan(_) | RespCommand::Keys(_) => None,
    }
}
