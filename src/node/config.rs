//! What a node is started with: `msglog serve`'s flags as one value.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
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
    /// Single-threaded loops that run the client connections (`--serving-loops`).
    pub serving_loops: usize,
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
            serving_loops: crate::server::DEFAULT_SERVING_LOOPS,
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

    /// How many partitions this node keeps a log of: the cluster's, or 1.
    pub fn partitions(&self) -> u32 {
        self.cluster.as_ref().map_or(1, |cluster| cluster.partitions)
    }

    /// Where each partition's log lives, partition 0 first: the data dir itself with one
    /// partition (the layout of every msglog before partitions), `<data-dir>/partitions/<p>`
    /// with several (docs/FORMAT.md, "Data directory"). A data dir laid out for another
    /// partition count is refused, naming what it holds: the count is fixed when a cluster
    /// forms, and reading one layout as the other would hide every record.
    pub(super) fn partition_dirs(&self) -> Result<Vec<PathBuf>, NodeError> {
        let partitions = self.partitions();
        let root = crate::storage::partitions_dir(&self.data_dir);
        let cannot_read =
            |dir: &Path, err: std::io::Error| NodeError::Config(format!("cannot read {}: {err}", dir.display()));
        let held = crate::storage::partition_numbers(&root).map_err(|err| cannot_read(&root, err))?.len() as u32;
        if partitions == 1 {
            if held > 0 {
                return Err(NodeError::Config(format!(
                    "{} holds the logs of {held} partitions: start this node with --partitions {held} (the \
                     cluster's count), or give it another data dir",
                    root.display()
                )));
            }
            return Ok(vec![self.data_dir.clone()]);
        }
        let log = crate::storage::log_dir(&self.data_dir);
        if crate::storage::holds_segments(&log).map_err(|err| cannot_read(&log, err))? {
            return Err(NodeError::Config(format!(
                "{} holds a one-partition log: a node of a cluster with --partitions {partitions} keeps one log \
                 per partition under {}; start this data dir without --partitions, or give the node an empty one",
                self.data_dir.display(),
                root.display()
            )));
        }
        if held > 0 && held != partitions {
            return Err(NodeError::Config(format!(
                "{} holds the logs of {held} partitions, but this node was started with --partitions {partitions}; \
                 a cluster's partition count is fixed when it forms",
                root.display()
            )));
        }
        Ok((0..partitions).map(|p| root.join(p.to_string())).collect())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn with_partitions(dir: &Path, partitions: u32) -> NodeConfig {
        let mut config = NodeConfig::new(dir);
        config.cluster = Some(ClusterConfig {
            voters: Vec::new(),
            session_timeout: Duration::from_secs(1),
            replace_dead_after: None,
            replication_factor: 2,
            min_insync: 1,
            partitions,
        });
        config
    }

    #[test]
    fn one_partition_keeps_the_log_in_the_data_dir_and_several_get_a_dir_each() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(NodeConfig::new(dir.path()).partition_dirs().unwrap(), [dir.path()]);
        let dirs = with_partitions(dir.path(), 3).partition_dirs().unwrap();
        let expected: Vec<PathBuf> = (0..3).map(|p| dir.path().join("partitions").join(p.to_string())).collect();
        assert_eq!(dirs, expected);
    }

    #[test]
    fn a_data_dir_laid_out_for_another_partition_count_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for p in 0..4 {
            std::fs::create_dir_all(dir.path().join("partitions").join(p.to_string())).unwrap();
        }
        let refused = |config: NodeConfig| match config.partition_dirs() {
            Err(NodeError::Config(why)) => why,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert!(refused(with_partitions(dir.path(), 2)).contains("holds the logs of 4 partitions"));
        assert!(refused(NodeConfig::new(dir.path())).contains("--partitions 4"));
        assert_eq!(with_partitions(dir.path(), 4).partition_dirs().unwrap().len(), 4);

        let single = tempfile::tempdir().unwrap();
        let log = crate::storage::log_dir(single.path());
        std::fs::create_dir_all(&log).unwrap();
        std::fs::write(log.join("00000000000000000000.log"), b"").unwrap();
        assert!(refused(with_partitions(single.path(), 2)).contains("holds a one-partition log"));
    }
}
