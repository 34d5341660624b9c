//! One HTTP/2 connection per leader this node copies from: every partition's fetch
//! stream to the same node is a stream on it, rather than a TCP connection (and a TLS
//! handshake) each.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tonic::transport::{Channel, ClientTlsConfig};

use super::peer_endpoint;

/// HTTP/2 flow-control windows the leader's records fill before this node reads them.
const STREAM_WINDOW_BYTES: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW_BYTES: u32 = 8 * STREAM_WINDOW_BYTES;

/// The node's channels to its leaders, by gRPC address, shared by every partition's
/// follower loop. A channel connects on its first call and again after its connection
/// is lost (keepalive pings notice a dead peer), so a failed session only asks again.
/// Channels are kept for the node's life: one per node it has followed, a handful.
#[derive(Clone, Default)]
pub struct PeerChannels(Arc<Mutex<HashMap<String, Channel>>>);

impl std::fmt::Debug for PeerChannels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let peers: Vec<String> = self.lock().keys().cloned().collect();
        f.debug_tuple("PeerChannels").field(&peers).finish()
    }
}

impl PeerChannels {
    /// The channel to `grpc_addr`, made on first use with `tls` and leaving from
    /// `bind_source_addr`. Must be called within the runtime (the channel's task runs
    /// there).
    pub(super) fn channel(
        &self,
        grpc_addr: &str,
        tls: Option<&ClientTlsConfig>,
        bind_source_addr: Option<IpAddr>,
    ) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self.lock();
        if let Some(channel) = channels.get(grpc_addr) {
            return Ok(channel.clone());
        }
        let channel = peer_endpoint(grpc_addr, tls, bind_source_addr)?
            // Every partition copied from this leader shares the connection's window: each
            // stream keeps the 2 MiB it had on a connection of its own, and the connection
            // takes eight of them at full before one waits for another.
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            .connect_lazy();
        channels.insert(grpc_addr.to_string(), channel.clone());
        Ok(channel)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Channel>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
