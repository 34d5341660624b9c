//! Group commit for `--fsync always`: one thread syncs, connections await the result.
//!
//! A connection that needs offset `o` durable raises the requested watermark and wakes
//! the committer thread, then awaits a `watch` channel. The committer syncs everything
//! appended so far in one `sync_through`, publishes the new durable watermark and wakes
//! every waiting task at once; whatever arrived during that fsync goes into the next.
//! Waiting costs a task wake-up, not an OS thread per connection, so the runtime's two
//! cores keep parsing and appending while an fsync is in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{JoinHandle, Thread};

use tokio::sync::watch;

use crate::storage::{Log, Offset, StorageError};

#[derive(Debug, Clone, Default)]
struct Durable {
    /// Every offset below this is durable.
    next: Offset,
    /// Why the log stopped syncing, once it has.
    failed: Option<Stopped>,
}

/// Why syncing stopped, kept apart so that each waiter hears the right words: every record
/// a waiter holds was appended before the failure (a failed log takes no appends), so a
/// sync that failed itself was writing that record and names the root cause; a sync
/// refused because the log had failed earlier says it is read-only.
#[derive(Debug, Clone)]
enum Stopped {
    Failure(Arc<str>),
    ReadOnly(Arc<str>),
}

struct Requests {
    /// One past the highest offset a connection waits for.
    wanted: AtomicU64,
    stop: AtomicBool,
}

/// What connections hold: cheap to share.
pub(crate) struct CommitHandle {
    requests: Arc<Requests>,
    thread: Thread,
    durable: watch::Receiver<Durable>,
}

/// The committer thread; stop it once no connection is left.
pub(crate) struct Committer {
    requests: Arc<Requests>,
    join: JoinHandle<()>,
}

pub(crate) fn start(log: Arc<Log>) -> std::io::Result<(Committer, CommitHandle)> {
    let requests = Arc::new(Requests { wanted: AtomicU64::new(0), stop: AtomicBool::new(false) });
    let (publish, durable) = watch::channel(Durable::default());
    let theirs = Arc::clone(&requests);
    let join =
        std::thread::Builder::new().name("msglog-commit".into()).spawn(move || commit_loop(&log, &theirs, &publish))?;
    let handle = CommitHandle { requests: Arc::clone(&requests), thread: join.thread().clone(), durable };
    Ok((Committer { requests, join }, handle))
}

fn commit_loop(log: &Log, requests: &Requests, publish: &watch::Sender<Durable>) {
    let mut synced = 0;
    loop {
        let wanted = requests.wanted.load(Ordering::Acquire);
        if wanted <= synced {
            if requests.stop.load(Ordering::Acquire) {
                return;
            }
            // An unpark that raced with the load above makes this return at once.
            std::thread::park();
            continue;
        }
        match log.sync_through(wanted - 1) {
            Ok(()) => publish.send_modify(|d| d.next = d.next.max(wanted)),
            // The log refuses writes from now on; every waiter hears why.
            Err(err) => {
                let stopped = match err {
                    StorageError::Failed(why) => Stopped::ReadOnly(why.into()),
                    err => Stopped::Failure(err.to_string().into()),
                };
                publish.send_modify(|d| d.failed = Some(stopped));
            }
        }
        synced = wanted;
    }
}

impl CommitHandle {
    /// Resolves once every record up to `offset` is durable.
    pub(crate) async fn wait(&self, offset: Offset) -> Result<(), StorageError> {
        self.requests.wanted.fetch_max(offset + 1, Ordering::AcqRel);
        self.thread.unpark();
        let mut durable = self.durable.clone();
        let state = durable
            .wait_for(|d| d.next > offset || d.failed.is_some())
            .await
            .map_err(|_| StorageError::Failed("the commit thread stopped".into()))?;
        match &state.failed {
            Some(Stopped::Failure(why)) if state.next <= offset => Err(StorageError::Failure(why.to_string())),
            Some(Stopped::ReadOnly(why)) if state.next <= offset => Err(StorageError::Failed(why.to_string())),
            _ => Ok(()),
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
