//! Whole clusters in this test's process: every node is a [`msglog::node::RunningNode`] on
//! the test's tokio runtime, on loopback ports the OS picks, and tests read each node's
//! state as typed values instead of parsing STATS or log lines.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use msglog::node::{Node, NodeConfig, NodeError, NodeStatus, RunningNode};
use msglog::replication::{ReplicationStatus, Role};
use msglog::storage::{Config, FileSystem, StorageError};
use tempfile::TempDir;

use super::{DEADLINE, TestClient};

pub struct TestCluster {
    dir: TempDir,
    slots: Vec<Slot>,
}

struct Slot {
    config: NodeConfig,
    node: Option<RunningNode>,
}

/// The file system each node starts on: `None` is the real one.
pub type FsChoice = Option<Arc<dyn FileSystem>>;

impl TestCluster {
    /// `n` nodes named `n0`, `n1` ...: `n0` leads with `tolerance`, the others follow it.
    pub async fn start(n: usize, tolerance: usize) -> TestCluster {
        TestCluster::start_with(n, tolerance, |_, _| {}).await
    }

    /// As [`start`](Self::start), letting `adjust` change each node's configuration
    /// (index, config) before it starts; followers are pointed at the leader afterwards.
    pub async fn start_with(n: usize, tolerance: usize, adjust: impl Fn(usize, &mut NodeConfig)) -> TestCluster {
        TestCluster::start_on(n, tolerance, adjust, |_| None).await
    }

    /// As [`start_with`](Self::start_with), node `i` on the file system `fs(i)` chooses
    /// (restarts use the real one).
    pub async fn start_on(
        n: usize,
        tolerance: usize,
        adjust: impl Fn(usize, &mut NodeConfig),
        fs: impl Fn(usize) -> FsChoice,
    ) -> TestCluster {
        assert!(n >= 1);
        let dir = TempDir::new().expect("temp dir");
        let mut cluster = TestCluster { dir, slots: Vec::new() };
        for i in 0..n {
            let role = match i {
                0 => Role::Leader { tolerance, ack_timeout: DEADLINE },
                _ => Role::Follower { leader: cluster.node(0).grpc_addr().to_string() },
            };
            cluster.push_node(role, |config| adjust(i, config), fs(i)).await;
        }
        cluster
    }

    /// Starts one more node, `n<len>`, following node 0 unless `adjust` says otherwise
    /// (point it at a fault proxy, say). Returns its index.
    pub async fn add_node(&mut self, adjust: impl FnOnce(&mut NodeConfig)) -> usize {
        let role = Role::Follower { leader: self.node(0).grpc_addr().to_string() };
        self.push_node(role, adjust, None).await
    }

    /// Starts node `n<len>` in `role` (then `adjust`ed) on `fs`, and returns its index.
    async fn push_node(&mut self, role: Role, adjust: impl FnOnce(&mut NodeConfig), fs: FsChoice) -> usize {
        let i = self.slots.len();
        let mut config = NodeConfig::new(self.dir.path().join(format!("n{i}")));
        config.node_id = Some(format!("n{i}"));
        config.role = role;
        adjust(&mut config);
        let node = match fs {
            Some(fs) => Node::start_with_fs(config.clone(), fs).await,
            None => Node::start(config.clone()).await,
        }
        .expect("node starts");
        // A restart keeps the node's addresses, as a restarted process would.
        config.listen = node.client_addr().to_string();
        config.grpc_listen = node.grpc_addr().to_string();
        self.slots.push(Slot { config, node: Some(node) });
        i
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// A running node; panics if it is stopped.
    pub fn node(&self, i: usize) -> &RunningNode {
        self.slots[i].node.as_ref().unwrap_or_else(|| panic!("node n{i} is stopped"))
    }

    pub fn status(&self, i: usize) -> NodeStatus {
        self.node(i).status()
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.slots[i].config.data_dir.clone()
    }

    pub fn config_mut(&mut self, i: usize) -> &mut NodeConfig {
        &mut self.slots[i].config
    }

    pub async fn client(&self, i: usize) -> TestClient {
        TestClient::connect(self.node(i).client_addr()).await
    }

    /// Polls `ready` on the cluster until it holds, or panics naming `what` at the deadline.
    pub async fn wait_for(&self, what: &str, mut ready: impl FnMut(&TestCluster) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !ready(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until the leader `i` sees `count` followers connected.
    pub async fn wait_for_followers(&self, i: usize, count: usize) {
        self.wait_for(&format!("{count} followers of n{i}"), |c| {
            c.status(i).replication.connected_followers() == count
        })
        .await;
    }

    /// Waits until every running node's log ends where `leader`'s does, durably.
    pub async fn wait_converged(&self, leader: usize) {
        self.wait_for("every running node to hold the leader's log durably", |c| {
            let end = c.status(leader).log.next_offset;
            c.running().all(|i| {
                let log = c.status(i).log;
                log.next_offset == end && log.durable_offset == end
            })
        })
        .await;
    }

    /// Indexes of the nodes that are running.
    pub fn running(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.slots.len()).filter(|&i| self.slots[i].node.is_some())
    }

    /// Shuts node `i` down cleanly (connections finish, the log is closed).
    pub async fn stop(&mut self, i: usize) {
        self.try_stop(i).await.unwrap_or_else(|e| panic!("n{i} did not shut down cleanly: {e}"));
    }

    /// Shuts node `i` down, returning what went wrong (a node whose disk failed cannot
    /// close its log cleanly).
    pub async fn try_stop(&mut self, i: usize) -> Result<(), NodeError> {
        let node = self.slots[i].node.take().unwrap_or_else(|| panic!("node n{i} is already stopped"));
        node.shutdown().await
    }

    /// Starts node `i` again on its data dir and addresses, with its configuration as it
    /// is now (change it first with [`config_mut`](Self::config_mut) to change its role).
    pub async fn restart(&mut self, i: usize) {
        assert!(self.slots[i].node.is_none(), "node n{i} is running");
        let config = self.slots[i].config.clone();
        let deadline = Instant::now() + DEADLINE;
        let node = loop {
            match Node::start(config.clone()).await {
                // A just-closed log's lock can still be held a moment (see `once_unlocked`).
                Err(NodeError::OpenLog { cause: StorageError::Locked { .. }, .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                started => break started.unwrap_or_else(|e| panic!("n{i} restarts: {e}")),
            }
        };
        self.slots[i].node = Some(node);
    }

    /// Stops every running node and returns each node's log digest (`msglog check`'s).
    pub async fn shutdown(mut self) -> Vec<String> {
        for i in 0..self.slots.len() {
            if self.slots[i].node.is_some() {
                self.stop(i).await;
            }
        }
        (0..self.slots.len()).map(|i| digest(&self.data_dir(i))).collect()
    }
}

/// `msglog check`'s digest of a stopped node's log.
pub fn digest(data_dir: &std::path::Path) -> String {
    let report = super::once_unlocked(|| msglog::storage::check::check(data_dir, &Config::default(), |_| {}));
    report.expect("check the log").digest_hex()
}

/// Whether `status` is a follower connected to a leader it knows as `leader_id`.
pub fn follows(status: &NodeStatus, leader_id: &str) -> bool {
    matches!(&status.replication, ReplicationStatus::Follower { leader: Some(l), connected: true, .. } if l.node_id == leader_id)
}

/// Runs `future` with the harness deadline, turning a hang into a failure naming `what`.
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future).await.unwrap_or_else(|_| panic!("timed out: {what}"))
}
