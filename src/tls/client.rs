//! The client side of the client port's TLS, for msglog's own tools: `msglog bench` speaks
//! it directly, `msglog client` and `msglog cluster` through a local relay.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use anyhow::Context;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::{HANDSHAKE_TIMEOUT, provider, read_roots};

/// A TLS connection to a client port.
pub type ClientTlsStream = tokio_rustls::client::TlsStream<ServerSocket>;

/// How much of what a server sends first is kept: a refusal line, not a whole reply.
const FIRST_BYTES: usize = 512;

/// What a tool trusts when it connects to a client port over TLS (`--cacert`).
#[derive(Clone)]
pub struct ClientPortConnector {
    connector: tokio_rustls::TlsConnector,
    ca: PathBuf,
}

impl std::fmt::Debug for ClientPortConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientPortConnector({})", self.ca.display())
    }
}

impl ClientPortConnector {
    /// Trusts the CA certificates in `ca` (PEM).
    pub fn new(ca: &Path) -> anyhow::Result<ClientPortConnector> {
        let (_, roots) = read_roots(ca)?;
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ClientPortConnector { connector: tokio_rustls::TlsConnector::from(Arc::new(config)), ca: ca.to_path_buf() })
    }

    /// The handshake over `tcp`, connected to `addr` (`host:port`, as the user gave it: its
    /// host is the name the server's certificate must carry), bounded by
    /// [`HANDSHAKE_TIMEOUT`]. The errors say which side is likely wrong.
    pub async fn handshake(&self, addr: &str, tcp: TcpStream) -> anyhow::Result<ClientTlsStream> {
        let server_name = server_name(addr)?;
        let socket = ServerSocket { tcp, first: Vec::new() };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.connector.connect(server_name, socket).into_fallible()).await
        {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err((err, socket))) if spoke_no_tls(&err) => match plain_answer(&socket.first) {
                // Protected mode and --max-connections refuse before any handshake, in
                // plain text: their line says what to fix, a TLS error would not.
                Some(PlainAnswer::Refusal(line)) => {
                    Err(anyhow::anyhow!("the server at {addr} refused before TLS: {line}"))
                }
                Some(PlainAnswer::Other(line)) => Err(anyhow::anyhow!(
                    "the server at {addr} did not answer TLS (it answered in plain text: {line}): is it started with \
                     --tls-cert?"
                )),
                None => Err(anyhow::anyhow!(
                    "the server at {addr} did not answer TLS ({err}): is it started with --tls-cert?"
                )),
            },
            Ok(Err((err, _))) => Err(anyhow::anyhow!(
                "TLS handshake with {addr} failed: {err} (is its certificate signed by {}?)",
                self.ca.display()
            )),
            Err(_) => Err(anyhow::anyhow!(
                "the server at {addr} did not answer TLS within {HANDSHAKE_TIMEOUT:?}: is it started with --tls-cert?"
            )),
        }
    }

    /// Connects to `addr` and completes the handshake.
    pub async fn connect(&self, addr: &str) -> anyhow::Result<ClientTlsStream> {
        let connecting = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr));
        let tcp = connecting
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))
            .and_then(|connected| connected)
            .with_context(|| format!("cannot connect to {addr}"))?;
        tcp.set_nodelay(true)?;
        self.handshake(addr, tcp).await
    }
}

/// The socket under a client's TLS stream. It keeps a copy of the first bytes the server
/// sends, so that a handshake failed by a plain-text answer can show what it said.
#[derive(Debug)]
pub struct ServerSocket {
    tcp: TcpStream,
    first: Vec<u8>,
}

impl AsyncRead for ServerSocket {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.tcp).poll_read(cx, buf);
        let room = FIRST_BYTES.saturating_sub(self.first.len());
        if room > 0 {
            let read = &buf.filled()[before..];
            let kept = &read[..read.len().min(room)];
            self.first.extend_from_slice(kept);
        }
        polled
    }
}

impl AsyncWrite for ServerSocket {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// What a server that does not speak TLS sent first, when it is a line of text.
#[derive(Debug, PartialEq)]
enum PlainAnswer {
    /// An error line of msglog's (text `ERR …` or RESP `-…`) sent before reading anything:
    /// a refusal of the connection.
    Refusal(String),
    /// Any other text, such as a plain port's answer to the handshake it took for a command.
    Other(String),
}

/// The first line of `first` if it is printable text, else `None`: a TLS alert or another
/// protocol's binary greeting says nothing readable.
fn plain_answer(first: &[u8]) -> Option<PlainAnswer> {
    let line = first.split(|&b| b == b'\n').next()?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() || !line.iter().all(|&b| b == b' ' || b.is_ascii_graphic()) {
        return None;
    }
    let line = String::from_utf8_lossy(line).into_owned();
    // A plain msglog port quotes the handshake record it was sent (escaped as `\x16\x03`).
    let answers_handshake = line.contains("\\x16\\x03");
    let refusal = (line.starts_with("ERR ") || line.starts_with('-')) && !answers_handshake;
    Some(if refusal { PlainAnswer::Refusal(line) } else { PlainAnswer::Other(line) })
}

/// The host part of `host:port`, as a TLS server name (a DNS name or an IP address).
pub(super) fn server_name(addr: &str) -> anyhow::Result<ServerName<'static>> {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host).trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).with_context(|| format!("{host} is not a TLS server name"))
}

/// The CLI's TLS connection to a client port, as a plain loopback socket: a thread relays
/// between it and the TLS stream. `msglog client` pipes stdin on one thread while it reads
/// replies on another, over `try_clone`d halves of one socket; a blocking rustls stream has
/// one owner, so the relay is what gives TLS the same two halves.
pub fn connect_client_port(addr: &str, ca: &Path) -> anyhow::Result<std::net::TcpStream> {
    let connector = ClientPortConnector::new(ca)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    let local = std::net::TcpListener::bind("127.0.0.1:0").context("binding the local relay")?;
    let local_addr = local.local_addr()?;
    let tls = runtime.block_on(connector.connect(addr))?;
    let user = std::net::TcpStream::connect(local_addr).context("connecting the local relay")?;
    let relay = accept_only(&local, user.local_addr()?)?;
    // Small requests and replies cross the relay one at a time: no Nagle delay on either leg.
    user.set_nodelay(true)?;
    relay.set_nodelay(true)?;
    std::thread::spawn(move || {
        runtime.block_on(async move {
            relay.set_nonblocking(true)?;
            let mut relay = TcpStream::from_std(relay)?;
            let mut tls = tls;
            tokio::io::copy_bidirectional(&mut relay, &mut tls).await.map(|_| ())
        })
    });
    Ok(user)
}

/// A handshake that got bytes which are not TLS, or none at all: a plain server.
fn spoke_no_tls(err: &io::Error) -> bool {
    let rustls_error = err.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>());
    matches!(rustls_error, Some(rustls::Error::InvalidMessage(_)))
        || matches!(err.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset)
}

/// The relay's end of `user`'s connection: another local process that raced to connect
/// first must not be handed the TLS session.
fn accept_only(local: &std::net::TcpListener, user: std::net::SocketAddr) -> anyhow::Result<std::net::TcpStream> {
    for _ in 0..16 {
        let (relay, from) = local.accept().context("accepting the local relay")?;
        if from == user {
            return Ok(relay);
        }
    }
    anyhow::bail!("the local relay socket was taken by other processes")
}

#[cfg(test)]
mod tests {
    use super::{PlainAnswer, plain_answer};

    #[test]
    fn a_printable_error_line_is_a_refusal_and_an_answer_to_the_handshake_is_not() {
        let refusal = |line: &str| Some(PlainAnswer::Refusal(line.to_string()));
        assert_eq!(plain_answer(b"ERR too many connections\r\n"), refusal("ERR too many connections"));
        assert_eq!(
            plain_answer(b"-DENIED msglog is in protected mode\r\n"),
            refusal("-DENIED msglog is in protected mode")
        );
        let echoed = "ERR unknown command '\\x16\\x03\\x01\\x00'; try HELP";
        assert_eq!(plain_answer(format!("{echoed}\n").as_bytes()), Some(PlainAnswer::Other(echoed.to_string())));
        assert_eq!(plain_answer(b"\x15\x03\x03\x00\x02\x02\x28"), None, "a TLS alert");
        assert_eq!(plain_answer(b""), None);
    }
}
