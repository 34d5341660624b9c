//! `msglog bench` against small fake servers started inside the test: honest ones for the
//! text protocol and RESP, and dishonest ones whose wrong replies must show up as errors;
//! against a real msglog server where its replies matter (empty values, size limits); and
//! as the `msglog` binary for flags that must be refused.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use clap::Parser;
use common::TestServer;
use msglog::cli::bench::{self, BenchArgs, BenchReport, MAX_VALUE_SIZE};
use msglog::server::ServerConfig;
use msglog::storage::Config;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};

type Store = Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>>;

#[derive(Clone, Copy)]
enum Behaviour {
    Honest,
    /// Every third SET gets `ERR`, and GET hits come back with a changed last byte.
    Lying,
    /// Answers this many requests on each connection, then closes it.
    HangUpAfter(usize),
}

#[derive(Clone, Copy)]
enum Wire {
    Text,
    Resp,
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
}

fn bench_args(addr: SocketAddr, flags: &str) -> BenchArgs {
    let addr = addr.to_string();
    let argv = ["bench", "--addr", &addr].into_iter().chain(flags.split_whitespace());
    Cli::try_parse_from(argv).expect("valid flags").args
}

async fn bench(addr: SocketAddr, flags: &str) -> BenchReport {
    bench::run(bench_args(addr, flags)).await.expect("bench runs")
}

/// Starts a fake server on 127.0.0.1:0 that lives as long as the test's runtime.
async fn fake_server(wire: Wire, behaviour: Behaviour) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let store = Store::default();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(serve_connection(socket, wire, behaviour, Arc::clone(&store)));
        }
    });
    addr
}

async fn serve_connection(socket: TcpStream, wire: Wire, behaviour: Behaviour, store: Store) {
    let (read, write) = socket.into_split();
    let (mut reader, mut writer) = (BufReader::new(read), BufWriter::new(write));
    for served in 0.. {
        if matches!(behaviour, Behaviour::HangUpAfter(n) if served == n) {
            // A clean FIN after the last reply, then drain what the client still sends, so
            // no RST can discard replies the client has not read yet.
            let _ = writer.shutdown().await;
            let _ = tokio::io::copy(&mut reader, &mut tokio::io::sink()).await;
            return;
        }
        let request = match wire {
            Wire::Text => read_text_request(&mut reader).await,
            Wire::Resp => read_resp_request(&mut reader).await,
        };
        let Some(args) = request else { return };
        let reply = apply(&args, served, behaviour, &store);
        write_reply(&mut writer, wire, reply).await;
        // Flush once the pipelined requests already received are all answered.
        if reader.buffer().is_empty() && writer.flush().await.is_err() {
            return;
        }
    }
}

enum FakeReply {
    Ok,
    Value(Vec<u8>),
    NotFound,
    Err(&'static str),
}

fn apply(args: &[Vec<u8>], served: usize, behaviour: Behaviour, store: &Store) -> FakeReply {
    let lying = matches!(behaviour, Behaviour::Lying);
    match args {
        [verb, key, value] if verb.eq_ignore_ascii_case(b"SET") => {
            if lying && served % 3 == 2 {
                return FakeReply::Err("disk on fire");
            }
            store.lock().unwrap().insert(key.clone(), value.clone());
            FakeReply::Ok
        }
        [verb, key] if verb.eq_ignore_ascii_case(b"GET") => match store.lock().unwrap().get(key) {
            Some(value) if lying => FakeReply::Value([&value[..value.len() - 1], b"?"].concat()),
            Some(value) => FakeReply::Value(value.clone()),
            None => FakeReply::NotFound,
        },
        _ => FakeReply::Err("unknown command"),
    }
}

async fn read_text_request<R: AsyncBufReadExt + Unpin>(reader: &mut R) -> Option<Vec<Vec<u8>>> {
    let mut line = Vec::new();
    if reader.read_until(b'\n', &mut line).await.ok()? == 0 {
        return None;
    }
    let line = line.strip_suffix(b"\n")?;
    // SET's message is everything after the ID's space (README, "The protocol"), so split at most twice.
    Some(line.splitn(3, |&b| b == b' ').map(<[u8]>::to_vec).collect())
}

async fn read_resp_request<R: AsyncBufReadExt + Unpin>(reader: &mut R) -> Option<Vec<Vec<u8>>> {
    let count = read_resp_header(reader, b'*').await?;
    let mut args = Vec::with_capacity(count);
    for _ in 0..count {
        let len = read_resp_header(reader, b'$').await?;
        let mut arg = vec![0; len + 2];
        reader.read_exact(&mut arg).await.ok()?;
        arg.truncate(len);
        args.push(arg);
    }
    Some(args)
}

async fn read_resp_header<R: AsyncBufReadExt + Unpin>(reader: &mut R, kind: u8) -> Option<usize> {
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line).await.ok()?;
    let digits = line.strip_prefix(&[kind])?.strip_suffix(b"\r\n")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

async fn write_reply<W: AsyncWrite + Unpin>(writer: &mut W, wire: Wire, reply: FakeReply) {
    let bytes = match (wire, reply) {
        (Wire::Text, FakeReply::Ok) => b"OK\r\n".to_vec(),
        (Wire::Text, FakeReply::Value(v)) => [&v[..], b"\r\n"].concat(),
        (Wire::Text, FakeReply::NotFound) => b"NOT_FOUND\r\n".to_vec(),
        (Wire::Text, FakeReply::Err(why)) => format!("ERR {why}\r\n").into_bytes(),
        (Wire::Resp, FakeReply::Ok) => b"+OK\r\n".to_vec(),
        (Wire::Resp, FakeReply::Value(v)) => [format!("${}\r\n", v.len()).as_bytes(), &v, b"\r\n"].concat(),
        (Wire::Resp, FakeReply::NotFound) => b"$-1\r\n".to_vec(),
        (Wire::Resp, FakeReply::Err(why)) => format!("-ERR {why}\r\n").into_bytes(),
    };
    let _ = writer.write_all(&bytes).await;
}

fn assert_clean(report: &BenchReport) {
    assert_eq!(report.errors, 0, "first error: {:?}", report.first_error);
    assert_eq!(report.ok, report.requests);
    assert_eq!(report.failed_clients, 0);
    assert_eq!(report.histogram.len(), report.ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_set_run_answers_every_request() {
    let addr = fake_server(Wire::Text, Behaviour::Honest).await;
    let report = bench(addr, "--requests 2000 --clients 4 --pipeline 8 --value-size 32").await;
    assert_clean(&report);
    assert_eq!(report.requests, 2000);
    assert_eq!(report.sets, 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp_set_run_answers_every_request() {
    let addr = fake_server(Wire::Resp, Behaviour::Honest).await;
    let report = bench(addr, "--protocol resp --requests 1500 --clients 3 --pipeline 16").await;
    assert_clean(&report);
    assert_eq!(report.requests, 1500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preloaded_get_run_finds_every_key() {
    for (wire, protocol) in [(Wire::Text, "text"), (Wire::Resp, "resp")] {
        let addr = fake_server(wire, Behaviour::Honest).await;
        let flags = format!("--protocol {protocol} --workload get --preload --keys 300 --requests 1000 --clients 5");
        let report = bench(addr, &flags).await;
        assert_clean(&report);
        assert_eq!((report.requests, report.gets, report.get_misses), (1000, 1000, 0));
        assert_eq!(report.preloaded, 300);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_run_on_an_empty_server_misses_every_key() {
    let addr = fake_server(Wire::Resp, Behaviour::Honest).await;
    let report = bench(addr, "--protocol resp --workload get --requests 500 --clients 2 --pipeline 4").await;
    assert_clean(&report);
    assert_eq!(report.get_misses, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_run_sends_both_verbs() {
    let addr = fake_server(Wire::Text, Behaviour::Honest).await;
    let report = bench(addr, "--workload mixed:50 --keys 10 --requests 1000 --clients 2 --pipeline 3").await;
    assert_clean(&report);
    assert_eq!(report.sets + report.gets, 1000);
    assert!(report.sets > 0 && report.gets > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_pipeline_than_requests_still_sends_exactly_the_requests() {
    let addr = fake_server(Wire::Text, Behaviour::Honest).await;
    let report = bench(addr, "--requests 5 --clients 3 --pipeline 16").await;
    assert_clean(&report);
    assert_eq!(report.requests, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_replies_count_as_errors_not_successes() {
    for (wire, protocol) in [(Wire::Text, "text"), (Wire::Resp, "resp")] {
        let addr = fake_server(wire, Behaviour::Lying).await;
        let flags = format!("--protocol {protocol} --workload mixed:50 --keys 20 --requests 600 --clients 2");
        let report = bench(addr, &flags).await;
        assert_eq!(report.requests, 600);
        assert!(report.errors > 0);
        assert_eq!(report.ok + report.errors, report.requests);
        assert_eq!(report.histogram.len(), report.ok);
        let first = report.first_error.as_deref().expect("an example of the first error");
        assert!(first.contains("unexpected reply"), "{first}");
        assert!(report.to_string().contains("first error"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_hanging_up_stops_each_client_with_an_error() {
    let addr = fake_server(Wire::Text, Behaviour::HangUpAfter(10)).await;
    let report = bench(addr, "--requests 1000 --clients 3 --pipeline 2").await;
    assert_eq!(report.failed_clients, 3);
    assert_eq!(report.requests, 30);
    assert!(report.errors >= 3);
    assert!(report.first_error.unwrap().contains("connection closed"));
    assert!(report.latency_us.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_run_terminates() {
    let addr = fake_server(Wire::Resp, Behaviour::Honest).await;
    let report = bench(addr, "--protocol resp --duration 200ms --clients 2 --pipeline 4").await;
    assert_clean(&report);
    assert!(report.requests > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_report_holds_counts_and_percentiles() {
    let addr = fake_server(Wire::Text, Behaviour::Honest).await;
    let report = bench(addr, "--requests 100 --clients 2 --json").await;
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["requests"], 100);
    assert_eq!(json["errors"], 0);
    assert_eq!(json["workload"], "set");
    assert_eq!(json["protocol"], "text");
    assert!(json["latency_us"]["p99_9"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn unreachable_server_is_an_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    assert!(bench::run(bench_args(addr, "--requests 10")).await.is_err());
}

#[test]
fn requests_and_duration_are_exclusive() {
    let argv = ["bench", "--requests", "10", "--duration", "1s"];
    assert!(Cli::try_parse_from(argv).is_err());
    assert!(Cli::try_parse_from(["bench", "--workload", "mixed:200"]).is_err());
    assert!(Cli::try_parse_from(["bench", "--clients", "0"]).is_err());
    let defaults = Cli::try_parse_from(["bench"]).unwrap().args;
    assert_eq!((defaults.clients, defaults.pipeline, defaults.value_size), (50, 1, 100));
    assert_eq!((defaults.requests, defaults.duration, defaults.keys), (None, None, 100_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_values_from_an_earlier_run_are_right_get_replies() {
    for protocol in ["text", "resp"] {
        let server = TestServer::start().await;
        let flags = format!("--protocol {protocol} --value-size 0 --preload --keys 50 --requests 1 --clients 2");
        assert_clean(&bench(server.addr, &flags).await);
        // This run's own value is 100 bytes; the empty ones stored above are right too.
        let flags = format!("--protocol {protocol} --workload get --keys 50 --requests 500 --clients 2 --pipeline 4");
        let report = bench(server.addr, &flags).await;
        assert_clean(&report);
        assert_eq!((report.gets, report.get_misses), (500, 0));
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_over_the_servers_limit_are_sent_and_counted_as_errors() {
    let config = ServerConfig { max_message_bytes: 1000, stats_interval: None, ..ServerConfig::default() };
    let server = TestServer::start_with(config, Config::default()).await;
    for protocol in ["text", "resp"] {
        let at_limit = bench(server.addr, &format!("--protocol {protocol} --value-size 1000 --requests 20")).await;
        assert_clean(&at_limit);
        let over = bench(server.addr, &format!("--protocol {protocol} --value-size 1001 --requests 20")).await;
        assert_eq!((over.requests, over.ok, over.errors), (20, 0, 20));
        let first = over.first_error.expect("an example of the first error");
        assert!(first.contains("message too large"), "{first}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_value_reaches_the_server_and_is_refused_there() {
    let server = TestServer::start().await;
    let flags = format!("--value-size {MAX_VALUE_SIZE} --requests 1 --clients 1");
    let report = bench(server.addr, &flags).await;
    assert_eq!((report.requests, report.errors), (1, 1));
    let first = report.first_error.expect("an example of the first error");
    assert!(first.contains("line too long"), "{first}");
    server.stop().await;
}

#[tokio::test]
async fn runs_that_would_exhaust_the_generators_memory_are_refused_before_connecting() {
    // Nobody listens: a run that got past its checks would fail to connect instead.
    let addr: SocketAddr = format!("127.0.0.1:{}", common::free_port()).parse().unwrap();
    for flags in
        ["--clients 50 --pipeline 1000000 --duration 10s", &format!("--clients 50 --value-size {MAX_VALUE_SIZE}")]
    {
        let err = bench::run(bench_args(addr, flags)).await.expect_err(flags).to_string();
        assert!(err.contains("would buffer") && err.contains("--pipeline"), "{flags}: {err}");
    }
}

#[test]
fn zero_and_absurd_numeric_flags_are_refused_naming_the_flag() {
    // Nobody listens: a flag that slipped through would fail to connect, not load anything.
    let addr = format!("127.0.0.1:{}", common::free_port());
    let refused = [
        ("--clients", "0"),
        ("--clients", "100001"),
        ("--requests", "0"),
        ("--requests", "18446744073709551616"),
        ("--duration", "0s"),
        ("--duration", "721h"),
        ("--duration", "18446744073709551615h"),
        ("--value-size", "-1"),
        ("--value-size", &(MAX_VALUE_SIZE + 1).to_string()),
        ("--value-size", "99999999999"),
        ("--keys", "0"),
        ("--keys", "1000000000001"),
        ("--pipeline", "0"),
        ("--pipeline", "1000001"),
    ];
    for (flag, value) in refused {
        let out = common::msglog()
            .args(["bench", "--addr", &addr, &format!("{flag}={value}")])
            .output()
            .expect("run msglog bench");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.starts_with("error:") && stderr.contains(flag), "{flag} {value}: {stderr}");
    }
}
