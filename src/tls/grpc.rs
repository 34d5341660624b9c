//! Mutual TLS on the gRPC port. The server side is our own rustls acceptor rather than
//! tonic's: tonic fixes its TLS when the server is built, while ours is swapped by a SIGHUP
//! reload like the client port's. What this node presents to its peers is tonic's
//! `ClientTlsConfig`, fixed at start (docs/SECURITY.md).

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{AlertDescription, ServerConfig};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity as TonicIdentity};

use super::{Acceptor, ServerStream, TlsError, parse_key, provider, read, read_certs, read_roots};

/// Mutual TLS on the gRPC port: the server side, and what this node presents to peers.
#[derive(Clone, Debug)]
pub struct GrpcTls {
    pub client: ClientTlsConfig,
    acceptor: Acceptor,
    /// Tells a node's certificate (one a server may present) from a consumer's; replaced
    /// with the acceptor, so a renewed CA applies to both.
    node_certificates: Arc<RwLock<Arc<WebPkiServerVerifier>>>,
}

/// The node's own certificate and key, parsed and as PEM (tonic's client takes PEM).
pub(super) struct Identity<'a> {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub cert_pem: &'a [u8],
    pub key_pem: &'a [u8],
}

impl GrpcTls {
    /// Trusts the CA bundle at `ca_path` for callers and peers. A certificate that does not
    /// go with its key is a `Setup` error, for the caller to name the files.
    pub(super) fn load(ca_path: &Path, identity: Identity<'_>) -> Result<GrpcTls, TlsError> {
        let (ca_pem, roots) = read_roots(ca_path)?;
        let roots = Arc::new(roots);
        let invalid = |err: rustls::server::VerifierBuilderError| TlsError::Invalid {
            what: "--tls-ca",
            path: ca_path.to_path_buf(),
            reason: err.to_string(),
        };
        let callers =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), provider()).build().map_err(invalid)?;
        let node_certificates =
            WebPkiServerVerifier::builder_with_provider(roots, provider()).build().map_err(invalid)?;
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|err| TlsError::Setup(err.to_string()))?
            .with_client_cert_verifier(callers)
            .with_single_cert(identity.certs, identity.key)
            .map_err(|err| TlsError::Setup(err.to_string()))?;
        // gRPC is HTTP/2 only; tonic's clients insist that TLS negotiated it.
        server.alpn_protocols = vec![b"h2".to_vec()];
        let client = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&ca_pem))
            .identity(TonicIdentity::from_pem(identity.cert_pem, identity.key_pem));
        Ok(GrpcTls {
            client,
            acceptor: Acceptor::new("gRPC", tokio_rustls::TlsAcceptor::from(Arc::new(server))),
            node_certificates: Arc::new(RwLock::new(node_certificates)),
        })
    }

    /// Takes `renewed`'s certificates for the connections accepted from now on.
    pub(super) fn replace(&self, renewed: &GrpcTls) {
        self.acceptor.replace(renewed.acceptor.current());
        let verifier = Arc::clone(&renewed.node_certificates.read().unwrap_or_else(|e| e.into_inner()));
        *self.node_certificates.write().unwrap_or_else(|e| e.into_inner()) = verifier;
    }

    /// The TLS connections accepted on `listener`, for tonic to serve. Each handshake runs in
    /// a task of its own, bounded by `HANDSHAKE_TIMEOUT`, so a silent caller holds up no
    /// other; refused ones are logged (see [`Acceptor`]). Accepted sockets get TCP_NODELAY,
    /// as plain ones do: a small reply must not wait for the peer's delayed ACK. Ends when
    /// the server stops reading it.
    pub fn incoming(&self, listener: TcpListener) -> ReceiverStream<std::io::Result<ServerStream>> {
        let (accepted, incoming) = mpsc::channel(16);
        let acceptor = self.acceptor.clone();
        tokio::spawn(async move {
            let mut handshakes = JoinSet::new();
            let mut backoff = Duration::from_millis(5);
            loop {
                tokio::select! {
                    connection = listener.accept() => match connection {
                        Ok((tcp, _)) => {
                            backoff = Duration::from_millis(5);
                            if let Err(err) = tcp.set_nodelay(true) {
                                tracing::debug!(%err, "could not set TCP_NODELAY");
                            }
                            let acceptor = acceptor.clone();
                            handshakes.spawn(async move { acceptor.accept(tcp).await });
                        }
                        // Out of file descriptors, say: back off rather than spin or stop.
                        Err(err) => {
                            tracing::warn!(%err, ?backoff, "gRPC accept failed; backing off");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(1));
                        }
                    },
                    Some(done) = handshakes.join_next() => match done {
                        Ok(Ok(stream)) => {
                            if accepted.send(Ok(stream)).await.is_err() {
                                return;
                            }
                        }
                        // Refusals are logged by the acceptor; a plain-text caller gets no
                        // answer here (it would have to be HTTP/2's).
                        Ok(Err(_)) => {}
                        Err(err) => tracing::warn!(%err, "a gRPC TLS handshake task failed"),
                    },
                    () = accepted.closed() => return,
                }
            }
        });
        ReceiverStream::new(incoming)
    }
}

/// What a TLS client (`msglog client|tail`) trusts, and the certificate it may present.
pub fn load_grpc_client(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<ClientTlsConfig, TlsError> {
    let (ca_pem, _) = read_roots(ca)?;
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    if let Some((cert, key)) = identity {
        let (cert_pem, _) = read_certs(cert, "--cert")?;
        let key_pem = read(key, "--key")?;
        parse_key(&key_pem, key)?;
        config = config.identity(TonicIdentity::from_pem(cert_pem, key_pem));
    }
    Ok(config)
}

/// Whether the gRPC port at `addr` refuses a caller that presents no client certificate,
/// as a node started with `--tls-ca` does; `ca` is the CA its certificate is checked
/// against. For telling a user why a call without `--cert` failed: under TLS 1.3 the node
/// refuses after the handshake, with an alert a gRPC client that is already writing its
/// request seldom reads (it sees only a closed connection). This connection writes nothing
/// once the handshake is done, so the alert is what it reads.
pub async fn requires_client_certificate(addr: &str, ca: &Path) -> bool {
    let Ok((_, roots)) = read_roots(ca) else { return false };
    let Ok(versions) = rustls::ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()
    else {
        return false;
    };
    let config = versions.with_root_certificates(roots).with_no_client_auth();
    let Ok(name) = super::client::server_name(addr) else { return false };
    let probe = async {
        let tcp = TcpStream::connect(addr).await?;
        // Under TLS 1.2 the alert ends the handshake itself.
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await?;
        tls.read(&mut [0u8; 1]).await
    };
    match tokio::time::timeout(super::HANDSHAKE_TIMEOUT, probe).await {
        Ok(Err(err)) => {
            let alert = err.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>());
            matches!(alert, Some(rustls::Error::AlertReceived(AlertDescription::CertificateRequired)))
        }
        _ => false,
    }
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

    /// Whether it is the certificate of node `node_id`: it names the node (see
    /// [`names`](Self::names)) and a server may present it (its extended key usage, if it
    /// has one, allows serverAuth, as every node's own certificate must). A consumer's
    /// client-only certificate therefore cannot pose as a replica, even one called like it.
    pub fn is_node(&self, grpc: &GrpcTls, node_id: &str) -> bool {
        let Ok(name) = ServerName::try_from(node_id.to_string()) else { return false };
        let (end_entity, intermediates) = (&self.0[0], &self.0[1..]);
        let verifier = Arc::clone(&grpc.node_certificates.read().unwrap_or_else(|e| e.into_inner()));
        self.names(node_id)
            && verifier.verify_server_cert(end_entity, intermediates, &name, &[], UnixTime::now()).is_ok()
    }
}

/// Whether the caller presented a certificate of the cluster's CA.
pub fn peer_certified<T>(request: &tonic::Request<T>) -> bool {
    PeerCertificate::of(request).is_some()
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
