//! Fault scenarios against real `msglog serve` processes: a cluster of processes the test
//! kills, pauses and restarts, and a workload of client threads that records
//! every operation in a [`History`] for the checker.
//!
//! Nodes either share 127.0.0.1 (ports picked free) or each get their own loopback address
//! (127.0.0.11, .12 ...) inside a private network namespace, so nftables rules can cut the
//! links between them; a node's replication connections leave from its own address
//! (`--bind-source-addr`). Clients connect from 127.0.0.1, which no rule names.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use tempfile::TempDir;

use super::checker;
use super::cluster::digest;
use super::history::{History, Kind};
use super::{ServerProcess, poll_until, stats};

/// How long a write waits for followers before `ERR replication timeout`.
pub const ACK_TIMEOUT: &str = "2s";
/// A client gives up on a reply after this (longer than the ack timeout, so a slow quorum
/// answers with an error rather than leave the write unknown).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(4);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressing {
    /// Every node on 127.0.0.1, on free ports.
    Shared,
    /// Node i on 127.0.0.(11 + i), fixed ports: only inside a private network namespace.
    Distinct,
}

pub struct ProcessNode {
    pub name: String,
    pub ip: IpAddr,
    pub addr: SocketAddr,
    pub grpc: SocketAddr,
    pub data_dir: PathBuf,
    process: Option<ServerProcess>,
}

pub struct ProcessCluster {
    /// One process cluster at a time in a test binary: two would share two cores, and a
    /// scenario's timeouts are sized for one.
    _serial: MutexGuard<'static, ()>,
    dir: TempDir,
    pub nodes: Vec<ProcessNode>,
    tolerance: u32,
    addressing: Addressing,
    /// Where the workload sends requests: the node the test believes leads.
    leader: Arc<RwLock<SocketAddr>>,
    /// Cluster mode: the `--cluster` voter list every node is started with.
    voters: Option<String>,
    /// Cluster mode: `--replication-factor`, when not the default (3).
    replication_factor: Option<usize>,
    /// Cluster mode: more flags every member is started with.
    member_args: Vec<String>,
}

/// A failed scenario keeps its data dirs and each node's stderr for a post-mortem.
impl Drop for ProcessCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "scenario failed: data dirs and node logs (serve-<port>.stderr) kept in {}",
                self.dir.path().display()
            );
        }
    }
}

impl ProcessCluster {
    /// `n` processes: node 0 leads with `tolerance`, the others follow it.
    pub fn start(n: usize, tolerance: u32, addressing: Addressing) -> ProcessCluster {
        let mut cluster = ProcessCluster::new(n, tolerance, addressing);
        cluster.launch(0, None);
        for i in 1..n {
            cluster.launch(i, Some(0));
        }
        cluster
    }

    /// `n` processes in cluster mode, the first `voters` of them voters of the metadata
    /// quorum, every write on `tolerance + 1` in-sync replicas; returns once one leads.
    pub fn start_cluster(n: usize, voters: usize, tolerance: u32, addressing: Addressing) -> ProcessCluster {
        ProcessCluster::start_cluster_with_copies(n, voters, tolerance, None, addressing)
    }

    /// [`start_cluster`](Self::start_cluster), every record on `copies` nodes (its
    /// `--replication-factor`) when given.
    pub fn start_cluster_with_copies(
        n: usize,
        voters: usize,
        tolerance: u32,
        copies: Option<usize>,
        addressing: Addressing,
    ) -> ProcessCluster {
        ProcessCluster::start_cluster_with_args(n, voters, tolerance, copies, addressing, &[])
    }

    /// [`start_cluster_with_copies`](Self::start_cluster_with_copies), every member also
    /// started (and restarted) with `member_args`.
    pub fn start_cluster_with_args(
        n: usize,
        voters: usize,
        tolerance: u32,
        copies: Option<usize>,
        addressing: Addressing,
        member_args: &[&str],
    ) -> ProcessCluster {
        let mut cluster = ProcessCluster::new(n, tolerance, addressing);
        cluster.replication_factor = copies;
        cluster.member_args = member_args.iter().map(|a| a.to_string()).collect();
        let list: Vec<String> =
            cluster.nodes[..voters].iter().map(|node| format!("{}={}", node.name, node.grpc)).collect();
        cluster.voters = Some(list.join(","));
        // Voters first, all at once: each waits for a quorum to form.
        let mut starting: Vec<usize> = (0..n).collect();
        starting.sort_by_key(|&i| i >= voters);
        for i in starting {
            cluster.spawn_member(i);
        }
        for i in 0..n {
            cluster.nodes[i].process.as_mut().expect("spawned").wait_until_ready();
        }
        let leader = cluster.wait_for_leader(&(0..n).collect::<Vec<_>>());
        cluster.target(leader);
        // Writes need min-insync members in sync: the replicas join the ISR once caught up.
        let replicas = copies.unwrap_or(3).min(n);
        poll_until("the replicas to join the in-sync replicas", || {
            (cluster.isr(leader).len() >= replicas).then_some(())
        });
        cluster
    }

    /// `n` nodes, none started yet.
    fn new(n: usize, tolerance: u32, addressing: Addressing) -> ProcessCluster {
        let serial = serial();
        let dir = TempDir::new().expect("temp dir");
        let nodes: Vec<ProcessNode> = (0..n)
            .map(|i| {
                let (ip, addr, grpc) = match addressing {
                    Addressing::Shared => {
                        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
                        (ip, SocketAddr::new(ip, super::free_port()), SocketAddr::new(ip, super::free_port()))
                    }
                    Addressing::Distinct => {
                        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11 + i as u8));
                        (ip, SocketAddr::new(ip, 7000 + i as u16), SocketAddr::new(ip, 7100 + i as u16))
                    }
                };
                let data_dir = dir.path().join(format!("n{i}"));
                ProcessNode { name: format!("n{i}"), ip, addr, grpc, data_dir, process: None }
            })
            .collect();
        let leader = Arc::new(RwLock::new(nodes[0].addr));
        ProcessCluster {
            _serial: serial,
            dir,
            nodes,
            tolerance,
            addressing,
            leader,
            voters: None,
            replication_factor: None,
            member_args: Vec::new(),
        }
    }

    /// The in-sync replicas node `i` reports (its STATS `isr=`).
    pub fn isr(&self, i: usize) -> Vec<String> {
        let isr = self.stats(i).get("isr").cloned().unwrap_or_default();
        isr.split(',').filter(|id| !id.is_empty()).map(str::to_string).collect()
    }

    /// The flags every start of node `i` shares, with `extra` after them.
    fn args<'a>(&'a self, i: usize, source: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["--node-id", &self.nodes[i].name, "--stats-interval", "0s", "--ack-timeout", ACK_TIMEOUT];
        args.extend_from_slice(extra);
        if self.addressing == Addressing::Distinct {
            args.extend(["--bind-source-addr", source]);
        }
        args
    }

    /// Starts cluster member `i` on its data dir (again, after a kill or stop) and waits
    /// until it accepts clients.
    pub fn relaunch(&mut self, i: usize) {
        self.spawn_member(i);
        self.nodes[i].process.as_mut().expect("spawned").wait_until_ready();
    }

    fn spawn_member(&mut self, i: usize) {
        assert!(self.nodes[i].process.is_none(), "{} is running", self.nodes[i].name);
        let voters = self.voters.clone().expect("a cluster-mode cluster");
        let tolerance = self.tolerance.to_string();
        let source = self.nodes[i].ip.to_string();
        let copies = self.replication_factor.map(|r| r.to_string());
        let mut extra = vec!["--cluster", &voters, "--tolerance", &tolerance];
        if let Some(copies) = &copies {
            extra.extend(["--replication-factor", copies]);
        }
        let member_args = self.member_args.clone();
        extra.extend(member_args.iter().map(String::as_str));
        let args = self.args(i, &source, &extra);
        let node = &self.nodes[i];
        let process = ServerProcess::spawn_on(&node.data_dir, node.addr, node.grpc, &args);
        self.nodes[i].process = Some(process);
    }

    /// Waits until exactly one of `candidates` (running, not paused) says it leads, and
    /// every other candidate names it as leader; returns it.
    pub fn wait_for_leader(&self, candidates: &[usize]) -> usize {
        poll_until("one leader that the other nodes follow", || {
            let views: Vec<(usize, HashMap<String, String>)> =
                candidates.iter().filter(|&&i| self.is_running(i)).map(|&i| (i, self.stats(i))).collect();
            let leaders: Vec<usize> = views
                .iter()
                .filter(|(_, s)| s.get("leader").map(String::as_str) == Some("self"))
                .map(|(i, _)| *i)
                .collect();
            let [leader] = leaders[..] else { return None };
            let name = &self.nodes[leader].name;
            views.iter().all(|(i, s)| *i == leader || s.get("leader") == Some(name)).then_some(leader)
        })
    }

    /// Points the workload at node `i`.
    pub fn target(&self, i: usize) {
        *self.leader.write().expect("leader lock") = self.nodes[i].addr;
    }

    /// Starts node `i` on its data dir: leading if `follow` is `None`, else following node
    /// `follow`.
    pub fn launch(&mut self, i: usize, follow: Option<usize>) {
        assert!(self.nodes[i].process.is_none(), "{} is running", self.nodes[i].name);
        let tolerance = self.tolerance.to_string();
        let leader_grpc = follow.map(|l| self.nodes[l].grpc.to_string());
        let source = self.nodes[i].ip.to_string();
        let role = match &leader_grpc {
            Some(grpc) => ["--follow", grpc.as_str()],
            None => ["--tolerance", tolerance.as_str()],
        };
        let args = self.args(i, &source, &role);
        let node = &self.nodes[i];
        let process = ServerProcess::start_on(&node.data_dir, node.addr, node.grpc, &args);
        self.nodes[i].process = Some(process);
        if follow.is_none() {
            *self.leader.write().expect("leader lock") = self.nodes[i].addr;
        }
    }

    pub fn process(&self, i: usize) -> &ServerProcess {
        self.nodes[i].process.as_ref().unwrap_or_else(|| panic!("{} is not running", self.nodes[i].name))
    }

    /// SIGKILL: no shutdown, nothing flushed beyond what the node already wrote.
    pub fn kill(&mut self, i: usize) {
        let mut process = self.nodes[i].process.take().expect("running");
        process.kill9();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self, i: usize) {
        let mut process = self.nodes[i].process.take().expect("running");
        process.signal(libc::SIGTERM);
        let status = process.wait_for_exit();
        assert!(status.success(), "{} did not stop cleanly:\n{}", self.nodes[i].name, process.stderr());
    }

    /// SIGSTOP: the process keeps its sockets and its role but does nothing.
    pub fn pause(&self, i: usize) {
        self.process(i).signal(libc::SIGSTOP);
    }

    pub fn resume(&self, i: usize) {
        self.process(i).signal(libc::SIGCONT);
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].process.is_some()
    }

    /// Where the workload sends requests.
    pub fn leader_target(&self) -> Arc<RwLock<SocketAddr>> {
        Arc::clone(&self.leader)
    }

    pub fn stats(&self, i: usize) -> HashMap<String, String> {
        stats(self.nodes[i].addr)
    }

    /// The next offset of node `i`'s log, from STATS (`last_offset` + 1; 0 when empty).
    pub fn next_offset(&self, i: usize) -> u64 {
        self.stats(i).get("last_offset").and_then(|o| o.parse::<u64>().ok()).map_or(0, |o| o + 1)
    }

    /// Waits until every running node's log ends where `leader`'s does.
    pub fn wait_converged(&self, leader: usize) {
        poll_until("every running node to catch up with the leader", || {
            let end = self.next_offset(leader);
            (0..self.nodes.len())
                .filter(|&i| self.is_running(i))
                .all(|i| self.next_offset(i) == end && self.next_offset(leader) == end)
                .then_some(())
        });
    }

    /// Waits until every running node holds at least the records `leader`'s log held when
    /// the wait began: the catch-up check for a cluster still under load, where the end
    /// moves on between one STATS and the next (use [`Self::wait_converged`] once the
    /// clients have stopped).
    pub fn wait_caught_up(&self, leader: usize) {
        let end = self.next_offset(leader);
        poll_until("every running node to reach the leader's end", || {
            (0..self.nodes.len()).filter(|&i| self.is_running(i)).all(|i| self.next_offset(i) >= end).then_some(())
        });
    }

    /// Stops every running node cleanly and returns (name, digest) of each of their logs.
    pub fn stop_all_and_digest(mut self) -> Vec<(String, String)> {
        let running: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.is_running(i)).collect();
        for &i in &running {
            self.stop(i);
        }
        running.iter().map(|&i| (self.nodes[i].name.clone(), digest(&self.nodes[i].data_dir))).collect()
    }
}

/// One process cluster at a time (see `ProcessCluster::_serial`).
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    // A scenario that failed (panicked) still leaves the lock usable by the next.
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Client threads sending SETs (unique values) and GETs over a few keys to the current
/// leader, recording each operation. Errors and timeouts are recorded as such (a write
/// left unanswered is "maybe applied") and the client reconnects.
pub struct Workload {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

#[derive(Debug, Clone, Copy)]
pub struct WorkloadConfig {
    pub clients: usize,
    /// Keys are `<prefix><n>` for n below `keys`.
    pub prefix: &'static str,
    pub keys: usize,
    /// Percent of operations that are GETs.
    pub read_percent: u32,
    pub seed: u64,
}

impl Default for WorkloadConfig {
    fn default() -> WorkloadConfig {
        WorkloadConfig { clients: 4, prefix: "k", keys: 8, read_percent: 40, seed: 1 }
    }
}

impl Workload {
    pub fn start(history: Arc<History>, target: Arc<RwLock<SocketAddr>>, config: WorkloadConfig) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..config.clients)
            .map(|client| {
                let (history, target, stop) = (Arc::clone(&history), Arc::clone(&target), Arc::clone(&stop));
                std::thread::spawn(move || run_client(client, &history, &target, &stop, config))
            })
            .collect();
        Workload { stop, threads }
    }

    /// Stops the clients after their current request and waits for them.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().expect("a workload client panicked");
        }
    }
}

/// A small deterministic generator (xorshift64*), so a seed replays the same choices.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// Bound on one client's operations, so a scenario that never trips its own stop still ends.
const MAX_OPS_PER_CLIENT: u64 = 200_000;

fn run_client(
    client: usize,
    history: &History,
    target: &RwLock<SocketAddr>,
    stop: &AtomicBool,
    config: WorkloadConfig,
) {
    let mut rng = Rng::new(config.seed.wrapping_add(client as u64 * 7919));
    let mut connection: Option<(SocketAddr, Connection)> = None;
    for _ in 0..MAX_OPS_PER_CLIENT {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let addr = *target.read().expect("leader lock");
        if connection.as_ref().is_none_or(|(at, _)| *at != addr) {
            match Connection::open(addr) {
                Ok(c) => connection = Some((addr, c)),
                Err(_) => {
                    // The leader is down or being replaced: try again shortly.
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            }
        }
        let (_, conn) = connection.as_mut().expect("connected");
        let key = format!("{}{}", config.prefix, rng.below(config.keys as u64));
        let ok = if rng.below(100) < u64::from(config.read_percent) {
            let op = history.invoke_read(client, &key);
            match conn.request(&format!("GET {key}")) {
                Ok(reply) => {
                    match reply.as_str() {
                        "NOT_FOUND" => history.read_ok(op, None),
                        error if error.starts_with("ERR") => history.read_failed(op, error),
                        _ => history.read_ok(op, Some(reply.clone())),
                    }
                    true
                }
                Err(err) => {
                    history.read_failed(op, err);
                    false
                }
            }
        } else {
            let value = history.next_value(client);
            let op = history.invoke_write(client, &key, &value);
            match conn.request(&format!("SET {key} {value}")) {
                Ok(reply) if reply == "OK" => {
                    history.write_ok(op);
                    true
                }
                Ok(reply) => {
                    history.write_failed(op, &reply);
                    if reply.starts_with("ERR not enough replicas") {
                        // Refused before it was appended: until followers connect, every
                        // write would be; pace the retries instead of spinning.
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    true
                }
                Err(_) => {
                    history.write_unknown(op);
                    false
                }
            }
        };
        if !ok {
            connection = None;
        }
    }
}

/// A text-protocol connection with a reply timeout.
struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Connection {
    fn open(addr: SocketAddr) -> std::io::Result<Connection> {
        let stream = TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
        stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
        Ok(Connection { reader: BufReader::new(stream.try_clone()?), writer: stream })
    }

    fn request(&mut self, line: &str) -> std::io::Result<String> {
        self.writer.write_all(format!("{line}\n").as_bytes())?;
        let mut reply = String::new();
        if self.reader.read_line(&mut reply)? == 0 || !reply.ends_with("\r\n") {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        reply.truncate(reply.len() - 2);
        Ok(reply)
    }
}

/// After healing: reads every key a workload with `config` uses from `addr`, as the
/// history's final reads.
/// A read refused because the partition's leadership changed under it is asked again
/// (a client may always retry a read), a bounded number of times.
pub fn final_reads(history: &History, addr: SocketAddr, config: &WorkloadConfig) {
    const RETRIES: usize = 100;
    let mut conn = Connection::open(addr).expect("connect for the final reads");
    for k in 0..config.keys {
        let key = format!("{}{k}", config.prefix);
        let mut reply = conn.request(&format!("GET {key}")).expect("final GET");
        for _ in 0..RETRIES {
            if !reply.starts_with("ERR leadership changed") {
                break;
            }
            eprintln!("final GET {key}: {reply}; asking again");
            // A back-off, not a synchronisation: the next try is routed anew either way.
            std::thread::sleep(Duration::from_millis(50));
            reply = conn.request(&format!("GET {key}")).expect("final GET");
        }
        assert!(!reply.starts_with("ERR"), "final GET {key} failed: {reply}");
        history.final_read(&key, (reply != "NOT_FOUND").then_some(reply));
    }
}

/// The history passes the checker: linearizable per key, and every acknowledged write
/// readable after healing. Panics with the minimal violating windows otherwise.
pub fn assert_history_is_valid(history: &History) {
    let ops = history.ops();
    // Final reads are what the lost-write check compares with: a key written and never
    // read back at the end would be checked for nothing.
    let read_back: std::collections::HashSet<&str> =
        ops.iter().filter(|op| matches!(op.kind, Kind::FinalRead)).map(|op| op.key.as_str()).collect();
    let unread: Vec<&str> = ops
        .iter()
        .filter(|op| op.is_acked_write() && !read_back.contains(op.key.as_str()))
        .map(|op| op.key.as_str())
        .collect();
    assert!(unread.is_empty(), "keys with acknowledged writes were not read back at the end: {unread:?}");
    // `check` includes the final-read (lost write) check.
    let violations = match checker::check(&ops) {
        Ok(report) => {
            eprintln!("history: {}; {report}", history.counts());
            Vec::new()
        }
        Err(violations) => violations,
    };
    assert!(
        violations.is_empty(),
        "the history ({}) has {} violations:\n{}",
        history.counts(),
        violations.len(),
        checker::format_violations(&violations)
    );
}
