//! Partitions in a cluster of real `msglog serve --cluster --partitions P` processes: the
//! IDs spread over the nodes (each holds about R/N of them), every node takes any request
//! and forwards it to its partition's leader, and killing nodes up to the tolerance loses
//! no acknowledged write while writes go on (judged by the history checker).
//!
//! `MSGLOG_SCENARIO_ROUNDS` repeats the kill scenarios with further seeds (the soak in
//! docs/RELIABILITY.md).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use common::history::History;
use common::poll_until;
use common::rounds::{PHASE_WRITES, await_acked_writes, for_each_seed};
use common::scenario::{Addressing, ProcessCluster, Workload, WorkloadConfig, assert_history_is_valid, final_reads};

/// Partitions of the clusters here: several per node, so that each node's share of the IDs
/// is the sum of a few partitions'.
const PARTITIONS: &str = "12";

fn start(n: usize, tolerance: u32, copies: usize) -> ProcessCluster {
    // Every node is a voter: with partitions, the voters are the nodes partitions are placed on.
    ProcessCluster::start_cluster_with_args(
        n,
        n,
        tolerance,
        Some(copies),
        Addressing::Shared,
        // A partition that lost a copy is below --min-insync until another node holds one:
        // soon, so that writes to it resume within the scenario.
        &["--partitions", PARTITIONS, "--replace-dead-after", "3s"],
    )
}

/// A text-protocol connection for requests one at a time.
struct Client {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let writer = TcpStream::connect(addr).expect("connect");
        let reader = BufReader::new(writer.try_clone().expect("clone"));
        Client { writer, reader }
    }

    fn request(&mut self, line: &str) -> String {
        self.writer.write_all(format!("{line}\r\n").as_bytes()).expect("send");
        let mut reply = String::new();
        self.reader.read_line(&mut reply).expect("reply");
        reply.trim_end().to_string()
    }
}

/// STATS `ids=` of node `i`: the IDs in the partitions it holds a copy of.
fn ids_held(cluster: &ProcessCluster, i: usize) -> u64 {
    cluster.stats(i).get("ids").and_then(|ids| ids.parse().ok()).unwrap_or(0)
}

/// 1000 IDs written through one node land on `copies` nodes each, spread evenly: every
/// node holds `1000 * copies / n` of them within 10%, and every ID reads back through
/// another node.
fn thousand_ids_spread(n: usize, tolerance: u32, copies: usize) {
    let cluster = start(n, tolerance, copies);
    // Written once leaderships follow placement (a hand-over answers a write caught in it
    // 'may or may not have been applied'). They do once every preferred replica is in sync (a partition is
    // first led by whichever replica registered first, then handed over): node i is the
    // preferred leader of the partitions p with p mod n = i.
    let partitions: usize = PARTITIONS.parse().expect("a count");
    let preferred: Vec<u64> = (0..n).map(|i| (0..partitions).filter(|p| p % n == i).count() as u64).collect();
    let led = poll_until("every partition to be led by its preferred replica", || {
        let led: Vec<u64> =
            (0..n).map(|i| cluster.stats(i).get("partitions_led").and_then(|l| l.parse().ok()).unwrap_or(0)).collect();
        (led == preferred).then_some(led)
    });
    eprintln!("partitions led per node: {led:?}");
    let mut writer = Client::connect(cluster.nodes[0].addr);
    for k in 0..1000 {
        assert_eq!(writer.request(&format!("SET id-{k} message-{k}")), "OK", "SET id-{k}");
    }
    let total = 1000 * copies as u64;
    let held = poll_until("every copy of the 1000 IDs to be made", || {
        let held: Vec<u64> = (0..n).map(|i| ids_held(&cluster, i)).collect();
        (held.iter().sum::<u64>() == total).then_some(held)
    });
    eprintln!("{n} nodes, {copies} copies, partitions {PARTITIONS}: IDs held per node {held:?}");
    let share = total / n as u64;
    for (i, &count) in held.iter().enumerate() {
        assert!(
            count.abs_diff(share) <= share / 10,
            "n{i} holds {count} IDs, not {share} within 10% (every node: {held:?})"
        );
    }
    let mut reader = Client::connect(cluster.nodes[n - 1].addr);
    for k in 0..1000 {
        assert_eq!(reader.request(&format!("GET id-{k}")), format!("message-{k}"), "GET id-{k}");
    }
}

#[test]
fn a_thousand_ids_on_four_nodes_at_two_copies_spread_five_hundred_a_node() {
    thousand_ids_spread(4, 1, 2);
}

#[test]
fn a_thousand_ids_on_six_nodes_at_three_copies_spread_five_hundred_a_node() {
    thousand_ids_spread(6, 2, 3);
}

/// Writes through node 0 while `dead` other nodes are killed (each leads some partitions):
/// their partitions fail over, writes go on, and every acknowledged write reads back.
fn kill_nodes_under_load(n: usize, tolerance: u32, copies: usize, dead: usize, name: &str) {
    for_each_seed(name, |seed| {
        let mut cluster = start(n, tolerance, copies);
        cluster.target(0);
        let history = Arc::new(History::new());
        // Enough keys that every partition is written.
        let config = WorkloadConfig { seed, keys: 64, ..WorkloadConfig::default() };
        let load = Workload::start(Arc::clone(&history), cluster.leader_target(), config);
        await_acked_writes(&history, PHASE_WRITES);
        let killed: Vec<usize> = (0..dead).map(|k| 1 + (seed as usize + k) % (n - 1)).collect();
        for &i in &killed {
            cluster.kill(i);
        }
        await_acked_writes(&history, PHASE_WRITES);
        load.stop();
        // Every partition back to a leader and `copies` in-sync replicas (the dead nodes'
        // places given to others), so that every key reads back.
        poll_until("every partition to be whole again", || {
            let stats = cluster.stats(0);
            let whole = |p: usize| {
                let value = stats.get(&format!("partition.{p}"))?;
                let field = |name: &str| value.split(',').find_map(|f| f.strip_prefix(name));
                let isr = field("isr:")?.split('+').filter(|id| !id.is_empty()).count();
                (field("leader:")? != "none" && isr == copies).then_some(())
            };
            (0..PARTITIONS.parse().expect("a count")).all(|p| whole(p).is_some()).then_some(())
        });
        final_reads(&history, cluster.nodes[0].addr, &config);
        assert_history_is_valid(&history);
    });
}

#[test]
fn killing_one_of_four_nodes_at_tolerance_one_loses_no_acknowledged_write() {
    kill_nodes_under_load(4, 1, 2, 1, "partitions: kill 1 of 4 at tolerance 1");
}

#[test]
fn killing_two_of_six_nodes_at_tolerance_two_loses_no_acknowledged_write() {
    kill_nodes_under_load(6, 2, 3, 2, "partitions: kill 2 of 6 at tolerance 2");
}
