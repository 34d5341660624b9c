//! Forwarding over gRPC: the [`ForwardClient`] a node that does not lead sends its
//! clients' data commands through, and the `Forward` service a leader executes them with.
//!
//! One bidirectional stream per (node, leader) carries every forwarded request of the node.
//! A link is one task: it takes what the node's connections queued, sends it as one
//! message, and hands each tagged reply to the connection waiting for it; no task per
//! request. Nothing is sent before the leader has taken the stream, so a request that was
//! never sent is known as such (its reply slot is dropped unanswered) and may go again;
//! one sent on a link that then breaks is answered with why, as it may have been applied.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use crate::protocol::resp::RespLimits;
use crate::server::{
    ForwardDialect, ForwardEndpoint, ForwardFailure, ForwardedReply, ForwardedRequest, Forwarder, Outgoing, Password,
    ReplySlot,
};

use super::service::{incoming, with_password};
use super::{CONNECT_TIMEOUT, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, describe_status, peer_endpoint};

#[allow(clippy::all, clippy::pedantic)]
mod proto {
    tonic::include_proto!("msglog.forward.v1");
}

use proto::forward_client::ForwardClient as Rpc;
use proto::forward_server::{Forward, ForwardServer};

/// Requests of one message, at most; and their bytes (a single larger request goes alone).
const MAX_BATCH_REQUESTS: usize = 1024;
const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Messages queued towards the gRPC stream: beyond them the link waits for HTTP/2.
const STREAM_DEPTH: usize = 4;

/// How forwarded traffic leaves this node and what the leader accepts.
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// The cluster's password: the forwarding node presents it, the leader requires it.
    pub password: Option<Password>,
    /// Local address links to leaders leave from (`None`: the OS picks).
    pub bind_source_addr: Option<IpAddr>,
    /// The largest SET message (`--max-message-bytes`): it bounds a request and a reply.
    pub max_message_bytes: usize,
}

impl ForwardConfig {
    /// The largest gRPC message either side sends: one batch, or one request or reply
    /// alone, with room for the framing around it.
    fn max_grpc_message(&self) -> usize {
        let largest = RespLimits::for_max_message(self.max_message_bytes).max_request_bytes;
        largest.max(MAX_BATCH_BYTES) + 64 * 1024
    }
}

/// The forwarding node's links to leaders, one per leader address, opened on first use
/// and again once broken.
pub struct ForwardClient {
    config: ForwardConfig,
    /// The node's mutual TLS towards leaders (`--tls-ca`); `None` speaks plain gRPC.
    tls: Option<tonic::transport::ClientTlsConfig>,
    links: Mutex<HashMap<String, Link>>,
    /// The runtime the client was made on (the node's): links to leaders run there, not on
    /// the serving loop of the connection that happens to forward first, which would hold
    /// every loop's forwarded requests during its fsyncs.
    runtime: Option<tokio::runtime::Handle>,
}

struct Link {
    /// Reused across streams: a new stream to the same leader needs no new connection.
    channel: Channel,
    outgoing: Option<mpsc::UnboundedSender<Outgoing>>,
}

impl ForwardClient {
    pub fn new(config: ForwardConfig) -> Arc<ForwardClient> {
        ForwardClient::with_tls(config, None)
    }

    /// [`ForwardClient::new`] that presents this node's certificate to leaders.
    pub fn with_tls(config: ForwardConfig, tls: Option<tonic::transport::ClientTlsConfig>) -> Arc<ForwardClient> {
        let runtime = tokio::runtime::Handle::try_current().ok();
        Arc::new(ForwardClient { config, tls, links: Mutex::new(HashMap::new()), runtime })
    }

    fn channel(&self, grpc_addr: &str) -> Option<Channel> {
        let endpoint = peer_endpoint(grpc_addr, self.tls.as_ref(), self.config.bind_source_addr).ok()?;
        // The channel's connection task starts on the runtime entered here.
        let _entered = self.runtime.as_ref().map(tokio::runtime::Handle::enter);
        Some(endpoint.connect_lazy())
    }
}

impl Forwarder for ForwardClient {
    fn try_forward(&self, grpc_addr: &str, request: Outgoing) -> Result<(), Outgoing> {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        if !links.contains_key(grpc_addr) {
            let Some(channel) = self.channel(grpc_addr) else { return Err(request) };
            links.insert(grpc_addr.to_string(), Link { channel, outgoing: None });
        }
        let link = links.get_mut(grpc_addr).expect("inserted above");
        let open = link.outgoing.as_ref().filter(|outgoing| !outgoing.is_closed());
        let outgoing = match open {
            Some(outgoing) => outgoing,
            // A close for a leader without a live stream has nothing left to close.
            None if request.close => return Ok(()),
            None => {
                let (tx, rx) = mpsc::unbounded_channel();
                let (channel, config) = (link.channel.clone(), self.config.clone());
                let running = run_link(channel, config, grpc_addr.to_string(), rx);
                match &self.runtime {
                    Some(runtime) => drop(runtime.spawn(running)),
                    None => drop(tokio::spawn(running)),
                }
                link.outgoing.insert(tx)
            }
        };
        outgoing.send(request).map_err(|unsent| unsent.0)
    }
}

/// One stream to a leader, until it breaks. Ending drops what is still queued unsent,
/// which its connections read as "never sent".
async fn run_link(
    channel: Channel,
    config: ForwardConfig,
    leader: String,
    mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
) {
    let (batches, stream) = mpsc::channel(STREAM_DEPTH);
    let max_message = config.max_grpc_message();
    let mut rpc = Rpc::new(channel).max_decoding_message_size(max_message).max_encoding_message_size(max_message);
    let call = rpc.forward(with_password(ReceiverStream::new(stream), config.password.as_ref()));
    let opened = match tokio::time::timeout(CONNECT_TIMEOUT, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(format!("cannot forward to {leader}: {}", describe_status(&status))),
        Err(_) => Err(format!("{leader} did not take the forward stream within {CONNECT_TIMEOUT:?}")),
    };
    let mut replies = match opened {
        Ok(replies) => replies,
        Err(why) => {
            tracing::debug!(%why, "a forward stream did not open");
            // Closed first, so that nothing queued after the drain is lost unanswered.
            outgoing.close();
            while let Ok(request) = outgoing.try_recv() {
                if let Some(slot) = request.reply {
                    let _ = slot.send(Err(ForwardFailure::NotSent(why.clone())));
                }
            }
            return;
        }
    };
    let mut waiting: HashMap<u64, ReplySlot> = HashMap::new();
    let mut next: Option<Outgoing> = None;
    let mut seq = 0u64;
    let why = loop {
        tokio::select! {
            biased;
            message = replies.message() => match message {
                Ok(Some(message)) => {
                    for reply in message.replies {
                        if let Some(slot) = waiting.remove(&reply.seq) {
                            let reply = match reply.error.is_empty() {
                                true => Ok(reply.reply),
                                false => Err(ForwardFailure::Refused(reply.error)),
                            };
                            let _ = slot.send(reply);
                        }
                    }
                }
                Ok(None) => break format!("{leader} ended the forward stream"),
                Err(status) => break describe_status(&status),
            },
            permit = batches.reserve(), if next.is_some() => {
                let Ok(permit) = permit else { break format!("the forward stream to {leader} closed") };
                let mut requests = Vec::new();
                let mut bytes = 0;
                while let Some(request) = next.take().or_else(|| outgoing.try_recv().ok()) {
                    if !requests.is_empty() && (requests.len() >= MAX_BATCH_REQUESTS || bytes + request.frame.len() > MAX_BATCH_BYTES) {
                        next = Some(request);
                        break;
                    }
                    bytes += request.frame.len();
                    seq += 1;
                    if let Some(slot) = request.reply {
                        waiting.insert(seq, slot);
                    }
                    requests.push(to_proto(seq, request.connection, request.dialect, request.frame, request.close));
                }
                permit.send(proto::ForwardRequests { requests });
            },
            request = outgoing.recv(), if next.is_none() => match request {
                Some(request) => next = Some(request),
                None => return,
            },
        }
    };
    tracing::debug!(%leader, %why, in_flight = waiting.len(), "a forward stream broke");
    for (_, slot) in waiting.drain() {
        let _ = slot.send(Err(ForwardFailure::Broken(why.clone())));
    }
}

fn to_proto(seq: u64, connection: u64, dialect: ForwardDialect, frame: Bytes, close: bool) -> proto::ForwardRequest {
    let dialect = match dialect {
        ForwardDialect::Text => proto::Dialect::Text,
        ForwardDialect::Resp2 => proto::Dialect::Resp2,
        ForwardDialect::Resp3 => proto::Dialect::Resp3,
    };
    proto::ForwardRequest { connection, seq, dialect: dialect.into(), frame, close }
}

fn from_proto(request: proto::ForwardRequest) -> ForwardedRequest {
    let dialect = match request.dialect() {
        proto::Dialect::Text => ForwardDialect::Text,
        proto::Dialect::Resp2 => ForwardDialect::Resp2,
        proto::Dialect::Resp3 => ForwardDialect::Resp3,
    };
    ForwardedRequest {
        connection: request.connection,
        seq: request.seq,
        dialect,
        frame: request.frame,
        close: request.close,
    }
}

/// The `Forward` service, for a node's gRPC server: executes on the server `endpoint`
/// is attached to.
pub(crate) fn service(endpoint: ForwardEndpoint, config: ForwardConfig) -> ForwardServer<Service> {
    let max_message = config.max_grpc_message();
    ForwardServer::new(Service { endpoint, config })
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message)
}

/// Serves only the `Forward` service on `listener` until `shutdown` completes: for a node
/// whose gRPC server does not carry it, and for tests.
pub async fn serve_forwarding(
    listener: TcpListener,
    endpoint: ForwardEndpoint,
    config: ForwardConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(service(endpoint, config))
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await
}

pub(crate) struct Service {
    endpoint: ForwardEndpoint,
    config: ForwardConfig,
}

#[tonic::async_trait]
impl Forward for Service {
    type ForwardStream = ReceiverStream<Result<proto::ForwardReplies, Status>>;

    async fn forward(
        &self,
        request: Request<Streaming<proto::ForwardRequests>>,
    ) -> Result<Response<Self::ForwardStream>, Status> {
        self.authorize(&request)?;
        let Some(mut executor) = self.endpoint.open_stream() else {
            return Err(Status::unavailable("this node does not serve clients now"));
        };
        let mut requests = request.into_inner();
        let (replies, stream) = mpsc::channel(STREAM_DEPTH);
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    message = requests.message() => message,
                    () = executor.shutting_down() => break,
                };
                let Ok(Some(message)) = message else { break };
                let batch = message.requests.into_iter().map(from_proto).collect();
                let mut committed = Box::pin(executor.execute(batch).await);
                // Usually committed already (reads of durable records, or an fsync that
                // covered them): then replied to here, with no task. Otherwise one task
                // waits for the batch's commit while later batches execute; its polls
                // register the real waker.
                let polled = committed.as_mut().poll(&mut Context::from_waker(Waker::noop()));
                match polled {
                    Poll::Ready(done) => send_replies(&replies, done).await,
                    Poll::Pending => {
                        let replies = replies.clone();
                        tokio::spawn(async move { send_replies(&replies, committed.await).await });
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}

impl Service {
    /// A forwarded request is a client's, so it needs what the client port needs: the
    /// password, certificate or not (any certificate of the CA, a consumer's too, passes
    /// the handshake). Forwarding nodes always present theirs.
    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        crate::bearer::check(request, self.config.password.as_ref()).map_err(|presented| {
            presented.refusal("this node", "Forward", "start every node with the same --requirepass")
        })
    }
}

/// Sends `replies` in messages of bounded size.
async fn send_replies(to: &mpsc::Sender<Result<proto::ForwardReplies, Status>>, replies: Vec<ForwardedReply>) {
    let mut message = Vec::new();
    let mut bytes = 0;
    for reply in replies {
        let size = reply.reply.as_ref().map_or_else(String::len, Bytes::len);
        if !message.is_empty() && bytes + size > MAX_BATCH_BYTES {
            if to.send(Ok(proto::ForwardReplies { replies: std::mem::take(&mut message) })).await.is_err() {
                return;
            }
            bytes = 0;
        }
        bytes += size;
        let ForwardedReply { connection, seq, reply } = reply;
        let (reply, error) = match reply {
            Ok(reply) => (reply, String::new()),
            Err(error) => (Bytes::new(), error),
        };
        message.push(proto::ForwardReply { connection, seq, reply, error });
    }
    if !message.is_empty() {
        let _ = to.send(Ok(proto::ForwardReplies { replies: message })).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_crosses_the_wire_unchanged_in_every_dialect() {
        for dialect in [ForwardDialect::Text, ForwardDialect::Resp2, ForwardDialect::Resp3] {
            let frame = Bytes::from_static(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
            let sent = to_proto(7, 42, dialect, frame.clone(), false);
            let encoded = prost::Message::encode_to_vec(&sent);
            let decoded: proto::ForwardRequest = prost::Message::decode(&encoded[..]).expect("decodes");
            let request = from_proto(decoded);
            assert_eq!((request.seq, request.connection, request.dialect), (7, 42, dialect));
            assert_eq!((request.frame, request.close), (frame, false));
        }
    }
}
