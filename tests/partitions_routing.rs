//! Routing per partition (docs/FORMAT.md, "Serving several partitions"): a node serving
//! two partitions leads one and forwards the other's data commands to that partition's
//! leader; commands whose keys span both are split, each part run where its partition is
//! led, and the replies joined.
//!
//! In process, as in tests/forwarding.rs: node X leads partition 0 and routes partition 1
//! to node Y, which leads partition 1 and serves forwarded requests on its own port. The
//! test sets each partition's route.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::{CountingForwarder, DEADLINE, TestClient, TestRoutes, ids_in, line, resp};
use msglog::replication::{ForwardClient, ForwardConfig, serve_forwarding};
use msglog::server::{self, Cluster, ForwardEndpoint, Forwarder, Forwarding, PartitionLog, Route, ServerConfig};
use msglog::storage::{Config, Log};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A server over two partitions, each routed as the test says, serving forwarded requests.
struct Node {
    addr: SocketAddr,
    grpc: SocketAddr,
    logs: Vec<Arc<Log>>,
    routes: Vec<Arc<TestRoutes>>,
    _dirs: Vec<TempDir>,
    stop: Option<(oneshot::Sender<()>, oneshot::Sender<()>)>,
    tasks: Vec<JoinHandle<()>>,
}

const P: u32 = 2;

fn forward_config() -> ForwardConfig {
    ForwardConfig { password: None, bind_source_addr: None, max_message_bytes: 1024 * 1024 }
}

impl Node {
    /// Partition `p` routed by `routes[p]`; forwarding through `forwarder`.
    async fn start(routes: [Route; P as usize], forwarder: Option<Arc<dyn Forwarder>>) -> Node {
        let dirs: Vec<TempDir> = routes.iter().map(|_| TempDir::new().expect("temp dir")).collect();
        let logs: Vec<Arc<Log>> =
            dirs.iter().map(|dir| Arc::new(Log::open(dir.path(), Config::default()).expect("open log"))).collect();
        let routes: Vec<Arc<TestRoutes>> = routes.into_iter().map(TestRoutes::new).collect();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let grpc_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (addr, grpc) = (listener.local_addr().unwrap(), grpc_listener.local_addr().unwrap());
        let endpoint = ForwardEndpoint::new();
        let forwarding = Forwarding { forwarder, endpoint: Some(endpoint.clone()), route_wait: DEADLINE };
        let config = ServerConfig { stats_interval: None, ..ServerConfig::default() };
        let partitions: Vec<PartitionLog> = logs
            .iter()
            .zip(&routes)
            .map(|(log, routes)| {
                let cluster: Arc<dyn Cluster> = routes.clone();
                (Arc::clone(log), Some(cluster))
            })
            .collect();
        let (stop_server, server_stopped) = oneshot::channel::<()>();
        let (stop_grpc, grpc_stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let stopped = async move {
                let _ = server_stopped.await;
            };
            server::serve(listener, partitions, config, forwarding, stopped).await.expect("serve");
        });
        let grpc_task = tokio::spawn(async move {
            let stopped = async move {
                let _ = grpc_stopped.await;
            };
            serve_forwarding(grpc_listener, endpoint, forward_config(), stopped).await.expect("serve forwarding");
        });
        Node {
            addr,
            grpc,
            logs,
            routes,
            _dirs: dirs,
            stop: Some((stop_server, stop_grpc)),
            tasks: vec![server, grpc_task],
        }
    }

    fn route(&self, partition: u32, route: Route) {
        self.routes[partition as usize].set(route);
    }

    /// What this node's log of `partition` holds for `id`.
    fn value(&self, partition: u32, id: &[u8]) -> Option<Vec<u8>> {
        self.logs[partition as usize].get(id).expect("read the log")
    }

    async fn connect(&self) -> TestClient {
        TestClient::connect(self.addr).await
    }

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

fn led_by(leader: &Node, name: &str) -> Route {
    Route::Forward { leader_id: name.to_string(), grpc_addr: leader.grpc.to_string() }
}

/// Y leads partition 1 only; X leads partition 0 and forwards partition 1 to Y through a
/// real gRPC forward client.
async fn two_leaders() -> (Node, Node) {
    let y = Node::start([Route::Electing, Route::Local], None).await;
    let forwarder: Arc<dyn Forwarder> = ForwardClient::new(forward_config());
    let x = Node::start([Route::Local, led_by(&y, "y")], Some(forwarder)).await;
    (x, y)
}

/// `n` IDs of partition 0 and `n` of partition 1.
fn keys(n: usize) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    (ids_in(0, P, n), ids_in(1, P, n))
}

async fn stop(x: Node, y: Node) {
    x.stop().await;
    y.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_is_written_and_read_where_its_partition_is_led() {
    let (x, y) = two_leaders().await;
    let ((zero, one), mut client) = (keys(1), x.connect().await);
    let (k0, k1) = (String::from_utf8(zero[0].clone()).unwrap(), String::from_utf8(one[0].clone()).unwrap());

    assert_eq!(client.request(format!("SET {k0} here").as_bytes()).await, b"OK");
    assert_eq!(client.request(format!("SET {k1} there").as_bytes()).await, b"OK");
    assert_eq!(x.value(0, k0.as_bytes()).as_deref(), Some(&b"here"[..]));
    assert_eq!(y.value(1, k1.as_bytes()).as_deref(), Some(&b"there"[..]), "partition 1's write is on its leader");
    assert_eq!(x.value(1, k1.as_bytes()), None, "not in X's copy of partition 1");
    assert_eq!(y.value(0, k0.as_bytes()), None, "not in Y's copy of partition 0");
    assert_eq!(client.request(format!("GET {k0}").as_bytes()).await, b"here");
    assert_eq!(client.request(format!("GET {k1}").as_bytes()).await, b"there");

    let mut resp_client = x.connect().await;
    let got = resp_client.exchange(&resp(&[b"GET", k1.as_bytes()]), 11).await;
    assert_eq!(got, b"$5\r\nthere\r\n");
    assert_eq!(line(&mut resp_client, &[b"SET", k1.as_bytes(), b"again"]).await, "+OK");
    assert_eq!(y.value(1, k1.as_bytes()).as_deref(), Some(&b"again"[..]));

    stop(x, y).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mset_across_two_leaders_applies_both_parts() {
    let (x, y) = two_leaders().await;
    let ((zero, one), mut client) = (keys(2), x.connect().await);

    let request = resp(&[b"MSET", &one[0], b"a", &zero[0], b"b", &one[1], b"c", &zero[1], b"d"]);
    assert_eq!(client.exchange(&request, 5).await, b"+OK\r\n");
    assert_eq!(y.value(1, &one[0]).as_deref(), Some(&b"a"[..]));
    assert_eq!(y.value(1, &one[1]).as_deref(), Some(&b"c"[..]));
    assert_eq!(x.value(0, &zero[0]).as_deref(), Some(&b"b"[..]));
    assert_eq!(x.value(0, &zero[1]).as_deref(), Some(&b"d"[..]));
    assert_eq!(x.logs[1].stats().records, 0, "X's copy of partition 1 is not written");
    assert_eq!(y.logs[0].stats().records, 0, "Y's copy of partition 0 is not written");

    stop(x, y).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mget_over_both_partitions_answers_in_key_order() {
    let (x, y) = two_leaders().await;
    let ((zero, one), mut client) = (keys(2), x.connect().await);
    for (id, value) in [(&one[0], &b"1"[..]), (&zero[0], b"0"), (&zero[1], b"00")] {
        assert_eq!(line(&mut client, &[b"SET", id, value]).await, "+OK");
    }
    assert_eq!(y.value(1, &one[0]).as_deref(), Some(&b"1"[..]));

    // one[1] was never set.
    let request = resp(&[b"MGET", &one[0], &zero[0], &one[1], &zero[1]]);
    let reply = b"*4\r\n$1\r\n1\r\n$1\r\n0\r\n$-1\r\n$2\r\n00\r\n";
    assert_eq!(
        client.exchange(&request, reply.len()).await.escape_ascii().to_string(),
        reply.escape_ascii().to_string()
    );

    // The joined reply is in the protocol the client chose.
    client.send(&resp(&[b"HELLO", b"3"])).await;
    while !client.read_reply().await.starts_with(b"*0") {}
    let reply = b"*4\r\n$1\r\n1\r\n$1\r\n0\r\n_\r\n$2\r\n00\r\n";
    assert_eq!(
        client.exchange(&request, reply.len()).await.escape_ascii().to_string(),
        reply.escape_ascii().to_string()
    );

    stop(x, y).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn del_and_exists_across_two_leaders_sum_their_counts() {
    let (x, y) = two_leaders().await;
    let ((zero, one), mut client) = (keys(2), x.connect().await);
    for id in [&zero[0], &zero[1], &one[0]] {
        assert_eq!(line(&mut client, &[b"SET", id, b"v"]).await, "+OK");
    }

    assert_eq!(line(&mut client, &[b"EXISTS", &zero[0], &one[0], &one[1], &zero[1]]).await, ":3");
    assert_eq!(line(&mut client, &[b"DEL", &one[0], &zero[0], &one[1]]).await, ":2");
    assert_eq!(y.value(1, &one[0]), None, "deleted on partition 1's leader");
    assert_eq!(x.value(0, &zero[0]), None);
    assert_eq!(x.value(0, &zero[1]).as_deref(), Some(&b"v"[..]));
    assert_eq!(line(&mut client, &[b"EXISTS", &zero[0], &one[0], &zero[1]]).await, ":1");

    stop(x, y).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_without_a_reachable_leader_holds_its_requests_until_it_has_one() {
    let y = Node::start([Route::Electing, Route::Local], None).await;
    // A port nothing listens on: partition 1's leader of the old route is gone.
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let counting = Arc::new(CountingForwarder { inner: ForwardClient::new(forward_config()), attempts: 0.into() });
    let forwarder: Arc<dyn Forwarder> = counting.clone();
    let dead = Route::Forward { leader_id: "gone".to_string(), grpc_addr: gone.to_string() };
    let x = Node::start([Route::Local, dead], Some(forwarder)).await;
    let ((zero, one), mut client) = (keys(1), x.connect().await);
    let mut on_y = y.connect().await;
    assert_eq!(line(&mut on_y, &[b"SET", &one[0], b"one"]).await, "+OK");
    assert_eq!(line(&mut client, &[b"SET", &zero[0], b"old"]).await, "+OK");

    // The MGET's partition-1 part cannot be sent; the SET and GET after it wait behind it,
    // though their partition is led here.
    let requests =
        [resp(&[b"MGET", &one[0], &zero[0]]), resp(&[b"SET", &zero[0], b"new"]), resp(&[b"GET", &zero[0]])].concat();
    client.send(&requests).await;
    common::poll_until("the MGET's part tried the unreachable leader twice", || {
        (counting.attempts.load(Ordering::SeqCst) >= 2).then_some(())
    });
    x.route(1, Route::Electing);
    x.route(1, led_by(&y, "y"));

    let replies = b"*2\r\n$3\r\none\r\n$3\r\nold\r\n+OK\r\n$3\r\nnew\r\n";
    let got = client.read_bytes(replies.len()).await;
    assert_eq!(got.escape_ascii().to_string(), replies.escape_ascii().to_string());
    assert_eq!(x.value(0, &zero[0]).as_deref(), Some(&b"new"[..]));

    // Partition 1 alone without a leader: a request for it waits for one, and then goes
    // there.
    x.route(1, Route::Electing);
    client.send(&resp(&[b"SET", &one[0], b"later"])).await;
    x.route(1, led_by(&y, "y"));
    assert_eq!(client.read_reply().await, b"+OK");
    assert_eq!(y.value(1, &one[0]).as_deref(), Some(&b"later"[..]));
    assert_eq!(x.value(1, &one[0]), None);

    stop(x, y).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_runs_on_the_node_that_leads_its_partition() {
    let (x, y) = two_leaders().await;
    let ((zero, one), mut client) = (keys(1), x.connect().await);

    assert_eq!(line(&mut client, &[b"MULTI"]).await, "+OK");
    assert_eq!(line(&mut client, &[b"SET", &zero[0], b"t"]).await, "+QUEUED");
    let got = client.exchange(&resp(&[b"EXEC"]), 9).await;
    assert_eq!(got, b"*1\r\n+OK\r\n");
    assert_eq!(x.value(0, &zero[0]).as_deref(), Some(&b"t"[..]));

    assert_eq!(line(&mut client, &[b"MULTI"]).await, "+OK");
    let refused = line(&mut client, &[b"SET", &one[0], b"t"]).await;
    assert!(refused.starts_with("-ERR partition 1 is led by y ("), "names the leader: {refused}");
    assert!(line(&mut client, &[b"EXEC"]).await.starts_with("-EXECABORT"));
    assert_eq!(y.value(1, &one[0]), None);
    assert_eq!(x.value(1, &one[0]), None);

    stop(x, y).await;
}
