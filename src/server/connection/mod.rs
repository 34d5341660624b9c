//! One client connection: read requests, execute them, and answer in order.
//!
//! The first byte decides the protocol for the connection's whole life: `*` is RESP (what
//! every Redis client sends first; its per-connection state is a [`Session`]), anything
//! else the text protocol. Both share everything
//! below the framing: [`execute`], batching, durability and error mapping.
//!
//! Replies are collected per read ("batch") and written together. Before a batch holding
//! writes is answered, the connection waits once for `sync_through` the batch's highest
//! offset in each partition it wrote to, so `OK` means durable under the fsync policy.
//! With `--fsync always` many connections wait at once and the engine serves them with one
//! shared fsync (group commit).
//! A batch holding GETs waits the same way (without the followers) for the newest record it
//! shows, so a client never reads a message that a crash could take back.
//!
//! Memory: a request is bounded by the framing limits, replies are written out every
//! `FLUSH_AT_BYTES` (and a client that does not read stops the connection from reading
//! more), and what the buffers hold beyond a small allowance is reserved from the budget
//! all connections share; the connection that would pass it is told so and closed.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tracing::Instrument;

use super::Shared;
use super::budget::Reservation;
use super::execute::{Outcome, execute_line};
use super::forward::ForwardDialect;
use super::marks::Marks;
use super::metrics::command_label;
use super::session::Session;
use super::shutdown::Shutdown;
use crate::protocol::resp::{RespCommand, RespLimits, RespParser, RespReply, opens_resp};
use crate::protocol::{Frame, LineFramer, ProtocolError, Reply};

mod answer;
mod forwarding;
mod handoff;
mod resolve;
mod split;
mod stream;
mod waits;

use answer::Answer;
pub(crate) use forwarding::Diversion;
use forwarding::{Diverter, Plan};
use handoff::{Handoff, handed_back};
pub(crate) use stream::ClientStream;
pub(crate) use waits::Failures;

/// Bytes requested from the socket per read.
const READ_CHUNK: usize = 16 * 1024;
/// Replies buffered beyond this are written out mid-batch, so pipelined GETs of large
/// messages do not pile up in memory.
const FLUSH_AT_BYTES: usize = 1024 * 1024;
/// Buffers that grew past this (a large message) are given back once empty, so an idle
/// connection stays within its free allowance of the buffer budget.
const KEEP_CAPACITY: usize = super::budget::FREE_ALLOWANCE / 2;
/// During shutdown, how long a client may take to accept the replies it is owed.
const SHUTDOWN_WRITE_GRACE: Duration = Duration::from_secs(5);
/// After a RESP protocol error, how long to read and drop what the client still sends, so
/// the close is a FIN after our error reply rather than a reset that could destroy it.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// How this connection frames requests, decided by its first byte.
enum Dialect {
    Undecided,
    Text(LineFramer),
    Resp(RespParser, Box<Session>),
}

/// A reply whose request is done, waiting to be written.
struct Pending {
    answer: Answer,
    /// It acknowledges a write, so it becomes the commit's error if the commit fails.
    acknowledges_write: bool,
    /// It shows a record, so it becomes a storage failure if that record cannot be synced.
    shows_record: bool,
    /// The metrics label of its command.
    command: &'static str,
    /// When the request was read; only taken when metrics are recorded.
    started: Option<Instant>,
}

enum Flow {
    Continue,
    Close,
    /// The buffers would pass the shared budget.
    OverBudget,
}

const OUT_OF_MEMORY: &str = "server is out of memory for buffered requests; closing";

pub(crate) struct Connection {
    shared: Arc<Shared>,
    stream: ClientStream,
    input: BytesMut,
    output: BytesMut,
    dialect: Dialect,
    /// Text protocol: a password matched, or none is configured (RESP keeps its own).
    authenticated: bool,
    pending: Vec<Pending>,
    pending_bytes: usize,
    /// Highest offset per partition appended by this batch and not yet synced.
    unsynced: Marks,
    /// Highest offset per partition this batch's replies show (GET, MGET), to be durable
    /// before them.
    unsynced_read: Marks,
    reservation: Reservation,
    /// Present on a node that may forward: sends data commands to their partitions' leaders.
    diverter: Option<Diverter>,
    /// The next request must wait until the held ones before it are resolved: the batch so
    /// far is flushed first.
    flush_first: bool,
    shutdown: Shutdown,
    /// Present when the commit thread may write this connection's replies (plain TCP,
    /// `--fsync always`).
    handoff: Option<Arc<Handoff>>,
    _permit: OwnedSemaphorePermit,
    /// Last, so that it is dropped after `shared`: the server treats the channel closing as
    /// "every connection is gone", and then closes the log.
    _shutdown_complete: mpsc::Sender<()>,
}

impl Connection {
    pub(crate) fn new(
        shared: Arc<Shared>,
        stream: ClientStream,
        permit: OwnedSemaphorePermit,
        shutdown: Shutdown,
        shutdown_complete: mpsc::Sender<()>,
    ) -> Connection {
        shared.metrics.connections.fetch_add(1, Ordering::Relaxed);
        if let Some(metrics) = &shared.config.metrics {
            metrics.connection_opened();
        }
        let reservation = Reservation::new(Arc::clone(&shared.budget));
        let authenticated = shared.config.password.is_none();
        let diverter = shared.forwarding.as_ref().map(|forwarding| forwarding.diverter());
        // Per-command metrics time each reply's write, which the commit thread does not.
        let handoff = match &stream {
            ClientStream::Plain(tcp)
                if handoff::max_handed_replies() > 0
                    && !crate::server::loops::on_loop()
                    && shared.first().commits.is_some()
                    && shared.config.metrics.is_none() =>
            {
                Some(Arc::new(Handoff::new(tcp.as_raw_fd())))
            }
            _ => None,
        };
        Connection {
            shared,
            stream,
            input: BytesMut::new(),
            output: BytesMut::new(),
            dialect: Dialect::Undecided,
            authenticated,
            pending: Vec::new(),
            pending_bytes: 0,
            unsynced: Marks::default(),
            unsynced_read: Marks::default(),
            reservation,
            diverter,
            flush_first: false,
            shutdown,
            handoff,
            _permit: permit,
            _shutdown_complete: shutdown_complete,
        }
    }

    /// Serves the client until it leaves, sends QUIT, or the server shuts down.
    pub(crate) async fn run(mut self) {
        // Every line logged on behalf of this client says who it is.
        let peer = self.stream.peer_addr().map_or_else(|_| "unknown".to_string(), |addr| addr.to_string());
        let span = tracing::info_span!("connection", %peer);
        async move {
            if let Err(err) = self.serve().await {
                tracing::debug!(%err, "connection ended with an error");
            }
        }
        .instrument(span)
        .await
    }

    async fn serve(&mut self) -> io::Result<()> {
        while !self.shutdown.is_shutdown() {
            self.input.reserve(READ_CHUNK);
            if !self.within_budget() {
                return self.close_over_budget().await;
            }
            self.write_handed_back().await?;
            let read = tokio::select! {
                read = self.stream.read_buf(&mut self.input) => read?,
                _ = self.shutdown.recv() => break,
                _ = handed_back(self.handoff.as_deref()) => continue,
            };
            // A clean EOF; bytes of an unfinished last line are dropped, as it never ended.
            if read == 0 {
                break;
            }
            crate::server::loops::read_done();
            match self.handle_buffered_requests().await? {
                Flow::Continue => {}
                Flow::Close => {
                    self.drain_handoff().await?;
                    self.stream.shutdown().await?;
                    if let Dialect::Resp(..) = self.dialect {
                        self.linger().await;
                    }
                    break;
                }
                Flow::OverBudget => return self.close_over_budget().await,
            }
            release_if_large(&mut self.input);
            // Giving back never fails.
            self.within_budget();
        }
        // The client may have sent its last requests and shut its side: still owed.
        self.drain_handoff().await
    }

    /// Bytes this connection's buffers hold: `capacity`, not `len`, as that is the memory.
    fn buffered(&self) -> usize {
        let queued = match &self.dialect {
            Dialect::Resp(parser, session) => parser.held_bytes() + session.queued_bytes(),
            _ => 0,
        };
        self.input.capacity() + self.output.capacity() + self.pending_bytes + queued
    }

    /// Sizes the reservation to the buffers; false if the shared budget cannot cover them.
    fn within_budget(&mut self) -> bool {
        let buffered = self.buffered();
        self.reservation.cover(buffered).is_ok()
    }

    /// Drops everything buffered (replies not yet sent included: their requests are
    /// answered by the close, as after a network failure), tells the client why, and ends
    /// the connection.
    async fn close_over_budget(&mut self) -> io::Result<()> {
        tracing::warn!(
            buffered = self.buffered(),
            limit = self.shared.config.max_buffer_bytes,
            "closing a connection whose buffers would pass the server's memory budget"
        );
        self.input = BytesMut::new();
        self.output = BytesMut::new();
        self.pending.clear();
        self.pending_bytes = 0;
        self.unsynced = Marks::default();
        self.unsynced_read = Marks::default();
        self.within_budget();
        self.drain_handoff().await?;
        match self.dialect {
            Dialect::Resp(_, ref session) => {
                RespReply::from(Reply::error(OUT_OF_MEMORY)).encode(&mut self.output, session.protocol())
            }
            _ => Reply::error(OUT_OF_MEMORY).encode_text(&mut self.output),
        }
        self.write_output().await?;
        self.stream.shutdown().await?;
        self.linger().await;
        Ok(())
    }

    /// Executes every complete request in the input buffer and writes their replies.
    async fn handle_buffered_requests(&mut self) -> io::Result<Flow> {
        if let (Dialect::Undecided, Some(&first)) = (&self.dialect, self.input.first()) {
            let max_message_bytes = self.shared.config.max_message_bytes;
            self.dialect = match opens_resp(first) {
                true => {
                    let (peer, local) = (self.stream.peer_addr().ok(), self.stream.local_addr().ok());
                    let session = Session::new(self.shared.clone(), peer, local);
                    Dialect::Resp(RespParser::new(RespLimits::for_max_message(max_message_bytes)), Box::new(session))
                }
                false => Dialect::Text(LineFramer::new(self.shared.config.max_line_bytes())),
            };
        }
        loop {
            let started = self.shared.config.metrics.as_ref().map(|_| Instant::now());
            let Some((outcome, command)) = self.next_outcome() else {
                if std::mem::take(&mut self.flush_first) {
                    if let Flow::OverBudget = self.flush().await? {
                        return Ok(Flow::OverBudget);
                    }
                    continue;
                }
                break;
            };
            let close = outcome.close;
            self.push(outcome, command, started);
            if !self.within_budget() {
                return Ok(Flow::OverBudget);
            }
            if close {
                return Ok(match self.flush().await? {
                    Flow::Continue => Flow::Close,
                    over => over,
                });
            }
            if self.pending_bytes >= FLUSH_AT_BYTES
                && let Flow::OverBudget = self.flush().await?
            {
                return Ok(Flow::OverBudget);
            }
        }
        self.flush().await
    }

    /// Frames and executes the next complete request in the input buffer, if there is one;
    /// with its command's metrics label.
    fn next_outcome(&mut self) -> Option<(Outcome<Answer>, &'static str)> {
        let shared = &self.shared;
        match &mut self.dialect {
            Dialect::Undecided => None,
            Dialect::Text(framer) => {
                let (outcome, label) = match framer.next_frame(&mut self.input)? {
                    Frame::Line(line) => {
                        let label = command_label(line.split(|&b| b == b' ').next().unwrap_or_default());
                        if let Some(diverter) = self.diverter.as_mut().filter(|d| d.active())
                            && self.authenticated
                            && let Some(partition) = shared.partitions.of_line(&line, shared.config.max_message_bytes)
                            && let Plan::Whole = diverter.plan(&[partition])
                        {
                            let diverted = diverter.divert(ForwardDialect::Text, line, vec![partition]);
                            return Some((Outcome::reply(Answer::Diverted(Box::new(diverted))), label));
                        }
                        (execute_line(shared, &mut self.authenticated, &line), label)
                    }
                    Frame::TooLong => {
                        (Outcome::reply(ProtocolError::LineTooLong { max: framer.max_line_bytes() }.into()), "other")
                    }
                };
                Some((outcome.map(Answer::Text), label))
            }
            // Arguments are borrowed from the input buffer while the command runs; the
            // request's bytes are dropped only once its outcome no longer needs them.
            Dialect::Resp(parser, session) => loop {
                let request = match parser.next_request(&self.input) {
                    Ok(Some(request)) => request,
                    Ok(None) => return None,
                    Err(err) => {
                        let reply = Answer::Resp(RespReply::protocol_error(&err), session.protocol());
                        return Some((Outcome::closing(reply), "other"));
                    }
                };
                let len = request.len;
                let label = command_label(request.args.get(0).unwrap_or_default());
                if let Some(diverter) = self.diverter.as_mut().filter(|d| d.active()) {
                    if diverter.holding() && session.transacts_here(shared, request.args) {
                        // Left in the buffer, to be read again once the held are resolved.
                        self.flush_first = true;
                        return None;
                    }
                    if session.forwards(shared, request.args) {
                        let partitions = match RespCommand::parse(request.args, shared.config.max_message_bytes) {
                            Ok(Some(command)) if shared.partitions.count() > 1 => {
                                shared.partitions.of_command(&command)
                            }
                            _ => vec![0],
                        };
                        let dialect = ForwardDialect::resp(session.protocol());
                        let plan = diverter.plan(&partitions);
                        let parts = match plan {
                            Plan::Split => split::parts(shared, request.args),
                            Plan::Here | Plan::Whole => None,
                        };
                        match (plan, parts) {
                            (Plan::Here, _) => {}
                            (_, Some(parts)) => {
                                self.input.advance(len);
                                let protocol = session.protocol();
                                let started = split::start(shared, session, diverter, parts, protocol);
                                let diverted = started.map(|split| Answer::Diverted(Box::new(diverter.split(split))));
                                return Some((diverted, label));
                            }
                            _ => {
                                // The request's own bytes travel on, as a text line's do: no copy.
                                let frame = self.input.split_to(len).freeze();
                                let diverted = diverter.divert(dialect, frame, partitions);
                                return Some((Outcome::reply(Answer::Diverted(Box::new(diverted))), label));
                            }
                        }
                    }
                }
                let outcome = session.handle(shared, request.args, &self.input[..len]);
                self.input.advance(len);
                if session.take_leader_reset()
                    && let Some(diverter) = &mut self.diverter
                {
                    diverter.close_leader_sessions();
                }
                if let Some(outcome) = outcome {
                    let protocol = session.protocol();
                    return Some((outcome.map(|reply| Answer::Resp(reply, protocol)), label));
                }
            },
        }
    }

    fn push(&mut self, outcome: Outcome<Answer>, command: &'static str, started: Option<Instant>) {
        self.unsynced.merge(&outcome.written);
        self.unsynced_read.merge(&outcome.read);
        self.pending_bytes += outcome.reply.encoded_len_hint();
        self.pending.push(Pending {
            answer: outcome.reply,
            acknowledges_write: !outcome.written.is_empty(),
            shows_record: !outcome.read.is_empty(),
            command,
            started,
        });
    }

    /// Makes the batch's writes, and the records its replies show, durable; then writes
    /// every pending reply. The encoded replies are reserved before the write, which may
    /// wait long for a client that does not read.
    async fn flush(&mut self) -> io::Result<Flow> {
        if self.pending.is_empty() {
            return Ok(Flow::Continue);
        }
        self.resolve_diverted().await;
        if self.hand_off() {
            return Ok(Flow::Continue);
        }
        self.drain_handoff().await?;
        let failures = Failures::wait(&self.shared, &self.unsynced.take(), &self.unsynced_read.take()).await;
        let failures = failures.map(|reply: Reply| match self.dialect {
            Dialect::Resp(_, ref session) => Answer::Resp(reply.into(), session.protocol()),
            _ => Answer::Text(reply),
        });
        for pending in self.pending.drain(..) {
            let failure = failures.of(pending.acknowledges_write, pending.shows_record);
            let answer = failure.unwrap_or(&pending.answer);
            answer.encode(&mut self.output);
            if let (Some(metrics), Some(started)) = (&self.shared.config.metrics, pending.started) {
                metrics.command_done(pending.command, answer.outcome(), started.elapsed());
            }
        }
        self.pending_bytes = 0;
        if !self.within_budget() {
            return Ok(Flow::OverBudget);
        }
        self.write_output().await?;
        Ok(Flow::Continue)
    }

    async fn write_output(&mut self) -> io::Result<()> {
        let (stream, output) = (&mut self.stream, &mut self.output);
        // The flush matters for TLS only: a write that found the socket full leaves its last
        // records inside the TLS session until flushed. On TCP it does nothing.
        let write = async move {
            stream.write_all_buf(output).await?;
            stream.flush().await
        };
        tokio::pin!(write);
        let written = tokio::select! {
            written = &mut write => written,
            // Shutting down: still deliver what is owed, but do not wait forever for a
            // client that stopped reading.
            _ = self.shutdown.recv() => match tokio::time::timeout(SHUTDOWN_WRITE_GRACE, write).await {
                Ok(written) => written,
                Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "client stopped reading during shutdown")),
            },
        };
        release_if_large(&mut self.output);
        written
    }

    /// Reads and drops whatever the client still sends, until it closes, the linger time
    /// is up, or the server shuts down.
    async fn linger(&mut self) {
        let stream = &mut self.stream;
        let drain = async move {
            let mut sink = [0u8; 4096];
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        };
        tokio::select! {
            _ = tokio::time::timeout(CLOSE_LINGER, drain) => {}
            _ = self.shutdown.recv() => {}
        }
    }
}

/// Gives back an empty buffer's allocation if it grew past [`KEEP_CAPACITY`]. Once a
/// `BytesMut` has been advanced (a request consumed, replies written), `capacity()` counts
/// only the room after its view, not the allocation: `try_reclaim` asks the allocation, so
/// a large buffer is not kept while the budget counts next to nothing for it.
fn release_if_large(buf: &mut BytesMut) {
    if buf.is_empty() && (buf.capacity() > KEEP_CAPACITY || buf.try_reclaim(KEEP_CAPACITY + 1)) {
        *buf = BytesMut::new();
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(handoff) = &self.handoff {
            handoff.detach();
        }
        self.shared.metrics.connections.fetch_sub(1, Ordering::Relaxed);
        if let Some(metrics) = &self.shared.config.metrics {
            metrics.connection_closed();
        }
    }
}
