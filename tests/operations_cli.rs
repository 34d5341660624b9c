//! The operator's command-line tools as a user meets them: `msglog client` refusing what is
//! not msglog and taking redis-cli's flags and keeping history, `tail --json | head`,
//! `check --repair`'s account of what it drops, and `INFO replication` in Redis's words.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use common::cluster::TestCluster;
use common::{DEADLINE, LineClient, ServerProcess, msglog, poll_until, resp};
use msglog::storage::{Config, FsyncPolicy, Log};
use tempfile::TempDir;

fn run(args: &[&str]) -> Output {
    msglog().args(args).stdin(Stdio::null()).output().expect("run msglog")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A process killed by PID when dropped, so a failed assertion leaves nothing running.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Reaped {
    /// Its exit status, polled until the deadline.
    fn exit(&mut self) -> std::process::ExitStatus {
        poll_until("the process to exit", || self.0.try_wait().expect("try_wait"))
    }
}

// ---------------------------------------------------------------------------------------
// msglog client
// ---------------------------------------------------------------------------------------

#[test]
fn client_pointed_at_the_grpc_port_fails_naming_http2_and_prints_nothing() {
    let dir = TempDir::new().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let grpc = server.grpc.to_string();
    let out = run(&["client", "--addr", &grpc, "SET", "k", "v"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty(), "nothing of the gRPC server's is printed: {:?}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&format!("{grpc} does not speak msglog's protocol")), "{stderr}");
    assert!(stderr.contains("HTTP/2") && stderr.contains("--grpc-listen"), "{stderr}");
    let mut client = LineClient::connect(server.addr).unwrap();
    assert_eq!(client.request(b"GET k").unwrap(), b"NOT_FOUND", "the SET went nowhere");
}

/// A one-connection server on loopback that sends `greeting` on accept, then answers the
/// first bytes it reads with `answer`; returns its address and what it received.
fn impostor(greeting: &'static [u8], answer: &'static [u8]) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&received);
    std::thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else { return };
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let _ = stream.write_all(greeting);
        let mut buf = [0u8; 1024];
        if let Ok(n) = stream.read(&mut buf) {
            seen.lock().unwrap().extend_from_slice(&buf[..n]);
            let _ = stream.write_all(answer);
        }
        // Whatever else the client sends is recorded until it hangs up.
        while let Ok(n @ 1..) = stream.read(&mut buf) {
            seen.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    (addr, received)
}

#[test]
fn client_refuses_an_ssh_banner_and_a_redis_server_before_sending_the_command() {
    for (greeting, answer, named) in [
        (&b"SSH-2.0-OpenSSH_9.6\r\n"[..], &b""[..], "an SSH banner"),
        (b"", b"+PONG\r\n", "a Redis server"),
        (b"", b"\x00\x01\x02\xff\xfe\n", "\"\\x00\\x01\\x02\\xff\\xfe\\n\""),
    ] {
        let (addr, received) = impostor(greeting, answer);
        let out = run(&["client", "--addr", &addr.to_string(), "SET", "secret", "value"]);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{named}: {out:?}");
        assert!(stderr.contains("does not speak msglog's protocol") && stderr.contains(named), "{stderr}");
        assert!(out.stdout.is_empty(), "{named}: {:?}", text(&out.stdout));
        assert_eq!(text(&received.lock().unwrap()), "PING\n", "{named}: only the probe was sent");
    }
}

#[test]
fn client_takes_redis_cli_host_port_and_password_flags_and_refuses_others() {
    let dir = TempDir::new().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"), &["--requirepass", "s3cret"]);
    let port = server.addr.port().to_string();
    // `--addr` points nowhere useful: -h and -p replace both of its parts.
    let base = ["client", "--addr", "192.0.2.1:1", "-h", "127.0.0.1", "-p", &port, "-a", "s3cret"];
    let set = run(&[&base[..], &["SET", "greeting", "hello"]].concat());
    assert!(set.status.success(), "{set:?}");
    assert_eq!(text(&set.stdout), "OK\n");
    let get = run(&[&base[..], &["GET", "greeting"]].concat());
    assert_eq!(text(&get.stdout), "hello\n", "{get:?}");

    let addr = server.addr.to_string();
    let unknown = run(&["client", "--addr", &addr, "-n", "0", "GET", "greeting"]);
    assert!(!unknown.status.success());
    assert!(text(&unknown.stderr).contains("unknown option '-n'"), "{}", text(&unknown.stderr));
    assert!(unknown.stdout.is_empty(), "nothing was sent, so nothing answered: {unknown:?}");

    let help = run(&["client", "--help"]);
    assert!(help.status.success());
    for flag in ["-h, --host", "-p, --port", "-a, --password"] {
        assert!(text(&help.stdout).contains(flag), "{flag} in {}", text(&help.stdout));
    }
}

/// Drives an interactive `msglog client` through a pseudo-terminal (util-linux `script`),
/// typing each line once the prompt shows; returns once it exits.
fn interactive_session(addr: SocketAddr, home: Option<&Path>, lines: &[&str]) -> Option<std::process::ExitStatus> {
    if Command::new("script").arg("--version").output().is_err() {
        assert!(std::env::var("MSGLOG_REQUIRE_TOOLS").as_deref() != Ok("1"), "`script` (util-linux) is required");
        eprintln!("SKIPPED: `script` (util-linux) is not installed; no pseudo-terminal to test history with");
        return None;
    }
    let client = format!("{} client --addr {addr}", env!("CARGO_BIN_EXE_msglog"));
    let mut command = Command::new("script");
    command.args(["-qefc", &client, "/dev/null"]).stdin(Stdio::piped()).stdout(Stdio::piped());
    command.env_remove("HOME");
    if let Some(home) = home {
        command.env("HOME", home);
    }
    let mut child = Reaped(command.spawn().expect("spawn script"));
    let screen = Arc::new(Mutex::new(String::new()));
    let mut stdout = child.0.stdout.take().unwrap();
    let drawn = Arc::clone(&screen);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stdout.read(&mut buf) {
            drawn.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let prompt = format!("{addr}> ");
    let mut stdin = child.0.stdin.take().unwrap();
    for (n, line) in lines.iter().chain(&["\x04"]).enumerate() {
        // Typing before the editor has the terminal in raw mode could lose the keys.
        poll_until("the prompt", || (screen.lock().unwrap().matches(&prompt).count() > n).then_some(()));
        let keys = if *line == "\x04" { line.to_string() } else { format!("{line}\r") };
        stdin.write_all(keys.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }
    let status = child.exit();
    drop(stdin);
    Some(status)
}

#[test]
fn interactive_client_keeps_history_in_home_and_runs_without_a_home() {
    let dir = TempDir::new().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let Some(status) = interactive_session(server.addr, Some(&home), &["SET remembered 1", "AUTH hunter2"]) else {
        return;
    };
    assert!(status.success());
    let history = std::fs::read_to_string(home.join(".msglog_history")).expect("~/.msglog_history is written");
    assert!(history.contains("SET remembered 1"), "{history}");
    assert!(!history.contains("hunter2"), "AUTH lines stay out of the history: {history}");

    let status = interactive_session(server.addr, None, &["SET homeless 1"]).expect("script is there");
    assert!(status.success(), "no HOME: no history, and no error");
    let mut client = LineClient::connect(server.addr).unwrap();
    assert_eq!(client.request(b"GET homeless").unwrap(), b"1");
    assert_eq!(client.request(b"GET remembered").unwrap(), b"1");
}

// ---------------------------------------------------------------------------------------
// tail, check
// ---------------------------------------------------------------------------------------

#[test]
fn tail_into_a_pipe_closed_early_exits_zero_quietly_in_json_and_text() {
    let dir = TempDir::new().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let mut client = LineClient::connect(server.addr).unwrap();
    for i in 0..20 {
        assert_eq!(client.request(format!("SET k{i} v{i}").as_bytes()).unwrap(), b"OK");
    }
    let grpc = server.grpc.to_string();
    for mode in [&["--json"][..], &[]] {
        let mut tail = Reaped(
            msglog()
                .args([&["tail", "--from", grpc.as_str()][..], mode].concat())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let mut first = String::new();
        BufReader::new(tail.0.stdout.take().unwrap()).read_line(&mut first).unwrap();
        assert!(first.starts_with(if mode.is_empty() { "0 " } else { "{" }), "{first}");
        // The reader is gone (as `head` is after its lines); the next record hits the pipe.
        let mut nudges = 0;
        let status = poll_until("tail to notice the closed pipe", || {
            if nudges < 1000 {
                nudges += 1;
                client.request(format!("SET nudge {nudges}").as_bytes()).unwrap();
            }
            tail.0.try_wait().unwrap()
        });
        let mut stderr = String::new();
        tail.0.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        assert!(status.success(), "{mode:?}: {status:?} {stderr}");
        assert_eq!(stderr, "", "{mode:?}: quiet");
    }
}

#[test]
fn tail_of_a_partition_the_node_holds_no_replica_of_is_refused_and_prints_nothing() {
    let dir = TempDir::new().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    assert_eq!(LineClient::connect(server.addr).unwrap().request(b"SET k v").unwrap(), b"OK");
    let grpc = server.grpc.to_string();
    let held = run(&["tail", "--from", &grpc, "--no-follow", "--partition", "0"]);
    assert!(held.status.success(), "{}", text(&held.stderr));
    assert!(text(&held.stdout).contains(" k "), "{}", text(&held.stdout));
    let other = run(&["tail", "--from", &grpc, "--no-follow", "--partition", "3"]);
    assert!(!other.status.success());
    assert_eq!(text(&other.stdout), "", "nothing of partition 0's log is printed");
    assert!(text(&other.stderr).contains("holds no replica of partition 3"), "{}", text(&other.stderr));
}

fn segments(data: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

#[test]
fn check_repair_says_how_many_records_and_ids_are_lost() {
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    let config = Config { fsync: FsyncPolicy::Never, segment_bytes: 4096, ..Config::default() };
    let log = Log::open(&data, config.clone()).unwrap();
    for i in 0..300 {
        log.append(format!("id-{}", i % 50).as_bytes(), format!("message {i}").as_bytes()).unwrap();
    }
    log.close().unwrap();
    let second = segments(&data)[1].clone();
    let mut bytes = std::fs::read(&second).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x55;
    std::fs::write(&second, &bytes).unwrap();

    let repaired = run(&["check", "--data-dir", data.to_str().unwrap(), "--repair"]);
    assert!(repaired.status.success(), "{repaired:?}");
    let kept = Log::open(&data, config).unwrap().stats().records;
    let lost = 300 - kept;
    assert!(lost > 50, "the damage is early enough for every ID to lose its newest value: {lost}");
    let stdout = text(&repaired.stdout);
    let expected = format!("lost: {lost} record(s); 50 ID(s) lose their newest value");
    assert!(stdout.contains(&expected), "{expected} in {stdout}");
}

// ---------------------------------------------------------------------------------------
// INFO replication
// ---------------------------------------------------------------------------------------

/// `INFO replication` over RESP as raw bytes, as `key -> value`.
async fn info_replication(addr: SocketAddr) -> HashMap<String, String> {
    let mut client = common::TestClient::connect(addr).await;
    client.send(&resp(&[b"INFO", b"replication"])).await;
    let header = text(&client.read_reply().await);
    let len: usize = header.strip_prefix('$').and_then(|n| n.parse().ok()).expect("a bulk string");
    let body = text(&client.read_bytes(len + 2).await);
    assert!(body.starts_with("# Replication\r\n"), "{body}");
    body.lines().skip(1).filter_map(|l| l.split_once(':')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_replication_uses_redis_field_names_on_leader_and_follower() {
    // Without --node-id a node is known by its client address, as Redis's replicas are.
    let cluster = TestCluster::start_with(2, 1, |_, config| config.node_id = None).await;
    cluster.wait_for_followers(0, 1).await;
    let (leader, follower) = (cluster.node(0).client_addr(), cluster.node(1).client_addr());
    let mut client = cluster.client(0).await;
    assert_eq!(client.request(b"SET a 1").await, b"OK");

    let info = info_replication(leader).await;
    assert_eq!(info["role"], "master");
    assert_eq!(info["connected_slaves"], "1");
    let slave0 = format!("ip={},port={},state=online,offset=1,lag=0", follower.ip(), follower.port());
    assert_eq!(info["slave0"], slave0, "{info:?}");
    assert_eq!(info["master_repl_offset"], "1");
    assert_eq!(info["msglog_role"], "leader");
    let key = format!("follower_{}_{}", follower.ip(), follower.port());
    assert_eq!(info[&key], "acked=0,lag=0,state=online", "{info:?}");

    cluster.wait_converged(0).await;
    let info = info_replication(follower).await;
    assert_eq!(info["role"], "slave");
    assert_eq!(info["master_host"], leader.ip().to_string());
    assert_eq!(info["master_port"], leader.port().to_string());
    assert_eq!(info["master_link_status"], "up");
    assert_eq!(info["master_repl_offset"], "1");

    let port = leader.port().to_string();
    let redis_cli = tokio::task::spawn_blocking(move || {
        Command::new("redis-cli").args(["-h", "127.0.0.1", "-p", &port, "INFO", "replication"]).output()
    })
    .await
    .unwrap();
    match redis_cli {
        Ok(out) => {
            let stdout = text(&out.stdout);
            assert!(stdout.contains("role:master") && stdout.contains(&format!("slave0:{slave0}")), "{stdout}");
        }
        Err(_) if std::env::var("MSGLOG_REQUIRE_TOOLS").as_deref() == Ok("1") => panic!("redis-cli is required"),
        Err(_) => eprintln!("SKIPPED: redis-cli is not installed (apt-get install redis-tools)"),
    }
    drop(client);
    cluster.shutdown().await;
}
