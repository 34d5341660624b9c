//! A connection on a node that does not lead every partition: its data commands go to the
//! leader of their keys' partitions, and the replies come back into the connection's order.
//!
//! Each partition has its own route. A request whose partitions all name one leader is sent
//! to it at once; one whose partitions are led in different places is split, a part per
//! partition (see [`split`]); either reply is awaited when the batch is flushed, in order.
//! A request that could not be sent (an election, a leader that cannot be reached) is held,
//! and every data request after it on the connection too, whatever its partitions, so none
//! overtakes it; at flush it waits for its routes, up to the route wait, and then runs
//! wherever they say. A connection keeps a session on each leader it sent to, closed when
//! it ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use super::split::Split;
use crate::server::Route;
use crate::server::forward::{ForwardDialect, ForwardFailure, Forwarder, Outgoing};

/// Connection numbers on the forwarding node, unique while it runs.
static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// A forwarding node's routes (one per partition, in partition order) and link to
/// leaders, shared by its connections.
pub(crate) struct Diversion {
    routes: Vec<watch::Receiver<Route>>,
    forwarder: Arc<dyn Forwarder>,
    route_wait: Duration,
}

impl Diversion {
    pub(crate) fn new(
        routes: Vec<watch::Receiver<Route>>,
        forwarder: Arc<dyn Forwarder>,
        route_wait: Duration,
    ) -> Diversion {
        assert!(!routes.is_empty(), "a route per partition");
        Diversion { routes, forwarder, route_wait }
    }

    pub(crate) fn diverter(&self) -> Diverter {
        Diverter::new(self.routes.clone(), Arc::clone(&self.forwarder), self.route_wait)
    }

    /// Why partition `partition` is not served here now, if it is not: its leader is
    /// another node, or none is known.
    pub(crate) fn led_elsewhere(&self, partition: u32) -> Option<String> {
        match &*self.routes.get(partition as usize)?.borrow() {
            Route::Local => None,
            Route::Forward { leader_id, grpc_addr } => Some(format!(
                "partition {partition} is led by {leader_id} ({grpc_addr}); a transaction runs on the node that \
                 leads its partition: send it there"
            )),
            Route::Electing => {
                Some(format!("partition {partition} has no leader (an election is under way); try again"))
            }
        }
    }
}

/// A connection's forwarding state.
pub(crate) struct Diverter {
    id: u64,
    /// Partition `p`'s route is `routes[p]`.
    pub(super) routes: Vec<watch::Receiver<Route>>,
    forwarder: Arc<dyn Forwarder>,
    pub(super) route_wait: Duration,
    /// The leaders that hold a session of this connection, told when it ends.
    leaders: Vec<String>,
    /// A held request is pending in this batch: later data requests are held too, whatever
    /// their partitions.
    pub(super) holding: bool,
    /// Diverted requests in this batch, to be resolved before it is written.
    pub(super) diverted: usize,
}

/// Where a data request runs, decided by its partitions' routes as it is read.
pub(super) enum Plan {
    /// Every partition is led here (and nothing is held): run it now.
    Here,
    /// Send it whole to the one leader of its partitions, or hold it.
    Whole,
    /// Its partitions run in different places: one part each.
    Split,
}

/// A data request that does not run here as it is read; its reply is written in its turn.
pub(super) enum Diverted {
    Whole {
        dialect: ForwardDialect,
        frame: Bytes,
        /// The partitions its keys lie in, whose routes it follows.
        partitions: Vec<u32>,
        state: State,
    },
    Split(Split),
}

/// Where a sent request's reply arrives.
pub(super) type ReplyWait = oneshot::Receiver<Result<Bytes, ForwardFailure>>;

/// Waits are counted from when the batch is flushed, which follows its reading closely.
pub(super) enum State {
    Sent(ReplyWait),
    Held,
}

/// What routes say now for a request that waits.
pub(super) enum Routes {
    Here,
    Leader(String),
    Apart,
    /// This partition has no leader.
    Electing(u32),
}

impl Diverter {
    fn new(routes: Vec<watch::Receiver<Route>>, forwarder: Arc<dyn Forwarder>, route_wait: Duration) -> Diverter {
        let id = NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed);
        Diverter { id, routes, forwarder, route_wait, leaders: Vec::new(), holding: false, diverted: 0 }
    }

    /// Whether data commands may go elsewhere now; checked per request, so cheap.
    pub(super) fn active(&self) -> bool {
        self.holding || self.routes.iter().any(|routes| !matches!(*routes.borrow(), Route::Local))
    }

    pub(super) fn holding(&self) -> bool {
        self.holding
    }

    /// A request could not be sent: later ones wait behind it.
    pub(super) fn hold(&mut self) {
        self.holding = true;
    }

    pub(super) fn is_local(&self, partition: u32) -> bool {
        matches!(*self.route(partition).borrow(), Route::Local)
    }

    fn route(&self, partition: u32) -> &watch::Receiver<Route> {
        &self.routes[partition as usize]
    }

    /// Where a data request over `partitions` runs. (One route is borrowed at a time: two
    /// partitions may share a channel.)
    pub(super) fn plan(&self, partitions: &[u32]) -> Plan {
        if self.holding {
            return Plan::Whole;
        }
        if let [only] = partitions {
            return match *self.route(*only).borrow() {
                Route::Local => Plan::Here,
                _ => Plan::Whole,
            };
        }
        let routes: Vec<Route> = partitions.iter().map(|&p| self.route(p).borrow().clone()).collect();
        if routes.iter().all(|route| *route == routes[0]) {
            return if routes[0] == Route::Local { Plan::Here } else { Plan::Whole };
        }
        // A partition without a leader holds the request whole, to be split once it has one.
        match routes.contains(&Route::Electing) {
            true => Plan::Whole,
            false => Plan::Split,
        }
    }

    /// Sends `frame` to its partitions' leader, or holds it when it cannot be sent now.
    pub(super) fn divert(&mut self, dialect: ForwardDialect, frame: Bytes, partitions: Vec<u32>) -> Diverted {
        self.diverted += 1;
        if !self.holding
            && let Some(reply) = self.send(&partitions, dialect, &frame)
        {
            return Diverted::Whole { dialect, frame, partitions, state: State::Sent(reply) };
        }
        self.holding = true;
        Diverted::Whole { dialect, frame, partitions, state: State::Held }
    }

    /// A split request, counted as diverted.
    pub(super) fn split(&mut self, split: Split) -> Diverted {
        self.diverted += 1;
        Diverted::Split(split)
    }

    /// Sends `frame` to the leader every one of `partitions` names; `None` when they name
    /// no one leader, or it cannot be reached.
    pub(super) fn send(&mut self, partitions: &[u32], dialect: ForwardDialect, frame: &Bytes) -> Option<ReplyWait> {
        let grpc_addr = match &*self.route(partitions[0]).borrow() {
            Route::Forward { grpc_addr, .. } => grpc_addr.clone(),
            _ => return None,
        };
        if !partitions[1..].iter().all(|&p| forwards_to(&self.route(p).borrow(), &grpc_addr)) {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        let request = Outgoing { connection: self.id, dialect, frame: frame.clone(), close: false, reply: Some(tx) };
        self.forwarder.try_forward(&grpc_addr, request).ok()?;
        if !self.leaders.contains(&grpc_addr) {
            self.close_stale_sessions();
            self.leaders.push(grpc_addr);
        }
        Some(rx)
    }

    /// Drops this connection's sessions on leaders no route names any more: they are of
    /// no further use.
    fn close_stale_sessions(&mut self) {
        let routes = &self.routes;
        let (kept, stale): (Vec<String>, Vec<String>) = std::mem::take(&mut self.leaders)
            .into_iter()
            .partition(|leader| routes.iter().any(|route| forwards_to(&route.borrow(), leader)));
        self.leaders = kept;
        for leader in stale {
            self.close_on(&leader);
        }
    }

    /// What the routes of a waiting request's partitions say now (marking them seen).
    pub(super) fn settled(&mut self, partitions: &[u32]) -> Routes {
        let routes: Vec<Route> =
            partitions.iter().map(|&p| self.routes[p as usize].borrow_and_update().clone()).collect();
        if let Some(at) = routes.iter().position(|route| matches!(route, Route::Electing)) {
            return Routes::Electing(partitions[at]);
        }
        if routes[1..].iter().any(|route| *route != routes[0]) {
            return Routes::Apart;
        }
        match &routes[0] {
            Route::Local => Routes::Here,
            Route::Forward { grpc_addr, .. } => Routes::Leader(grpc_addr.clone()),
            Route::Electing => Routes::Electing(partitions[0]),
        }
    }

    /// Drops this connection's sessions on every leader (a RESET of a forwarded MULTI, or
    /// the connection's end).
    pub(super) fn close_leader_sessions(&mut self) {
        for leader in std::mem::take(&mut self.leaders) {
            self.close_on(&leader);
        }
    }

    fn close_on(&self, leader: &str) {
        let close = Outgoing {
            connection: self.id,
            dialect: ForwardDialect::Text,
            frame: Bytes::new(),
            close: true,
            reply: None,
        };
        let _ = self.forwarder.try_forward(leader, close);
    }
}

/// Whether `route` sends data commands to the leader at `grpc_addr`.
fn forwards_to(route: &Route, grpc_addr: &str) -> bool {
    matches!(route, Route::Forward { grpc_addr: to, .. } if to == grpc_addr)
}

impl Drop for Diverter {
    fn drop(&mut self) {
        self.close_leader_sessions();
    }
}
