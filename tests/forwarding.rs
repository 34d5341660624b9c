//! Forwarding: a node whose route names another leader takes any command, sends the data
//! commands to that leader over the internal gRPC stream, and relays the replies.
//!
//! In process: a "leader" is `server::run_node_with` with a forward endpoint, plus the
//! forward service on its own port; a "follower" is a server whose test cluster gives the
//! route, switched by the test.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{CountingForwarder, DEADLINE, TestClient, TestRoutes, resp};
use msglog::replication::{ForwardClient, ForwardConfig, serve_forwarding};
use msglog::server::{self, Cluster, ForwardEndpoint, Forwarder, Forwarding, Password, Route, ServerConfig};
use msglog::storage::{Config, Log};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A server in process; with `routes`, one that follows them.
struct Node {
    addr: SocketAddr,
    grpc: SocketAddr,
    log: Arc<Log>,
    routes: Arc<TestRoutes>,
    _dir: TempDir,
    stop: Option<(oneshot::Sender<()>, oneshot::Sender<()>)>,
    tasks: Vec<JoinHandle<()>>,
}

fn forward_config() -> ForwardConfig {
    forward_config_with(None)
}

fn forward_config_with(password: Option<&str>) -> ForwardConfig {
    let password = password.map(|p| Password::new(p).expect("a valid password"));
    ForwardConfig { password, bind_source_addr: None, max_message_bytes: 1024 * 1024 }
}

impl Node {
    /// A leader: it serves forwarded requests on `grpc`.
    async fn leader() -> Node {
        Node::start(Route::Local, None, ROUTE_WAIT).await
    }

    /// A node routed by `route`, forwarding through `forwarder`.
    async fn start(route: Route, forwarder: Option<Arc<dyn Forwarder>>, route_wait: Duration) -> Node {
        Node::start_with(route, forwarder, route_wait, None).await
    }

    /// [`Node::start`] with a password, which clients and forwarding nodes must present.
    async fn start_with(
        route: Route,
        forwarder: Option<Arc<dyn Forwarder>>,
        route_wait: Duration,
        password: Option<&str>,
    ) -> Node {
        let dir = TempDir::new().expect("temp dir");
        let log = Arc::new(Log::open(dir.path(), Config::default()).expect("open log"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let grpc_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (addr, grpc) = (listener.local_addr().unwrap(), grpc_listener.local_addr().unwrap());
        let routes = TestRoutes::new(route);
        let endpoint = ForwardEndpoint::new();
        let forwarding = Forwarding { forwarder, endpoint: Some(endpoint.clone()), route_wait };
        let service_config = forward_config_with(password);
        let config =
            ServerConfig { stats_interval: None, password: service_config.password.clone(), ..ServerConfig::default() };
        let (stop_server, server_stopped) = oneshot::channel::<()>();
        let (stop_grpc, grpc_stopped) = oneshot::channel::<()>();
        let cluster: Arc<dyn Cluster> = routes.clone();
        let server = tokio::spawn({
            let log = Arc::clone(&log);
            async move {
                let stopped = async move {
                    let _ = server_stopped.await;
                };
                server::run_node_with(listener, log, config, Some(cluster), forwarding, stopped).await.expect("serve");
            }
        });
        let grpc_task = tokio::spawn(async move {
            let stopped = async move {
                let _ = grpc_stopped.await;
            };
            serve_forwarding(grpc_listener, endpoint, service_config, stopped).await.expect("serve forwarding");
        });
        Node {
            addr,
            grpc,
            log,
            routes,
            _dir: dir,
            stop: Some((stop_server, stop_grpc)),
            tasks: vec![server, grpc_task],
        }
    }

    /// A follower of `leader`, through a real gRPC forward client.
    async fn follower_of(leader: &Node, route_wait: Duration) -> Node {
        let forwarder: Arc<dyn Forwarder> = ForwardClient::new(forward_config());
        Node::start(route_to(leader), Some(forwarder), route_wait).await
    }

    fn route(&self, route: Route) {
        self.routes.routes.send_replace(route);
    }

    async fn connect(&self) -> TestClient {
        TestClient::connect(self.addr).await
    }

    /// Stops serving clients and forwarded streams, and waits until both have stopped.
    async fn stop(mut self) {
        if let Some((server, grpc)) = self.stop.take() {
            let _ = server.send(());
            let _ = grpc.send(());
        }
        for task in self.tasks.drain(..) {
            tokio::time::timeout(DEADLINE, task).await.expect("node stops").expect("node task");
        }
    }
}

/// How long a request waits for a leader, where a test does not say otherwise.
const ROUTE_WAIT: Duration = Duration::from_secs(5);

/// A leader, a follower of it (through a real gRPC forward client) and a client of the
/// follower.
async fn leader_and_follower(route_wait: Duration) -> (Node, Node, TestClient) {
    let leader = Node::leader().await;
    let follower = Node::follower_of(&leader, route_wait).await;
    let client = follower.connect().await;
    (leader, follower, client)
}

/// Stops `nodes` one after the other, in the order given.
async fn stop_all<const N: usize>(nodes: [Node; N]) {
    for node in nodes {
        node.stop().await;
    }
}

fn route_to(leader: &Node) -> Route {
    Route::Forward { leader_id: "leader".to_string(), grpc_addr: leader.grpc.to_string() }
}

fn value(log: &Log, id: &[u8]) -> Option<Vec<u8>> {
    log.get(id).expect("read the log")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_set_get_del_through_a_follower_land_on_the_leader() {
    let (leader, follower, mut client) = leader_and_follower(ROUTE_WAIT).await;

    assert_eq!(client.request(b"SET greeting hello  there ").await, b"OK");
    assert_eq!(value(&leader.log, b"greeting").as_deref(), Some(&b"hello  there "[..]));
    assert_eq!(value(&follower.log, b"greeting"), None, "the follower's own log is not written");
    assert_eq!(client.request(b"GET greeting").await, b"hello  there ");
    assert_eq!(client.request(b"PING").await, b"PONG", "answered here");
    assert_eq!(client.request(b"DEL greeting").await, b"OK");
    assert_eq!(value(&leader.log, b"greeting"), None);
    assert_eq!(client.request(b"GET greeting").await, b"NOT_FOUND");
    assert_eq!(client.request(b"DEL greeting").await, b"NOT_FOUND");
    assert!(client.request(b"SET").await.starts_with(b"ERR"), "a malformed request still gets its error");

    stop_all([follower, leader]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_keep_their_order_across_forwarded_and_local_ones() {
    let (leader, follower, mut client) = leader_and_follower(ROUTE_WAIT).await;

    let mut requests = Vec::new();
    let mut expected = Vec::new();
    for i in 0..1000 {
        let line = match i % 4 {
            0 => format!("SET k{} v{i}\n", i / 4),
            1 => format!("GET k{}\n", i / 4),
            2 => "PING\n".to_string(),
            _ => format!("DEL k{}\n", i / 4),
        };
        requests.extend_from_slice(line.as_bytes());
        expected.push(match i % 4 {
            0 | 3 => b"OK".to_vec(),
            1 => format!("v{}", i - 1).into_bytes(),
            _ => b"PONG".to_vec(),
        });
    }
    let replies = client.pipeline(&requests, expected.len()).await;
    for (i, (got, want)) in replies.iter().zip(&expected).enumerate() {
        assert_eq!(got.escape_ascii().to_string(), want.escape_ascii().to_string(), "reply {i}");
    }
    assert_eq!(leader.log.stats().records, 500, "250 SETs and 250 DELs, all on the leader");

    stop_all([follower, leader]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp_mset_mget_and_multi_exec_through_a_follower() {
    let (leader, follower, mut client) = leader_and_follower(ROUTE_WAIT).await;
    let mut exchange = async |request: Vec<u8>, reply: &[u8]| {
        let got = client.exchange(&request, reply.len()).await;
        assert_eq!(got.escape_ascii().to_string(), reply.escape_ascii().to_string());
    };

    exchange(resp(&[b"MSET", b"a", b"1", b"b", b"22"]), b"+OK\r\n").await;
    exchange(resp(&[b"MGET", b"a", b"b", b"c"]), b"*3\r\n$1\r\n1\r\n$2\r\n22\r\n$-1\r\n").await;
    exchange(resp(&[b"EXISTS", b"a", b"c"]), b":1\r\n").await;
    exchange(resp(&[b"MULTI"]), b"+OK\r\n").await;
    exchange(resp(&[b"SET", b"x", b"10"]), b"+QUEUED\r\n").await;
    exchange(resp(&[b"GET", b"x"]), b"+QUEUED\r\n").await;
    exchange(resp(&[b"DEL", b"a"]), b"+QUEUED\r\n").await;
    exchange(resp(&[b"EXEC"]), b"*3\r\n+OK\r\n$2\r\n10\r\n:1\r\n").await;
    // The reply is encoded in the protocol this connection negotiated, here.
    exchange(resp(&[b"HELLO", b"3"]), b"%7\r\n").await;
    let _ = client.read_reply().await; // the rest of HELLO's map, line by line
    while !client.read_reply().await.starts_with(b"*0") {}
    client.send(&resp(&[b"GET", b"a"])).await;
    client.expect(b"_\r\n").await;

    assert_eq!(value(&leader.log, b"x").as_deref(), Some(&b"10"[..]));
    assert_eq!(value(&leader.log, b"a"), None, "deleted by the transaction");
    assert_eq!(value(&leader.log, b"b").as_deref(), Some(&b"22"[..]));
    assert_eq!(follower.log.stats().records, 0);

    stop_all([follower, leader]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waits_through_an_unreachable_leader_and_an_election_then_is_served() {
    let leader = Node::leader().await;
    // A port nothing listens on: the leader of the old route is gone.
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let counting = Arc::new(CountingForwarder { inner: ForwardClient::new(forward_config()), attempts: 0.into() });
    let forwarder: Arc<dyn Forwarder> = counting.clone();
    let dead = Route::Forward { leader_id: "gone".to_string(), grpc_addr: gone.to_string() };
    let follower = Node::start(dead, Some(forwarder), DEADLINE).await;
    let mut client = follower.connect().await;

    client.send(b"SET waited yes\n").await;
    common::poll_until("the request tried the unreachable leader twice", || {
        (counting.attempts.load(Ordering::SeqCst) >= 2).then_some(())
    });
    follower.route(Route::Electing);
    follower.route(route_to(&leader));

    assert_eq!(client.read_reply().await, b"OK");
    assert_eq!(value(&leader.log, b"waited").as_deref(), Some(&b"yes"[..]));

    stop_all([follower, leader]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_election_that_does_not_end_gives_an_error_not_a_hang() {
    let forwarder: Arc<dyn Forwarder> = ForwardClient::new(forward_config());
    let follower = Node::start(Route::Electing, Some(forwarder), Duration::from_millis(200)).await;
    let mut client = follower.connect().await;

    let reply = String::from_utf8(client.request(b"SET k v").await).unwrap();
    assert!(reply.starts_with("ERR leader unavailable: no leader is known"), "{reply}");
    assert!(reply.ends_with("the request was not applied"), "{reply}");
    assert_eq!(client.request(b"PING").await, b"PONG", "connection-local commands do not wait");

    follower.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_leader_gives_an_error_not_a_hang() {
    let (leader, follower, mut client) = leader_and_follower(Duration::from_millis(300)).await;
    assert_eq!(client.request(b"SET before 1").await, b"OK");

    leader.stop().await;
    let reply = String::from_utf8(client.request(b"SET after 2").await).unwrap();
    assert!(reply.starts_with("ERR leader unavailable: "), "{reply}");
    let reply = String::from_utf8(client.request(b"GET before").await).unwrap();
    assert!(reply.starts_with("ERR leader unavailable: "), "{reply}");

    follower.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_no_longer_leads_refuses_forwarded_requests_without_executing_them() {
    let (leader, follower, mut client) = leader_and_follower(ROUTE_WAIT).await;
    assert_eq!(client.request(b"SET first 1").await, b"OK");

    leader.route(Route::Electing);
    let reply = String::from_utf8(client.request(b"SET second 2").await).unwrap();
    assert!(reply.starts_with("ERR leader unavailable: "), "{reply}");
    assert!(reply.contains("no longer leads"), "{reply}");
    assert!(reply.ends_with("the request was not applied"), "{reply}");
    assert_eq!(value(&leader.log, b"second"), None, "never executed");

    stop_all([follower, leader]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_authenticate_where_they_connect_and_forwarding_needs_the_cluster_password() {
    const SECRET: &str = "forwarding-secret";
    let leader = Node::start_with(Route::Local, None, DEADLINE, Some(SECRET)).await;
    let forwarder: Arc<dyn Forwarder> = ForwardClient::new(forward_config_with(Some(SECRET)));
    let follower = Node::start_with(route_to(&leader), Some(forwarder), DEADLINE, Some(SECRET)).await;
    let mut client = follower.connect().await;
    assert!(client.request(b"SET k v").await.starts_with(b"ERR NOAUTH"), "not forwarded before AUTH");
    assert_eq!(value(&leader.log, b"k"), None);
    assert_eq!(client.request(format!("AUTH {SECRET}").as_bytes()).await, b"OK");
    assert_eq!(client.request(b"SET k v").await, b"OK");
    assert_eq!(value(&leader.log, b"k").as_deref(), Some(&b"v"[..]));

    let wrong: Arc<dyn Forwarder> = ForwardClient::new(forward_config_with(Some("not-the-secret")));
    let outsider = Node::start_with(route_to(&leader), Some(wrong), Duration::from_millis(200), Some(SECRET)).await;
    let mut client = outsider.connect().await;
    assert_eq!(client.request(format!("AUTH {SECRET}").as_bytes()).await, b"OK");
    let reply = String::from_utf8(client.request(b"SET k stolen").await).unwrap();
    assert!(reply.starts_with("ERR leader unavailable: cannot forward to"), "{reply}");
    assert!(reply.contains("password"), "says why: {reply}");
    assert!(reply.ends_with("the request was not applied"), "{reply}");
    assert_eq!(value(&leader.log, b"k").as_deref(), Some(&b"v"[..]));

    stop_all([outsider, follower, leader]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_message_is_forwarded_and_relayed_whole() {
    let (leader, follower, mut client) = leader_and_follower(ROUTE_WAIT).await;
    let message: Vec<u8> = (0..1024 * 1024).map(|i| b'a' + (i % 26) as u8).collect();

    assert_eq!(client.request(&[&b"SET big "[..], &message].concat()).await, b"OK");
    assert_eq!(client.request(b"GET big").await, message);
    let request = [resp(&[b"SET", b"big2", &message]), resp(&[b"GET", b"big2"])].concat();
    let reply = [&b"+OK\r\n"[..], format!("${}\r\n", message.len()).as_bytes(), &message, b"\r\n"].concat();
    let mut resp_client = follower.connect().await;
    assert!(resp_client.exchange(&request, reply.len()).await == reply, "RESP SET and GET of the largest message");
    assert_eq!(value(&leader.log, b"big2"), Some(message));

    stop_all([follower, leader]).await;
}
