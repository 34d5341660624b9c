//! Cluster mode: this node leads or follows the partition as the metadata quorum decides.
//! The node's cluster driver calls [`Replication::lead`], [`Replication::follow_leader`] and
//! [`Replication::await_leader`] as committed metadata changes; this module makes each
//! switch safe:
//!
//! - Leading starts only after the follower loop has fully stopped (nothing from the old
//!   leader is appended under the new epoch) and the epoch is persisted.
//! - Leaving the lead fails every write still waiting (it can no longer be acknowledged
//!   under its epoch) and stops admitting new ones before the route changes.
//! - A follower fetches only from the leader of the epoch the quorum named, and says that
//!   epoch in its fetch: a leader of any other epoch refuses it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::server::Route;
use crate::storage::{Epoch, Offset, StorageError};

use super::Replication;
use super::follower::{Target, follow};
use super::followers::AckRule;

/// Where this node stands for the partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// No leader is known (an election is under way, or no in-sync replica is alive).
    Electing { epoch: Epoch },
    Leading {
        epoch: Epoch,
        isr: BTreeSet<String>,
        replicas: Vec<String>,
        min_insync: usize,
        /// Followers being brought into the ISR, each with the offset it must reach: waited
        /// for already, not in the committed ISR yet.
        joining: BTreeMap<String, Offset>,
    },
    Following {
        leader: LeaderInfo,
        epoch: Epoch,
        /// This node is a replica and copies the leader's log (otherwise it only forwards).
        replicating: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    pub id: String,
    pub grpc_addr: String,
    pub client_addr: String,
}

impl Position {
    pub fn epoch(&self) -> Epoch {
        match self {
            Position::Electing { epoch } | Position::Leading { epoch, .. } | Position::Following { epoch, .. } => {
                *epoch
            }
        }
    }
}

pub(super) struct Leadership {
    position: Mutex<Position>,
    /// `position` is `Leading`, readable on every request without a lock.
    leading: std::sync::atomic::AtomicBool,
    routes: watch::Sender<Route>,
    /// The follower loop of the current leader, while following. Switches are serialized
    /// by the driver; the lock only guards the handle.
    following: tokio::sync::Mutex<Option<Following>>,
}

struct Following {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Default for Leadership {
    fn default() -> Leadership {
        let (routes, _) = watch::channel(Route::Electing);
        Leadership {
            position: Mutex::new(Position::Electing { epoch: 0 }),
            leading: std::sync::atomic::AtomicBool::new(false),
            routes,
            following: tokio::sync::Mutex::new(None),
        }
    }
}

impl Leadership {
    pub fn position(&self) -> Position {
        self.position.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The partition's replicas while this node leads it (a copy of them alone, not of the
    /// whole position: asked for every chunk a fetch stream sends).
    pub fn leading_replicas(&self) -> Option<Vec<String>> {
        match &*self.position.lock().unwrap_or_else(|e| e.into_inner()) {
            Position::Leading { replicas, .. } => Some(replicas.clone()),
            _ => None,
        }
    }

    pub fn routes(&self) -> watch::Receiver<Route> {
        self.routes.subscribe()
    }

    fn set(&self, position: Position, route: Route) {
        self.leading.store(matches!(position, Position::Leading { .. }), Ordering::Relaxed);
        *self.position.lock().unwrap_or_else(|e| e.into_inner()) = position;
        self.routes.send_if_modified(|current| {
            let changed = *current != route;
            *current = route;
            changed
        });
    }
}

impl Replication {
    /// Whether this node leads the partition now (cluster mode).
    pub fn is_leading(&self) -> bool {
        self.leadership.leading.load(Ordering::Relaxed)
    }

    /// This node's place in the partition (cluster mode).
    pub fn position(&self) -> Position {
        self.leadership.position()
    }

    /// Leads `epoch` with `isr` in sync: stops following, persists the epoch, stamps it on
    /// appends, and only then admits writes.
    pub async fn lead(
        self: &Arc<Self>,
        epoch: Epoch,
        isr: BTreeSet<String>,
        replicas: Vec<String>,
        min_insync: usize,
    ) -> Result<(), StorageError> {
        // Before stepping down, which forgets a leadership's count; and before anything
        // new is appended (a forwarded write admitted once the rule is set).
        let committed = self.high_watermark();
        self.step_down();
        self.stop_following().await;
        let committed = committed.min(self.log.next_offset());
        // The cluster's first leader begins the log its replicas copy.
        self.log.begin_lineage()?;
        self.log.observe_epoch(epoch)?;
        self.log.set_epoch(epoch);
        // What followers acknowledged to an earlier leadership (this node's or another's
        // log since) vouches for nothing now: they count from their next fetch.
        self.followers.forget_acknowledgements();
        let joining = BTreeMap::new();
        self.followers.set_rule(self.isr_rule(&isr, min_insync, &joining));
        self.followers.seed_replicated(committed);
        tracing::info!(partition = self.partition(), epoch, isr = ?isr, committed, "leading the partition");
        self.leadership.set(Position::Leading { epoch, isr, replicas, min_insync, joining }, Route::Local);
        self.announce(self.log.next_offset());
        Ok(())
    }

    /// The ISR, min-insync or replicas changed under the epoch this node leads.
    pub fn update_isr(&self, isr: BTreeSet<String>, replicas: Vec<String>, min_insync: usize) {
        let mut position = self.leadership.position.lock().unwrap_or_else(|e| e.into_inner());
        if let Position::Leading {
            isr: current, min_insync: current_min, replicas: current_replicas, joining, ..
        } = &mut *position
        {
            *current_replicas = replicas;
            if *current == isr && *current_min == min_insync {
                return;
            }
            tracing::info!(isr = ?isr, min_insync, "in-sync replicas changed");
            joining.retain(|id, _| !isr.contains(id));
            self.followers.set_rule(self.isr_rule(&isr, min_insync, joining));
            *current = isr;
            *current_min = min_insync;
        }
    }

    /// Follows `leader`, the leader of `epoch`: copies its log if this node is a replica
    /// (`replicate`), and in any case sends it this node's clients' requests.
    pub async fn follow_leader(
        self: &Arc<Self>,
        leader: LeaderInfo,
        epoch: Epoch,
        replicate: bool,
    ) -> Result<(), StorageError> {
        self.step_down();
        self.stop_following().await;
        self.log.observe_epoch(epoch)?;
        tracing::info!(partition = self.partition(), leader = %leader.id, epoch, "following the partition's leader");
        let target = Target { grpc_addr: leader.grpc_addr.clone(), epoch: Some(epoch) };
        let route = Route::Forward { leader_id: leader.id.clone(), grpc_addr: leader.grpc_addr.clone() };
        self.leadership.set(Position::Following { leader, epoch, replicating: replicate }, route);
        self.upstream.connected.store(false, Ordering::Relaxed);
        if !replicate {
            return Ok(());
        }
        let (stop, stopping) = watch::channel(false);
        let task = tokio::spawn(follow(Arc::clone(self), target, stopping));
        *self.leadership.following.lock().await = Some(Following { stop, task });
        Ok(())
    }

    /// No leader is known for `epoch`: requests wait for one.
    pub async fn await_leader(self: &Arc<Self>, epoch: Epoch) -> Result<(), StorageError> {
        self.step_down();
        self.stop_following().await;
        self.log.observe_epoch(epoch)?;
        self.leadership.set(Position::Electing { epoch }, Route::Electing);
        Ok(())
    }

    /// This node may no longer be leading (its lease lapsed): refuse writes and send
    /// requests nowhere until the quorum says more.
    pub fn suspend(&self) {
        let position = self.position();
        if matches!(position, Position::Leading { .. }) {
            tracing::warn!("lost touch with the metadata quorum: no longer serving as leader");
        }
        let epoch = position.epoch();
        self.step_down();
        self.leadership.set(Position::Electing { epoch }, Route::Electing);
    }

    fn step_down(&self) {
        if matches!(self.followers.rule(), AckRule::NotLeading) {
            return;
        }
        // What this leadership committed stays known (as a follower knows its leader's
        // word): a divergent tail is never cut below it, and a later leadership of this
        // node starts from it.
        self.upstream.known_committed.fetch_max(self.high_watermark(), Ordering::Relaxed);
        self.followers.set_rule(AckRule::NotLeading);
    }

    async fn stop_following(&self) {
        let following = self.leadership.following.lock().await.take();
        if let Some(Following { stop, task }) = following {
            let _ = stop.send(true);
            if let Err(err) = task.await {
                tracing::error!(%err, "the follower loop failed");
            }
        }
    }

    fn isr_rule(&self, isr: &BTreeSet<String>, min_insync: usize, joining: &BTreeMap<String, Offset>) -> AckRule {
        let me = &self.config.node_id;
        let wait = isr.iter().chain(joining.keys()).filter(|id| *id != me).cloned().collect();
        AckRule::Isr { wait, isr_size: isr.len(), min_insync }
    }

    /// Starts waiting for `id`'s acknowledgements as if it were in sync, before the quorum
    /// is asked to add it: no write is acknowledged without it from now on, so once it
    /// holds everything below the offset recorded for it (see [`Replication::joining`]) it
    /// holds every acknowledged write. Nothing happens unless this node leads.
    pub fn begin_joining(&self, id: &str) {
        let mut position = self.leadership.position.lock().unwrap_or_else(|e| e.into_inner());
        if let Position::Leading { isr, min_insync, joining, .. } = &mut *position {
            joining.insert(id.to_string(), Offset::MAX);
            self.followers.set_rule(self.isr_rule(isr, *min_insync, joining));
            // Read after the rule: a write appended before it may have been acknowledged
            // without `id`, and lies below this.
            joining.insert(id.to_string(), self.log.next_offset());
        }
    }

    /// The offset `id` must reach to be proposed into the ISR, while it is being brought in.
    pub fn joining(&self, id: &str) -> Option<Offset> {
        match &*self.leadership.position.lock().unwrap_or_else(|e| e.into_inner()) {
            Position::Leading { joining, .. } => joining.get(id).copied(),
            _ => None,
        }
    }

    /// `id` is no longer being brought in (it went away, or the quorum refused it).
    pub fn abandon_joining(&self, id: &str) {
        let mut position = self.leadership.position.lock().unwrap_or_else(|e| e.into_inner());
        if let Position::Leading { isr, min_insync, joining, .. } = &mut *position
            && joining.remove(id).is_some()
        {
            self.followers.set_rule(self.isr_rule(isr, *min_insync, joining));
        }
    }

    /// Every record below this is held by the whole ISR (the high watermark), as far as
    /// this node knows: its own count when leading, the leader's word when following.
    /// Read per chunk a fetch stream sends: no lock, no copy of the position.
    pub fn high_watermark(&self) -> Offset {
        let watermark = if self.is_leading() {
            self.followers.replicated()
        } else {
            self.upstream.known_committed.load(Ordering::Relaxed)
        };
        watermark.min(self.log.next_offset())
    }

    /// The log's next offset.
    pub fn log_end(&self) -> Offset {
        self.log.next_offset()
    }

    /// How far `id` has acknowledged, and whether it is connected now (leader side).
    pub fn follower_progress(&self, id: &str) -> (Offset, bool) {
        (self.followers.durable(id), self.followers.is_connected(id))
    }

    /// Ends cluster-mode leadership and following for shutdown.
    pub async fn leave(&self) {
        self.step_down();
        self.stop_following().await;
    }
}
