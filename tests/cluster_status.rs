//! `msglog cluster status` run as a process: against a real cluster-mode cluster, against
//! stand-in nodes that answer fixed STATS lines (the member walk, AUTH, an unreachable
//! member), and against a standalone node and a closed port, which it refuses.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::scenario::{Addressing, ProcessCluster};
use common::{DEADLINE, ServerProcess, free_port, msglog};

fn cluster_status(args: &[&str]) -> Output {
    msglog().arg("cluster").arg("status").args(args).output().expect("run msglog cluster status")
}

fn json_of(output: &Output) -> serde_json::Value {
    assert!(output.status.success(), "cluster status failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("one JSON object")
}

/// What a run that must fail said on stderr.
fn stderr_of_failure(output: &Output) -> String {
    assert!(!output.status.success(), "cluster status succeeded: {}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn member<'a>(json: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    json["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("{id} in {json}"))
}

#[test]
fn a_three_node_cluster_shows_every_node_and_the_one_leader_from_any_node() {
    let cluster = ProcessCluster::start_cluster(3, 3, 1, Addressing::Shared);
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let leader_name = cluster.nodes[leader].name.clone();
    // Asked at a follower, so the others are found through its member list.
    let asked = cluster.nodes[(leader + 1) % 3].addr.to_string();

    let json = json_of(&cluster_status(&["--addr", &asked, "--json"]));
    assert_eq!(json["leader"], leader_name.as_str(), "{json}");
    assert_ne!(json["cluster"], "forming", "{json}");
    for node in &cluster.nodes {
        let row = member(&json, &node.name);
        assert_eq!(row["addr"], node.addr.to_string().as_str(), "{json}");
        let state = if node.name == leader_name { "leader" } else { "follower" };
        assert_eq!(row["state"], state, "{json}");
        assert!(row["records"].is_u64(), "{} answered its STATS: {json}", node.name);
    }

    let text = cluster_status(&["--addr", &asked]);
    assert!(text.status.success(), "{}", String::from_utf8_lossy(&text.stderr));
    let text = String::from_utf8(text.stdout).expect("UTF-8");
    assert!(text.lines().next().expect("header").contains(&format!(" leader {leader_name} ")), "{text}");
    for node in &cluster.nodes {
        let row = text.lines().find(|l| l.starts_with(&format!("{} ", node.name))).expect("a row per node");
        assert!(row.contains(&node.addr.to_string()), "{text}");
    }
}

#[test]
fn a_standalone_node_is_refused_because_it_has_no_cluster() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let server = ServerProcess::start(&dir.path().join("data"), &["--stats-interval", "0s"]);
    let addr = server.addr.to_string();
    let stderr = stderr_of_failure(&cluster_status(&["--addr", &addr]));
    assert!(stderr.contains(&format!("{addr} is a standalone node (not started with --cluster)")), "{stderr}");
}

#[test]
fn a_node_that_does_not_answer_is_an_error() {
    let addr = format!("127.0.0.1:{}", free_port());
    let stderr = stderr_of_failure(&cluster_status(&["--addr", &addr]));
    assert!(stderr.contains(&format!("cannot get STATS from {addr}")), "{stderr}");
}

#[test]
fn every_listed_member_is_asked_with_the_password_and_a_silent_one_is_unreachable() {
    let listeners: Vec<TcpListener> = (0..2).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().expect("addr")).collect();
    let silent = format!("127.0.0.1:{}", free_port());
    let shared = format!(
        "cluster=c1 controller=n0 min_insync=2 replicas=n0,n1,n2 isr=n0,n1 fenced= members=n0@{},n1@{},n2@{silent}",
        addrs[0], addrs[1]
    );
    let lines = [
        format!("role=leader node_id=n0 records=7 ids=3 epoch=2 {shared} leader=self hw=7 follower.n1=acked:6,lag:0"),
        format!("role=follower node_id=n1 records=5 ids=2 epoch=2 {shared} leader=n0 hw=5 lag=2"),
    ];
    let _nodes: Vec<FakeNode> = listeners.into_iter().zip(lines).map(|(l, line)| FakeNode::serve(l, line)).collect();
    let asked = addrs[1].to_string();

    let refused = cluster_status(&["--addr", &asked]);
    assert!(!refused.status.success(), "STATS without AUTH is refused by the node");

    let json = json_of(&cluster_status(&["--addr", &asked, "--password", PASSWORD, "--json"]));
    assert_eq!(json["leader"], "n0", "{json}");
    assert_eq!(json["hw"], 7, "the header is the leader's view: {json}");
    assert_eq!(
        (member(&json, "n0")["state"].clone(), member(&json, "n0")["records"].clone()),
        ("leader".into(), 7.into())
    );
    assert_eq!(
        (member(&json, "n1")["state"].clone(), member(&json, "n1")["lag"].clone()),
        ("follower".into(), 0.into())
    );
    assert_eq!(member(&json, "n2")["state"], "unreachable", "{json}");
    assert_eq!(member(&json, "n2")["in_isr"], false, "{json}");
}

const PASSWORD: &str = "s3cret";

/// Answers `AUTH` and `STATS` with a fixed line, so the member walk is checked on its own.
struct FakeNode {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeNode {
    fn serve(listener: TcpListener, stats: String) -> FakeNode {
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + DEADLINE;
            while !stopping.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => answer(stream, &stats),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FakeNode { stop, thread: Some(thread) }
    }
}

fn answer(stream: TcpStream, stats: &str) {
    stream.set_nonblocking(false).expect("blocking");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut writer = &stream;
    let mut authenticated = false;
    for line in BufReader::new(&stream).lines() {
        let Ok(line) = line else { return };
        let reply = match line.split_once(' ') {
            Some(("AUTH", given)) => {
                authenticated = given == PASSWORD;
                if authenticated { "OK".to_string() } else { "ERR invalid password".to_string() }
            }
            _ if line == "STATS" && authenticated => stats.to_string(),
            _ => "ERR NOAUTH authentication required".to_string(),
        };
        if writer.write_all(format!("{reply}\r\n").as_bytes()).is_err() {
            return;
        }
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
