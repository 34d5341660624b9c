//! Serving loops: client connections run on a few single-threaded runtimes, and each loop
//! makes durable what its connections wait for just before it goes to sleep, the way Redis
//! writes and fsyncs its append-only file in its event loop's "before sleep" step: under
//! `--fsync always` one fsync, under the other policies one write to the OS, per log and
//! round, instead of one per connection.
//!
//! A loop runs every connection that has something to do: each reads its requests, appends
//! them and registers the offset it waits for. Only when none has anything left does the
//! loop sync, once per log for everything registered, and resolve the waits; the woken
//! connections are on the same thread, so they write their replies without a thread
//! switch, and the loop then sleeps until clients send again. Requests that arrive during
//! the fsync share the next one. With more than one loop, one loop's fsync overlaps
//! another's parsing, and the storage engine's group commit lets a sync already in flight
//! cover the other loop's records.
//!
//! A loop that never goes idle (a client that always has more to send) syncs anyway once
//! it has served [`READS_BEFORE_SYNC`] reads while a wait was registered.
//!
//! Everything else (the gRPC service, forwarded streams, timers of the node) stays on the
//! multi-threaded runtime, whose waits under `--fsync always` go through the commit thread
//! (under the other policies they write to the OS inline).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::committer::Stopped;
use crate::storage::{Log, Offset, StorageError};

/// A connection handed to a loop: started there, in the loop's runtime.
type Job = Box<dyn FnOnce() + Send>;

/// The serving loops; connections are spread over them in turn.
pub(crate) struct Loops {
    jobs: Vec<mpsc::UnboundedSender<Job>>,
    threads: Vec<JoinHandle<()>>,
    next: AtomicUsize,
}

/// What a wait registered on a loop hears after the loop's sync.
pub(crate) enum Synced {
    /// The record is durable, or the sync failed with this error.
    Done(Result<(), StorageError>),
    /// The sync succeeded but the record is no longer in the log (a truncation cut it):
    /// the caller waits the general way, for a record at that offset again.
    Cut,
}

struct Waiter {
    log: Arc<Log>,
    offset: Offset,
    /// `None`: a sync asked ahead, which no one awaits.
    done: Option<oneshot::Sender<Synced>>,
}

/// Reads a loop serves while a wait is registered before it syncs without waiting to go
/// idle: a client that always has more to send (a flood of pipelined requests) would
/// otherwise keep the loop busy, and the others' writes unsynced, for as long as it sends.
/// Redis's loop syncs after every pass over the ready clients; one pass over 50 clients at
/// `-P 1` is 50 reads, so this bound does not split those rounds.
const READS_BEFORE_SYNC: u32 = 64;

thread_local! {
    /// `Some` on a loop's thread: the waits its connections registered since its last sync.
    static WAITING: RefCell<Option<Vec<Waiter>>> = const { RefCell::new(None) };
    /// Reads served since the loop's last sync while a wait was registered.
    static READS_WAITED: Cell<u32> = const { Cell::new(0) };
}

/// A connection read requests: on a loop where a wait has been registered for
/// [`READS_BEFORE_SYNC`] reads, the loop syncs now rather than when it next goes idle.
pub(crate) fn read_done() {
    let waits = WAITING.with_borrow(|waiting| waiting.as_ref().is_some_and(|waiting| !waiting.is_empty()));
    if !waits {
        return;
    }
    let reads = READS_WAITED.get() + 1;
    READS_WAITED.set(reads);
    if reads >= READS_BEFORE_SYNC {
        sync_waiting();
    }
}

/// Registers a wait for every record of `log` up to `offset` to be durable, when called
/// on a serving loop: the loop syncs before it next sleeps. `None` elsewhere.
fn sync_before_sleep(log: &Arc<Log>, offset: Offset) -> Option<oneshot::Receiver<Synced>> {
    WAITING.with_borrow_mut(|waiting| {
        let waiting = waiting.as_mut()?;
        let (done, synced) = oneshot::channel();
        waiting.push(Waiter { log: Arc::clone(log), offset, done: Some(done) });
        Some(synced)
    })
}

/// On a serving loop, waits until the loop's sync made `log` durable through `offset` and
/// returns how it went; `None` off the loops, or when the record was cut by a truncation
/// (or the loop is stopping), and the caller waits the general way.
pub(crate) async fn synced(log: &Arc<Log>, offset: Offset) -> Option<Result<(), StorageError>> {
    match sync_before_sleep(log, offset)?.await {
        Ok(Synced::Done(result)) => Some(result),
        Ok(Synced::Cut) | Err(_) => None,
    }
}

/// On a serving loop, has the loop's next sync cover `log` up to `offset` without waiting
/// for it: a batch that waits for several partitions one after another asks for all of
/// them first, so that one round syncs them all and the later waits find them durable.
pub(crate) fn sync_ahead(log: &Arc<Log>, offset: Offset) {
    if log.durable_offset() > offset {
        return;
    }
    WAITING.with_borrow_mut(|waiting| {
        if let Some(waiting) = waiting.as_mut() {
            waiting.push(Waiter { log: Arc::clone(log), offset, done: None });
        }
    });
}

/// Whether this thread is a serving loop's.
pub(crate) fn on_loop() -> bool {
    WAITING.with_borrow(Option::is_some)
}

/// The loop's step before sleep: one sync per log for every registered wait, then each
/// wait resolved. Its connections are woken on this thread, so the runtime runs them
/// instead of sleeping.
fn sync_waiting() {
    READS_WAITED.set(0);
    let waiting = WAITING.with_borrow_mut(|waiting| waiting.as_mut().map(std::mem::take).unwrap_or_default());
    if waiting.is_empty() {
        return;
    }
    let mut logs: Vec<(Arc<Log>, Offset, Option<StorageError>)> = Vec::new();
    for waiter in &waiting {
        match logs.iter_mut().find(|(log, ..)| Arc::ptr_eq(log, &waiter.log)) {
            Some((_, through, _)) => *through = (*through).max(waiter.offset),
            None => logs.push((Arc::clone(&waiter.log), waiter.offset, None)),
        }
    }
    if logs.len() > 1 {
        // Partition logs that share their fsyncs: all of them in the first one's round.
        logs.iter().for_each(|(log, ..)| log.queue_for_sync());
    }
    for (log, through, failure) in &mut logs {
        // A truncation may have cut the log below a wait's offset: sync what is there.
        let Some(end) = log.next_offset().checked_sub(1) else { continue };
        if let Err(err) = log.sync_through((*through).min(end)) {
            *failure = Some(err);
        }
    }
    for waiter in waiting {
        let failure = logs.iter().find(|(log, ..)| Arc::ptr_eq(log, &waiter.log)).and_then(|(.., f)| f.as_ref());
        let synced = match failure {
            _ if waiter.log.durable_offset() > waiter.offset => Synced::Done(Ok(())),
            Some(err) => Synced::Done(Err(Stopped::of(err).error())),
            None => Synced::Cut,
        };
        // A connection that went away no longer listens.
        if let Some(done) = waiter.done {
            let _ = done.send(synced);
        }
    }
}

impl Loops {
    /// Starts `count` loops.
    pub(crate) fn start(count: usize) -> std::io::Result<Loops> {
        let mut loops = Loops { jobs: Vec::with_capacity(count), threads: Vec::new(), next: AtomicUsize::new(0) };
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .on_thread_park(sync_waiting)
                .build()
                .map_err(|e| std::io::Error::new(e.kind(), format!("cannot start serving loop {index}: {e}")))?;
            let (jobs, mut receive) = mpsc::unbounded_channel::<Job>();
            let thread = std::thread::Builder::new().name(format!("msglog-loop-{index}")).spawn(move || {
                WAITING.set(Some(Vec::new()));
                runtime.block_on(async {
                    while let Some(job) = receive.recv().await {
                        job();
                    }
                });
            })?;
            // Pushed at once: a later loop that cannot start stops this one (`Drop`).
            loops.jobs.push(jobs);
            loops.threads.push(thread);
        }
        Ok(loops)
    }

    /// Runs `serve` on the next loop with `stream`, registered with that loop's runtime.
    pub(crate) fn spawn<F, Fut>(&self, stream: std::net::TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.run(Box::new(move || match TcpStream::from_std(stream) {
            Ok(stream) => {
                tokio::spawn(serve(stream));
            }
            Err(error) => tracing::warn!(%error, "cannot serve a connection on its loop"),
        }));
    }

    /// Runs `job` on the next loop, inside its runtime.
    fn run(&self, job: Job) {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.jobs.len();
        if self.jobs[index].send(job).is_err() {
            tracing::error!(loop_index = index, "a serving loop has stopped: connection dropped");
        }
    }

    /// Stops the loops, once their connections are done: a loop drops what it still runs.
    pub(crate) fn stop(self) {
        drop(self);
    }
}

impl Drop for Loops {
    fn drop(&mut self) {
        self.jobs.clear();
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!("a serving loop panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::storage::Config;

    /// Bounds a wait that only a missing before-sleep sync would leave unresolved.
    const DEADLINE: Duration = Duration::from_secs(20);

    /// Runs `task` on a loop of `loops` and returns what it returned.
    fn run_on<T: Send + 'static>(loops: &Loops, task: impl Future<Output = T> + Send + 'static) -> T {
        let (done, result) = std::sync::mpsc::channel();
        loops.run(Box::new(move || {
            tokio::spawn(async move { done.send(task.await).expect("the test waits") });
        }));
        result.recv_timeout(DEADLINE).expect("the task finished")
    }

    #[test]
    fn waits_registered_in_one_round_share_one_fsync_before_the_loop_sleeps() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path(), Config::default()).unwrap());
        let loops = Loops::start(1).unwrap();
        let theirs = Arc::clone(&log);
        let results = run_on(&loops, async move {
            // Three connections' writes, each waiting, all before the loop runs out of work.
            let waits: Vec<_> = (0..3)
                .map(|i| {
                    let offset = theirs.append(format!("id-{i}").as_bytes(), b"message").unwrap();
                    sync_before_sleep(&theirs, offset).expect("registered on a loop")
                })
                .collect();
            let mut results = Vec::new();
            for wait in waits {
                results.push(matches!(tokio::time::timeout(DEADLINE, wait).await, Ok(Ok(Synced::Done(Ok(()))))));
            }
            results
        });
        assert_eq!(results, [true, true, true], "every wait resolved by the loop's sync");
        assert_eq!(log.durable_offset(), 3);
        assert_eq!(log.fsync_stats().fsyncs, 1, "one fsync, before the loop slept, for the three waits");
        loops.stop();
    }

    #[test]
    fn a_sync_asked_ahead_joins_the_round_of_the_wait_that_follows() {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let logs: Vec<Arc<Log>> =
            dirs.iter().map(|dir| Arc::new(Log::open(dir.path(), Config::default()).unwrap())).collect();
        let loops = Loops::start(1).unwrap();
        let theirs = logs.clone();
        let durable_after_first_wait = run_on(&loops, async move {
            let first = theirs[0].append(b"a", b"message").unwrap();
            let second = theirs[1].append(b"b", b"message").unwrap();
            sync_ahead(&theirs[1], second);
            let wait = sync_before_sleep(&theirs[0], first).expect("registered on a loop");
            let synced = matches!(tokio::time::timeout(DEADLINE, wait).await, Ok(Ok(Synced::Done(Ok(())))));
            synced && theirs[1].durable_offset() > second
        });
        assert!(durable_after_first_wait, "the second log was synced in the first wait's round");
        loops.stop();
    }

    #[test]
    fn a_loop_that_never_goes_idle_still_syncs_the_waits_of_its_connections() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path(), Config::default()).unwrap());
        let loops = Loops::start(1).unwrap();
        let theirs = Arc::clone(&log);
        let synced = run_on(&loops, async move {
            let offset = theirs.append(b"a", b"message").unwrap();
            let wait = sync_before_sleep(&theirs, offset).expect("registered on a loop");
            // A connection that always has more to read: it never lets the loop park.
            let busy = tokio::spawn(async {
                loop {
                    read_done();
                    tokio::task::yield_now().await;
                }
            });
            let synced = matches!(tokio::time::timeout(DEADLINE, wait).await, Ok(Ok(Synced::Done(Ok(())))));
            busy.abort();
            synced
        });
        assert!(synced, "the wait was synced while the loop stayed busy");
        assert_eq!(log.durable_offset(), 1);
        loops.stop();
    }

    #[test]
    fn a_wait_off_the_loops_is_not_registered() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path(), Config::default()).unwrap());
        assert!(!super::on_loop());
        assert!(sync_before_sleep(&log, 0).is_none(), "no loop would sync it");
        let loops = Loops::start(1).unwrap();
        assert!(run_on(&loops, async { super::on_loop() }));
        loops.stop();
    }

    #[test]
    fn a_wait_for_a_record_a_truncation_cut_is_not_resolved_as_durable() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path(), Config::default()).unwrap());
        log.append(b"kept", b"message").unwrap();
        let cut = log.append(b"cut", b"message").unwrap();
        log.sync().unwrap();
        let loops = Loops::start(1).unwrap();
        let theirs = Arc::clone(&log);
        let synced = run_on(&loops, async move {
            let wait = sync_before_sleep(&theirs, cut).expect("registered on a loop");
            theirs.truncate_to(cut).unwrap();
            match tokio::time::timeout(DEADLINE, wait).await {
                Ok(Ok(Synced::Cut)) => "cut",
                Ok(Ok(Synced::Done(Ok(())))) => "durable",
                _ => "other",
            }
        });
        assert_eq!(synced, "cut");
        loops.stop();
    }
}
