//! Replication over bad links: a follower reaches its leader through the fault proxy, which
//! delays, resets or swallows the traffic, and the cluster must converge to equal logs
//! once the link heals, with nothing acknowledged lost on the way.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::cluster::TestCluster;
use common::proxy::{Direction, Fault, FaultProxy};
use msglog::replication::{ReplicationStatus, Role};

async fn set_many(cluster: &TestCluster, prefix: &str, count: usize) {
    let mut client = cluster.client(0).await;
    for i in 0..count {
        assert_eq!(client.request(format!("SET {prefix}{i} value-{i}").as_bytes()).await, b"OK");
    }
}

/// A leader `n0` at `tolerance`, `n1` following it through a proxy, and `direct` more
/// followers connected straight.
async fn cluster_with_proxied_follower(tolerance: usize, direct: usize) -> (TestCluster, Arc<FaultProxy>) {
    cluster_with_proxied_follower_and_timeout(tolerance, direct, common::DEADLINE).await
}

async fn cluster_with_proxied_follower_and_timeout(
    tolerance: usize,
    direct: usize,
    ack_timeout: Duration,
) -> (TestCluster, Arc<FaultProxy>) {
    let mut cluster =
        TestCluster::start_with(1, tolerance, |_, config| config.role = Role::Leader { tolerance, ack_timeout }).await;
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let proxy = Arc::new(FaultProxy::start(loopback, cluster.node(0).grpc_addr()));
    let through = proxy.addr().to_string();
    cluster.add_node(|config| config.role = Role::Follower { leader: through }).await;
    for _ in 0..direct {
        cluster.add_node(|_| {}).await;
    }
    cluster.wait_for_followers(0, 1 + direct).await;
    (cluster, proxy)
}

fn follower(cluster: &TestCluster, id: &str) -> Option<msglog::replication::FollowerStatus> {
    match cluster.status(0).replication {
        ReplicationStatus::Leader { followers, .. } => followers.into_iter().find(|f| f.id == id),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_a_stalled_link_falls_behind_and_converges_once_it_flows() {
    let (cluster, proxy) = cluster_with_proxied_follower(1, 1).await;
    set_many(&cluster, "before", 20).await;
    cluster.wait_converged(0).await;
    // Nothing reaches n1 while the link holds every byte back; n2 carries the tolerance.
    proxy.set(Fault::Delay(Duration::from_secs(3600)));
    set_many(&cluster, "during", 100).await;
    assert_eq!(cluster.status(1).log.next_offset, 20, "n1 received records through a stalled link");
    proxy.set(Fault::Pass);
    cluster.wait_converged(0).await;
    let digests = cluster.shutdown().await;
    assert!(digests.iter().all(|d| *d == digests[0]), "replicas differ: {digests:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_link_is_reset_again_and_again_resumes_without_gaps_or_duplicates() {
    let (cluster, proxy) = cluster_with_proxied_follower(1, 1).await;
    for round in 0..5 {
        set_many(&cluster, &format!("r{round}-"), 40).await;
        let accepted = proxy.accepted();
        proxy.set(Fault::Drop);
        cluster.wait_for("the proxy to reset n1's connection", |_| proxy.connections() == 0).await;
        proxy.set(Fault::Pass);
        // n1 reconnects through the proxy after every reset.
        cluster.wait_for("n1 to reconnect", |_| proxy.accepted() > accepted).await;
    }
    cluster.wait_converged(0).await;
    assert_eq!(cluster.status(1).log.records, 200);
    let digests = cluster.shutdown().await;
    assert!(digests.iter().all(|d| *d == digests[0]), "replicas differ: {digests:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_acknowledgement_is_swallowed_times_out_and_is_not_read_until_acknowledged() {
    // n1 is the only follower at tolerance 1: records reach it, its acks do not come back.
    let (cluster, proxy) = cluster_with_proxied_follower_and_timeout(1, 0, Duration::from_secs(2)).await;
    set_many(&cluster, "before", 10).await;
    cluster
        .wait_for("n1's acknowledgement of 10 records", |c| follower(c, "n1").is_some_and(|f| f.durable == 10))
        .await;
    proxy.set(Fault::OneWay(Direction::FromTarget));
    let mut client = cluster.client(0).await;
    let reply = client.request(b"SET lost-ack v").await;
    // The write is refused (its ack never came back) though n1 may hold the record.
    assert!(reply.starts_with(b"ERR replication timeout"), "{}", String::from_utf8_lossy(&reply));
    assert_eq!(follower(&cluster, "n1").map(|f| f.durable), Some(10));
    // Nor is it shown to readers: a failover could still lose it.
    let read = client.request(b"GET lost-ack").await;
    assert!(
        read.starts_with(b"ERR replication timeout"),
        "an uncommitted write was read: {}",
        String::from_utf8_lossy(&read)
    );
    assert_eq!(client.request(b"GET before3").await, b"value-3", "committed records are served");
    drop(client);
    proxy.set(Fault::Drop);
    cluster.wait_for("the proxy to reset n1's connection", |_| proxy.connections() == 0).await;
    proxy.set(Fault::Pass);
    cluster.wait_converged(0).await;
    cluster
        .wait_for("n1's acknowledgement of everything", |c| follower(c, "n1").is_some_and(|f| f.durable == 11))
        .await;
    let mut client = cluster.client(0).await;
    assert_eq!(client.request(b"GET lost-ack").await, b"v", "once acknowledged, the record is served");
    drop(client);
    let digests = cluster.shutdown().await;
    assert!(digests.iter().all(|d| *d == digests[0]), "replicas differ: {digests:?}");
}
