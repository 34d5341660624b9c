//! One benchmark client: a connection that keeps up to `--pipeline` requests in flight,
//! verifies every reply in order and records its latency.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use tokio::net::TcpStream;

use super::transport::{Transport, send_auth};
use crate::tls::ClientPortConnector;

use super::codec::{Desync, Encoder, Protocol, Reply, describe, parse_reply};
use super::workload::{Op, Rng, Workload, key_bytes};

/// Read buffer growth step; large enough that one read drains many pipelined replies.
pub(super) const READ_CHUNK: usize = 64 * 1024;
/// Completed requests are added to the shared progress counter in batches this big, so
/// clients do not contend on it for every reply.
const PROGRESS_BATCH: u64 = 64;

/// Settings every client shares.
pub(super) struct Shared {
    pub(super) protocol: Protocol,
    pub(super) encoder: Encoder,
    pub(super) value: Vec<u8>,
    pub(super) pipeline: usize,
    /// Longest reply we are willing to buffer before declaring the stream broken.
    pub(super) reply_limit: usize,
    /// Requests answered so far, for the progress bar.
    pub(super) progress: AtomicU64,
}

/// Hands a client its next request, or `None` when it should stop sending.
pub(super) trait RequestSource {
    fn next(&mut self, now: Instant) -> Option<(Op, u64)>;
}

/// When the measured phase stops issuing requests.
#[derive(Clone)]
pub(super) enum Budget {
    /// A total shared by all clients: whoever is free takes the next request.
    Requests { issued: Arc<AtomicU64>, total: u64 },
    /// Until this instant; requests in flight then still complete.
    Until(Instant),
}

/// The measured load: random keys, operations drawn from the workload.
pub(super) struct RandomRequests {
    pub(super) workload: Workload,
    pub(super) keys: u64,
    pub(super) rng: Rng,
    pub(super) budget: Budget,
}

impl RequestSource for RandomRequests {
    fn next(&mut self, now: Instant) -> Option<(Op, u64)> {
        let more = match &self.budget {
            Budget::Requests { issued, total } => issued.fetch_add(1, Ordering::Relaxed) < *total,
            Budget::Until(deadline) => now < *deadline,
        };
        more.then(|| (self.workload.pick(&mut self.rng), self.rng.below(self.keys)))
    }
}

/// The `--preload` phase: client `i` of `n` SETs keys `i`, `i + n`, `i + 2n`, ...
pub(super) struct PreloadRequests {
    pub(super) next: u64,
    pub(super) step: u64,
    pub(super) end: u64,
}

impl RequestSource for PreloadRequests {
    fn next(&mut self, _now: Instant) -> Option<(Op, u64)> {
        (self.next < self.end).then(|| {
            self.next += self.step;
            (Op::Set, self.next - self.step)
        })
    }
}

/// What one client saw; merged into the report at the end.
pub(super) struct ClientStats {
    /// Nanoseconds from queueing a request to parsing its reply, successful requests only.
    pub(super) latency: Histogram<u64>,
    /// Requests answered, rightly or wrongly.
    pub(super) requests: u64,
    pub(super) ok: u64,
    pub(super) sets: u64,
    pub(super) gets: u64,
    pub(super) get_misses: u64,
    /// Wrong replies plus requests lost with a failed connection.
    pub(super) errors: u64,
    pub(super) first_error: Option<(Instant, String)>,
    /// The connection failed and this client stopped.
    pub(super) failed: bool,
}

impl ClientStats {
    pub(super) fn new() -> Self {
        ClientStats {
            latency: Histogram::new(3).expect("3 significant figures is a valid precision"),
            requests: 0,
            ok: 0,
            sets: 0,
            gets: 0,
            get_misses: 0,
            errors: 0,
            first_error: None,
            failed: false,
        }
    }

    fn record(&mut self, op: Op, key: u64, reply: Reply<'_>, nanos: u64) {
        self.requests += 1;
        match op {
            Op::Set => self.sets += 1,
            Op::Get => self.gets += 1,
        }
        match reply {
            Reply::Ok | Reply::NotFound => {
                self.ok += 1;
                self.get_misses += u64::from(reply == Reply::NotFound);
                // `record` grows the histogram as needed; `saturating_record` would clamp
                // to its current (tiny) range instead.
                if self.latency.record(nanos).is_err() {
                    self.latency.saturating_record(nanos);
                }
            }
            Reply::Wrong(bytes) => self.error(1, || {
                let key = key_bytes(key);
                format!("{op} {}: unexpected reply {}", key.escape_ascii(), describe(bytes))
            }),
        }
    }

    fn error(&mut self, count: u64, message: impl FnOnce() -> String) {
        self.errors += count;
        if self.first_error.is_none() {
            self.first_error = Some((Instant::now(), message()));
        }
    }
}

#[derive(Clone, Copy)]
struct InFlight {
    op: Op,
    key: u64,
    sent: Instant,
}

/// A connection with its own read and write buffers. Reads and writes go straight from the
/// buffers to the socket, so a large pipelined batch is never stuck writing while the
/// server waits for us to read its replies.
pub(super) struct Conn {
    stream: Transport,
    rbuf: BytesMut,
    wbuf: WriteBuf,
    inflight: VecDeque<InFlight>,
}

/// Encoded requests, of which the first `written` bytes are already on the socket.
///
/// The written prefix goes once it is half the buffer, not only when everything is
/// written: with a deep pipeline of large values the buffer may never drain completely,
/// and it would otherwise keep every request ever sent (1 GB within seconds of 1 MB SETs
/// at `--pipeline 16`). So it holds at most about twice the requests in flight, and the
/// bytes moved are fewer than the bytes written.
pub(super) struct WriteBuf {
    bytes: Vec<u8>,
    written: usize,
}

impl WriteBuf {
    fn with_capacity(capacity: usize) -> Self {
        WriteBuf { bytes: Vec::with_capacity(capacity), written: 0 }
    }

    pub(super) fn unwritten(&self) -> &[u8] {
        &self.bytes[self.written..]
    }

    pub(super) fn mark_written(&mut self, n: usize) {
        self.written += n;
        if self.written == self.bytes.len() {
            self.bytes.clear();
            self.written = 0;
        } else if self.written >= self.bytes.len() / 2 {
            self.bytes.drain(..self.written);
            self.written = 0;
        }
    }
}

impl Conn {
    /// Sends AUTH and waits for its `OK`, before anything is measured. The error is the
    /// server's reply.
    pub(super) async fn authenticate(&mut self, protocol: Protocol, password: &str) -> Result<(), String> {
        let request = match protocol {
            Protocol::Text => format!("AUTH {password}\r\n"),
            Protocol::Resp => format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{password}\r\n", password.len()),
        };
        let reply = match &mut self.stream {
            Transport::Plain(stream) => send_auth(stream, request.as_bytes()).await?,
            Transport::Tls { stream, .. } => send_auth(&mut **stream, request.as_bytes()).await?,
        };
        match reply.as_str() {
            "OK" | "+OK" => Ok(()),
            _ => Err(reply),
        }
    }

    /// Connects to `addr`; over TLS when `tls` gives the connector and the name the
    /// user gave the server (`--addr`), whose host its certificate must carry.
    pub(super) async fn connect(
        addr: SocketAddr,
        pipeline: usize,
        tls: Option<(ClientPortConnector, String)>,
    ) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let stream = match tls {
            None => Transport::Plain(stream),
            Some((connector, name)) => Transport::Tls {
                stream: Box::new(connector.handshake(&name, stream).await?),
                scratch: vec![0; READ_CHUNK],
            },
        };
        Ok(Conn {
            stream,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: WriteBuf::with_capacity(READ_CHUNK),
            inflight: VecDeque::with_capacity(pipeline),
        })
    }

    /// Sends requests from `source` until it runs dry and every reply is in. Returns the
    /// connection if it is still usable; a failure is recorded in `stats`, which counts
    /// every request still in flight as an error.
    pub(super) async fn drive(
        mut self,
        source: &mut impl RequestSource,
        shared: &Shared,
        stats: &mut ClientStats,
    ) -> Option<Conn> {
        let mut unreported = 0;
        let outcome = self.pump(source, shared, stats, &mut unreported).await;
        shared.progress.fetch_add(unreported, Ordering::Relaxed);
        match outcome {
            Ok(()) => Some(self),
            Err(why) => {
                stats.failed = true;
                stats.error(self.inflight.len().max(1) as u64, || why);
                None
            }
        }
    }

    async fn pump(
        &mut self,
        source: &mut impl RequestSource,
        shared: &Shared,
        stats: &mut ClientStats,
        unreported: &mut u64,
    ) -> Result<(), String> {
        loop {
            let now = Instant::now();
            while self.inflight.len() < shared.pipeline {
                let Some((op, key)) = source.next(now) else {
                    break;
                };
                shared.encoder.encode(op, key, &mut self.wbuf.bytes);
                self.inflight.push_back(InFlight { op, key, sent: now });
            }
            if self.inflight.is_empty() {
                break;
            }
            if !self.stream.exchange(&mut self.wbuf, &mut self.rbuf, self.inflight.len()).await? {
                continue;
            }
            *unreported += self.take_replies(shared, stats)?;
            if *unreported >= PROGRESS_BATCH {
                shared.progress.fetch_add(std::mem::take(unreported), Ordering::Relaxed);
            }
        }
        if !self.rbuf.is_empty() {
            return Err(format!("unexpected bytes after the last reply: {}", describe(&self.rbuf)));
        }
        Ok(())
    }

    /// Parses every complete reply in the read buffer; all of them arrived with the same
    /// read, so they share one timestamp.
    fn take_replies(&mut self, shared: &Shared, stats: &mut ClientStats) -> Result<u64, String> {
        let now = Instant::now();
        let mut taken = 0;
        while let Some(&request) = self.inflight.front() {
            let parsed = parse_reply(shared.protocol, &self.rbuf, request.op, &shared.value, shared.reply_limit)
                .map_err(|Desync(why)| format!("cannot follow the reply stream: {why}"))?;
            let Some((len, reply)) = parsed else { break };
            let nanos = u64::try_from((now - request.sent).as_nanos()).unwrap_or(u64::MAX);
            stats.record(request.op, request.key, reply, nanos);
            self.rbuf.advance(len);
            self.inflight.pop_front();
            taken += 1;
        }
        Ok(taken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_buffer_never_drained_completely_stays_bounded() {
        // A pipeline of 4 requests of 100 bytes where the socket always takes all but the
        // last 50 bytes: the buffer is never empty, yet must not grow with every request.
        let mut wbuf = WriteBuf::with_capacity(0);
        wbuf.bytes.extend_from_slice(&[b'x'; 400]);
        for sent in 0..10_000 {
            let taken = wbuf.unwritten().len() - 50;
            wbuf.mark_written(taken);
            assert_eq!(wbuf.unwritten().len(), 50, "after {sent} requests");
            assert!(wbuf.bytes.len() <= 2 * 400, "{} bytes kept after {sent} requests", wbuf.bytes.len());
            wbuf.bytes.extend_from_slice(&[b'x'; 100]);
        }
        let rest = wbuf.unwritten().len();
        wbuf.mark_written(rest);
        assert!(wbuf.bytes.is_empty() && wbuf.unwritten().is_empty());
    }

    #[test]
    fn latency_histogram_keeps_large_values() {
        let mut stats = ClientStats::new();
        stats.record(Op::Set, 1, Reply::Ok, 20_000);
        stats.record(Op::Get, 1, Reply::NotFound, 5_000_000_000);
        stats.record(Op::Get, 1, Reply::Wrong(b"ERR x\r\n"), 7);
        assert_eq!(stats.latency.len(), 2);
        assert!(stats.latency.equivalent(stats.latency.min(), 20_000));
        assert!(stats.latency.equivalent(stats.latency.max(), 5_000_000_000));
        assert_eq!((stats.requests, stats.ok, stats.get_misses, stats.errors), (3, 2, 1, 1));
        let first = stats.first_error.unwrap().1;
        assert_eq!(first, r#"GET key:000000000001: unexpected reply "ERR x\r\n""#);
    }
}
