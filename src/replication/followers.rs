//! The leader's table of followers: who is connected, how far each is durable, and the
//! quorum a write waits for.
//!
//! A write at offset `o` is replicated once the [`AckRule`]'s followers have acknowledged a
//! durable offset above `o`: any `tolerance` of them (a manual leader), or every one the
//! cluster's in-sync replica set names (cluster mode). The table keeps, for every change,
//! the offset below which that holds (the "replicated watermark") in a `watch`, so waiting
//! writes compare one number. A follower that disconnects keeps counting for what it acknowledged: those
//! records are on its disk.
//!
//! An ack is believed only as far as the leader can vouch for it: it must name an open
//! fetch session (a random token the stream's `Hello` carried) of the follower it claims
//! to be from, and it counts only up to what that stream was sent. A peer that acks
//! without fetching, for another follower, or beyond what it received counts for nothing.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::server::Refusal;
use crate::storage::Offset;

use super::rules::replicated_watermark;

pub(super) struct Followers {
    table: Mutex<Table>,
    quorum: watch::Sender<Quorum>,
}

/// A fetch session's token.
pub(super) type Token = [u8; 16];

struct Table {
    rule: AckRule,
    followers: HashMap<String, Entry>,
    sessions: HashMap<Token, Session>,
}

/// Whose acknowledgements a write waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum AckRule {
    /// A manual leader: any `tolerance` followers.
    Count(usize),
    /// A cluster-mode leader: every follower in `wait` (the ISR but this node, plus any
    /// follower being added to it), and writes only while the ISR has `min_insync` members.
    Isr { wait: BTreeSet<String>, isr_size: usize, min_insync: usize },
    /// This node does not lead (cluster mode): writes are refused, waits fail.
    NotLeading,
}

/// An open fetch stream, as acks are checked against it.
struct Session {
    follower: String,
    /// Every record below this was sent on the stream (or held by the follower when it
    /// began, as far as this log reaches).
    sent: Offset,
}

/// Why an ack was not counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum AckRefusal {
    #[error("it names no open fetch session")]
    UnknownSession,
    #[error("its fetch session belongs to follower {0}")]
    OtherFollower(String),
    #[error("it acknowledges up to offset {acked} but its stream was sent only up to {sent}")]
    BeyondSent { acked: Offset, sent: Offset },
}

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    /// Fetch streams open for this follower (a reconnect may overlap the old stream).
    streams: usize,
    /// Every record below this is durable on it.
    durable: Offset,
    /// It has opened a fetch stream in this run (one known from an earlier run may not
    /// have yet).
    seen: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Quorum {
    /// Followers with a fetch stream open.
    connected: usize,
    /// Every record below this is durable on the followers the rule asks for.
    replicated: Offset,
    /// Bumped whenever leadership ends, so that waits begun under it fail at once.
    deposed: u64,
}

/// A follower as STATS shows it.
#[derive(Debug, Clone)]
pub(super) struct FollowerView {
    pub id: String,
    pub durable: Offset,
    pub connected: bool,
    pub seen: bool,
    pub streams: usize,
}

/// Held by a follower's fetch stream; dropping it marks the follower disconnected and
/// ends its session.
pub(super) struct Registration {
    followers: Arc<Followers>,
    id: String,
    token: Token,
}

impl Registration {
    pub fn token(&self) -> Token {
        self.token
    }

    /// Records below `next` are about to go out on the stream. Called before they are
    /// sent, so the follower's ack for them can never arrive first.
    ///
    /// Returns whether the session still counts: a new leadership forgets every session,
    /// and a stream whose session is gone must end so that the follower fetches again and
    /// opens one (its acknowledgements would be ignored until then).
    #[must_use]
    pub fn sending(&self, next: Offset) -> bool {
        let mut table = self.followers.lock();
        match table.sessions.get_mut(&self.token) {
            Some(session) => {
                session.sent = session.sent.max(next);
                true
            }
            None => false,
        }
    }

    /// Whether its session still counts, for a stream with no records to send (see
    /// [`sending`](Registration::sending)).
    pub fn is_open(&self) -> bool {
        self.followers.lock().sessions.contains_key(&self.token)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.followers.update(|table| {
            table.sessions.remove(&self.token);
            if let Some(entry) = table.followers.get_mut(&self.id) {
                entry.streams -= 1;
            }
        });
        tracing::info!(follower = %self.id, "follower disconnected");
    }
}

impl Followers {
    pub fn new(rule: AckRule) -> Followers {
        let (quorum, _) = watch::channel(Quorum::default());
        let table = Table { rule, followers: HashMap::new(), sessions: HashMap::new() };
        let followers = Followers { table: Mutex::new(table), quorum };
        followers.update(|_| {});
        followers
    }

    /// Followers known from an earlier run (a manual leader's `followers` file): each
    /// counts, as one that never acknowledged anything, until it connects.
    pub fn know(&self, ids: &[String]) {
        self.update(|table| {
            for id in ids {
                table.followers.entry(id.clone()).or_default();
            }
        });
    }

    /// Replaces whose acknowledgements writes wait for. Leaving the lead fails every
    /// write still waiting: its epoch is over, it will never be acknowledged by it.
    pub fn set_rule(&self, rule: AckRule) {
        let deposing = matches!(rule, AckRule::NotLeading);
        self.update(|table| table.rule = rule);
        if deposing {
            self.quorum.send_modify(|q| q.deposed += 1);
        }
    }

    /// Forgets every follower's acknowledgements and fetch sessions: a new leadership
    /// counts only what its own streams are told.
    pub fn forget_acknowledgements(&self) {
        self.update(|table| {
            table.sessions.clear();
            for entry in table.followers.values_mut() {
                entry.durable = 0;
            }
        });
        self.quorum.send_modify(|q| q.replicated = 0);
    }

    /// A new leadership starts from what this node knew to be committed (the high
    /// watermark it led or was sent as a follower): those records were held by the whole
    /// ISR the previous leader counted, so they stay readable while this leadership's own
    /// count cannot move (its ISR below min-insync until a replica is re-made).
    pub fn seed_replicated(&self, committed: Offset) {
        let table = self.lock();
        if matches!(table.rule, AckRule::Isr { .. }) {
            self.quorum.send_if_modified(|q| {
                let raise = committed > q.replicated;
                if raise {
                    q.replicated = committed;
                }
                raise
            });
        }
    }

    pub fn rule(&self) -> AckRule {
        self.lock().rule.clone()
    }

    /// A follower's fetch stream passed the divergence check and is about to stream. It
    /// holds everything below `holds` already (its fetch offset, capped by the caller at
    /// this log's end): acks up to there count from the start.
    pub fn connect(self: &Arc<Self>, id: &str, holds: Offset) -> Registration {
        let token = new_token();
        self.update(|table| {
            table.sessions.insert(token, Session { follower: id.to_string(), sent: holds });
            let entry = table.followers.entry(id.to_string()).or_default();
            // What it holds now bounds what it can still vouch for: a follower that came
            // back with less (a wiped or restored disk) must not count for its old acks.
            entry.durable = entry.durable.min(holds);
            if entry.streams > 0 {
                // Most often a follower back from a crash before its old stream was seen to
                // end; two followers sharing an ID keep both open, which the follower watch
                // reports.
                tracing::debug!(follower = %id, "a second stream for this follower ID");
            }
            entry.streams += 1;
            entry.seen = true;
        });
        Registration { followers: Arc::clone(self), id: id.to_string(), token }
    }

    /// `id` says it holds every record below `durable` durably, on the session `token`.
    /// Counted only if the session is `id`'s and was sent that far.
    pub fn acknowledge(&self, token: &[u8], id: &str, durable: Offset) -> Result<(), AckRefusal> {
        let mut refusal = None;
        self.update(|table| {
            let session = <Token>::try_from(token).ok().and_then(|token| table.sessions.get(&token));
            let Some(session) = session else {
                refusal = Some(AckRefusal::UnknownSession);
                return;
            };
            if session.follower != id {
                refusal = Some(AckRefusal::OtherFollower(session.follower.clone()));
            } else if durable > session.sent {
                refusal = Some(AckRefusal::BeyondSent { acked: durable, sent: session.sent });
            } else if let Some(entry) = table.followers.get_mut(id) {
                entry.durable = entry.durable.max(durable);
            }
        });
        refusal.map_or(Ok(()), Err)
    }

    /// Whether a write may start: enough followers are connected to acknowledge it (a
    /// manual leader), or the ISR is large enough (cluster mode).
    pub fn admit(&self) -> Result<(), Refusal> {
        let table = self.lock();
        match &table.rule {
            AckRule::Count(tolerance) => {
                let connected = self.quorum.borrow().connected;
                if connected < *tolerance {
                    return Err(Refusal(format!("not enough replicas (have {connected}, need {tolerance})")));
                }
                Ok(())
            }
            AckRule::Isr { isr_size, min_insync, .. } if isr_size < min_insync => {
                Err(Refusal(format!("not enough replicas (have {isr_size}, need {min_insync})")))
            }
            AckRule::Isr { .. } => Ok(()),
            AckRule::NotLeading => Err(Refusal("this node no longer leads; retry".to_string())),
        }
    }

    /// Whether `offset` is already durable where the rule asks.
    pub fn is_replicated(&self, offset: Offset) -> bool {
        self.quorum.borrow().replicated > offset
    }

    /// Changes whenever the replicated watermark (or leadership) does.
    pub fn watch_replicated(&self) -> watch::Receiver<impl Sized + use<>> {
        self.quorum.subscribe()
    }

    /// Every record below this is durable where the rule asks.
    pub fn replicated(&self) -> Offset {
        self.quorum.borrow().replicated
    }

    /// Resolves once `offset` is durable where the rule asks, or fails after `timeout` or
    /// when this node stops leading.
    pub async fn wait(&self, offset: Offset, timeout: Duration) -> Result<(), Refusal> {
        let leadership_changed = || {
            Refusal(
                "leadership changed before the record was replicated; a write may or may not have been applied"
                    .to_string(),
            )
        };
        let mut quorum = self.quorum.subscribe();
        let deposed = quorum.borrow().deposed;
        // Read after `deposed`: a step-down before it shows here, one after it changes
        // `deposed`. A wait that began once this node had stepped down would otherwise
        // last its whole timeout, as nothing it waits for comes any more. This includes
        // the moment a leader takes a newer epoch (`lead` steps down first): a read then is
        // refused rather than held for the new leadership's first acknowledgements. (Not
        // leading, nothing counts as replicated: `update` sets the watermark to 0.)
        if matches!(self.lock().rule, AckRule::NotLeading) {
            return Err(leadership_changed());
        }
        let done = quorum.wait_for(|q| q.replicated > offset || q.deposed != deposed);
        match tokio::time::timeout(timeout, done).await {
            Ok(Ok(q)) if q.replicated > offset => Ok(()),
            Ok(Ok(_)) => Err(leadership_changed()),
            Ok(Err(_)) => Err(Refusal("replication stopped".to_string())),
            Err(_) => {
                let table = self.lock();
                let acked = |id: &String| table.followers.get(id).is_some_and(|e| e.durable > offset);
                let (acked, of) = match &table.rule {
                    AckRule::Isr { wait, .. } => (wait.iter().filter(|id| acked(id)).count(), wait.len()),
                    AckRule::Count(tolerance) => {
                        (table.followers.values().filter(|e| e.durable > offset).count(), *tolerance)
                    }
                    AckRule::NotLeading => (0, 0),
                };
                let mut why = format!("replication timeout (acked {acked} of {of})");
                if let AckRule::Isr { isr_size, min_insync, .. } = &table.rule
                    && isr_size < min_insync
                {
                    why.push_str(&format!(
                        ": the partition has {isr_size} in-sync replicas of the {min_insync} it needs to \
                         commit more, until a replica is back or re-made"
                    ));
                }
                Err(Refusal(why))
            }
        }
    }

    /// How far `id` is durable, as acknowledged (0 if never).
    pub fn durable(&self, id: &str) -> Offset {
        self.lock().followers.get(id).map_or(0, |e| e.durable)
    }

    /// Every replica holds every record below this, as acknowledged: a tombstone may go
    /// only below it (README, "Compaction"). `replicas` names them where they are known
    /// (cluster mode), with this node's id to leave out, and one never heard from counts 0.
    /// A manual leader knows the followers its log was copied to, in this run or an earlier
    /// one ([`know`](Self::know)): each counts, and until `tolerance` of them are known,
    /// nothing does.
    pub fn tombstone_horizon(&self, replicas: Option<(&[String], &str)>, tolerance: usize) -> Offset {
        let table = self.lock();
        match replicas {
            Some((replicas, this_node)) => replicas
                .iter()
                .filter(|id| *id != this_node)
                .map(|id| table.followers.get(id).map_or(0, |e| e.durable))
                .min()
                .unwrap_or(Offset::MAX),
            None if table.followers.len() < tolerance => 0,
            None => table.followers.values().map(|e| e.durable).min().unwrap_or(Offset::MAX),
        }
    }

    /// Whether `id` has connected in this run or was known from an earlier one.
    pub fn is_known(&self, id: &str) -> bool {
        self.lock().followers.contains_key(id)
    }

    /// Whether `id` has a fetch stream open.
    pub fn is_connected(&self, id: &str) -> bool {
        self.lock().followers.get(id).is_some_and(|e| e.streams > 0)
    }

    pub fn snapshot(&self) -> Vec<FollowerView> {
        let mut view: Vec<FollowerView> = self
            .lock()
            .followers
            .iter()
            .map(|(id, e)| FollowerView {
                id: id.clone(),
                durable: e.durable,
                connected: e.streams > 0,
                seen: e.seen,
                streams: e.streams,
            })
            .collect();
        view.sort_by(|a, b| a.id.cmp(&b.id));
        view
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the table and republishes the quorum, under the table's lock so that
    /// concurrent updates publish in order.
    fn update(&self, change: impl FnOnce(&mut Table)) {
        let mut table = self.lock();
        change(&mut table);
        let followers = &table.followers;
        let connected = followers.values().filter(|e| e.streams > 0).count();
        let before = self.quorum.borrow().replicated;
        let replicated = match &table.rule {
            AckRule::Count(tolerance) => replicated_watermark(followers.values().map(|e| e.durable), *tolerance),
            // Below min-insync nothing more is committed: a write waiting now is answered
            // with an error at its timeout, never `OK` on fewer copies than promised.
            AckRule::Isr { isr_size, min_insync, .. } if isr_size < min_insync => before,
            AckRule::Isr { wait, .. } => {
                // A member not heard from yet holds nothing as far as this leader can vouch.
                let now = wait.iter().map(|id| followers.get(id).map_or(0, |e| e.durable)).min().unwrap_or(Offset::MAX);
                // Within a leadership the watermark never goes back (a follower being added
                // holds less than what is already committed), except from "everything"
                // (this node alone in sync) to what a new member holds.
                if before == Offset::MAX { now } else { now.max(before) }
            }
            AckRule::NotLeading => 0,
        };
        self.quorum.send_if_modified(|q| {
            let changed = q.connected != connected || q.replicated != replicated;
            q.connected = connected;
            q.replicated = replicated;
            changed
        });
    }
}

/// A session token no peer can guess: from the OS's random source, or failing that (it
/// never should on Linux), a digest of the time and a counter.
fn new_token() -> Token {
    let mut token = Token::default();
    // SAFETY: `token` is valid for writes of its length for the call.
    let filled = unsafe { libc::getrandom(token.as_mut_ptr().cast(), token.len(), 0) };
    if usize::try_from(filled).ok() != Some(token.len()) {
        use sha2::{Digest, Sha256};
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let seed = format!("{now:?} {} {}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let len = token.len();
        token.copy_from_slice(&Sha256::digest(seed.as_bytes())[..len]);
    }
    token
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_known_from_an_earlier_run_holds_the_tombstone_horizon_until_it_acknowledges() {
        let followers = Arc::new(Followers::new(AckRule::Count(1)));
        followers.know(&["b".to_string()]);
        assert!(followers.is_known("b") && !followers.is_known("a"));
        let a = followers.connect("a", 0);
        assert!(a.sending(100));
        followers.acknowledge(&a.token(), "a", 100).unwrap();
        assert_eq!(followers.tombstone_horizon(None, 1), 0, "b is away and may lack any tombstone");
        assert!(followers.admit().is_ok(), "a known follower that is away does not hold writes back");
        let b = followers.connect("b", 40);
        assert!(b.sending(100));
        followers.acknowledge(&b.token(), "b", 60).unwrap();
        assert_eq!(followers.tombstone_horizon(None, 1), 60);
    }

    #[test]
    fn admit_counts_connected_followers_only() {
        let followers = Arc::new(Followers::new(AckRule::Count(2)));
        assert_eq!(followers.admit().unwrap_err().0, "not enough replicas (have 0, need 2)");
        let a = followers.connect("a", 0);
        let _b = followers.connect("b", 0);
        assert!(followers.admit().is_ok());
        drop(a);
        assert_eq!(followers.admit().unwrap_err().0, "not enough replicas (have 1, need 2)");
    }

    #[tokio::test]
    async fn a_write_waits_for_tolerance_acks_and_times_out_naming_the_count() {
        let followers = Arc::new(Followers::new(AckRule::Count(2)));
        let a = followers.connect("a", 0);
        let b = followers.connect("b", 0);
        assert!(a.sending(11));
        assert!(b.sending(11));
        followers.acknowledge(&a.token(), "a", 11).unwrap();
        let timeout = Duration::from_millis(20);
        assert_eq!(followers.wait(10, timeout).await.unwrap_err().0, "replication timeout (acked 1 of 2)");
        followers.acknowledge(&b.token(), "b", 11).unwrap();
        followers.wait(10, timeout).await.expect("both acknowledged offset 10");
        assert_eq!(followers.acknowledge(&[7; 16], "stranger", 100), Err(AckRefusal::UnknownSession));
        assert_eq!(followers.wait(11, timeout).await.unwrap_err().0, "replication timeout (acked 0 of 2)");
    }

    #[tokio::test]
    async fn a_new_leadership_below_min_insync_serves_what_was_committed_before_it() {
        let followers = Arc::new(Followers::new(AckRule::NotLeading));
        let alone = AckRule::Isr { wait: BTreeSet::new(), isr_size: 1, min_insync: 2 };
        followers.set_rule(alone);
        followers.seed_replicated(10);
        let timeout = Duration::from_millis(20);
        followers.wait(9, timeout).await.expect("committed under the previous leader");
        let refused = followers.wait(10, timeout).await.unwrap_err().0;
        assert!(refused.contains("1 in-sync replicas of the 2"), "{refused}");
        followers.seed_replicated(4);
        followers.wait(9, timeout).await.expect("a lower seed takes nothing back");
        followers.set_rule(AckRule::NotLeading);
        followers.seed_replicated(10);
        assert_eq!(followers.replicated(), 0, "not leading, nothing counts as replicated");
    }

    #[test]
    fn an_ack_counts_only_on_its_followers_session_and_up_to_what_was_sent() {
        let followers = Arc::new(Followers::new(AckRule::Count(1)));
        let a = followers.connect("a", 5);
        let b = followers.connect("b", 0);
        let durable = |followers: &Followers| followers.snapshot().iter().map(|f| f.durable).collect::<Vec<_>>();
        assert_eq!(
            followers.acknowledge(&a.token(), "a", 1 << 62),
            Err(AckRefusal::BeyondSent { acked: 1 << 62, sent: 5 })
        );
        assert_eq!(followers.acknowledge(&b.token(), "a", 3), Err(AckRefusal::OtherFollower("b".into())));
        assert_eq!(followers.acknowledge(b"short", "a", 3), Err(AckRefusal::UnknownSession));
        assert_eq!(durable(&followers), [0, 0]);
        followers.acknowledge(&a.token(), "a", 5).expect("a held offsets below 5 when it connected");
        assert!(a.sending(9));
        followers.acknowledge(&a.token(), "a", 9).expect("sent up to 9");
        assert_eq!(durable(&followers), [9, 0]);
        let token = a.token();
        drop(a);
        assert_eq!(followers.acknowledge(&token, "a", 9), Err(AckRefusal::UnknownSession));
        assert_eq!(durable(&followers), [9, 0], "what a disconnected follower acknowledged still counts");
    }

    fn isr(wait: &[&str], isr_size: usize, min_insync: usize) -> AckRule {
        AckRule::Isr { wait: wait.iter().map(|s| s.to_string()).collect(), isr_size, min_insync }
    }

    #[tokio::test]
    async fn in_cluster_mode_a_write_waits_for_every_isr_member_not_any_n() {
        let followers = Arc::new(Followers::new(isr(&["b", "c"], 3, 2)));
        let b = followers.connect("b", 0);
        let c = followers.connect("c", 0);
        let d = followers.connect("d", 0);
        for f in [&b, &c, &d] {
            assert!(f.sending(10));
        }
        followers.acknowledge(&b.token(), "b", 10).unwrap();
        followers.acknowledge(&d.token(), "d", 10).unwrap();
        let timeout = Duration::from_millis(20);
        assert_eq!(followers.wait(5, timeout).await.unwrap_err().0, "replication timeout (acked 1 of 2)");
        followers.acknowledge(&c.token(), "c", 6).unwrap();
        followers.wait(5, timeout).await.expect("b and c hold offset 5");
        assert_eq!(followers.replicated(), 6, "the slowest ISR member sets the watermark");
        followers.set_rule(isr(&["b", "c"], 1, 2));
        assert_eq!(followers.admit().unwrap_err().0, "not enough replicas (have 1, need 2)");
    }

    #[tokio::test]
    async fn leaving_the_lead_fails_waiting_writes_at_once() {
        let followers = Arc::new(Followers::new(isr(&["b"], 2, 2)));
        let waiting = {
            let followers = Arc::clone(&followers);
            tokio::spawn(async move { followers.wait(3, Duration::from_secs(60)).await })
        };
        tokio::task::yield_now().await;
        followers.set_rule(AckRule::NotLeading);
        let refused = waiting.await.expect("joined").unwrap_err();
        assert!(refused.0.contains("leadership changed"), "{refused}");
        assert!(followers.admit().is_err(), "no writes once not leading");
    }

    #[tokio::test]
    async fn a_wait_that_begins_after_the_lead_was_left_fails_at_once() {
        let followers = Arc::new(Followers::new(isr(&["b"], 2, 2)));
        followers.set_rule(AckRule::NotLeading);
        // Without the check this would end in a timeout, whose message differs.
        let refused = followers.wait(3, Duration::from_secs(1)).await.unwrap_err();
        assert!(refused.0.contains("leadership changed"), "{refused}");
    }

    #[test]
    fn a_follower_back_with_less_no_longer_counts_for_its_old_acks() {
        let followers = Arc::new(Followers::new(isr(&["b"], 2, 2)));
        let b = followers.connect("b", 0);
        assert!(b.sending(50));
        followers.acknowledge(&b.token(), "b", 50).unwrap();
        drop(b);
        let _b = followers.connect("b", 20);
        assert_eq!(followers.durable("b"), 20, "b vouches only for what it holds now");
        assert_eq!(followers.replicated(), 50, "what was committed stays committed (the leader holds it)");
        assert!(!followers.is_replicated(50), "later writes wait for b again");
    }

    #[tokio::test]
    async fn a_write_waiting_when_the_isr_shrinks_below_min_insync_is_never_acknowledged() {
        let followers = Arc::new(Followers::new(isr(&["b"], 2, 2)));
        let b = followers.connect("b", 0);
        assert!(b.sending(5));
        followers.acknowledge(&b.token(), "b", 5).unwrap();
        assert_eq!(followers.replicated(), 5);
        // b is dropped from the ISR while a write at offset 7 waits: the ISR is now the
        // leader alone, below min-insync 2.
        followers.set_rule(isr(&[], 1, 2));
        let refused = followers.wait(7, Duration::from_millis(20)).await.unwrap_err();
        assert!(refused.0.starts_with("replication timeout"), "{refused}");
        assert_eq!(followers.replicated(), 5, "what was committed stays committed");
    }

    #[test]
    fn a_new_leadership_counts_no_acknowledgement_given_to_an_earlier_one() {
        let followers = Arc::new(Followers::new(isr(&["b"], 2, 2)));
        let b = followers.connect("b", 0);
        assert!(b.sending(100));
        followers.acknowledge(&b.token(), "b", 100).unwrap();
        followers.set_rule(AckRule::NotLeading);
        followers.forget_acknowledgements();
        followers.set_rule(isr(&["b"], 2, 2));
        assert_eq!(followers.replicated(), 0, "b's old acks vouch for nothing now");
        assert_eq!(followers.acknowledge(&b.token(), "b", 100), Err(AckRefusal::UnknownSession));
    }

    #[test]
    fn a_new_leadership_closes_the_sessions_of_an_earlier_one_and_a_new_fetch_counts_again() {
        let followers = Arc::new(Followers::new(isr(&["b"], 2, 2)));
        let old = followers.connect("b", 0);
        assert!(old.sending(0));
        followers.forget_acknowledgements();
        assert!(!old.is_open(), "its stream must end so that the follower fetches again");
        assert!(!old.sending(0));
        let new = followers.connect("b", 0);
        assert!(new.sending(10));
        followers.acknowledge(&new.token(), "b", 10).unwrap();
        assert_eq!(followers.replicated(), 10);
    }

    #[test]
    fn the_tombstone_horizon_waits_for_every_replica_not_only_the_quorum() {
        let followers = Arc::new(Followers::new(AckRule::Count(1)));
        assert_eq!(followers.tombstone_horizon(None, 1), 0, "no follower known yet");
        let a = followers.connect("a", 0);
        let b = followers.connect("b", 0);
        assert!(a.sending(40) && b.sending(40));
        followers.acknowledge(&a.token(), "a", 40).unwrap();
        followers.acknowledge(&b.token(), "b", 10).unwrap();
        assert_eq!(followers.replicated(), 40, "one follower is the quorum");
        assert_eq!(followers.tombstone_horizon(None, 1), 10, "the slowest follower holds up to 10");
        let replicas = ["a".to_string(), "b".to_string(), "c".to_string()];
        assert_eq!(followers.tombstone_horizon(Some((&replicas, "leader")), 1), 0, "c was never heard from");
        assert_eq!(followers.tombstone_horizon(Some((&replicas[..1], "leader")), 1), 40);
        assert_eq!(followers.tombstone_horizon(Some((&replicas, "c")), 1), 10, "this node is left out");
    }

    #[test]
    fn a_follower_being_added_does_not_move_the_watermark_back() {
        let followers = Arc::new(Followers::new(isr(&["b"], 2, 2)));
        let b = followers.connect("b", 0);
        assert!(b.sending(50));
        followers.acknowledge(&b.token(), "b", 50).unwrap();
        let _c = followers.connect("c", 30);
        followers.set_rule(isr(&["b", "c"], 2, 2));
        assert_eq!(followers.replicated(), 50, "writes below 50 were committed without c");
    }
}
