//! Carries out RESP commands. Single-key SET and GET go through the shared [`execute`];
//! multi-key commands are atomic as in Redis (MSET and DEL as one batch, see
//! [`transaction`](super::transaction); MGET and EXISTS read at one instant) within a
//! partition, and split by partition and joined when their keys span several; this file
//! also answers the server-level commands (INFO, DBSIZE, CONFIG GET, SCAN, KEYS) over
//! every partition, from the same numbers as STATS.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use crate::protocol::glob;
use crate::protocol::resp::{Args, Keys, RespCommand, RespReply, Scan};
use crate::storage::{Batch, FsyncPolicy};

use super::Shared;
use super::execute::{Outcome, execute, newest_of, storage_failure};
use super::marks::{Mark, Marks};
use super::stats::Snapshot;

pub(crate) fn execute_resp(shared: &Shared, command: RespCommand<'_>) -> Outcome<RespReply> {
    match command {
        RespCommand::Single(command) => execute(shared, command).map(RespReply::from),
        RespCommand::Del(_) | RespCommand::MSet(_) => super::transaction::atomic(shared, command),
        RespCommand::Exists(keys) => read_keys(shared, keys, true),
        RespCommand::MGet(keys) => read_keys(shared, keys, false),
        RespCommand::Quit => Outcome::closing(RespReply::Simple("OK")),
        RespCommand::DbSize => {
            let ids = shared.partitions.iter().map(|slot| slot.log.stats().ids).sum();
            Outcome::reply(RespReply::Integer(saturating_i64(ids)))
        }
        RespCommand::Scan(scan) => scan_step(shared, scan),
        RespCommand::Keys(pattern) => keys(shared, pattern),
        RespCommand::Info(sections) => Outcome::reply(RespReply::Verbatim(info(shared, sections))),
        RespCommand::ConfigGet(patterns) => Outcome::reply(config_get(shared, patterns)),
        RespCommand::Immediate(reply) => Outcome::reply(reply),
    }
}

/// MGET and EXISTS read every key of a partition at one instant, as in Redis: never half
/// of a transaction or MSET that lands meanwhile (which stay within one partition). Keys in
/// several partitions are read one partition after the other and joined: MGET's values in
/// key order, EXISTS's counts summed. The reply waits once per partition, for the newest
/// record it shows there.
fn read_keys(shared: &Shared, keys: Keys<'_>, exists: bool) -> Outcome<RespReply> {
    if shared.partitions.count() == 1 {
        let slot = shared.first();
        let truncations = slot.log.truncations();
        let (reply, read) = slot.log.read_at_once(|log| match exists {
            true => (RespReply::Integer(keys.iter().filter(|id| log.contains(id)).count() as i64), log.newest_read()),
            false => (mget(shared, log, keys), log.newest_read()),
        });
        let read = read.map(|offset| Mark::new(slot.partition, truncations, offset));
        return Outcome { read: read.into(), ..Outcome::reply(reply) };
    }
    let ids: Vec<&[u8]> = keys.iter().collect();
    let mut read = Marks::default();
    let mut found = 0i64;
    let mut values = Values::new(shared, ids.len());
    for (slot, indices) in shared.partitions.group(ids.iter().copied()) {
        let truncations = slot.log.truncations();
        let newest = slot.log.read_at_once(|log| {
            match exists {
                true => found += indices.iter().filter(|&&i| log.contains(ids[i])).count() as i64,
                false => indices.iter().try_for_each(|&i| values.fill(log, i, ids[i]))?,
            }
            Ok(log.newest_read())
        });
        match newest {
            Ok(newest) => read.merge(&newest.map(|offset| Mark::new(slot.partition, truncations, offset)).into()),
            Err(refusal) => return Outcome::reply(refusal),
        }
    }
    let reply = if exists { RespReply::Integer(found) } else { values.into_reply() };
    Outcome { read, ..Outcome::reply(reply) }
}

/// The values of `keys` as `view` (the log at one instant, or a transaction) holds them.
/// Refused, not built, once the reply would pass the per-reply bound: repeating a large
/// key is a cheap request that would otherwise cost gigabytes to answer.
pub(crate) fn mget(shared: &Shared, view: &Batch<'_>, keys: Keys<'_>) -> RespReply {
    let mut values = Values::new(shared, keys.iter().len());
    match keys.iter().enumerate().try_for_each(|(i, id)| values.fill(view, i, id)) {
        Ok(()) => values.into_reply(),
        Err(refusal) => refusal,
    }
}

/// MGET's reply being built, possibly out of key order (a partition at a time), bounded
/// in total by the per-reply bound.
struct Values<'s> {
    shared: &'s Shared,
    values: Vec<RespReply>,
    /// Keys asked for, and how many are read so far.
    keys: usize,
    filled: usize,
    bytes: usize,
    /// The per-reply bound.
    limit: usize,
}

impl<'s> Values<'s> {
    fn new(shared: &'s Shared, keys: usize) -> Values<'s> {
        // Grown as keys are read (in key order within one partition), never ahead of them.
        let limit = shared.config.max_reply_bytes();
        Values { shared, values: Vec::with_capacity(keys.min(1024)), keys, filled: 0, bytes: 0, limit }
    }

    /// Reads key `index` (`id`) from `view`; `Err` is the reply instead of the values.
    fn fill(&mut self, view: &Batch<'_>, index: usize, id: &[u8]) -> Result<(), RespReply> {
        self.shared.metrics.gets.fetch_add(1, Ordering::Relaxed);
        let value = match view.get(id) {
            Ok(message) => message.map_or(RespReply::Nil, RespReply::Bulk),
            Err(err) => return Err(storage_failure(&err).into()),
        };
        let limit = self.limit;
        self.bytes = self.bytes.saturating_add(value.encoded_len_hint());
        self.filled += 1;
        if self.bytes > limit {
            let at_least = self.bytes.saturating_add(self.keys.saturating_sub(self.filled) * 5);
            return Err(RespReply::error(format_args!("reply too large (at least {at_least} bytes, limit {limit})")));
        }
        if index >= self.values.len() {
            self.values.resize(index + 1, RespReply::Nil);
        }
        self.values[index] = value;
        Ok(())
    }

    fn into_reply(self) -> RespReply {
        RespReply::Array(self.values)
    }
}

/// Most records one SCAN step looks at, whatever its COUNT: the step holds the log's read
/// lock, which writers wait for.
const MAX_SCAN_STEP: usize = 10_000;

/// One SCAN step: the cursor is the log offset the step starts at, so IDs come in the order
/// of their latest writes (README, "Redis protocol"). `0` starts a scan and ends one. With
/// `P` partitions the scan goes through them in turn, and the cursor `offset · P + p`
/// says where in which (docs/FORMAT.md, "Partitions"): at `P = 1` it is the offset.
fn scan_step(shared: &Shared, scan: Scan<'_>) -> Outcome<RespReply> {
    let done = |ids: Vec<RespReply>| RespReply::Array(vec![RespReply::Bulk(b"0".to_vec()), RespReply::Array(ids)]);
    if scan.other_type {
        return Outcome::reply(done(Vec::new()));
    }
    let count = u64::from(shared.partitions.count());
    let slot = shared.partitions.get((scan.cursor % count) as u32);
    let mut ids = Vec::new();
    let truncations = slot.log.truncations();
    let step = slot.log.scan_ids(scan.cursor / count, scan.count.min(MAX_SCAN_STEP), |id| {
        if scan.pattern.is_none_or(|pattern| glob::matches(pattern, id, false)) {
            ids.push(RespReply::Bulk(id.to_vec()));
        }
    });
    match step {
        Ok((next, newest)) => {
            let next = match next {
                Some(next) => Some(next.saturating_mul(count) + u64::from(slot.partition)),
                // This partition is done: the next one starts at its beginning.
                None => Some(u64::from(slot.partition) + 1).filter(|&next| next < count),
            };
            let cursor = next.map_or_else(|| b"0".to_vec(), |next| next.to_string().into_bytes());
            let reply = RespReply::Array(vec![RespReply::Bulk(cursor), RespReply::Array(ids)]);
            let read = newest.map(|offset| Mark::new(slot.partition, truncations, offset));
            Outcome { read: read.into(), ..Outcome::reply(reply) }
        }
        Err(err) => Outcome::reply(storage_failure(&err).into()),
    }
}

/// KEYS: every live ID matching `pattern`, read at one instant per partition (writers wait
/// meanwhile, as in Redis; README says to prefer SCAN). Refused once the reply would pass
/// the per-reply bound, like MGET.
fn keys(shared: &Shared, pattern: &[u8]) -> Outcome<RespReply> {
    let limit = shared.config.max_reply_bytes();
    let mut ids = Vec::new();
    let mut bytes = 0usize;
    let mut read = Marks::default();
    let listed = shared.partitions.iter().try_for_each(|slot| {
        let truncations = slot.log.truncations();
        slot.log.for_each_live(|id, _| {
            if glob::matches(pattern, id, false) {
                bytes = bytes.saturating_add(id.len() + 16);
                if bytes > limit {
                    return Err(KeysError::TooLarge);
                }
                ids.push(RespReply::Bulk(id.to_vec()));
            }
            Ok(())
        })?;
        // Every ID listed lies below the log's end now: the reply waits until that is
        // committed.
        read.merge(&newest_of(slot, truncations).into());
        Ok(())
    });
    match listed {
        Ok(()) => Outcome { read, ..Outcome::reply(RespReply::Array(ids)) },
        Err(KeysError::TooLarge) => Outcome::reply(RespReply::error(format_args!(
            "reply too large (more than {limit} bytes of IDs match); use SCAN with MATCH instead"
        ))),
        Err(KeysError::Storage(err)) => Outcome::reply(storage_failure(&err).into()),
    }
}

enum KeysError {
    TooLarge,
    Storage(crate::storage::StorageError),
}

impl From<crate::storage::StorageError> for KeysError {
    fn from(err: crate::storage::StorageError) -> Self {
        KeysError::Storage(err)
    }
}

/// The `INFO` text: `# Section` headers and `key:value` lines, CRLF-terminated, with the
/// numbers STATS reports.
fn info(shared: &Shared, sections: Args<'_>) -> String {
    let s = Snapshot::take(shared, false);
    let wanted = |name: &str| {
        sections.is_empty()
            || sections.iter().any(|asked| {
                [name, "all", "everything", "default"].iter().any(|known| asked.eq_ignore_ascii_case(known.as_bytes()))
            })
    };
    let opt = |offset: Option<u64>| offset.map_or_else(|| "none".to_string(), |o| o.to_string());
    let mut text = String::new();
    let mut section = |name: &str, lines: &[(&str, String)]| {
        if wanted(name) {
            if !text.is_empty() {
                text.push_str("\r\n");
            }
            let _ = write!(text, "# {}{}\r\n", name[..1].to_uppercase(), &name[1..]);
            for (key, value) in lines {
                let _ = write!(text, "{key}:{value}\r\n");
            }
        }
    };
    section(
        "server",
        &[
            ("msglog_version", env!("CARGO_PKG_VERSION").to_string()),
            ("redis_mode", "standalone".to_string()),
            ("node_id", s.node_id.clone()),
            ("process_id", std::process::id().to_string()),
            ("uptime_in_seconds", shared.metrics.started.elapsed().as_secs().to_string()),
            ("fsync", fsync_name(shared.config.fsync)),
        ],
    );
    section("clients", &[("connected_clients", s.connections.to_string())]);
    section(
        "stats",
        &[
            ("records", s.records.to_string()),
            ("ids", s.ids.to_string()),
            ("segments", s.segments.to_string()),
            ("bytes", s.bytes.to_string()),
            ("last_offset", opt(s.last_offset)),
            ("durable_offset", opt(s.durable_offset)),
            ("fsyncs", s.fsyncs.to_string()),
            ("sets", s.sets.to_string()),
            ("gets", s.gets.to_string()),
            ("set_per_sec", format!("{:.0}", s.set_per_sec)),
            ("get_per_sec", format!("{:.0}", s.get_per_sec)),
        ],
    );
    section("compaction", &s.info_compaction());
    let replication = s.info_replication();
    section("replication", &replication.iter().map(|(k, v)| (k.as_str(), v.clone())).collect::<Vec<_>>());
    section("keyspace", &[("db0", format!("keys={},expires=0,avg_ttl=0", s.ids))]);
    text
}

fn fsync_name(policy: FsyncPolicy) -> String {
    match policy {
        FsyncPolicy::Always => "always".to_string(),
        FsyncPolicy::Interval(every) => format!("interval={}", every.as_millis()),
        FsyncPolicy::Never => "never".to_string(),
    }
}

/// `CONFIG GET`: the Redis settings that describe msglog, for tools that check them
/// (redis-benchmark asks for `save` and `appendonly`). Every write goes to the log, so
/// `appendonly` is always `yes`; `appendfsync` is the nearest Redis word for `--fsync`.
fn config_get(shared: &Shared, patterns: Args<'_>) -> RespReply {
    let appendfsync = match shared.config.fsync {
        FsyncPolicy::Always => "always",
        FsyncPolicy::Interval(_) => "everysec",
        FsyncPolicy::Never => "no",
    };
    let settings = [("appendfsync", appendfsync), ("appendonly", "yes"), ("databases", "1"), ("save", "")];
    let mut pairs = Vec::new();
    for (name, value) in settings {
        if patterns.iter().any(|pattern| glob_matches(pattern, name.as_bytes())) {
            pairs.push(RespReply::Bulk(name.as_bytes().to_vec()));
            pairs.push(RespReply::Bulk(value.as_bytes().to_vec()));
        }
    }
    RespReply::Array(pairs)
}

/// CONFIG GET's patterns: Redis's globs, ignoring case.
fn glob_matches(pattern: &[u8], name: &[u8]) -> bool {
    glob::matches(pattern, name, true)
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::glob_matches;

    #[test]
    fn config_patterns_are_case_insensitive_globs() {
        assert!(glob_matches(b"save", b"save"));
        assert!(glob_matches(b"SAVE", b"save"));
        assert!(glob_matches(b"*", b"appendonly"));
        assert!(glob_matches(b"append*", b"appendfsync"));
        assert!(glob_matches(b"s?ve", b"save"));
        assert!(!glob_matches(b"save", b"saves"));
        assert!(!glob_matches(b"x*", b"save"));
        assert!(!glob_matches(b"*e*e*", b"appendonly"));
        assert!(glob_matches(b"*p*n*", b"appendonly"));
        assert!(!glob_matches(&[b'*'; 10_000].iter().chain(b"x").copied().collect::<Vec<u8>>(), b"appendfsync"));
    }
}
