//! What a batch waits for before its replies go out: its writes committed, and the records
//! (or absences) its replies show committed too, in every partition the batch touched,
//! each through that partition's committer and replication.

use crate::protocol::Reply;
use crate::storage::{Offset, StorageError};

use crate::server::execute::storage_failure;
use crate::server::marks::{Mark, Marks};
use crate::server::partitions::PartitionServing;
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
    /// Waits for the batch's writes (through `written`, in each partition it names), then
    /// for the records its replies show (through `read`). A failure in any partition is
    /// the failure of every reply of its kind: the batch's replies are not told apart by
    /// partition, and an error for a write that did apply is the answer a failed commit
    /// gives anyway.
    pub(crate) async fn wait(shared: &Shared, written: &Marks, read: &Marks) -> Failures<Reply> {
        // Every partition's followers hear of their records first, so their replication
        // runs while this task waits on another partition.
        for mark in written.iter() {
            announce(shared.partitions.get(mark.partition), mark.offset);
        }
        // On a serving loop, one round syncs every partition the batch waits for.
        if written.iter().chain(read.iter()).nth(1).is_some() {
            for mark in written.iter().chain(read.iter()) {
                crate::server::loops::sync_ahead(&shared.partitions.get(mark.partition).log, mark.offset);
            }
        }
        let mut write = None;
        for mark in written.iter() {
            let slot = shared.partitions.get(mark.partition);
            let failed = committed_reply(shared, slot, mark.offset, true).await.err().or_else(|| cut_since(slot, mark));
            write = write.or(failed);
        }
        // Usually already committed by now (an fsync of older writes, or the commit above),
        // and then this costs an atomic load.
        let mut failed_read = None;
        for mark in read.iter() {
            let slot = shared.partitions.get(mark.partition);
            let failed = commit_read(shared, slot, mark.offset).await.err().or_else(|| cut_since(slot, mark));
            failed_read = failed_read.or(failed);
        }
        Failures { write, read: failed_read }
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

/// A wait by offset vouches for the record the reply is about only if the log was not cut
/// since the reply touched it: waits run one partition after another, each up to the ack
/// timeout, and meanwhile a partition may change leaders twice, this node dropping its
/// record as a divergent tail and leading again with another record at that offset,
/// committed. Any cut then fails the reply, as a leadership change does.
fn cut_since(slot: &PartitionServing, mark: Mark) -> Option<Reply> {
    (slot.log.truncations() != mark.truncations).then(|| {
        Reply::error("leadership changed before the record was committed; a write may or may not have been applied")
    })
}

/// Records up to `offset` are in `slot`'s log: its replication may send them.
fn announce(slot: &PartitionServing, offset: Offset) {
    if let Some(cluster) = &slot.cluster {
        cluster.appended(offset + 1);
    }
}

/// A reply that shows a record, or an absence, waits until everything up to `offset`
/// is committed: durable here and, on a leader, on the followers the tolerance (or, in
/// cluster mode, the in-sync replica set) asks for. Otherwise a reader could see a write
/// that a failover then loses, and later read an older value. On a manual follower only the
/// local wait applies; in cluster mode a node that does not lead forwards reads instead.
async fn commit_read(shared: &Shared, slot: &PartitionServing, offset: Offset) -> Result<(), Reply> {
    committed_reply(shared, slot, offset, false).await
}

/// Waits until everything up to `offset` is durable in `slot`'s log, here and on the
/// followers the tolerance asks for (both at once: followers receive records before the
/// local fsync); the failure as the reply every write (`write`) or read of the batch gets
/// instead. A write's replication refusal is logged.
async fn committed_reply(shared: &Shared, slot: &PartitionServing, offset: Offset, write: bool) -> Result<(), Reply> {
    committed(slot, offset).await.map_err(|failure| match failure {
        Uncommitted::Storage(err) => storage_failure(&err),
        Uncommitted::Replication(refusal) => {
            if write {
                shared.metrics.warn_replication_refusal(&refusal.0);
            }
            Reply::error(refusal)
        }
    })
}

/// The wait both share: the local sync and, where the cluster asks for one, the
/// followers' acknowledgements, at once.
async fn committed(slot: &PartitionServing, offset: Offset) -> Result<(), Uncommitted> {
    match slot.cluster.as_ref().and_then(|cluster| cluster.replicated(offset)) {
        None => sync_through(slot, offset).await.map_err(Uncommitted::Storage),
        Some(replicated) => {
            let (local, replicated) = tokio::join!(sync_through(slot, offset), replicated);
            local.map_err(Uncommitted::Storage)?;
            replicated.map_err(Uncommitted::Replication)
        }
    }
}

async fn sync_through(slot: &PartitionServing, offset: Offset) -> Result<(), StorageError> {
    match &slot.commits {
        // `--fsync always`: the commit thread fsyncs for every waiting connection.
        Some(commits) => commits.wait(offset).await,
        // Only hands the write buffer to the OS: a serving loop does it once for all its
        // connections before it sleeps; elsewhere it is cheap enough to do inline.
        None if slot.log.durable_offset() > offset => Ok(()),
        None => match crate::server::loops::synced(&slot.log, offset).await {
            Some(result) => result,
            None => slot.log.sync_through(offset),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::{Notify, oneshot, watch};

    use crate::cluster::partitioning::partition_of;
    use crate::server::{Cluster, Forwarding, Refusal, Replicated, ServerConfig, serve};
    use crate::storage::{Config, FsyncPolicy, Log, Offset};

    /// A partition's replication that commits at once, or (`held`) only once released.
    struct FakeCluster {
        held: Option<(Arc<Notify>, watch::Receiver<bool>)>,
    }

    impl Cluster for FakeCluster {
        fn admit_write(&self) -> Result<(), Refusal> {
            Ok(())
        }
        fn appended(&self, _next_offset: Offset) {}
        fn replicated(&self, _offset: Offset) -> Option<Replicated<'_>> {
            let (asked, released) = self.held.as_ref()?;
            asked.notify_one();
            let mut released = released.clone();
            Some(Box::pin(async move {
                let _ = released.wait_for(|released| *released).await;
                Ok(())
            }))
        }
        fn role(&self) -> &'static str {
            "leader"
        }
        fn stats(&self) -> Vec<(String, String)> {
            Vec::new()
        }
    }

    /// The first of `id0`, `id1`, … that `partition_of` puts in `partition` of `count`.
    fn id_in(partition: u32, count: u32) -> String {
        (0..1000).map(|n| format!("id{n}")).find(|id| partition_of(id.as_bytes(), count) == partition).unwrap()
    }

    #[tokio::test]
    async fn a_batch_waits_for_each_partition_it_touched() {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let log_config = Config { fsync: FsyncPolicy::Never, ..Config::default() };
        let logs: Vec<Arc<Log>> =
            dirs.iter().map(|dir| Arc::new(Log::open(dir.path(), log_config.clone()).unwrap())).collect();
        // Both partitions' replication hold back until released, each when asked.
        let asked = [Arc::new(Notify::new()), Arc::new(Notify::new())];
        let (release0, released0) = watch::channel(false);
        let (release1, released1) = watch::channel(false);
        let clusters: [Arc<dyn Cluster>; 2] = [
            Arc::new(FakeCluster { held: Some((Arc::clone(&asked[0]), released0)) }),
            Arc::new(FakeCluster { held: Some((Arc::clone(&asked[1]), released1)) }),
        ];
        let partitions = logs.iter().cloned().zip(clusters.into_iter().map(Some)).collect();
        let config = ServerConfig { fsync: FsyncPolicy::Never, stats_interval: None, ..ServerConfig::default() };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, partitions, config, Forwarding::default(), stopped));

        let mut client = TcpStream::connect(addr).await.unwrap();
        let (p0, p1) = (id_in(0, 2), id_in(1, 2));
        // One write, so both requests arrive in one read and form one batch.
        client.write_all(format!("SET {p0} a\nSET {p1} b\n").as_bytes()).await.unwrap();
        let deadline = Duration::from_secs(60);
        let mut early = [0u8; 64];
        let mut nothing_yet = |client: &TcpStream| match client.try_read(&mut early) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            got => panic!("answered before both partitions committed: {got:?}"),
        };
        // Each partition's replication must be asked (a wait that skips one never asks it),
        // and until the second is released nothing may be answered, not even the write
        // whose partition committed first.
        let mut released = [false, false];
        tokio::time::timeout(deadline, async {
            while released != [true, true] {
                tokio::select! {
                    () = asked[0].notified(), if !released[0] => {
                        nothing_yet(&client);
                        release0.send(true).unwrap();
                        released[0] = true;
                    }
                    () = asked[1].notified(), if !released[1] => {
                        nothing_yet(&client);
                        release1.send(true).unwrap();
                        released[1] = true;
                    }
                    readable = client.readable(), if released != [true, true] => {
                        readable.unwrap();
                        nothing_yet(&client);
                    }
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("a partition's replication was never asked (released: {released:?})"));
        let mut replies = [0u8; 8];
        tokio::time::timeout(deadline, client.read_exact(&mut replies)).await.unwrap().unwrap();
        assert_eq!(&replies, b"OK\r\nOK\r\n");
        assert!(logs[0].get(p0.as_bytes()).unwrap().is_some() && logs[1].get(p1.as_bytes()).unwrap().is_some());

        drop(client);
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_write_whose_record_was_cut_while_it_waited_is_not_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let log_config = Config { fsync: FsyncPolicy::Never, ..Config::default() };
        let log = Arc::new(Log::open(dir.path(), log_config).unwrap());
        let asked = Arc::new(Notify::new());
        let (release, released) = watch::channel(false);
        let cluster: Arc<dyn Cluster> = Arc::new(FakeCluster { held: Some((Arc::clone(&asked), released)) });
        let config = ServerConfig { fsync: FsyncPolicy::Never, stats_interval: None, ..ServerConfig::default() };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let partitions = vec![(Arc::clone(&log), Some(cluster))];
        let server = tokio::spawn(serve(listener, partitions, config, Forwarding::default(), stopped));

        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(b"SET mine a\n").await.unwrap();
        let deadline = Duration::from_secs(60);
        tokio::time::timeout(deadline, asked.notified()).await.expect("the write waits for replication");
        // Meanwhile the partition changed leaders: this node dropped the record as a
        // divergent tail and holds another at its offset, which replication then commits.
        log.truncate_to(0).unwrap();
        assert_eq!(log.append(b"theirs", b"b").unwrap(), 0);
        release.send(true).unwrap();
        let mut reply = String::new();
        let mut buf = [0u8; 256];
        while !reply.ends_with('\n') {
            let n = tokio::time::timeout(deadline, client.read(&mut buf)).await.unwrap().unwrap();
            assert!(n > 0, "closed before replying: {reply:?}");
            reply.push_str(std::str::from_utf8(&buf[..n]).unwrap());
        }
        assert!(reply.starts_with("ERR leadership changed"), "{reply:?}");

        drop(client);
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
