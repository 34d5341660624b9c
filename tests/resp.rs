//! RESP2 as raw bytes over a real socket, against an in-process server (README, "The protocol"): a
//! connection whose first byte is `*` speaks the Redis protocol for its whole life.

mod common;

use std::sync::Arc;

use common::fs::FaultFs;
use common::{TestClient, TestServer, bulk, check, line, read_bulk, read_bulks, resp};
use msglog::server::ServerConfig;
use msglog::storage::Config;

/// Sends one request whose reply is a bulk string, and returns its text.
async fn bulk_text(client: &mut TestClient, args: &[&[u8]]) -> String {
    let header = line(client, args).await;
    let len: usize = header.strip_prefix('$').and_then(|n| n.parse().ok()).expect("bulk reply");
    let body = client.read_bytes(len + 2).await;
    assert!(body.ends_with(b"\r\n"));
    String::from_utf8(body[..len].to_vec()).expect("UTF-8 bulk")
}

/// The `key:value` fields of an INFO text.
fn info_field<'a>(info: &'a str, key: &str) -> &'a str {
    info.split("\r\n")
        .find_map(|l| l.strip_prefix(key).and_then(|rest| rest.strip_prefix(':')))
        .unwrap_or_else(|| panic!("INFO lacks {key}: {info}"))
}

#[tokio::test]
async fn set_get_and_del_answer_as_redis_does() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    check(&mut client, &[b"GET", b"k"], b"$-1\r\n").await;
    check(&mut client, &[b"SET", b"k", b"hello world"], b"+OK\r\n").await;
    check(&mut client, &[b"GET", b"k"], b"$11\r\nhello world\r\n").await;
    check(&mut client, &[b"SET", b"k", b""], b"+OK\r\n").await;
    check(&mut client, &[b"GET", b"k"], b"$0\r\n\r\n").await;
    check(&mut client, &[b"SET", b"other", b"x"], b"+OK\r\n").await;
    check(&mut client, &[b"DEL", b"k", b"missing", b"other"], b":2\r\n").await;
    check(&mut client, &[b"DEL", b"k"], b":0\r\n").await;
    check(&mut client, &[b"GET", b"k"], b"$-1\r\n").await;
    server.stop().await;
}

#[tokio::test]
async fn exists_mget_and_mset_cover_several_keys() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    check(&mut client, &[b"MSET", b"a", b"1", b"b", b"2", b"a", b"3"], b"+OK\r\n").await;
    check(&mut client, &[b"EXISTS", b"a", b"nope", b"a", b"b"], b":3\r\n").await;
    check(&mut client, &[b"EXISTS", b"nope"], b":0\r\n").await;
    check(&mut client, &[b"MGET", b"a", b"nope", b"b"], b"*3\r\n$1\r\n3\r\n$-1\r\n$1\r\n2\r\n").await;
    server.stop().await;
}

#[tokio::test]
async fn values_are_binary_safe() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    let value: Vec<u8> = (0u8..=255).chain(*b"\r\n\r\n").collect();
    check(&mut client, &[b"SET", b"bin", &value], b"+OK\r\n").await;
    check(&mut client, &[b"GET", b"bin"], &bulk(&value)).await;
    check(&mut client, &[b"SET", "clé".as_bytes(), b"\r\n"], b"+OK\r\n").await;
    check(&mut client, &[b"MGET", "clé".as_bytes()], b"*1\r\n$2\r\n\r\n\r\n").await;
    // The text protocol reads the same store, and says when it cannot carry a value.
    let mut text = server.connect().await;
    assert_eq!(text.request(b"GET bin").await, b"ERR message holds a line break; use RESP");
    server.stop().await;
}

#[tokio::test]
async fn ping_echo_select_and_quit() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    check(&mut client, &[b"PING"], b"+PONG\r\n").await;
    check(&mut client, &[b"PING", b"hi there"], b"$8\r\nhi there\r\n").await;
    check(&mut client, &[b"ECHO", b"a\r\nb"], b"$4\r\na\r\nb\r\n").await;
    check(&mut client, &[b"SELECT", b"0"], b"+OK\r\n").await;
    check(&mut client, &[b"QUIT"], b"+OK\r\n").await;
    assert!(client.is_closed().await);
    server.stop().await;
}

#[tokio::test]
async fn commands_are_case_insensitive_and_keys_are_not() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    check(&mut client, &[b"sEt", b"Key", b"v"], b"+OK\r\n").await;
    check(&mut client, &[b"get", b"Key"], b"$1\r\nv\r\n").await;
    check(&mut client, &[b"gEt", b"key"], b"$-1\r\n").await;
    check(&mut client, &[b"ping"], b"+PONG\r\n").await;
    check(&mut client, &[b"dBsIzE"], b":1\r\n").await;
    server.stop().await;
}

#[tokio::test]
async fn dbsize_and_info_report_the_stats_numbers() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    check(&mut client, &[b"DBSIZE"], b":0\r\n").await;
    check(&mut client, &[b"MSET", b"a", b"1", b"b", b"2"], b"+OK\r\n").await;
    check(&mut client, &[b"DEL", b"b"], b":1\r\n").await;
    check(&mut client, &[b"GET", b"a"], b"$1\r\n1\r\n").await;
    check(&mut client, &[b"DBSIZE"], b":1\r\n").await;
    let info = bulk_text(&mut client, &[b"INFO"]).await;
    for section in ["# Server\r\n", "# Stats\r\n", "# Replication\r\n"] {
        assert!(info.contains(section), "{info}");
    }
    assert!(info.ends_with("\r\n") && !info.contains("\n\n") && !info.replace("\r\n", "").contains('\n'));
    assert_eq!(info_field(&info, "records"), "3");
    assert_eq!(info_field(&info, "ids"), "1");
    assert_eq!(info_field(&info, "sets"), "2");
    assert_eq!(info_field(&info, "gets"), "1");
    assert_eq!(info_field(&info, "role"), "master");
    assert_eq!(info_field(&info, "last_offset"), info_field(&info, "durable_offset"), "+OK means durable");
    let stats = bulk_text(&mut client, &[b"info", b"STATS"]).await;
    assert!(stats.starts_with("# Stats\r\n") && !stats.contains("# Server"), "{stats}");
    server.stop().await;
}

#[tokio::test]
async fn what_redis_cli_and_redis_benchmark_send_on_connect_is_answered() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    check(&mut client, &[b"COMMAND"], b"*0\r\n").await;
    check(&mut client, &[b"COMMAND", b"DOCS"], b"*0\r\n").await;
    check(&mut client, &[b"CONFIG", b"GET", b"save"], b"*2\r\n$4\r\nsave\r\n$0\r\n\r\n").await;
    check(&mut client, &[b"CONFIG", b"GET", b"appendonly"], b"*2\r\n$10\r\nappendonly\r\n$3\r\nyes\r\n").await;
    check(&mut client, &[b"CONFIG", b"GET", b"appendfsync"], b"*2\r\n$11\r\nappendfsync\r\n$6\r\nalways\r\n").await;
    check(&mut client, &[b"CONFIG", b"GET", b"maxmemory"], b"*0\r\n").await;
    check(&mut client, &[b"CLIENT", b"SETNAME", b"me"], b"+OK\r\n").await;
    check(&mut client, &[b"CLIENT", b"SETINFO", b"LIB-NAME", b"redis-rs"], b"+OK\r\n").await;
    assert_eq!(line(&mut client, &[b"HELLO", b"4"]).await, "-NOPROTO unsupported protocol version");
    check(&mut client, &[b"PING"], b"+PONG\r\n").await;
    server.stop().await;
}

#[tokio::test]
async fn refused_requests_get_one_error_and_the_connection_stays_usable() {
    let config = ServerConfig { max_message_bytes: 100, stats_interval: None, ..ServerConfig::default() };
    let server = TestServer::start_with(config, Config::default()).await;
    let mut client = server.connect().await;
    assert_eq!(line(&mut client, &[b"FLUSHALL"]).await, "-ERR unknown command 'FLUSHALL'");
    assert_eq!(line(&mut client, &[b"GET"]).await, "-ERR wrong number of arguments for 'get' command");
    assert_eq!(line(&mut client, &[b"SET", b"k"]).await, "-ERR wrong number of arguments for 'set' command");
    assert_eq!(line(&mut client, &[b"MSET", b"a"]).await, "-ERR wrong number of arguments for 'mset' command");
    for option in [&b"EX"[..], b"px", b"NX", b"XX", b"KEEPTTL", b"GET"] {
        let reply = line(&mut client, &[b"SET", b"k", b"v", option, b"10"]).await;
        assert!(reply.starts_with("-ERR SET option '") && reply.contains("not supported"), "{reply}");
    }
    assert_eq!(line(&mut client, &[b"SET", b"", b"v"]).await, "-ERR invalid id: empty");
    assert!(line(&mut client, &[b"GET", b"a b"]).await.starts_with("-ERR invalid id: contains whitespace"));
    assert!(line(&mut client, &[b"EXISTS", b"ok", &[b'i'; 1025]]).await.starts_with("-ERR invalid id: longer"));
    let over = [b'm'; 101];
    assert_eq!(line(&mut client, &[b"SET", b"k", &over]).await, "-ERR message too large (max 100 bytes)");
    assert_eq!(line(&mut client, &[b"MSET", b"a", b"1", b"k", &over]).await, "-ERR message too large (max 100 bytes)");
    assert!(line(&mut client, &[b"SELECT", b"1"]).await.starts_with("-ERR DB index is out of range"));
    // Nothing refused was applied, not even the valid half of the MSET.
    check(&mut client, &[b"MGET", b"k", b"a"], b"*2\r\n$-1\r\n$-1\r\n").await;
    check(&mut client, &[b"SET", b"k", &[b'm'; 100]], b"+OK\r\n").await;
    server.stop().await;
}

#[tokio::test]
async fn a_pipelined_burst_is_answered_in_order() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    let mut burst = Vec::new();
    let mut expected = Vec::new();
    for i in 0..5_000 {
        let key = format!("key-{}", i % 100);
        let value = format!("value {i}\r\n");
        burst.extend_from_slice(&resp(&[b"SET", key.as_bytes(), value.as_bytes()]));
        expected.extend_from_slice(b"+OK\r\n");
        burst.extend_from_slice(&resp(&[b"GET", key.as_bytes()]));
        expected.extend_from_slice(&bulk(value.as_bytes()));
    }
    burst.extend_from_slice(&resp(&[b"DBSIZE"]));
    expected.extend_from_slice(b":100\r\n");
    let replies = client.exchange(&burst, expected.len()).await;
    assert!(replies == expected, "pipelined replies differ");
    server.stop().await;
}

const REQUESTS: [&[&[u8]]; 3] = [&[b"SET", b"split", b"a\r\nb"], &[b"GET", b"split"], &[b"DEL", b"split", b"x"]];
const REPLIES: &[u8] = b"+OK\r\n$4\r\na\r\nb\r\n:1\r\n";

#[tokio::test]
async fn requests_sent_one_byte_at_a_time_are_answered() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    let stream: Vec<u8> = REQUESTS.iter().flat_map(|args| resp(args)).collect();
    for byte in stream {
        client.send(&[byte]).await;
    }
    client.expect(REPLIES).await;
    server.stop().await;
}

#[tokio::test]
async fn requests_split_at_every_byte_are_answered() {
    let server = TestServer::start().await;
    let stream: Vec<u8> = REQUESTS.iter().flat_map(|args| resp(args)).collect();
    for cut in 1..stream.len() {
        let mut client = server.connect().await;
        client.send(&stream[..cut]).await;
        client.send(&stream[cut..]).await;
        client.expect(REPLIES).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn malformed_frames_get_a_protocol_error_and_the_connection_closes() {
    let server = TestServer::start().await;
    let cases: [(&[u8], &str); 11] = [
        (b"*1\r\n:5\r\n", "expected '$', got ':'"),
        (b"*2\r\n$4\r\nPING\r\n+x\r\n", "expected '$', got '+'"),
        (b"*x\r\n", "invalid multibulk length"),
        (b"*-2\r\n", "invalid multibulk length"),
        (b"*1048577\r\n", "invalid multibulk length"),
        (b"*99999999999999999\r\n", "invalid multibulk length"),
        (b"*1\r\n$-1\r\n", "invalid bulk length"),
        (b"*1\r\n$-5\r\n", "invalid bulk length"),
        (b"*1\r\n$2147483648\r\n", "invalid bulk length"),
        (b"*1\r\n$4\r\nPINGxx", "expected CRLF"),
        (b"*1\r\n$123456789012345678901234567890\r\n", "length line too long"),
    ];
    for (frame, reason) in cases {
        let mut client = server.connect().await;
        // A good request first: the error ends a working RESP connection.
        client.send(&resp(&[b"PING"])).await;
        client.expect(b"+PONG\r\n").await;
        client.send(frame).await;
        let reply = String::from_utf8(client.read_reply().await).unwrap();
        assert_eq!(reply, format!("-ERR Protocol error: {reason}"), "{}", frame.escape_ascii());
        assert!(client.is_closed().await, "{}", frame.escape_ascii());
    }
    server.stop().await;
}

#[tokio::test]
async fn a_bulk_over_the_bound_is_refused_on_its_length_alone() {
    // A bulk may exceed the message limit by the text protocol's line slack (1088 bytes):
    // such a SET is merely "too large". One byte more is refused before any of it is sent.
    let config = ServerConfig { max_message_bytes: 100, stats_interval: None, ..ServerConfig::default() };
    let server = TestServer::start_with(config, Config::default()).await;
    let mut client = server.connect().await;
    let slack = vec![b'x'; 100 + 1088];
    assert_eq!(line(&mut client, &[b"SET", b"k", &slack]).await, "-ERR message too large (max 100 bytes)");
    client.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1189\r\n").await;
    assert_eq!(String::from_utf8(client.read_reply().await).unwrap(), "-ERR Protocol error: invalid bulk length");
    assert!(client.is_closed().await);
    server.stop().await;
}

#[tokio::test]
async fn empty_requests_get_no_reply() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    client.send(b"*0\r\n*-1\r\n").await;
    check(&mut client, &[b"PING"], b"+PONG\r\n").await;
    server.stop().await;
}

#[tokio::test]
async fn a_failed_fsync_answers_writes_with_a_storage_failure() {
    let faults = Arc::new(FaultFs::default());
    faults.fail_sync_after(0);
    let config = ServerConfig { stats_interval: None, ..ServerConfig::default() };
    let server = TestServer::start_with_fs(config, Config::default(), faults).await;
    let mut client = server.connect().await;
    assert!(line(&mut client, &[b"SET", b"a", b"1"]).await.starts_with("-ERR storage failure: "));
    assert!(line(&mut client, &[b"MSET", b"b", b"2"]).await.starts_with("-ERR storage failure: "));
    assert!(line(&mut client, &[b"DEL", b"a"]).await.starts_with("-ERR storage failure: "));
    check(&mut client, &[b"PING"], b"+PONG\r\n").await;
    server.stop().await;
}

#[tokio::test]
async fn text_and_resp_clients_share_one_port_and_one_store() {
    let server = TestServer::start().await;
    let mut text = server.connect().await;
    let mut redis = server.connect().await;
    assert_eq!(text.request(b"SET shared from text").await, b"OK");
    check(&mut redis, &[b"GET", b"shared"], b"$9\r\nfrom text\r\n").await;
    check(&mut redis, &[b"SET", b"shared", b"from resp"], b"+OK\r\n").await;
    assert_eq!(text.request(b"GET shared").await, b"from resp");
    // A text connection stays text even if a later line starts with `*`.
    assert!(text.request(b"*1").await.starts_with(b"ERR unknown command"));
    server.stop().await;
}

#[tokio::test]
async fn a_resp_client_over_max_connections_gets_a_resp_error() {
    let config = ServerConfig { max_connections: 1, stats_interval: None, ..ServerConfig::default() };
    let server = TestServer::start_with(config, Config::default()).await;
    let mut first = server.connect().await;
    check(&mut first, &[b"PING"], b"+PONG\r\n").await;
    let mut refused = server.connect().await;
    let refusal = b"-ERR too many connections\r\n";
    refused.send(b"*1\r\n$4\r\nPING\r\n").await;
    assert_eq!(refused.read_bytes(refusal.len()).await, refusal);
    assert!(refused.is_closed().await);
    server.stop().await;
}

/// One SCAN step: the next cursor and the IDs it returned.
async fn scan(client: &mut TestClient, args: &[&[u8]]) -> (Vec<u8>, Vec<Vec<u8>>) {
    client.send(&resp(&[&[&b"SCAN"[..]], args].concat())).await;
    assert_eq!(client.read_reply().await, b"*2");
    (read_bulk(client).await, read_bulks(client).await)
}

/// A whole scan from cursor 0 to cursor 0, `between` run after its first step.
async fn scan_all(client: &mut TestClient, options: &[&[u8]], between: &[&[&[u8]]]) -> Vec<Vec<u8>> {
    let (mut cursor, mut seen) = (b"0".to_vec(), Vec::new());
    for step in 0..10_000 {
        let (next, ids) = scan(client, &[&[&cursor[..]], options].concat()).await;
        seen.extend(ids);
        if step == 0 {
            for request in between {
                client.send(&resp(request)).await;
                client.read_reply().await;
            }
        }
        if next == b"0" {
            return seen;
        }
        cursor = next;
    }
    panic!("SCAN did not end in 10 000 steps");
}

#[tokio::test]
async fn scan_returns_every_live_id_once_and_ends_at_cursor_zero() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    let mut live = std::collections::BTreeSet::new();
    for i in 0..60 {
        let id = format!("user:{i}");
        check(&mut client, &[b"SET", id.as_bytes(), b"v"], b"+OK\r\n").await;
        live.insert(id.into_bytes());
    }
    for i in 0..10 {
        check(&mut client, &[b"SET", format!("user:{i}").as_bytes(), b"again"], b"+OK\r\n").await;
    }
    for i in 50..60 {
        check(&mut client, &[b"DEL", format!("user:{i}").as_bytes()], b":1\r\n").await;
        live.remove(format!("user:{i}").as_bytes());
    }
    check(&mut client, &[b"SET", b"order:1", b"x"], b"+OK\r\n").await;
    let seen = scan_all(&mut client, &[b"MATCH", b"user:*", b"COUNT", b"7"], &[]).await;
    let unique: std::collections::BTreeSet<Vec<u8>> = seen.iter().cloned().collect();
    assert_eq!(seen.len(), unique.len(), "no ID twice when nothing is written during the scan");
    assert_eq!(unique, live, "every live user: ID, no deleted one, not order:1");
    // A type other than string holds nothing here.
    check(&mut client, &[b"SCAN", b"0", b"TYPE", b"hash"], b"*2\r\n$1\r\n0\r\n*0\r\n").await;
    let (_, all) = scan(&mut client, &[b"0", b"COUNT", b"1000", b"TYPE", b"string"]).await;
    assert_eq!(all.len(), live.len() + 1);
    server.stop().await;
}

#[tokio::test]
async fn scan_sees_every_id_live_throughout_even_when_rewritten_during_the_scan() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    for i in 0..40 {
        check(&mut client, &[b"SET", format!("k{i}").as_bytes(), b"v"], b"+OK\r\n").await;
    }
    // Rewritten after the first step: k0 was likely returned already, k39 not yet.
    let rewrites: [&[&[u8]]; 3] = [&[b"SET", b"k0", b"w"], &[b"SET", b"k39", b"w"], &[b"SET", b"k20", b"w"]];
    let seen = scan_all(&mut client, &[b"COUNT", b"5"], &rewrites).await;
    for i in 0..40 {
        assert!(seen.contains(&format!("k{i}").into_bytes()), "k{i} was live throughout the scan but not returned");
    }
    server.stop().await;
}

#[tokio::test]
async fn keys_lists_the_matching_ids_and_bad_scan_arguments_are_refused_as_redis_does() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    for id in ["user:1", "user:2", "user:10", "order:1"] {
        check(&mut client, &[b"SET", id.as_bytes(), b"v"], b"+OK\r\n").await;
    }
    check(&mut client, &[b"DEL", b"user:2"], b":1\r\n").await;
    client.send(&resp(&[b"KEYS", b"user:?"])).await;
    assert_eq!(read_bulks(&mut client).await, vec![b"user:1".to_vec()]);
    client.send(&resp(&[b"KEYS", b"*"])).await;
    let mut all = read_bulks(&mut client).await;
    all.sort();
    assert_eq!(all, [&b"order:1"[..], b"user:1", b"user:10"]);
    client.send(&resp(&[b"KEYS", b"[ou]*:1"])).await;
    assert_eq!(read_bulks(&mut client).await.len(), 2);
    assert_eq!(line(&mut client, &[b"SCAN", b"x"]).await, "-ERR invalid cursor");
    assert_eq!(line(&mut client, &[b"SCAN", b"0", b"COUNT", b"0"]).await, "-ERR syntax error");
    assert_eq!(line(&mut client, &[b"SCAN", b"0", b"MATCH"]).await, "-ERR syntax error");
    assert_eq!(line(&mut client, &[b"SCAN", b"0", b"LIMIT", b"3"]).await, "-ERR syntax error");
    assert_eq!(line(&mut client, &[b"KEYS"]).await, "-ERR wrong number of arguments for 'keys' command");
    check(&mut client, &[b"PING"], b"+PONG\r\n").await;
    server.stop().await;
}
