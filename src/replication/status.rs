//! A node's replication state as typed values: what tests and the node handle read, and
//! what STATS renders as `key=value` pairs at the edge.

use std::sync::atomic::Ordering;

use crate::storage::Offset;

use super::{Position, Replication, Role};

/// Replication as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationStatus {
    Leader {
        /// Followers that must hold a write durably before it is acknowledged.
        tolerance: usize,
        /// Every follower seen since this node started, by id.
        followers: Vec<FollowerStatus>,
    },
    Follower {
        /// The gRPC address this node follows.
        leader_addr: String,
        /// The leader's node id and client address, once its hello said.
        leader: Option<KnownLeader>,
        /// A session with the leader is established now.
        connected: bool,
        /// Records the leader had that this node had not appended, as of the last chunk.
        lag: u64,
    },
    /// Cluster mode: leads or follows as the metadata quorum says.
    Member {
        position: Position,
        /// Every record below this is held by every in-sync replica.
        high_watermark: Offset,
        /// Leading: every follower seen since this node started, by id.
        followers: Vec<FollowerStatus>,
        /// Following: a session with the leader is established now.
        connected: bool,
        /// Following: records the leader had that this node had not appended.
        lag: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownLeader {
    pub node_id: String,
    pub client_addr: String,
}

/// A follower as its leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerStatus {
    pub id: String,
    /// Every record below this offset is durable on the follower.
    pub durable: Offset,
    /// Records the leader has that the follower has not acknowledged.
    pub lag: u64,
    /// It has a fetch stream open now.
    pub connected: bool,
    /// It has had a fetch stream open in this run (a follower a manual leader knows from an
    /// earlier run may not have come back yet).
    pub seen: bool,
    /// Fetch streams open for its ID: more than one for long means two followers share it.
    pub streams: usize,
}

impl ReplicationStatus {
    pub fn is_leader(&self) -> bool {
        matches!(
            self,
            ReplicationStatus::Leader { .. } | ReplicationStatus::Member { position: Position::Leading { .. }, .. }
        )
    }

    /// Followers with a stream open (0 on a follower).
    pub fn connected_followers(&self) -> usize {
        match self {
            ReplicationStatus::Leader { followers, .. } | ReplicationStatus::Member { followers, .. } => {
                followers.iter().filter(|f| f.connected).count()
            }
            ReplicationStatus::Follower { .. } => 0,
        }
    }

    /// The pairs STATS and the stats line show.
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        match self {
            ReplicationStatus::Leader { tolerance, followers } => {
                let mut pairs = vec![
                    ("followers".to_string(), self.connected_followers().to_string()),
                    ("tolerance".to_string(), tolerance.to_string()),
                ];
                push_followers(&mut pairs, followers);
                pairs
            }
            ReplicationStatus::Member { position, high_watermark, followers, connected, lag } => {
                let leader = match position {
                    Position::Leading { .. } => "self".to_string(),
                    Position::Following { leader, .. } => leader.id.clone(),
                    Position::Electing { .. } => "none".to_string(),
                };
                let mut pairs = vec![("leader".to_string(), leader), ("hw".to_string(), high_watermark.to_string())];
                match position {
                    Position::Leading { .. } => {
                        pairs.push(("followers".to_string(), self.connected_followers().to_string()));
                        push_followers(&mut pairs, followers);
                    }
                    Position::Following { .. } => {
                        pairs.push(("leader_connected".to_string(), connected.to_string()));
                        pairs.push(("lag".to_string(), lag.to_string()));
                    }
                    Position::Electing { .. } => {}
                }
                pairs
            }
            ReplicationStatus::Follower { leader_addr, leader, connected, lag } => vec![
                ("leader".to_string(), leader_addr.clone()),
                ("leader_id".to_string(), leader.as_ref().map_or_else(|| "unknown".to_string(), |l| l.node_id.clone())),
                ("leader_connected".to_string(), connected.to_string()),
                ("lag".to_string(), lag.to_string()),
            ],
        }
    }
}

/// `follower.<id>=acked:<last durable offset>,lag:<records>`, like the node's own
/// `durable_offset`; one pair per follower known (seen since the start, or recorded in
/// the data dir's `followers` file by an earlier run).
fn push_followers(pairs: &mut Vec<(String, String)>, followers: &[FollowerStatus]) {
    for f in followers {
        let state = if f.connected { "" } else { ",disconnected" };
        let acked = f.durable.checked_sub(1).map_or_else(|| "none".to_string(), |o| o.to_string());
        pairs.push((format!("follower.{}", f.id), format!("acked:{acked},lag:{}{state}", f.lag)));
    }
}

impl Replication {
    fn follower_statuses(&self, next: Offset) -> Vec<FollowerStatus> {
        self.followers
            .snapshot()
            .into_iter()
            .map(|f| FollowerStatus {
                lag: next.saturating_sub(f.durable),
                id: f.id,
                durable: f.durable,
                connected: f.connected,
                seen: f.seen,
                streams: f.streams,
            })
            .collect()
    }

    pub fn status(&self) -> ReplicationStatus {
        let next = self.log.next_offset();
        match &self.config.role {
            Role::Leader { tolerance, .. } => {
                ReplicationStatus::Leader { tolerance: *tolerance, followers: self.follower_statuses(next) }
            }
            Role::Cluster { .. } => {
                let position = self.position();
                let leading = matches!(position, Position::Leading { .. });
                let following = matches!(position, Position::Following { .. });
                ReplicationStatus::Member {
                    high_watermark: self.high_watermark(),
                    followers: if leading { self.follower_statuses(next) } else { Vec::new() },
                    connected: following && self.upstream.connected.load(Ordering::Relaxed),
                    lag: if following {
                        self.upstream.leader_next.load(Ordering::Relaxed).saturating_sub(next)
                    } else {
                        0
                    },
                    position,
                }
            }
            Role::Follower { leader } => {
                let known = self.upstream.leader.lock().unwrap_or_else(|e| e.into_inner()).clone();
                ReplicationStatus::Follower {
                    leader_addr: leader.clone(),
                    leader: known.map(|(client_addr, node_id)| KnownLeader { node_id, client_addr }),
                    connected: self.upstream.connected.load(Ordering::Relaxed),
                    lag: self.upstream.leader_next.load(Ordering::Relaxed).saturating_sub(next),
                }
            }
        }
    }
}
