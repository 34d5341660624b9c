//! Resolving a batch's diverted requests before it is written, in order: awaiting the
//! replies on their way, sending (or running here) those held once their routes name a
//! place, splitting those whose partitions turn out to be led apart, and joining split
//! requests' parts.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::protocol::Reply;
use crate::protocol::resp::{Protocol, RespLimits, RespParser};

use super::answer::Answer;
use super::forwarding::{Diverted, ReplyWait, Routes, State};
use super::split::{self, PartReply, PartState, Split};
use super::waits::Failures;
use super::{Connection, Dialect};
use crate::server::execute::execute_line;
use crate::server::forward::{ForwardDialect, ForwardFailure};

/// Beyond the route wait, how long a sent request's reply may take: the leader's own
/// commit wait is bounded by its ack timeout, so a reply this late means a stuck link.
const REPLY_GRACE: Duration = Duration::from_secs(10);
/// While no leader can be reached, how often a held request tries again (a route change
/// wakes it sooner).
const RETRY_EVERY: Duration = Duration::from_millis(50);

/// A request resolved, or one to split now that its partitions' routes differ.
enum Settled {
    Answer(Answer),
    Apart,
}

const ELECTING: &str = "no leader is known (an election is under way)";

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
        let (dialect, frame, partitions, state) = match diverted {
            Diverted::Whole { dialect, frame, partitions, state } => (dialect, frame, partitions, state),
            Diverted::Split(split) => return self.resolve_split(split).await,
        };
        let why = match state {
            State::Sent(reply) => match reply_to(reply, dialect, self.route_wait()).await {
                Ok(answer) => return answer,
                // Never sent: it may go again, to wherever the route says now.
                Err(why) => why.unwrap_or_else(|| "the link to the leader closed".to_string()),
            },
            State::Held => ELECTING.to_string(),
        };
        match self.settle(dialect, &frame, &partitions, why).await {
            Settled::Answer(answer) => answer,
            Settled::Apart => self.split_now(dialect, &frame).await,
        }
    }

    fn route_wait(&self) -> Duration {
        self.diverter.as_ref().map_or(Duration::ZERO, |d| d.route_wait)
    }

    /// Runs a request that could not be sent where its partitions' routes say once they
    /// say it: here, or at their one leader; waits up to the route wait for them to name
    /// one. Routes that name several places are left to the caller, to split the request.
    async fn settle(&mut self, dialect: ForwardDialect, frame: &Bytes, partitions: &[u32], mut why: String) -> Settled {
        let route_wait = self.route_wait();
        let mut deadline = Instant::now() + route_wait;
        while let Some(diverter) = self.diverter.as_mut() {
            let waiting_on = match diverter.settled(partitions) {
                Routes::Here => return Settled::Answer(self.run_here(dialect, frame).await),
                Routes::Apart => return Settled::Apart,
                Routes::Electing(partition) => partition,
                Routes::Leader(grpc_addr) => {
                    let sent = match diverter.send(partitions, dialect, frame) {
                        Some(reply) => reply_to(reply, dialect, route_wait).await,
                        None => Err(None),
                    };
                    match sent {
                        Ok(answer) => return Settled::Answer(answer),
                        Err(cause) => why = cause.unwrap_or_else(|| format!("cannot reach the leader at {grpc_addr}")),
                    }
                    partitions[0]
                }
            };
            let now = Instant::now();
            if now >= deadline {
                if let Some(cluster) = &self.shared.partitions.get(waiting_on).cluster {
                    why = cluster.unavailable(why);
                }
                break;
            }
            let retry = (now + RETRY_EVERY).min(deadline);
            tokio::select! {
                changed = diverter.routes[waiting_on as usize].changed() => if changed.is_err() { deadline = now },
                () = tokio::time::sleep_until(retry) => {}
            }
        }
        Settled::Answer(in_dialect(dialect, not_applied(&format!("{why} (waited {route_wait:?})"))))
    }

    /// A held request whose partitions' routes now differ: split, its parts started (those
    /// led here run and are waited for now).
    async fn split_now(&mut self, dialect: ForwardDialect, frame: &[u8]) -> Answer {
        let shared = Arc::clone(&self.shared);
        let (Dialect::Resp(_, session), Some(diverter)) = (&mut self.dialect, self.diverter.as_mut()) else {
            return in_dialect(dialect, not_applied("a text request names one partition"));
        };
        let mut parser = RespParser::new(RespLimits::for_max_message(shared.config.max_message_bytes));
        let parts = match parser.next_request(frame) {
            Ok(Some(request)) => split::parts(&shared, request.args),
            _ => None,
        };
        let Some(parts) = parts else {
            return in_dialect(dialect, not_applied("its keys' partitions are led by different nodes"));
        };
        let protocol = if dialect == ForwardDialect::Resp3 { Protocol::Resp3 } else { Protocol::Resp2 };
        let started = split::start(&shared, session, diverter, parts, protocol);
        let failures = Failures::wait(&shared, &started.written, &started.read).await;
        if let Some(failure) = failures.of(!started.written.is_empty(), !started.read.is_empty()) {
            return in_dialect(dialect, failure.clone());
        }
        self.resolve_split(started.reply).await
    }

    /// Awaits every part of a split request (sending or running those held where their
    /// routes say), then joins their replies.
    async fn resolve_split(&mut self, split: Split) -> Answer {
        let Split { join, protocol, parts } = split;
        let mut replies = Vec::with_capacity(parts.len());
        for (part, state) in parts {
            let why = match state {
                PartState::Done(reply) => {
                    replies.push((part, reply));
                    continue;
                }
                PartState::Sent(reply) => match reply_to(reply, ForwardDialect::Resp2, self.route_wait()).await {
                    Ok(answer) => {
                        replies.push((part, PartReply::from_answer(answer)));
                        continue;
                    }
                    Err(why) => why.unwrap_or_else(|| "the link to the leader closed".to_string()),
                },
                PartState::Held => ELECTING.to_string(),
            };
            let reply = match self.settle(ForwardDialect::Resp2, &part.frame, &[part.partition], why).await {
                Settled::Answer(answer) => PartReply::from_answer(answer),
                // One partition's route names one place.
                Settled::Apart => PartReply::Error("ERR a partition's route names two places".to_string()),
            };
            replies.push((part, reply));
        }
        split::join(join, protocol, replies, self.shared.config.max_reply_bytes())
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
