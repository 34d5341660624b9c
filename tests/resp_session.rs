//! What a Redis connection negotiates and keeps for itself, as raw bytes over a real
//! socket: RESP3 after `HELLO 3`, names and IDs (`CLIENT ...`), `RESET`, and atomic
//! `MULTI`/`EXEC` transactions with Redis's error rules.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{TestClient, TestServer, check, line, resp};
use msglog::server::ServerConfig;
use msglog::storage::Config;

/// The reply to HELLO in RESP3 for connection `id` (Redis's seven fields).
fn hello_map(proto: u8, id: u64) -> Vec<u8> {
    format!(
        "%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.2.0\r\n$5\r\nproto\r\n:{proto}\r\n\
         $2\r\nid\r\n:{id}\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n\
         $7\r\nmodules\r\n*0\r\n"
    )
    .into_bytes()
}

async fn client_id(client: &mut TestClient) -> u64 {
    line(client, &[b"CLIENT", b"ID"]).await.strip_prefix(':').and_then(|n| n.parse().ok()).expect("integer")
}

#[tokio::test]
async fn hello_3_switches_the_connection_to_resp3_and_hello_2_back() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    check(&mut client, &[b"GET", b"missing"], b"$-1\r\n").await;
    let id = client_id(&mut client).await;
    check(&mut client, &[b"HELLO", b"3"], &hello_map(3, id)).await;
    check(&mut client, &[b"GET", b"missing"], b"_\r\n").await;
    check(&mut client, &[b"SET", b"k", b"v"], b"+OK\r\n").await;
    check(&mut client, &[b"MGET", b"k", b"missing"], b"*2\r\n$1\r\nv\r\n_\r\n").await;
    check(&mut client, &[b"INFO", b"keyspace"], b"=48\r\ntxt:# Keyspace\r\ndb0:keys=1,expires=0,avg_ttl=0\r\n\r\n")
        .await;
    // HELLO 2 answers in RESP2: the map is a flat array.
    let flat = [&b"*14"[..], &hello_map(2, id)[2..]].concat();
    check(&mut client, &[b"HELLO", b"2"], &flat).await;
    check(&mut client, &[b"GET", b"missing"], b"$-1\r\n").await;
    server.stop().await;
}

#[tokio::test]
async fn a_pipelined_hello_changes_only_the_replies_after_it() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    let id = client_id(&mut client).await;
    let requests = [resp(&[b"GET", b"x"]), resp(&[b"HELLO", b"3"]), resp(&[b"GET", b"x"])].concat();
    client.send(&requests).await;
    client.expect(&[&b"$-1\r\n"[..], &hello_map(3, id), b"_\r\n"].concat()).await;
    server.stop().await;
}

#[tokio::test]
async fn hello_checks_its_version_auth_and_name_as_redis_does() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    assert_eq!(line(&mut client, &[b"HELLO", b"4"]).await, "-NOPROTO unsupported protocol version");
    assert_eq!(line(&mut client, &[b"HELLO", b"x"]).await, "-ERR Protocol version is not an integer or out of range");
    assert_eq!(line(&mut client, &[b"HELLO", b"3", b"FOO"]).await, "-ERR Syntax error in HELLO option 'FOO'");
    let wrong_user = line(&mut client, &[b"HELLO", b"3", b"AUTH", b"bob", b"pw"]).await;
    assert_eq!(wrong_user, "-WRONGPASS invalid username-password pair or user is disabled.");
    let spaced = line(&mut client, &[b"HELLO", b"3", b"SETNAME", b"a b"]).await;
    assert_eq!(spaced, "-ERR Client names cannot contain spaces, newlines or special characters.");
    // None of the refused HELLOs changed the protocol.
    check(&mut client, &[b"GET", b"missing"], b"$-1\r\n").await;
    let id = client_id(&mut client).await;
    check(&mut client, &[b"HELLO", b"3", b"AUTH", b"default", b"any", b"SETNAME", b"me"], &hello_map(3, id)).await;
    check(&mut client, &[b"CLIENT", b"GETNAME"], b"$2\r\nme\r\n").await;
    assert!(line(&mut client, &[b"AUTH", b"pw"]).await.starts_with("-ERR AUTH <password> called without any password"));
    check(&mut client, &[b"AUTH", b"default", b"pw"], b"+OK\r\n").await;
    server.stop().await;
}

#[tokio::test]
async fn client_ids_are_unique_and_client_list_shows_every_connection() {
    let server = TestServer::start().await;
    let mut first = server.connect().await;
    let mut second = server.connect().await;
    let (a, b) = (client_id(&mut first).await, client_id(&mut second).await);
    assert_ne!(a, b);
    check(&mut second, &[b"CLIENT", b"SETNAME", b"worker-2"], b"+OK\r\n").await;
    check(&mut second, &[b"CLIENT", b"SETINFO", b"LIB-NAME", b"redis-py"], b"+OK\r\n").await;
    check(&mut second, &[b"CLIENT", b"GETNAME"], b"$8\r\nworker-2\r\n").await;
    check(&mut first, &[b"CLIENT", b"GETNAME"], b"$-1\r\n").await;

    let header = line(&mut first, &[b"CLIENT", b"LIST"]).await;
    let len: usize = header.strip_prefix('$').and_then(|n| n.parse().ok()).expect("bulk");
    let list = String::from_utf8(first.read_bytes(len + 2).await).unwrap();
    let lines: Vec<&str> = list.trim_end().split('\n').collect();
    assert_eq!(lines.len(), 2, "{list}");
    assert!(lines[0].starts_with(&format!("id={a} addr=127.0.0.1:")) && lines[0].contains(" name= "), "{list}");
    assert!(lines[1].contains(" name=worker-2 ") && lines[1].contains(" lib-name=redis-py "), "{list}");
    assert!(lines.iter().all(|l| l.contains(&format!("laddr={} ", server.addr)) && l.contains(" resp=2 ")), "{list}");

    let info = line(&mut second, &[b"CLIENT", b"INFO"]).await;
    let len: usize = info.strip_prefix('$').and_then(|n| n.parse().ok()).expect("bulk");
    let info = String::from_utf8(second.read_bytes(len + 2).await).unwrap();
    assert!(info.starts_with(&format!("id={b} ")) && info.contains(" name=worker-2 "), "{info}");
    let spaced = line(&mut first, &[b"CLIENT", b"SETNAME", b"a b"]).await;
    assert_eq!(spaced, "-ERR Client names cannot contain spaces, newlines or special characters.");

    drop(second);
    let mut third = server.connect().await;
    assert!(client_id(&mut third).await > b, "IDs are not reused");
    server.stop().await;
}

#[tokio::test]
async fn reset_forgets_the_protocol_the_name_and_the_transaction() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    let id = client_id(&mut client).await;
    check(&mut client, &[b"HELLO", b"3", b"SETNAME", b"me"], &hello_map(3, id)).await;
    check(&mut client, &[b"MULTI"], b"+OK\r\n").await;
    check(&mut client, &[b"SET", b"k", b"v"], b"+QUEUED\r\n").await;
    check(&mut client, &[b"RESET"], b"+RESET\r\n").await;
    check(&mut client, &[b"GET", b"k"], b"$-1\r\n").await;
    check(&mut client, &[b"CLIENT", b"GETNAME"], b"$-1\r\n").await;
    check(&mut client, &[b"EXEC"], b"-ERR EXEC without MULTI\r\n").await;
    server.stop().await;
}

#[tokio::test]
async fn exec_applies_the_queued_commands_and_reads_see_the_earlier_writes() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    let mut other = server.connect().await;
    check(&mut client, &[b"SET", b"gone", b"x"], b"+OK\r\n").await;
    check(&mut client, &[b"MULTI"], b"+OK\r\n").await;
    check(&mut client, &[b"SET", b"a", b"1"], b"+QUEUED\r\n").await;
    check(&mut client, &[b"GET", b"a"], b"+QUEUED\r\n").await;
    check(&mut client, &[b"DEL", b"gone", b"never"], b"+QUEUED\r\n").await;
    check(&mut client, &[b"MSET", b"b", b"2", b"c", b"3"], b"+QUEUED\r\n").await;
    check(&mut client, &[b"PING"], b"+QUEUED\r\n").await;
    // Nothing is applied before EXEC.
    check(&mut other, &[b"GET", b"a"], b"$-1\r\n").await;
    check(&mut client, &[b"EXEC"], b"*5\r\n+OK\r\n$1\r\n1\r\n:1\r\n+OK\r\n+PONG\r\n").await;
    check(&mut other, &[b"MGET", b"a", b"b", b"c", b"gone"], b"*4\r\n$1\r\n1\r\n$1\r\n2\r\n$1\r\n3\r\n$-1\r\n").await;
    check(&mut client, &[b"MULTI"], b"+OK\r\n").await;
    check(&mut client, &[b"EXEC"], b"*0\r\n").await;
    server.stop().await;
}

#[tokio::test]
async fn a_command_that_fails_to_queue_makes_exec_apply_nothing() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    check(&mut client, &[b"MULTI"], b"+OK\r\n").await;
    check(&mut client, &[b"SET", b"a", b"1"], b"+QUEUED\r\n").await;
    assert_eq!(line(&mut client, &[b"SET", b"a"]).await, "-ERR wrong number of arguments for 'set' command");
    assert_eq!(line(&mut client, &[b"FLUSHALL"]).await, "-ERR unknown command 'FLUSHALL'");
    check(&mut client, &[b"EXEC"], b"-EXECABORT Transaction discarded because of previous errors.\r\n").await;
    check(&mut client, &[b"GET", b"a"], b"$-1\r\n").await;
    server.stop().await;
}

#[tokio::test]
async fn transaction_misuse_gets_redis_errors() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    check(&mut client, &[b"EXEC"], b"-ERR EXEC without MULTI\r\n").await;
    check(&mut client, &[b"DISCARD"], b"-ERR DISCARD without MULTI\r\n").await;
    assert!(line(&mut client, &[b"WATCH", b"k"]).await.starts_with("-ERR WATCH is not supported"));
    check(&mut client, &[b"UNWATCH"], b"+OK\r\n").await;
    check(&mut client, &[b"MULTI"], b"+OK\r\n").await;
    check(&mut client, &[b"MULTI"], b"-ERR MULTI calls can not be nested\r\n").await;
    check(&mut client, &[b"SET", b"k", b"v"], b"+QUEUED\r\n").await;
    let refused = line(&mut client, &[b"CLIENT", b"SETNAME", b"x"]).await;
    assert_eq!(refused, "-ERR 'client|setname' is not allowed inside a transaction in msglog");
    check(&mut client, &[b"DISCARD"], b"+OK\r\n").await;
    check(&mut client, &[b"GET", b"k"], b"$-1\r\n").await;
    server.stop().await;
}

#[tokio::test]
async fn a_transaction_over_the_record_limit_is_refused_while_queueing() {
    let log_config = Config { max_record_bytes: 8192, ..Config::default() };
    let server =
        TestServer::start_with(ServerConfig { stats_interval: None, ..ServerConfig::default() }, log_config).await;
    let mut client = server.connect().await;
    let message = vec![b'm'; 3000];
    check(&mut client, &[b"MULTI"], b"+OK\r\n").await;
    check(&mut client, &[b"SET", b"a", &message], b"+QUEUED\r\n").await;
    check(&mut client, &[b"SET", b"b", &message], b"+QUEUED\r\n").await;
    assert!(line(&mut client, &[b"SET", b"c", &message]).await.starts_with("-ERR transaction too large"));
    check(&mut client, &[b"EXEC"], b"-EXECABORT Transaction discarded because of previous errors.\r\n").await;
    check(&mut client, &[b"EXISTS", b"a"], b":0\r\n").await;
    server.stop().await;
}

/// A writer commits pairs of SETs in transactions while a reader MGETs both keys: the
/// reader must always see the two keys from the same transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_reader_never_sees_half_a_transaction() {
    let server = TestServer::start().await;
    let mut writer = server.connect().await;
    let mut reader = server.connect().await;
    check(&mut writer, &[b"MSET", b"left", b"0", b"right", b"0"], b"+OK\r\n").await;
    let done = Arc::new(AtomicBool::new(false));
    let writing = {
        let done = done.clone();
        tokio::spawn(async move {
            for i in 1..=300u32 {
                let n = i.to_string();
                let requests = [
                    resp(&[b"MULTI"]),
                    resp(&[b"SET", b"left", n.as_bytes()]),
                    resp(&[b"SET", b"right", n.as_bytes()]),
                    resp(&[b"EXEC"]),
                ]
                .concat();
                writer.send(&requests).await;
                writer.expect(b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n+OK\r\n").await;
            }
            done.store(true, Ordering::Release);
        })
    };
    let mut reads = 0;
    while !done.load(Ordering::Acquire) && reads < 100_000 {
        reader.send(&resp(&[b"MGET", b"left", b"right"])).await;
        assert_eq!(reader.read_reply().await, b"*2");
        reader.read_reply().await;
        let left = reader.read_reply().await;
        reader.read_reply().await;
        let right = reader.read_reply().await;
        assert_eq!(left, right, "a reader saw half a transaction");
        reads += 1;
    }
    writing.await.unwrap();
    server.stop().await;
}
