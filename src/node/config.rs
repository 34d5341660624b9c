//! What a node is started with: `msglog serve`'s flags as one value.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::protocol::{LINE_OVERHEAD_BYTES, MAX_ID_BYTES};
use crate::replication::Role;
use crate::server::{DEFAULT_MAX_BUFFER_BYTES, Password};
use crate::storage::{CleanerSettings, Config, FsyncPolicy};

use super::NodeError;
use super::cluster::ClusterConfig;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Directory holding the log and its lock file.
    pub data_dir: PathBuf,
    /// Client address (`host:port`; port 0 picks a free one).
    pub listen: String,
    /// Replication address (`host:port`; port 0 picks a free one).
    pub grpc_listen: String,
    /// Names the node in STATS, logs and to its leader [default: the client address].
    pub node_id: Option<String>,
    pub fsync: FsyncPolicy,
    pub segment_bytes: u64,
    /// Largest SET message; the engine's record limit follows from it.
    pub max_message_bytes: usize,
    pub max_connections: usize,
    pub max_buffer_bytes: usize,
    pub max_replication_streams: usize,
    /// How often to log a stats line; `None` logs none.
    pub stats_interval: Option<Duration>,
    pub role: Role,
    /// Local address outgoing replication connections leave from.
    pub bind_source_addr: Option<IpAddr>,
    /// Required of clients (AUTH) and of followers and consumers on the replication port;
    /// a follower presents its own, so a cluster shares one (docs/SECURITY.md).
    pub password: Option<Password>,
    /// Without a password, a client listener beyond loopback serves loopback clients only.
    pub protected_mode: bool,
    /// Where to serve Prometheus metrics at `/metrics` (`host:port`); `None` serves none.
    pub metrics_listen: Option<String>,
    /// Cluster mode (`--cluster`); `role` must then be [`Role::Cluster`].
    pub cluster: Option<ClusterConfig>,
    /// `--tls-cert`, `--tls-key`, `--tls-ca` (docs/SECURITY.md); all empty: plain TCP.
    pub tls: crate::tls::TlsFiles,
    /// The background log cleaner (`--cleanup compact`); `None` (`--cleanup none`) keeps
    /// every record.
    pub cleaner: Option<CleanerSettings>,
}

impl NodeConfig {
    /// A standalone leader on `data_dir`, on free loopback ports, with the server's defaults
    /// and no stats line: what tests start from.
    pub fn new(data_dir: impl Into<PathBuf>) -> NodeConfig {
        NodeConfig {
            data_dir: data_dir.into(),
            listen: "127.0.0.1:0".to_string(),
            grpc_listen: "127.0.0.1:0".to_string(),
            node_id: None,
            fsync: FsyncPolicy::Always,
            segment_bytes: Config::default().segment_bytes,
            max_message_bytes: 1024 * 1024,
            max_connections: 1024,
            max_buffer_bytes: DEFAULT_MAX_BUFFER_BYTES,
            max_replication_streams: 64,
            stats_interval: None,
            role: Role::Leader { tolerance: 0, ack_timeout: Duration::from_secs(5) },
            bind_source_addr: None,
            password: None,
            protected_mode: true,
            metrics_listen: None,
            cluster: None,
            tls: crate::tls::TlsFiles::default(),
            // Off unless a test asks: a cleaning pass's file operations would shift the
            // counts of tests that inject faults by operation number.
            cleaner: None,
        }
    }

    /// A follower deletes what its leader's retention deleted (the fetch stream carries the
    /// leader's log start), never by a policy of its own, which would make it keep other
    /// records than its leader: `--retention-*` with `--follow` is refused rather than
    /// ignored. A cluster member applies its flags whenever it leads.
    pub(super) fn check_retention(&self) -> Result<(), NodeError> {
        let Some(retention) = self.cleaner.as_ref().map(|c| c.retention).filter(|r| !r.is_off()) else {
            return Ok(());
        };
        if !matches!(self.role, Role::Follower { .. }) {
            return Ok(());
        }
        let flags = match (retention.bytes, retention.age) {
            (Some(_), Some(_)) => "--retention-bytes and --retention-age",
            (Some(_), None) => "--retention-bytes",
            _ => "--retention-age",
        };
        Err(NodeError::Config(format!(
            "{flags} cannot be used with --follow: a follower deletes what its leader's retention deletes; \
             give the flags to the leader (see README \"Retention\")"
        )))
    }

    pub(super) fn log_config(&self) -> Result<Config, NodeError> {
        Ok(Config {
            segment_bytes: self.segment_bytes,
            fsync: self.fsync,
            max_record_bytes: max_record_bytes(self.max_message_bytes)?,
            ..Config::default()
        })
    }
}

/// The engine's record limit must admit the largest SET the server accepts (the record
/// header is well under the line overhead).
pub fn max_record_bytes(max_message_bytes: usize) -> Result<u32, NodeError> {
    let needed = max_message_bytes.saturating_add(MAX_ID_BYTES + LINE_OVERHEAD_BYTES);
    let needed =
        u32::try_from(needed).map_err(|_| NodeError::Config("--max-message-bytes is above 4 GiB".to_string()))?;
    Ok(needed.max(Config::default().max_record_bytes))
}
