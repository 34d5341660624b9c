//! Compaction on replicated nodes: a leader cleans below what is committed, a follower
//! below what its leader shipped (committed offset, tombstone horizon), so replicas that
//! cleaned at different times hold the same live set (`msglog check`'s `logical-digest:`)
//! even where their bytes differ. Real `msglog serve` processes on loopback.

mod common;

use std::collections::HashMap;

use common::compaction::check_lines;
use common::proxy::{Fault, FaultProxy};
use common::scenario::{Addressing, ProcessCluster};
use common::{LineClient, ServerProcess, poll_until, stats};
use msglog::storage::{Config, Log};
use tempfile::TempDir;

/// Tiny segments and an eager cleaner that may drop every tombstone at once: the cleaner
/// has sealed segments to work on after a few thousand writes.
const CLEANER_FLAGS: [&str; 8] =
    ["--segment-bytes", "64K", "--min-cleanable-ratio", "0.1", "--delete-retention", "0s", "--fsync", "never"];

/// The cleaner flags, no periodic stats line, and `extra`: a standalone node's arguments
/// (the cluster harness adds its own `--stats-interval`).
fn flags<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    CLEANER_FLAGS.iter().copied().chain(["--stats-interval", "0s"]).chain(extra.iter().copied()).collect()
}

/// Overwrites 20 IDs many times and deletes some of them now and then: most of the log is
/// superseded, and tombstones lie in the sealed segments.
fn write_churn(client: &mut LineClient, count: u32) {
    for n in 0..count {
        let reply = match n % 7 {
            6 => client.request(format!("DEL id-{}", n % 20).as_bytes()).unwrap(),
            _ => client.request(format!("SET id-{} {n:05}-{}", n % 20, "x".repeat(100)).as_bytes()).unwrap(),
        };
        assert!(reply == b"OK" || reply == b"NOT_FOUND", "{}", String::from_utf8_lossy(&reply));
    }
}

/// Waits until the node at `addr` has finished a cleaning pass that dropped records.
fn wait_cleaned(addr: std::net::SocketAddr, what: &str) -> HashMap<String, String> {
    poll_until(&format!("{what} to clean its log"), || {
        let stats = stats(addr);
        (stats["cleaner_runs"] != "0" && stats["cleaned_bytes"] != "0").then_some(stats)
    })
}

/// Waits until the node at `addr`, just restarted, has nothing left to clean: a pass ran,
/// or the cleaner before the restart had already cleaned all but less than
/// `--min-cleanable-ratio` of the log (then no pass comes).
fn wait_nothing_to_clean(addr: std::net::SocketAddr, what: &str) {
    poll_until(&format!("{what} to have nothing left to clean"), || {
        let stats = stats(addr);
        let ratio: f64 = stats["dirty_ratio"].parse().unwrap();
        ((stats["cleaner_runs"] != "0" && stats["cleaned_bytes"] != "0") || ratio < 0.1).then_some(())
    });
}

/// Retires follower `id` the way an operator does, with the leader stopped: deletes its
/// line from the leader's `followers` file, so tombstones no longer wait for it.
fn retire_follower(leader_dir: &std::path::Path, id: &str) {
    let followers = leader_dir.join("followers");
    let kept: String =
        std::fs::read_to_string(&followers).unwrap().lines().filter(|l| *l != id).map(|l| format!("{l}\n")).collect();
    std::fs::write(&followers, kept).unwrap();
}

/// Deletes `victim` through the leader at `addr` and writes enough churn after it for a
/// cleaning pass to have work.
fn delete_victim_and_churn(addr: std::net::SocketAddr) {
    let mut client = LineClient::connect(addr).unwrap();
    assert_eq!(client.request(b"DEL victim").unwrap(), b"OK");
    write_churn(&mut client, 3500);
}

/// Restarts the leader on its addresses and waits until its cleaner has nothing left to
/// clean: the pass that ran started after every write made before the restart.
fn restart_and_clean(mut leader: ServerProcess, leader_dir: &std::path::Path) -> ServerProcess {
    let (addr, grpc) = (leader.addr, leader.grpc);
    stop(&mut leader);
    let leader = ServerProcess::start_on(leader_dir, addr, grpc, &flags(&[]));
    wait_nothing_to_clean(leader.addr, "the restarted leader");
    leader
}

fn stop(server: &mut ServerProcess) {
    server.signal(libc::SIGTERM);
    assert!(server.wait_for_exit().success(), "{}", server.stderr());
}

#[test]
fn a_leader_with_tolerance_and_its_follower_both_clean_and_keep_the_same_live_set() {
    let dir = TempDir::new().unwrap();
    let mut leader = ServerProcess::start(&dir.path().join("leader"), &flags(&["--tolerance", "1"]));
    let grpc = leader.grpc.to_string();
    let mut follower = ServerProcess::start(&dir.path().join("follower"), &flags(&["--follow", &grpc]));
    // Writes wait for the follower (`--tolerance 1`) and are refused until it connects.
    poll_until("the follower to connect", || (stats(leader.addr)["followers"] == "1").then_some(()));
    let mut client = LineClient::connect(leader.addr).unwrap();
    // 3500 writes of ~130 bytes: about seven 64 KiB segments, nearly all superseded.
    write_churn(&mut client, 3500);
    let end = stats(leader.addr)["last_offset"].clone();
    poll_until("the follower to catch up", || (stats(follower.addr)["last_offset"] == end).then_some(()));
    let leader_stats = wait_cleaned(leader.addr, "the leader");
    let follower_stats = wait_cleaned(follower.addr, "the follower");
    for (what, s) in [("leader", &leader_stats), ("follower", &follower_stats)] {
        assert!(s["records"].parse::<u64>().unwrap() < 3500, "the {what} dropped superseded records: {s:?}");
    }
    assert_eq!(client.request(b"GET id-3").unwrap(), format!("{:05}-{}", 3483, "x".repeat(100)).as_bytes());
    stop(&mut follower);
    stop(&mut leader);
    let (_, leader_logical) = check_lines(&leader.data_dir);
    let (_, follower_logical) = check_lines(&follower.data_dir);
    // The byte digests may differ: each replica cleaned at its own time.
    assert_eq!(leader_logical, follower_logical, "the replicas hold the same live set");
}

#[test]
fn three_cluster_members_clean_and_keep_the_same_live_set() {
    let mut cluster = ProcessCluster::start_cluster_with_args(3, 3, 1, None, Addressing::Shared, &CLEANER_FLAGS);
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let mut client = LineClient::connect(cluster.nodes[leader].addr).unwrap();
    write_churn(&mut client, 3500);
    cluster.wait_converged(leader);
    for node in &cluster.nodes {
        wait_cleaned(node.addr, &node.name);
    }
    for i in 0..3 {
        cluster.stop(i);
    }
    let logical: Vec<String> = cluster.nodes.iter().map(|n| check_lines(&n.data_dir).1).collect();
    assert!(logical.iter().all(|l| *l == logical[0]), "the members hold the same live set: {logical:?}");
}

#[test]
fn a_follower_whose_last_record_the_leader_cleaned_away_is_not_told_to_cut_it() {
    let dir = TempDir::new().unwrap();
    let leader_dir = dir.path().join("leader");
    // No --tolerance: writes go on while the follower is away.
    let mut leader = ServerProcess::start(&leader_dir, &flags(&[]));
    let grpc = leader.grpc.to_string();
    let mut follower =
        ServerProcess::start(&dir.path().join("follower"), &flags(&["--node-id", "f", "--follow", &grpc]));
    let mut client = LineClient::connect(leader.addr).unwrap();
    write_churn(&mut client, 3500);
    assert_eq!(client.request(b"SET marker one").unwrap(), b"OK");
    let end = stats(leader.addr)["last_offset"].clone();
    poll_until("the follower to catch up", || (stats(follower.addr)["last_offset"] == end).then_some(()));
    let marker_one: u64 = end.parse().unwrap();
    stop(&mut follower);
    // The follower's last record is superseded, and sealed under more churn.
    assert_eq!(client.request(b"SET marker two").unwrap(), b"OK");
    write_churn(&mut client, 3500);
    drop(client);
    stop(&mut leader);
    // The first pass after a restart starts after every write above, so it drops the
    // superseded record (unless one before the restart already did).
    let mut leader = ServerProcess::start(&leader_dir, &flags(&[]));
    wait_nothing_to_clean(leader.addr, "the restarted leader");
    stop(&mut leader);
    {
        let log = Log::open(&leader_dir, Config::default()).unwrap();
        assert_eq!(log.epoch_at(marker_one).unwrap(), None, "the leader's cleaner dropped the follower's last record");
    }
    let leader = ServerProcess::start(&leader_dir, &flags(&[]));
    let grpc = leader.grpc.to_string();
    let mut follower =
        ServerProcess::start(&dir.path().join("follower"), &flags(&["--node-id", "f", "--follow", &grpc]));
    let end = stats(leader.addr)["last_offset"].clone();
    poll_until("the follower to catch up again", || (stats(follower.addr)["last_offset"] == end).then_some(()));
    // The leader holds later records of that epoch, so it held the very record the
    // follower ends with: nothing diverged, and cutting would have walked back into
    // records (tombstones among them) the follower needs.
    assert!(!follower.stderr().contains("truncating"), "the follower cut its log: {}", follower.stderr());
    assert_eq!(LineClient::connect(follower.addr).unwrap().request(b"GET marker").unwrap(), b"two");
    stop(&mut follower);
    let mut leader = leader;
    stop(&mut leader);
    assert_eq!(check_lines(&leader.data_dir).1, check_lines(&follower.data_dir).1, "the same live set");
}

#[test]
fn a_manual_leader_keeps_tombstones_for_a_follower_that_was_away_across_its_restart() {
    let dir = TempDir::new().unwrap();
    let leader_dir = dir.path().join("leader");
    let leader = ServerProcess::start(&leader_dir, &flags(&[]));
    let (addr, grpc) = (leader.addr, leader.grpc);
    let grpc_text = grpc.to_string();
    let follow = |name: &'static str| flags(&["--node-id", name, "--follow", &grpc_text]);
    let _a = ServerProcess::start(&dir.path().join("a"), &follow("a"));
    let mut b = ServerProcess::start(&dir.path().join("b"), &follow("b"));
    let mut client = LineClient::connect(addr).unwrap();
    assert_eq!(client.request(b"SET victim old").unwrap(), b"OK");
    let end = stats(addr)["last_offset"].clone();
    poll_until("b to copy the victim", || (stats(b.addr)["last_offset"] == end).then_some(()));
    stop(&mut b);
    // The leader restarts while b is away: b is known only from its data dir now.
    let mut leader = leader;
    stop(&mut leader);
    let leader = ServerProcess::start_on(&leader_dir, addr, grpc, &flags(&[]));
    delete_victim_and_churn(addr);
    // A pass that starts after every write above: it would drop the tombstone if only a
    // (connected, holding it) counted.
    let leader = restart_and_clean(leader, &leader_dir);
    let b = ServerProcess::start(&dir.path().join("b"), &follow("b"));
    let end = stats(addr)["last_offset"].clone();
    poll_until("b to catch up", || (stats(b.addr)["last_offset"] == end).then_some(()));
    assert_eq!(LineClient::connect(b.addr).unwrap().request(b"GET victim").unwrap(), b"NOT_FOUND");
    assert!(leader.stderr().contains("tombstones wait until each has them"), "{}", leader.stderr());
}

#[test]
fn a_retired_follower_that_returns_copies_the_log_afresh_and_deleted_ids_stay_deleted() {
    let dir = TempDir::new().unwrap();
    let leader_dir = dir.path().join("leader");
    let leader = ServerProcess::start(&leader_dir, &flags(&[]));
    let (addr, grpc) = (leader.addr, leader.grpc);
    let grpc_text = grpc.to_string();
    let follow = |name: &'static str| flags(&["--node-id", name, "--follow", &grpc_text]);
    let _a = ServerProcess::start(&dir.path().join("a"), &follow("a"));
    let mut b = ServerProcess::start(&dir.path().join("b"), &follow("b"));
    let mut client = LineClient::connect(addr).unwrap();
    assert_eq!(client.request(b"SET victim old").unwrap(), b"OK");
    // Not the epoch's last record, which compaction keeps (with its tombstone).
    assert_eq!(client.request(b"SET filler 1").unwrap(), b"OK");
    let end = stats(addr)["last_offset"].clone();
    poll_until("b to copy the victim", || (stats(b.addr)["last_offset"] == end).then_some(()));
    stop(&mut b);
    // b is retired: the operator deletes its line, so tombstones no longer wait for it.
    let mut leader = leader;
    stop(&mut leader);
    retire_follower(&leader_dir, "b");
    let leader = ServerProcess::start_on(&leader_dir, addr, grpc, &flags(&[]));
    delete_victim_and_churn(addr);
    // A pass that starts after every write above drops the victim's tombstone: only a,
    // which holds it, counts now.
    let leader = restart_and_clean(leader, &leader_dir);
    // b comes back with its old copy: the victim's SET and none of what deleted it.
    let b = ServerProcess::start(&dir.path().join("b"), &follow("b"));
    let end = stats(addr)["last_offset"].clone();
    poll_until("b to catch up", || (stats(b.addr)["last_offset"] == end).then_some(()));
    assert_eq!(LineClient::connect(b.addr).unwrap().request(b"GET victim").unwrap(), b"NOT_FOUND");
    assert!(leader.stderr().contains("missed deletions"), "{}", leader.stderr());
}

#[test]
fn a_running_follower_cut_off_while_it_was_retired_copies_the_log_afresh_when_it_reconnects() {
    let dir = TempDir::new().unwrap();
    let leader_dir = dir.path().join("leader");
    let leader = ServerProcess::start(&leader_dir, &flags(&[]));
    let (addr, grpc) = (leader.addr, leader.grpc);
    // b reaches the leader through a proxy that can cut it off while its process runs on,
    // remembering the committed offset the leader last told it.
    let proxy = FaultProxy::start("127.0.0.1:0".parse().unwrap(), grpc);
    let through_proxy = proxy.addr().to_string();
    let b = ServerProcess::start(&dir.path().join("b"), &flags(&["--node-id", "b", "--follow", &through_proxy]));
    let mut client = LineClient::connect(addr).unwrap();
    assert_eq!(client.request(b"SET victim old").unwrap(), b"OK");
    // Not the epoch's last record, which compaction keeps (with its tombstone).
    assert_eq!(client.request(b"SET filler 1").unwrap(), b"OK");
    let end = stats(addr)["last_offset"].clone();
    poll_until("b to copy the victim", || (stats(b.addr)["last_offset"] == end).then_some(()));
    proxy.set(Fault::Drop);
    // b is retired while cut off: tombstones no longer wait for it.
    let mut leader = leader;
    stop(&mut leader);
    retire_follower(&leader_dir, "b");
    let leader = ServerProcess::start_on(&leader_dir, addr, grpc, &flags(&[]));
    delete_victim_and_churn(addr);
    // A pass that starts after every write above drops the victim's tombstone.
    let leader = restart_and_clean(leader, &leader_dir);
    // b reconnects, never restarted: it must cut even what it was told is committed.
    proxy.set(Fault::Pass);
    let end = stats(addr)["last_offset"].clone();
    poll_until("b to copy the log afresh and catch up", || (stats(b.addr)["last_offset"] == end).then_some(()));
    assert_eq!(LineClient::connect(b.addr).unwrap().request(b"GET victim").unwrap(), b"NOT_FOUND");
    assert!(leader.stderr().contains("missed deletions"), "{}", leader.stderr());
    assert!(!b.stderr().contains("refusing to truncate committed records"), "{}", b.stderr());
}

/// What a data dir's `log/HORIZON` says: its log may lack tombstones below it (0: absent).
fn tombstones_dropped_below(data_dir: &std::path::Path) -> u64 {
    match std::fs::read_to_string(data_dir.join("log/HORIZON")) {
        Ok(text) => text.lines().nth(1).and_then(|l| l.parse().ok()).unwrap_or_else(|| panic!("HORIZON: {text:?}")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => panic!("reading HORIZON: {e}"),
    }
}

/// A node `copy` whose cleaner never runs, with `extra`.
fn without_cleaner<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    flags(&[&["--node-id", "copy", "--cleanup", "none"][..], extra].concat())
}

#[test]
fn a_fresh_copy_of_a_cleaned_log_records_the_leaders_tombstone_horizon() {
    let dir = TempDir::new().unwrap();
    let mut leader = ServerProcess::start(&dir.path().join("leader"), &flags(&[]));
    let mut client = LineClient::connect(leader.addr).unwrap();
    write_churn(&mut client, 3500);
    wait_cleaned(leader.addr, "the leader");
    let dropped_below = tombstones_dropped_below(&leader.data_dir);
    assert!(dropped_below > 0, "the leader's cleaner was let drop tombstones");
    // The copy's own cleaner is off: only what the leader ships can raise its horizon.
    let grpc = leader.grpc.to_string();
    let mut copy = ServerProcess::start(&dir.path().join("copy"), &flags(&["--cleanup", "none", "--follow", &grpc]));
    let end = stats(leader.addr)["last_offset"].clone();
    poll_until("the copy to catch up", || (stats(copy.addr)["last_offset"] == end).then_some(()));
    let copied = tombstones_dropped_below(&copy.data_dir);
    assert!(copied >= dropped_below, "the copy records the leader's horizon {dropped_below}, not {copied}");
    stop(&mut copy);
    stop(&mut leader);
}

#[test]
fn a_copy_of_a_cleaned_log_that_leads_has_a_returning_replica_that_missed_deletions_copy_afresh() {
    let dir = TempDir::new().unwrap();
    let leader_dir = dir.path().join("leader");
    let leader = ServerProcess::start(&leader_dir, &flags(&[]));
    let (addr, grpc) = (leader.addr, leader.grpc);
    let grpc_text = grpc.to_string();
    let mut b = ServerProcess::start(&dir.path().join("b"), &flags(&["--node-id", "b", "--follow", &grpc_text]));
    let mut client = LineClient::connect(addr).unwrap();
    assert_eq!(client.request(b"SET victim old").unwrap(), b"OK");
    // Not the epoch's last record, which compaction keeps (with its tombstone).
    assert_eq!(client.request(b"SET filler 1").unwrap(), b"OK");
    let end = stats(addr)["last_offset"].clone();
    poll_until("b to copy the victim", || (stats(b.addr)["last_offset"] == end).then_some(()));
    stop(&mut b);
    // b is retired, so tombstones no longer wait for it.
    let mut leader = leader;
    stop(&mut leader);
    retire_follower(&leader_dir, "b");
    let leader = ServerProcess::start_on(&leader_dir, addr, grpc, &flags(&[]));
    delete_victim_and_churn(addr);
    // A pass that starts after every write above drops the victim's tombstone.
    let mut leader = restart_and_clean(leader, &leader_dir);
    // A new copy, whose own cleaner never runs: only what the leader ships can raise its
    // horizon (a pass of its own, leading with no follower known, would record one too).
    let copy_dir = dir.path().join("copy");
    let mut copy = ServerProcess::start(&copy_dir, &without_cleaner(&["--follow", &grpc_text]));
    let end = stats(addr)["last_offset"].clone();
    poll_until("the copy to catch up", || (stats(copy.addr)["last_offset"] == end).then_some(()));
    assert!(tombstones_dropped_below(&copy_dir) >= tombstones_dropped_below(&leader_dir));
    stop(&mut copy);
    stop(&mut leader);
    // The old leader is gone and the copy takes over. A manual copy refuses to lead (cluster
    // mode promotes one by itself), so the operator's promotion is done by hand: its log-id
    // file now says it began the log.
    let log_id = std::fs::read_to_string(copy_dir.join("log-id")).unwrap();
    assert!(log_id.contains("origin=copied"), "{log_id}");
    std::fs::write(copy_dir.join("log-id"), log_id.replace("origin=copied", "origin=began")).unwrap();
    let copy = ServerProcess::start(&copy_dir, &without_cleaner(&[]));
    // b comes back with its old copy: the victim's SET and none of what deleted it.
    let copy_grpc = copy.grpc.to_string();
    let b = ServerProcess::start(&dir.path().join("b"), &flags(&["--node-id", "b", "--follow", &copy_grpc]));
    let end = stats(copy.addr)["last_offset"].clone();
    poll_until("b to catch up with the copy", || (stats(b.addr)["last_offset"] == end).then_some(()));
    assert_eq!(LineClient::connect(b.addr).unwrap().request(b"GET victim").unwrap(), b"NOT_FOUND");
    assert!(copy.stderr().contains("missed deletions"), "{}", copy.stderr());
}
