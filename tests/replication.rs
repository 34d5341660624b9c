//! Replication with real `msglog serve` processes on loopback ports chosen at run time:
//! a leader and followers, kill -9 under load, failover, divergence, and the errors a
//! write gets when followers are missing or slow.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use common::{LineClient, ServerProcess, msglog, poll_until, stats};
use tempfile::TempDir;

fn last_offset(addr: SocketAddr) -> String {
    stats(addr)["last_offset"].clone()
}

fn start_leader(data: &Path, tolerance: u32) -> ServerProcess {
    let tolerance = tolerance.to_string();
    ServerProcess::start(data, &leader_flags(&tolerance))
}

/// Starts a stopped leader again on its data dir and its old ports, where its followers
/// keep looking for it.
fn restart_leader(data: &Path, (addr, grpc): (SocketAddr, SocketAddr), tolerance: u32) -> ServerProcess {
    let tolerance = tolerance.to_string();
    ServerProcess::start_on(data, addr, grpc, &leader_flags(&tolerance))
}

fn leader_flags(tolerance: &str) -> [&str; 6] {
    ["--tolerance", tolerance, "--ack-timeout", "30s", "--stats-interval", "0s"]
}

/// What STATS says of a node's log contents: the same before and after means nothing was
/// appended or cut in between.
fn contents(addr: SocketAddr) -> Vec<String> {
    let stats = stats(addr);
    ["records", "ids", "bytes", "last_offset"].iter().map(|key| format!("{key}={}", stats[*key])).collect()
}

fn start_follower(data: &Path, leader: &ServerProcess) -> ServerProcess {
    let leader = leader.grpc.to_string();
    // One id across restarts (the default, the listen address, changes with the port), so
    // the leader's `followers` file names each follower once.
    let id = data.file_name().and_then(|name| name.to_str()).expect("a data dir name").to_string();
    ServerProcess::start(data, &["--node-id", &id, "--follow", &leader, "--stats-interval", "0s"])
}

fn wait_for_followers(leader: &ServerProcess, count: usize) {
    poll_until(&format!("{count} followers to connect"), || {
        (stats(leader.addr)["followers"] == count.to_string()).then_some(())
    });
}

/// Waits until every follower's log ends where the leader's does.
fn wait_caught_up(leader: &ServerProcess, followers: &[&ServerProcess]) {
    let end = last_offset(leader.addr);
    for follower in followers {
        poll_until("a follower to catch up", || (last_offset(follower.addr) == end).then_some(()));
    }
}

/// Stops the server with SIGTERM and returns `msglog check`'s digest of its data dir.
fn stop_and_digest(mut server: ServerProcess) -> String {
    server.signal(libc::SIGTERM);
    assert!(server.wait_for_exit().success(), "server did not exit cleanly:\n{}", server.stderr());
    digest(&server.data_dir)
}

fn digest(data: &Path) -> String {
    let out = msglog().arg("check").arg("--data-dir").arg(data).output().expect("run msglog check");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "check failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout.lines().find_map(|l| l.strip_prefix("digest: ")).expect("a digest line").to_string()
}

fn get(addr: SocketAddr, id: &str) -> String {
    let mut client = LineClient::connect(addr).expect("connect");
    String::from_utf8(client.request(format!("GET {id}").as_bytes()).expect("GET")).expect("utf-8")
}

/// Runs `clients` threads, each SETting `per_client` keys `c<client>-<n>` until done or
/// `stop` is raised; returns the (key, value) pairs answered OK and every other reply.
fn load(
    addr: SocketAddr,
    clients: usize,
    per_client: usize,
    stop: Arc<AtomicBool>,
) -> (Vec<(String, String)>, Vec<String>) {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (acked, errors, stop) = (Arc::clone(&acked), Arc::clone(&errors), Arc::clone(&stop));
            thread::spawn(move || {
                let Ok(mut client) = LineClient::connect(addr) else { return };
                for n in 0..per_client {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let (key, value) = (format!("c{c}-{n}"), format!("value {c} {n}"));
                    match client.request(format!("SET {key} {value}").as_bytes()) {
                        Ok(reply) if reply == b"OK" => acked.lock().unwrap().push((key, value)),
                        Ok(reply) => errors.lock().unwrap().push(String::from_utf8_lossy(&reply).to_string()),
                        // The server died under us: what was not answered was not acknowledged.
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("load thread");
    }
    let acked = Arc::try_unwrap(acked).unwrap().into_inner().unwrap();
    let errors = Arc::try_unwrap(errors).unwrap().into_inner().unwrap();
    (acked, errors)
}

#[test]
fn every_acknowledged_set_is_on_a_follower_and_digests_converge() {
    let tmp = TempDir::new().unwrap();
    let leader = start_leader(&tmp.path().join("leader"), 1);
    let a = start_follower(&tmp.path().join("a"), &leader);
    let b = start_follower(&tmp.path().join("b"), &leader);
    wait_for_followers(&leader, 2);

    let (acked, errors) = load(leader.addr, 8, 2_500, Arc::new(AtomicBool::new(false)));
    assert!(errors.is_empty(), "errors under load: {:?}", &errors[..errors.len().min(5)]);
    assert_eq!(acked.len(), 20_000);

    let mut on_leader = LineClient::connect(leader.addr).unwrap();
    let mut on_a = LineClient::connect(a.addr).unwrap();
    let mut on_b = LineClient::connect(b.addr).unwrap();
    for (key, value) in &acked {
        let get = format!("GET {key}");
        assert_eq!(on_leader.request(get.as_bytes()).unwrap(), value.as_bytes());
        let a_has = on_a.request(get.as_bytes()).unwrap() == value.as_bytes();
        let b_has = on_b.request(get.as_bytes()).unwrap() == value.as_bytes();
        assert!(a_has || b_has, "{key} was acknowledged but is on no follower");
    }

    wait_caught_up(&leader, &[&a, &b]);
    let digests = [stop_and_digest(leader), stop_and_digest(a), stop_and_digest(b)];
    assert_eq!(digests[0], digests[1]);
    assert_eq!(digests[0], digests[2]);
}

#[test]
fn a_killed_follower_restarts_from_its_own_log_and_converges() {
    let tmp = TempDir::new().unwrap();
    let leader = start_leader(&tmp.path().join("leader"), 1);
    let mut a = start_follower(&tmp.path().join("a"), &leader);
    let b = start_follower(&tmp.path().join("b"), &leader);
    wait_for_followers(&leader, 2);

    let (first, errors) = load(leader.addr, 4, 1_000, Arc::new(AtomicBool::new(false)));
    assert!(errors.is_empty() && first.len() == 4_000, "{errors:?}");
    // Once everything it holds is durable, a kill -9 cannot take any of it away.
    wait_caught_up(&leader, &[&a]);
    let a_had = poll_until("the follower's log to be durable", || {
        let s = stats(a.addr);
        (s["durable_offset"] == s["last_offset"]).then(|| s["last_offset"].clone())
    });
    let (a_addr, a_grpc) = (a.addr, a.grpc);
    a.kill9();

    // Tolerance 1 with one follower left: writes go on.
    let stop = Arc::new(AtomicBool::new(false));
    let (second, errors) = load(leader.addr, 4, 1_000, stop);
    assert!(errors.is_empty(), "writes failed with a follower down: {:?}", &errors[..errors.len().min(5)]);
    assert_eq!(second.len(), 4_000);

    let leader_arg = leader.grpc.to_string();
    let a = ServerProcess::start_on(
        &tmp.path().join("a"),
        a_addr,
        a_grpc,
        &["--follow", &leader_arg, "--stats-interval", "0s"],
    );
    wait_caught_up(&leader, &[&a, &b]);
    // It fetched from where its log ended, not from the start.
    let resumed = a.stderr();
    assert!(
        resumed.contains(&format!("from={}", a_had.parse::<u64>().unwrap() + 1)),
        "the restarted follower did not resume from its log end ({a_had}):\n{resumed}"
    );
    for (key, value) in first.iter().chain(&second).step_by(97) {
        assert_eq!(get(a.addr, key), *value);
    }
    let digests = [stop_and_digest(leader), stop_and_digest(a), stop_and_digest(b)];
    assert_eq!(digests[0], digests[1]);
    assert_eq!(digests[0], digests[2]);
}

/// `msglog serve` on `data` with `args`, expected to refuse to start: its stderr.
fn refused_start(data: &Path, args: &[&str]) -> String {
    let out = msglog().args(["serve", "--data-dir"]).arg(data).args(args).output().expect("run msglog serve");
    assert!(!out.status.success(), "serve {args:?} started");
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn after_the_leader_is_killed_its_follower_has_every_acknowledged_set_and_is_never_promoted() {
    let tmp = TempDir::new().unwrap();
    let (leader_data, follower_data) = (tmp.path().join("leader"), tmp.path().join("follower"));
    let leader = start_leader(&leader_data, 1);
    let follower = start_follower(&follower_data, &leader);
    wait_for_followers(&leader, 1);

    let stop = Arc::new(AtomicBool::new(false));
    let loading = {
        let (addr, stop) = (leader.addr, Arc::clone(&stop));
        thread::spawn(move || load(addr, 8, 1_000_000, stop))
    };
    poll_until("some writes to be acknowledged", || {
        (last_offset(follower.addr).parse::<u64>().unwrap_or(0) > 2_000).then_some(())
    });
    let (leader_addr, leader_grpc) = (leader.addr, leader.grpc);
    let mut leader = leader;
    leader.kill9();
    stop.store(true, Ordering::Relaxed);
    let (acked, _) = loading.join().unwrap();
    // The follower had appended 2,000 records; each of the 8 clients may have had one more
    // in flight whose OK the kill cut off, so compare with a margin, not with 2,000 itself.
    assert!(acked.len() > 1_900, "only {} writes acknowledged", acked.len());
    let mut on_follower = LineClient::connect(follower.addr).unwrap();
    for (key, value) in &acked {
        assert_eq!(on_follower.request(format!("GET {key}").as_bytes()).unwrap(), value.as_bytes(), "{key} lost");
    }
    drop(on_follower);

    // A copy never leads without --cluster: restarting it as a leader is refused, saying why.
    let follower_digest = stop_and_digest(follower);
    let why = refused_start(&follower_data, &["--tolerance", "1"]);
    assert!(why.contains("holds a copy of log") && why.contains("--cluster"), "{why}");
    assert_eq!(digest(&follower_data), follower_digest, "a refused start changes nothing");

    // The way back: the leader restarts on its own data dir and the follower resumes.
    let leader_arg = leader_grpc.to_string();
    let leader = restart_leader(&leader_data, (leader_addr, leader_grpc), 1);
    let follower = ServerProcess::start(&follower_data, &["--follow", &leader_arg, "--stats-interval", "0s"]);
    wait_for_followers(&leader, 1);
    let mut client = LineClient::connect(leader.addr).unwrap();
    assert_eq!(client.request(b"SET after-restart yes").unwrap(), b"OK");
    wait_caught_up(&leader, &[&follower]);
    assert_eq!(get(follower.addr, "after-restart"), "yes");
    for (key, value) in acked.iter().step_by(101) {
        assert_eq!(get(leader.addr, key), *value);
    }
    assert_eq!(stop_and_digest(leader), stop_and_digest(follower));
}

/// A new, empty node in the old leader's place (or a mistyped address) holds another log:
/// its epoch 1 and offsets mean nothing to the follower, which must not compare its records
/// with them, let alone cut them.
#[test]
fn a_follower_refuses_a_leader_of_another_log_and_keeps_every_record() {
    let tmp = TempDir::new().unwrap();
    let (a_data, b_data, impostor_data) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));
    let a = start_leader(&a_data, 0);
    let b = start_follower(&b_data, &a);
    let mut client = LineClient::connect(a.addr).unwrap();
    for n in 0..10 {
        assert_eq!(client.request(format!("SET shared-{n} v{n}").as_bytes()).unwrap(), b"OK");
    }
    wait_caught_up(&a, &[&b]);
    drop(client);
    let (a_addr, a_grpc) = (a.addr, a.grpc);
    let a_digest = stop_and_digest(a);
    let b_held = contents(b.addr);

    // An empty leader takes a's addresses: the follower reconnects to it and is refused.
    let impostor =
        ServerProcess::start_on(&impostor_data, a_addr, a_grpc, &["--tolerance", "0", "--stats-interval", "0s"]);
    poll_until("the follower to be refused by the other log", || {
        (b.stderr().contains("different logs") && impostor.stderr().contains("holds another log")).then_some(())
    });
    assert_eq!(last_offset(b.addr), "9", "the follower kept its records");
    assert_eq!(get(b.addr, "shared-9"), "v9");
    assert_eq!(contents(b.addr), b_held, "the refused follower's log is what it was, nothing cut or added");
    drop(impostor);

    // Its own leader back at that address: it follows again, nothing lost or cut.
    let a = restart_leader(&a_data, (a_addr, a_grpc), 1);
    wait_for_followers(&a, 1);
    let mut client = LineClient::connect(a.addr).unwrap();
    assert_eq!(client.request(b"SET after v").unwrap(), b"OK", "the follower acknowledges again");
    wait_caught_up(&a, &[&b]);
    assert!(!b.stderr().contains("truncating"), "nothing was cut:\n{}", b.stderr());
    assert_ne!(a_digest, "");
    assert_eq!(stop_and_digest(a), stop_and_digest(b));
}

#[test]
fn writes_fail_as_specified_without_enough_followers_or_acks() {
    let tmp = TempDir::new().unwrap();
    let leader = ServerProcess::start(&tmp.path().join("leader"), &["--tolerance", "1", "--ack-timeout", "300ms"]);
    let mut client = LineClient::connect(leader.addr).unwrap();
    assert_eq!(client.request(b"SET k v").unwrap(), b"ERR not enough replicas (have 0, need 1)");
    assert_eq!(client.request(b"DEL k").unwrap(), b"ERR not enough replicas (have 0, need 1)");
    assert_eq!(client.request(b"GET k").unwrap(), b"NOT_FOUND");

    let follower = start_follower(&tmp.path().join("follower"), &leader);
    wait_for_followers(&leader, 1);
    assert_eq!(client.request(b"SET k v").unwrap(), b"OK");
    let mut on_follower = LineClient::connect(follower.addr).unwrap();
    assert_eq!(on_follower.request(b"GET k").unwrap(), b"v");
    let refusal = format!("ERR read-only follower; leader is {}", leader.addr);
    assert_eq!(on_follower.request(b"SET k w").unwrap(), refusal.as_bytes());
    assert_eq!(on_follower.request(b"DEL k").unwrap(), refusal.as_bytes());
    // Refused writes are not counted as SETs, on the follower or on the leader.
    assert_eq!(stats(follower.addr)["sets"], "0");
    assert_eq!(stats(leader.addr)["sets"], "1");

    // A stopped (not dead) follower stays connected but acknowledges nothing.
    follower.signal(libc::SIGSTOP);
    assert_eq!(client.request(b"SET k w").unwrap(), b"ERR replication timeout (acked 0 of 1)");
    follower.signal(libc::SIGCONT);
    poll_until("the follower to apply the timed-out write", || (get(follower.addr, "k") == "w").then_some(()));
}

#[test]
fn tolerance_two_with_one_follower_is_refused_and_a_bad_tolerance_file_stops_startup() {
    let tmp = TempDir::new().unwrap();
    let conf = tmp.path().join("tolerance.conf");
    std::fs::write(&conf, "# replicas that must hold a write\nTOLERANCE=2\n").unwrap();
    let leader = ServerProcess::start(&tmp.path().join("leader"), &["--tolerance-file", conf.to_str().unwrap()]);
    let _follower = start_follower(&tmp.path().join("follower"), &leader);
    wait_for_followers(&leader, 1);
    let mut client = LineClient::connect(leader.addr).unwrap();
    assert_eq!(client.request(b"SET k v").unwrap(), b"ERR not enough replicas (have 1, need 2)");

    std::fs::write(&conf, "TOLERANCE=2\ntolerance = x\n").unwrap();
    let mut bad = ServerProcess::spawn(&tmp.path().join("other"), &["--tolerance-file", conf.to_str().unwrap()]);
    assert!(!bad.wait_for_exit().success());
    let stderr = bad.stderr();
    assert!(stderr.contains("tolerance.conf") && stderr.contains("line 2"), "{stderr}");
}

#[test]
fn tail_prints_records_from_an_offset_and_follows_new_ones() {
    let tmp = TempDir::new().unwrap();
    let leader = ServerProcess::start(&tmp.path().join("leader"), &["--stats-interval", "0s"]);
    let mut client = LineClient::connect(leader.addr).unwrap();
    assert_eq!(client.request(b"SET a first").unwrap(), b"OK");
    assert_eq!(client.request(b"SET b two  words ").unwrap(), b"OK");
    assert_eq!(client.request(b"DEL a").unwrap(), b"OK");
    let grpc = leader.grpc.to_string();

    let out = msglog().args(["tail", "--from", &grpc, "--no-follow"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    let epoch = lines[0].split(' ').nth(1).unwrap();
    assert_eq!(lines[0], format!("0 {epoch} a first"));
    assert_eq!(lines[1], format!("1 {epoch} b two  words "));
    assert_eq!(lines[2], format!("2 {epoch} a"));

    let out = msglog().args(["tail", "--from", &grpc, "--no-follow", "--json", "--offset", "1"]).output().unwrap();
    let json: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(json.len(), 2);
    assert_eq!(json[0]["id"], "b");
    assert_eq!(json[0]["message"], "two  words ");
    assert_eq!(json[1]["kind"], "del");

    // Following: a record appended after tail started is printed.
    let mut child = msglog()
        .args(["tail", "--from", &grpc, "--offset", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    // Bounds the blocking read below: the watchdog kills tail if no line comes in time.
    let (done, watched) = std::sync::mpsc::channel::<()>();
    let watchdog = thread::spawn(move || {
        if watched.recv_timeout(common::DEADLINE).is_err() {
            // SAFETY: our own child, reaped only after this thread is joined.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    assert_eq!(client.request(b"SET c later").unwrap(), b"OK");
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
    done.send(()).unwrap();
    watchdog.join().unwrap();
    // SAFETY: our own unreaped child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = child.wait();
    assert_eq!(line.trim_end(), format!("3 {epoch} c later"));
}

#[test]
fn followers_reconnect_to_a_restarted_leader_and_resume_from_their_log_end() {
    let tmp = TempDir::new().unwrap();
    let leader_data = tmp.path().join("leader");
    let mut leader = start_leader(&leader_data, 1);
    let follower = start_follower(&tmp.path().join("follower"), &leader);
    wait_for_followers(&leader, 1);
    let mut client = LineClient::connect(leader.addr).unwrap();
    for n in 0..100 {
        assert_eq!(client.request(format!("SET before-{n} v").as_bytes()).unwrap(), b"OK");
    }
    drop(client);
    let (addr, grpc) = (leader.addr, leader.grpc);
    leader.signal(libc::SIGTERM);
    assert!(leader.wait_for_exit().success());
    drop(leader);

    // Same ports: the follower's backoff loop finds the leader again, in a new epoch.
    let leader = restart_leader(&leader_data, (addr, grpc), 1);
    wait_for_followers(&leader, 1);
    let mut client = LineClient::connect(leader.addr).unwrap();
    assert_eq!(client.request(b"SET after-restart v").unwrap(), b"OK");
    assert_eq!(get(follower.addr, "after-restart"), "v");
    assert_eq!(stats(follower.addr)["last_offset"], "100");
    assert!(follower.stderr().contains("from=100"), "did not resume at 100:\n{}", follower.stderr());
    assert_eq!(stop_and_digest(leader), stop_and_digest(follower));
}

#[test]
fn http2_keepalive_notices_a_frozen_follower_on_an_idle_log_and_it_reconnects() {
    let tmp = TempDir::new().unwrap();
    let leader = start_leader(&tmp.path().join("leader"), 0);
    let follower = start_follower(&tmp.path().join("follower"), &leader);
    wait_for_followers(&leader, 1);
    // A stopped process's kernel still ACKs TCP, so only the leader's HTTP/2 pings (every
    // 5 s, 10 s to answer) can tell that nobody is reading the stream.
    follower.signal(libc::SIGSTOP);
    wait_for_followers(&leader, 0);
    follower.signal(libc::SIGCONT);
    wait_for_followers(&leader, 1);
    let mut client = LineClient::connect(leader.addr).unwrap();
    assert_eq!(client.request(b"SET after-thaw v").unwrap(), b"OK");
    poll_until("the thawed follower to replicate", || (get(follower.addr, "after-thaw") == "v").then_some(()));
}

#[test]
fn a_follower_that_accepts_smaller_records_than_its_leader_refuses_to_follow_and_says_why() {
    let tmp = TempDir::new().unwrap();
    let leader =
        ServerProcess::start(&tmp.path().join("leader"), &["--max-message-bytes", "20M", "--stats-interval", "0s"]);
    let grpc = leader.grpc.to_string();
    // The default 1 MiB message limit gives a 16 MiB record limit: too small for this leader.
    let small = start_follower(&tmp.path().join("small"), &leader);
    let large = ServerProcess::start(
        &tmp.path().join("large"),
        &["--follow", &grpc, "--max-message-bytes", "20M", "--stats-interval", "0s"],
    );
    let big = "x".repeat(17_000_000);
    let mut client = LineClient::connect(leader.addr).unwrap();
    assert_eq!(client.request(format!("SET big {big}").as_bytes()).unwrap(), b"OK");
    poll_until("the large follower to hold the 17 MB message", || (get(large.addr, "big") == big).then_some(()));

    poll_until("the small follower to say why it does not follow", || {
        small.stderr().contains("restart this follower with a --max-message-bytes").then_some(())
    });
    // It backs off rather than retrying at the first-retry pace forever.
    poll_until("the small follower's retries to back off", || small.stderr().contains("retry_in=800ms").then_some(()));
    assert_eq!(last_offset(small.addr), "none", "the small follower appended something");
    assert_eq!(stats(small.addr)["leader_connected"], "false");
}

#[test]
fn tail_explains_a_wrong_address() {
    let tmp = TempDir::new().unwrap();
    let leader = start_leader(&tmp.path().join("leader"), 0);
    let tail_error = |addr: String| {
        let out = msglog().args(["tail", "--no-follow", "--from", &addr]).output().expect("run msglog tail");
        assert!(!out.status.success(), "tail of {addr} succeeded");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let client_port = tail_error(leader.addr.to_string());
    assert!(client_port.contains("not its client port"), "{client_port}");
    let closed = tail_error(format!("127.0.0.1:{}", common::free_port()));
    assert!(closed.contains("cannot reach") && closed.contains("refused"), "{closed}");
    assert!(!closed.contains("transport error"), "layers of wrapping in: {closed}");
}

#[test]
fn a_stale_leader_is_refused_and_the_follower_keeps_its_log() {
    let tmp = TempDir::new().unwrap();
    // The current leader is in its second epoch, and the follower has seen it.
    let current_dir = tmp.path().join("current");
    let mut first_run = start_leader(&current_dir, 0);
    first_run.signal(libc::SIGTERM);
    assert!(first_run.wait_for_exit().success());
    drop(first_run);
    let current = start_leader(&current_dir, 0);
    let follower_dir = tmp.path().join("follower");
    let mut follower = start_follower(&follower_dir, &current);
    wait_for_followers(&current, 1);
    let mut client = LineClient::connect(current.addr).unwrap();
    for n in 0..10 {
        assert_eq!(client.request(format!("SET current-{n} v").as_bytes()).unwrap(), b"OK");
    }
    wait_caught_up(&current, &[&follower]);
    follower.signal(libc::SIGTERM);
    assert!(follower.wait_for_exit().success());
    drop(follower);

    // A leader still in epoch 1 with a log of its own: following it would mean truncating.
    let stale = start_leader(&tmp.path().join("stale"), 0);
    let mut client = LineClient::connect(stale.addr).unwrap();
    assert_eq!(client.request(b"SET stale v").unwrap(), b"OK");
    let follower = start_follower(&follower_dir, &stale);
    poll_until("the follower to refuse the stale leader", || {
        follower.stderr().contains("this is a stale leader").then_some(())
    });
    assert_eq!(last_offset(follower.addr), "9", "the follower cut its log for a stale leader");
    assert_eq!(get(follower.addr, "current-9"), "v");
    assert_eq!(stats(stale.addr)["followers"], "0");
}

#[test]
fn bad_replication_flags_stop_the_start_and_failed_starts_use_no_epoch() {
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    let data_arg = data.to_str().unwrap();
    let refused = |args: &[&str]| {
        let out = msglog().args(["serve", "--data-dir", data_arg]).args(args).output().expect("run msglog serve");
        assert!(!out.status.success(), "serve {args:?} started");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    assert!(refused(&["--follow", "leader-without-port"]).contains("--follow"));
    assert!(refused(&["--ack-timeout", "0s"]).contains("--ack-timeout"));
    for _ in 0..2 {
        assert!(refused(&["--listen", "not-an-address"]).contains("cannot listen on not-an-address"));
    }
    let leader = start_leader(&data, 0);
    assert!(leader.stderr().contains("leading epoch=1 "), "{}", leader.stderr());
}
