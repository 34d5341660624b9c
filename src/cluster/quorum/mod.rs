//! The metadata quorum (being built; this is the interface the node codes against).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::metadata::{MetaCommand, MetaOutcome, Metadata};

pub struct QuorumConfig {
    pub node_id: String,
    pub voters: Vec<(String, String)>,
    pub grpc_addr: String,
    pub client_addr: String,
    pub dir: std::path::PathBuf,
    pub session_timeout: Duration,
    pub replication_factor: usize,
    pub min_insync: usize,
    pub password: Option<crate::server::Password>,
    pub bind_source_addr: Option<std::net::IpAddr>,
    pub log_epoch: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct QuorumError(String);

pub struct Quorum {
    metadata: watch::Sender<Arc<Metadata>>,
}

impl Quorum {
    pub async fn start(_config: QuorumConfig) -> Result<Arc<Quorum>, QuorumError> {
        Err(QuorumError("the metadata quorum is not built yet".to_string()))
    }
    pub fn routes(self: &Arc<Self>) -> tonic::service::Routes {
        tonic::service::Routes::default()
    }
    pub fn metadata(&self) -> watch::Receiver<Arc<Metadata>> {
        self.metadata.subscribe()
    }
    pub fn controller(&self) -> Option<String> {
        None
    }
    pub async fn propose(&self, _command: MetaCommand) -> Result<MetaOutcome, QuorumError> {
        Err(QuorumError("not built".to_string()))
    }
    pub fn incarnation(&self) -> u64 {
        0
    }
    pub fn lease_valid(&self) -> bool {
        false
    }
    pub async fn shutdown(&self) {}
}
