//! The client matrix: current Redis client libraries, each with its default settings,
//! against a real `msglog serve` process. Each one connects, round-trips binary values,
//! MGETs, pipelines 1,000 commands, runs MULTI/EXEC transactions while a concurrent reader
//! checks it never sees half of one, drives a pool of 20 connections, and carries on after
//! the server is killed and restarted on the same port.
//!
//! The Rust `redis` crate always runs. The Python and Node libraries run from the
//! environment `.ci/run` prepares (README, "Redis clients"): `MSGLOG_REDIS_PY` names a
//! Python with `redis` installed and `MSGLOG_NODE_MODULES` a `node_modules` holding `redis`
//! and `ioredis` (defaulting to where `.ci/run` installs them). A library that is missing
//! is skipped with a message, unless `MSGLOG_REQUIRE_CLIENTS=1`, which makes it a failure.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};

use common::{DEADLINE, ServerProcess, poll_until};
use redis::Commands;
use tempfile::TempDir;

/// A server process that the test can restart on the same ports and data dir.
struct Restartable {
    _dir: TempDir,
    data: PathBuf,
    server: ServerProcess,
}

impl Restartable {
    fn start() -> Restartable {
        let dir = TempDir::new().expect("temp dir");
        let data = dir.path().join("data");
        let server = ServerProcess::start(&data, &["--stats-interval", "0s"]);
        Restartable { _dir: dir, data, server }
    }

    fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// SIGKILL, then a new process on the same ports and data dir.
    fn restart(&mut self) {
        let (addr, grpc) = (self.server.addr, self.server.grpc);
        self.server.kill9();
        self.server = ServerProcess::start_on(&self.data, addr, grpc, &["--stats-interval", "0s"]);
    }
}

/// Skips (visibly) or fails, per `MSGLOG_REQUIRE_CLIENTS`, when a library is missing.
fn missing(library: &str, why: &str) {
    let required = std::env::var("MSGLOG_REQUIRE_CLIENTS").is_ok_and(|v| v == "1");
    assert!(!required, "{library} is required (MSGLOG_REQUIRE_CLIENTS=1) but {why}");
    eprintln!("skipped: {library} is not available ({why}); .ci/run installs it");
}

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn python() -> PathBuf {
    std::env::var_os("MSGLOG_REDIS_PY").map_or_else(|| repo_path("target/clients/venv/bin/python"), PathBuf::from)
}

fn node_modules() -> PathBuf {
    std::env::var_os("MSGLOG_NODE_MODULES").map_or_else(|| repo_path("target/clients/node/node_modules"), PathBuf::from)
}

/// Whether `program args` runs and exits 0.
fn runs(program: &Path, args: &[&str], node_path: Option<&Path>) -> bool {
    let mut command = Command::new(program);
    command.args(args).stdout(Stdio::null()).stderr(Stdio::null());
    if let Some(node_path) = node_path {
        command.env("NODE_PATH", node_path);
    }
    command.status().is_ok_and(|s| s.success())
}

/// Runs a client script against a fresh server: restarts the server when the script
/// prints `restart` (then tells it so on stdin), and requires it to print `ok` and exit 0.
fn run_script(program: &Path, script: &str, node_path: Option<&Path>) {
    let mut server = Restartable::start();
    let dir = TempDir::new().expect("temp dir");
    let stderr_path = dir.path().join("script.stderr");
    let mut command = Command::new(program);
    command
        .arg(repo_path(&format!("tests/clients/{script}")))
        .env("MSGLOG_PORT", server.addr().port().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"));
    if let Some(node_path) = node_path {
        command.env("NODE_PATH", node_path);
    }
    let mut child = command.spawn().expect("spawn the client script");
    let mut stdin = child.stdin.take().expect("stdin");
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || stdout.lines().map_while(Result::ok).try_for_each(|l| lines.send(l)));
    let failure = |child: &mut std::process::Child, what: &str| -> ! {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{script}: {what}\n{}", std::fs::read_to_string(&stderr_path).unwrap_or_default());
    };
    let mut said = Vec::new();
    loop {
        match received.recv_timeout(DEADLINE) {
            Ok(line) if line == "restart" => {
                server.restart();
                stdin.write_all(b"restarted\n").expect("tell the script");
                stdin.flush().expect("flush");
            }
            Ok(line) => said.push(line),
            Err(mpsc::RecvTimeoutError::Timeout) => failure(&mut child, "no output before the deadline"),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = poll_until("the client script to exit", || child.try_wait().expect("try_wait"));
    if !status.success() || said.last().map(String::as_str) != Some("ok") {
        failure(&mut child, &format!("exited with {status}, printed {said:?}"));
    }
}

#[test]
fn redis_py_works_with_its_defaults() {
    let python = python();
    if !runs(&python, &["-c", "import redis"], None) {
        return missing("redis-py", &format!("{} cannot import redis", python.display()));
    }
    run_script(&python, "redis_py.py", None);
}

#[test]
fn node_redis_works_with_its_defaults() {
    let modules = node_modules();
    if !runs(Path::new("node"), &["-e", "require('redis')"], Some(&modules)) {
        return missing("node-redis", &format!("node cannot require('redis') from {}", modules.display()));
    }
    run_script(Path::new("node"), "node_redis.js", Some(&modules));
}

#[test]
fn ioredis_works_with_its_defaults() {
    let modules = node_modules();
    if !runs(Path::new("node"), &["-e", "require('ioredis')"], Some(&modules)) {
        return missing("ioredis", &format!("node cannot require('ioredis') from {}", modules.display()));
    }
    run_script(Path::new("node"), "ioredis.js", Some(&modules));
}

#[test]
fn the_redis_crate_works_with_its_defaults() {
    let mut server = Restartable::start();
    let client = redis::Client::open(format!("redis://{}/", server.addr())).expect("client");
    let connect = || {
        let con = client.get_connection_with_timeout(DEADLINE).expect("connect");
        con.set_read_timeout(Some(DEADLINE)).expect("timeout");
        con
    };
    let mut con = connect();
    let binary: Vec<u8> = (0u8..=255).chain(*b"\r\n").collect();
    let () = con.set(b"rs:bin\xff", &binary).unwrap();
    assert_eq!(con.get::<_, Vec<u8>>(b"rs:bin\xff").unwrap(), binary);
    let () = con.set("rs:a", "1").unwrap();
    assert_eq!(con.mget::<_, Vec<Option<String>>>(&["rs:a", "rs:missing"]).unwrap(), [Some("1".into()), None]);

    let mut pipe = redis::pipe();
    (0..1000).for_each(|i| {
        pipe.set(format!("rs:p{i}"), i).ignore();
    });
    (0..1000).for_each(|i| {
        pipe.get(format!("rs:p{i}"));
    });
    assert_eq!(pipe.query::<Vec<u32>>(&mut con).unwrap(), (0..1000).collect::<Vec<u32>>());

    // Transactions (MULTI/EXEC) while a reader checks it never sees half of one.
    let () = con.mset(&[("rs:left", 0), ("rs:right", 0)]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, mut reader) = (stop.clone(), connect());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                let pair: (u32, u32) = reader.mget(&["rs:left", "rs:right"]).unwrap();
                assert_eq!(pair.0, pair.1, "a reader saw half a transaction");
            }
        })
    };
    for i in 1..=200u32 {
        let (set, got, _): ((), u32, ()) =
            redis::pipe().atomic().set("rs:left", i).get("rs:left").set("rs:right", i).query(&mut con).unwrap();
        assert_eq!((set, got), ((), i));
    }
    stop.store(true, Ordering::Release);
    reader.join().expect("the reader saw only whole transactions");

    // 20 connections busy at once (the crate has no pool of its own without a feature).
    std::thread::scope(|s| {
        for n in 0..20 {
            let mut con = connect();
            s.spawn(move || {
                for i in 0..50 {
                    let () = con.set(format!("rs:pool{n}:{i}"), i).unwrap();
                    assert_eq!(con.get::<_, u32>(format!("rs:pool{n}:{i}")).unwrap(), i);
                }
            });
        }
    });

    // After a restart on the same port, the same client connects again.
    let () = con.set("rs:durable", "before restart").unwrap();
    server.restart();
    assert!(con.get::<_, String>("rs:durable").is_err(), "the old connection died with the server");
    let mut con = connect();
    assert_eq!(con.get::<_, String>("rs:durable").unwrap(), "before restart");
}
