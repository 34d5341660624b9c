//! The registry of Redis-protocol connections, for `CLIENT ID`, `CLIENT INFO` and
//! `CLIENT LIST`. Each RESP connection registers when its first byte is read and leaves
//! when it is dropped; text-protocol connections are counted (`connected_clients`) but
//! not listed, since they have no name, protocol version or transaction to show.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::protocol::resp::Protocol;

use super::Shared;

/// Every listed connection, by its ID.
#[derive(Debug, Default)]
pub(crate) struct Clients {
    /// IDs start at 1 and are never reused while the server runs, as in Redis.
    last_id: AtomicU64,
    live: Mutex<BTreeMap<u64, Arc<Client>>>,
}

/// One connection as `CLIENT LIST` shows it.
#[derive(Debug)]
pub(crate) struct Client {
    pub(crate) id: u64,
    peer: Option<SocketAddr>,
    local: Option<SocketAddr>,
    connected: Instant,
    /// Milliseconds after `connected` of its last request.
    last_request_ms: AtomicU64,
    details: Mutex<ClientDetails>,
}

/// What the client said about itself, and where its session stands.
#[derive(Debug, Default, Clone)]
pub(crate) struct ClientDetails {
    /// Empty: no name. Always printable ASCII without spaces (checked when set).
    pub(crate) name: String,
    pub(crate) lib_name: String,
    pub(crate) lib_version: String,
    pub(crate) protocol: Protocol,
    /// Commands queued by MULTI, if a transaction is open.
    pub(crate) queued: Option<usize>,
}

impl Clients {
    fn live(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<Client>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `CLIENT LIST` text: one line per connection, oldest first.
    pub(crate) fn list(&self) -> String {
        let clients: Vec<Arc<Client>> = self.live().values().cloned().collect();
        clients.iter().map(|client| client.line() + "\n").collect()
    }
}

impl Client {
    pub(crate) fn details(&self) -> MutexGuard<'_, ClientDetails> {
        self.details.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn touch(&self) {
        let ms = self.connected.elapsed().as_millis() as u64;
        self.last_request_ms.store(ms, Ordering::Relaxed);
    }

    /// Redis's `CLIENT INFO` line, with the fields that mean something here (fields about
    /// Redis's buffers and pub/sub are left out, and `fd` is not exposed).
    pub(crate) fn line(&self) -> String {
        let details = self.details().clone();
        let age = self.connected.elapsed();
        let idle = age.as_millis() as u64 - self.last_request_ms.load(Ordering::Relaxed).min(age.as_millis() as u64);
        let addr = |a: Option<SocketAddr>| a.map_or_else(String::new, |a| a.to_string());
        let mut line = String::new();
        let _ = write!(
            line,
            "id={} addr={} laddr={} name={} age={} idle={} flags={} db=0 sub=0 psub=0 multi={} user=default \
             resp={} lib-name={} lib-ver={}",
            self.id,
            addr(self.peer),
            addr(self.local),
            details.name,
            age.as_secs(),
            idle / 1000,
            if details.queued.is_some() { "x" } else { "N" },
            details.queued.map_or(-1, |n| n as i64),
            details.protocol.version(),
            details.lib_name,
            details.lib_version,
        );
        line
    }
}

/// A connection's place in the registry; leaving it (on drop) unlists the connection.
pub(crate) struct Registration {
    shared: Arc<Shared>,
    client: Arc<Client>,
}

impl Registration {
    pub(crate) fn new(shared: Arc<Shared>, peer: Option<SocketAddr>, local: Option<SocketAddr>) -> Registration {
        let clients = &shared.metrics.clients;
        let id = clients.last_id.fetch_add(1, Ordering::Relaxed) + 1;
        let client = Arc::new(Client {
            id,
            peer,
            local,
            connected: Instant::now(),
            last_request_ms: AtomicU64::new(0),
            details: Mutex::new(ClientDetails::default()),
        });
        clients.live().insert(id, client.clone());
        Registration { shared, client }
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared.metrics.clients.live().remove(&self.client.id);
    }
}
