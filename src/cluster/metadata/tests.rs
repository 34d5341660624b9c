use super::*;

fn register(id: &str, incarnation: u64) -> MetaCommand {
    MetaCommand::Register {
        id: id.to_string(),
        grpc_addr: format!("{id}:7100"),
        client_addr: format!("{id}:7000"),
        voter: true,
        incarnation,
        log_epoch: 0,
    }
}

fn fence(id: &str, incarnation: u64) -> MetaCommand {
    MetaCommand::Fence { id: id.to_string(), incarnation, reason: FenceReason::SessionExpired }
}

fn alter_isr(leader: &str, epoch: Epoch, expected: &[&str], isr: &[&str]) -> MetaCommand {
    MetaCommand::AlterIsr { leader: leader.into(), epoch, expected: set(expected), isr: set(isr) }
}

fn set(ids: &[&str]) -> BTreeSet<NodeId> {
    ids.iter().map(|s| s.to_string()).collect()
}

/// A formed cluster of a, b, c (R = 3) where a leads with all three in sync.
fn three() -> Metadata {
    let mut meta = Metadata::default();
    let init = MetaCommand::Init { cluster_id: "x".into(), replication_factor: 3, min_insync: 2 };
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
    meta.apply(&MetaCommand::Init { cluster_id: "x".into(), replication_factor: 2, min_insync: 2 });
    meta.apply(&register("a", 1));
    meta.apply(&register("b", 1));
    meta.apply(&register("c", 1));
    assert_eq!(meta.partition.leader.as_deref(), Some("a"));
    assert_eq!(meta.partition.epoch, 1);
    assert_eq!(meta.partition.isr, set(&["a"]));
    assert_eq!(meta.partition.replicas, ["a", "b"], "c is beyond the replication factor");
}

#[test]
fn a_fenced_leader_is_replaced_from_the_isr_under_a_new_epoch() {
    let mut meta = three();
    assert_eq!(meta.apply(&fence("a", 1)), MetaOutcome::Applied);
    assert_eq!(meta.partition.leader.as_deref(), Some("b"));
    assert_eq!(meta.partition.epoch, 2);
    assert_eq!(meta.partition.isr, set(&["b", "c"]));
    assert_eq!(meta.apply(&fence("a", 1)), MetaOutcome::Unchanged);
}

#[test]
fn a_replica_outside_the_isr_never_becomes_leader() {
    let mut meta = three();
    let shrink = alter_isr("a", 1, &["a", "b", "c"], &["a", "c"]);
    assert_eq!(meta.apply(&shrink), MetaOutcome::Applied);
    meta.apply(&fence("c", 1));
    assert_eq!(meta.partition.isr, set(&["a"]));
    meta.apply(&fence("a", 1));
    assert_eq!(meta.partition.leader, None, "b is out of sync: no unclean election");
    assert_eq!(meta.partition.isr, set(&["a"]), "the last ISR member is kept");
    assert_eq!(meta.partition.epoch, 2, "losing the leader ends its epoch");
    meta.apply(&register("b", 2));
    assert_eq!(meta.partition.leader, None);
    meta.apply(&register("a", 2));
    assert_eq!(meta.partition.leader.as_deref(), Some("a"));
    assert_eq!(meta.partition.epoch, 3);
}

#[test]
fn a_restarted_leader_never_leads_on_under_its_old_epoch() {
    let mut meta = three();
    // a restarts before its session expired: the new process registers.
    meta.apply(&register("a", 2));
    assert_eq!(meta.partition.leader.as_deref(), Some("b"));
    assert_eq!(meta.partition.epoch, 2);
    assert!(!meta.members["a"].fenced);
    assert!(!meta.partition.isr.contains("a"), "a must catch up before it is in sync again");
    // A fence for the old process does not touch the new one.
    assert_eq!(meta.apply(&fence("a", 1)), MetaOutcome::Unchanged);
    assert!(!meta.members["a"].fenced);
}

#[test]
fn a_restarted_sole_isr_member_leads_again_under_a_new_epoch() {
    let mut meta = Metadata::default();
    meta.apply(&MetaCommand::Init { cluster_id: "x".into(), replication_factor: 1, min_insync: 1 });
    meta.apply(&register("a", 1));
    assert_eq!((meta.partition.leader.as_deref(), meta.partition.epoch), (Some("a"), 1));
    meta.apply(&register("a", 2));
    assert_eq!(meta.partition.leader.as_deref(), Some("a"));
    assert!(meta.partition.epoch > 1);
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
    meta.apply(&MetaCommand::Init { cluster_id: "x".into(), replication_factor: 3, min_insync: 1 });
    let mut old = register("a", 1);
    if let MetaCommand::Register { log_epoch, .. } = &mut old {
        *log_epoch = 7;
    }
    meta.apply(&old);
    assert_eq!(meta.partition.epoch, 8);
}

#[test]
fn an_isr_change_based_on_an_isr_that_has_changed_since_is_refused() {
    // a proposes dropping b from {a,b,c}; meanwhile c is fenced and comes back, and a
    // acknowledges writes with {a,b}. The stale change must not leave {a,c}.
    let mut meta = three();
    meta.apply(&fence("c", 1));
    meta.apply(&register("c", 2));
    assert_eq!(meta.partition.isr, set(&["a", "b"]));
    let stale = alter_isr("a", 1, &["a", "b", "c"], &["a", "c"]);
    assert!(matches!(meta.apply(&stale), MetaOutcome::Rejected(_)));
    assert_eq!(meta.partition.isr, set(&["a", "b"]));
}

fn replace(dead: &str, with: &str, expected: &[&str]) -> MetaCommand {
    MetaCommand::ReplaceReplica {
        dead: dead.into(),
        with: with.into(),
        expected: expected.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn a_fenced_replica_out_of_the_isr_is_replaced_by_a_live_member_in_its_place() {
    let mut meta = three();
    meta.apply(&register("d", 1));
    assert_eq!(meta.partition.replicas, ["a", "b", "c"], "d is beyond the replication factor");
    assert!(matches!(meta.apply(&replace("b", "d", &["a", "b", "c"])), MetaOutcome::Rejected(_)), "b is alive");
    meta.apply(&fence("b", 1));
    assert_eq!(meta.partition.isr, set(&["a", "c"]));
    let (leader, epoch) = (meta.partition.leader.clone(), meta.partition.epoch);
    assert_eq!(meta.apply(&replace("b", "d", &["a", "b", "c"])), MetaOutcome::Applied);
    assert_eq!(meta.partition.replicas, ["a", "d", "c"]);
    assert_eq!(meta.partition.isr, set(&["a", "c"]), "d joins the ISR only once its leader sees it caught up");
    assert_eq!((meta.partition.leader.clone(), meta.partition.epoch), (leader, epoch), "no new epoch");
    // b comes back: it is a member again, not a replica.
    meta.apply(&register("b", 2));
    assert_eq!(meta.partition.replicas, ["a", "d", "c"]);
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
    assert_eq!(meta.partition.isr, set(&["b"]));
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
    assert_eq!(meta.partition.replicas, ["a", "b", "c"]);
}
