//! Fault scenarios against manual replication (`--follow`, without `--cluster`), judged
//! by the history checker: clients write unique values and read them back while the test
//! kills, restarts, pauses and partitions nodes; afterwards every acknowledged write must
//! be readable, the history linearizable, and the replicas' logs equal. Failing over to
//! another node is cluster mode's (tests/cluster_mode.rs): here a copy never leads.
//!
//! Each scenario is seeded and bounded. `MSGLOG_SCENARIO_ROUNDS` (default 1) repeats each
//! with the next seeds, from `MSGLOG_SCENARIO_SEED` (default 1): the soak in
//! docs/RELIABILITY.md runs them with more rounds.

mod common;

use std::sync::Arc;

use common::history::{History, Outcome};
use common::netns::in_namespace;
use common::poll_until;
use common::rounds::{PHASE_WRITES, await_acked_writes, for_each_seed, refused_writes};
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

/// Without `--cluster` a failed leader comes back on its own data dir (a copy never
/// leads): nothing it acknowledged is lost, and its followers resume from their logs.
#[test]
fn killing_the_leader_under_load_and_restarting_it_loses_no_acknowledged_write() {
    for_each_seed("kill and restart the leader", |seed| {
        let mut cluster = ProcessCluster::start(3, 1, Addressing::Shared);
        let history = Arc::new(History::new());
        let load = workload(&history, &cluster, seed);
        await_acked_writes(&history, PHASE_WRITES);
        cluster.kill(0);
        cluster.launch(0, None);
        await_acked_writes(&history, PHASE_WRITES);
        finish(history, load, cluster, 0);
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
