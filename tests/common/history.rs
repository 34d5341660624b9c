//! A recorder of client operations against a key-value register (SET/GET), for fault
//! scenarios whose histories are then proved correct by [`super::checker`].
//!
//! Usage, from any thread or tokio task sharing an `Arc<History>`:
//!
//! ```ignore
//! let history = Arc::new(History::new());
//! let value = History::unique_value(client, seq);
//! let id = history.invoke_write(client, "k", &value); // just before sending SET
//! match reply {
//!     Ok(line) if line == b"OK" => history.write_ok(id),
//!     Ok(error) => history.write_failed(id, String::from_utf8_lossy(&error)),
//!     Err(_) => history.write_unknown(id), // connection lost or timed out
//! }
//! let id = history.invoke_read(client, "k");          // just before sending GET
//! history.read_ok(id, Some(value));                    // None for NOT_FOUND
//! // after healing the cluster, one GET per key:
//! history.final_read("k", Some(value));
//! checker::assert_valid(&history.ops());
//! ```
//!
//! Each write must store a value never written before (to any key), so that a read names
//! exactly the write it saw: build values with [`History::unique_value`] or
//! [`History::next_value`]. Record the invocation *before* sending the request and the
//! outcome *after* the reply arrives; a narrower interval than the real one can make a
//! correct server look wrong.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// Index of an operation in its [`History`].
pub type OpId = usize;

/// Who issued an operation; only for reports (a client's ops need not be sequential).
pub type ClientId = usize;

/// Nanoseconds since the [`History`] was created.
pub type Nanos = u64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `SET key value`.
    Write(String),
    /// `GET key` during the scenario.
    Read,
    /// `GET key` after the cluster healed and every client stopped: checked only for
    /// acknowledged writes that went missing (see `checker::check_final_reads`).
    FinalRead,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Invoked, no outcome recorded: a write may or may not have been applied; a read tells
    /// nothing.
    Pending,
    /// The write was acknowledged (`OK`).
    Written,
    /// The write got an error reply: it may still have been applied (a replica may hold it).
    WriteFailed(String),
    /// The write got no answer (connection lost, timeout): it may have been applied.
    WriteUnknown,
    /// The read answered: `None` is `NOT_FOUND`.
    Read(Option<String>),
    /// The read got an error or no answer: it tells nothing and is not checked.
    ReadFailed(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub id: OpId,
    pub client: ClientId,
    pub key: String,
    pub kind: Kind,
    pub invoke: Nanos,
    /// When the outcome was recorded; `None` while pending.
    pub complete: Option<Nanos>,
    pub outcome: Outcome,
}

impl Op {
    /// The value this op writes, if it is a write.
    pub fn written(&self) -> Option<&str> {
        match &self.kind {
            Kind::Write(value) => Some(value),
            _ => None,
        }
    }

    pub fn is_acked_write(&self) -> bool {
        self.written().is_some() && self.outcome == Outcome::Written
    }

    /// A write without an `OK`: it may have taken effect at any time after its invocation.
    pub fn is_maybe_write(&self) -> bool {
        self.written().is_some() && !self.is_acked_write()
    }

    /// What a read (or final read) observed, if it answered: `Some(None)` is `NOT_FOUND`.
    pub fn observed(&self) -> Option<Option<&str>> {
        match (&self.kind, &self.outcome) {
            (Kind::Read | Kind::FinalRead, Outcome::Read(value)) => Some(value.as_deref()),
            _ => None,
        }
    }
}

/// Nanoseconds as milliseconds with microsecond precision: scenario histories span seconds.
pub fn format_nanos(nanos: Nanos) -> String {
    format!("{}.{:06}ms", nanos / 1_000_000, nanos % 1_000_000)
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let complete = self.complete.map_or_else(|| "never".to_string(), format_nanos);
        write!(f, "#{} ", self.id)?;
        if self.kind != Kind::FinalRead {
            write!(f, "client {} ", self.client)?;
        }
        write!(f, "[{} .. {}] ", format_nanos(self.invoke), complete)?;
        match &self.kind {
            Kind::Write(value) => write!(f, "SET {} {value:?}", self.key)?,
            Kind::Read => write!(f, "GET {}", self.key)?,
            Kind::FinalRead => write!(f, "final GET {}", self.key)?,
        }
        match &self.outcome {
            Outcome::Pending => write!(f, " -> no outcome (maybe applied if a write)"),
            Outcome::Written => write!(f, " -> OK"),
            Outcome::WriteFailed(why) => write!(f, " -> failed, maybe applied: {why}"),
            Outcome::WriteUnknown => write!(f, " -> no answer, maybe applied"),
            Outcome::Read(Some(value)) => write!(f, " -> {value:?}"),
            Outcome::Read(None) => write!(f, " -> NOT_FOUND"),
            Outcome::ReadFailed(why) => write!(f, " -> failed: {why}"),
        }
    }
}

/// Tallies for a scenario's report, to show the faults really left ambiguity behind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub acked_writes: usize,
    /// Writes that failed, got no answer, or never completed.
    pub maybe_writes: usize,
    /// Reads that answered (a value or `NOT_FOUND`).
    pub reads: usize,
    /// Reads that failed or never completed: not checked.
    pub failed_reads: usize,
    pub final_reads: usize,
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} acked writes, {} maybe-applied writes, {} answered reads, {} failed reads, {} final reads",
            self.acked_writes, self.maybe_writes, self.reads, self.failed_reads, self.final_reads
        )
    }
}

/// A thread-safe log of operations; share it as `Arc<History>`.
#[derive(Debug)]
pub struct History {
    start: Instant,
    ops: Mutex<Vec<Op>>,
    values: AtomicU64,
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

impl History {
    pub fn new() -> History {
        History { start: Instant::now(), ops: Mutex::new(Vec::new()), values: AtomicU64::new(0) }
    }

    /// A value unique to (`client`, `seq`): unique in the history as long as each client
    /// never repeats a `seq`.
    pub fn unique_value(client: ClientId, seq: u64) -> String {
        format!("c{client}-s{seq}")
    }

    /// A value no other call on this history returns, for clients without their own counter.
    pub fn next_value(&self, client: ClientId) -> String {
        format!("c{client}-n{}", self.values.fetch_add(1, Ordering::Relaxed))
    }

    pub fn invoke_write(&self, client: ClientId, key: &str, value: &str) -> OpId {
        self.invoke(client, key, Kind::Write(value.to_string()))
    }

    pub fn invoke_read(&self, client: ClientId, key: &str) -> OpId {
        self.invoke(client, key, Kind::Read)
    }

    pub fn write_ok(&self, id: OpId) {
        self.complete(id, Outcome::Written);
    }

    /// An error reply: the write may still have been applied.
    pub fn write_failed(&self, id: OpId, why: impl fmt::Display) {
        self.complete(id, Outcome::WriteFailed(why.to_string()));
    }

    /// No reply (connection lost, timeout): the write may have been applied.
    pub fn write_unknown(&self, id: OpId) {
        self.complete(id, Outcome::WriteUnknown);
    }

    /// The read's answer; `None` for `NOT_FOUND`.
    pub fn read_ok(&self, id: OpId, value: Option<String>) {
        self.complete(id, Outcome::Read(value));
    }

    pub fn read_failed(&self, id: OpId, why: impl fmt::Display) {
        self.complete(id, Outcome::ReadFailed(why.to_string()));
    }

    /// Records the answer of a GET made after the cluster healed and clients stopped.
    pub fn final_read(&self, key: &str, value: Option<String>) {
        // Final reads belong to no scenario client.
        let id = self.invoke(usize::MAX, key, Kind::FinalRead);
        self.complete(id, Outcome::Read(value));
    }

    /// A snapshot of every operation so far, in invocation order.
    pub fn ops(&self) -> Vec<Op> {
        self.lock().clone()
    }

    pub fn counts(&self) -> Counts {
        counts(self.lock().iter())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Op>> {
        // A client thread that panicked left whole entries behind; the log is still usable.
        self.ops.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now(&self) -> Nanos {
        self.start.elapsed().as_nanos() as Nanos
    }

    fn invoke(&self, client: ClientId, key: &str, kind: Kind) -> OpId {
        let mut ops = self.lock();
        let id = ops.len();
        // Read the clock under the lock so invocation order and times agree.
        let invoke = self.now();
        ops.push(Op { id, client, key: key.to_string(), kind, invoke, complete: None, outcome: Outcome::Pending });
        id
    }

    fn complete(&self, id: OpId, outcome: Outcome) {
        let mut ops = self.lock();
        let now = self.now();
        let op = ops.get_mut(id).unwrap_or_else(|| panic!("no operation #{id} in this history"));
        let is_write = matches!(op.kind, Kind::Write(_));
        let fits = match &outcome {
            Outcome::Written | Outcome::WriteFailed(_) | Outcome::WriteUnknown => is_write,
            Outcome::Read(_) | Outcome::ReadFailed(_) => !is_write,
            Outcome::Pending => false,
        };
        assert!(fits, "outcome {outcome:?} does not fit operation {op}");
        assert_eq!(op.outcome, Outcome::Pending, "operation completed twice: {op}");
        op.complete = Some(now);
        op.outcome = outcome;
    }
}

/// Tallies over any list of operations (a snapshot, or a history built by hand).
pub fn counts<'a>(ops: impl IntoIterator<Item = &'a Op>) -> Counts {
    let mut counts = Counts::default();
    for op in ops {
        match (&op.kind, &op.outcome) {
            (Kind::Write(_), Outcome::Written) => counts.acked_writes += 1,
            (Kind::Write(_), _) => counts.maybe_writes += 1,
            (Kind::Read, Outcome::ReadFailed(_) | Outcome::Pending) => counts.failed_reads += 1,
            (Kind::Read, _) => counts.reads += 1,
            (Kind::FinalRead, _) => counts.final_reads += 1,
        }
    }
    counts
}
