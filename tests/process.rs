//! Real `msglog` processes on loopback ports: crash recovery, graceful shutdown, the data-dir
//! lock, and `msglog client`.

mod common;

use std::io::Write;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;

use common::{DEADLINE, LineClient, ServerProcess, msglog};
use tempfile::TempDir;

/// Runs `msglog client` with `args`, feeding it `stdin`, and returns its output; killed if
/// it outlives the deadline.
fn run_client(args: &[&[u8]], stdin: Option<Vec<u8>>) -> Output {
    use std::os::unix::ffi::OsStrExt;
    let mut child = msglog()
        .arg("client")
        .args(args.iter().map(|a| std::ffi::OsStr::from_bytes(a)))
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn msglog client");
    let pid = child.id() as libc::pid_t;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let (done, finished) = mpsc::channel();
    thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match finished.recv_timeout(DEADLINE) {
        Ok(output) => output.expect("client output"),
        Err(_) => {
            // SAFETY: kill(2) on our own child, which has not been reaped (wait has not returned).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("msglog client did not finish before the deadline");
        }
    }
}

/// kill -9 keeps the OS's page cache, so this shows that `OK` comes only once a write has
/// left the process (written to the OS), under each policy; it cannot show an fsync (the
/// storage tests' simulated power cut does). A server that acknowledged from its write
/// buffer would lose the buffer's records here under every policy.
#[test]
fn acknowledged_sets_survive_a_process_crash_under_every_fsync_policy() {
    for fsync in ["always", "interval=200", "never"] {
        acknowledged_sets_survive_kill_9(fsync);
    }
}

fn acknowledged_sets_survive_kill_9(fsync: &str) {
    const WRITERS: usize = 8;
    const ACKS_BEFORE_KILL: usize = 2_000;
    const MAX_SETS_PER_WRITER: usize = 1_000_000;
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    let mut server = ServerProcess::start(&data, &["--fsync", fsync]);

    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let (ack, acks) = mpsc::channel::<()>();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (acked, stop, ack, addr) = (Arc::clone(&acked), Arc::clone(&stop), ack.clone(), server.addr);
            thread::spawn(move || {
                let mut client = LineClient::connect(addr).expect("connect writer");
                for i in 0..MAX_SETS_PER_WRITER {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let id = format!("w{w}-{i}");
                    let value = format!("value of {w}/{i} {}", "x".repeat(i % 97));
                    match client.request(format!("SET {id} {value}").as_bytes()) {
                        Ok(reply) if reply == b"OK" => {
                            acked.lock().unwrap().push((id, value));
                            let _ = ack.send(());
                        }
                        Ok(reply) => panic!("unexpected reply to SET: {}", String::from_utf8_lossy(&reply)),
                        // The server was killed.
                        Err(_) => break,
                    }
                }
            })
        })
        .collect();
    drop(ack);

    for _ in 0..ACKS_BEFORE_KILL {
        acks.recv_timeout(DEADLINE).expect("writers made progress");
    }
    server.kill9();
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.join().expect("writer thread");
    }

    let restarted = ServerProcess::start(&data, &["--fsync", fsync]);
    let mut reader = LineClient::connect(restarted.addr).expect("connect reader");
    let acked = acked.lock().unwrap();
    assert!(acked.len() >= ACKS_BEFORE_KILL);
    let lost: Vec<&String> = acked
        .iter()
        .filter(|(id, value)| reader.request(format!("GET {id}").as_bytes()).expect("GET") != value.as_bytes())
        .map(|(id, _)| id)
        .collect();
    assert!(
        lost.is_empty(),
        "--fsync {fsync}: {} of {} acknowledged SETs lost or changed, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
}

#[test]
fn sigterm_with_clients_connected_exits_zero_and_releases_the_lock() {
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    let mut server = ServerProcess::start(&data, &["--fsync", "always"]);
    let mut writer = LineClient::connect(server.addr).unwrap();
    for i in 0..100 {
        assert_eq!(writer.request(format!("SET key-{i} value {i}").as_bytes()).unwrap(), b"OK");
    }
    let mut idle = LineClient::connect(server.addr).unwrap();
    assert_eq!(idle.request(b"PING").unwrap(), b"PONG");

    server.signal(libc::SIGTERM);
    let status = server.wait_for_exit();
    assert_eq!(status.code(), Some(0), "exit status {status}; stderr:\n{}", server.stderr());
    assert!(writer.is_closed() && idle.is_closed(), "clients are disconnected");

    // The lock is released: a new server starts on the same directory and has the data.
    let restarted = ServerProcess::start(&data, &["--fsync", "always"]);
    let mut reader = LineClient::connect(restarted.addr).unwrap();
    for i in 0..100 {
        assert_eq!(reader.request(format!("GET key-{i}").as_bytes()).unwrap(), format!("value {i}").as_bytes());
    }
}

#[test]
fn second_server_on_the_same_data_dir_exits_naming_the_lock() {
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    let first = ServerProcess::start(&data, &[]);
    let mut second = ServerProcess::spawn(&data, &[]);
    let status = second.wait_for_exit();
    assert!(!status.success(), "second server must fail");
    let stderr = second.stderr();
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("msglog:")).collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{stderr}");
    assert!(errors[0].contains("lock"), "error does not mention the lock: {}", errors[0]);
    assert!(errors[0].contains(&data.display().to_string()), "error does not name the data dir: {}", errors[0]);
    assert!(errors[0].contains(&format!("PID {}", first.pid())), "error does not name the holder: {}", errors[0]);
}

#[test]
fn client_one_shot_prints_the_reply_and_fails_on_err() {
    let tmp = TempDir::new().unwrap();
    let server = ServerProcess::start(&tmp.path().join("data"), &["--fsync", "never"]);
    let addr = server.addr.to_string();
    let addr_args: [&[u8]; 2] = [b"--addr", addr.as_bytes()];
    let client = |command: &[&[u8]]| run_client(&[&addr_args[..], command].concat(), None);

    let set = client(&[b"SET", b"greeting", b"hello", b"", b"world"]);
    assert!(set.status.success());
    assert_eq!(set.stdout, b"OK\n");
    let get = client(&[b"get", b"greeting"]);
    assert_eq!(get.stdout, b"hello  world\n", "words are joined with single spaces");
    assert!(get.status.success());
    let missing = client(&[b"GET", b"nothing"]);
    assert_eq!(missing.stdout, b"NOT_FOUND\n");
    assert!(missing.status.success());
    let bad = client(&[b"FROB"]);
    assert!(bad.stdout.starts_with(b"ERR unknown command"));
    assert_eq!(bad.status.code(), Some(1));
}

#[test]
fn client_with_piped_stdin_sends_every_line_and_prints_every_reply() {
    let tmp = TempDir::new().unwrap();
    let server = ServerProcess::start(&tmp.path().join("data"), &["--fsync", "never"]);
    let addr = server.addr.to_string();
    let mut input = Vec::new();
    let mut expected = Vec::new();
    for i in 0..20_000 {
        input.extend_from_slice(format!("SET k{i} message number {i}\nGET k{i}\n").as_bytes());
        expected.extend_from_slice(format!("OK\nmessage number {i}\n").as_bytes());
    }
    // An unterminated last line is still sent.
    input.extend_from_slice(b"PING");
    expected.extend_from_slice(b"PONG\n");

    let output = run_client(&[b"--addr", addr.as_bytes()], Some(input));
    assert!(output.status.success(), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    assert!(output.stdout == expected, "replies differ ({} vs {} bytes)", output.stdout.len(), expected.len());

    let with_error = run_client(&[b"--addr", addr.as_bytes()], Some(b"PING\nNOPE\nPING\n".to_vec()));
    assert_eq!(with_error.stdout, b"PONG\nERR unknown command 'NOPE'; try HELP\nPONG\n");
    assert_eq!(with_error.status.code(), Some(1), "an ERR reply makes piped mode fail");
}

#[test]
fn a_log_damaged_in_the_middle_stops_the_start_with_one_line_pointing_at_check() {
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    let mut server = ServerProcess::start(&data, &[]);
    let mut client = LineClient::connect(server.addr).unwrap();
    for n in 0..20 {
        assert_eq!(client.request(format!("SET k{n} value-{n}").as_bytes()).unwrap(), b"OK");
    }
    drop(client);
    server.signal(libc::SIGTERM);
    assert!(server.wait_for_exit().success());
    drop(server);
    // Flip a byte in the middle of the only segment: valid records follow the damage.
    let segment = std::fs::read_dir(data.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "log"))
        .expect("a segment");
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&segment, bytes).unwrap();

    let mut damaged = ServerProcess::spawn(&data, &[]);
    assert!(!damaged.wait_for_exit().success(), "a damaged log must not be served");
    let stderr = damaged.stderr();
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("msglog:")).collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{stderr}");
    assert!(errors[0].contains("corrupt log"), "{}", errors[0]);
    assert!(errors[0].contains(&format!("msglog check --data-dir {}", data.display())), "{}", errors[0]);
    assert!(errors[0].contains("--repair"), "{}", errors[0]);
}

#[test]
fn a_segment_size_below_the_minimum_is_refused_naming_the_flag() {
    let out = msglog().args(["serve", "--segment-bytes", "0"]).output().expect("run msglog serve");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--segment-bytes") && stderr.contains("at least 65536"), "{stderr}");
}
