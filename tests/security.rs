//! Security (README "Security", docs/SECURITY.md): the password on both client protocols,
//! protected mode, and the replication port's password and ack checks, tried as an
//! attacker would, with raw bytes and a hand-made gRPC peer.

mod common;
#[path = "security/fake_follower.rs"]
mod fake_follower;
#[path = "security/process.rs"]
mod process;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use common::cluster::TestCluster;
use common::wire::{Ack, Kind};
use common::{DEADLINE, TestClient, TestServer, line};
use fake_follower::{Peer, hello};
use msglog::replication::tail::{TailError, TailRequest, tail};
use msglog::replication::{ReplicationStatus, Role};
use msglog::server::{self, Password, ServerConfig};
use msglog::storage::{Config, Log};
use tempfile::TempDir;

const SECRET: &str = "Tr0ub4dor-3-secret";

fn password() -> Password {
    Password::new(SECRET).expect("a valid password")
}

async fn text(client: &mut TestClient, request: &str) -> String {
    String::from_utf8(client.request(request.as_bytes()).await).expect("utf-8 reply")
}

async fn server_with_password() -> TestServer {
    let config = ServerConfig { stats_interval: None, password: Some(password()), ..ServerConfig::default() };
    TestServer::start_with(config, Config::default()).await
}

#[tokio::test]
async fn text_protocol_requires_auth_before_anything_but_help_and_quit() {
    let server = server_with_password().await;
    let mut client = server.connect().await;
    assert_eq!(text(&mut client, "SET k v").await, "ERR NOAUTH authentication required");
    assert_eq!(text(&mut client, "GET k").await, "ERR NOAUTH authentication required");
    assert_eq!(text(&mut client, "PING").await, "ERR NOAUTH authentication required");
    assert!(text(&mut client, "HELP").await.contains("AUTH <password>"));
    assert_eq!(text(&mut client, "AUTH wrong").await, "ERR invalid password");
    assert_eq!(text(&mut client, "AUTH").await, "ERR wrong number of arguments; usage: AUTH <password>");
    assert_eq!(text(&mut client, "STATS").await, "ERR NOAUTH authentication required");
    assert_eq!(text(&mut client, &format!("auth {SECRET}")).await, "OK");
    assert_eq!(text(&mut client, "SET k v").await, "OK");
    let stats = text(&mut client, "STATS").await;
    assert!(!stats.contains(SECRET), "STATS shows the password: {stats}");
    // Authentication belongs to the connection.
    let mut other = server.connect().await;
    assert_eq!(text(&mut other, "GET k").await, "ERR NOAUTH authentication required");
    assert_eq!(text(&mut other, "QUIT").await, "BYE");
    assert!(other.is_closed().await);
    server.stop().await;

    let open = TestServer::start().await;
    let mut client = open.connect().await;
    assert_eq!(text(&mut client, "AUTH x").await, "ERR no password is set on this server; AUTH is not needed");
    assert_eq!(text(&mut client, "PING").await, "PONG");
    open.stop().await;
}

#[tokio::test]
async fn resp_auth_answers_exactly_as_redis_does() {
    let server = server_with_password().await;
    let secret = SECRET.as_bytes();
    let mut client = server.connect().await;
    assert_eq!(line(&mut client, &[b"SET", b"k", b"v"]).await, "-NOAUTH Authentication required.");
    assert_eq!(line(&mut client, &[b"PING"]).await, "-NOAUTH Authentication required.");
    assert_eq!(line(&mut client, &[b"MULTI"]).await, "-NOAUTH Authentication required.");
    assert_eq!(line(&mut client, &[b"CLIENT", b"LIST"]).await, "-NOAUTH Authentication required.");
    assert!(line(&mut client, &[b"HELLO", b"3"]).await.starts_with("-NOAUTH HELLO must be called with the client"));
    let wrongpass = "-WRONGPASS invalid username-password pair or user is disabled.";
    assert_eq!(line(&mut client, &[b"AUTH", b"wrong"]).await, wrongpass);
    assert_eq!(line(&mut client, &[b"AUTH", b"default", b"wrong"]).await, wrongpass);
    assert_eq!(line(&mut client, &[b"AUTH", b"bob", secret]).await, wrongpass);
    assert_eq!(line(&mut client, &[b"HELLO", b"2", b"AUTH", b"default", b"wrong"]).await, wrongpass);
    assert_eq!(line(&mut client, &[b"GET", b"k"]).await, "-NOAUTH Authentication required.");
    assert_eq!(line(&mut client, &[b"AUTH", secret]).await, "+OK");
    assert_eq!(line(&mut client, &[b"SET", b"k", b"v"]).await, "+OK");
    // RESET returns to the default user, who must authenticate again.
    assert_eq!(line(&mut client, &[b"RESET"]).await, "+RESET");
    assert_eq!(line(&mut client, &[b"GET", b"k"]).await, "-NOAUTH Authentication required.");
    assert_eq!(line(&mut client, &[b"AUTH", b"default", secret]).await, "+OK");
    assert_eq!(line(&mut client, &[b"GET", b"k"]).await, "$1");

    let mut hello = server.connect().await;
    let reply = line(&mut hello, &[b"HELLO", b"3", b"AUTH", b"default", secret]).await;
    assert!(reply.starts_with('%'), "HELLO with the right password answers its map, got {reply}");
    let mut quitting = server.connect().await;
    assert_eq!(line(&mut quitting, &[b"QUIT"]).await, "+OK");
    server.stop().await;
}

#[tokio::test]
async fn a_redis_client_library_authenticates_from_its_url() {
    let server = server_with_password().await;
    let addr = server.addr;
    let outcome = tokio::task::spawn_blocking(move || {
        let refused = redis::Client::open(format!("redis://{addr}/"))
            .and_then(|c| c.get_connection())
            .and_then(|mut c| redis::cmd("SET").arg("lib").arg("v").query::<String>(&mut c));
        let authed = redis::Client::open(format!("redis://:{SECRET}@{addr}/"))
            .and_then(|c| c.get_connection())
            .and_then(|mut c| redis::cmd("SET").arg("lib").arg("v").query::<String>(&mut c));
        (refused.map_err(|e| e.to_string()), authed.map_err(|e| e.to_string()))
    })
    .await
    .expect("client thread");
    assert!(outcome.0.as_ref().is_err_and(|e| e.contains("NOAUTH")), "{:?}", outcome.0);
    assert_eq!(outcome.1, Ok("OK".to_string()));
    server.stop().await;
}

/// An IPv4 address of this machine other than loopback, if it has one.
fn non_loopback_ipv4() -> Option<IpAddr> {
    let mut addrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `addrs` with a list we walk read-only and then free once.
    unsafe {
        if libc::getifaddrs(&mut addrs) != 0 {
            return None;
        }
        let mut found = None;
        let mut cursor = addrs;
        while !cursor.is_null() && found.is_none() {
            let addr = (*cursor).ifa_addr;
            if !addr.is_null() && i32::from((*addr).sa_family) == libc::AF_INET {
                let v4 = &*(addr as *const libc::sockaddr_in);
                let ip = std::net::Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
                found = (!ip.is_loopback()).then_some(IpAddr::V4(ip));
            }
            cursor = (*cursor).ifa_next;
        }
        libc::freeifaddrs(addrs);
        found
    }
}

/// A connection to loopback `port` that leaves from `source`: the server sees a client
/// that is not on loopback, though nothing leaves the machine.
async fn connect_from(source: IpAddr, port: u16) -> RawClient {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(source, 0)).expect("bind to the non-loopback address");
    let stream = socket.connect(SocketAddr::from(([127, 0, 0, 1], port))).await.expect("connect");
    RawClient(tokio::io::BufReader::new(stream))
}

/// A text-protocol client on a socket the test set up itself.
struct RawClient(tokio::io::BufReader<tokio::net::TcpStream>);

impl RawClient {
    async fn request(&mut self, line: &str) -> String {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        self.0.get_mut().write_all(format!("{line}\n").as_bytes()).await.expect("send");
        let mut reply = String::new();
        tokio::time::timeout(DEADLINE, self.0.read_line(&mut reply)).await.expect("a reply in time").expect("read");
        reply.trim_end().to_string()
    }

    /// True once the server has closed the connection with nothing more to read.
    async fn is_closed(&mut self) -> bool {
        use tokio::io::AsyncReadExt;
        let mut rest = Vec::new();
        let read = tokio::time::timeout(DEADLINE, self.0.read_to_end(&mut rest)).await.expect("closed in time");
        read.is_err() || rest.is_empty()
    }
}

/// Serves on 0.0.0.0 (protected mode's trigger) with `password`.
async fn serve_on_any(password: Option<Password>) -> (u16, tokio::sync::oneshot::Sender<()>, TempDir) {
    let dir = TempDir::new().expect("temp dir");
    let log = Arc::new(Log::open(dir.path(), Config::default()).expect("open log"));
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = ServerConfig { stats_interval: None, password, ..ServerConfig::default() };
    tokio::spawn(server::run(listener, log, config, async move {
        let _ = stopped.await;
    }));
    (port, stop, dir)
}

#[tokio::test]
async fn protected_mode_refuses_remote_clients_until_a_password_is_set() {
    let Some(remote) = non_loopback_ipv4() else {
        assert!(std::env::var("MSGLOG_REQUIRE_TOOLS").as_deref() != Ok("1"), "no non-loopback address");
        eprintln!("SKIPPED: this machine has no non-loopback IPv4 address to connect from");
        return;
    };
    let (port, stop, _dir) = serve_on_any(None).await;
    let mut local = TestClient::connect(SocketAddr::from(([127, 0, 0, 1], port))).await;
    assert_eq!(text(&mut local, "PING").await, "PONG");
    let mut outsider = connect_from(remote, port).await;
    let refusal = outsider.request("PING").await;
    assert!(refusal.starts_with("ERR DENIED msglog is in protected mode"), "{refusal}");
    assert!(refusal.contains("--requirepass") && refusal.contains("127.0.0.1"), "says how to fix it: {refusal}");
    assert!(outsider.is_closed().await);
    let _ = stop.send(());

    let (port, stop, _dir) = serve_on_any(Some(password())).await;
    let mut outsider = connect_from(remote, port).await;
    assert_eq!(outsider.request("PING").await, "ERR NOAUTH authentication required");
    assert_eq!(outsider.request(&format!("AUTH {SECRET}")).await, "OK");
    assert_eq!(outsider.request("PING").await, "PONG");
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_replicate_only_with_the_clusters_password() {
    let wrong = Password::new("not-the-password").unwrap();
    let cluster = TestCluster::start_with(3, 1, |i, config| {
        config.password = Some(if i == 2 { wrong.clone() } else { password() });
    })
    .await;
    cluster.wait_for_followers(0, 1).await;
    let mut client = cluster.client(0).await;
    assert_eq!(text(&mut client, &format!("AUTH {SECRET}")).await, "OK");
    assert_eq!(text(&mut client, "SET k v").await, "OK");
    cluster.wait_for("n1 to hold the write", |c| c.status(1).log.next_offset == c.status(0).log.next_offset).await;
    assert_eq!(cluster.status(2).log.next_offset, 0, "a follower with the wrong password fetched records");
    let followers = cluster.status(0).replication.connected_followers();
    assert_eq!(followers, 1, "only n1 is connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_needs_the_password() {
    let cluster = TestCluster::start_with(1, 0, |_, config| config.password = Some(password())).await;
    let mut client = cluster.client(0).await;
    assert_eq!(text(&mut client, &format!("AUTH {SECRET}")).await, "OK");
    assert_eq!(text(&mut client, "SET k v").await, "OK");
    let request = |password| TailRequest {
        addr: cluster.node(0).grpc_addr().to_string(),
        offset: 0,
        follow: false,
        max_record_bytes: 1 << 21,
        password,
        partition: 0,
    };
    let mut seen = 0;
    let refused = tail(&request(None), |_| {
        seen += 1;
        Ok(())
    })
    .await;
    match refused {
        Err(TailError::Stream(status)) => assert_eq!(status.code(), tonic::Code::Unauthenticated),
        other => panic!("tail without the password: {other:?}"),
    }
    let wrong = tail(&request(Some(Password::new("nope").unwrap())), |_| {
        seen += 1;
        Ok(())
    })
    .await;
    assert!(matches!(wrong, Err(TailError::Stream(s)) if s.code() == tonic::Code::Unauthenticated));
    assert_eq!(seen, 0);
    tail(&request(Some(password())), |_| {
        seen += 1;
        Ok(())
    })
    .await
    .expect("tail with the password");
    assert_eq!(seen, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_calls_without_the_password_are_unauthenticated() {
    let cluster = TestCluster::start_with(1, 1, |_, config| config.password = Some(password())).await;
    let mut peer = Peer::connect(cluster.node(0).grpc_addr()).await;
    for presented in [None, Some("wrong"), Some("")] {
        let refused = peer.fetch("fake", presented).await.map(|_| ()).expect_err("a fetch without the password");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
        let (_acks, call) = peer.acknowledge(presented);
        let refused = call.await.expect("ack task").expect_err("an ack call without the password");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    }
    assert_eq!(cluster.status(0).replication.connected_followers(), 0);
}

/// The attack of README "Security": a peer with the password that fetches as a follower
/// but acknowledges what it never received, or in another follower's name. None of it
/// counts, so a write at tolerance 1 times out; the same peer acknowledging honestly then
/// makes writes succeed, so it is the checks that refused it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_beyond_what_was_sent_or_for_another_follower_count_for_nothing() {
    let cluster = TestCluster::start_with(1, 1, |_, config| {
        config.password = Some(password());
        config.role = Role::Leader { tolerance: 1, ack_timeout: Duration::from_secs(1) };
    })
    .await;
    let mut peer = Peer::connect(cluster.node(0).grpc_addr()).await;
    let mut stream = peer.fetch("fake", Some(SECRET)).await.expect("fetch with the password");
    let session = hello(&mut stream).await.session;
    assert_eq!(session.len(), 16, "a replica's hello carries its session token");
    let mut other_stream = peer.fetch("other", Some(SECRET)).await.expect("a second follower");
    let other_session = hello(&mut other_stream).await.session;
    let (acks, _call) = peer.acknowledge(Some(SECRET));
    let ack = |follower_id: &str, durable_offset, session: &[u8]| Ack {
        follower_id: follower_id.to_string(),
        durable_offset,
        session: session.to_vec(),
    };
    let spoofs = [
        ack("fake", 1 << 62, &[]),
        ack("fake", 1 << 62, &[0; 16]),
        ack("fake", 1 << 62, &session),
        ack("other", 1, &session),
        ack("fake", 1, &other_session),
    ];
    for spoof in spoofs {
        acks.send(spoof).await.expect("ack call open");
    }
    let mut client = cluster.client(0).await;
    assert_eq!(text(&mut client, &format!("AUTH {SECRET}")).await, "OK");
    assert_eq!(text(&mut client, "SET first v").await, "ERR replication timeout (acked 0 of 1)");
    match cluster.status(0).replication {
        ReplicationStatus::Leader { followers, .. } => {
            assert!(followers.iter().all(|f| f.durable == 0), "a spoofed ack counted: {followers:?}");
        }
        other => panic!("n0 leads, yet: {other:?}"),
    }

    // Now acknowledge exactly what arrives.
    let honest = tokio::spawn(async move {
        while let Ok(Some(message)) = stream.message().await {
            if let Some(Kind::Records(records)) = message.kind {
                let durable = ack("fake", records.leader_next_offset, &session);
                if acks.send(durable).await.is_err() {
                    return;
                }
            }
        }
    });
    assert_eq!(text(&mut client, "SET second v").await, "OK");
    honest.abort();
}
