//! The fault drivers the replication scenario tests use, each shown to do what it says:
//! the TCP fault proxy (tests/common/proxy.rs) and partitions in a private network
//! namespace (tests/common/netns.rs).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::proxy::{Direction, Fault, FaultProxy};
use common::{DEADLINE, ServerProcess, netns, poll_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// How long a test watches for bytes that must not arrive. A slow machine can only make
/// such a check pass wrongly, never fail wrongly, so this is no timing threshold.
const QUIET: Duration = Duration::from_millis(300);

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn any_port(ip: IpAddr) -> SocketAddr {
    SocketAddr::new(ip, 0)
}

/// An echo server on 127.0.0.1, and how many bytes it has received in all.
async fn echo_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind(any_port(loopback(1))).await.expect("bind echo");
    let addr = listener.local_addr().expect("echo addr");
    let received = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&received);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let mut buf = [0; 4096];
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    counter.fetch_add(n, Ordering::SeqCst);
                    if stream.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, received)
}

async fn read_exactly(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut got = vec![0; n];
    tokio::time::timeout(DEADLINE, stream.read_exact(&mut got))
        .await
        .expect("bytes before the deadline")
        .expect("read");
    got
}

async fn assert_nothing_arrives(stream: &mut TcpStream) {
    let mut buf = [0; 64];
    if let Ok(read) = tokio::time::timeout(QUIET, stream.read(&mut buf)).await {
        panic!("expected silence, got {read:?} ({:?})", buf.escape_ascii().to_string());
    }
}

async fn assert_reset(stream: &mut TcpStream) {
    let mut buf = [0; 64];
    let read = tokio::time::timeout(DEADLINE, stream.read(&mut buf)).await.expect("reset before the deadline");
    assert_eq!(read.map_err(|err| err.kind()), Err(ErrorKind::ConnectionReset), "expected a reset");
}

async fn through(proxy: &FaultProxy) -> TcpStream {
    let stream = TcpStream::connect(proxy.addr()).await.expect("connect to proxy");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

#[tokio::test]
async fn proxy_pass_forwards_both_ways_and_the_end_of_stream() {
    let (echo, _) = echo_server().await;
    let proxy = FaultProxy::start(any_port(loopback(1)), echo);
    let mut client = through(&proxy).await;
    client.write_all(b"hello").await.unwrap();
    assert_eq!(read_exactly(&mut client, 5).await, b"hello");
    assert_eq!(proxy.connections(), 1);

    // The echo server answers our end of stream with its own, through the proxy.
    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, client.read_to_end(&mut rest)).await.expect("end of stream").expect("read");
    assert!(rest.is_empty());
    poll_until("the proxied connection to close", || (proxy.connections() == 0).then_some(()));
}

#[tokio::test]
async fn proxy_delay_holds_bytes_until_it_is_lifted() {
    let (echo, received) = echo_server().await;
    let proxy = FaultProxy::start(any_port(loopback(1)), echo);
    let mut client = through(&proxy).await;
    proxy.set(Fault::Delay(Duration::from_secs(3600)));
    client.write_all(b"ping").await.unwrap();
    assert_nothing_arrives(&mut client).await;
    assert_eq!(received.load(Ordering::SeqCst), 0, "the target got delayed bytes");

    proxy.set(Fault::Pass);
    assert_eq!(read_exactly(&mut client, 4).await, b"ping");
}

#[tokio::test]
async fn proxy_delay_releases_chunks_by_itself_in_order() {
    let (echo, _) = echo_server().await;
    let proxy = FaultProxy::start(any_port(loopback(1)), echo);
    proxy.set(Fault::Delay(Duration::from_millis(20)));
    let mut client = through(&proxy).await;
    for chunk in [&b"one "[..], b"two ", b"three"] {
        client.write_all(chunk).await.unwrap();
    }
    assert_eq!(read_exactly(&mut client, 13).await, b"one two three");
}

#[tokio::test]
async fn proxy_drop_resets_open_connections_and_new_ones() {
    let (echo, _) = echo_server().await;
    let proxy = FaultProxy::start(any_port(loopback(1)), echo);
    let mut open = through(&proxy).await;
    open.write_all(b"x").await.unwrap();
    assert_eq!(read_exactly(&mut open, 1).await, b"x");

    proxy.set(Fault::Drop);
    assert_reset(&mut open).await;
    poll_until("the proxy to let go of the connection", || (proxy.connections() == 0).then_some(()));
    // The reset can beat the end of the client's connect, which then reports it.
    match TcpStream::connect(proxy.addr()).await {
        Ok(mut new) => assert_reset(&mut new).await,
        Err(err) => assert_eq!(err.kind(), ErrorKind::ConnectionReset, "connect through a dropping proxy"),
    }
    assert_eq!(proxy.accepted(), 2);

    proxy.set(Fault::Pass);
    let mut after = through(&proxy).await;
    after.write_all(b"y").await.unwrap();
    assert_eq!(read_exactly(&mut after, 1).await, b"y");
}

/// Blackholed bytes are discarded, not held: after `Pass` the stream resumes with what is
/// sent from then on.
#[tokio::test]
async fn proxy_blackhole_keeps_connections_open_and_discards_bytes_for_good() {
    let (echo, received) = echo_server().await;
    let proxy = FaultProxy::start(any_port(loopback(1)), echo);
    let mut client = through(&proxy).await;
    client.write_all(b"a").await.unwrap();
    assert_eq!(read_exactly(&mut client, 1).await, b"a");

    proxy.set(Fault::Blackhole);
    client.write_all(b"lost").await.unwrap();
    assert_nothing_arrives(&mut client).await;
    assert_eq!(received.load(Ordering::SeqCst), 1, "the target got blackholed bytes");
    assert_eq!(proxy.connections(), 1, "a blackhole keeps the connection");

    proxy.set(Fault::Pass);
    client.write_all(b"b").await.unwrap();
    assert_eq!(read_exactly(&mut client, 1).await, b"b");
    assert_nothing_arrives(&mut client).await;
    assert_eq!(received.load(Ordering::SeqCst), 2);
}

/// A client connected through the proxy, and the target's end of that connection.
async fn client_and_target(proxy_listen: IpAddr) -> (FaultProxy, TcpStream, TcpStream) {
    let target = TcpListener::bind(any_port(loopback(1))).await.unwrap();
    let proxy = FaultProxy::start(any_port(proxy_listen), target.local_addr().unwrap());
    let client = through(&proxy).await;
    let (server, _) = tokio::time::timeout(DEADLINE, target.accept()).await.expect("proxied connection").unwrap();
    (proxy, client, server)
}

#[tokio::test]
async fn proxy_one_way_to_target_passes_requests_and_blackholes_replies() {
    let (proxy, mut client, mut server) = client_and_target(loopback(1)).await;
    proxy.set(Fault::OneWay(Direction::ToTarget));
    client.write_all(b"up").await.unwrap();
    assert_eq!(read_exactly(&mut server, 2).await, b"up");
    server.write_all(b"down").await.unwrap();
    assert_nothing_arrives(&mut client).await;
}

#[tokio::test]
async fn proxy_one_way_from_target_passes_replies_and_blackholes_requests() {
    let (proxy, mut client, mut server) = client_and_target(loopback(1)).await;
    proxy.set(Fault::OneWay(Direction::FromTarget));
    server.write_all(b"down").await.unwrap();
    assert_eq!(read_exactly(&mut client, 4).await, b"down");
    client.write_all(b"up").await.unwrap();
    assert_nothing_arrives(&mut server).await;
}

/// Started and dropped from plain sync code, with no runtime of the caller's.
#[test]
fn proxy_drop_closes_its_connections() {
    let target = std::net::TcpListener::bind(any_port(loopback(1))).unwrap();
    let proxy = FaultProxy::start(any_port(loopback(1)), target.local_addr().unwrap());
    let mut client = std::net::TcpStream::connect(proxy.addr()).unwrap();
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    let (mut server, _) = target.accept().unwrap();
    server.write_all(b"hi").unwrap();
    let mut hi = [0; 2];
    client.read_exact(&mut hi).unwrap();

    drop(proxy);
    let mut rest = Vec::new();
    match client.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty()),
        Err(err) => assert_ne!(err.kind(), ErrorKind::WouldBlock, "the connection outlived the proxy"),
    }
}

// ---------------------------------------------------------------------------------------
// Partitions in a private network namespace
// ---------------------------------------------------------------------------------------

/// Runs `body` on a tokio runtime made inside a fresh namespace (so its threads are there
/// too), or reports why it cannot.
fn in_namespace<F: Future<Output = ()>>(body: impl FnOnce(netns::Netns) -> F + Send) {
    let outcome = netns::isolated(|ns| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(body(ns.clone()));
    });
    if let Err(skip) = outcome {
        skip.report();
    }
}

/// Connects from `source` to `target`, giving up after 2 s: partitioned packets are
/// dropped, so a blocked connect hangs rather than fails.
async fn connect_from(source: IpAddr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(any_port(source))?;
    match tokio::time::timeout(Duration::from_secs(2), socket.connect(target)).await {
        Ok(connected) => connected,
        Err(_) => Err(ErrorKind::TimedOut.into()),
    }
}

async fn assert_reaches(source: u8, target: &TcpListener) {
    let addr = target.local_addr().unwrap();
    if let Err(err) = connect_from(loopback(source), addr).await {
        panic!("127.0.0.{source} cannot reach {addr}: {err}");
    }
}

async fn assert_cut_off(source: u8, target: &TcpListener) {
    let addr = target.local_addr().unwrap();
    assert!(connect_from(loopback(source), addr).await.is_err(), "127.0.0.{source} reached {addr}");
}

async fn listen(last: u8) -> TcpListener {
    TcpListener::bind(any_port(loopback(last))).await.expect("bind in namespace")
}

#[test]
fn netns_partition_cuts_two_addresses_apart_until_healed() {
    in_namespace(|ns| async move {
        let (two, three, four) = (listen(2).await, listen(3).await, listen(4).await);
        assert_reaches(2, &three).await;

        ns.partition(loopback(2), loopback(3));
        assert_cut_off(2, &three).await;
        assert_cut_off(3, &two).await;
        assert_reaches(2, &four).await;
        assert_reaches(4, &three).await;

        ns.heal();
        assert_reaches(2, &three).await;
        assert_reaches(3, &two).await;
    });
}

#[test]
fn netns_isolate_cuts_an_address_off_from_all_but_itself() {
    in_namespace(|ns| async move {
        let (two, three, four) = (listen(2).await, listen(3).await, listen(4).await);
        ns.isolate(loopback(2));
        assert_cut_off(2, &three).await;
        assert_cut_off(4, &two).await;
        assert_reaches(2, &two).await;
        assert_reaches(3, &four).await;
        ns.heal();
        assert_reaches(2, &three).await;
    });
}

/// Datagrams show the one dropped direction alone: TCP needs both ways to connect.
#[test]
fn netns_one_way_drops_only_one_direction() {
    in_namespace(|ns| async move {
        let two = tokio::net::UdpSocket::bind(any_port(loopback(2))).await.unwrap();
        let three = tokio::net::UdpSocket::bind(any_port(loopback(3))).await.unwrap();
        let mut buf = [0; 16];
        ns.one_way(loopback(2), loopback(3));

        three.send_to(b"back", two.local_addr().unwrap()).await.unwrap();
        let (n, _) = tokio::time::timeout(DEADLINE, two.recv_from(&mut buf)).await.expect("datagram .3 → .2").unwrap();
        assert_eq!(&buf[..n], b"back");
        two.send_to(b"lost", three.local_addr().unwrap()).await.unwrap();
        assert!(tokio::time::timeout(QUIET, three.recv_from(&mut buf)).await.is_err(), "{}", ns.rules());

        ns.heal();
        two.send_to(b"forth", three.local_addr().unwrap()).await.unwrap();
        let (n, _) =
            tokio::time::timeout(DEADLINE, three.recv_from(&mut buf)).await.expect("datagram .2 → .3").unwrap();
        assert_eq!(&buf[..n], b"forth");
    });
}

#[test]
fn netns_partition_stalls_an_established_connection_which_resumes_after_heal() {
    in_namespace(|ns| async move {
        let three = listen(3).await;
        let mut client = connect_from(loopback(2), three.local_addr().unwrap()).await.expect("connect");
        let (mut server, _) = three.accept().await.unwrap();
        client.write_all(b"before").await.unwrap();
        assert_eq!(read_exactly(&mut server, 6).await, b"before");

        ns.partition(loopback(2), loopback(3));
        client.write_all(b"during").await.unwrap();
        assert_nothing_arrives(&mut server).await;

        // TCP resends what the partition dropped; nothing is lost, only late.
        ns.heal();
        assert_eq!(read_exactly(&mut server, 6).await, b"during");
    });
}

#[test]
fn netns_namespace_is_private_to_the_test() {
    let host = std::net::TcpListener::bind(any_port(loopback(1))).unwrap();
    let host_addr = host.local_addr().unwrap();
    assert!(std::net::TcpStream::connect(host_addr).is_ok(), "the host listener works");
    in_namespace(|_| async move {
        let err = connect_from(loopback(1), host_addr).await.expect_err("the host is visible inside");
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
        // Addresses other than 127.0.0.1 exist because `lo` is up.
        listen(7).await;
    });
}

/// A `msglog serve` started inside lives in the namespace: it listens on 127.0.0.2 there,
/// and the partition rules apply to it.
#[test]
fn netns_processes_started_inside_share_the_namespace() {
    let dir = tempfile::TempDir::new().unwrap();
    let data_dir = dir.path().join("data");
    in_namespace(|ns| async move {
        // Bound together so they differ, then freed for msglog; nothing else runs in this
        // namespace to take them in between.
        let (client, grpc) = (listen(2).await, listen(2).await);
        let (client_addr, grpc_addr) = (client.local_addr().unwrap(), grpc.local_addr().unwrap());
        drop((client, grpc));
        let server = ServerProcess::start_on(&data_dir, client_addr, grpc_addr, &[]);
        let mut stream = connect_from(loopback(3), server.addr).await.expect("connect to msglog");
        stream.write_all(b"PING\n").await.unwrap();
        assert_eq!(read_exactly(&mut stream, 6).await, b"PONG\r\n");

        ns.isolate(loopback(2));
        assert!(connect_from(loopback(3), server.addr).await.is_err(), "reached an isolated msglog");
    });
}
