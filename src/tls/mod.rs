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
//! ([`reload`]).

mod client;
mod reload;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

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
pub use reload::{CertificateReload, watch_hangup};

/// The client port's TLS: what each accepted connection's handshake uses. Clones share one
/// acceptor, which a reload replaces; a connection keeps the one it was accepted with.
#[derive(Clone)]
pub struct ClientPortTls(Arc<RwLock<tokio_rustls::TlsAcceptor>>);

impl ClientPortTls {
    fn new(acceptor: tokio_rustls::TlsAcceptor) -> ClientPortTls {
        ClientPortTls(Arc::new(RwLock::new(acceptor)))
    }

    /// An acceptor is an `Arc` inside: the clone is cheap and the lock is held only for it.
    fn current(&self) -> tokio_rustls::TlsAcceptor {
        self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    fn replace(&self, acceptor: tokio_rustls::TlsAcceptor) {
        *self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = acceptor;
    }
}

impl std::fmt::Debug for ClientPortTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientPortTls")
    }
}

/// Mutual TLS on the gRPC port: the server side, and what this node presents to peers.
#[derive(Clone, Debug)]
pub struct GrpcTls {
    pub server: ServerTlsConfig,
    pub client: ClientTlsConfig,
    /// Tells a node's certificate (one a server may present) from a consumer's.
    node_certificates: Arc<WebPkiServerVerifier>,
}

/// A node's TLS, loaded at start.
#[derive(Clone, Debug)]
pub struct NodeTls {
    pub client_port: ClientPortTls,
    /// Present with `--tls-ca`.
    pub grpc: Option<GrpcTls>,
    /// The DNS and IP names of the node's certificate, for the log.
    names: Vec<String>,
}

/// The client port's side of an accepted TLS connection.
pub type ServerStream = tokio_rustls::server::TlsStream<TcpStream>;

/// Loads and checks the files; `None` when none was given.
pub fn load_node(files: &TlsFiles) -> Result<Option<NodeTls>, TlsError> {
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
    let names = certificate_names(&certs[0]);
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
        .with_single_cert(certs, key)
        .map_err(mismatch)?;
    let client_port = ClientPortTls::new(tokio_rustls::TlsAcceptor::from(Arc::new(server)));
    let grpc = match &files.ca {
        None => None,
        Some(ca_path) => {
            let (ca_pem, roots) = read_roots(ca_path)?;
            // Checked here so a bad bundle names its file; tonic builds the same from PEM.
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots.clone()), provider()).build().map_err(
                |err| TlsError::Invalid { what: "--tls-ca", path: ca_path.clone(), reason: err.to_string() },
            )?;
            let node_certificates =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider()).build().map_err(|err| {
                    TlsError::Invalid { what: "--tls-ca", path: ca_path.clone(), reason: err.to_string() }
                })?;
            let identity = Identity::from_pem(&cert_pem, &key_pem);
            let ca = Certificate::from_pem(&ca_pem);
            Some(GrpcTls {
                server: ServerTlsConfig::new()
                    .identity(identity.clone())
                    .client_ca_root(ca.clone())
                    .timeout(HANDSHAKE_TIMEOUT),
                client: ClientTlsConfig::new().ca_certificate(ca).identity(identity),
                node_certificates,
            })
        }
    };
    Ok(Some(NodeTls { client_port, grpc, names }))
}

/// What a TLS client (`msglog client|tail`) trusts, and the certificate it may present.
pub fn load_grpc_client(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<ClientTlsConfig, TlsError> {
    let (ca_pem, _) = read_roots(ca)?;
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    if let Some((cert, key)) = identity {
        let (cert_pem, _) = read_certs(cert, "--cert")?;
        let key_pem = read(key, "--key")?;
        parse_key(&key_pem, key)?;
        config = config.identity(Identity::from_pem(cert_pem, key_pem));
    }
    Ok(config)
}

/// A gRPC endpoint for `addr` (`host:port`): `https` with `tls`, `http` without.
pub fn endpoint(addr: &str, tls: Option<&ClientTlsConfig>) -> Result<Endpoint, tonic::transport::Error> {
    match tls {
        None => Endpoint::from_shared(format!("http://{addr}")),
        Some(tls) => Endpoint::from_shared(format!("https://{addr}"))?.tls_config(tls.clone()),
    }
}

/// The certificate a gRPC caller presented, already verified against `--tls-ca` by the
/// handshake.
#[derive(Clone)]
pub struct PeerCertificate(Arc<Vec<CertificateDer<'static>>>);

impl PeerCertificate {
    /// The caller's certificate, if it presented one (only under mutual TLS).
    pub fn of<T>(request: &tonic::Request<T>) -> Option<PeerCertificate> {
        request.peer_certs().filter(|certs| !certs.is_empty()).map(PeerCertificate)
    }

    /// Whether it names `node_id`: a DNS subject alternative name equal to it, byte for
    /// byte. Not host name matching: a wildcard such as `*.example` names no node, so one
    /// certificate can never speak for a whole domain of node ids.
    pub fn names(&self, node_id: &str) -> bool {
        let Ok(cert) = webpki::EndEntityCert::try_from(&self.0[0]) else { return false };
        cert.valid_dns_names().any(|name| name == node_id && !name.contains('*'))
    }
}

impl PeerCertificate {
    /// Whether it is the certificate of node `node_id`: it names the node (see
    /// [`names`](Self::names)) and a server may present it (its extended key usage, if it
    /// has one, allows serverAuth, as every node's own certificate must). A consumer's
    /// client-only certificate therefore cannot pose as a replica, even one called like it.
    pub fn is_node(&self, grpc: &GrpcTls, node_id: &str) -> bool {
        let Ok(name) = ServerName::try_from(node_id.to_string()) else { return false };
        let (end_entity, intermediates) = (&self.0[0], &self.0[1..]);
        self.names(node_id)
            && grpc.node_certificates.verify_server_cert(end_entity, intermediates, &name, &[], UnixTime::now()).is_ok()
    }
}

/// Whether the caller presented a certificate of the cluster's CA.
pub fn peer_certified<T>(request: &tonic::Request<T>) -> bool {
    PeerCertificate::of(request).is_some()
}

/// Why an accepted connection did not become a TLS stream.
#[derive(Debug)]
pub enum HandshakeFailure {
    /// It spoke first in plain text: worth answering in plain text on its socket.
    Plain(TcpStream),
    Failed(io::Error),
    TimedOut,
}

/// The server side of the client port's handshake, bounded by [`HANDSHAKE_TIMEOUT`].
pub async fn accept(tls: &ClientPortTls, tcp: TcpStream) -> Result<ServerStream, HandshakeFailure> {
    // One bound for the first byte and the handshake together.
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await {
        Err(_) => return Err(HandshakeFailure::TimedOut),
        Ok(Err(err)) => return Err(HandshakeFailure::Failed(err)),
        Ok(Ok(0)) => return Err(HandshakeFailure::Failed(io::ErrorKind::UnexpectedEof.into())),
        Ok(Ok(_)) if first[0] != TLS_HANDSHAKE_RECORD => return Err(HandshakeFailure::Plain(tcp)),
        Ok(Ok(_)) => {}
    }
    match tokio::time::timeout_at(deadline, tls.current().accept(tcp)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(err)) => Err(HandshakeFailure::Failed(err)),
        Err(_) => Err(HandshakeFailure::TimedOut),
    }
}

/// What a certificate names: enough for an operator to tell which one a node loaded.
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate (self-signed: `names` looks only at its names) with these DNS SANs.
    fn certificate(names: &[&str]) -> PeerCertificate {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(names).expect("params").self_signed(&key).expect("cert");
        PeerCertificate(Arc::new(vec![cert.der().clone()]))
    }

    #[test]
    fn a_certificate_names_a_node_only_by_an_exact_dns_name() {
        let cert = certificate(&["n1", "n1.cluster.example"]);
        assert!(cert.names("n1"));
        assert!(cert.names("n1.cluster.example"));
        assert!(!cert.names("n2"));
        assert!(!cert.names("N1"), "node ids are compared byte for byte");
        let wildcard = certificate(&["*.cluster.example"]);
        assert!(!wildcard.names("n1.cluster.example"), "a wildcard names no node");
        assert!(!wildcard.names("*.cluster.example"), "not even one called like it");
    }
}
