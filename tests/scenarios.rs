//! Fault scenarios against today's replication, judged by the history checker: clients
//! write unique values and read them back while the test kills, pauses and partitions
//! nodes and fails over by the README's manual procedure; afterwards every acknowledged
//! write must be readable, the history linearizable, and the replicas' logs equal.
//!
//! Each scenario is seeded and bounded. `MSGLOG_SCENARIO_ROUNDS` (default 1) repeats each
//! with the next seeds, from `MSGLOG_SCENARIO_SEED` (default 1): the soak in
//! docs/RELIABILITY.md runs them with more rounds. Scenarios that only cluster mode can make
//! pass are `#[ignore]`d with the reason; `cargo test --release --test scenarios --
//! --ignored` shows them failing.

mod common;

use std::sync::Arc;

use common::history::{History, Outcome};
use common::netns::in_namespace;
use common::poll_until;
use common::rounds::{PHASE_WRITES, await_acked_writes, first_seed, for_each_seed, refused_writes};
use common::scenario::{Addressing, ProcessCluster, Workload, WorkloadConfig, final_reads};

fn workload(history: &Arc<History>, cluster: &ProcessCluster, seed: u64) -> Workload {
    Workload::start(Arc::clone(history), cluster.leader_target(), WorkloadConfig { seed, ..WorkloadConfig::default() })
}

/// Operations answered with an error or given up on (not those still in flight).
fn gave_up(history: &History) -> usize {
    history
        .ops()
        .iter()
        .filter(|op| matches!(op.outcome, Outcome::WriteFailed(_) | Outcome::WriteUnknown | Outcome::ReadFailed(_)))
        .count()
}

/// Ends a scenario: stop the clients, let the replicas catch up with `leader`, read every
/// key from it, check the history, stop everything and compare the logs.
fn finish(history: Arc<History>, workload: Workload, cluster: ProcessCluster, leader: usize) {
    workload.stop();
    cluster.wait_converged(leader);
    final_reads(&history, cluster.nodes[leader].addr, &WorkloadConfig::default());
    let digests = cluster.stop_all_and_digest();
    common::scenario::assert_history_is_valid(&history);
    let first = &digests[0].1;
    assert!(digests.iter().all(|(_, d)| d == first), "replicas diverged: {digests:?}");
}

#[test]
fn killing_the_leader_under_load_and_promoting_by_the_readme_loses_no_acknowledged_write() {
    for_each_seed("kill the leader", |seed| {
        let mut cluster = ProcessCluster::start(3, 1, Addressing::Shared);
        let history = Arc::new(History::new());
        let load = workload(&history, &cluster, seed);
        await_acked_writes(&history, PHASE_WRITES);
        cluster.kill(0);
        let leader = cluster.promote_most_up_to_date(&[1, 2], &[0]);
        await_acked_writes(&history, PHASE_WRITES);
        finish(history, load, cluster, leader);
    });
}

#[test]
fn a_paused_follower_does_not_stop_writes_at_tolerance_one_and_catches_up() {
    for_each_seed("pause a follower", |seed| {
        let cluster = ProcessCluster::start(3, 1, Addressing::Shared);
        let history = Arc::new(History::new());
        let load = workload(&history, &cluster, seed);
        await_acked_writes(&history, PHASE_WRITES);
        cluster.pause(1);
        // The other follower acknowledges alone: writes go on while n1 is frozen.
        await_acked_writes(&history, PHASE_WRITES);
        cluster.resume(1);
        await_acked_writes(&history, PHASE_WRITES);
        finish(history, load, cluster, 0);
    });
}

#[test]
fn a_paused_leader_that_resumes_loses_nothing_and_answers_again() {
    for_each_seed("pause the leader", |seed| {
        let cluster = ProcessCluster::start(3, 1, Addressing::Shared);
        let history = Arc::new(History::new());
        let load = workload(&history, &cluster, seed);
        await_acked_writes(&history, PHASE_WRITES);
        let unanswered = gave_up(&history);
        cluster.pause(0);
        // A zombie leader: clients time out on it; once one has, wake it.
        poll_until("a client to give up on the paused leader", || (gave_up(&history) > unanswered).then_some(()));
        cluster.resume(0);
        await_acked_writes(&history, PHASE_WRITES);
        finish(history, load, cluster, 0);
    });
}

#[test]
fn killing_the_leader_of_four_at_tolerance_two_loses_no_acknowledged_write() {
    for_each_seed("kill 1 of 4 at tolerance 2", |seed| {
        let mut cluster = ProcessCluster::start(4, 2, Addressing::Shared);
        let history = Arc::new(History::new());
        let load = workload(&history, &cluster, seed);
        await_acked_writes(&history, PHASE_WRITES);
        cluster.kill(0);
        let leader = cluster.promote_most_up_to_date(&[1, 2, 3], &[]);
        await_acked_writes(&history, PHASE_WRITES);
        finish(history, load, cluster, leader);
    });
}

#[test]
fn killing_the_leader_and_a_follower_of_six_at_tolerance_three_loses_no_acknowledged_write() {
    for_each_seed("kill 2 of 6 at tolerance 3", |seed| {
        let mut cluster = ProcessCluster::start(6, 3, Addressing::Shared);
        let history = Arc::new(History::new());
        let load = workload(&history, &cluster, seed);
        await_acked_writes(&history, PHASE_WRITES);
        cluster.kill(1);
        cluster.kill(0);
        let leader = cluster.promote_most_up_to_date(&[2, 3, 4, 5], &[]);
        await_acked_writes(&history, PHASE_WRITES);
        finish(history, load, cluster, leader);
    });
}

/// A stale log promoted: the README's "highest `last_offset`" counts records the old leader
/// appended but never got acknowledged, so the old leader, back after a newer leader took
/// acknowledged writes, wins the comparison; it begins the same epoch number as the leader
/// it replaces, and the follower that holds the acknowledged writes cuts them away as a
/// divergent tail.
#[test]
#[ignore = "manual failover can promote a stale log and lose acknowledged writes; only cluster \
            mode's quorum-chosen leaders and epochs can close it"]
fn promoting_the_highest_last_offset_never_loses_acknowledged_writes() {
    in_namespace(|ns| {
        for_each_seed("promote a stale log", |seed| {
            let mut cluster = ProcessCluster::start(3, 1, Addressing::Distinct);
            let history = Arc::new(History::new());
            // Many clients, so that many writes hang on the lost follower at once.
            let busy = WorkloadConfig { clients: 16, seed, read_percent: 0, ..WorkloadConfig::default() };
            let load = Workload::start(Arc::clone(&history), cluster.leader_target(), busy);
            await_acked_writes(&history, PHASE_WRITES);
            // n2 goes away; n1 alone acknowledges.
            cluster.kill(2);
            await_acked_writes(&history, PHASE_WRITES);
            // n1 is cut off: n0 appends writes it cannot get acknowledged (errors).
            ns.partition(cluster.nodes[0].ip, cluster.nodes[1].ip);
            let refused = refused_writes(&history);
            poll_until("writes the leader appends but cannot replicate", || {
                (refused_writes(&history) >= refused + 64).then_some(())
            });
            load.stop();
            cluster.kill(0);
            ns.heal();
            // Failover to n1 (the only candidate); n2 comes back as its follower and
            // acknowledges a few writes in n1's new epoch.
            let leader = cluster.promote_most_up_to_date(&[1], &[2]);
            assert_eq!(leader, 1);
            // Keys of their own, so that no write from before can stand in for them.
            let fresh = WorkloadConfig { prefix: "j", seed: seed + 1000, ..WorkloadConfig::default() };
            let load = Workload::start(Arc::clone(&history), cluster.leader_target(), fresh);
            await_acked_writes(&history, 10);
            load.stop();
            // n1 dies. n0 comes back and the README's rule picks the higher last_offset of
            // n0 and n2: n0, whose tail was never acknowledged.
            cluster.kill(1);
            cluster.launch(0, Some(1));
            let leader = cluster.promote_most_up_to_date(&[0, 2], &[]);
            cluster.wait_converged(leader);
            final_reads(&history, cluster.nodes[leader].addr, &busy);
            final_reads(&history, cluster.nodes[leader].addr, &fresh);
            let digests = cluster.stop_all_and_digest();
            common::scenario::assert_history_is_valid(&history);
            assert!(digests.iter().all(|(_, d)| *d == digests[0].1), "replicas diverged: {digests:?}");
        });
    });
}

/// Two leaders with one epoch number: the old leader restarted in leader mode begins the
/// epoch its replacement already began, and a follower moved from the replacement to it
/// passes the divergence check with records the old leader never had.
#[test]
#[ignore = "epochs are per node, so two leaders can share one and a follower moved between them \
            diverges silently; cluster mode takes epochs from the metadata quorum"]
fn a_follower_moved_between_two_leaders_never_keeps_records_its_leader_lacks() {
    let mut cluster = ProcessCluster::start(3, 0, Addressing::Shared);
    let history = Arc::new(History::new());
    let load = workload(&history, &cluster, first_seed());
    await_acked_writes(&history, PHASE_WRITES);
    cluster.kill(0);
    // n1 takes over (epoch 2) with n2 following it, and takes writes.
    let leader = cluster.promote_most_up_to_date(&[1, 2], &[]);
    assert_eq!(leader, 1);
    await_acked_writes(&history, PHASE_WRITES);
    load.stop();
    cluster.wait_converged(1);
    // The old leader restarts in leader mode: it, too, begins epoch 2.
    cluster.launch(0, None);
    assert_eq!(cluster.stats(0)["epoch"], cluster.stats(1)["epoch"], "two leaders share an epoch");
    let load = workload(&history, &cluster, first_seed() + 1);
    await_acked_writes(&history, PHASE_WRITES / 3);
    load.stop();
    // n2 is moved to n0: its last record's offset is past n0's end, and n0 answers with
    // its own end of epoch 2, so n2 keeps n1's epoch-2 records below that point.
    cluster.stop(2);
    cluster.launch(2, Some(0));
    cluster.stop(1);
    cluster.wait_converged(0);
    let digests = cluster.stop_all_and_digest();
    assert_eq!(digests[0].1, digests[1].1, "n2's log is not a copy of its leader's: {digests:?}");
}

#[test]
fn a_leader_cut_off_from_one_follower_keeps_acknowledging_and_the_follower_converges_after_healing() {
    in_namespace(|ns| {
        for_each_seed("partition the leader from a follower", |seed| {
            let cluster = ProcessCluster::start(3, 1, Addressing::Distinct);
            let history = Arc::new(History::new());
            let load = workload(&history, &cluster, seed);
            await_acked_writes(&history, PHASE_WRITES);
            ns.partition(cluster.nodes[0].ip, cluster.nodes[1].ip);
            // n2 alone acknowledges while n1 cannot reach the leader.
            await_acked_writes(&history, PHASE_WRITES);
            let n1 = cluster.stats(0).get("follower.n1").cloned().unwrap_or_default();
            assert!(!n1.contains("lag:0"), "n1 kept up through the partition ({n1}): it was not cut off");
            ns.heal();
            await_acked_writes(&history, PHASE_WRITES);
            finish(history, load, cluster, 0);
        });
    });
}

#[test]
fn a_leader_cut_off_from_every_follower_acknowledges_nothing_until_healed() {
    in_namespace(|ns| {
        for_each_seed("isolate the leader", |seed| {
            let cluster = ProcessCluster::start(3, 1, Addressing::Distinct);
            let history = Arc::new(History::new());
            let load = workload(&history, &cluster, seed);
            await_acked_writes(&history, PHASE_WRITES);
            ns.partition(cluster.nodes[0].ip, cluster.nodes[1].ip);
            ns.partition(cluster.nodes[0].ip, cluster.nodes[2].ip);
            // Writes now end in `ERR replication timeout` (maybe applied) or `not enough
            // replicas`; wait for a few, then heal.
            let refused = refused_writes(&history);
            poll_until("writes refused while the leader is isolated", || {
                (refused_writes(&history) >= refused + 8).then_some(())
            });
            ns.heal();
            await_acked_writes(&history, PHASE_WRITES);
            finish(history, load, cluster, 0);
        });
    });
}

/// No dirty reads from a zombie leader: cut off from its followers it still appends writes
/// (answered `ERR replication timeout`), and a GET that would show one waits for the
/// tolerance's acknowledgements like the write did, and fails with it; otherwise, once a
/// follower takes over and those writes are gone, a later read would see an older value.
#[test]
fn reads_never_see_a_write_that_a_failover_loses() {
    in_namespace(|ns| {
        for_each_seed("dirty reads on an isolated leader", |seed| {
            let mut cluster = ProcessCluster::start(3, 1, Addressing::Distinct);
            let history = Arc::new(History::new());
            let busy = WorkloadConfig { clients: 16, seed, read_percent: 50, ..WorkloadConfig::default() };
            let load = Workload::start(Arc::clone(&history), cluster.leader_target(), busy);
            await_acked_writes(&history, PHASE_WRITES);
            ns.partition(cluster.nodes[0].ip, cluster.nodes[1].ip);
            ns.partition(cluster.nodes[0].ip, cluster.nodes[2].ip);
            let refused = refused_writes(&history);
            poll_until("writes the isolated leader cannot replicate", || {
                (refused_writes(&history) >= refused + 32).then_some(())
            });
            cluster.kill(0);
            ns.heal();
            let leader = cluster.promote_most_up_to_date(&[1, 2], &[]);
            await_acked_writes(&history, PHASE_WRITES);
            finish(history, load, cluster, leader);
        });
    });
}
