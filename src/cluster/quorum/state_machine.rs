//! The state machine: the metadata, applied in log order with [`Metadata::apply`]. It lives
//! in memory; its snapshot (the whole metadata, tiny) is the file `snapshot` in the quorum
//! dir, and on restart Raft re-applies the log after it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt};

use super::files;
use super::types::{Command, LogId, Outcome, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};
use crate::cluster::metadata::{MetaOutcome, Metadata};

const SNAPSHOT: &str = "snapshot";

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta,
    metadata: Metadata,
}

/// A handle to the state machine; the snapshot builder is a clone.
#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    dir: PathBuf,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    metadata: Metadata,
    snapshot: Option<SnapshotFile>,
    published: watch::Sender<Arc<Metadata>>,
    applied_index: watch::Sender<Option<u64>>,
}

/// What the rest of the quorum watches: the metadata and the log index it reflects.
pub struct Applied {
    pub metadata: watch::Receiver<Arc<Metadata>>,
    pub index: watch::Receiver<Option<u64>>,
}

impl StateMachine {
    pub fn open(dir: &Path) -> io::Result<(StateMachine, Applied)> {
        let snapshot: Option<SnapshotFile> = files::read_json(dir, SNAPSHOT)?;
        let (last_applied, membership, metadata) = match &snapshot {
            Some(s) => (s.meta.last_log_id.clone(), s.meta.last_membership.clone(), s.metadata.clone()),
            None => (None, StoredMembership::default(), Metadata::default()),
        };
        let index = last_applied.as_ref().map(|id| id.index());
        let (published, metadata_rx) = watch::channel(Arc::new(metadata.clone()));
        let (applied_index, index_rx) = watch::channel(index);
        let inner =
            Inner { dir: dir.to_path_buf(), last_applied, membership, metadata, snapshot, published, applied_index };
        let machine = StateMachine { inner: Arc::new(Mutex::new(inner)) };
        Ok((machine, Applied { metadata: metadata_rx, index: index_rx }))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Inner {
    fn publish(&self) {
        self.published.send_replace(Arc::new(self.metadata.clone()));
        self.applied_index.send_replace(self.last_applied.as_ref().map(|id| id.index()));
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = Metadata;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let mut inner = self.lock();
        let meta = SnapshotMeta { last_log_id: inner.last_applied.clone(), last_membership: inner.membership.clone() };
        let file = SnapshotFile { meta, metadata: inner.metadata.clone() };
        files::write_json(&inner.dir, SNAPSHOT, &file, true)?;
        let snapshot = Snapshot { meta: file.meta.clone(), snapshot: file.metadata.clone() };
        inner.snapshot = Some(file);
        Ok(snapshot)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = Metadata;
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let inner = self.lock();
        Ok((inner.last_applied.clone(), inner.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let mut inner = self.lock();
            let outcome = match entry.payload {
                EntryPayload::Blank => MetaOutcome::Unchanged,
                EntryPayload::Normal(Command(command)) => inner.metadata.apply(&command),
                EntryPayload::Membership(membership) => {
                    inner.membership = StoredMembership::new(Some(entry.log_id.clone()), membership);
                    MetaOutcome::Applied
                }
            };
            inner.last_applied = Some(entry.log_id);
            // Published before answering, so a proposer that hears back sees its change.
            inner.publish();
            drop(inner);
            if let Some(responder) = responder {
                responder.send(Outcome(outcome));
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> StateMachine {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, metadata: Metadata) -> Result<(), io::Error> {
        let mut inner = self.lock();
        let file = SnapshotFile { meta: meta.clone(), metadata };
        files::write_json(&inner.dir, SNAPSHOT, &file, true)?;
        inner.last_applied = meta.last_log_id.clone();
        inner.membership = meta.last_membership.clone();
        inner.metadata = file.metadata.clone();
        inner.snapshot = Some(file);
        inner.publish();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let inner = self.lock();
        Ok(inner.snapshot.as_ref().map(|s| Snapshot { meta: s.meta.clone(), snapshot: s.metadata.clone() }))
    }
}
