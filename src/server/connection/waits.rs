//! What a batch waits for before its replies go out: its writes committed, and the records
//! (or absences) its replies show committed too.

use crate::protocol::Reply;
use crate::storage::{Offset, StorageError};

use crate::server::execute::storage_failure;
use crate::server::{Refusal, Shared};

/// Why a wait for commitment failed.
enum Uncommitted {
    /// The local sync failed: the log refuses writes from now on.
    Storage(StorageError),
    /// The followers did not acknowledge in time (or replication stopped).
    Replication(Refusal),
}

/// What replaces a batch's replies once it has waited: the commit's error for those that
/// acknowledge a write, the read wait's for those that show a record. Shared by client
/// connections and forwarded streams, so both answer a failed wait alike.
pub(crate) struct Failures<T> {
    write: Option<T>,
    read: Option<T>,
}

impl Failures<Reply> {
    /// Waits for the batch's writes (through `written`), then for the records its replies
    /// show (through `read`).
    pub(crate) async fn wait(shared: &Shared, written: Option<Offset>, read: Option<Offset>) -> Failures<Reply> {
        let write = match written {
            Some(offset) => commit(shared, offset).await.err(),
            None => None,
        };
        // Usually already committed by now (an fsync of older writes, or the commit above),
        // and then this costs an atomic load.
        let read = match read {
            Some(offset) => commit_read(shared, offset).await.err(),
            None => None,
        };
        Failures { write, read }
    }
}

impl<T> Failures<T> {
    pub(crate) fn map<U>(self, f: impl Fn(T) -> U) -> Failures<U> {
        Failures { write: self.write.map(&f), read: self.read.map(&f) }
    }

    /// The failure that replaces a reply, if one does.
    pub(crate) fn of(&self, acknowledges_write: bool, shows_record: bool) -> Option<&T> {
        match (&self.write, &self.read) {
            (Some(failure), _) if acknowledges_write => Some(failure),
            (_, Some(failure)) if shows_record => Some(failure),
            _ => None,
        }
    }
}

/// Waits until everything up to `offset` is durable here and on the followers the
/// tolerance asks for (both at once: followers receive records before the local fsync).
/// The error is the reply every write of the batch gets instead of `OK`.
pub(crate) async fn commit(shared: &Shared, offset: Offset) -> Result<(), Reply> {
    if let Some(cluster) = &shared.cluster {
        cluster.appended(offset + 1);
    }
    committed(shared, offset).await.map_err(|failure| match failure {
        Uncommitted::Storage(err) => storage_failure(&err),
        Uncommitted::Replication(refusal) => {
            shared.metrics.warn_replication_refusal(&refusal.0);
            Reply::error(refusal)
        }
    })
}

/// A reply that shows a record, or an absence, waits until everything up to `offset`
/// is committed: durable here and, on a leader, on the followers the tolerance (or, in
/// cluster mode, the in-sync replica set) asks for. Otherwise a reader could see a write
/// that a failover then loses, and later read an older value. On a manual follower only the
/// local wait applies; in cluster mode a node that does not lead forwards reads instead.
pub(crate) async fn commit_read(shared: &Shared, offset: Offset) -> Result<(), Reply> {
    committed(shared, offset).await.map_err(|failure| match failure {
        Uncommitted::Storage(err) => storage_failure(&err),
        Uncommitted::Replication(refusal) => Reply::error(refusal),
    })
}

/// The wait both share: the local sync and, where the cluster asks for one, the
/// followers' acknowledgements, at once.
async fn committed(shared: &Shared, offset: Offset) -> Result<(), Uncommitted> {
    match shared.cluster.as_ref().and_then(|cluster| cluster.replicated(offset)) {
        None => sync_through(shared, offset).await.map_err(Uncommitted::Storage),
        Some(replicated) => {
            let (local, replicated) = tokio::join!(sync_through(shared, offset), replicated);
            local.map_err(Uncommitted::Storage)?;
            replicated.map_err(Uncommitted::Replication)
        }
    }
}

async fn sync_through(shared: &Shared, offset: Offset) -> Result<(), StorageError> {
    match &shared.commits {
        // `--fsync always`: the commit thread fsyncs for every waiting connection.
        Some(commits) => commits.wait(offset).await,
        // Only hands the write buffer to the OS: cheap enough to do inline.
        None => shared.log.sync_through(offset),
    }
}
