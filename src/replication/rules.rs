//! The replication decisions, apart from I/O: which fetch a node serves, where a follower
//! cuts a divergent tail, and when a log cut ends a stream. The service and the follower
//! loop gather the facts (from the request, the log, a watch) and act on what these return,
//! so every rule is tested here by table, without sockets or disks.

use crate::storage::{Epoch, Offset};

/// What a node knows when a fetch arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FetchFacts {
    /// The caller is a replica (it names itself), not a `msglog tail` consumer.
    pub replica: bool,
    /// This node takes writes.
    pub leading: bool,
    /// The highest epoch this node has begun or seen.
    pub epoch: Epoch,
    /// The highest epoch the caller has seen.
    pub caller_epoch: Epoch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LastRecordCheck {
    pub offset: Offset,
    pub caller_epoch: Epoch,
    pub epoch_here: Option<Epoch>,
}

/// Why a fetch is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FetchRefusal {
    /// Only a leader serves replicas: a follower's copy may be behind or cut back later.
    NotLeader,
    /// The caller has seen a newer leader than us: we are a stale leader, and letting the
    /// caller truncate to our log could drop records the newer leader acknowledged.
    StaleLeader { ours: Epoch, callers: Epoch },
}

/// Whether this node may serve the fetch at all: leadership first (a replica that asks a
/// follower is told so whatever else is wrong), then staleness. Both are checked before a
/// stream slot is taken and before the caller's last record is looked up on disk.
pub(super) fn admit_fetch(facts: FetchFacts) -> Result<(), FetchRefusal> {
    if facts.replica && !facts.leading {
        return Err(FetchRefusal::NotLeader);
    }
    if facts.caller_epoch > facts.epoch {
        return Err(FetchRefusal::StaleLeader { ours: facts.epoch, callers: facts.caller_epoch });
    }
    Ok(())
}

/// Whether the caller's last record is not ours (KIP-101/KIP-279): the caller must cut
/// back before it may stream.
pub(super) fn diverges(last: LastRecordCheck) -> bool {
    last.epoch_here != Some(last.caller_epoch)
}

/// Where a follower cuts its log after a `Diverged` answer: at the lower of the leader's
/// end of the largest shared epoch and its own end of that epoch (so a record neither
/// agrees on is never kept), and always below its last record, so that every round of the
/// divergence check removes at least one record and the exchange ends.
pub(super) fn divergence_cut(leader_end: Offset, our_end_of_epoch: Offset, our_last: Offset) -> Offset {
    leader_end.min(our_end_of_epoch).min(our_last)
}

/// Whether a follower whose log ends at `next` (its first record at `own_start`) must
/// begin again at the leader's log start `leader_start`: the leader holds nothing at or
/// above our end (retention deleted it, or this log is new), or our last record lies just
/// below its start. The leader compares a caller's last record only where it still holds
/// one, so such a record was never checked, and it could be a deposed leader's write the
/// cluster never committed; the leader deleted every record there anyway.
pub(super) fn begins_at_leaders_start(leader_start: Offset, next: Offset, own_start: Offset) -> bool {
    leader_start > next || (leader_start == next && next > own_start)
}

/// Whether a replica holding records, whose log ends at `next`, missed deletions it can
/// never learn of: the leader's cleaner may have dropped tombstones below `dropped_below`,
/// some at or after `next`, so an ID they deleted could live on in its copy. It must copy
/// the log afresh from the leader's log start (one whose log ends at or below that start
/// begins again there anyway).
pub(super) fn missed_deletions(next: Offset, leader_start: Offset, dropped_below: Offset) -> bool {
    next > leader_start && next < dropped_below
}

/// Whether a stream that has sent everything below `cursor` must end because this node's
/// log was cut back to end at `cut`: what it sent past the cut is gone here, and the
/// reader has to fetch again (and run the divergence check) rather than get a gap.
pub(super) fn cut_passes_cursor(cut: Option<Offset>, cursor: Offset) -> bool {
    cut.is_some_and(|end| end < cursor)
}

/// The `tolerance`-th highest durable offset: every record below it is on `tolerance`
/// followers. Zero when fewer followers than that have acknowledged anything.
pub(super) fn replicated_watermark(durable: impl Iterator<Item = Offset>, tolerance: usize) -> Offset {
    if tolerance == 0 {
        return Offset::MAX;
    }
    let mut durable: Vec<Offset> = durable.collect();
    durable.sort_unstable_by(|a, b| b.cmp(a));
    durable.get(tolerance - 1).copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(replica: bool, leading: bool, epoch: Epoch, caller_epoch: Epoch) -> FetchFacts {
        FetchFacts { replica, leading, epoch, caller_epoch }
    }

    #[test]
    fn a_replica_ending_below_dropped_tombstones_copies_afresh() {
        let cases: &[(&str, (Offset, Offset, Offset), bool)] = &[
            ("ends below where tombstones were dropped", (50, 0, 100), true),
            ("ends exactly there: it missed none", (100, 0, 100), false),
            ("ends past it", (150, 0, 100), false),
            ("none dropped", (50, 0, 0), false),
            ("ends at the leader's start: begins again there anyway", (20, 20, 100), false),
            ("ends below the leader's start: the same", (10, 20, 100), false),
            ("ends between the leader's start and the dropped ones", (30, 20, 100), true),
        ];
        for (what, (next, start, dropped), expected) in cases {
            assert_eq!(missed_deletions(*next, *start, *dropped), *expected, "{what}");
        }
    }

    #[test]
    fn fetches_are_admitted_by_leadership_then_epoch() {
        use FetchRefusal::*;
        let cases: &[(&str, FetchFacts, Result<(), FetchRefusal>)] = &[
            ("a replica fetching from a leader streams", facts(true, true, 3, 3), Ok(())),
            ("a replica fetching from a follower is refused", facts(true, false, 3, 3), Err(NotLeader)),
            ("a consumer may read a follower", facts(false, false, 3, 3), Ok(())),
            (
                "a caller that saw a newer epoch refuses a stale leader",
                facts(true, true, 3, 4),
                Err(StaleLeader { ours: 3, callers: 4 }),
            ),
            (
                "the stale check applies to tails too",
                facts(false, false, 2, 5),
                Err(StaleLeader { ours: 2, callers: 5 }),
            ),
            ("an older caller epoch is fine", facts(true, true, 5, 1), Ok(())),
            ("leadership is checked before staleness", facts(true, false, 3, 9), Err(NotLeader)),
        ];
        for (what, facts, expected) in cases {
            assert_eq!(admit_fetch(*facts), *expected, "{what}");
        }
    }

    #[test]
    fn a_caller_diverges_when_our_record_at_its_last_offset_differs_or_is_missing() {
        let check = |caller_epoch, epoch_here| diverges(LastRecordCheck { offset: 9, caller_epoch, epoch_here });
        assert!(!check(2, Some(2)), "same epoch at that offset: same record");
        assert!(check(2, Some(3)), "another epoch at that offset");
        assert!(check(2, Some(1)), "an older epoch at that offset");
        assert!(check(2, None), "no record at that offset");
    }

    #[test]
    fn divergence_cut_takes_the_lowest_bound_and_always_drops_the_last_record() {
        let cases: &[(&str, Offset, Offset, Offset, Offset)] = &[
            // (what, leader end of shared epoch, our end of it, our last offset, cut)
            ("the leader's epoch ended first", 5, 8, 10, 5),
            ("our epoch ended first", 8, 5, 10, 5),
            ("both end past our log: still drop the last record", 20, 20, 10, 10),
            ("nothing shared: cut to the start", 0, 0, 10, 0),
            ("equal ends", 7, 7, 9, 7),
        ];
        for &(what, leader_end, ours, our_last, expected) in cases {
            let cut = divergence_cut(leader_end, ours, our_last);
            assert_eq!(cut, expected, "{what}");
            assert!(cut <= our_last, "{what}: the cut must remove the last record");
        }
    }

    #[test]
    fn a_follower_begins_at_the_leaders_start_when_every_record_it_holds_lies_below() {
        // The leader's start is past our end: nothing to join.
        assert!(begins_at_leaders_start(100, 40, 0));
        // Our last record is just below the leader's start: never compared, so dropped.
        assert!(begins_at_leaders_start(100, 100, 0));
        assert!(begins_at_leaders_start(100, 100, 99));
        // An empty log that already begins there has nothing to drop.
        assert!(!begins_at_leaders_start(100, 100, 100));
        // We hold records at or above the leader's start: the divergence check saw them.
        assert!(!begins_at_leaders_start(100, 101, 0));
        assert!(!begins_at_leaders_start(0, 0, 0));
    }

    #[test]
    fn a_cut_ends_a_stream_only_when_it_passes_the_cursor() {
        let cases: &[(&str, Option<Offset>, Offset, bool)] = &[
            ("no cut", None, 10, false),
            ("cut below what was sent", Some(4), 10, true),
            ("cut exactly at the cursor loses nothing sent", Some(10), 10, false),
            ("cut above the cursor", Some(12), 10, false),
            ("cut to empty with nothing sent", Some(0), 0, false),
            ("cut to empty after sending", Some(0), 1, true),
        ];
        for &(what, cut, cursor, ends) in cases {
            assert_eq!(cut_passes_cursor(cut, cursor), ends, "{what}");
        }
    }

    #[test]
    fn watermark_is_the_tolerance_th_highest_durable_offset() {
        let cases: &[(&[Offset], usize, Offset)] = &[
            (&[5, 9, 7], 1, 9),
            (&[5, 9, 7], 2, 7),
            (&[5, 9, 7], 3, 5),
            (&[5, 9], 3, 0),
            (&[], 1, 0),
            (&[], 0, Offset::MAX),
            (&[4, 4, 4], 2, 4),
        ];
        for &(durable, tolerance, expected) in cases {
            assert_eq!(
                replicated_watermark(durable.iter().copied(), tolerance),
                expected,
                "durable {durable:?} at tolerance {tolerance}"
            );
        }
    }
}
