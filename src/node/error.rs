//! Why a node could not start or did not stop cleanly.

use std::path::PathBuf;
use std::time::Duration;

use crate::storage::StorageError;

/// Why a node could not start or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    // Causes are part of each message, not `source()`s: the CLI prints the chain, and a
    // cause printed by both would show twice.
    #[error("cannot open the log in {}: {cause}{}", .dir.display(), open_hint(.dir, .cause))]
    OpenLog { dir: PathBuf, cause: StorageError },
    #[error("cannot listen{what} on {addr}: {cause}")]
    Bind { what: &'static str, addr: String, cause: std::io::Error },
    #[error("cannot persist the new leader epoch: {0}")]
    Epoch(StorageError),
    #[error("cannot read or record which log this data dir holds: {0}")]
    Lineage(StorageError),
    #[error("cannot read the data dir's `followers` file (the followers this log was copied to): {0}")]
    Followers(StorageError),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("the client server failed: {0}")]
    Server(std::io::Error),
    #[error(
        "the cluster refused this node ({0}); check that it has the cluster's password, its node certificate \
         and the same --cluster as the other nodes"
    )]
    Refused(String),
    #[error("the replication server failed: {0}")]
    Replication(String),
    #[error("closing the log: {0}")]
    Close(StorageError),
    #[error("the log is still in use {0:?} after shutdown; not closed cleanly")]
    StillInUse(Duration),
}

fn open_hint(dir: &std::path::Path, err: &StorageError) -> String {
    match err {
        StorageError::Corruption { segment, .. } if segment.file_name().is_some_and(|name| name == "epoch") => {
            " (this file holds the highest leader epoch the node has begun or seen; restore it from a backup, \
             or remove it and the node takes the epoch from its log, which is safe unless another node has \
             led a later epoch since)"
                .to_string()
        }
        StorageError::Corruption { .. } => format!(
            " (`msglog check --data-dir {dir}` shows the damage; adding `--repair` cuts the log back to before it, \
             dropping what follows)",
            dir = dir.display()
        ),
        _ => String::new(),
    }
}
