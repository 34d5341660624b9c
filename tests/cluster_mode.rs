//! Cluster mode against real `msglog serve --cluster` processes: the nodes elect a leader
//! through the metadata quorum and replace it on their own when it dies, pauses or
//! restarts, and the history checker confirms that no acknowledged write is lost and every
//! read is linearizable; afterwards the replicas' logs are byte-identical.
//!
//! Seeded and bounded like tests/scenarios.rs: `MSGLOG_SCENARIO_ROUNDS` repeats each
//! scenario with the next seeds from `MSGLOG_SCENARIO_SEED` (docs/RELIABILITY.md has the soak).

mod common;

use std::sync::Arc;

use common::history::History;
use common::netns::in_namespace;
use common::rounds::{PHASE_WRITES, await_acked_writes, first_seed, for_each_seed, refused_writes};
use common::scenario::{Addressing, ProcessCluster, Workload, WorkloadConfig, final_reads};
use common::{LineClient, poll_until};

/// Waits until every running node holds `leader`'s log and the ISR lists all of them
/// (the clients have stopped).
fn wait_all_in_sync(cluster: &ProcessCluster, leader: usize) {
    wait_all_in_isr(cluster, leader);
    cluster.wait_converged(leader);
}

/// Waits until the ISR lists every running node and each holds what `leader` held when
/// the wait began (the clients are still writing).
fn wait_all_caught_up(cluster: &ProcessCluster, leader: usize) {
    wait_all_in_isr(cluster, leader);
    cluster.wait_caught_up(leader);
}

fn wait_all_in_isr(cluster: &ProcessCluster, leader: usize) {
    let running: Vec<usize> = (0..cluster.nodes.len()).filter(|&i| cluster.is_running(i)).collect();
    poll_until("every running node back in the ISR", || {
        let isr = cluster.isr(leader);
        running.iter().all(|&i| isr.contains(&cluster.nodes[i].name)).then_some(())
    });
}

/// Stops the clients, lets every node catch up, reads every key, checks the history and
/// compares the logs.
fn finish(history: Arc<History>, workloads: Vec<(Workload, WorkloadConfig)>, cluster: ProcessCluster, leader: usize) {
    finish_reading(history, workloads, &[], cluster, leader);
}

/// [`finish`], also reading back the keys of workloads that were stopped earlier.
fn finish_reading(
    history: Arc<History>,
    workloads: Vec<(Workload, WorkloadConfig)>,
    stopped: &[WorkloadConfig],
    cluster: ProcessCluster,
    leader: usize,
) {
    let configs: Vec<WorkloadConfig> = workloads.iter().map(|(_, c)| *c).chain(stopped.iter().copied()).collect();
    for (workload, _) in workloads {
        workload.stop();
    }
    wait_all_in_sync(&cluster, leader);
    for config in &configs {
        final_reads(&history, cluster.nodes[leader].addr, config);
    }
    let digests = cluster.stop_all_and_digest();
    common::scenario::assert_history_is_valid(&history);
    assert!(digests.iter().all(|(_, d)| *d == digests[0].1), "replicas diverged: {digests:?}");
}

#[test]
fn three_nodes_form_a_cluster_elect_one_leader_and_replicate_to_all() {
    let cluster = ProcessCluster::start_cluster(3, 3, 1, Addressing::Shared);
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let stats = cluster.stats(leader);
    assert_eq!(stats["role"], "leader");
    assert!(stats.get("cluster").is_some_and(|id| id != "forming"), "STATS names the cluster: {stats:?}");
    let mut client = LineClient::connect(cluster.nodes[leader].addr).expect("connect");
    assert_eq!(client.request(b"SET greeting hello").expect("SET"), b"OK");
    wait_all_in_sync(&cluster, leader);
    // A follower learns the high watermark from the leader's next message after the acks.
    poll_until("every node to know the write is committed", || {
        (0..3).all(|i| cluster.stats(i).get("hw").map(String::as_str) == Some("1")).then_some(())
    });
    for i in 0..3 {
        let stats = cluster.stats(i);
        assert_eq!(stats["epoch"], cluster.stats(leader)["epoch"], "{}: one epoch everywhere", cluster.nodes[i].name);
        assert_eq!(stats["partitions"], "1", "{stats:?}");
        let led = if i == leader { "1" } else { "0" };
        assert_eq!(stats["partitions_led"], led, "{}: {stats:?}", cluster.nodes[i].name);
    }
    let digests = cluster.stop_all_and_digest();
    assert!(digests.iter().all(|(_, d)| *d == digests[0].1), "replicas diverged: {digests:?}");
}

#[test]
fn a_new_leader_below_min_insync_answers_reads_of_what_its_predecessor_committed() {
    // Every write on all three nodes (tolerance 2): once the leader dies the ISR stays below
    // min-insync (no spare to re-make a replica on), so the new leader's own count of what
    // is replicated cannot move; what the old leader committed must read back all the same.
    let mut cluster = ProcessCluster::start_cluster(3, 3, 2, Addressing::Shared);
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let mut client = LineClient::connect(cluster.nodes[leader].addr).expect("connect");
    for k in 0..20 {
        assert_eq!(client.request(format!("SET id-{k} message-{k}").as_bytes()).expect("SET"), b"OK");
    }
    poll_until("every node to know the 20 writes are committed", || {
        (0..3).all(|i| cluster.stats(i).get("hw").map(String::as_str) == Some("20")).then_some(())
    });
    cluster.kill(leader);
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let new = cluster.wait_for_leader(&survivors);
    let mut reader = LineClient::connect(cluster.nodes[new].addr).expect("connect");
    for k in 0..20 {
        let reply = reader.request(format!("GET id-{k}").as_bytes()).expect("GET");
        assert_eq!(String::from_utf8_lossy(&reply), format!("message-{k}"), "GET id-{k} on the new leader");
    }
    let refused = reader.request(b"SET more writes").expect("SET");
    assert!(refused.starts_with(b"ERR not enough replicas"), "{}", String::from_utf8_lossy(&refused));
}

#[test]
fn killing_the_leader_under_load_fails_over_by_itself_and_loses_no_acknowledged_write() {
    for_each_seed("kill the leader", |seed| {
        let mut cluster = ProcessCluster::start_cluster(3, 3, 1, Addressing::Shared);
        let history = Arc::new(History::new());
        let old = cluster.wait_for_leader(&[0, 1, 2]);
        let config = WorkloadConfig { seed, ..WorkloadConfig::default() };
        let load = Workload::start(Arc::clone(&history), cluster.leader_target(), config);
        await_acked_writes(&history, PHASE_WRITES);
        cluster.kill(old);
        let others: Vec<usize> = (0..3).filter(|&i| i != old).collect();
        let leader = cluster.wait_for_leader(&others);
        cluster.target(leader);
        await_acked_writes(&history, PHASE_WRITES);
        // The old leader comes back as a follower of the new one.
        cluster.relaunch(old);
        assert_eq!(cluster.wait_for_leader(&[0, 1, 2]), leader, "a returning node does not take over");
        await_acked_writes(&history, PHASE_WRITES);
        finish(history, vec![(load, config)], cluster, leader);
    });
}

#[test]
fn a_paused_leader_that_wakes_after_being_replaced_acknowledges_nothing_lost() {
    for_each_seed("pause the leader", |seed| {
        let cluster = ProcessCluster::start_cluster(3, 3, 1, Addressing::Shared);
        let history = Arc::new(History::new());
        let old = cluster.wait_for_leader(&[0, 1, 2]);
        // These clients stay on the old leader throughout: what it answers after it wakes
        // is judged with everything else.
        let stuck = WorkloadConfig { prefix: "s", seed, clients: 2, ..WorkloadConfig::default() };
        let stuck_target = Arc::new(std::sync::RwLock::new(cluster.nodes[old].addr));
        let stuck_load = Workload::start(Arc::clone(&history), stuck_target, stuck);
        let moving = WorkloadConfig { prefix: "m", seed: seed + 500, ..WorkloadConfig::default() };
        let moving_load = Workload::start(Arc::clone(&history), cluster.leader_target(), moving);
        await_acked_writes(&history, PHASE_WRITES);
        cluster.pause(old);
        let others: Vec<usize> = (0..3).filter(|&i| i != old).collect();
        let leader = cluster.wait_for_leader(&others);
        cluster.target(leader);
        await_acked_writes(&history, PHASE_WRITES);
        cluster.resume(old);
        poll_until("the old leader to follow the new one", || {
            (cluster.stats(old).get("leader") == Some(&cluster.nodes[leader].name)).then_some(())
        });
        await_acked_writes(&history, PHASE_WRITES);
        finish(history, vec![(stuck_load, stuck), (moving_load, moving)], cluster, leader);
    });
}

/// The leader's metadata lease lapses while both other nodes are frozen: it stops serving,
/// and once they wake it may lead again under the same epoch. The fetch streams its
/// followers kept open through that must not go on unheard (their acknowledgements belong
/// to the earlier leadership), or no write is acknowledged again.
#[test]
fn a_leader_whose_lease_lapses_and_comes_back_goes_on_acknowledging_writes() {
    for_each_seed("lease lapse", |seed| {
        let cluster = ProcessCluster::start_cluster(3, 3, 1, Addressing::Shared);
        let history = Arc::new(History::new());
        let leader = cluster.wait_for_leader(&[0, 1, 2]);
        let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
        let config = WorkloadConfig { seed, ..WorkloadConfig::default() };
        let load = Workload::start(Arc::clone(&history), cluster.leader_target(), config);
        await_acked_writes(&history, PHASE_WRITES);
        for &i in &others {
            cluster.pause(i);
        }
        poll_until("the leader to stop serving once no quorum answers it", || {
            (cluster.stats(leader).get("leader").map(String::as_str) != Some("self")).then_some(())
        });
        for &i in &others {
            cluster.resume(i);
        }
        let now = cluster.wait_for_leader(&[0, 1, 2]);
        cluster.target(now);
        await_acked_writes(&history, PHASE_WRITES);
        finish(history, vec![(load, config)], cluster, now);
    });
}

/// The epoch collision of manual failover, in cluster mode: the old leader restarts while
/// its replacement leads, and must come back as a follower under the replacement's epoch.
#[test]
fn a_restarted_old_leader_never_leads_under_an_epoch_another_leader_used() {
    let mut cluster = ProcessCluster::start_cluster(3, 3, 0, Addressing::Shared);
    let history = Arc::new(History::new());
    let old = cluster.wait_for_leader(&[0, 1, 2]);
    let config = WorkloadConfig { seed: first_seed(), ..WorkloadConfig::default() };
    let load = Workload::start(Arc::clone(&history), cluster.leader_target(), config);
    await_acked_writes(&history, PHASE_WRITES);
    let old_epoch: u64 = cluster.stats(old)["epoch"].parse().expect("epoch");
    cluster.kill(old);
    let others: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    let leader = cluster.wait_for_leader(&others);
    cluster.target(leader);
    let new_epoch: u64 = cluster.stats(leader)["epoch"].parse().expect("epoch");
    assert!(new_epoch > old_epoch, "the new leader's epoch {new_epoch} is above {old_epoch}");
    await_acked_writes(&history, PHASE_WRITES);
    cluster.relaunch(old);
    assert_eq!(cluster.wait_for_leader(&[0, 1, 2]), leader);
    assert_eq!(cluster.stats(old)["epoch"], cluster.stats(leader)["epoch"]);
    await_acked_writes(&history, PHASE_WRITES);
    finish(history, vec![(load, config)], cluster, leader);
}

/// A rolling restart, as an operator upgrades a cluster: every node in turn gets SIGTERM
/// (the leader hands its leadership away first) and comes back, under load.
#[test]
fn a_rolling_restart_under_load_loses_no_acknowledged_write() {
    for_each_seed("rolling restart", |seed| {
        let mut cluster = ProcessCluster::start_cluster(3, 3, 1, Addressing::Shared);
        let history = Arc::new(History::new());
        let config = WorkloadConfig { seed, ..WorkloadConfig::default() };
        let load = Workload::start(Arc::clone(&history), cluster.leader_target(), config);
        await_acked_writes(&history, PHASE_WRITES);
        for i in 0..3 {
            // The clients stay on a node that keeps running; it forwards when it does not lead.
            cluster.target((i + 1) % 3);
            cluster.stop(i);
            let others: Vec<usize> = (0..3).filter(|&j| j != i).collect();
            cluster.wait_for_leader(&others);
            await_acked_writes(&history, PHASE_WRITES / 3);
            cluster.relaunch(i);
            let leader = cluster.wait_for_leader(&[0, 1, 2]);
            wait_all_caught_up(&cluster, leader);
        }
        let leader = cluster.wait_for_leader(&[0, 1, 2]);
        finish(history, vec![(load, config)], cluster, leader);
    });
}

/// A leader cut off from every other node (clients can still reach it; its replies are
/// dropped too) loses its lease and is fenced; the others elect a new leader and go on. No
/// write the isolated node answers `OK` is lost.
#[test]
fn an_isolated_leader_is_replaced_and_what_it_acknowledged_survives() {
    in_namespace(|ns| {
        for_each_seed("isolate the leader", |seed| {
            let cluster = ProcessCluster::start_cluster(3, 3, 1, Addressing::Distinct);
            let history = Arc::new(History::new());
            let old = cluster.wait_for_leader(&[0, 1, 2]);
            let config = WorkloadConfig { seed, ..WorkloadConfig::default() };
            let load = Workload::start(Arc::clone(&history), cluster.leader_target(), config);
            await_acked_writes(&history, PHASE_WRITES);
            ns.isolate(cluster.nodes[old].ip);
            let others: Vec<usize> = (0..3).filter(|&i| i != old).collect();
            let leader = cluster.wait_for_leader(&others);
            cluster.target(leader);
            await_acked_writes(&history, PHASE_WRITES);
            ns.heal();
            poll_until("the old leader to follow the new one", || {
                (cluster.stats(old).get("leader") == Some(&cluster.nodes[leader].name)).then_some(())
            });
            await_acked_writes(&history, PHASE_WRITES);
            finish(history, vec![(load, config)], cluster, leader);
        });
    });
}

/// The stale-log sequence of manual failover, in cluster mode: a follower dies, the leader
/// is cut off from the other one and appends writes it cannot get acknowledged, then dies
/// too. Manual promotion picked the longest log and lost acknowledged writes; here the
/// quorum only ever names an in-sync replica, whichever log is longest.
#[test]
fn a_leader_cut_off_then_killed_never_hands_over_to_a_replica_missing_acknowledged_writes() {
    in_namespace(|ns| {
        for_each_seed("stale log", |seed| {
            let mut cluster = ProcessCluster::start_cluster(3, 3, 1, Addressing::Distinct);
            let history = Arc::new(History::new());
            let leader = cluster.wait_for_leader(&[0, 1, 2]);
            let (f1, f2) = ((leader + 1) % 3, (leader + 2) % 3);
            let busy = WorkloadConfig { clients: 8, seed, read_percent: 20, ..WorkloadConfig::default() };
            let load = Workload::start(Arc::clone(&history), cluster.leader_target(), busy);
            await_acked_writes(&history, PHASE_WRITES);
            cluster.kill(f2);
            await_acked_writes(&history, PHASE_WRITES);
            ns.partition(cluster.nodes[leader].ip, cluster.nodes[f1].ip);
            let refused = refused_writes(&history);
            poll_until("writes the cut-off leader cannot get acknowledged", || {
                (refused_writes(&history) >= refused + 8).then_some(())
            });
            load.stop();
            cluster.kill(leader);
            ns.heal();
            cluster.relaunch(f2);
            cluster.relaunch(leader);
            let now = cluster.wait_for_leader(&[0, 1, 2]);
            cluster.target(now);
            let fresh = WorkloadConfig { prefix: "j", seed: seed + 1000, ..WorkloadConfig::default() };
            let load = Workload::start(Arc::clone(&history), cluster.leader_target(), fresh);
            await_acked_writes(&history, PHASE_WRITES);
            finish_reading(history, vec![(load, fresh)], &[busy], cluster, now);
        });
    });
}

/// Every node holds every record (`--replication-factor` = nodes), so losing `dead` of them,
/// the leader first, leaves an ISR of at least min-insync: writes go on and nothing
/// acknowledged is lost.
fn kill_the_leader_and_more(n: usize, voters: usize, tolerance: u32, dead: usize, name: &str) {
    for_each_seed(name, |seed| {
        let mut cluster = ProcessCluster::start_cluster_with_copies(n, voters, tolerance, Some(n), Addressing::Shared);
        let history = Arc::new(History::new());
        let all: Vec<usize> = (0..n).collect();
        let old = cluster.wait_for_leader(&all);
        let config = WorkloadConfig { seed, ..WorkloadConfig::default() };
        let load = Workload::start(Arc::clone(&history), cluster.leader_target(), config);
        await_acked_writes(&history, PHASE_WRITES);
        // The leader, then followers after it in id order.
        let killed: Vec<usize> = (0..dead).map(|k| (old + k) % n).collect();
        for &i in &killed {
            cluster.kill(i);
        }
        let others: Vec<usize> = all.iter().copied().filter(|i| !killed.contains(i)).collect();
        let leader = cluster.wait_for_leader(&others);
        cluster.target(leader);
        await_acked_writes(&history, PHASE_WRITES);
        finish(history, vec![(load, config)], cluster, leader);
    });
}

#[test]
fn killing_the_leader_of_four_at_tolerance_two_loses_no_acknowledged_write() {
    kill_the_leader_and_more(4, 3, 2, 1, "kill 1 of 4 at tolerance 2");
}

#[test]
fn killing_the_leader_and_a_follower_of_six_at_tolerance_three_loses_no_acknowledged_write() {
    kill_the_leader_and_more(6, 5, 3, 2, "kill 2 of 6 at tolerance 3");
}

/// No dirty reads from a zombie leader: cut off from every other node it may still append
/// writes it cannot replicate (answered with an error), and a GET that would show one
/// waits for the ISR's acknowledgements like the write did, and fails with it; otherwise,
/// once a new leader takes over and those writes are gone, a later read would see an
/// older value.
#[test]
fn reads_never_see_a_write_that_a_failover_loses() {
    in_namespace(|ns| {
        for_each_seed("dirty reads on an isolated leader", |seed| {
            let mut cluster = ProcessCluster::start_cluster(3, 3, 1, Addressing::Distinct);
            let history = Arc::new(History::new());
            let old = cluster.wait_for_leader(&[0, 1, 2]);
            let busy = WorkloadConfig { clients: 16, seed, read_percent: 50, ..WorkloadConfig::default() };
            let load = Workload::start(Arc::clone(&history), cluster.leader_target(), busy);
            await_acked_writes(&history, PHASE_WRITES);
            ns.isolate(cluster.nodes[old].ip);
            // The clients stay on the isolated leader until the others have replaced it.
            let others: Vec<usize> = (0..3).filter(|&i| i != old).collect();
            let leader = cluster.wait_for_leader(&others);
            cluster.kill(old);
            ns.heal();
            cluster.target(leader);
            await_acked_writes(&history, PHASE_WRITES);
            finish(history, vec![(load, busy)], cluster, leader);
        });
    });
}

/// With two of three voters gone, no leader can be elected: the survivor refuses writes
/// and reads with an error that says the cluster has no quorum, not that an election is
/// merely under way.
#[test]
fn with_a_majority_of_voters_down_requests_are_refused_saying_there_is_no_quorum() {
    let mut cluster = ProcessCluster::start_cluster(3, 3, 1, Addressing::Shared);
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let mut client = LineClient::connect(cluster.nodes[leader].addr).expect("connect");
    assert_eq!(client.request(b"SET before-outage 1").expect("SET"), b"OK");
    let survivor = (leader + 1) % 3;
    for i in (0..3).filter(|&i| i != survivor) {
        cluster.kill(i);
    }
    let mut client = LineClient::connect(cluster.nodes[survivor].addr).expect("connect");
    for request in [&b"SET during-outage 2"[..], b"GET before-outage"] {
        let reply = String::from_utf8(client.request(request).expect("a reply")).expect("text");
        assert!(reply.starts_with("ERR") && reply.contains("no quorum"), "{reply}");
        assert!(reply.contains("was not applied"), "{reply}");
    }
}
