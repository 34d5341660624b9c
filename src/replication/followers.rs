//! The leader's table of followers: who is connected, how far each is durable, and the
//! quorum a write waits for.
//!
//! A write at offset `o` is replicated once `tolerance` followers have acknowledged a
//! durable offset above `o`. The table keeps, for every change, the `tolerance`-th highest
//! durable offset (the "replicated watermark") in a `watch`, so waiting writes compare one
//! number. A follower that disconnects keeps counting for what it acknowledged: those
//! records are on its disk.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::server::Refusal;
use crate::storage::Offset;

use super::rules::replicated_watermark;

pub(super) struct Followers {
    tolerance: usize,
    table: Mutex<HashMap<String, Entry>>,
    quorum: watch::Sender<Quorum>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    /// Fetch streams open for this follower (a reconnect may overlap the old stream).
    streams: usize,
    /// Every record below this is durable on it.
    durable: Offset,
}

#[derive(Debug, Clone, Copy, Default)]
struct Quorum {
    /// Followers with a fetch stream open.
    connected: usize,
    /// Every record below this is durable on `tolerance` followers.
    replicated: Offset,
}

/// A follower as STATS shows it.
#[derive(Debug, Clone)]
pub(super) struct FollowerView {
    pub id: String,
    pub durable: Offset,
    pub connected: bool,
}

/// Held by a follower's fetch stream; dropping it marks the follower disconnected.
pub(super) struct Registration {
    followers: Arc<Followers>,
    id: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.followers.update(|table| {
            if let Some(entry) = table.get_mut(&self.id) {
                entry.streams -= 1;
            }
        });
        tracing::info!(follower = %self.id, "follower disconnected");
    }
}

impl Followers {
    pub fn new(tolerance: usize) -> Followers {
        let (quorum, _) = watch::channel(Quorum::default());
        Followers { tolerance, table: Mutex::new(HashMap::new()), quorum }
    }

    /// A follower's fetch stream passed the divergence check and is about to stream.
    pub fn connect(self: &Arc<Self>, id: &str) -> Registration {
        self.update(|table| {
            let entry = table.entry(id.to_string()).or_default();
            if entry.streams > 0 {
                // Either a reconnect racing its old stream's end, or two followers sharing
                // an ID, which the tolerance would count as one.
                tracing::warn!(follower = %id, "a second stream for this follower ID; give each follower its own --node-id");
            }
            entry.streams += 1;
        });
        Registration { followers: Arc::clone(self), id: id.to_string() }
    }

    /// `id` holds every record below `durable` durably. Ignored for an unknown follower.
    pub fn acknowledge(&self, id: &str, durable: Offset) {
        self.update(|table| {
            if let Some(entry) = table.get_mut(id) {
                entry.durable = entry.durable.max(durable);
            }
        });
    }

    /// Whether a write may start: enough followers are connected to acknowledge it.
    pub fn admit(&self) -> Result<(), Refusal> {
        let connected = self.quorum.borrow().connected;
        if connected < self.tolerance {
            return Err(Refusal(format!("not enough replicas (have {connected}, need {})", self.tolerance)));
        }
        Ok(())
    }

    /// Resolves once `offset` is durable on `tolerance` followers, or fails after `timeout`.
    pub async fn wait(&self, offset: Offset, timeout: Duration) -> Result<(), Refusal> {
        let mut quorum = self.quorum.subscribe();
        match tokio::time::timeout(timeout, quorum.wait_for(|q| q.replicated > offset)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(Refusal("replication stopped".to_string())),
            Err(_) => {
                let acked = self.lock().values().filter(|e| e.durable > offset).count();
                Err(Refusal(format!("replication timeout (acked {acked} of {})", self.tolerance)))
            }
        }
    }

    pub fn snapshot(&self) -> Vec<FollowerView> {
        let mut view: Vec<FollowerView> = self
            .lock()
            .iter()
            .map(|(id, e)| FollowerView { id: id.clone(), durable: e.durable, connected: e.streams > 0 })
            .collect();
        view.sort_by(|a, b| a.id.cmp(&b.id));
        view
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the table and republishes the quorum, under the table's lock so that
    /// concurrent updates publish in order.
    fn update(&self, change: impl FnOnce(&mut HashMap<String, Entry>)) {
        let mut table = self.lock();
        change(&mut table);
        let connected = table.values().filter(|e| e.streams > 0).count();
        let replicated = replicated_watermark(table.values().map(|e| e.durable), self.tolerance);
        self.quorum.send_if_modified(|q| {
            let changed = q.connected != connected || q.replicated != replicated;
            *q = Quorum { connected, replicated };
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admit_counts_connected_followers_only() {
        let followers = Arc::new(Followers::new(2));
        assert_eq!(followers.admit().unwrap_err().0, "not enough replicas (have 0, need 2)");
        let a = followers.connect("a");
        let _b = followers.connect("b");
        assert!(followers.admit().is_ok());
        drop(a);
        assert_eq!(followers.admit().unwrap_err().0, "not enough replicas (have 1, need 2)");
    }

    #[tokio::test]
    async fn a_write_waits_for_tolerance_acks_and_times_out_naming_the_count() {
        let followers = Arc::new(Followers::new(2));
        let _a = followers.connect("a");
        let _b = followers.connect("b");
        followers.acknowledge("a", 11);
        let timeout = Duration::from_millis(20);
        assert_eq!(followers.wait(10, timeout).await.unwrap_err().0, "replication timeout (acked 1 of 2)");
        followers.acknowledge("b", 11);
        followers.wait(10, timeout).await.expect("both acknowledged offset 10");
        followers.acknowledge("stranger", 100);
        assert_eq!(followers.wait(11, timeout).await.unwrap_err().0, "replication timeout (acked 0 of 2)");
    }
}
