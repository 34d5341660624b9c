//! A server over several partitions, in-process (docs/FORMAT.md, "Partitions"): each ID is
//! served from its partition's log, and commands naming several IDs are split by partition
//! and joined.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::{DEADLINE, TestClient, bulk, check, ids_in, line, read_bulk, read_bulks, resp};
use msglog::cluster::partitioning::partition_of;
use msglog::server::{self, ServerConfig};
use msglog::storage::{Config, Log};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A server over `logs.len()` partitions, each log in its own temporary directory.
struct PartitionedServer {
    addr: SocketAddr,
    dirs: Vec<TempDir>,
    logs: Vec<Arc<Log>>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl PartitionedServer {
    async fn start(partitions: u32) -> PartitionedServer {
        PartitionedServer::start_with(partitions, |_| Config::default()).await
    }

    /// Partition `p`'s log opened with `log_config(p)`.
    async fn start_with(partitions: u32, log_config: impl Fn(u32) -> Config) -> PartitionedServer {
        let dirs: Vec<TempDir> = (0..partitions).map(|_| TempDir::new().expect("temp dir")).collect();
        let logs: Vec<Arc<Log>> = (0..partitions)
            .map(|p| Arc::new(Log::open(dirs[p as usize].path(), log_config(p)).expect("open log")))
            .collect();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let config = ServerConfig { stats_interval: None, ..ServerConfig::default() };
        let task = tokio::spawn(server::run_partitioned(listener, logs.clone(), config, async move {
            let _ = stopped.await;
        }));
        PartitionedServer { addr, dirs, logs, stop, task }
    }

    async fn connect(&self) -> TestClient {
        TestClient::connect(self.addr).await
    }

    /// Stops the server and closes every log; their directories stay for reopening.
    async fn stop(self) -> Vec<TempDir> {
        let _ = self.stop.send(());
        tokio::time::timeout(DEADLINE, self.task).await.expect("server stops").expect("server task").expect("run");
        for log in self.logs {
            Arc::try_unwrap(log).ok().expect("the server holds no log once stopped").close().expect("close");
        }
        self.dirs
    }
}

#[tokio::test]
async fn ids_land_in_the_log_of_their_partition() {
    const P: u32 = 4;
    let server = PartitionedServer::start(P).await;
    let mut client = server.connect().await;
    let ids: Vec<String> = (0..1000).map(|n| format!("msg-{n}")).collect();
    let requests: String = ids.iter().map(|id| format!("SET {id} value-of-{id}\n")).collect();
    let replies = client.pipeline(requests.as_bytes(), ids.len()).await;
    assert!(replies.iter().all(|reply| reply == b"OK"), "every SET is acknowledged");
    drop(client);
    let dirs = server.stop().await;

    let logs: Vec<Log> = dirs.iter().map(|dir| Log::open(dir.path(), Config::default()).expect("reopen")).collect();
    for id in &ids {
        let home = partition_of(id.as_bytes(), P);
        for (p, log) in (0..P).zip(&logs) {
            let held = log.get(id.as_bytes()).expect("get");
            match p == home {
                true => assert_eq!(held, Some(format!("value-of-{id}").into_bytes()), "{id} in partition {p}"),
                false => assert_eq!(held, None, "{id} belongs to partition {home}, not {p}"),
            }
        }
    }
    for (p, log) in logs.iter().enumerate() {
        assert!(log.stats().ids > 0, "partition {p} holds some IDs");
    }
    assert_eq!(logs.iter().map(|log| log.stats().ids).sum::<u64>(), ids.len() as u64);
}

#[tokio::test]
async fn mget_joins_replies_in_key_order_over_partitions() {
    const P: u32 = 4;
    let server = PartitionedServer::start(P).await;
    let mut client = server.connect().await;
    // Keys of every partition, interleaved, with missing ones between.
    let per: Vec<Vec<Vec<u8>>> = (0..P).map(|p| ids_in(p, P, 3)).collect();
    let keys: Vec<Vec<u8>> = (0..3).flat_map(|i| per.iter().rev().map(move |ids| ids[i].clone())).collect();
    for (n, key) in keys.iter().enumerate().filter(|(n, _)| n % 3 != 1) {
        check(&mut client, &[b"SET", key, format!("v{n}").as_bytes()], b"+OK\r\n").await;
    }
    let mut args: Vec<&[u8]> = vec![b"MGET"];
    args.extend(keys.iter().map(Vec::as_slice));
    let mut expected = format!("*{}\r\n", keys.len()).into_bytes();
    for n in 0..keys.len() {
        match n % 3 {
            1 => expected.extend_from_slice(b"$-1\r\n"),
            _ => expected.extend(bulk(format!("v{n}").as_bytes())),
        }
    }
    check(&mut client, &args, &expected).await;
    // Keys of one partition only: the same as a single log answers.
    assert_eq!(partition_of(&keys[0], P), partition_of(&keys[8], P));
    check(&mut client, &[b"MGET", &keys[0], &keys[8]], &[b"*2\r\n", &bulk(b"v0")[..], &bulk(b"v8")].concat()).await;
    server.stop().await;
}

#[tokio::test]
async fn del_and_exists_count_over_partitions() {
    const P: u32 = 4;
    let server = PartitionedServer::start(P).await;
    let mut client = server.connect().await;
    let (a, b, c) = (ids_in(0, P, 1).remove(0), ids_in(1, P, 1).remove(0), ids_in(3, P, 1).remove(0));
    let missing = ids_in(2, P, 1).remove(0);
    check(&mut client, &[b"MSET", &a, b"1", &b, b"2", &c, b"3"], b"+OK\r\n").await;
    check(&mut client, &[b"DBSIZE"], b":3\r\n").await;
    // A repeated key counts each time, as in Redis.
    check(&mut client, &[b"EXISTS", &a, &missing, &b, &c, &a], b":4\r\n").await;
    check(&mut client, &[b"DEL", &c, &missing, &a], b":2\r\n").await;
    check(&mut client, &[b"EXISTS", &a, &b, &c], b":1\r\n").await;
    check(&mut client, &[b"DEL", &a, &b, &c], b":1\r\n").await;
    check(&mut client, &[b"DBSIZE"], b":0\r\n").await;
    server.stop().await;
}

#[tokio::test]
async fn mset_in_one_partition_stays_all_or_nothing() {
    const P: u32 = 4;
    // Partition 1's log takes small batches only: a part too large for it fails there,
    // while the same part fits any other partition.
    let small = |p: u32| match p {
        1 => Config { max_record_bytes: 512, ..Config::default() },
        _ => Config::default(),
    };
    let server = PartitionedServer::start_with(P, small).await;
    let mut client = server.connect().await;
    let in1 = ids_in(1, P, 2);
    let in0 = ids_in(0, P, 1).remove(0);
    let large = vec![b'x'; 600];

    let reply = line(&mut client, &[b"MSET", &in1[0], b"small", &in1[1], &large]).await;
    assert!(reply.starts_with("-ERR storage failure: "), "{reply}");
    check(&mut client, &[b"EXISTS", &in1[0], &in1[1]], b":0\r\n").await;

    // Across partitions: partition 0's part applies, partition 1's fails whole.
    let reply = line(&mut client, &[b"MSET", &in0, b"kept", &in1[0], b"small", &in1[1], &large]).await;
    assert!(
        reply.starts_with("-ERR partially applied: partition(s) 0 applied, 1 failed: storage failure: "),
        "{reply}"
    );
    check(
        &mut client,
        &[b"MGET", &in0, &in1[0], &in1[1]],
        &[&b"*3\r\n"[..], &bulk(b"kept"), b"$-1\r\n$-1\r\n"].concat(),
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn multi_across_partitions_is_refused_and_applies_nothing() {
    const P: u32 = 4;
    let server = PartitionedServer::start(P).await;
    let mut client = server.connect().await;
    let (a, b) = (ids_in(2, P, 1).remove(0), ids_in(3, P, 1).remove(0));
    check(&mut client, &[b"MULTI"], b"+OK\r\n").await;
    check(&mut client, &[b"SET", &a, b"1"], b"+QUEUED\r\n").await;
    check(&mut client, &[b"SET", &b, b"2"], b"-CROSSPARTITION keys in several partitions\r\n").await;
    check(&mut client, &[b"PING"], b"+QUEUED\r\n").await;
    assert!(line(&mut client, &[b"EXEC"]).await.starts_with("-EXECABORT"));
    check(&mut client, &[b"EXISTS", &a, &b], b":0\r\n").await;

    // One command whose own keys span partitions is refused the same way.
    check(&mut client, &[b"MULTI"], b"+OK\r\n").await;
    check(&mut client, &[b"MGET", &a, &b], b"-CROSSPARTITION keys in several partitions\r\n").await;
    assert!(line(&mut client, &[b"EXEC"]).await.starts_with("-EXECABORT"));
    server.stop().await;
}

#[tokio::test]
async fn multi_within_one_partition_applies() {
    const P: u32 = 4;
    let server = PartitionedServer::start(P).await;
    let mut client = server.connect().await;
    let ids = ids_in(2, P, 2);
    let (a, b) = (&ids[0], &ids[1]);
    check(&mut client, &[b"MULTI"], b"+OK\r\n").await;
    check(&mut client, &[b"SET", a, b"1"], b"+QUEUED\r\n").await;
    check(&mut client, &[b"MSET", b, b"2", a, b"3"], b"+QUEUED\r\n").await;
    check(&mut client, &[b"MGET", a, b], b"+QUEUED\r\n").await;
    check(&mut client, &[b"DBSIZE"], b"+QUEUED\r\n").await;
    let replies = [&b"*4\r\n+OK\r\n+OK\r\n*2\r\n"[..], &bulk(b"3"), &bulk(b"2"), b":2\r\n"].concat();
    check(&mut client, &[b"EXEC"], &replies).await;
    check(&mut client, &[b"MGET", a, b], &[&b"*2\r\n"[..], &bulk(b"3"), &bulk(b"2")].concat()).await;
    server.stop().await;
}

#[tokio::test]
async fn scan_and_keys_cover_every_partition() {
    const P: u32 = 4;
    let server = PartitionedServer::start(P).await;
    let mut client = server.connect().await;
    let ids: Vec<Vec<u8>> = (0..P).flat_map(|p| ids_in(p, P, 5)).collect();
    for id in &ids {
        check(&mut client, &[b"SET", id, b"v"], b"+OK\r\n").await;
    }
    let mut expected: Vec<Vec<u8>> = ids.clone();
    expected.sort();

    let mut seen = Vec::new();
    let mut cursor = b"0".to_vec();
    for step in 0.. {
        assert!(step < 1000, "the scan ends");
        check_header(&mut client, &[b"SCAN", &cursor, b"COUNT", b"3"], b"*2").await;
        cursor = read_bulk(&mut client).await;
        seen.extend(read_bulks(&mut client).await);
        if cursor == b"0" {
            break;
        }
    }
    seen.sort();
    assert_eq!(seen, expected, "SCAN returns every ID once");

    check_header(&mut client, &[b"KEYS", b"*"], format!("*{}", ids.len()).as_bytes()).await;
    let mut keys = Vec::new();
    for _ in 0..ids.len() {
        keys.push(read_bulk(&mut client).await);
    }
    keys.sort();
    assert_eq!(keys, expected);
    server.stop().await;
}

async fn check_header(client: &mut TestClient, args: &[&[u8]], header: &[u8]) {
    client.send(&resp(args)).await;
    assert_eq!(client.read_reply().await.escape_ascii().to_string(), header.escape_ascii().to_string());
}
