//! Certificates made in the test (rcgen), a blocking TLS line client for the client port,
//! and a hand-made replication caller for the gRPC port under mutual TLS.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use tonic::{Request, Status, Streaming};
use tonic_prost::ProstCodec;

use super::wire::{Ack, AckSummary, FetchRequest, FetchResponse, ProposeReply, ProposeRequest};

/// A CA that signs node and client certificates into `dir`.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub cert: PathBuf,
    dir: PathBuf,
}

/// A certificate and its key, as PEM files.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Ca {
    pub fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA cert");
        let cert = dir.join(format!("{name}.pem"));
        std::fs::write(&cert, issuer.pem()).expect("write CA");
        Ca { issuer, cert, dir: dir.to_path_buf() }
    }

    /// A certificate with CN `name`, a DNS SAN `name` and IP SANs for 127.0.0.1 (what
    /// peers dial) — the node identity rule of docs/SECURITY.md.
    pub fn issue(&self, name: &str) -> Issued {
        self.issue_with(name, |params| {
            params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().expect("ip")))
        })
    }

    /// A consumer's certificate (`msglog tail`), as docs/SECURITY.md makes one: DNS name
    /// `name`, extended key usage clientAuth only.
    pub fn issue_consumer(&self, name: &str) -> Issued {
        self.issue_with(name, |params| params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth])
    }

    /// A node certificate as [`issue`](Self::issue) makes one, but valid only in 2000.
    pub fn issue_expired(&self, name: &str) -> Issued {
        self.issue_with(name, |params| {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2000, 12, 31);
        })
    }

    /// A certificate with CN and DNS SAN `name`, adjusted by `adjust`, signed by this CA.
    fn issue_with(&self, name: &str, adjust: impl FnOnce(&mut CertificateParams)) -> Issued {
        let mut params = CertificateParams::new(vec![name.to_string()]).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        adjust(&mut params);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let issued = Issued { cert: self.dir.join(format!("{name}.pem")), key: self.dir.join(format!("{name}.key")) };
        std::fs::write(&issued.cert, cert.pem()).expect("write cert");
        std::fs::write(&issued.key, key.serialize_pem()).expect("write key");
        issued
    }
}

impl Issued {
    /// `msglog serve` flags for this certificate, with `ca` as the cluster's CA if given.
    pub fn serve_args(&self, ca: Option<&Path>) -> Vec<String> {
        let mut args = vec![
            "--tls-cert".to_string(),
            self.cert.display().to_string(),
            "--tls-key".to_string(),
            self.key.display().to_string(),
        ];
        if let Some(ca) = ca {
            args.extend(["--tls-ca".to_string(), ca.display().to_string()]);
        }
        args
    }
}

/// One text-protocol request over TLS, trusting `ca`; the reply line without its newline.
pub fn request(addr: SocketAddr, ca: &Path, line: &str) -> std::io::Result<String> {
    Ok(pipeline(addr, ca, &[line])?.remove(0))
}

/// Text-protocol requests sent at once over TLS; their reply lines, in order.
pub fn pipeline(addr: SocketAddr, ca: &Path, lines: &[&str]) -> std::io::Result<Vec<String>> {
    let mut stream = connect(addr, ca)?;
    let requests: String = lines.iter().map(|line| format!("{line}\n")).collect();
    stream.write_all(requests.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut replies = Vec::new();
    for _ in lines {
        let mut reply = String::new();
        reader.read_line(&mut reply)?;
        replies.push(reply.trim_end().to_string());
    }
    Ok(replies)
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection to the client port trusting `ca`; the handshake runs on first use.
fn connect(addr: SocketAddr, ca: &Path) -> std::io::Result<TlsStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("read CA") {
        roots.add(cert.expect("CA PEM")).expect("CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::IpAddress(addr.ip().into());
    let connection = rustls::ClientConnection::new(Arc::new(config), name).map_err(std::io::Error::other)?;
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(super::DEADLINE))?;
    Ok(rustls::StreamOwned::new(connection, tcp))
}

/// One TLS connection kept open across requests (to show what a reload leaves alone).
pub struct TlsLineClient {
    reader: BufReader<TlsStream>,
}

impl TlsLineClient {
    pub fn connect(addr: SocketAddr, ca: &Path) -> std::io::Result<TlsLineClient> {
        Ok(TlsLineClient { reader: BufReader::new(connect(addr, ca)?) })
    }

    /// Sends `line` and returns the reply line without its newline.
    pub fn request(&mut self, line: &str) -> std::io::Result<String> {
        self.reader.get_mut().write_all(format!("{line}\n").as_bytes())?;
        let mut reply = String::new();
        if self.reader.read_line(&mut reply)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(reply.trim_end().to_string())
    }

    /// The certificate chain the server presented in this connection's handshake.
    pub fn server_certificate(&self) -> Option<Vec<u8>> {
        let certs = self.reader.get_ref().conn.peer_certificates()?;
        certs.first().map(|cert| cert.to_vec())
    }
}

/// STATS over TLS as a map of its `key=value` pairs; `None` while the node cannot answer.
pub fn stats(addr: SocketAddr, ca: &Path) -> Option<std::collections::HashMap<String, String>> {
    let line = request(addr, ca, "STATS").ok()?;
    let pairs = line.split_whitespace().filter_map(|pair| pair.split_once('='));
    Some(pairs.map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

/// What a gRPC client presents: trusts `ca`, and presents `identity` if given.
pub fn grpc_client(ca: &Path, identity: Option<&Issued>) -> ClientTlsConfig {
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(ca).expect("CA")));
    if let Some(issued) = identity {
        let cert = std::fs::read(&issued.cert).expect("cert");
        let key = std::fs::read(&issued.key).expect("key");
        config = config.identity(Identity::from_pem(cert, key));
    }
    config
}

/// A replication caller that says what it likes about who it is.
pub struct Caller {
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
}

impl Caller {
    /// Connects over TLS; fails at the handshake when the server refuses the certificate.
    pub async fn connect(addr: SocketAddr, tls: &ClientTlsConfig) -> Result<Caller, tonic::transport::Error> {
        let channel = msglog::tls::endpoint(&addr.to_string(), Some(tls))?.connect().await?;
        Ok(Caller { grpc: tonic::client::Grpc::new(channel) })
    }

    /// Fetches as replica `follower_id` and reads the first message.
    pub async fn fetch(&mut self, follower_id: &str) -> Result<FetchResponse, Status> {
        self.grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
        let request = FetchRequest { follower_id: follower_id.to_string(), next_offset: 0, follow: false };
        let path = PathAndQuery::from_static("/msglog.v1.Replication/Fetch");
        let codec = ProstCodec::<FetchRequest, FetchResponse>::default();
        let mut stream: Streaming<FetchResponse> =
            self.grpc.server_streaming(Request::new(request), path, codec).await?.into_inner();
        stream.message().await?.ok_or_else(|| Status::unknown("the stream ended without a message"))
    }

    /// Proposes a metadata command (its serde_json) to the quorum, naming `voters` (the
    /// cluster's `--cluster` list, sorted) as a member would.
    pub async fn propose(&mut self, voters: &str, command: &str) -> Result<ProposeReply, Status> {
        self.grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
        let mut request = Request::new(ProposeRequest { command: command.as_bytes().to_vec() });
        request.metadata_mut().insert("x-msglog-voters", voters.parse().expect("ASCII voter list"));
        let path = PathAndQuery::from_static("/msglog.quorum.v1.Quorum/Propose");
        let codec = ProstCodec::<ProposeRequest, ProposeReply>::default();
        Ok(self.grpc.unary(request, path, codec).await?.into_inner())
    }

    /// Sends one acknowledgement as `follower_id` and returns how the call ended.
    pub async fn acknowledge(&mut self, follower_id: &str) -> Result<AckSummary, Status> {
        self.grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
        let ack = Ack { follower_id: follower_id.to_string(), durable_offset: 1, session: Vec::new() };
        let path = PathAndQuery::from_static("/msglog.v1.Replication/Acknowledge");
        let codec = ProstCodec::<Ack, AckSummary>::default();
        let acks = tokio_stream::iter([ack]);
        Ok(self.grpc.client_streaming(Request::new(acks), path, codec).await?.into_inner())
    }
}
