//! Protected mode on the gRPC port, as on the client port: a node with no password and no
//! mutual TLS whose `--grpc-listen` is beyond loopback serves only peers on this machine.
//! Without it, `--grpc-listen 0.0.0.0` alone would let anyone on the network read the
//! whole log, pose as a follower and count toward `--tolerance`, or join a cluster.

use std::net::IpAddr;
use std::sync::Arc;

use tonic::{Request, Status};

use crate::server::is_loopback;

use super::ReplicationConfig;

/// What a refused peer reads: what happened, and each way out.
const REFUSAL: &str = "msglog is in protected mode: its replication port listens on a non-loopback address with \
     neither a password nor mutual TLS, so only peers on its own machine may use it; give every node the same \
     --requirepass (or MSGLOG_PASSWORD), or mutual TLS (--tls-cert, --tls-key, --tls-ca), or, on a trusted \
     network only, --protected-mode no";

/// Admits or refuses each gRPC call by its peer's address; cheap to clone (one per
/// connection).
#[derive(Clone)]
pub(super) struct Guard {
    protecting: bool,
    /// A peer retrying in a loop must not flood the log.
    refusals: Arc<crate::throttle::Throttle>,
}

impl Guard {
    /// Decides, for a port bound to `listen`, whether calls are screened at all, and says
    /// at start what an exposed port lets others do.
    pub(super) fn new(config: &ReplicationConfig, listen: IpAddr) -> Guard {
        let exposed = !is_loopback(listen);
        let certified = config.tls.is_some();
        let protecting = exposed && !certified && config.password.is_none() && config.protected_mode;
        match (exposed && !certified, config.password.is_some(), config.protected_mode) {
            (false, ..) => {}
            (true, false, true) => tracing::warn!(
                %listen,
                "protected mode: the replication port listens beyond loopback with neither a password nor mutual TLS, \
                 so only peers on this machine may fetch, acknowledge, forward or take part in the cluster; give every \
                 node --requirepass (or MSGLOG_PASSWORD) or --tls-ca to serve other machines"
            ),
            (true, false, false) => tracing::warn!(
                %listen,
                "the replication port listens beyond loopback with neither a password nor mutual TLS, and protected \
                 mode is off: anyone who can reach it can read the whole log and pose as a follower"
            ),
            (true, true, _) => tracing::warn!(
                %listen,
                "the replication port listens beyond loopback without mutual TLS: the password crosses the network \
                 in clear text; give --tls-cert, --tls-key and --tls-ca to encrypt it"
            ),
        }
        Guard { protecting, refusals: Arc::default() }
    }

    /// Passes the call on, or refuses it with PERMISSION_DENIED before any service sees it.
    #[allow(clippy::result_large_err)] // tonic's interceptor signature
    pub(super) fn screen(&self, request: Request<()>) -> Result<Request<()>, Status> {
        if !self.protecting {
            return Ok(request);
        }
        let Some(peer) = request.remote_addr() else {
            return Err(Status::permission_denied(REFUSAL));
        };
        if is_loopback(peer.ip()) {
            return Ok(request);
        }
        if let Some(held_back) = self.refusals.admit() {
            tracing::warn!(%peer, held_back, "protected mode: refusing a replication peer not on this machine \
                (such refusals are logged once per 10 s)");
        }
        Err(Status::permission_denied(REFUSAL))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::Role;

    fn config(password: Option<&str>, protected_mode: bool) -> ReplicationConfig {
        ReplicationConfig {
            node_id: "n1".into(),
            client_addr: "127.0.0.1:1".into(),
            role: Role::Leader { tolerance: 0, ack_timeout: std::time::Duration::from_secs(1) },
            max_record_bytes: 1024,
            max_fetch_streams: 4,
            bind_source_addr: None,
            password: password.map(|p| crate::server::Password::new(p).unwrap()),
            protected_mode,
            tls: None,
            peers: Default::default(),
        }
    }

    fn from(peer: &str) -> Request<()> {
        let mut request = Request::new(());
        let addr: std::net::SocketAddr = peer.parse().unwrap();
        request
            .extensions_mut()
            .insert(tonic::transport::server::TcpConnectInfo { local_addr: None, remote_addr: Some(addr) });
        request
    }

    #[test]
    fn an_exposed_port_without_a_password_serves_only_this_machine() {
        let guard = Guard::new(&config(None, true), "0.0.0.0".parse().unwrap());
        assert!(guard.screen(from("127.0.0.3:5000")).is_ok());
        let refused = guard.screen(from("192.0.2.2:5000")).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(refused.message().contains("--requirepass"), "{}", refused.message());
    }

    #[test]
    fn a_password_a_loopback_port_or_protected_mode_off_lets_everyone_through() {
        let remote = "192.0.2.2:5000";
        assert!(Guard::new(&config(Some("pw"), true), "0.0.0.0".parse().unwrap()).screen(from(remote)).is_ok());
        assert!(Guard::new(&config(None, true), "127.0.0.1".parse().unwrap()).screen(from(remote)).is_ok());
        assert!(Guard::new(&config(None, false), "0.0.0.0".parse().unwrap()).screen(from(remote)).is_ok());
    }
}
