//! Replies written by the commit thread (`--fsync always`, plain TCP, no acknowledgement
//! rule to wait for): a connection hands over a batch whose records are not durable yet,
//! and the commit thread writes it with a non-blocking `send` right after the fsync that
//! covers it. The connection task then only wakes when its client sends again, instead of
//! once more for the commit's notification (docs/BENCHMARKS.md, "`-P 1`, third look").
//!
//! Order per connection: once a batch is handed over, every later batch of the connection
//! goes behind it in the same queue until the queue is empty, and the task writes nothing
//! itself meanwhile. If the socket is full (or the write fails), the commit thread leaves
//! the bytes for the task, which from then on writes everything until the queue drains.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::{Buf, BytesMut};
use tokio::sync::Notify;

use crate::protocol::resp::Protocol;
use crate::server::committer::ReplySink;
use crate::server::execute::storage_failure;
use crate::storage::{Offset, StorageError};

use super::answer::Answer;
use super::{Connection, Dialect};
use crate::server::marks::Marks;

/// Handed-over replies are not covered by the connection's buffer reservation, so only
/// small batches go this way; a batch of large GET replies takes the task's path.
pub(super) const MAX_HANDED_BYTES: usize = 64 * 1024;

/// The most replies a handed batch holds. Writing them costs the commit thread time
/// before its next fsync: with 50 clients at `-P 16` that cost more throughput than the
/// saved wake-ups gave back, while at `-P 1` the handoff wins (docs/BENCHMARKS.md).
const MAX_HANDED_REPLIES: usize = 4;

/// How many replies a batch may hold to be handed to the commit thread (0: never).
/// `MSGLOG_REPLY_FROM_COMMIT` overrides it, so that one binary can be measured both ways.
pub(super) fn max_handed_replies() -> usize {
    static MAX: OnceLock<usize> = OnceLock::new();
    *MAX.get_or_init(|| {
        std::env::var("MSGLOG_REPLY_FROM_COMMIT").ok().and_then(|v| v.parse().ok()).unwrap_or(MAX_HANDED_REPLIES)
    })
}

/// One batch's replies, as the connection would have written them after its wait.
pub(super) struct Batch {
    /// The partition of every record the replies wait for: only the committer of that
    /// partition's log releases the batch, and a connection queues one partition's batches
    /// at a time.
    pub(super) partition: u32,
    /// Every record the replies acknowledge or show is at or below this offset; `None`
    /// when they wait for nothing (they still go out after the batches before them).
    pub(super) through: Option<Offset>,
    /// The highest offset the batch wrote, and the highest its replies show.
    pub(super) written: Option<Offset>,
    pub(super) read: Option<Offset>,
    /// Each reply, whether it acknowledges a write, and whether it shows a record: a
    /// failed sync of those records replaces it, as on the task's path.
    pub(super) replies: Vec<(Answer, bool, bool)>,
    /// The protocol a failure is told in: `None` for the text protocol.
    pub(super) failure_protocol: Option<Protocol>,
}

impl Batch {
    /// Encodes the replies once everything below `durable` is durable (and, with
    /// `failure`, nothing more will be).
    fn encode(self, dst: &mut BytesMut, durable: Offset, failure: Option<&StorageError>) {
        let failure = failure.map(|err| match self.failure_protocol {
            Some(protocol) => Answer::Resp(storage_failure(err).into(), protocol),
            None => Answer::Text(storage_failure(err)),
        });
        let missing = |offset: Option<Offset>| offset.is_some_and(|offset| offset >= durable);
        let (write_failed, read_failed) = (missing(self.written), missing(self.read));
        for (answer, acknowledges_write, shows_record) in &self.replies {
            match &failure {
                Some(failure) if (*acknowledges_write && write_failed) || (*shows_record && read_failed) => {
                    failure.encode(dst)
                }
                _ => answer.encode(dst),
            }
        }
    }
}

#[derive(Default)]
struct State {
    /// The connection's socket, for the commit thread; taken away before it closes, so
    /// the commit thread never writes to a descriptor reused by someone else.
    fd: Option<RawFd>,
    queued: VecDeque<Batch>,
    /// Encoded replies the commit thread could not write: the task writes them, in order.
    unsent: BytesMut,
    /// The commit thread stopped writing for this connection: the task does, until
    /// `queued` is empty.
    task_writes: bool,
    /// The task waits for the queue to drain (before writing a batch itself).
    task_waits: bool,
}

pub(super) struct Handoff {
    state: Mutex<State>,
    /// Wakes the task: bytes for it to write, or the queue ran empty.
    pub(super) wake: Notify,
}

/// What the task does after looking at the queue.
pub(super) enum Turn {
    /// Write these bytes (the commit thread could not).
    Write(BytesMut),
    /// Nothing queued: the task answers for itself again.
    Idle,
    /// Batches are waiting for their fsync.
    Busy,
}

impl Handoff {
    pub(super) fn new(fd: RawFd) -> Handoff {
        Handoff { state: Mutex::new(State { fd: Some(fd), ..State::default() }), wake: Notify::new() }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding it leaves plain data behind, still consistent enough to
        // stop using: the connection fails its next write.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `batch` behind any earlier one; whoever sees its records durable (the
    /// commit thread, or the caller if they are already) calls [`ReplySink::durable`].
    pub(super) fn queue(&self, batch: Batch) {
        self.lock().queued.push_back(batch);
    }

    /// The partition of the batches queued, if any are.
    fn queued_partition(&self) -> Option<u32> {
        self.lock().queued.front().map(|batch| batch.partition)
    }

    /// Whether a batch is queued or bytes are owed: the task must not write by itself.
    pub(super) fn busy(&self) -> bool {
        let state = self.lock();
        !state.queued.is_empty() || state.task_writes
    }

    /// What the task should do now. `Idle` also hands writing back to the commit thread;
    /// `Busy` with `waiting` asks to be woken once the queue is empty.
    pub(super) fn turn(&self, waiting: bool) -> Turn {
        let mut state = self.lock();
        if !state.unsent.is_empty() {
            return Turn::Write(state.unsent.split());
        }
        if state.queued.is_empty() {
            state.task_writes = false;
            state.task_waits = false;
            return Turn::Idle;
        }
        state.task_waits = waiting;
        Turn::Busy
    }

    /// The connection is closing its socket.
    pub(super) fn detach(&self) {
        self.lock().fd = None;
    }
}

impl ReplySink for Handoff {
    fn durable(&self, partition: u32, durable: Offset, failure: Option<&StorageError>) {
        let mut state = self.lock();
        let mut out = BytesMut::new();
        while let Some(batch) = state.queued.front() {
            // Offsets of another partition's log say nothing of this batch (the queue holds
            // one partition's batches at a time, so none after it is this partition's).
            if batch.partition != partition {
                break;
            }
            if batch.through.is_some_and(|through| through >= durable) && failure.is_none() {
                break;
            }
            let batch = state.queued.pop_front().expect("front was just seen");
            batch.encode(&mut out, durable, failure);
        }
        if out.is_empty() {
            return;
        }
        if !state.task_writes
            && state.unsent.is_empty()
            && let Some(fd) = state.fd
        {
            send_now(fd, &mut out);
        }
        if !out.is_empty() {
            state.task_writes = true;
            state.unsent.extend_from_slice(&out);
            self.wake.notify_one();
        } else if state.queued.is_empty() && state.task_waits {
            self.wake.notify_one();
        }
    }
}

/// Writes as much of `out` as the socket takes without blocking; leaves the rest in `out`.
/// An error leaves everything unsent too: the task's own write meets it and ends the
/// connection as it would have.
fn send_now(fd: RawFd, out: &mut BytesMut) {
    while !out.is_empty() {
        // SAFETY: `fd` is the connection's open socket (the connection takes it away
        // under the same lock before closing it); the buffer is valid for `len` bytes.
        let sent = unsafe { libc::send(fd, out.as_ptr().cast(), out.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        match usize::try_from(sent) {
            Ok(n) if n > 0 => out.advance(n),
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => return,
        }
    }
}

impl Connection {
    /// Gives the batch to the commit thread to write after its fsync, when it may; true
    /// if it did. Not with an acknowledgement rule to wait for (the followers' rule), nor
    /// for a batch too large to leave outside the buffer budget, nor a long pipeline, nor
    /// a batch whose records lie in several partitions or in another partition than the
    /// batches queued before it: one committer's fsyncs judge a connection's whole queue.
    pub(super) fn hand_off(&mut self) -> bool {
        let Some(handoff) = &self.handoff else { return false };
        if self.pending_bytes > MAX_HANDED_BYTES || self.pending.len() > max_handed_replies() {
            return false;
        }
        let mut partition = None;
        if self.shared.partitions.count() > 1 {
            partition = handoff.queued_partition();
            for mark in self.unsynced.iter().chain(self.unsynced_read.iter()) {
                match partition {
                    Some(p) if p != mark.partition => return false,
                    _ => partition = Some(mark.partition),
                }
            }
        }
        let partition = partition.unwrap_or(0);
        let slot = self.shared.partitions.get(partition);
        let (written, read) = (self.unsynced.single().map(|m| m.offset), self.unsynced_read.single().map(|m| m.offset));
        let through = written.max(read);
        if let (Some(cluster), Some(offset)) = (&slot.cluster, through)
            && cluster.replicated(offset).is_some()
        {
            return false;
        }
        let durable = slot.log.durable_offset();
        let covered = through.is_none_or(|offset| offset < durable);
        // Nothing to wait for and nothing queued before it: written at once, as always.
        if covered && !handoff.busy() {
            return false;
        }
        let Some(commits) = &slot.commits else { return false };
        if let (Some(cluster), Some(written)) = (&slot.cluster, written) {
            cluster.appended(written + 1);
        }
        let failure_protocol = match &self.dialect {
            Dialect::Resp(_, session) => Some(session.protocol()),
            _ => None,
        };
        let replies = self.pending.drain(..).map(|p| (p.answer, p.acknowledges_write, p.shows_record)).collect();
        self.unsynced = Marks::default();
        self.unsynced_read = Marks::default();
        handoff.queue(Batch { partition, through, written, read, replies, failure_protocol });
        self.pending_bytes = 0;
        let sink: Arc<dyn ReplySink> = handoff.clone();
        match through {
            Some(offset) if !covered => {
                if let Err(err) = commits.hand_off(offset, sink) {
                    handoff.durable(partition, slot.log.durable_offset(), Some(&err));
                }
            }
            _ => handoff.durable(partition, durable, None),
        }
        true
    }

    /// Writes what the commit thread handed back (the socket was full).
    pub(super) async fn write_handed_back(&mut self) -> io::Result<()> {
        let Some(handoff) = self.handoff.clone() else { return Ok(()) };
        while let Turn::Write(bytes) = handoff.turn(false) {
            self.output.extend_from_slice(&bytes);
            self.write_output().await?;
        }
        Ok(())
    }

    /// Waits until every handed-over batch is written, writing what comes back; after
    /// it the task may write by itself.
    pub(super) async fn drain_handoff(&mut self) -> io::Result<()> {
        let Some(handoff) = self.handoff.clone() else { return Ok(()) };
        loop {
            match handoff.turn(true) {
                Turn::Write(bytes) => {
                    self.output.extend_from_slice(&bytes);
                    self.write_output().await?;
                }
                Turn::Idle => return Ok(()),
                Turn::Busy => handoff.wake.notified().await,
            }
        }
    }
}

/// Resolves when the commit thread has something for the task (never without a handoff).
pub(super) async fn handed_back(handoff: Option<&Handoff>) {
    match handoff {
        Some(handoff) => handoff.wake.notified().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::io::{ErrorKind, Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    use super::*;
    use crate::protocol::Reply;

    fn text(replies: &[(Reply, bool, bool)], through: Option<Offset>, written: Option<Offset>) -> Batch {
        let replies = replies.iter().map(|(r, w, s)| (Answer::Text(r.clone()), *w, *s)).collect();
        Batch { partition: 0, through, written, read: None, replies, failure_protocol: None }
    }

    /// What the peer can read without blocking.
    fn received(peer: &mut UnixStream) -> Vec<u8> {
        peer.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match peer.read(&mut buf) {
                Ok(0) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return got,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    #[test]
    fn a_batch_is_written_only_once_its_records_are_durable_and_later_batches_follow_it() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let handoff = Handoff::new(ours.as_raw_fd());
        handoff.queue(text(&[(Reply::Ok, true, false)], Some(5), Some(5)));
        // Waits for nothing, but must not overtake the OK before it.
        handoff.queue(text(&[(Reply::Pong, false, false)], None, None));
        handoff.durable(0, 5, None);
        assert_eq!(received(&mut peer), b"", "offset 5 is not durable below 5");
        assert!(handoff.busy());
        handoff.durable(0, 6, None);
        assert_eq!(received(&mut peer), b"OK\r\nPONG\r\n");
        assert!(matches!(handoff.turn(false), Turn::Idle));
    }

    #[test]
    fn a_failed_sync_replaces_only_the_replies_that_waited_for_it() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let handoff = Handoff::new(ours.as_raw_fd());
        handoff.queue(text(&[(Reply::Ok, true, false), (Reply::Pong, false, false)], Some(3), Some(3)));
        handoff.durable(0, 3, Some(&StorageError::Failure("disk gone".into())));
        let got = String::from_utf8(received(&mut peer)).unwrap();
        assert!(got.starts_with("ERR storage failure: ") && got.contains("disk gone"), "{got}");
        assert!(got.ends_with("\r\nPONG\r\n"), "{got}");
    }

    #[test]
    fn a_full_socket_hands_the_rest_and_every_later_reply_to_the_task() {
        let (mut ours, mut peer) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let filler = [b'x'; 4096];
        let mut filled = 0;
        while ours.write(&filler).is_ok_and(|n| n > 0) {
            filled += 1;
            assert!(filled < 100_000, "the socket never filled");
        }
        let handoff = Handoff::new(ours.as_raw_fd());
        handoff.queue(text(&[(Reply::Ok, true, false)], Some(0), Some(0)));
        handoff.durable(0, 1, None);
        let Turn::Write(first) = handoff.turn(false) else { panic!("the OK was not handed back") };
        assert_eq!(&first[..], b"OK\r\n");
        // Room again; still the task writes until its queue is empty, or replies it has
        // not written yet could be overtaken.
        while !received(&mut peer).is_empty() {}
        handoff.queue(text(&[(Reply::Pong, false, false)], Some(1), None));
        handoff.durable(0, 2, None);
        assert_eq!(received(&mut peer), b"");
        let Turn::Write(second) = handoff.turn(false) else { panic!("the PONG was not handed back") };
        assert_eq!(&second[..], b"PONG\r\n");
        assert!(matches!(handoff.turn(false), Turn::Idle));
        handoff.queue(text(&[(Reply::Ok, true, false)], Some(2), Some(2)));
        handoff.durable(0, 3, None);
        assert_eq!(received(&mut peer), b"OK\r\n", "the commit thread writes again once idle");
    }

    #[test]
    fn another_partitions_sync_releases_nothing() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let handoff = Handoff::new(ours.as_raw_fd());
        let mut batch = text(&[(Reply::Ok, true, false)], Some(5), Some(5));
        batch.partition = 1;
        handoff.queue(batch);
        // A sink registered for an earlier batch of partition 0 hears of partition 0's log.
        handoff.durable(0, 100, None);
        handoff.durable(0, 100, Some(&StorageError::Failure("partition 0's disk".into())));
        assert_eq!(received(&mut peer), b"", "partition 1's write is not durable");
        handoff.durable(1, 6, None);
        assert_eq!(received(&mut peer), b"OK\r\n");
    }

    #[test]
    fn a_detached_connection_is_never_written() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let handoff = Handoff::new(ours.as_raw_fd());
        handoff.queue(text(&[(Reply::Ok, true, false)], Some(0), Some(0)));
        handoff.detach();
        handoff.durable(0, 1, None);
        assert_eq!(received(&mut peer), b"");
    }
}
