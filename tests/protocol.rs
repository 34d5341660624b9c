//! The text protocol over a real socket, against an in-process server (README, "The protocol").

mod common;

use std::sync::Arc;

use common::fs::FaultFs;
use common::{TestClient, TestServer};
use msglog::server::ServerConfig;
use msglog::storage::Config;

fn config() -> ServerConfig {
    ServerConfig { stats_interval: None, ..ServerConfig::default() }
}

#[tokio::test]
async fn ping_help_and_quit_reply_as_documented() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    assert_eq!(client.request(b"PING").await, b"PONG");
    let help = client.request(b"HELP").await;
    for verb in ["SET", "GET", "DEL", "PING", "STATS", "HELP", "QUIT"] {
        assert!(help.windows(verb.len()).any(|w| w == verb.as_bytes()), "HELP lacks {verb}");
    }
    assert_eq!(client.request(b"QUIT").await, b"BYE");
    assert!(client.is_closed().await);
    server.stop().await;
}

#[tokio::test]
async fn set_then_get_returns_the_message_and_del_removes_it() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    assert_eq!(client.request(b"GET greeting").await, b"NOT_FOUND");
    assert_eq!(client.request(b"SET greeting hello world").await, b"OK");
    assert_eq!(client.request(b"GET greeting").await, b"hello world");
    assert_eq!(client.request(b"SET greeting again").await, b"OK");
    assert_eq!(client.request(b"GET greeting").await, b"again");
    assert_eq!(client.request(b"DEL greeting").await, b"OK");
    assert_eq!(client.request(b"GET greeting").await, b"NOT_FOUND");
    assert_eq!(client.request(b"DEL greeting").await, b"NOT_FOUND");
    server.stop().await;
}

#[tokio::test]
async fn message_keeps_inner_and_trailing_spaces_and_may_be_only_spaces() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    assert_eq!(client.request(b"SET a  two  inner and trailing  ").await, b"OK");
    assert_eq!(client.request(b"GET a").await, b" two  inner and trailing  ");
    assert_eq!(client.request(b"SET spaces    ").await, b"OK");
    assert_eq!(client.request(b"GET spaces").await, b"   ");
    server.stop().await;
}

#[tokio::test]
async fn set_with_a_trailing_space_stores_an_empty_message_and_without_one_is_an_error() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    assert_eq!(client.request(b"SET empty ").await, b"OK");
    assert_eq!(client.request(b"GET empty").await, b"");
    assert!(client.request(b"SET lonely").await.starts_with(b"ERR missing message"));
    assert_eq!(client.request(b"GET lonely").await, b"NOT_FOUND");
    assert!(client.request(b"SET").await.starts_with(b"ERR wrong number of arguments"));
    server.stop().await;
}

#[tokio::test]
async fn empty_and_malformed_ids_are_errors_and_the_connection_stays_usable() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    assert_eq!(client.request(b"SET  message").await, b"ERR invalid id: empty");
    assert_eq!(client.request(b"GET ").await, b"ERR invalid id: empty");
    assert!(client.request(b"GET").await.starts_with(b"ERR wrong number of arguments"));
    assert!(client.request(b"DEL").await.starts_with(b"ERR wrong number of arguments"));
    assert!(client.request(b"GET a b").await.starts_with(b"ERR wrong number of arguments"));
    assert!(client.request(b"SET tab\tid x").await.starts_with(b"ERR invalid id"));
    assert!(client.request(b"GET nul\x00").await.starts_with(b"ERR invalid id"));
    let longest = vec![b'i'; 1024];
    assert_eq!(client.request(&[b"SET ", &longest[..], b" v"].concat()).await, b"OK");
    assert_eq!(client.request(&[b"GET ", &longest[..]].concat()).await, b"v");
    let too_long = vec![b'i'; 1025];
    assert!(client.request(&[b"SET ", &too_long[..], b" v"].concat()).await.starts_with(b"ERR invalid id: longer"));
    assert_eq!(client.request(b"PING").await, b"PONG");
    server.stop().await;
}

#[tokio::test]
async fn unknown_verbs_empty_lines_and_stray_arguments_are_errors() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    assert_eq!(client.request(b"FLY away").await, b"ERR unknown command 'FLY'; try HELP");
    assert_eq!(client.request(b"").await, b"ERR empty command; try HELP");
    assert_eq!(client.request(b"\x01\xff\r\rX").await, b"ERR unknown command '\\x01\\xff\\r\\rX'; try HELP");
    assert!(client.request(b"PING now").await.starts_with(b"ERR wrong number of arguments"));
    assert_eq!(client.request(b"PING").await, b"PONG");
    server.stop().await;
}

#[tokio::test]
async fn verbs_are_case_insensitive() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    assert_eq!(client.request(b"sEt Key Value").await, b"OK");
    assert_eq!(client.request(b"get Key").await, b"Value");
    assert_eq!(client.request(b"GeT key").await, b"NOT_FOUND", "IDs, unlike verbs, are case-sensitive");
    assert_eq!(client.request(b"pInG").await, b"PONG");
    assert!(client.request(b"Stats").await.starts_with(b"role=leader"));
    assert_eq!(client.request(b"dEl Key").await, b"OK");
    assert_eq!(client.request(b"quit").await, b"BYE");
    server.stop().await;
}

#[tokio::test]
async fn crlf_and_lf_line_endings_are_both_accepted() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    let replies = client.pipeline(b"SET a x\r\nGET a\nGET a\r\n", 3).await;
    assert_eq!(replies, vec![b"OK".to_vec(), b"x".to_vec(), b"x".to_vec()]);
    server.stop().await;
}

#[tokio::test]
async fn binary_messages_and_ids_round_trip_byte_for_byte() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    let message: Vec<u8> = (0u8..=255).filter(|b| *b != b'\n' && *b != b'\r').collect();
    assert_eq!(client.request(&[b"SET bin ", &message[..]].concat()).await, b"OK");
    assert_eq!(client.request(b"GET bin").await, message);
    assert_eq!(client.request(b"SET \xff\xfe\x80 \xc3\x28").await, b"OK");
    assert_eq!(client.request(b"GET \xff\xfe\x80").await, b"\xc3\x28");
    server.stop().await;
}

#[tokio::test]
async fn get_of_a_message_holding_a_carriage_return_says_use_resp() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    assert_eq!(client.request(b"SET cr a\rb").await, b"OK");
    assert_eq!(client.request(b"GET cr").await, b"ERR message holds a line break; use RESP");
    server.stop().await;
}

#[tokio::test]
async fn pipelined_burst_of_ten_thousand_commands_is_answered_in_order() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    let mut burst = Vec::new();
    let mut expected = Vec::new();
    for i in 0..5_000 {
        burst.extend_from_slice(format!("SET key-{} value {i} \n", i % 100).as_bytes());
        expected.push(b"OK".to_vec());
        burst.extend_from_slice(format!("GET key-{}\n", i % 100).as_bytes());
        expected.push(format!("value {i} ").into_bytes());
    }
    let replies = client.pipeline(&burst, expected.len()).await;
    assert_eq!(replies, expected);
    assert_eq!(client.request(b"PING").await, b"PONG");
    server.stop().await;
}

#[tokio::test]
async fn a_line_split_byte_by_byte_is_one_command() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    for &byte in b"SET split one byte at a time\r\n" {
        client.send(&[byte]).await;
    }
    assert_eq!(client.read_reply().await, b"OK");
    assert_eq!(client.request(b"GET split").await, b"one byte at a time");
    server.stop().await;
}

#[tokio::test]
async fn a_two_mib_line_gets_one_line_too_long_and_the_connection_still_works() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    let mut burst = b"SET huge ".to_vec();
    burst.resize(2 * 1024 * 1024, b'x');
    burst.extend_from_slice(b"\nGET huge\nPING\n");
    let replies = client.pipeline(&burst, 3).await;
    assert!(replies[0].starts_with(b"ERR line too long"), "{:?}", String::from_utf8_lossy(&replies[0]));
    assert_eq!(replies[1..], [b"NOT_FOUND".to_vec(), b"PONG".to_vec()]);
    server.stop().await;
}

#[tokio::test]
async fn a_message_over_the_limit_that_fits_the_line_is_too_large() {
    let config = ServerConfig { max_message_bytes: 100, ..config() };
    let server = TestServer::start_with(config, Config::default()).await;
    let mut client = server.connect().await;
    let at_limit = vec![b'm'; 100];
    assert_eq!(client.request(&[b"SET k ", &at_limit[..]].concat()).await, b"OK");
    let over = [b'm'; 101];
    assert_eq!(client.request(&[b"SET k ", &over[..]].concat()).await, b"ERR message too large (max 100 bytes)");
    assert_eq!(client.request(b"GET k").await, at_limit);
    server.stop().await;
}

#[tokio::test]
async fn a_client_over_max_connections_is_told_and_closed() {
    let config = ServerConfig { max_connections: 2, ..config() };
    let server = TestServer::start_with(config, Config::default()).await;
    let mut first = server.connect().await;
    let mut second = server.connect().await;
    // Both are being served once they have answered.
    assert_eq!(first.request(b"PING").await, b"PONG");
    assert_eq!(second.request(b"PING").await, b"PONG");
    let mut third = server.connect().await;
    assert_eq!(third.read_reply().await, b"ERR too many connections");
    assert!(third.is_closed().await);
    assert_eq!(first.request(b"QUIT").await, b"BYE");
    assert!(first.is_closed().await);
    // A freed slot is usable again. It is released when the first connection's task ends,
    // just after its socket closes, so a connection made in between may still be refused.
    let deadline = tokio::time::Instant::now() + common::DEADLINE;
    loop {
        let mut next = server.connect().await;
        match next.request(b"PING").await.as_slice() {
            b"PONG" => break,
            b"ERR too many connections" => assert!(tokio::time::Instant::now() < deadline, "slot never freed"),
            other => panic!("unexpected reply {:?}", String::from_utf8_lossy(other)),
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn stats_reports_counts_as_key_value_pairs() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    let empty = String::from_utf8(client.request(b"STATS").await).unwrap();
    assert!(empty.contains("last_offset=none"), "{empty}");
    client.request(b"SET a 1").await;
    client.request(b"SET b 2").await;
    client.request(b"GET a").await;
    let stats = String::from_utf8(client.request(b"STATS").await).unwrap();
    let pairs: Vec<(&str, &str)> = stats.split(' ').map(|pair| pair.split_once('=').expect("key=value pair")).collect();
    let get = |key: &str| pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v).unwrap_or_else(|| panic!("{key}"));
    assert_eq!(get("role"), "leader");
    assert_eq!(get("records"), "2");
    assert_eq!(get("ids"), "2");
    assert_eq!(get("last_offset"), get("durable_offset"), "OK means durable");
    assert_eq!(get("connections"), "1");
    assert_eq!(get("sets"), "2");
    assert_eq!(get("gets"), "1");
    for key in ["segments", "bytes", "set_per_sec", "get_per_sec"] {
        get(key).parse::<f64>().unwrap_or_else(|_| panic!("{key} is not a number: {stats}"));
    }
    server.stop().await;
}

#[tokio::test]
async fn a_failed_fsync_answers_storage_failure_and_later_writes_fail_fast() {
    let faults = Arc::new(FaultFs::default());
    faults.fail_sync_after(0);
    let server = TestServer::start_with_fs(config(), Config::default(), faults).await;
    let mut client = server.connect().await;
    let reply = client.request(b"SET a 1").await;
    assert!(reply.starts_with(b"ERR storage failure: "), "{:?}", String::from_utf8_lossy(&reply));
    assert!(client.request(b"SET b 2").await.starts_with(b"ERR storage failure: "));
    assert_eq!(client.request(b"PING").await, b"PONG");
    server.stop().await;
}

#[tokio::test]
async fn the_write_that_hits_a_full_disk_names_it_and_later_writes_say_read_only() {
    let faults = Arc::new(FaultFs::default());
    let server = TestServer::start_with_fs(config(), Config::default(), faults.clone()).await;
    // The next segment write fails with ENOSPC; under `--fsync always` that is the group
    // commit's flush, run for the waiting SET by its serving loop before it sleeps.
    faults.fail_write_after_with(0, libc::ENOSPC);
    let mut client = server.connect().await;
    let first = String::from_utf8(client.request(b"SET a 1").await).unwrap();
    assert!(first.starts_with("ERR storage failure: write to "), "{first}");
    assert!(first.contains("No space left on device"), "{first}");
    assert!(!first.contains("read-only"), "the first failure names itself: {first}");
    let later = String::from_utf8(client.request(b"SET b 2").await).unwrap();
    assert!(later.contains("read-only after an earlier failure"), "{later}");
    assert!(later.contains("No space left on device"), "{later}");
    server.stop().await;
}

#[tokio::test]
async fn shutdown_lets_idle_clients_go_and_run_returns() {
    let server = TestServer::start().await;
    let mut idle = server.connect().await;
    let mut busy = server.connect().await;
    assert_eq!(busy.request(b"SET k v").await, b"OK");
    // Partial line: never completed, so never answered.
    idle.send(b"GET k").await;
    server.stop().await;
    assert!(idle.is_closed().await);
    assert!(busy.is_closed().await);
}

#[tokio::test]
async fn many_clients_writing_at_once_all_get_durable_acks() {
    let server = TestServer::start().await;
    let mut tasks = Vec::new();
    for c in 0..50 {
        let mut client = TestClient::connect(server.addr).await;
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                assert_eq!(client.request(format!("SET c{c}-{i} v{i}").as_bytes()).await, b"OK");
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer");
    }
    let mut client = server.connect().await;
    let stats = String::from_utf8(client.request(b"STATS").await).unwrap();
    assert!(stats.contains(" records=1000 "), "{stats}");
    assert_eq!(client.request(b"GET c49-19").await, b"v19");
    server.stop().await;
}
