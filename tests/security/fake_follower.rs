//! A hand-made replication peer: the mirrored messages of `common::wire` sent with tonic's
//! generic client, so a test can say what a real follower never would.

use std::net::SocketAddr;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status, Streaming};
use tonic_prost::ProstCodec;

use crate::common::wire::{Ack, AckSummary, FetchRequest, FetchResponse, Hello, Kind};

pub struct Peer {
    grpc: tonic::client::Grpc<Channel>,
}

/// `message` with `authorization: Bearer <password>` if a password is given.
fn with_password<T>(message: T, password: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(password) = password {
        request.metadata_mut().insert("authorization", format!("Bearer {password}").parse().expect("ascii"));
    }
    request
}

impl Peer {
    pub async fn connect(addr: SocketAddr) -> Peer {
        let channel = Endpoint::from_shared(format!("http://{addr}")).expect("uri").connect().await.expect("connect");
        Peer { grpc: tonic::client::Grpc::new(channel) }
    }

    pub async fn fetch(
        &mut self,
        follower_id: &str,
        password: Option<&str>,
    ) -> Result<Streaming<FetchResponse>, Status> {
        self.grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
        let request = FetchRequest { follower_id: follower_id.to_string(), next_offset: 0, follow: true };
        let path = PathAndQuery::from_static("/msglog.v1.Replication/Fetch");
        let codec = ProstCodec::<FetchRequest, FetchResponse>::default();
        Ok(self.grpc.server_streaming(with_password(request, password), path, codec).await?.into_inner())
    }

    /// Opens an Acknowledge call; acks go up the returned sender. Its task ends with the
    /// call's outcome.
    pub fn acknowledge(
        &self,
        password: Option<&str>,
    ) -> (mpsc::Sender<Ack>, tokio::task::JoinHandle<Result<AckSummary, Status>>) {
        let (acks, stream) = mpsc::channel(16);
        let mut grpc = self.grpc.clone();
        let request = with_password(ReceiverStream::new(stream), password);
        let call = tokio::spawn(async move {
            grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
            let path = PathAndQuery::from_static("/msglog.v1.Replication/Acknowledge");
            let codec = ProstCodec::<Ack, AckSummary>::default();
            Ok(grpc.client_streaming(request, path, codec).await?.into_inner())
        });
        (acks, call)
    }
}

/// The first message of a fetch stream, which must be a hello.
pub async fn hello(stream: &mut Streaming<FetchResponse>) -> Hello {
    match stream.message().await.expect("fetch stream").and_then(|m| m.kind) {
        Some(Kind::Hello(hello)) => hello,
        other => panic!("expected a hello, got {other:?}"),
    }
}
