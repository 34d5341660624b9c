//! Storage restart: what Raft was told is durable comes back after a reopen.

use openraft::impls::leader_id_adv::LeaderId;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::vote::RaftLeaderId;
use openraft::{EntryPayload, RaftLogReader, RaftSnapshotBuilder};

use super::log_store::LogStore;
use super::state_machine::StateMachine;
use super::types::{Command, Entry, LogId, Vote};
use crate::cluster::metadata::MetaCommand;

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(LeaderId::new(term, "a".to_string()), index)
}

fn entry(term: u64, index: u64) -> Entry {
    let init = MetaCommand::Init {
        cluster_id: format!("c{index}"),
        replication_factor: 3,
        min_insync: 2,
        partitions: 1,
        voters: Vec::new(),
    };
    Entry { log_id: log_id(term, index), payload: EntryPayload::Normal(Command(init)) }
}

async fn append(log: &mut LogStore, entries: Vec<Entry>) {
    log.blocking_append(entries).await.expect("append");
}

async fn indexes(log: &mut LogStore) -> Vec<u64> {
    let entries = log.try_get_log_entries(0..u64::MAX).await.expect("read");
    entries.iter().map(|e| e.log_id.index()).collect()
}

#[tokio::test]
async fn log_vote_truncation_and_purge_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = LogStore::open(dir.path()).expect("open");
    let vote = Vote::new(3, "b".to_string());
    log.save_vote(&vote).await.expect("vote");
    append(&mut log, (1..=6).map(|i| entry(1, i)).collect()).await;
    log.truncate_after(Some(log_id(1, 4))).await.expect("truncate");
    append(&mut log, vec![entry(2, 5)]).await;
    log.purge(log_id(1, 2)).await.expect("purge");
    drop(log);

    let mut log = LogStore::open(dir.path()).expect("reopen");
    assert_eq!(log.read_vote().await.expect("vote"), Some(vote));
    assert_eq!(indexes(&mut log).await, vec![3, 4, 5]);
    let state = log.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 2)));
    assert_eq!(state.last_log_id, Some(log_id(2, 5)));
}

#[tokio::test]
async fn a_torn_last_line_is_cut_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = LogStore::open(dir.path()).expect("open");
    append(&mut log, vec![entry(1, 1), entry(1, 2)]).await;
    drop(log);
    let path = dir.path().join("log");
    let mut bytes = std::fs::read(&path).expect("read");
    bytes.extend_from_slice(b"{\"Entry\":{\"log_id\"");
    std::fs::write(&path, bytes).expect("write");

    let mut log = LogStore::open(dir.path()).expect("reopen");
    assert_eq!(indexes(&mut log).await, vec![1, 2]);
    append(&mut log, vec![entry(1, 3)]).await;
    drop(log);
    let mut log = LogStore::open(dir.path()).expect("reopen again");
    assert_eq!(indexes(&mut log).await, vec![1, 2, 3]);
}

#[tokio::test]
async fn the_state_machine_restarts_from_its_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut machine, applied) = StateMachine::open(dir.path()).expect("open");
    let entries = vec![Ok((entry(1, 1), None)), Ok((entry(1, 2), None))];
    machine.apply(tokio_stream::iter(entries)).await.expect("apply");
    assert_eq!(applied.metadata.borrow().cluster_id.as_deref(), Some("c1"), "Init applies once");
    assert_eq!(*applied.index.borrow(), Some(2));
    let snapshot = machine.get_snapshot_builder().await.build_snapshot().await.expect("snapshot");
    drop(machine);

    let (mut machine, applied) = StateMachine::open(dir.path()).expect("reopen");
    assert_eq!(applied.metadata.borrow().cluster_id.as_deref(), Some("c1"));
    let (last, _) = machine.applied_state().await.expect("state");
    assert_eq!(last, Some(log_id(1, 2)));
    let current = machine.get_current_snapshot().await.expect("current").expect("a snapshot");
    assert_eq!(current.meta, snapshot.meta);
}
