//! What a batch waits for before its replies go out: its writes committed, and the records
//! (or absences) its replies show committed too.

use crate::protocol::Reply;
use crate::storage::{Offset, StorageError};

use super::Connection;
use crate::server::Refusal;
use crate::server::execute::storage_failure;

/// Why a wait for commitment failed.
enum Uncommitted {
    /// The local sync failed: the log refuses writes from now on.
    Storage(StorageError),
    /// The followers did not acknowledge in time (or replication stopped).
    Replication(Refusal),
}

impl Connection {
    /// Waits until everything up to `offset` is durable here and on the followers the
    /// tolerance asks for (both at once: followers receive records before the local fsync).
    /// The error is the reply every write of the batch gets instead of `OK`.
    pub(super) async fn commit(&self, offset: Offset) -> Result<(), Reply> {
        if let Some(cluster) = &self.shared.cluster {
            cluster.appended(offset + 1);
        }
        self.committed(offset).await.map_err(|failure| match failure {
            Uncommitted::Storage(err) => storage_failure(&err),
            Uncommitted::Replication(refusal) => {
                self.shared.metrics.warn_replication_refusal(&refusal.0);
                Reply::error(refusal)
            }
        })
    }

    /// A reply that shows a record, or an absence, waits until everything up to `offset`
    /// is committed: durable here and, on a leader, on the followers the tolerance asks for.
    /// Otherwise a reader could see a write that a failover then loses, and later read an
    /// older value. On a follower only the local wait applies: what it holds came from the
    /// leader, and the most up-to-date follower, which a failover promotes, holds it too.
    pub(super) async fn commit_read(&self, offset: Offset) -> Result<(), Reply> {
        self.committed(offset).await.map_err(|failure| match failure {
            Uncommitted::Storage(err) => storage_failure(&err),
            Uncommitted::Replication(refusal) => Reply::error(refusal),
        })
    }

    /// The wait both share: the local sync and, where the cluster asks for one, the
    /// followers' acknowledgements, at once.
    async fn committed(&self, offset: Offset) -> Result<(), Uncommitted> {
        match self.shared.cluster.as_ref().and_then(|cluster| cluster.replicated(offset)) {
            None => self.sync_through(offset).await.map_err(Uncommitted::Storage),
            Some(replicated) => {
                let (local, replicated) = tokio::join!(self.sync_through(offset), replicated);
                local.map_err(Uncommitted::Storage)?;
                replicated.map_err(Uncommitted::Replication)
            }
        }
    }

    async fn sync_through(&self, offset: Offset) -> Result<(), StorageError> {
        match &self.shared.commits {
            // `--fsync always`: the commit thread fsyncs for every waiting connection.
            Some(commits) => commits.wait(offset).await,
            // Only hands the write buffer to the OS: cheap enough to do inline.
            None => self.shared.log.sync_through(offset),
        }
    }
}
