//! TLS for both ports (docs/SECURITY.md): the only module that names rustls types.
//!
//! `--tls-cert` + `--tls-key` make the client port speak TLS only. With `--tls-ca` as well,
//! the gRPC port speaks mutual TLS: it asks every caller for a certificate signed by that
//! CA, and the node presents its own when it calls peers. A node's identity is a DNS
//! subject alternative name equal to its node id; [`PeerCertificate::is_node`] checks a
//! caller's claim against it.
//!
//! Everything is loaded and checked at start, so a wrong file fails `msglog serve` with a
//! message naming it rather than failing each handshake later. SIGHUP loads them again
//! ([`reload`]). Handshakes either port refuses are logged at INFO, throttled.

mod certificate;
mod client;
mod grpc;
mod reload;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpStream;

use crate::throttle::Throttle;

/// How long a client may take to complete the TLS handshake on either side; a silent
/// peer would otherwise hold a connection slot (server) or hang the CLI (client).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the client port answers a client that speaks plain text to it.
pub const PLAIN_TO_TLS_PORT: &str = "this port speaks TLS only: connect with TLS (msglog client --tls --cacert ca.pem, redis-cli --tls --cacert ca.pem)";

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The TLS files a node was started with (`--tls-cert`, `--tls-key`, `--tls-ca`).
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}")]
    Combination(&'static str),
    #[error("cannot read {what} {}: {source}", path.display())]
    Read { what: &'static str, path: PathBuf, source: io::Error },
    #[error("{what} {} is not usable: {reason}", path.display())]
    Invalid { what: &'static str, path: PathBuf, reason: String },
    #[error("the key {} does not match the certificate {}: {reason}", key.display(), cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf, reason: String },
    #[error("TLS setup failed: {0}")]
    Setup(String),
}

pub use client::{ClientPortConnector, ClientTlsStream, ServerSocket, connect_client_port};
pub use grpc::{GrpcTls, PeerCertificate, endpoint, load_grpc_client, peer_certified, requires_client_certificate};
pub use reload::{CertificateReload, watch_hangup};

/// A port's TLS: what each accepted connection's handshake uses. Clones share one
/// acceptor, which a reload replaces; a connection keeps the one it was accepted with.
#[derive(Clone)]
pub struct Acceptor {
    current: Arc<RwLock<tokio_rustls::TlsAcceptor>>,
    /// Which port, for the log.
    port: &'static str,
    /// Refused handshakes are worth seeing, but a scanner must not flood the journal.
    refusals: Arc<Throttle>,
}

/// The client port's TLS.
pub type ClientPortTls = Acceptor;

impl Acceptor {
    fn new(port: &'static str, acceptor: tokio_rustls::TlsAcceptor) -> Acceptor {
        Acceptor { current: Arc::new(RwLock::new(acceptor)), port, refusals: Arc::default() }
    }

    /// An acceptor is an `Arc` inside: the clone is cheap and the lock is held only for it.
    fn current(&self) -> tokio_rustls::TlsAcceptor {
        self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    fn replace(&self, acceptor: tokio_rustls::TlsAcceptor) {
        *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = acceptor;
    }

    /// Logs a handshake this port refused, at most once per interval with how many like it
    /// were left out: wrong CAs, expired or missing client certificates and plain text are
    /// otherwise invisible on the server.
    fn refused(&self, peer: Option<SocketAddr>, reason: &dyn std::fmt::Display) {
        if let Some(held_back) = self.refusals.admit() {
            let peer = peer.map_or_else(|| "unknown".to_string(), |peer| peer.to_string());
            tracing::info!(
                %peer, %reason, held_back,
                "TLS handshake refused on the {} port (such refusals are logged once per 10 s)", self.port
            );
        }
    }
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Acceptor({})", self.port)
    }
}

/// A node's TLS, loaded at start.
#[derive(Clone, Debug)]
pub struct NodeTls {
    pub client_port: ClientPortTls,
    /// Present with `--tls-ca`.
    pub grpc: Option<GrpcTls>,
    /// The DNS and IP names of the node's certificate, for the log.
    names: Vec<String>,
    /// What a reload reads again, and checks as at start.
    files: TlsFiles,
    node_id: Option<String>,
}

/// The client port's side of an accepted TLS connection.
pub type ServerStream = tokio_rustls::server::TlsStream<TcpStream>;

/// Loads and checks the files; `None` when none was given. `node_id` (`--node-id`) must be a
/// DNS name of the certificate under mutual TLS, where peers take a node's id from it.
pub fn load_node(files: &TlsFiles, node_id: Option<&str>) -> Result<Option<NodeTls>, TlsError> {
    let (cert_path, key_path) = match (&files.cert, &files.key, &files.ca) {
        (None, None, None) => return Ok(None),
        (Some(cert), Some(key), _) => (cert, key),
        (Some(_), None, _) => {
            return Err(TlsError::Combination("--tls-cert needs --tls-key (the certificate's private key)"));
        }
        (None, Some(_), _) => {
            return Err(TlsError::Combination("--tls-key needs --tls-cert (the certificate it belongs to)"));
        }
        (None, None, Some(_)) => {
            return Err(TlsError::Combination("--tls-ca needs --tls-cert and --tls-key: the node's own certificate"));
        }
    };
    let (cert_pem, certs) = read_certs(cert_path, "--tls-cert")?;
    // The DNS names as peers read them (`PeerCertificate::names`), for the node id check too.
    let names = certificate_names(&certs[0]);
    if let Some(reason) = certificate::unfit(&certs[0], files.ca.is_some(), node_id, &names) {
        return Err(TlsError::Invalid { what: "--tls-cert", path: cert_path.clone(), reason });
    }
    let key_pem = read(key_path, "--tls-key")?;
    let key = parse_key(&key_pem, key_path)?;
    let mismatch = |err: rustls::Error| TlsError::Mismatch {
        cert: cert_path.clone(),
        key: key_path.clone(),
        reason: err.to_string(),
    };
    let server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|err| TlsError::Setup(err.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs.clone(), key.clone_key())
        .map_err(mismatch)?;
    let client_port = Acceptor::new("client", tokio_rustls::TlsAcceptor::from(Arc::new(server)));
    let grpc = match &files.ca {
        None => None,
        Some(ca_path) => {
            let identity = grpc::Identity { certs, key, cert_pem: &cert_pem, key_pem: &key_pem };
            Some(GrpcTls::load(ca_path, identity)?)
        }
    };
    let node_id = node_id.map(str::to_string);
    Ok(Some(NodeTls { client_port, grpc, names, files: files.clone(), node_id }))
}

/// Why an accepted connection did not become a TLS stream.
#[derive(Debug)]
pub enum HandshakeFailure {
    /// It spoke first in plain text: worth answering in plain text on its socket.
    Plain(TcpStream),
    Failed(io::Error),
    TimedOut,
}

impl std::fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeFailure::Plain(_) => f.write_str("the client spoke plain text, not TLS"),
            HandshakeFailure::Failed(err) => write!(f, "{err}"),
            HandshakeFailure::TimedOut => write!(f, "no handshake within {HANDSHAKE_TIMEOUT:?}"),
        }
    }
}

impl Acceptor {
    /// The server side of a handshake on this port, bounded by [`HANDSHAKE_TIMEOUT`]. A
    /// refusal is logged here, throttled; a connection closed before its first byte (a
    /// health check, a port probe) is not a refusal.
    pub async fn accept(&self, tcp: TcpStream) -> Result<ServerStream, HandshakeFailure> {
        let peer = tcp.peer_addr().ok();
        // One bound for the first byte and the handshake together.
        let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
        let mut first = [0u8; 1];
        let refusal = match tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await {
            Ok(Ok(0)) => return Err(HandshakeFailure::Failed(io::ErrorKind::UnexpectedEof.into())),
            Ok(Ok(_)) if first[0] != TLS_HANDSHAKE_RECORD => HandshakeFailure::Plain(tcp),
            Ok(Ok(_)) => match tokio::time::timeout_at(deadline, self.current().accept(tcp)).await {
                Ok(Ok(stream)) => return Ok(stream),
                Ok(Err(err)) => HandshakeFailure::Failed(err),
                Err(_) => HandshakeFailure::TimedOut,
            },
            Ok(Err(err)) => HandshakeFailure::Failed(err),
            Err(_) => HandshakeFailure::TimedOut,
        };
        self.refused(peer, &refusal);
        Err(refusal)
    }
}

/// The DNS names a certificate carries, read as peers read them (`PeerCertificate::names`):
/// logged so an operator can tell which one a node loaded, and checked against `--node-id`.
fn certificate_names(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok(cert) = webpki::EndEntityCert::try_from(cert) else { return Vec::new() };
    cert.valid_dns_names().map(str::to_string).collect()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.to_path_buf(), source })
}

fn read_certs(path: &Path, what: &'static str) -> Result<(Vec<u8>, Vec<CertificateDer<'static>>), TlsError> {
    let pem = read(path, what)?;
    let invalid = |reason: String| TlsError::Invalid { what, path: path.to_path_buf(), reason };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| invalid(format!("not PEM: {err}")))?;
    if certs.is_empty() {
        return Err(invalid("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_string()));
    }
    Ok((pem, certs))
}

fn read_roots(path: &Path) -> Result<(Vec<u8>, RootCertStore), TlsError> {
    let what = "--tls-ca";
    let (pem, certs) = read_certs(path, what)?;
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|err| TlsError::Invalid {
            what,
            path: path.to_path_buf(),
            reason: format!("a certificate is not a usable CA: {err}"),
        })?;
    }
    Ok((pem, roots))
}

fn parse_key(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|err| TlsError::Invalid {
        what: "--tls-key",
        path: path.to_path_buf(),
        reason: format!("holds no PEM private key (PKCS#8, RSA or EC): {err}"),
    })
}
