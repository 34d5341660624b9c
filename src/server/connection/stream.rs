//! A client connection's socket, plain or TLS: one type for the connection to read and
//! write, so the plain path stays a direct call on the `TcpStream`.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::protocol::Reply;
use crate::protocol::resp::{Protocol, RespReply, opens_resp};
use crate::tls::{ClientPortTls, HandshakeFailure, PLAIN_TO_TLS_PORT, ServerStream};

pub(crate) enum ClientStream {
    Plain(TcpStream),
    Tls(Box<ServerStream>),
}

impl ClientStream {
    /// Makes `tcp` the connection's stream: as is, or after a TLS handshake when the port
    /// speaks TLS. `None` when the handshake failed, which the acceptor logs (throttled:
    /// scanners and misconfigured clients would otherwise flood the log).
    pub(crate) async fn open(tcp: TcpStream, tls: Option<&ClientPortTls>) -> Option<ClientStream> {
        let Some(tls) = tls else { return Some(ClientStream::Plain(tcp)) };
        match tls.accept(tcp).await {
            Ok(stream) => Some(ClientStream::Tls(Box::new(stream))),
            Err(HandshakeFailure::Plain(tcp)) => {
                answer_plain_client(tcp).await;
                None
            }
            Err(_) => None,
        }
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            ClientStream::Plain(tcp) => tcp,
            ClientStream::Tls(tls) => tls.get_ref().0,
        }
    }

    pub(crate) fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().peer_addr()
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().local_addr()
    }
}

/// One error line in the client's protocol (RESP if it opened with `*`), then close after
/// draining what it sent, so the close does not reset the connection over the reply.
async fn answer_plain_client(mut tcp: TcpStream) {
    let mut first = [0u8; 1];
    let resp = matches!(tcp.peek(&mut first).await, Ok(1) if opens_resp(first[0]));
    let mut reply = bytes::BytesMut::new();
    let refusal = Reply::error(PLAIN_TO_TLS_PORT);
    match resp {
        true => RespReply::from(refusal).encode(&mut reply, Protocol::Resp2),
        false => refusal.encode_text(&mut reply),
    }
    let _ = tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, async {
        tcp.write_all(&reply).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 1024];
        while tcp.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}

impl AsyncRead for ClientStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            ClientStream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            ClientStream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            ClientStream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            ClientStream::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            ClientStream::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Plain(tcp) => tcp.is_write_vectored(),
            ClientStream::Tls(tls) => tls.is_write_vectored(),
        }
    }
}
