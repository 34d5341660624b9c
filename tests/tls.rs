//! TLS (docs/SECURITY.md): the client port over TLS with msglog's and Redis's clients,
//! clear failures for a plain client on a TLS port and the reverse, and mutual TLS on the
//! gRPC port, where a node's id is the DNS name in its certificate.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;

use common::tls::{Ca, Caller, Issued, grpc_client, pipeline, request, stats};
use common::{ServerProcess, free_port, poll_until};
use tempfile::TempDir;

/// A CA with node certificates n0..n2, a client certificate, and one from another CA.
struct Pki {
    ca: Ca,
    nodes: Vec<Issued>,
    client: Issued,
    stranger: Issued,
    _dir: TempDir,
}

fn pki() -> Pki {
    let dir = TempDir::new().expect("tempdir");
    let ca = Ca::new(dir.path(), "cluster-ca");
    let nodes = ["n0", "n1", "n2"].iter().map(|name| ca.issue(name)).collect();
    let client = ca.issue("client");
    let other_dir = dir.path().join("other");
    std::fs::create_dir(&other_dir).expect("mkdir");
    // Named n1 too: only its CA differs from the real n1's.
    let stranger = Ca::new(&other_dir, "other-ca").issue("n1");
    Pki { ca, nodes, client, stranger, _dir: dir }
}

fn serve(dir: &TempDir, name: &str, args: &[String]) -> ServerProcess {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ServerProcess::start(&dir.path().join(name), &args)
}

/// Node n0 with mutual TLS on its gRPC port (`--tls-ca`).
fn mutual_tls_node(pki: &Pki, dir: &TempDir) -> ServerProcess {
    let mut args = pki.nodes[0].serve_args(Some(&pki.ca.cert));
    args.extend(["--node-id", "n0", "--stats-interval", "0s"].map(String::from));
    serve(dir, "n0", &args)
}

fn client(addr: SocketAddr, extra: &[&str], command: &[&str]) -> Output {
    common::msglog()
        .arg("client")
        .arg("--addr")
        .arg(addr.to_string())
        .args(extra)
        .args(command)
        .env_remove("MSGLOG_PASSWORD")
        .output()
        .expect("run msglog client")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim_end().to_string()
}

/// `msglog client --tls --cacert <ca>` running `command` at `addr`.
fn client_over_tls(addr: SocketAddr, ca: &Path, command: &[&str]) -> Output {
    let ca = ca.display().to_string();
    client(addr, &["--tls", "--cacert", &ca], command)
}

#[test]
fn text_protocol_set_and_get_over_tls_with_msglog_client() {
    let pki = pki();
    let dir = TempDir::new().expect("tempdir");
    let server = serve(&dir, "n0", &pki.nodes[0].serve_args(None));
    let set = client_over_tls(server.addr, &pki.ca.cert, &["SET", "greeting", "hello", "tls"]);
    assert!(set.status.success(), "SET over TLS: {set:?}");
    assert_eq!(text(&set.stdout), "OK");
    let get = client_over_tls(server.addr, &pki.ca.cert, &["GET", "greeting"]);
    assert_eq!(text(&get.stdout), "hello tls", "{get:?}");
    assert_eq!(request(server.addr, &pki.ca.cert, "GET greeting").expect("GET"), "hello tls");
}

#[test]
fn pipelined_replies_larger_than_the_socket_buffers_arrive_whole_over_tls() {
    let pki = pki();
    let dir = TempDir::new().expect("tempdir");
    let server = serve(&dir, "n0", &pki.nodes[0].serve_args(None));
    let value = "x".repeat(1000 * 1000);
    assert_eq!(request(server.addr, &pki.ca.cert, &format!("SET big {value}")).expect("SET"), "OK");
    // 32 MB of replies to one read: the socket fills, and the last TLS records must still go.
    let values = pipeline(server.addr, &pki.ca.cert, &["GET big"; 32]).expect("pipelined GETs");
    assert!(values.iter().all(|got| got == &value), "every GET returns the whole value");
}

/// `msglog bench` at `addr` with `flags`.
fn bench(addr: SocketAddr, flags: &[&str]) -> Output {
    let mut command = common::msglog();
    command.arg("bench").arg("--addr").arg(addr.to_string()).args(flags).env_remove("MSGLOG_PASSWORD");
    command.output().expect("run msglog bench")
}

#[test]
fn bench_loads_a_tls_port_with_tls_and_cacert_and_asks_for_the_ca() {
    let pki = pki();
    let dir = TempDir::new().expect("tempdir");
    let server = serve(&dir, "n0", &pki.nodes[0].serve_args(None));
    let ca = pki.ca.cert.display().to_string();
    // Values larger than one TLS record, several in flight: partial writes and reads.
    let flags = ["--requests", "400", "--clients", "4", "--pipeline", "16", "--value-size", "20000"];
    let run =
        bench(server.addr, &[&["--tls", "--cacert", &ca, "--workload", "mixed:50", "--json"], &flags[..]].concat());
    assert!(run.status.success(), "bench over TLS: {run:?}");
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).expect("a JSON report");
    assert_eq!(report["requests"], 400, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["ok"], 400, "{report}");
    let missing = bench(server.addr, &["--tls", "--requests", "10"]);
    assert!(!missing.status.success(), "--tls without --cacert ran: {missing:?}");
    assert!(text(&missing.stderr).contains("--tls needs --cacert"), "{}", text(&missing.stderr));
}

#[test]
fn redis_cli_set_and_get_over_tls() {
    let pki = pki();
    let dir = TempDir::new().expect("tempdir");
    let server = serve(&dir, "n0", &pki.nodes[0].serve_args(None));
    let port = server.addr.port().to_string();
    let ca = pki.ca.cert.display().to_string();
    let redis = |args: &[&str]| {
        std::process::Command::new("redis-cli")
            .args(["--tls", "--cacert", &ca, "-h", "127.0.0.1", "-p", &port])
            .args(args)
            .output()
    };
    let set = match redis(&["SET", "k", "over tls"]) {
        Ok(output) if text(&output.stderr).contains("not supported") => {
            return skip("redis-cli was built without TLS");
        }
        Ok(output) => output,
        Err(err) => return skip(&format!("redis-cli cannot run: {err}")),
    };
    assert_eq!(text(&set.stdout), "OK", "{set:?}");
    let get = redis(&["GET", "k"]).expect("redis-cli GET");
    assert_eq!(text(&get.stdout), "over tls", "{get:?}");
}

fn skip(why: &str) {
    if std::env::var("MSGLOG_REQUIRE_TOOLS").as_deref() == Ok("1") {
        panic!("MSGLOG_REQUIRE_TOOLS=1 but {why}");
    }
    eprintln!("SKIPPED: {why}");
}

#[test]
fn a_plain_client_on_a_tls_port_is_told_to_use_tls() {
    let pki = pki();
    let dir = TempDir::new().expect("tempdir");
    let server = serve(&dir, "n0", &pki.nodes[0].serve_args(None));
    let plain = client(server.addr, &[], &["SET", "k", "v"]);
    assert!(!plain.status.success(), "a plain client must fail: {plain:?}");
    // The client's first PING gets the refusal, which it reports as an error.
    assert!(text(&plain.stderr).contains("speaks TLS only"), "{plain:?}");
    // Nothing the plain client sent was executed.
    assert_eq!(request(server.addr, &pki.ca.cert, "GET k").expect("GET"), "NOT_FOUND");
}

#[test]
fn a_tls_client_on_a_plain_port_says_the_server_did_not_answer_tls() {
    let pki = pki();
    let dir = TempDir::new().expect("tempdir");
    let server = serve(&dir, "plain", &[]);
    let output = client_over_tls(server.addr, &pki.ca.cert, &["GET", "k"]);
    assert!(!output.status.success(), "{output:?}");
    assert!(text(&output.stderr).contains("did not answer TLS"), "{output:?}");
}

#[test]
fn a_tls_client_refused_before_the_handshake_shows_the_servers_line() {
    let pki = pki();
    let dir = TempDir::new().expect("tempdir");
    let mut args = pki.nodes[0].serve_args(None);
    args.extend(["--max-connections", "1"].map(String::from));
    let server = serve(&dir, "n0", &args);
    // Holds the only connection the node allows, so the next one is refused in plain text.
    // The readiness probe's connection may still count for an instant: retried until free.
    let _held = common::poll_until("the node's only connection slot to be free", || {
        let mut client = common::tls::TlsLineClient::connect(server.addr, &pki.ca.cert).ok()?;
        (client.request("PING").ok()? == "PONG").then_some(client)
    });
    let output = client_over_tls(server.addr, &pki.ca.cert, &["GET", "k"]);
    assert!(!output.status.success(), "{output:?}");
    let stderr = text(&output.stderr);
    assert!(stderr.contains("refused before TLS: ERR too many connections"), "{stderr}");
    assert!(!stderr.contains("--tls-cert"), "no hint that the server lacks TLS: {stderr}");
    let ca = pki.ca.cert.display().to_string();
    let run = bench(server.addr, &["--tls", "--cacert", &ca, "--requests", "10", "--clients", "1"]);
    assert!(!run.status.success(), "{run:?}");
    assert!(text(&run.stderr).contains("refused before TLS: ERR too many connections"), "{run:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_handshakes_are_logged_with_the_peer_and_the_reason_on_both_ports() {
    let pki = pki();
    let dir = TempDir::new().expect("tempdir");
    let node = mutual_tls_node(&pki, &dir);
    let plain = tokio::net::TcpStream::connect(node.addr).await.expect("connect");
    let plain_peer = plain.local_addr().expect("local address").to_string();
    let (mut reader, mut writer) = plain.into_split();
    tokio::io::AsyncWriteExt::write_all(&mut writer, b"PING\r\n").await.expect("write");
    let mut answer = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut reader, &mut answer).await.expect("read");
    assert!(answer.contains("speaks TLS only"), "{answer}");
    // A certificate of another CA on the gRPC port.
    let stranger = grpc_client(&pki.ca.cert, Some(&pki.stranger));
    assert!(Caller::connect(node.grpc, &stranger).await.expect("connect").fetch("").await.is_err());
    let logged = |port: &str, peer: &str, reason: &str| {
        let stderr = node.stderr();
        let line = stderr.lines().find(|line| line.contains(&format!("TLS handshake refused on the {port} port")));
        line.filter(|line| line.contains("INFO") && line.contains(peer) && line.contains(reason)).map(str::to_string)
    };
    poll_until("the client port to log the plain-text client", || logged("client", &plain_peer, "plain text"));
    poll_until("the gRPC port to log the certificate of another CA", || {
        logged("gRPC", "127.0.0.1:", "invalid peer certificate")
    });
}

#[test]
fn a_server_certificate_from_another_ca_is_refused_by_the_client() {
    let pki = pki();
    let dir = TempDir::new().expect("tempdir");
    let server = serve(&dir, "n1", &pki.stranger.serve_args(None));
    let output = client_over_tls(server.addr, &pki.ca.cert, &["GET", "k"]);
    assert!(!output.status.success(), "{output:?}");
    assert!(text(&output.stderr).contains("TLS handshake"), "{output:?}");
}

#[test]
fn serve_refuses_incomplete_or_mismatched_tls_files() {
    let pki = pki();
    let dir = TempDir::new().expect("tempdir");
    let start = |args: &[&str]| {
        common::msglog()
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path().join("d"))
            .args(["--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .expect("run msglog serve")
    };
    let key = pki.nodes[0].key.display().to_string();
    let other_cert = pki.nodes[1].cert.display().to_string();
    let no_cert = start(&["--tls-key", &key]);
    assert!(!no_cert.status.success());
    assert!(text(&no_cert.stderr).contains("--tls-key needs --tls-cert"), "{no_cert:?}");
    let mismatch = start(&["--tls-cert", &other_cert, "--tls-key", &key]);
    assert!(!mismatch.status.success());
    assert!(text(&mismatch.stderr).contains("does not match the certificate"), "{mismatch:?}");
    let not_pem = start(&["--tls-cert", &key, "--tls-key", &key]);
    assert!(!not_pem.status.success());
    assert!(text(&not_pem.stderr).contains("no PEM certificate"), "{not_pem:?}");
}

#[test]
fn serve_refuses_its_own_certificate_when_expired_client_only_or_naming_another_node() {
    let pki = pki();
    let dir = TempDir::new().expect("tempdir");
    let start = |issued: &Issued, extra: &[&str]| {
        common::msglog()
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path().join("d"))
            .args(["--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"])
            .args(issued.serve_args(None))
            .args(extra)
            .output()
            .expect("run msglog serve")
    };
    let refused = |issued: &Issued, extra: &[&str], why: &[&str]| {
        let output = start(issued, extra);
        assert!(!output.status.success(), "{output:?}");
        let stderr = text(&output.stderr);
        assert!(stderr.contains(&issued.cert.display().to_string()), "names the file: {stderr}");
        assert!(why.iter().all(|part| stderr.contains(part)), "says why ({why:?}): {stderr}");
    };
    refused(&pki.ca.issue_expired("n0-expired"), &[], &["expired"]);
    refused(&pki.ca.issue_consumer("n0-client-only"), &[], &["serverAuth"]);
    let ca = pki.ca.cert.display().to_string();
    // n1's certificate given to a node started as n0: peers would refuse every call of it.
    refused(&pki.nodes[1], &["--tls-ca", &ca, "--node-id", "n0"], &["\"n0\"", "[n1]"]);
}

/// A leader n0 with `--tolerance 1` and a follower n1, both under mutual TLS.
fn leader_and_follower(pki: &Pki, dir: &TempDir) -> (ServerProcess, ServerProcess) {
    let ca = Some(pki.ca.cert.as_path());
    let mut leader_args = pki.nodes[0].serve_args(ca);
    leader_args.extend(["--node-id", "n0", "--tolerance", "1", "--stats-interval", "0s"].map(String::from));
    let leader = serve(dir, "n0", &leader_args);
    let mut follower_args = pki.nodes[1].serve_args(ca);
    follower_args.extend(["--node-id", "n1", "--stats-interval", "0s", "--follow"].map(String::from));
    follower_args.push(leader.grpc.to_string());
    let follower = serve(dir, "n1", &follower_args);
    (leader, follower)
}

#[test]
fn a_leader_and_follower_replicate_over_mutual_tls() {
    let pki = pki();
    let dir = TempDir::new().expect("tempdir");
    let (leader, follower) = leader_and_follower(&pki, &dir);
    // At --tolerance 1, OK means the follower acknowledged it over the mutual-TLS port.
    poll_until("the follower to connect", || {
        (request(leader.addr, &pki.ca.cert, "SET k replicated").ok()? == "OK").then_some(())
    });
    poll_until("the follower to hold the write", || {
        (request(follower.addr, &pki.ca.cert, "GET k").ok()? == "replicated").then_some(())
    });
    assert!(!leader.stderr().contains("refusing"), "the real follower was never refused:\n{}", leader.stderr());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_whose_certificate_names_another_node_is_refused() {
    let pki = pki();
    let dir = TempDir::new().expect("tempdir");
    let leader = mutual_tls_node(&pki, &dir);
    let mut n2 = Caller::connect(leader.grpc, &grpc_client(&pki.ca.cert, Some(&pki.nodes[2]))).await.expect("connect");
    let spoofed = n2.fetch("n1").await.expect_err("n2 fetching as n1");
    assert_eq!(spoofed.code(), tonic::Code::PermissionDenied, "{spoofed:?}");
    let spoofed_ack = n2.acknowledge("n1").await.expect_err("n2 acknowledging as n1");
    assert_eq!(spoofed_ack.code(), tonic::Code::PermissionDenied, "{spoofed_ack:?}");
    // The same caller as itself is served: the refusal was about the claim.
    n2.fetch("n2").await.expect("n2 fetching as n2");
}

/// Outside cluster mode there is no member list: what keeps a consumer's certificate (for
/// `msglog tail`) from fetching and acknowledging as a replica called like it is that it is
/// not a node's certificate (no serverAuth).
#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_certificate_cannot_fetch_or_acknowledge_as_a_replica() {
    let pki = pki();
    let dir = TempDir::new().expect("tempdir");
    let leader = mutual_tls_node(&pki, &dir);
    let reader = pki.ca.issue_consumer("reader");
    let mut caller = Caller::connect(leader.grpc, &grpc_client(&pki.ca.cert, Some(&reader))).await.expect("connect");
    let as_replica = caller.fetch("reader").await.expect_err("a consumer fetching as replica 'reader'");
    assert_eq!(as_replica.code(), tonic::Code::PermissionDenied, "{as_replica:?}");
    let ack = caller.acknowledge("reader").await.expect_err("a consumer acknowledging as 'reader'");
    assert_eq!(ack.code(), tonic::Code::PermissionDenied, "{ack:?}");
    // As a consumer it is served.
    caller.fetch("").await.expect("a consumer reading the log");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_without_a_client_certificate_or_from_another_ca_is_refused() {
    let pki = pki();
    let dir = TempDir::new().expect("tempdir");
    let leader = mutual_tls_node(&pki, &dir);
    for (who, identity) in [("no certificate", None), ("another CA's certificate", Some(&pki.stranger))] {
        let tls = grpc_client(&pki.ca.cert, identity);
        let outcome = match Caller::connect(leader.grpc, &tls).await {
            Ok(mut caller) => caller.fetch("").await.map(|_| ()).map_err(|status| status.to_string()),
            Err(err) => Err(err.to_string()),
        };
        assert!(outcome.is_err(), "a caller with {who} must not be served");
    }
    // A consumer with the cluster's client certificate is served.
    let tls = grpc_client(&pki.ca.cert, Some(&pki.client));
    Caller::connect(leader.grpc, &tls).await.expect("connect").fetch("").await.expect("a certified consumer");
}

#[test]
fn tail_reads_a_mutual_tls_node_with_a_client_certificate_and_not_without() {
    let pki = pki();
    let dir = TempDir::new().expect("tempdir");
    let node = mutual_tls_node(&pki, &dir);
    assert_eq!(request(node.addr, &pki.ca.cert, "SET k tailed").expect("SET"), "OK");
    let tail = |identity: &[&str]| {
        common::msglog()
            .args(["tail", "--no-follow", "--from", &node.grpc.to_string(), "--tls", "--cacert"])
            .arg(&pki.ca.cert)
            .args(identity)
            .env_remove("MSGLOG_PASSWORD")
            .output()
            .expect("run msglog tail")
    };
    let (cert, key) = (pki.client.cert.display().to_string(), pki.client.key.display().to_string());
    let with_cert = tail(&["--cert", &cert, "--key", &key]);
    assert!(with_cert.status.success(), "{with_cert:?}");
    assert!(text(&with_cert.stdout).ends_with(" k tailed"), "{with_cert:?}");
    let without = tail(&[]);
    assert!(!without.status.success(), "a tail without a client certificate must fail: {without:?}");
    assert!(!text(&without.stdout).contains("tailed"), "{without:?}");
    // The node's TLS alert, not a guess from the closed connection: the same words every time.
    let stderr = text(&without.stderr);
    assert!(
        stderr.contains(
            "the node requires a client certificate of its CA, as it was started with --tls-ca: give --cert and --key"
        ),
        "says what is missing: {stderr}"
    );
    assert!(!stderr.contains("--password"), "the password does not replace the certificate: {stderr}");
}

/// Three voters n0..n2 in cluster mode over mutual TLS; returns them and the leader's index.
fn cluster_over_mutual_tls(pki: &Pki, dir: &TempDir) -> (Vec<ServerProcess>, usize) {
    let addrs: Vec<(SocketAddr, SocketAddr)> = (0..3)
        .map(|_| {
            let client = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
            let grpc = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
            (client, grpc)
        })
        .collect();
    let voters: Vec<String> = addrs.iter().enumerate().map(|(i, (_, grpc))| format!("n{i}={grpc}")).collect();
    let voters = voters.join(",");
    let nodes: Vec<ServerProcess> = (0..3)
        .map(|i| {
            let mut args = pki.nodes[i].serve_args(Some(&pki.ca.cert));
            let name = format!("n{i}");
            args.extend(
                ["--node-id", &name, "--cluster", &voters, "--tolerance", "1", "--stats-interval", "0s"]
                    .map(String::from),
            );
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ServerProcess::spawn_on(&dir.path().join(&name), addrs[i].0, addrs[i].1, &args)
        })
        .collect();
    let leader = poll_until("one leader that the others follow", || {
        let views: Vec<_> = nodes.iter().map(|node| stats(node.addr, &pki.ca.cert)).collect::<Option<_>>()?;
        let leaders: Vec<usize> =
            (0..3).filter(|&i| views[i].get("leader").map(String::as_str) == Some("self")).collect();
        let [leader] = leaders[..] else { return None };
        let name = format!("n{leader}");
        views.iter().enumerate().all(|(i, v)| i == leader || v.get("leader") == Some(&name)).then_some(leader)
    });
    (nodes, leader)
}

#[test]
fn three_nodes_in_cluster_mode_elect_and_replicate_over_mutual_tls() {
    let pki = pki();
    let dir = TempDir::new().expect("tempdir");
    let (nodes, leader) = cluster_over_mutual_tls(&pki, &dir);
    // Every follower in the ISR means each one fetched over mutual TLS as itself.
    poll_until("all three nodes in the ISR", || {
        let isr = stats(nodes[leader].addr, &pki.ca.cert)?.get("isr")?.clone();
        (isr.split(',').count() == 3).then_some(())
    });
    assert_eq!(request(nodes[leader].addr, &pki.ca.cert, "SET k clustered").expect("SET"), "OK");
    for node in &nodes {
        poll_until("every node to hold the write", || {
            (request(node.addr, &pki.ca.cert, "GET k").ok()? == "clustered").then_some(())
        });
    }
    let status = common::msglog()
        .args(["cluster", "status", "--addr", &nodes[leader].addr.to_string(), "--tls", "--cacert"])
        .arg(&pki.ca.cert)
        .env_remove("MSGLOG_PASSWORD")
        .output()
        .expect("run msglog cluster status");
    assert!(status.status.success(), "{status:?}");
    for name in ["n0", "n1", "n2"] {
        assert!(text(&status.stdout).contains(name), "cluster status over TLS lists {name}: {status:?}");
    }
}

/// A metadata proposal speaks for the node it is about: a certificate of the cluster's CA
/// that names neither that node nor a voter (a consumer's) cannot change the ISR.
#[tokio::test(flavor = "multi_thread")]
async fn a_quorum_proposal_about_another_node_needs_that_nodes_or_a_voters_certificate() {
    let pki = pki();
    let dir = TempDir::new().expect("tempdir");
    let (nodes, leader) = tokio::task::block_in_place(|| cluster_over_mutual_tls(&pki, &dir));
    let leader_id = format!("n{leader}");
    let voters: Vec<String> = nodes.iter().enumerate().map(|(i, node)| format!("n{i}={}", node.grpc)).collect();
    let voters = voters.join(",");
    let widen = format!(
        r#"{{"AlterIsr":{{"leader":"{leader_id}","epoch":1,"expected":["n0","n1","n2"],"isr":["n0","n1","n2","client"]}}}}"#
    );
    let mut consumer =
        Caller::connect(nodes[leader].grpc, &grpc_client(&pki.ca.cert, Some(&pki.client))).await.expect("connect");
    let refused =
        consumer.propose(&voters, &widen).await.expect_err("a consumer proposing an ISR change as the leader");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    // About itself it may propose: the refusal above was about whom the proposal concerns.
    let own = r#"{"Fence":{"id":"client","incarnation":1,"reason":"ControlledShutdown"}}"#;
    consumer.propose(&voters, own).await.expect("a proposal about the caller itself passes the certificate check");
    // A consumer's certificate (clientAuth only, as `msglog tail` gets) is no node's, even
    // about itself: it cannot register and become a member.
    let tail = pki.ca.issue_consumer("tail");
    let mut tail = Caller::connect(nodes[leader].grpc, &grpc_client(&pki.ca.cert, Some(&tail))).await.expect("connect");
    let register = r#"{"Register":{"id":"tail","grpc_addr":"127.0.0.1:1","client_addr":"127.0.0.1:2","voter":false,"incarnation":7,"log_epoch":0}}"#;
    let refused = tail.propose(&voters, register).await.expect_err("a consumer registering as a member");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let isr = tokio::task::block_in_place(|| stats(nodes[leader].addr, &pki.ca.cert)).expect("STATS")["isr"].clone();
    assert!(!isr.contains("client"), "the ISR was not widened: {isr}");
}
