//! Limits that keep a server alive under hostile or careless clients: reply size, the
//! shared buffer budget, reads of records not yet durable, file descriptors, replication
//! streams. In-process servers where a limit can be seen through STATS; real processes
//! where it concerns the process (its descriptor limit, its gRPC port).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{LineClient, ServerProcess, TestServer, bulk, msglog, poll_until, resp};
use msglog::server::ServerConfig;
use msglog::storage::{Config, FsyncPolicy};
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const MIB: usize = 1024 * 1024;

async fn config(max_buffer_bytes: usize) -> TestServer {
    let config = ServerConfig { stats_interval: None, max_buffer_bytes, ..ServerConfig::default() };
    TestServer::start_with(config, Config::default()).await
}

/// One STATS field, read on a fresh text connection (which itself stays within its free
/// allowance, so it adds nothing to `buffered_bytes`).
async fn stat(server: &TestServer, key: &str) -> u64 {
    let mut client = server.connect().await;
    let line = String::from_utf8(client.request(b"STATS").await).expect("utf-8 STATS");
    let prefix = format!("{key}=");
    let value = line.split(' ').find_map(|pair| pair.strip_prefix(&prefix));
    value.unwrap_or_else(|| panic!("no {key} in STATS: {line}")).parse().expect("number")
}

async fn poll_stat(server: &TestServer, key: &str, what: &str, ok: impl Fn(u64) -> bool) -> u64 {
    let deadline = tokio::time::Instant::now() + common::DEADLINE;
    loop {
        let value = stat(server, key).await;
        if ok(value) {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what} ({key}={value})");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mget_whose_reply_would_be_gigabytes_is_refused_and_the_server_keeps_serving() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    let big = vec![b'x'; MIB];
    client.send(&resp(&[b"SET", b"big", &big])).await;
    client.expect(b"+OK\r\n").await;

    let mut mget: Vec<&[u8]> = vec![b"MGET"];
    mget.extend(std::iter::repeat_n(&b"big"[..], 4_000));
    client.send(&resp(&mget)).await;
    let refusal = String::from_utf8(client.read_reply().await).expect("utf-8");
    assert!(refusal.starts_with("-ERR reply too large ("), "{refusal}");
    assert!(refusal.contains(&format!("limit {}", ServerConfig::default().max_reply_bytes())), "{refusal}");

    client.send(&resp(&[b"PING"])).await;
    client.expect(b"+PONG\r\n").await;
    client.send(&resp(&[b"MGET", b"big", b"missing", b"big"])).await;
    client.expect(&[&b"*3\r\n"[..], &bulk(&big), b"$-1\r\n", &bulk(&big)].concat()).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_gets_from_a_client_that_does_not_read_hold_bounded_memory() {
    const GETS: usize = 64;
    const BOUND: u64 = 8 * MIB as u64;
    let server = TestServer::start().await;
    let big = vec![b'y'; MIB];
    let mut setter = server.connect().await;
    setter.send(&resp(&[b"SET", b"big", &big])).await;
    setter.expect(b"+OK\r\n").await;

    // 64 MiB of replies owed to a client that reads none of them yet.
    let stream = TcpStream::connect(server.addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let requests = resp(&[b"GET", b"big"]).repeat(GETS);
    let sender = tokio::spawn(async move {
        writer.write_all(&requests).await.expect("send GETs");
        writer
    });
    let first = poll_stat(&server, "buffered_bytes", "replies to pile up", |b| b >= (MIB / 2) as u64).await;
    assert!(first <= BOUND, "buffered {first} bytes");
    for _ in 0..20 {
        let buffered = stat(&server, "buffered_bytes").await;
        assert!(buffered <= BOUND, "a non-reading client made the server buffer {buffered} bytes");
    }

    let reply = bulk(&big);
    let mut got = vec![0; reply.len()];
    for i in 0..GETS {
        tokio::time::timeout(common::DEADLINE, tokio::io::AsyncReadExt::read_exact(&mut reader, &mut got))
            .await
            .expect("reply before the deadline")
            .expect("read");
        assert!(got == reply, "reply {i} is not the value");
    }
    let _writer = sender.await.expect("sender");
    poll_stat(&server, "buffered_bytes", "the budget to be given back", |b| b == 0).await;
    server.stop().await;
}

/// The bytes of a request that never ends, about `bytes` long, in the connection's protocol.
fn unfinished_request(resp_dialect: bool, bytes: usize) -> Vec<u8> {
    if !resp_dialect {
        return vec![b'a'; bytes.min(MIB)];
    }
    let value = vec![b'v'; MIB - 64];
    let mut request = b"*61\r\n$4\r\nMSET\r\n".to_vec();
    for _ in 0..bytes / MIB {
        request.extend_from_slice(b"$1\r\nk\r\n");
        request.extend_from_slice(&bulk(&value));
    }
    request
}

/// Connections that each send most of a large request and stop: the one whose buffers
/// would pass the shared budget is told and closed, everyone else is served, and the
/// budget is whole again once they are gone.
async fn unfinished_requests_pass_the_budget(resp_dialect: bool) {
    const BUDGET: usize = 6 * MIB;
    let per_connection = if resp_dialect { 3 * MIB } else { MIB };
    let server = config(BUDGET).await;
    let mut held = Vec::new();
    let mut refused_at = None;
    for i in 0..32 {
        let before = stat(&server, "buffered_bytes").await;
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        // Past the budget the server stops reading, answers and drains what is left, so
        // this completes either way.
        stream.write_all(&unfinished_request(resp_dialect, per_connection)).await.expect("send");
        let deadline = tokio::time::Instant::now() + common::DEADLINE;
        let refused = loop {
            let mut reply = [0u8; 256];
            match stream.try_read(&mut reply) {
                Ok(n) => break Some(reply[..n].to_vec()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("connection {i} failed: {e}"),
            }
            if stat(&server, "buffered_bytes").await >= before + (per_connection / 2) as u64 {
                break None;
            }
            assert!(tokio::time::Instant::now() < deadline, "connection {i} neither buffered nor refused");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        if let Some(reply) = refused {
            let expected: &[u8] = match resp_dialect {
                true => b"-ERR server is out of memory for buffered requests; closing\r\n",
                false => b"ERR server is out of memory for buffered requests; closing\r\n",
            };
            assert_eq!(reply.escape_ascii().to_string(), expected.escape_ascii().to_string());
            let mut rest = Vec::new();
            let read = tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut rest);
            tokio::time::timeout(common::DEADLINE, read).await.expect("closed before the deadline").expect("EOF");
            refused_at = Some(i);
            break;
        }
        held.push(stream);
    }
    let refused_at = refused_at.expect("no connection was refused: the budget bounds nothing");
    assert!(refused_at >= 1, "the first connection fits in the budget");

    let mut fresh = server.connect().await;
    assert_eq!(fresh.request(b"PING").await, b"PONG");
    assert_eq!(fresh.request(b"SET after budget").await, b"OK");
    assert_eq!(fresh.request(b"GET after").await, b"budget");
    assert!(stat(&server, "buffered_bytes").await > 0, "the held connections still reserve");
    drop(held);
    poll_stat(&server, "buffered_bytes", "the budget to be given back", |b| b == 0).await;
    drop(fresh);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_resp_requests_past_the_buffer_budget_close_only_the_client_that_crossed_it() {
    unfinished_requests_pass_the_budget(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_text_lines_past_the_buffer_budget_close_only_the_client_that_crossed_it() {
    unfinished_requests_pass_the_budget(false).await;
}

/// A record appended straight to the log is not durable until someone syncs it; a GET
/// that shows it must first make it durable, under every policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_returns_a_record_only_once_it_is_durable_under_every_fsync_policy() {
    for fsync in [FsyncPolicy::Always, FsyncPolicy::Interval(Duration::from_secs(3600)), FsyncPolicy::Never] {
        let config = ServerConfig { stats_interval: None, fsync, ..ServerConfig::default() };
        let server = TestServer::start_with(config, Config { fsync, ..Config::default() }).await;
        let not_yet_durable = |id: &[u8]| {
            let offset = server.log.append(id, b"fresh").expect("append");
            assert!(server.log.stats().durable_offset <= offset, "{fsync:?}: appended record already durable");
            offset
        };
        let durable = |offset| server.log.stats().durable_offset > offset;

        let offset = not_yet_durable(b"text");
        let mut text = server.connect().await;
        assert_eq!(text.request(b"GET text").await, b"fresh");
        assert!(durable(offset), "{fsync:?}: text GET showed a record that is not durable");

        let mut redis = server.connect().await;
        let offset = not_yet_durable(b"resp");
        redis.send(&resp(&[b"GET", b"resp"])).await;
        redis.expect(b"$5\r\nfresh\r\n").await;
        assert!(durable(offset), "{fsync:?}: RESP GET showed a record that is not durable");

        let offset = not_yet_durable(b"mget");
        redis.send(&resp(&[b"MGET", b"resp", b"mget"])).await;
        redis.expect(b"*2\r\n$5\r\nfresh\r\n$5\r\nfresh\r\n").await;
        assert!(durable(offset), "{fsync:?}: MGET showed a record that is not durable");
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absence_shown_by_get_exists_or_mget_is_durable_first() {
    let config = ServerConfig { stats_interval: None, ..ServerConfig::default() };
    let server = TestServer::start_with(config, Config::default()).await;
    let mut text = server.connect().await;
    let mut redis = server.connect().await;
    let deleted = |id: &[u8]| {
        server.log.append(id, b"v").expect("append");
        server.log.sync().expect("sync");
        let tombstone = server.log.delete(id).expect("delete").expect("was live");
        assert!(server.log.durable_offset() <= tombstone, "the tombstone is not durable yet");
        tombstone
    };
    let durable = |offset| server.log.durable_offset() > offset;

    let tombstone = deleted(b"a");
    assert_eq!(text.request(b"GET a").await, b"NOT_FOUND");
    assert!(durable(tombstone), "GET reported a deletion that is not durable");

    let tombstone = deleted(b"b");
    redis.send(&resp(&[b"EXISTS", b"b"])).await;
    redis.expect(b":0\r\n").await;
    assert!(durable(tombstone), "EXISTS reported a deletion that is not durable");

    let tombstone = deleted(b"c");
    redis.send(&resp(&[b"MGET", b"c"])).await;
    redis.expect(b"*1\r\n$-1\r\n").await;
    assert!(durable(tombstone), "MGET reported a deletion that is not durable");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_and_an_exec_wait_for_durability_also_after_a_truncation_lowered_the_mark() {
    let config = ServerConfig { stats_interval: None, ..ServerConfig::default() };
    let server = TestServer::start_with(config, Config::default()).await;
    let mut client = server.connect().await;
    // Sync a long log through the server, then cut most of it away (as a
    // follower does on divergence) and write at the cut offsets again without syncing.
    for i in 0..20 {
        assert_eq!(client.request(format!("SET k{i} old").as_bytes()).await, b"OK");
    }
    server.log.truncate_to(5).expect("truncate");
    let offset = server.log.append(b"k6", b"new").expect("append");
    assert_eq!(offset, 5);
    assert!(server.log.durable_offset() <= offset, "the re-appended record is not durable yet");
    assert_eq!(client.request(b"GET k6").await, b"new");
    assert!(server.log.durable_offset() > offset, "GET showed a record that is not durable");

    let offset = server.log.append(b"k7", b"newer").expect("append");
    let mut redis = server.connect().await;
    redis.send(&resp(&[b"MULTI"])).await;
    redis.expect(b"+OK\r\n").await;
    redis.send(&resp(&[b"GET", b"k7"])).await;
    redis.expect(b"+QUEUED\r\n").await;
    redis.send(&resp(&[b"EXEC"])).await;
    redis.expect(b"*1\r\n$5\r\nnewer\r\n").await;
    assert!(server.log.durable_offset() > offset, "EXEC showed a record that is not durable");
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// File descriptors (real processes with a lowered RLIMIT_NOFILE)
// ---------------------------------------------------------------------------------------

#[test]
fn more_connections_than_the_descriptor_limit_allows_refuses_to_start_naming_both_numbers() {
    let tmp = TempDir::new().unwrap();
    let mut server = ServerProcess::spawn_with_nofile(&tmp.path().join("data"), 256, &["--max-connections", "1000"]);
    let status = server.wait_for_exit();
    assert!(!status.success(), "started with 1000 connections and 256 descriptors");
    let stderr = server.stderr();
    for needle in ["--max-connections 1000", "only 256", "ulimit -n", "lower --max-connections"] {
        assert!(stderr.contains(needle), "no {needle:?} in: {stderr}");
    }
}

#[test]
fn within_the_descriptor_limit_connections_over_max_are_refused_while_accepted_ones_work() {
    let tmp = TempDir::new().unwrap();
    let mut server = ServerProcess::spawn_with_nofile(&tmp.path().join("data"), 256, &["--max-connections", "2"]);
    server.wait_until_accepting();
    // The readiness probe's connection may still hold a slot for a moment.
    let mut accepted: Vec<LineClient> = Vec::new();
    for _ in 0..1000 {
        if accepted.len() == 2 {
            break;
        }
        let mut client = LineClient::connect(server.addr).expect("connect");
        match client.request(b"PING") {
            Ok(reply) if reply == b"PONG" => accepted.push(client),
            Ok(reply) => assert_eq!(reply, b"ERR too many connections"),
            Err(_) => {}
        }
    }
    assert_eq!(accepted.len(), 2, "two connections accepted");
    for _ in 0..5 {
        let mut over = LineClient::connect(server.addr).expect("connect");
        assert_eq!(over.request(b"PING").expect("refusal"), b"ERR too many connections");
        assert!(over.is_closed());
    }
    assert_eq!(accepted[0].request(b"SET fd ok").unwrap(), b"OK");
    assert_eq!(accepted[1].request(b"GET fd").unwrap(), b"ok");
}

#[test]
fn the_default_connection_limit_is_lowered_to_fit_the_descriptor_limit() {
    let tmp = TempDir::new().unwrap();
    let mut server = ServerProcess::spawn_with_nofile(&tmp.path().join("data"), 256, &[]);
    server.wait_until_accepting();
    let mut client = LineClient::connect(server.addr).expect("connect");
    assert_eq!(client.request(b"PING").unwrap(), b"PONG");
    assert!(server.stderr().contains("serving fewer"), "{}", server.stderr());
}

// ---------------------------------------------------------------------------------------
// Replication streams
// ---------------------------------------------------------------------------------------

/// A `msglog tail` process, SIGKILLed by PID when dropped.
struct Tail(Child);

impl Tail {
    fn follow(grpc: std::net::SocketAddr) -> (Tail, BufReader<std::process::ChildStdout>) {
        let mut child = tail(grpc).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn tail");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        (Tail(child), stdout)
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGKILL) };
            let _ = self.0.wait();
        }
    }
}

fn tail(grpc: std::net::SocketAddr) -> Command {
    let mut command = msglog();
    command.arg("tail").arg("--from").arg(grpc.to_string()).stdin(Stdio::null());
    command
}

#[test]
fn replication_streams_past_the_limit_are_refused_and_a_closed_one_frees_its_slot() {
    let tmp = TempDir::new().unwrap();
    let server = ServerProcess::start(&tmp.path().join("data"), &["--max-replication-streams", "2"]);
    let mut client = LineClient::connect(server.addr).expect("connect");
    assert_eq!(client.request(b"SET streamed yes").unwrap(), b"OK");

    let mut tails = Vec::new();
    for _ in 0..2 {
        let (tail, mut stdout) = Tail::follow(server.grpc);
        let mut line = String::new();
        stdout.read_line(&mut line).expect("a record from the stream");
        assert!(line.contains("streamed yes"), "{line}");
        tails.push((tail, stdout));
    }
    let extra = tail(server.grpc).arg("--no-follow").output().expect("run tail");
    assert!(!extra.status.success(), "a third stream was served");
    let stderr = String::from_utf8_lossy(&extra.stderr);
    assert!(stderr.contains("--max-replication-streams"), "{stderr}");

    drop(tails.pop());
    poll_until("a freed stream slot", || {
        let output = tail(server.grpc).arg("--no-follow").output().expect("run tail");
        output.status.success().then_some(())
    });
}
