//! The metadata quorum in process: voters on loopback ports form a Raft group, elect a
//! controller, register, fail over, fence the silent, and take a restarted node back.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use msglog::cluster::metadata::{FenceReason, MetaCommand, Metadata};
use msglog::cluster::quorum::{LogEpoch, Quorum, QuorumConfig, QuorumError};
use msglog::server::Password;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tokio_stream::wrappers::TcpListenerStream;

/// Only turns a hang into a failure.
const DEADLINE: Duration = Duration::from_secs(20);
const SESSION_TIMEOUT: Duration = Duration::from_secs(1);

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

/// One node: its Raft state dir, its gRPC port, and (while running) its quorum and server.
struct Node {
    id: String,
    addr: SocketAddr,
    dir: PathBuf,
    quorum: Arc<Quorum>,
    server: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

fn config(id: &str, addr: SocketAddr, voters: &[(String, String)], dir: &Path) -> QuorumConfig {
    QuorumConfig {
        node_id: id.to_string(),
        voters: voters.to_vec(),
        grpc_addr: addr.to_string(),
        client_addr: format!("127.0.0.1:{}", 1000 + addr.port() % 1000),
        dir: dir.to_path_buf(),
        session_timeout: SESSION_TIMEOUT,
        replace_dead_after: None,
        replication_factor: 3,
        partitions: 1,
        min_insync: 2,
        password: Some(Password::new("quorum-secret").expect("password")),
        node_tls: None,
        bind_source_addr: None,
        log_epoch: LogEpoch::fixed(0),
    }
}

/// A loopback listener on a port the OS chose, and its address.
async fn listen() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    (listener, addr)
}

impl Node {
    /// Starts a quorum on `listener` and serves it there.
    async fn start(config: QuorumConfig, listener: TcpListener) -> Result<Node, QuorumError> {
        let (id, dir) = (config.node_id.clone(), config.dir.clone());
        let addr = listener.local_addr().expect("addr");
        let quorum = Quorum::start(config).await?;
        let service = quorum.service();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let incoming = TcpListenerStream::new(listener);
            let server = tonic::transport::Server::builder().add_service(service);
            let _ = server.serve_with_incoming_shutdown(incoming, async { drop(stopped.await) }).await;
        });
        Ok(Node { id, addr, dir, quorum, server: Some((stop, task)) })
    }

    /// Stops as a crash would (no controlled shutdown), so only its session can expire.
    async fn crash(&mut self) {
        self.quorum.halt().await;
        if let Some((stop, task)) = self.server.take() {
            let _ = stop.send(());
            let _ = tokio::time::timeout(DEADLINE, task).await;
        }
    }

    fn metadata(&self) -> Arc<Metadata> {
        self.quorum.metadata().borrow().clone()
    }
}

/// Starts voters `ids` together (each may wait on the others while it forms).
async fn start_voters(ids: &[&str], root: &Path) -> (Vec<Node>, Vec<(String, String)>) {
    let mut listeners = Vec::new();
    for _ in ids {
        listeners.push(listen().await);
    }
    let voters: Vec<(String, String)> =
        ids.iter().zip(&listeners).map(|(id, (_, addr))| (id.to_string(), addr.to_string())).collect();
    let mut starting = JoinSet::new();
    for (id, (listener, addr)) in ids.iter().zip(listeners) {
        let config = config(id, addr, &voters, &root.join(id));
        starting.spawn(Node::start(config, listener));
    }
    let mut nodes = Vec::new();
    while let Some(started) = starting.join_next().await {
        nodes.push(started.expect("join").expect("start"));
    }
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    (nodes, voters)
}

/// Polls `probe` until it gives a value.
async fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Crashes every node still running, at a test's end.
async fn crash_all(nodes: &mut [Node]) {
    for node in nodes {
        node.crash().await;
    }
}

/// The controller every node in `nodes` agrees on.
fn agreed_controller(nodes: &[&Node]) -> Option<String> {
    let first = nodes.first()?.quorum.controller()?;
    nodes.iter().all(|n| n.quorum.controller().as_ref() == Some(&first)).then_some(first)
}

fn live(metadata: &Metadata, id: &str) -> bool {
    metadata.members.get(id).is_some_and(|m| !m.fenced)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voters_form_register_fail_over_fence_and_take_a_restarted_node_back() {
    init_tracing();
    let root = TempDir::new().expect("tempdir");
    let (mut nodes, voters) = start_voters(&["a", "b", "c"], root.path()).await;

    let all: Vec<&Node> = nodes.iter().collect();
    let controller = eventually("one controller all agree on", || agreed_controller(&all)).await;
    let formed = eventually("every node sees all three registered", || {
        let views: Vec<Arc<Metadata>> = nodes.iter().map(Node::metadata).collect();
        let complete = views[0].cluster_id.is_some() && ["a", "b", "c"].iter().all(|id| live(&views[0], id));
        (complete && views.iter().all(|v| v == &views[0])).then(|| views[0].clone())
    })
    .await;
    assert!(formed.members.values().all(|m| m.voter), "all three are voters: {formed:?}");
    eventually("every node's lease holds", || nodes.iter().all(|n| n.quorum.lease_valid()).then_some(())).await;

    let dead = nodes.iter().position(|n| n.id == controller).expect("controller is a node");
    let old_incarnation = formed.members[&controller].incarnation;
    nodes[dead].crash().await;
    let survivors: Vec<&Node> = nodes.iter().enumerate().filter(|(i, _)| *i != dead).map(|(_, n)| n).collect();
    let successor = eventually("a new controller", || agreed_controller(&survivors).filter(|c| *c != controller)).await;
    assert_ne!(successor, controller);
    eventually("the crashed controller is fenced once its session expired", || {
        survivors.iter().all(|n| !live(&n.metadata(), &controller)).then_some(())
    })
    .await;

    // Back on the same dir and port: its own log already holds the cluster it was in.
    let listener = TcpListener::bind(nodes[dead].addr).await.expect("rebind");
    let dir = nodes[dead].dir.clone();
    let restarted = Node::start(config(&controller, nodes[dead].addr, &voters, &dir), listener).await.expect("restart");
    assert_eq!(restarted.metadata().cluster_id, formed.cluster_id, "the log was recovered from disk");
    nodes[dead] = restarted;
    let all: Vec<&Node> = nodes.iter().collect();
    eventually("the restarted node registered again, unfenced, as a new process", || {
        all.iter()
            .all(|n| {
                n.metadata().members.get(&controller).is_some_and(|m| !m.fenced && m.incarnation != old_incarnation)
            })
            .then_some(())
    })
    .await;
    eventually("the restarted node's lease holds", || nodes[dead].quorum.lease_valid().then_some(())).await;
    crash_all(&mut nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_voter_receives_the_metadata_as_a_learner() {
    init_tracing();
    let root = TempDir::new().expect("tempdir");
    let (mut nodes, voters) = start_voters(&["a", "b", "c"], root.path()).await;
    let (listener, addr) = listen().await;
    let mut learner = Node::start(config("d", addr, &voters, &root.path().join("d")), listener).await.expect("start d");

    let seen = eventually("the non-voter sees all four members live", || {
        let view = learner.metadata();
        ["a", "b", "c", "d"].iter().all(|id| live(&view, id)).then_some(view)
    })
    .await;
    assert!(!seen.members["d"].voter, "d is not in --cluster, so it does not vote");
    assert!(seen.cluster_id.is_some());
    let controller = eventually("the learner knows the controller", || learner.quorum.controller()).await;
    assert!(voters.iter().any(|(id, _)| *id == controller), "a voter controls: {controller}");
    eventually("the learner's lease holds", || learner.quorum.lease_valid().then_some(())).await;

    // A controlled shutdown fences the node before it stops, so it sees itself fenced.
    learner.quorum.shutdown().await;
    assert!(!live(&learner.metadata(), "d"), "d fenced itself on the way out");
    assert!(!learner.quorum.lease_valid(), "a stopped node holds no lease");
    learner.crash().await;

    let at = nodes.iter().position(|n| n.id == controller).expect("a voter controls");
    nodes[at].quorum.shutdown().await;
    assert!(!live(&nodes[at].metadata(), &controller), "the controller fenced itself on the way out");
    nodes[at].crash().await;
    let survivors: Vec<&Node> = nodes.iter().filter(|n| n.id != controller).collect();
    eventually("a new controller after a controlled shutdown", || {
        agreed_controller(&survivors).filter(|c| *c != controller)
    })
    .await;
    crash_all(&mut nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_list_that_differs_from_the_groups_is_refused() {
    init_tracing();
    let root = TempDir::new().expect("tempdir");
    let (mut nodes, voters) = start_voters(&["a", "b", "c"], root.path()).await;
    let all: Vec<&Node> = nodes.iter().collect();
    eventually("a controller", || agreed_controller(&all)).await;

    // A fresh node whose --cluster swaps c for itself: the voters it asks hold another list.
    let (listener, addr) = listen().await;
    let mut wrong = voters[..2].to_vec();
    wrong.push(("e".to_string(), addr.to_string()));
    let refused = Node::start(config("e", addr, &wrong, &root.path().join("e")), listener).await.err();
    let message = refused.expect("a mismatching list is refused").to_string();
    assert!(message.contains("e=") && message.contains(&format!("c={}", voters[2].1)), "names both lists: {message}");

    // A voter's own dir remembers its group, even with nobody else reachable.
    let a = &mut nodes[0];
    a.crash().await;
    let mut moved = voters.clone();
    moved[2].1 = "127.0.0.1:1".to_string();
    let listener = TcpListener::bind(a.addr).await.expect("rebind");
    let refused = Node::start(config("a", a.addr, &moved, &a.dir), listener).await.err();
    assert!(matches!(refused, Some(QuorumError::VoterMismatch { .. })), "{refused:?}");

    for bad in [vec![], voters[..2].to_vec(), vec![voters[0].clone(), voters[0].clone(), voters[1].clone()]] {
        let (listener, addr) = listen().await;
        let started = Node::start(config("a", addr, &bad, &root.path().join("bad")), listener).await;
        assert!(matches!(started, Err(QuorumError::InvalidVoters(_))), "{bad:?} is not a voter list");
    }
    crash_all(&mut nodes[1..]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_under_a_live_id_and_a_wrong_password_are_refused() {
    init_tracing();
    let root = TempDir::new().expect("tempdir");
    let (mut nodes, voters) = start_voters(&["a", "b", "c"], root.path()).await;
    let all: Vec<&Node> = nodes.iter().collect();
    eventually("every node sees all three registered", || {
        all.iter().all(|n| ["a", "b", "c"].iter().all(|id| live(&n.metadata(), id))).then_some(())
    })
    .await;

    // b heartbeats, so a new process claiming its id must wait for b's session to expire.
    let b = nodes[1].metadata().members["b"].clone();
    let impostor = MetaCommand::Register {
        id: "b".to_string(),
        grpc_addr: "127.0.0.1:2".to_string(),
        client_addr: "127.0.0.1:3".to_string(),
        voter: true,
        incarnation: b.incarnation.wrapping_add(1),
        log_epoch: 0,
        log_epochs: Vec::new(),
    };
    let refused = nodes[0].quorum.propose(impostor).await;
    match refused {
        Err(QuorumError::Busy(why)) => assert!(why.contains("in use by a live process"), "{why}"),
        other => panic!("a live member's id was taken over: {other:?}"),
    }
    assert_eq!(nodes[2].metadata().members["b"].incarnation, b.incarnation);

    // A node without the cluster's password is turned away, and told why.
    let (listener, addr) = listen().await;
    let mut outsider = config("x", addr, &voters, &root.path().join("x"));
    outsider.password = Some(Password::new("wrong").expect("password"));
    let mut outsider = Node::start(outsider, listener).await.expect("a learner starts alone");
    let init = MetaCommand::Init {
        cluster_id: "other".to_string(),
        replication_factor: 1,
        min_insync: 1,
        partitions: 1,
        voters: Vec::new(),
    };
    let refused = outsider.quorum.propose(init).await;
    match refused {
        Err(QuorumError::Refused(why)) => assert!(why.contains("password"), "{why}"),
        other => panic!("a proposal without the password went through: {other:?}"),
    }
    assert!(all.iter().all(|n| !n.metadata().members.contains_key("x")), "x never registered");
    // Its own registration was refused too: the node learns it should stop, and why.
    let refusal = outsider.quorum.refusal();
    let why = eventually("x to learn that its registration was refused", || refusal.borrow().clone()).await;
    assert!(why.contains("password"), "{why}");
    outsider.crash().await;
    crash_all(&mut nodes).await;
}

/// The partition's leader and the controller on one node make a crash of that node cost
/// two failovers in a row; the controller hands its role over when it finds itself leading
/// the partition. If they start out apart, the test makes the controller the leader: it
/// adds the controller to the ISR and fences the leader, as a crash would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_hands_its_role_over_when_it_leads_the_partition() {
    init_tracing();
    let root = TempDir::new().expect("tempdir");
    let (mut nodes, _) = start_voters(&["a", "b", "c"], root.path()).await;
    let all: Vec<&Node> = nodes.iter().collect();
    let (controller, formed) = eventually("all three registered, one controller and one leader", || {
        let controller = agreed_controller(&all)?;
        let metadata = all[0].metadata();
        let complete =
            ["a", "b", "c"].iter().all(|id| live(&metadata, id)) && metadata.partition_or_empty(0).leader.is_some();
        complete.then_some((controller, metadata))
    })
    .await;
    let leader = formed.partition_or_empty(0).leader.clone().expect("a leader");
    if leader != controller {
        let mut isr = formed.partition_or_empty(0).isr.clone();
        isr.insert(controller.clone());
        let widen = MetaCommand::AlterIsr {
            partition: 0,
            leader: leader.clone(),
            epoch: formed.partition_or_empty(0).epoch,
            expected: formed.partition_or_empty(0).isr.clone(),
            isr,
        };
        nodes[0].quorum.propose(widen).await.expect("the controller joins the ISR");
        let fence = MetaCommand::Fence {
            id: leader.clone(),
            incarnation: formed.members[&leader].incarnation,
            reason: FenceReason::ControlledShutdown,
        };
        nodes[0].quorum.propose(fence).await.expect("the leader is fenced");
        let now = nodes[0].metadata().partition_or_empty(0).leader.clone();
        assert_eq!(now.as_ref(), Some(&controller), "the controller, the only other ISR member, leads");
    }
    let all: Vec<&Node> = nodes.iter().collect();
    eventually("the partition's leader and the controller on different nodes", || {
        let controller = agreed_controller(&all)?;
        let leader = all[0].metadata().partition_or_empty(0).leader.clone()?;
        let agreed = all.iter().all(|n| n.metadata().partition_or_empty(0).leader.as_ref() == Some(&leader));
        (agreed && leader != controller).then_some(())
    })
    .await;
    crash_all(&mut nodes).await;
}
