use super::*;

fn register(id: &str, incarnation: u64) -> MetaCommand {
    MetaCommand::Register {
        id: id.to_string(),
        grpc_addr: format!("{id}:7100"),
        client_addr: format!("{id}:7000"),
        voter: true,
        incarnation,
        log_epoch: 0,
        log_epochs: Vec::new(),
    }
}

fn fence(id: &str, incarnation: u64) -> MetaCommand {
    MetaCommand::Fence { id: id.to_string(), incarnation, reason: FenceReason::SessionExpired }
}

fn alter_isr(leader: &str, epoch: Epoch, expected: &[&str], isr: &[&str]) -> MetaCommand {
    MetaCommand::AlterIsr { partition: 0, leader: leader.into(), epoch, expected: set(expected), isr: set(isr) }
}

/// Forms a one-partition cluster whose replicas are the first members to register.
fn init(replication_factor: usize, min_insync: usize) -> MetaCommand {
    MetaCommand::Init { cluster_id: "x".into(), replication_factor, min_insync, partitions: 1, voters: Vec::new() }
}

fn set(ids: &[&str]) -> BTreeSet<NodeId> {
    ids.iter().map(|s| s.to_string()).collect()
}

/// A formed cluster of a, b, c (R = 3) where a leads with all three in sync.
fn three() -> Metadata {
    let mut meta = Metadata::default();
    let init = init(3, 2);
    assert_eq!(meta.apply(&init), MetaOutcome::Applied);
    for id in ["a", "b", "c"] {
        assert_eq!(meta.apply(&register(id, 1)), MetaOutcome::Applied);
    }
    let alter = alter_isr("a", 1, &["a"], &["a", "b", "c"]);
    assert_eq!(meta.apply(&alter), MetaOutcome::Applied);
    meta
}

#[test]
fn the_first_replica_to_register_leads_alone_at_epoch_one() {
    let mut meta = Metadata::default();
    assert!(matches!(meta.apply(&register("a", 1)), MetaOutcome::Rejected(_)), "not formed yet");
    meta.apply(&init(2, 2));
    meta.apply(&register("a", 1));
    meta.apply(&register("b", 1));
    meta.apply(&register("c", 1));
    assert_eq!(meta.partitions[0].leader.as_deref(), Some("a"));
    assert_eq!(meta.partitions[0].epoch, 1);
    assert_eq!(meta.partitions[0].isr, set(&["a"]));
    assert_eq!(meta.partitions[0].replicas, ["a", "b"], "c is beyond the replication factor");
}

#[test]
fn a_fenced_leader_is_replaced_from_the_isr_under_a_new_epoch() {
    let mut meta = three();
    assert_eq!(meta.apply(&fence("a", 1)), MetaOutcome::Applied);
    assert_eq!(meta.partitions[0].leader.as_deref(), Some("b"));
    assert_eq!(meta.partitions[0].epoch, 2);
    assert_eq!(meta.partitions[0].isr, set(&["b", "c"]));
    assert_eq!(meta.apply(&fence("a", 1)), MetaOutcome::Unchanged);
}

#[test]
fn a_replica_outside_the_isr_never_becomes_leader() {
    let mut meta = three();
    let shrink = alter_isr("a", 1, &["a", "b", "c"], &["a", "c"]);
    assert_eq!(meta.apply(&shrink), MetaOutcome::Applied);
    meta.apply(&fence("c", 1));
    assert_eq!(meta.partitions[0].isr, set(&["a"]));
    meta.apply(&fence("a", 1));
    assert_eq!(meta.partitions[0].leader, None, "b is out of sync: no unclean election");
    assert_eq!(meta.partitions[0].isr, set(&["a"]), "the last ISR member is kept");
    assert_eq!(meta.partitions[0].epoch, 2, "losing the leader ends its epoch");
    meta.apply(&register("b", 2));
    assert_eq!(meta.partitions[0].leader, None);
    meta.apply(&register("a", 2));
    assert_eq!(meta.partitions[0].leader.as_deref(), Some("a"));
    assert_eq!(meta.partitions[0].epoch, 3);
}

#[test]
fn a_restarted_leader_never_leads_on_under_its_old_epoch() {
    let mut meta = three();
    // a restarts before its session expired: the new process registers.
    meta.apply(&register("a", 2));
    assert_eq!(meta.partitions[0].leader.as_deref(), Some("b"));
    assert_eq!(meta.partitions[0].epoch, 2);
    assert!(!meta.members["a"].fenced);
    assert!(!meta.partitions[0].isr.contains("a"), "a must catch up before it is in sync again");
    // A fence for the old process does not touch the new one.
    assert_eq!(meta.apply(&fence("a", 1)), MetaOutcome::Unchanged);
    assert!(!meta.members["a"].fenced);
}

#[test]
fn a_restarted_sole_isr_member_leads_again_under_a_new_epoch() {
    let mut meta = Metadata::default();
    meta.apply(&init(1, 1));
    meta.apply(&register("a", 1));
    assert_eq!((meta.partitions[0].leader.as_deref(), meta.partitions[0].epoch), (Some("a"), 1));
    meta.apply(&register("a", 2));
    assert_eq!(meta.partitions[0].leader.as_deref(), Some("a"));
    assert!(meta.partitions[0].epoch > 1);
}

#[test]
fn only_the_current_leader_under_its_epoch_alters_the_isr() {
    let mut meta = three();
    meta.apply(&fence("a", 1));
    let stale = alter_isr("a", 1, &["b", "c"], &["a"]);
    assert!(matches!(meta.apply(&stale), MetaOutcome::Rejected(_)));
    let without_leader = alter_isr("b", 2, &["b", "c"], &["c"]);
    assert!(matches!(meta.apply(&without_leader), MetaOutcome::Rejected(_)));
    let fenced = alter_isr("b", 2, &["b", "c"], &["a", "b", "c"]);
    assert!(matches!(meta.apply(&fenced), MetaOutcome::Rejected(_)), "a is fenced");
    let same = alter_isr("b", 2, &["b", "c"], &["b", "c"]);
    assert_eq!(meta.apply(&same), MetaOutcome::Unchanged);
}

#[test]
fn epochs_start_above_every_replica_log() {
    let mut meta = Metadata::default();
    meta.apply(&init(3, 1));
    let mut old = register("a", 1);
    if let MetaCommand::Register { log_epoch, .. } = &mut old {
        *log_epoch = 7;
    }
    meta.apply(&old);
    assert_eq!(meta.partitions[0].epoch, 8);
}

#[test]
fn an_isr_change_based_on_an_isr_that_has_changed_since_is_refused() {
    // a proposes dropping b from {a,b,c}; meanwhile c is fenced and comes back, and a
    // acknowledges writes with {a,b}. The stale change must not leave {a,c}.
    let mut meta = three();
    meta.apply(&fence("c", 1));
    meta.apply(&register("c", 2));
    assert_eq!(meta.partitions[0].isr, set(&["a", "b"]));
    let stale = alter_isr("a", 1, &["a", "b", "c"], &["a", "c"]);
    assert!(matches!(meta.apply(&stale), MetaOutcome::Rejected(_)));
    assert_eq!(meta.partitions[0].isr, set(&["a", "b"]));
}

fn replace(dead: &str, with: &str, expected: &[&str]) -> MetaCommand {
    replace_in(0, dead, with, expected)
}

#[test]
fn a_fenced_replica_out_of_the_isr_is_replaced_by_a_live_member_in_its_place() {
    let mut meta = three();
    meta.apply(&register("d", 1));
    assert_eq!(meta.partitions[0].replicas, ["a", "b", "c"], "d is beyond the replication factor");
    assert!(matches!(meta.apply(&replace("b", "d", &["a", "b", "c"])), MetaOutcome::Rejected(_)), "b is alive");
    meta.apply(&fence("b", 1));
    assert_eq!(meta.partitions[0].isr, set(&["a", "c"]));
    let (leader, epoch) = (meta.partitions[0].leader.clone(), meta.partitions[0].epoch);
    assert_eq!(meta.apply(&replace("b", "d", &["a", "b", "c"])), MetaOutcome::Applied);
    assert_eq!(meta.partitions[0].replicas, ["a", "d", "c"]);
    assert_eq!(meta.partitions[0].isr, set(&["a", "c"]), "d joins the ISR only once its leader sees it caught up");
    assert_eq!((meta.partitions[0].leader.clone(), meta.partitions[0].epoch), (leader, epoch), "no new epoch");
    // b comes back: it is a member again, not a replica.
    meta.apply(&register("b", 2));
    assert_eq!(meta.partitions[0].replicas, ["a", "d", "c"]);
    let stale = replace("b", "d", &["a", "b", "c"]);
    assert!(matches!(meta.apply(&stale), MetaOutcome::Rejected(_)), "based on replicas that changed since");
}

#[test]
fn a_replica_that_may_hold_acknowledged_writes_is_never_replaced() {
    let mut meta = three();
    meta.apply(&register("d", 1));
    // c, then a (the leader) die: b leads alone; then b dies too and stays the last ISR member.
    meta.apply(&fence("c", 1));
    meta.apply(&fence("a", 1));
    meta.apply(&fence("b", 1));
    assert_eq!(meta.partitions[0].isr, set(&["b"]));
    assert!(matches!(meta.apply(&replace("b", "d", &["a", "b", "c"])), MetaOutcome::Rejected(_)), "b holds it all");
    assert_eq!(meta.apply(&replace("c", "d", &["a", "b", "c"])), MetaOutcome::Applied);
    let fenced = replace("a", "c", &["a", "b", "d"]);
    assert!(matches!(meta.apply(&fenced), MetaOutcome::Rejected(_)), "c is fenced, not a live member");
    let replica = replace("a", "d", &["a", "b", "d"]);
    assert!(matches!(meta.apply(&replica), MetaOutcome::Rejected(_)), "d is a replica already");
}

#[test]
fn a_member_holding_an_earlier_copy_never_takes_a_dead_replicas_place() {
    let mut meta = three();
    let mut old = register("d", 1);
    if let MetaCommand::Register { log_epoch, .. } = &mut old {
        *log_epoch = 1;
    }
    meta.apply(&old);
    meta.apply(&fence("b", 1));
    let refused = meta.apply(&replace("b", "d", &["a", "b", "c"]));
    assert!(matches!(refused, MetaOutcome::Rejected(ref why) if why.contains("earlier copy")), "{refused:?}");
    assert_eq!(meta.partitions[0].replicas, ["a", "b", "c"]);
}

// Partitions.

/// Forms a cluster of `partitions` partitions placed over `voters`.
fn init_placed(partitions: u32, voters: &[&str], replication_factor: usize) -> MetaCommand {
    MetaCommand::Init {
        cluster_id: "x".into(),
        replication_factor,
        min_insync: 1,
        partitions,
        voters: voters.iter().map(|v| v.to_string()).collect(),
    }
}

fn register_with_epochs(id: &str, incarnation: u64, log_epochs: &[Epoch]) -> MetaCommand {
    let mut command = register(id, incarnation);
    if let MetaCommand::Register { log_epoch, log_epochs: epochs, .. } = &mut command {
        *log_epoch = log_epochs.iter().copied().max().unwrap_or(0);
        *epochs = log_epochs.to_vec();
    }
    command
}

/// Eight partitions, two copies each, over a, b, c, d, all registered in order.
fn eight_over_four() -> Metadata {
    let mut meta = Metadata::default();
    // Listed out of order: placement follows the sorted ids, as every node sorts them.
    assert_eq!(meta.apply(&init_placed(8, &["d", "b", "a", "c"], 2)), MetaOutcome::Applied);
    for id in ["a", "b", "c", "d"] {
        assert_eq!(meta.apply(&register(id, 1)), MetaOutcome::Applied);
    }
    meta
}

#[test]
fn partitions_are_placed_over_the_voters_so_copies_spread_evenly() {
    let meta = eight_over_four();
    assert_eq!(meta.partitions.len(), 8);
    assert_eq!(meta.partitions[0].replicas, ["a", "b"]);
    assert_eq!(meta.partitions[5].replicas[0], "b", "partition p's first replica is node p mod N");
    for id in ["a", "b", "c", "d"] {
        assert_eq!(meta.copies_held(id), 4, "{id}: 8 partitions x 2 copies / 4 nodes");
    }
    for (p, partition) in meta.partitions.iter().enumerate() {
        let leader = partition.leader.clone().unwrap_or_else(|| panic!("partition {p} has no leader"));
        assert_eq!(partition.isr, set(&[&leader]), "partition {p}: the first replica to register starts it alone");
        assert_eq!(partition.epoch, 1);
    }
}

#[test]
fn a_cluster_formed_without_voters_fills_its_replicas_as_members_register() {
    let mut meta = Metadata::default();
    meta.apply(&init_placed(3, &[], 2));
    meta.apply(&register("a", 1));
    meta.apply(&register("b", 1));
    meta.apply(&register("c", 1));
    for partition in &meta.partitions {
        assert_eq!(partition.replicas, ["a", "b"]);
        assert_eq!(partition.leader.as_deref(), Some("a"));
    }
}

#[test]
fn a_dead_member_loses_only_its_own_leaderships_each_under_a_new_epoch() {
    let mut meta = eight_over_four();
    for p in 0..8u32 {
        let partition = &meta.partitions[p as usize];
        let (leader, epoch) = (partition.leader.clone().expect("leader"), partition.epoch);
        let isr: Vec<&str> = partition.replicas.iter().map(String::as_str).collect();
        let grow =
            MetaCommand::AlterIsr { partition: p, leader, epoch, expected: partition.isr.clone(), isr: set(&isr) };
        assert_eq!(meta.apply(&grow), MetaOutcome::Applied, "partition {p}");
    }
    let before = meta.clone();
    let a = "a".to_string();
    assert!(meta.leaderships(&a) > 0, "a, the first to register, leads the partitions it holds");
    meta.apply(&fence("a", 1));
    assert_eq!(meta.leaderships(&a), 0);
    for (p, (old, new)) in before.partitions.iter().zip(&meta.partitions).enumerate() {
        if old.replicas.contains(&a) {
            assert!(!new.isr.contains(&a), "partition {p}: a leaves the ISR");
            assert!(new.leader.is_some(), "partition {p}: its other replica is in sync and takes over");
        }
        if old.leader.as_ref() == Some(&a) {
            assert_eq!(new.epoch, old.epoch + 1, "partition {p}: a new leader, a new epoch");
        } else {
            assert_eq!((&new.leader, new.epoch), (&old.leader, old.epoch), "partition {p} is untouched");
        }
    }
}

#[test]
fn an_isr_change_names_its_partition_and_touches_no_other() {
    let mut meta = eight_over_four();
    let partition = meta.partitions[1].clone();
    let leader = partition.leader.clone().expect("leader");
    let replicas: Vec<&str> = partition.replicas.iter().map(String::as_str).collect();
    let grow = |p: PartitionId| MetaCommand::AlterIsr {
        partition: p,
        leader: leader.clone(),
        epoch: partition.epoch,
        expected: partition.isr.clone(),
        isr: set(&replicas),
    };
    assert!(matches!(meta.apply(&grow(8)), MetaOutcome::Rejected(ref why) if why.contains("no partition")));
    assert_eq!(meta.apply(&grow(1)), MetaOutcome::Applied);
    assert_eq!(meta.partitions[1].isr, set(&replicas));
    let others = meta.partitions.iter().enumerate().filter(|(p, _)| *p != 1);
    assert!(others.into_iter().all(|(_, other)| other.isr.len() == 1), "{:?}", meta.partitions);
}

#[test]
fn each_partition_starts_above_its_own_replicas_logs() {
    let mut meta = Metadata::default();
    meta.apply(&init_placed(2, &["a"], 1));
    meta.apply(&register_with_epochs("a", 1, &[5, 2]));
    assert_eq!((meta.partitions[0].epoch, meta.partitions[1].epoch), (6, 3));
}

#[test]
fn a_member_may_take_a_place_only_in_partitions_it_holds_nothing_of() {
    // Two partitions over a and b, one copy each: a holds 0, b holds 1. c held partition 0
    // once (its log of 0 is not empty) and nothing of partition 1.
    let mut meta = Metadata::default();
    meta.apply(&init_placed(2, &["a", "b"], 1));
    meta.apply(&register("a", 1));
    meta.apply(&register("b", 1));
    meta.apply(&register_with_epochs("c", 1, &[4, 0]));
    let c = "c".to_string();
    assert!(meta.may_take_a_place(0, &c).is_err());
    assert!(meta.may_take_a_place(1, &c).is_ok());
    assert!(meta.may_take_a_place(2, &c).is_err(), "no partition 2");
}

#[test]
fn metadata_written_before_partitions_reads_as_one_partition() {
    let stored = r#"{"cluster_id":"x","replication_factor":3,"min_insync":2,
        "members":{"a":{"grpc_addr":"a:7100","client_addr":"a:7000","voter":true,"fenced":false,"incarnation":1,"log_epoch":3}},
        "partition":{"replicas":["a"],"leader":"a","epoch":4,"isr":["a"],"epoch_floor":3}}"#;
    let meta: Metadata = serde_json::from_str(stored).expect("old metadata");
    assert_eq!(meta.partitions.len(), 1);
    assert_eq!(meta.partitions[0].leader.as_deref(), Some("a"));
    assert_eq!(meta.partitions[0].epoch, 4);
    assert_eq!(meta.members["a"].log_epoch_of(0), 3, "an old member's one log is partition 0's");
    assert_eq!(meta.members["a"].log_epoch_of(1), 0);
    let init = r#"{"Init":{"cluster_id":"x","replication_factor":3,"min_insync":2}}"#;
    let init: MetaCommand = serde_json::from_str(init).expect("old Init");
    assert!(matches!(init, MetaCommand::Init { partitions: 1, ref voters, .. } if voters.is_empty()));
    let alter = r#"{"AlterIsr":{"leader":"a","epoch":4,"expected":["a"],"isr":["a"]}}"#;
    let alter: MetaCommand = serde_json::from_str(alter).expect("old AlterIsr");
    assert!(matches!(alter, MetaCommand::AlterIsr { partition: 0, .. }));
    let written = serde_json::to_value(&meta).expect("json");
    let round_trip: Metadata = serde_json::from_value(written.clone()).expect("new");
    assert_eq!(round_trip, meta);
    // A node that predates partitions reads `partition` and ignores `partitions`.
    assert_eq!(written["partition"]["epoch"], 4, "partition 0 is written where old nodes look: {written}");
}

#[test]
fn metadata_not_yet_formed_has_no_partitions() {
    let meta: Metadata =
        serde_json::from_slice(&serde_json::to_vec(&Metadata::default()).expect("json")).expect("json");
    assert!(meta.partitions.is_empty());
}

/// Every partition of `meta` with all its replicas in sync.
fn all_in_sync(meta: &mut Metadata) {
    for p in 0..meta.partitions.len() as PartitionId {
        let partition = meta.partitions[p as usize].clone();
        let Some(leader) = partition.leader.clone() else { continue };
        let isr: Vec<&str> = partition.replicas.iter().map(String::as_str).collect();
        let grow = MetaCommand::AlterIsr {
            partition: p,
            leader,
            epoch: partition.epoch,
            expected: partition.isr,
            isr: set(&isr),
        };
        assert_ne!(meta.apply(&grow), MetaOutcome::Unchanged, "partition {p}");
    }
}

/// A partition of `meta` whose preferred replica does not lead (it registered after the
/// other replica), and that replica.
fn led_by_another(meta: &Metadata) -> (PartitionId, NodeId) {
    let (p, partition) = (meta.partitions.iter().enumerate())
        .find(|(_, partition)| partition.leader.as_ref() != partition.replicas.first())
        .expect("a partition whose first replica registered second");
    (p as PartitionId, partition.replicas[0].clone())
}

#[test]
fn a_leader_hands_over_to_its_preferred_replica_once_it_is_back_in_sync() {
    let mut meta = eight_over_four();
    all_in_sync(&mut meta);
    let (p, preferred) = led_by_another(&meta);
    let (leader, epoch) =
        (meta.partitions[p as usize].leader.clone().expect("leader"), meta.partitions[p as usize].epoch);
    assert_eq!(meta.preferred_leader_waiting(p), Some(&preferred));
    let stale = MetaCommand::HandOver { partition: p, leader: leader.clone(), epoch: epoch - 1 };
    assert!(matches!(meta.apply(&stale), MetaOutcome::Rejected(_)), "only under the epoch it leads");
    let hand_over = MetaCommand::HandOver { partition: p, leader, epoch };
    assert_eq!(meta.apply(&hand_over), MetaOutcome::Applied);
    assert_eq!(meta.partitions[p as usize].leader.as_ref(), Some(&preferred));
    assert_eq!(meta.partitions[p as usize].epoch, epoch + 1, "a new leader, a new epoch");
    assert_eq!(meta.preferred_leader_waiting(p), None);
    assert!(matches!(meta.apply(&hand_over), MetaOutcome::Rejected(_)), "the old leader leads nothing now");
}

#[test]
fn no_hand_over_to_a_preferred_replica_out_of_sync_or_with_one_partition() {
    let mut meta = eight_over_four();
    all_in_sync(&mut meta);
    let (p, preferred) = led_by_another(&meta);
    meta.apply(&fence(&preferred, 1));
    meta.apply(&register(&preferred, 2));
    assert_eq!(meta.preferred_leader_waiting(p), None, "back, but not in sync yet");
    let (leader, epoch) =
        (meta.partitions[p as usize].leader.clone().expect("leader"), meta.partitions[p as usize].epoch);
    let refused = meta.apply(&MetaCommand::HandOver { partition: p, leader, epoch });
    assert!(matches!(refused, MetaOutcome::Rejected(ref why) if why.contains("preferred")), "{refused:?}");

    let mut single = three();
    single.apply(&fence("a", 1));
    single.apply(&register("a", 2));
    let (leader, epoch) = (single.partitions[0].leader.clone().expect("b leads"), single.partitions[0].epoch);
    let widen =
        MetaCommand::AlterIsr { partition: 0, leader, epoch, expected: set(&["b", "c"]), isr: set(&["a", "b", "c"]) };
    assert_eq!(single.apply(&widen), MetaOutcome::Applied);
    assert_eq!(single.preferred_leader_waiting(0), None, "one partition: nothing to spread");
}

#[test]
fn placed_replicas_lead_in_placement_order_whatever_order_they_register_in() {
    let mut meta = Metadata::default();
    meta.apply(&init_placed(3, &["a", "b", "c"], 3));
    for id in ["c", "b", "a"] {
        meta.apply(&register(id, 1));
    }
    assert!(meta.partitions.iter().all(|p| p.leader.as_deref() == Some("c")), "c arrived first");
    all_in_sync(&mut meta);
    meta.apply(&fence("c", 1));
    for (p, partition) in meta.partitions.iter().enumerate() {
        let first_live = partition.replicas.iter().find(|id| *id != "c").cloned();
        assert_eq!(partition.leader, first_live, "partition {p}: the first live in-sync replica in placement order");
    }
}

#[test]
fn only_the_placed_voters_hold_copies_and_duplicates_count_once() {
    let mut meta = Metadata::default();
    meta.apply(&init_placed(2, &["e", "d", "c", "b", "a", "a"], 3));
    for id in ["e", "d", "a", "b", "c"] {
        meta.apply(&register(id, 1));
    }
    let holders: BTreeSet<&str> = meta.partitions.iter().flat_map(|p| p.replicas.iter().map(String::as_str)).collect();
    assert_eq!(meta.partitions[0].replicas, ["a", "b", "c"]);
    assert_eq!(meta.partitions[1].replicas, ["b", "c", "d"]);
    assert!(!holders.contains("e"), "e registered first but is placed nowhere: {holders:?}");
}

#[test]
fn with_fewer_voters_than_copies_members_fill_the_missing_places_as_they_register() {
    let mut meta = Metadata::default();
    meta.apply(&init_placed(2, &["a", "b"], 3));
    for id in ["a", "b", "x", "y"] {
        meta.apply(&register(id, 1));
    }
    assert_eq!(meta.partitions[0].replicas, ["a", "b", "x"]);
    assert_eq!(meta.partitions[1].replicas, ["b", "a", "x"]);
}

#[test]
fn a_placed_replica_that_never_registered_is_never_in_sync_or_leader() {
    let mut meta = Metadata::default();
    meta.apply(&init_placed(1, &["a", "b", "c"], 3));
    meta.apply(&register("b", 1));
    meta.apply(&register("c", 1));
    let partition = meta.partitions[0].clone();
    assert_eq!(partition.leader.as_deref(), Some("b"));
    let widen = MetaCommand::AlterIsr {
        partition: 0,
        leader: "b".into(),
        epoch: partition.epoch,
        expected: partition.isr.clone(),
        isr: set(&["a", "b", "c"]),
    };
    assert!(matches!(meta.apply(&widen), MetaOutcome::Rejected(ref why) if why.contains("a is fenced")));
    meta.apply(&fence("b", 1));
    assert_eq!(meta.partitions[0].leader, None, "b was alone in sync: no leader, never a");
}

#[test]
fn a_replacement_in_one_partition_is_refused_to_a_member_with_records_of_it() {
    let mut meta = Metadata::default();
    meta.apply(&init_placed(2, &["a", "b"], 1));
    meta.apply(&register("a", 1));
    meta.apply(&register("b", 1));
    meta.apply(&register_with_epochs("c", 1, &[0, 4]));
    meta.apply(&fence("b", 1));
    // b was the last ISR member of partition 1: it stays there and cannot be replaced.
    assert!(matches!(meta.apply(&replace_in(1, "b", "c", &["b"])), MetaOutcome::Rejected(_)));
    meta.partitions[1].isr.clear();
    let refused = meta.apply(&replace_in(1, "b", "c", &["b"]));
    assert!(matches!(refused, MetaOutcome::Rejected(ref why) if why.contains("earlier copy")), "{refused:?}");
    meta.apply(&register_with_epochs("d", 1, &[7, 0]));
    assert_eq!(meta.apply(&replace_in(1, "b", "d", &["b"])), MetaOutcome::Applied, "d holds nothing of partition 1");
    assert_eq!(meta.partitions[1].replicas, ["d"]);
}

fn replace_in(partition: PartitionId, dead: &str, with: &str, expected: &[&str]) -> MetaCommand {
    MetaCommand::ReplaceReplica {
        partition,
        dead: dead.into(),
        with: with.into(),
        expected: expected.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn the_controller_gives_a_dead_place_to_the_eligible_member_holding_fewest_copies() {
    let mut meta = eight_over_four();
    meta.apply(&register("e", 1));
    meta.apply(&register_with_epochs("f", 1, &[1; 8]));
    let e = "e".to_string();
    assert_eq!(meta.replacement_for(0), Some(&e), "e holds nothing; f holds records of every partition");
    // e takes a place in partition 0 (its replicas are a, b): then a member holding fewer
    // copies would come before it, if there were one.
    meta.apply(&fence("b", 1));
    meta.partitions[0].isr.remove("b");
    assert_eq!(meta.apply(&replace_in(0, "b", "e", &["a", "b"])), MetaOutcome::Applied);
    meta.apply(&register("g", 1));
    let g = "g".to_string();
    let p = (meta.partitions.iter().position(|p| !p.replicas.contains(&e) && !p.replicas.contains(&g)))
        .expect("a partition neither holds") as PartitionId;
    assert_eq!(meta.replacement_for(p), Some(&g), "g holds no copy, e holds one");
}

#[test]
fn a_controller_hands_its_role_only_to_a_caught_up_voter_that_leads_no_partition() {
    let meta = eight_over_four();
    let a = "a".to_string();
    // Every node leads some partition of eight over four... unless it registered last.
    let leading_none: Vec<&NodeId> = meta.members.keys().filter(|id| meta.leaderships(id) == 0).collect();
    let successor = meta.controller_successor(&a, |_| true);
    assert_eq!(successor, leading_none.into_iter().find(|id| **id != a), "{:?}", meta.partitions);
    assert_eq!(meta.controller_successor(&a, |_| false), None, "none caught up");
    let single = three();
    assert_eq!(single.controller_successor(&a, |_| true).map(String::as_str), Some("b"));
}

#[test]
fn a_cluster_has_one_to_max_partitions() {
    for partitions in [0, MAX_PARTITIONS + 1] {
        let mut meta = Metadata::default();
        assert!(matches!(meta.apply(&init_placed(partitions, &["a"], 1)), MetaOutcome::Rejected(_)));
        assert_eq!(meta.cluster_id, None, "{partitions}: not formed");
    }
}

#[test]
fn commands_written_before_partitions_read_as_partition_zero() {
    let register = r#"{"Register":{"id":"a","grpc_addr":"a:7100","client_addr":"a:7000","voter":true,"incarnation":1,"log_epoch":2}}"#;
    let register: MetaCommand = serde_json::from_str(register).expect("old Register");
    assert!(matches!(register, MetaCommand::Register { log_epoch: 2, ref log_epochs, .. } if log_epochs.is_empty()));
    let replace = r#"{"ReplaceReplica":{"dead":"b","with":"d","expected":["a","b","c"]}}"#;
    let replace: MetaCommand = serde_json::from_str(replace).expect("old ReplaceReplica");
    assert!(matches!(replace, MetaCommand::ReplaceReplica { partition: 0, .. }));
}

/// The metadata as the version before partitions declared it (serde's defaults: unknown
/// fields ignored, none optional).
#[derive(Deserialize)]
struct MetadataBeforePartitions {
    cluster_id: Option<String>,
    replication_factor: usize,
    min_insync: usize,
    members: BTreeMap<NodeId, MemberBeforePartitions>,
    partition: Partition,
}

#[derive(Deserialize)]
struct MemberBeforePartitions {
    incarnation: u64,
    #[serde(default)]
    log_epoch: Epoch,
}

#[test]
fn a_node_of_the_version_before_partitions_reads_what_is_written_now() {
    let mut meta = three();
    meta.apply(&fence("a", 1));
    let written = serde_json::to_vec(&meta).expect("json");
    let old: MetadataBeforePartitions = serde_json::from_slice(&written).expect("read as before partitions");
    assert_eq!(old.cluster_id, meta.cluster_id);
    assert_eq!((old.replication_factor, old.min_insync), (3, 2));
    assert_eq!(old.partition, meta.partitions[0]);
    assert_eq!(old.members["b"].incarnation, 1);
    assert_eq!(old.members["b"].log_epoch, 0);
    let unformed = serde_json::to_vec(&Metadata::default()).expect("json");
    let old: MetadataBeforePartitions = serde_json::from_slice(&unformed).expect("unformed, read as before");
    assert_eq!(old.partition, Partition::default());
}
