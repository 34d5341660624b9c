//! Forwarding between nodes, in the server's own terms (the gRPC side is
//! `replication::forward`): a node that does not lead hands its clients' data commands to
//! a [`Forwarder`], and the leader runs what arrives through a [`ForwardedStream`].
//!
//! Leader side: one [`ForwardedStream`] per forwarding node. It executes each batch of
//! requests at once and in arrival order, through the same code a client connection uses
//! (`execute_line`, [`Session::handle`]), with one headless, already-authenticated session
//! per forwarded connection; then the batch waits for its commit (the waits a connection
//! makes) while later batches execute, so replies may leave out of order, tagged.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc, oneshot, watch};

use super::budget::Reservation;
use super::connection::{Diversion, Failures};
use super::execute::{Outcome, execute_line};
use super::marks::Marks;
use super::session::Session;
use super::shutdown::Shutdown;
use super::{Route, Shared};
use crate::protocol::Reply;
use crate::protocol::resp::{Protocol, RespCommand, RespLimits, RespParser, RespReply};

/// How a forwarded frame is framed, and how its reply is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardDialect {
    /// One text-protocol line without its line ending.
    Text,
    /// One whole RESP request; the reply in RESP2.
    Resp2,
    /// One whole RESP request; the reply in RESP3.
    Resp3,
}

impl ForwardDialect {
    pub(crate) fn resp(protocol: Protocol) -> ForwardDialect {
        match protocol {
            Protocol::Resp2 => ForwardDialect::Resp2,
            Protocol::Resp3 => ForwardDialect::Resp3,
        }
    }

    /// `reply` encoded as the client of this dialect expects it.
    pub(crate) fn encode(self, reply: Reply, dst: &mut BytesMut) {
        match self {
            ForwardDialect::Text => reply.encode_text(dst),
            ForwardDialect::Resp2 => RespReply::from(reply).encode(dst, Protocol::Resp2),
            ForwardDialect::Resp3 => RespReply::from(reply).encode(dst, Protocol::Resp3),
        }
    }
}

/// One request as it travels to the leader.
#[derive(Debug, Clone)]
pub struct ForwardedRequest {
    /// The client connection on the forwarding node.
    pub connection: u64,
    /// Unique on its stream; the reply carries it back.
    pub seq: u64,
    pub dialect: ForwardDialect,
    pub frame: Bytes,
    /// The connection is gone: drop its session on the leader. Gets no reply.
    pub close: bool,
}

/// The leader's answer to one request: the encoded reply, or why it was not executed.
#[derive(Debug, Clone)]
pub struct ForwardedReply {
    pub connection: u64,
    pub seq: u64,
    pub reply: Result<Bytes, String>,
}

/// Where a forwarded request's reply arrives: the encoded reply, or why there is none. A
/// sender dropped without an answer means the request never left this node.
pub type ReplySlot = oneshot::Sender<Result<Bytes, ForwardFailure>>;

/// Why a forwarded request has no reply from the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardFailure {
    /// It never left this node (the stream could not be opened): it may go again.
    NotSent(String),
    /// The leader did not execute it (it no longer leads).
    Refused(String),
    /// The stream broke after it was sent: it may or may not have been applied.
    Broken(String),
}

/// A request handed to a [`Forwarder`]; the link numbers it (`seq`) as it sends it.
#[derive(Debug)]
pub struct Outgoing {
    pub connection: u64,
    pub dialect: ForwardDialect,
    pub frame: Bytes,
    pub close: bool,
    /// `None` for a `close`, which gets no reply.
    pub reply: Option<ReplySlot>,
}

/// The forwarding node's channel to leaders, by their gRPC address; implemented over gRPC
/// by `replication::ForwardClient`.
pub trait Forwarder: Send + Sync + 'static {
    /// Queues `request` on the link to `grpc_addr`, opening one if needed, without waiting.
    /// `Err` gives the request back: it was not queued (the link is gone).
    fn try_forward(&self, grpc_addr: &str, request: Outgoing) -> Result<(), Outgoing>;
}

/// What a server needs to forward and to be forwarded to; [`Forwarding::default`] does
/// neither.
#[derive(Clone)]
pub struct Forwarding {
    /// Follower side: how requests reach the leader. Used while the cluster's route is not
    /// `Local`; without it, data commands always run here.
    pub forwarder: Option<Arc<dyn Forwarder>>,
    /// Leader side: where the forward service finds this server.
    pub endpoint: Option<ForwardEndpoint>,
    /// How long a request waits for a leader (an election, a leader that cannot be
    /// reached) before it is answered with an error; the ack timeout.
    pub route_wait: Duration,
}

impl std::fmt::Debug for Forwarding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarding")
            .field("forwarder", &self.forwarder.is_some())
            .field("endpoint", &self.endpoint.is_some())
            .field("route_wait", &self.route_wait)
            .finish()
    }
}

/// Default for [`Forwarding::route_wait`].
pub const DEFAULT_ROUTE_WAIT: Duration = Duration::from_secs(5);

impl Default for Forwarding {
    fn default() -> Forwarding {
        Forwarding::new(None, None)
    }
}

impl Forwarding {
    pub fn new(forwarder: Option<Arc<dyn Forwarder>>, endpoint: Option<ForwardEndpoint>) -> Forwarding {
        Forwarding { forwarder, endpoint, route_wait: DEFAULT_ROUTE_WAIT }
    }

    /// What connections use, when this node may forward: it has routes (one per
    /// partition) and a forwarder.
    pub(crate) fn diversion(&self, routes: Option<Vec<watch::Receiver<Route>>>) -> Option<Diversion> {
        let forwarder = Arc::clone(self.forwarder.as_ref()?);
        Some(Diversion::new(routes?, forwarder, self.route_wait))
    }
}

/// The running server a forward service executes on. Created before the server (the gRPC
/// service is built first); the server attaches itself while it runs, and holds only
/// weakly here so that its shutdown is not kept waiting by the service.
#[derive(Clone, Default)]
pub struct ForwardEndpoint(Arc<Mutex<Weak<Serving>>>);

/// What a forwarded stream takes from the running server.
pub(crate) struct Serving {
    pub(crate) shared: Arc<Shared>,
    pub(crate) notify_shutdown: broadcast::Sender<()>,
    pub(crate) shutdown_complete: mpsc::Sender<()>,
}

impl ForwardEndpoint {
    pub fn new() -> ForwardEndpoint {
        ForwardEndpoint::default()
    }

    pub(crate) fn attach(&self, serving: &Arc<Serving>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Arc::downgrade(serving);
    }

    /// A stream's executor on the running server; `None` when no server runs (not yet,
    /// or shutting down).
    pub fn open_stream(&self) -> Option<ForwardedStream> {
        let serving = self.0.lock().unwrap_or_else(|e| e.into_inner()).upgrade()?;
        let shared = Arc::clone(&serving.shared);
        let routes = shared.partitions.routes();
        Some(ForwardedStream {
            reservation: Reservation::new(Arc::clone(&shared.budget)),
            limits: RespLimits::for_max_message(shared.config.max_message_bytes),
            shared,
            routes,
            sessions: HashMap::new(),
            queued_bytes: 0,
            in_flight: Arc::new(Semaphore::new(MAX_BATCHES_IN_FLIGHT)),
            shutdown: Shutdown::new(serving.notify_shutdown.subscribe()),
            shutdown_complete: serving.shutdown_complete.clone(),
        })
    }
}

impl std::fmt::Debug for ForwardEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let attached = self.0.lock().map(|serving| serving.strong_count() > 0).unwrap_or(false);
        f.debug_struct("ForwardEndpoint").field("attached", &attached).finish()
    }
}

/// Batches of one stream executed and still waiting for their commit; beyond it the
/// stream stops reading, and HTTP/2 flow control holds the forwarding node back.
const MAX_BATCHES_IN_FLIGHT: usize = 64;
/// Forwarded connections one stream may keep sessions for (a forwarding node has at most
/// its own connection limit of them).
const MAX_SESSIONS_PER_STREAM: usize = 100_000;

/// The reply to a request whose reply would pass the buffer budget; it did run.
const REPLIES_OVER_BUDGET: &str =
    "server is out of memory for buffered replies; the request may or may not have been applied";

/// The leader's side of one forwarding node's stream.
pub struct ForwardedStream {
    shared: Arc<Shared>,
    /// Each partition's route: a request runs here only while every partition it names
    /// is led here.
    routes: Option<Vec<watch::Receiver<Route>>>,
    /// One per forwarded RESP connection: protocol state and an open MULTI.
    sessions: HashMap<u64, Box<Session>>,
    /// What the sessions' open transactions hold, charged to the server's buffer budget.
    queued_bytes: usize,
    reservation: Reservation,
    limits: RespLimits,
    in_flight: Arc<Semaphore>,
    shutdown: Shutdown,
    /// Held by every task of this stream: the server's shutdown waits for them.
    shutdown_complete: mpsc::Sender<()>,
}

/// One executed request waiting for its batch's commit.
struct Executed {
    connection: u64,
    seq: u64,
    dialect: ForwardDialect,
    reply: Result<Bytes, String>,
    acknowledges_write: bool,
    shows_record: bool,
}

impl ForwardedStream {
    /// Resolves when the server shuts down: the stream stops taking requests.
    pub async fn shutting_down(&mut self) {
        self.shutdown.recv().await
    }

    /// Executes `requests` now, in order, and returns their replies' future: it resolves
    /// once their writes (and the records they show) are committed. Waits first while too
    /// many earlier batches are still waiting for theirs.
    pub async fn execute(
        &mut self,
        requests: Vec<ForwardedRequest>,
    ) -> impl Future<Output = Vec<ForwardedReply>> + Send + 'static {
        let permit = Arc::clone(&self.in_flight).acquire_owned().await.ok();
        let mut encoded = BytesMut::new();
        // The batch's replies are held until its commit: charged to the buffer budget.
        let mut held = Reservation::new(Arc::clone(&self.shared.budget));
        let mut held_bytes = 0;
        let (mut written, mut read) = (Marks::default(), Marks::default());
        let mut executed = Vec::with_capacity(requests.len());
        for request in requests {
            if request.close {
                self.close(request.connection);
                continue;
            }
            let done = match self.not_leading(&request) {
                Some(why) => Executed::refused(&request, why),
                None => {
                    let outcome = self.run(&request);
                    written.merge(&outcome.written);
                    read.merge(&outcome.read);
                    outcome.reply.encode(request.dialect, &mut encoded);
                    if held.cover(held_bytes + encoded.len()).is_err() {
                        encoded.clear();
                        request.dialect.encode(Reply::error(REPLIES_OVER_BUDGET), &mut encoded);
                    }
                    held_bytes += encoded.len();
                    Executed {
                        connection: request.connection,
                        seq: request.seq,
                        dialect: request.dialect,
                        reply: Ok(encoded.split().freeze()),
                        acknowledges_write: !outcome.written.is_empty(),
                        shows_record: !outcome.read.is_empty(),
                    }
                }
            };
            executed.push(done);
        }
        let shared = Arc::clone(&self.shared);
        let complete = self.shutdown_complete.clone();
        committed(shared, executed, written, read, (permit, held, complete))
    }

    /// Why this node must not execute `request` now, if it must not: a partition it names
    /// is led elsewhere.
    fn not_leading(&self, request: &ForwardedRequest) -> Option<String> {
        let routes = self.routes.as_ref()?;
        let node = &self.shared.config.node_id;
        let partitions = match routes.len() {
            1 => vec![0],
            _ => self.partitions_of(request),
        };
        partitions.into_iter().find_map(|partition| {
            // At P = 1 the words are as they were before partitions had routes of their own.
            let of = if routes.len() == 1 { String::new() } else { format!(" partition {partition}") };
            match &*routes[partition as usize].borrow() {
                Route::Local => None,
                Route::Forward { leader_id, .. } => {
                    Some(format!("{node} no longer leads{of} (the leader is {leader_id})"))
                }
                Route::Electing => Some(format!("{node} no longer leads{of} (an election is under way)")),
            }
        })
    }

    /// The partitions a forwarded request names: its keys', as the forwarding node found.
    fn partitions_of(&self, request: &ForwardedRequest) -> Vec<u32> {
        let shared = &self.shared;
        if request.dialect == ForwardDialect::Text {
            return shared.partitions.of_line(&request.frame, shared.config.max_message_bytes).into_iter().collect();
        }
        let mut parser = RespParser::new(self.limits);
        match parser.next_request(&request.frame) {
            Ok(Some(parsed)) => match RespCommand::parse(parsed.args, shared.config.max_message_bytes) {
                Ok(Some(command)) => shared.partitions.of_command(&command),
                _ => Vec::new(),
            },
            _ => Vec::new(),
        }
    }

    fn close(&mut self, connection: u64) {
        if let Some(session) = self.sessions.remove(&connection) {
            self.queued_bytes -= session.queued_bytes();
            let _ = self.reservation.cover(self.queued_bytes);
        }
    }

    /// Runs one request through the code a client connection would.
    fn run(&mut self, request: &ForwardedRequest) -> Outcome<Encodable> {
        let shared = &self.shared;
        let protocol = match request.dialect {
            ForwardDialect::Text => {
                // Authentication happened on the node the client talks to.
                return execute_line(shared, &mut true, &request.frame).map(Encodable::Neutral);
            }
            ForwardDialect::Resp2 => Protocol::Resp2,
            ForwardDialect::Resp3 => Protocol::Resp3,
        };
        let mut parser = RespParser::new(self.limits);
        let parsed = match parser.next_request(&request.frame) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => {
                return Outcome::reply(Encodable::Resp(RespReply::error("incomplete forwarded request"), protocol));
            }
            Err(err) => return Outcome::reply(Encodable::Resp(RespReply::protocol_error(&err), protocol)),
        };
        if !self.sessions.contains_key(&request.connection) && self.sessions.len() >= MAX_SESSIONS_PER_STREAM {
            let why = format!("too many forwarded connections (limit {MAX_SESSIONS_PER_STREAM})");
            return Outcome::reply(Encodable::Resp(RespReply::error(why), protocol));
        }
        let session =
            self.sessions.entry(request.connection).or_insert_with(|| Box::new(Session::headless(Arc::clone(shared))));
        let before = session.queued_bytes();
        let outcome = session.handle(shared, parsed.args, &request.frame[..parsed.len]);
        let after = session.queued_bytes();
        self.queued_bytes = self.queued_bytes + after - before;
        if self.reservation.cover(self.queued_bytes).is_err() {
            // The transaction that would pass the budget is dropped, as a client
            // connection over it would be closed.
            self.close(request.connection);
            let why = "server is out of memory for buffered requests; transaction discarded";
            return Outcome::reply(Encodable::Resp(RespReply::error(why), protocol));
        }
        match outcome {
            Some(outcome) => outcome.map(|reply| Encodable::Resp(reply, protocol)),
            None => Outcome::reply(Encodable::Nothing),
        }
    }
}

/// A reply before encoding: the neutral one, a RESP one, or none (an empty request).
pub(crate) enum Encodable {
    Neutral(Reply),
    Resp(RespReply, Protocol),
    Nothing,
}

impl Encodable {
    fn encode(self, dialect: ForwardDialect, dst: &mut BytesMut) {
        match self {
            Encodable::Neutral(reply) => dialect.encode(reply, dst),
            Encodable::Resp(reply, protocol) => reply.encode(dst, protocol),
            Encodable::Nothing => {}
        }
    }
}

impl Executed {
    fn refused(request: &ForwardedRequest, why: String) -> Executed {
        Executed {
            connection: request.connection,
            seq: request.seq,
            dialect: request.dialect,
            reply: Err(why),
            acknowledges_write: false,
            shows_record: false,
        }
    }
}

/// The batch's replies once its commit is done; a failed commit replaces the replies it
/// concerns, exactly as on a client connection.
async fn committed(
    shared: Arc<Shared>,
    executed: Vec<Executed>,
    written: Marks,
    read: Marks,
    // Given back once the replies are built.
    _held: (Option<OwnedSemaphorePermit>, Reservation, mpsc::Sender<()>),
) -> Vec<ForwardedReply> {
    let failures = Failures::wait(&shared, &written, &read).await;
    let mut encoded = BytesMut::new();
    executed
        .into_iter()
        .map(|done| {
            let reply = match failures.of(done.acknowledges_write, done.shows_record) {
                Some(failure) => {
                    done.dialect.encode(failure.clone(), &mut encoded);
                    Ok(encoded.split().freeze())
                }
                None => done.reply,
            };
            ForwardedReply { connection: done.connection, seq: done.seq, reply }
        })
        .collect()
}
