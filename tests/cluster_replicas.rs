//! Cluster mode's replica placement over time: a replica whose node stays gone for
//! `--replace-dead-after` is re-made on a live node that held no copy, which copies the
//! log, joins the in-sync replicas, and ends byte-identical to the leader.

mod common;

use std::collections::HashMap;

use common::scenario::{Addressing, ProcessCluster};
use common::{LineClient, msglog, poll_until};

fn list(stats: &HashMap<String, String>, key: &str) -> Vec<String> {
    stats.get(key).map_or_else(Vec::new, |v| v.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect())
}

fn set_keys(cluster: &ProcessCluster, node: usize, prefix: &str, count: usize) {
    let mut client = LineClient::connect(cluster.nodes[node].addr).expect("connect");
    for i in 0..count {
        let reply = client.request(format!("SET {prefix}{i} value-{i}").as_bytes()).expect("SET");
        assert_eq!(reply, b"OK", "SET {prefix}{i}");
    }
}

#[test]
fn a_replica_gone_past_replace_dead_after_is_remade_on_a_node_that_held_no_copy() {
    // Four nodes, three voters, three copies: one node holds nothing until it is needed.
    let mut cluster =
        ProcessCluster::start_cluster_with_args(4, 3, 1, None, Addressing::Shared, &["--replace-dead-after", "2s"]);
    let leader = cluster.wait_for_leader(&[0, 1, 2, 3]);
    let replicas = list(&cluster.stats(leader), "replicas");
    assert_eq!(replicas.len(), 3, "{replicas:?}");
    let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    let name = |i: usize| names[i].clone();
    let spare = (0..4).find(|&i| !replicas.contains(&name(i))).expect("a node without a copy");
    let victim = (0..4).find(|&i| i != leader && replicas.contains(&name(i))).expect("a follower replica");
    set_keys(&cluster, leader, "before-", 200);
    assert_eq!(cluster.stats(spare)["records"], "0", "the spare holds no copy yet");
    // The spare restarts: its log is still empty, though it has seen the cluster's epochs.
    cluster.stop(spare);
    cluster.relaunch(spare);
    poll_until("the restarted spare to know the leader", || {
        (cluster.stats(spare).get("leader") == Some(&name(leader))).then_some(())
    });
    // Tailing it would print nothing, or an old copy: it refuses and names the leader.
    let spare_grpc = cluster.process(spare).grpc.to_string();
    let tail = msglog().args(["tail", "--from", &spare_grpc, "--no-follow"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&tail.stderr);
    assert!(!tail.status.success() && tail.stdout.is_empty(), "{stderr}");
    let leader_grpc = cluster.process(leader).grpc.to_string();
    assert!(stderr.contains("not one of the partition's replicas") && stderr.contains(&leader_grpc), "{stderr}");

    cluster.kill(victim);
    let (spare_name, victim_name) = (name(spare), name(victim));
    poll_until("the spare to replace the dead replica and join the ISR", || {
        let stats = cluster.stats(leader);
        let (replicas, isr) = (list(&stats, "replicas"), list(&stats, "isr"));
        (replicas.contains(&spare_name) && !replicas.contains(&victim_name) && isr.contains(&spare_name)).then_some(())
    });
    set_keys(&cluster, leader, "after-", 100);
    cluster.wait_converged(leader);
    let (on_leader, on_spare) = (cluster.stats(leader), cluster.stats(spare));
    assert_eq!(on_spare["ids"], on_leader["ids"], "the spare holds every ID");
    assert_eq!(on_spare["ids"], "300");

    // The dead node returns: it is a member again, not a replica.
    cluster.relaunch(victim);
    poll_until("the returned node to follow the leader", || {
        (cluster.stats(victim).get("leader") == Some(&name(leader))).then_some(())
    });
    assert!(!list(&cluster.stats(leader), "replicas").contains(&victim_name));
    cluster.stop(victim);
    let digests = cluster.stop_all_and_digest();
    assert_eq!(digests.len(), 3);
    assert!(digests.iter().all(|(_, d)| *d == digests[0].1), "the new replica's log is the leader's: {digests:?}");
}

/// `msglog serve` with `args` (after a three-voter `--cluster`) fails; its stderr.
fn refused(args: &[&str]) -> String {
    let out = msglog()
        .args(["serve", "--node-id", "a", "--cluster", "a=127.0.0.1:1,b=127.0.0.1:2,c=127.0.0.1:3"])
        .args(args)
        .output()
        .expect("run msglog");
    assert!(!out.status.success(), "{args:?} accepted");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn replace_dead_after_refuses_a_delay_that_would_copy_a_log_on_every_restart() {
    let err = refused(&["--replace-dead-after", "200ms"]);
    assert!(err.contains("--replace-dead-after") && err.contains("at least 1s, or never"), "{err}");
    let err = refused(&["--replace-dead-after", "1s", "--session-timeout", "3s"]);
    assert!(err.contains("is not longer than --session-timeout"), "{err}");
}

#[test]
fn a_min_insync_below_what_the_tolerance_promises_is_refused() {
    let err = refused(&["--tolerance", "2", "--min-insync", "2"]);
    assert!(err.contains("--min-insync 2 breaks --tolerance 2"), "{err}");
}
