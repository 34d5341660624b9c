//! The client side of `msglog tail`: fetch a node's log from an offset as a consumer (not
//! a replica: it is not counted as a follower and acknowledges nothing).

use crate::storage::record::Records;
use crate::storage::{Offset, RecordRef};

use super::proto::replication_client::ReplicationClient;
use super::proto::{FetchRequest, fetch_response};
use super::{CONNECT_TIMEOUT, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, describe_status, root_cause};

/// Each message is complete in itself (the innermost cause included), so the variants keep
/// no `source`: printing the chain as well would repeat it.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("cannot reach {addr}: {}", root_cause(.error))]
    Connect { addr: String, error: tonic::transport::Error },
    #[error("{}", describe_status(.0))]
    Stream(tonic::Status),
    #[error("a record from the server failed its check at byte {position} of a chunk: {reason}")]
    Corrupt { position: usize, reason: String },
    #[error("the server ended the stream (shutting down?)")]
    Ended,
    #[error("the server sent an unexpected message: {0}")]
    Protocol(&'static str),
    #[error("the node answered for partition {theirs}, not partition {asked} (is it an msglog older than partitions?)")]
    WrongPartition { theirs: u32, asked: u32 },
    #[error("{0}")]
    Output(std::io::Error),
}

impl From<tonic::Status> for TailError {
    fn from(status: tonic::Status) -> TailError {
        TailError::Stream(status)
    }
}

impl From<std::io::Error> for TailError {
    fn from(error: std::io::Error) -> TailError {
        TailError::Output(error)
    }
}

/// What to fetch.
#[derive(Debug, Clone)]
pub struct TailRequest {
    /// gRPC address (`host:port`) of any node.
    pub addr: String,
    pub offset: Offset,
    /// Keep following once caught up; otherwise stop at the log's end as of the request.
    pub follow: bool,
    /// Largest record expected (a chunk may hold one such record).
    pub max_record_bytes: usize,
    /// The node's password, if it has one.
    pub password: Option<crate::server::Password>,
    /// The partition whose log to read (0 in a cluster of one partition, and off cluster).
    pub partition: u32,
}

/// Calls `each` with every record from `request.offset` on, CRC-checked, in order. Returns
/// when caught up (without `follow`), when the server ends the stream, or on `each`'s error.
pub async fn tail(
    request: &TailRequest,
    each: impl FnMut(&RecordRef<'_>) -> std::io::Result<()>,
) -> Result<(), TailError> {
    tail_with_tls(request, None, each).await
}

/// [`tail`] over TLS: `tls` trusts the node's CA and may present a client certificate.
pub async fn tail_with_tls(
    request: &TailRequest,
    tls: Option<&tonic::transport::ClientTlsConfig>,
    mut each: impl FnMut(&RecordRef<'_>) -> std::io::Result<()>,
) -> Result<(), TailError> {
    let connect = |error| TailError::Connect { addr: request.addr.clone(), error };
    let channel = crate::tls::endpoint(&request.addr, tls)
        .map_err(connect)?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        // What the server may send before we read it: one chunk, not adaptive megabytes.
        .initial_stream_window_size(u32::try_from(super::CHUNK_BYTES).ok())
        .initial_connection_window_size(u32::try_from(2 * super::CHUNK_BYTES).ok())
        .connect()
        .await
        .map_err(connect)?;
    let mut client = ReplicationClient::new(channel)
        .max_decoding_message_size(request.max_record_bytes.saturating_add(super::CHUNK_BYTES));
    let fetch = FetchRequest {
        follower_id: String::new(),
        next_offset: request.offset,
        last: None,
        follow: request.follow,
        known_epoch: 0,
        leader_epoch: 0,
        log_id: String::new(),
        partition: request.partition,
    };
    let mut stream = client.fetch(super::service::with_password(fetch, request.password.as_ref())).await?.into_inner();
    let mut told = false;
    while let Some(message) = stream.message().await? {
        match message.kind {
            // A node older than partitions ignores the one asked for and serves its one log.
            Some(fetch_response::Kind::Hello(hello)) if hello.partition != request.partition => {
                return Err(TailError::WrongPartition { theirs: hello.partition, asked: request.partition });
            }
            Some(fetch_response::Kind::Hello(_)) => {}
            Some(fetch_response::Kind::Records(records)) => {
                if !told && request.offset < records.log_start_offset {
                    told = true;
                    eprintln!(
                        "msglog: note: offset {} is below the log start {}: retention deleted the records before it; \
                         starting at {}",
                        request.offset, records.log_start_offset, records.log_start_offset
                    );
                }
                for record in Records::new(&records.frames, usize::MAX) {
                    let record = record
                        .map_err(|(position, reason)| TailError::Corrupt { position, reason: reason.to_string() })?;
                    if record.offset >= request.offset {
                        each(&record)?;
                    }
                }
            }
            Some(fetch_response::Kind::Diverged(_)) => return Err(TailError::Protocol("divergence without a claim")),
            None => return Err(TailError::Protocol("empty message")),
        }
    }
    // A followed stream only ends when the server goes away.
    if request.follow { Err(TailError::Ended) } else { Ok(()) }
}
