//! The replicas a node serves on its gRPC port: one [`Replication`] per partition it holds.
//! A fetch or an acknowledgement names its partition and reaches that partition's log; one
//! port (and, between two nodes, one HTTP/2 connection) carries every partition.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::cluster::metadata::PartitionId;

use super::Replication;

#[derive(Default)]
pub struct Replicas {
    held: RwLock<BTreeMap<PartitionId, Arc<Replication>>>,
}

impl Replicas {
    /// A table holding `replication` alone.
    pub fn of(replication: Arc<Replication>) -> Arc<Replicas> {
        let replicas = Arc::new(Replicas::default());
        replicas.hold(replication);
        replicas
    }

    /// Serves `replication`'s partition from now on (in place of any earlier one of it).
    pub fn hold(&self, replication: Arc<Replication>) {
        self.held.write().unwrap_or_else(|e| e.into_inner()).insert(replication.partition(), replication);
    }

    /// The replica of `partition`, if this node holds one.
    pub fn get(&self, partition: PartitionId) -> Option<Arc<Replication>> {
        self.held.read().unwrap_or_else(|e| e.into_inner()).get(&partition).cloned()
    }

    /// The partitions held, in order.
    pub fn partitions(&self) -> Vec<PartitionId> {
        self.held.read().unwrap_or_else(|e| e.into_inner()).keys().copied().collect()
    }
}
