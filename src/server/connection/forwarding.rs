//! A connection on a node that does not lead: its data commands go to the leader, and the
//! replies come back into the connection's order.
//!
//! A request is sent at once when the route names a leader; its reply is awaited when the
//! batch is flushed, in order. A request that could not be sent (an election, a leader
//! that cannot be reached) is held, and every data request after it on the connection too,
//! so none overtakes it; at flush it waits for a route, up to the route wait, and then runs
//! wherever the route says.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::protocol::resp::{RespLimits, RespParser};
use crate::protocol::{Command, Reply};

use super::answer::Answer;
use super::waits::Failures;
use super::{Connection, Dialect};
use crate::server::Route;
use crate::server::execute::execute_line;
use crate::server::forward::{ForwardDialect, ForwardFailure, Forwarder, Outgoing};

/// Beyond the route wait, how long a sent request's reply may take: the leader's own
/// commit wait is bounded by its ack timeout, so a reply this late means a stuck link.
const REPLY_GRACE: Duration = Duration::from_secs(10);
/// While no leader can be reached, how often a held request tries again (a route change
/// wakes it sooner).
const RETRY_EVERY: Duration = Duration::from_millis(50);

/// Connection numbers on the forwarding node, unique while it runs.
static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// A forwarding node's routes and link to leaders, shared by its connections.
pub(crate) struct Diversion {
    routes: watch::Receiver<Route>,
    forwarder: Arc<dyn Forwarder>,
    route_wait: Duration,
}

impl Diversion {
    pub(crate) fn new(
        routes: watch::Receiver<Route>,
        forwarder: Arc<dyn Forwarder>,
        route_wait: Duration,
    ) -> Diversion {
        Diversion { routes, forwarder, route_wait }
    }

    pub(crate) fn diverter(&self) -> Diverter {
        Diverter::new(self.routes.clone(), Arc::clone(&self.forwarder), self.route_wait)
    }
}

/// A connection's forwarding state.
pub(crate) struct Diverter {
    id: u64,
    routes: watch::Receiver<Route>,
    forwarder: Arc<dyn Forwarder>,
    route_wait: Duration,
    /// The leader that holds this connection's session, told when the connection ends.
    leader: Option<String>,
    /// A held request is pending in this batch: later data requests are held too.
    holding: bool,
    /// Diverted requests in this batch, to be resolved before it is written.
    diverted: usize,
}

/// A forwarded request whose reply is not written yet.
pub(super) struct Diverted {
    dialect: ForwardDialect,
    frame: Bytes,
    state: State,
}

/// Where a sent request's reply arrives.
type ReplyWait = oneshot::Receiver<Result<Bytes, ForwardFailure>>;

/// Waits are counted from when the batch is flushed, which follows its reading closely.
enum State {
    Sent(ReplyWait),
    Held,
}

impl Diverter {
    fn new(routes: watch::Receiver<Route>, forwarder: Arc<dyn Forwarder>, route_wait: Duration) -> Diverter {
        let id = NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed);
        Diverter { id, routes, forwarder, route_wait, leader: None, holding: false, diverted: 0 }
    }

    /// Whether data commands go elsewhere now; checked per request, so cheap.
    pub(super) fn active(&self) -> bool {
        self.holding || !matches!(*self.routes.borrow(), Route::Local)
    }

    /// Sends `frame` to the leader, or holds it when it cannot be sent now.
    pub(super) fn divert(&mut self, dialect: ForwardDialect, frame: Bytes) -> Diverted {
        self.diverted += 1;
        if !self.holding
            && let Some(reply) = self.try_send(dialect, &frame)
        {
            return Diverted { dialect, frame, state: State::Sent(reply) };
        }
        self.holding = true;
        Diverted { dialect, frame, state: State::Held }
    }

    fn try_send(&mut self, dialect: ForwardDialect, frame: &Bytes) -> Option<ReplyWait> {
        let routes = self.routes.borrow();
        let Route::Forward { grpc_addr, .. } = &*routes else { return None };
        let (tx, rx) = oneshot::channel();
        let request = Outgoing { connection: self.id, dialect, frame: frame.clone(), close: false, reply: Some(tx) };
        self.forwarder.try_forward(grpc_addr, request).ok()?;
        if self.leader.as_deref() != Some(grpc_addr.as_str()) {
            let previous = self.leader.replace(grpc_addr.clone());
            drop(routes);
            // The session on the previous leader is of no further use.
            if let Some(previous) = previous {
                self.close_on(&previous);
            }
        }
        Some(rx)
    }

    /// Drops this connection's session on the leader (a RESET of a forwarded MULTI, or the
    /// connection's end).
    pub(super) fn close_leader_session(&mut self) {
        if let Some(leader) = self.leader.take() {
            self.close_on(&leader);
        }
    }

    fn close_on(&self, leader: &str) {
        let close = Outgoing {
            connection: self.id,
            dialect: ForwardDialect::Text,
            frame: Bytes::new(),
            close: true,
            reply: None,
        };
        let _ = self.forwarder.try_forward(leader, close);
    }
}

impl Drop for Diverter {
    fn drop(&mut self) {
        self.close_leader_session();
    }
}

/// Whether a text request is a data command, which runs where the leader is.
pub(super) fn is_text_data(line: &[u8], max_message_bytes: usize) -> bool {
    matches!(
        Command::parse_line(line, max_message_bytes),
        Ok(Command::Set { .. } | Command::Get { .. } | Command::Del { .. } | Command::Exists { .. })
    )
}

/// The reply a forwarded request gets when the link to the leader broke after sending it.
fn unavailable(why: &str) -> Reply {
    Reply::error(format_args!("leader unavailable: {why}; the request may or may not have been applied"))
}

/// The reply a request gets that is known not to have been applied.
fn not_applied(why: &str) -> Reply {
    Reply::error(format_args!("leader unavailable: {why}; the request was not applied"))
}

impl Connection {
    /// Turns every forwarded reply of the batch into its answer, in order: awaits those on
    /// their way, and sends (or runs here) those held.
    pub(super) async fn resolve_diverted(&mut self) {
        if self.diverter.as_ref().is_none_or(|diverter| diverter.diverted == 0) {
            return;
        }
        for index in 0..self.pending.len() {
            let answer = std::mem::replace(&mut self.pending[index].answer, Answer::Relayed(Bytes::new()));
            self.pending[index].answer = match answer {
                Answer::Diverted(diverted) => self.resolve(*diverted).await,
                answer => answer,
            };
        }
        if let Some(diverter) = &mut self.diverter {
            diverter.holding = false;
            diverter.diverted = 0;
        }
    }

    async fn resolve(&mut self, diverted: Diverted) -> Answer {
        let Diverted { dialect, frame, state } = diverted;
        let route_wait = self.diverter.as_ref().map_or(Duration::ZERO, |d| d.route_wait);
        let mut why = match state {
            State::Sent(reply) => match reply_to(reply, dialect, route_wait).await {
                Ok(answer) => return answer,
                // Never sent: it may go again, to wherever the route says now.
                Err(why) => why.unwrap_or_else(|| "the link to the leader closed".to_string()),
            },
            State::Held => "no leader is known (an election is under way)".to_string(),
        };
        let mut deadline = Instant::now() + route_wait;
        while let Some(diverter) = self.diverter.as_mut() {
            let route = diverter.routes.borrow_and_update().clone();
            match route {
                Route::Local => return self.run_here(dialect, &frame).await,
                Route::Forward { grpc_addr, .. } => {
                    let sent = match diverter.try_send(dialect, &frame) {
                        Some(reply) => reply_to(reply, dialect, route_wait).await,
                        None => Err(None),
                    };
                    match sent {
                        Ok(answer) => return answer,
                        Err(cause) => why = cause.unwrap_or_else(|| format!("cannot reach the leader at {grpc_addr}")),
                    }
                }
                Route::Electing => {}
            }
            let now = Instant::now();
            if now >= deadline {
                if let Some(cluster) = self.shared.cluster() {
                    why = cluster.unavailable(why);
                }
                break;
            }
            let retry = (now + RETRY_EVERY).min(deadline);
            tokio::select! {
                changed = diverter.routes.changed() => if changed.is_err() { deadline = now },
                () = tokio::time::sleep_until(retry) => {}
            }
        }
        in_dialect(dialect, not_applied(&format!("{why} (waited {route_wait:?})")))
    }

    /// A held request whose route turned out to be this node: it runs here after all.
    async fn run_here(&mut self, dialect: ForwardDialect, frame: &[u8]) -> Answer {
        let shared = Arc::clone(&self.shared);
        let (answer, written, read) = match &mut self.dialect {
            Dialect::Resp(_, session) => {
                let mut parser = RespParser::new(RespLimits::for_max_message(shared.config.max_message_bytes));
                let outcome = match parser.next_request(frame) {
                    Ok(Some(request)) => session.handle(&shared, request.args, &frame[..request.len]),
                    _ => None,
                };
                let Some(outcome) = outcome else { return Answer::Relayed(Bytes::new()) };
                (Answer::Resp(outcome.reply, session.protocol()), outcome.written, outcome.read)
            }
            _ => {
                let outcome = execute_line(&shared, &mut self.authenticated, frame);
                (Answer::Text(outcome.reply), outcome.written, outcome.read)
            }
        };
        // A write's reply waits for its commit, a read's for the records it shows (in every
        // partition: an EXEC's writes in one do not cover what it shows of another).
        let failures = Failures::wait(&shared, &written, &read).await;
        match failures.of(!written.is_empty(), !read.is_empty()) {
            Some(failure) => in_dialect(dialect, failure.clone()),
            None => answer,
        }
    }
}

/// Awaits a sent request's reply, up to the route wait and [`REPLY_GRACE`]; with no timer
/// when it is already here, as the replies of a pipelined batch mostly arrive together.
/// `Err` means it never left this node, so it may go again: why, if the link said.
async fn reply_to(
    mut reply: ReplyWait,
    dialect: ForwardDialect,
    route_wait: Duration,
) -> Result<Answer, Option<String>> {
    let arrived = match reply.try_recv() {
        Ok(arrived) => Some(Ok(arrived)),
        Err(oneshot::error::TryRecvError::Closed) => Some(Err(())),
        Err(oneshot::error::TryRecvError::Empty) => {
            tokio::time::timeout(route_wait + REPLY_GRACE, reply).await.ok().map(|r| r.map_err(drop))
        }
    };
    match arrived {
        Some(Ok(Ok(reply))) => Ok(Answer::Relayed(reply)),
        Some(Ok(Err(ForwardFailure::Broken(why)))) => Ok(in_dialect(dialect, unavailable(&why))),
        Some(Ok(Err(ForwardFailure::Refused(why)))) => Ok(in_dialect(dialect, not_applied(&why))),
        None => Ok(in_dialect(dialect, unavailable("no reply in time"))),
        Some(Ok(Err(ForwardFailure::NotSent(why)))) => Err(Some(why)),
        Some(Err(())) => Err(None),
    }
}

/// `reply` encoded for the client, as the leader's replies come.
fn in_dialect(dialect: ForwardDialect, reply: Reply) -> Answer {
    let mut encoded = bytes::BytesMut::new();
    dialect.encode(reply, &mut encoded);
    Answer::Relayed(encoded.freeze())
}
