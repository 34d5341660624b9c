//! Group commit for `--fsync always`: one thread syncs, connections await the result.
//!
//! A connection that needs offset `o` durable raises the requested watermark and wakes
//! the committer thread, then awaits a `watch` channel. The committer syncs everything
//! appended so far in one `sync_through` and wakes every waiting task at once, which then
//! read the log's durable mark; whatever arrived during that fsync goes into the next.
//! Waiting costs a task wake-up, not an OS thread per connection, so the runtime's two
//! cores keep parsing and appending while an fsync is in flight.
//!
//! A connection may instead hand its replies over ([`CommitHandle::hand_off`]): the
//! committer then gives them to their [`ReplySink`] right after the fsync that covers
//! them, which writes them from this thread, and the connection's task is not woken.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, Thread};

use tokio::sync::watch;

use crate::storage::{Log, Offset, StorageError};

#[derive(Debug, Clone, Default)]
struct Durable {
    /// Syncs done: bumped to wake waiters, which read the log's durable mark.
    syncs: u64,
    /// Why the log stopped syncing, once it has.
    failed: Option<Stopped>,
}

/// Why syncing stopped, kept apart so that each waiter hears the right words: every record
/// a waiter holds was appended before the failure (a failed log takes no appends), so a
/// sync that failed itself was writing that record and names the root cause; a sync
/// refused because the log had failed earlier says it is read-only.
#[derive(Debug, Clone)]
pub(super) enum Stopped {
    Failure(Arc<str>),
    ReadOnly(Arc<str>),
}

impl Stopped {
    /// Why a sync failed, told apart as above.
    pub(super) fn of(err: &StorageError) -> Stopped {
        match err {
            StorageError::Failed(why) => Stopped::ReadOnly(why.as_str().into()),
            err => Stopped::Failure(err.to_string().into()),
        }
    }

    pub(super) fn error(&self) -> StorageError {
        match self {
            Stopped::Failure(why) => StorageError::Failure(why.to_string()),
            Stopped::ReadOnly(why) => StorageError::Failed(why.to_string()),
        }
    }
}

/// Where replies handed over to the committer go once their records are durable.
pub(crate) trait ReplySink: Send + Sync {
    /// Every offset below `durable` of `partition`'s log is durable now; with `failure`, no
    /// more will be, and replies waiting for later offsets of that log get that failure.
    /// A sink may hear of a partition it no longer waits for (it registered for an earlier
    /// batch), and must then release nothing of another partition's.
    fn durable(&self, partition: u32, durable: Offset, failure: Option<&StorageError>);
}

/// Sinks waiting for an offset to become durable.
#[derive(Default)]
struct Handed {
    sinks: Vec<(Offset, Arc<dyn ReplySink>)>,
    stopped: Option<Stopped>,
}

struct Requests {
    /// The partition whose log this committer syncs.
    partition: u32,
    /// One past the highest offset a connection waits for.
    wanted: AtomicU64,
    stop: AtomicBool,
    handed: Mutex<Handed>,
}

impl Requests {
    fn handed(&self) -> std::sync::MutexGuard<'_, Handed> {
        self.handed.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Gives every sink whose offset is below `durable` its replies (all of them, with a
    /// failure). The sinks run outside the lock: they write to sockets.
    fn complete(&self, durable: Offset, failure: Option<&StorageError>, ready: &mut Vec<Arc<dyn ReplySink>>) {
        {
            let mut handed = self.handed();
            if handed.sinks.is_empty() {
                return;
            }
            handed.sinks.retain(|(offset, sink)| {
                let done = *offset < durable || failure.is_some();
                if done {
                    ready.push(Arc::clone(sink));
                }
                !done
            });
        }
        for sink in ready.drain(..) {
            sink.durable(self.partition, durable, failure);
        }
    }
}

/// What connections hold: cheap to share.
pub(crate) struct CommitHandle {
    requests: Arc<Requests>,
    thread: Thread,
    durable: watch::Receiver<Durable>,
    log: Arc<Log>,
}

/// The committer thread; stop it once no connection is left.
pub(crate) struct Committer {
    requests: Arc<Requests>,
    join: JoinHandle<()>,
}

/// Starts the committer of partition `partition`'s `log`.
pub(crate) fn start(partition: u32, log: Arc<Log>) -> std::io::Result<(Committer, CommitHandle)> {
    let requests = Arc::new(Requests {
        partition,
        wanted: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        handed: Mutex::new(Handed::default()),
    });
    let (publish, durable) = watch::channel(Durable::default());
    let theirs = Arc::clone(&requests);
    let theirs_log = Arc::clone(&log);
    let join =
        std::thread::Builder::new().name("msglog-commit".into()).spawn(move || commit_loop(&log, &theirs, &publish))?;
    let handle =
        CommitHandle { requests: Arc::clone(&requests), thread: join.thread().clone(), durable, log: theirs_log };
    Ok((Committer { requests, join }, handle))
}

fn commit_loop(log: &Log, requests: &Requests, publish: &watch::Sender<Durable>) {
    let mut announced = None;
    let mut ready = Vec::new();
    loop {
        // Clamped to the log's end: after a truncation (a follower cutting a divergent
        // tail) a waiter may want an offset the log no longer holds; it waits until records
        // are appended there again and someone's sync covers them.
        let wanted = requests.wanted.load(Ordering::Acquire).min(log.next_offset());
        // Others sync too (a follower's replication loop, `Log::sync`): progress they made
        // is announced here, since a waiter woke this thread and waits for a wake-up.
        let durable = log.durable_offset();
        // Before the wake-ups: these replies are the ones whose tasks stay asleep.
        requests.complete(durable, None, &mut ready);
        if announced != Some(durable) {
            publish.send_modify(|d| d.syncs += 1);
            announced = Some(durable);
        }
        if wanted <= durable {
            if requests.stop.load(Ordering::Acquire) {
                requests.complete(log.durable_offset(), None, &mut ready);
                return;
            }
            // An unpark that raced with the load above makes this return at once.
            std::thread::park();
            continue;
        }
        match log.sync_through(wanted - 1) {
            Ok(()) => publish.send_modify(|d| d.syncs += 1),
            // The log refuses writes from now on; every waiter hears why.
            Err(err) => {
                let stopped = Stopped::of(&err);
                let error = stopped.error();
                requests.handed().stopped = Some(stopped.clone());
                requests.complete(log.durable_offset(), Some(&error), &mut ready);
                publish.send_modify(|d| d.failed = Some(stopped));
                return;
            }
        }
    }
}

impl CommitHandle {
    /// Asks for `sink` to be given its replies once every record up to `offset` is
    /// durable. Fails (and never calls the sink) once the committer has stopped syncing.
    pub(crate) fn hand_off(&self, offset: Offset, sink: Arc<dyn ReplySink>) -> Result<(), StorageError> {
        {
            let mut handed = self.requests.handed();
            if let Some(stopped) = &handed.stopped {
                return Err(stopped.error());
            }
            handed.sinks.push((offset, sink));
        }
        self.requests.wanted.fetch_max(offset + 1, Ordering::AcqRel);
        self.thread.unpark();
        Ok(())
    }

    /// Resolves once every record up to `offset` is durable. The log's own durable mark is
    /// the authority (it goes down when a truncation cuts records away, so a record
    /// appended again at a cut offset waits for its own fsync); the channel only wakes.
    pub(crate) async fn wait(&self, offset: Offset) -> Result<(), StorageError> {
        if self.log.durable_offset() > offset {
            return Ok(());
        }
        if let Some(result) = super::loops::synced(&self.log, offset).await {
            return result;
        }
        self.requests.wanted.fetch_max(offset + 1, Ordering::AcqRel);
        self.thread.unpark();
        let mut durable = self.durable.clone();
        let log = &self.log;
        let state = durable
            .wait_for(|d| log.durable_offset() > offset || d.failed.is_some())
            .await
            .map_err(|_| StorageError::Failed("the commit thread stopped".into()))?;
        if log.durable_offset() > offset {
            return Ok(());
        }
        match &state.failed {
            Some(stopped) => Err(stopped.error()),
            None => Ok(()),
        }
    }
}

impl Committer {
    pub(crate) fn stop(self) {
        self.requests.stop.store(true, Ordering::Release);
        self.join.thread().unpark();
        if self.join.join().is_err() {
            tracing::error!("the commit thread panicked");
        }
    }
}
