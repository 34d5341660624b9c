//! A bench connection's socket: plain TCP, or TLS (`msglog bench --tls`).

use std::io;
use std::pin::Pin;
use std::task::Poll;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::TcpStream;

use super::client::{READ_CHUNK, WriteBuf};
use crate::tls::ClientTlsStream;

/// The socket a client speaks on. Plain TCP is driven by readiness and `try_*` calls;
/// a TLS stream has no such calls, so it is polled for a write and a read together.
pub(super) enum Transport {
    Plain(TcpStream),
    Tls {
        stream: Box<ClientTlsStream>,
        /// Where decrypted bytes land before they join the read buffer.
        scratch: Vec<u8>,
    },
}

impl Transport {
    /// Writes what it can of `wbuf` and reads what has arrived into `rbuf`, waiting until
    /// one of them makes progress. `true` when bytes were read.
    pub(super) async fn exchange(
        &mut self,
        wbuf: &mut WriteBuf,
        rbuf: &mut BytesMut,
        inflight: usize,
    ) -> Result<bool, String> {
        let closed = || format!("connection closed by the server with {inflight} requests in flight");
        if rbuf.capacity() - rbuf.len() < READ_CHUNK / 2 {
            // Reclaims the consumed front of the buffer when it can, so steady state
            // does not allocate.
            rbuf.reserve(READ_CHUNK);
        }
        let (stream, scratch) = match self {
            Transport::Plain(stream) => return exchange_plain(stream, wbuf, rbuf, closed).await,
            Transport::Tls { stream, scratch } => (stream, scratch),
        };
        std::future::poll_fn(|cx| {
            let mut wrote = false;
            if !wbuf.unwritten().is_empty() {
                match Pin::new(&mut **stream).poll_write(cx, wbuf.unwritten()) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err("write failed: the connection is closed".into())),
                    Poll::Ready(Ok(n)) => {
                        wbuf.mark_written(n);
                        wrote = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(format!("write failed: {e}"))),
                    Poll::Pending => {}
                }
            } else if let Poll::Ready(Err(e)) = Pin::new(&mut **stream).poll_flush(cx) {
                // TLS records still queued after the last accepted write go out here.
                return Poll::Ready(Err(format!("write failed: {e}")));
            }
            let mut read = ReadBuf::new(scratch);
            match Pin::new(&mut **stream).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if read.filled().is_empty() => Poll::Ready(Err(closed())),
                Poll::Ready(Ok(())) => {
                    rbuf.extend_from_slice(read.filled());
                    Poll::Ready(Ok(true))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(format!("read failed: {e}"))),
                Poll::Pending if wrote => Poll::Ready(Ok(false)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }
}

/// [`Transport::exchange`] on plain TCP: reads and writes go straight from the buffers to
/// the socket, no copy beyond the kernel's.
async fn exchange_plain(
    stream: &TcpStream,
    wbuf: &mut WriteBuf,
    rbuf: &mut BytesMut,
    closed: impl FnOnce() -> String,
) -> Result<bool, String> {
    if !wbuf.unwritten().is_empty() {
        match stream.try_write(wbuf.unwritten()) {
            Ok(n) => wbuf.mark_written(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(format!("write failed: {e}")),
        }
    }
    let interest = match wbuf.unwritten().is_empty() {
        true => Interest::READABLE,
        false => Interest::READABLE | Interest::WRITABLE,
    };
    let ready = stream.ready(interest).await.map_err(|e| format!("socket failed: {e}"))?;
    if !ready.is_readable() {
        return Ok(false);
    }
    match stream.try_read_buf(rbuf) {
        Ok(0) => Err(closed()),
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(format!("read failed: {e}")),
    }
}

/// Sends AUTH on `stream` and reads its one-line reply.
pub(super) async fn send_auth(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    request: &[u8],
) -> Result<String, String> {
    stream.write_all(request).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    // The reply is one short line; nothing else is in flight on the connection yet.
    let mut reply = Vec::new();
    while !reply.ends_with(b"\r\n") && reply.len() < 4096 {
        let mut byte = [0u8; 1];
        match stream.read(&mut byte).await {
            Ok(0) => return Err("the server closed the connection".to_string()),
            Ok(_) => reply.push(byte[0]),
            Err(err) => return Err(err.to_string()),
        }
    }
    Ok(String::from_utf8_lossy(&reply).trim_end().to_string())
}
