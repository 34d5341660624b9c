//! Certificate reload on SIGHUP (docs/SECURITY.md): new client-port connections get the
//! certificate the files hold at the signal, open ones keep theirs, and files that do not
//! load leave the node serving with what it had, saying why in its log.

mod common;

use std::path::Path;

use common::tls::{Ca, TlsLineClient, request};
use common::{ServerProcess, poll_until};
use tempfile::TempDir;

/// Whether a fresh TLS connection trusting `ca` gets an answer to PING.
fn answers_trusting(server: &ServerProcess, ca: &Path) -> bool {
    request(server.addr, ca, "PING").is_ok_and(|reply| reply == "PONG")
}

#[test]
fn sighup_reloads_the_client_port_certificate_and_keeps_it_when_the_new_files_are_broken() {
    let dir = TempDir::new().expect("tempdir");
    let first_ca = Ca::new(dir.path(), "ca-1");
    let served = first_ca.issue("n0");
    let second_dir = dir.path().join("second");
    std::fs::create_dir(&second_dir).expect("mkdir");
    let second_ca = Ca::new(&second_dir, "ca-2");
    let renewed = second_ca.issue("n0");

    let args = served.serve_args(None);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = ServerProcess::start(&dir.path().join("data"), &args);
    assert!(answers_trusting(&server, &first_ca.cert), "the certificate it started with is signed by CA 1");
    assert!(!answers_trusting(&server, &second_ca.cert), "nothing of CA 2 is served before the reload");
    let mut open = TlsLineClient::connect(server.addr, &first_ca.cert).expect("connect");
    assert_eq!(open.request("SET k before").expect("SET before the reload"), "OK");
    let first_certificate = open.server_certificate().expect("a certificate");

    std::fs::copy(&renewed.cert, &served.cert).expect("replace the certificate");
    std::fs::copy(&renewed.key, &served.key).expect("replace the key");
    server.signal(libc::SIGHUP);
    poll_until("a new connection to verify against CA 2 after SIGHUP", || {
        answers_trusting(&server, &second_ca.cert).then_some(())
    });
    assert!(!answers_trusting(&server, &first_ca.cert), "new connections no longer get CA 1's certificate");
    assert_eq!(open.request("GET k").expect("the open connection after the reload"), "before");
    assert_eq!(open.server_certificate(), Some(first_certificate), "it keeps the session it began with");
    assert!(server.stderr().contains("reloaded the TLS certificate"), "{}", server.stderr());

    std::fs::write(&served.key, "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n")
        .expect("break the key");
    server.signal(libc::SIGHUP);
    let key_path = served.key.display().to_string();
    let complaint = poll_until("the log to name the broken key file", || {
        server.stderr().lines().find(|line| line.contains("ERROR") && line.contains(&key_path)).map(str::to_string)
    });
    assert!(complaint.contains("keeping the TLS certificates in use"), "{complaint}");
    assert!(answers_trusting(&server, &second_ca.cert), "after a failed reload it still serves certificate B");
    assert!(!answers_trusting(&server, &first_ca.cert));
    assert_eq!(open.request("GET k").expect("the open connection after a failed reload"), "before");
}

#[test]
fn sighup_without_tls_leaves_the_node_serving_and_says_there_is_nothing_to_reload() {
    let dir = TempDir::new().expect("tempdir");
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    server.signal(libc::SIGHUP);
    poll_until("the node to log that there is nothing to reload", || {
        server.stderr().contains("TLS is off, no certificates to reload").then_some(())
    });
    let stats = common::stats(server.addr);
    assert!(stats.contains_key("records"), "the node still answers after SIGHUP: {stats:?}");
}

/// `msglog tail --no-follow` of `node`'s gRPC port trusting `ca`, presenting `client`.
fn tails(node: &ServerProcess, ca: &Path, client: &common::tls::Issued) -> std::process::Output {
    common::msglog()
        .args(["tail", "--no-follow", "--from", &node.grpc.to_string(), "--tls", "--cacert"])
        .arg(ca)
        .arg("--cert")
        .arg(&client.cert)
        .arg("--key")
        .arg(&client.key)
        .env_remove("MSGLOG_PASSWORD")
        .output()
        .expect("run msglog tail")
}

#[test]
fn sighup_reloads_the_grpc_ports_certificate_and_ca() {
    let dir = TempDir::new().expect("tempdir");
    let first_ca = Ca::new(dir.path(), "ca-1");
    let (served, first_client) = (first_ca.issue("n0"), first_ca.issue_consumer("tail-1"));
    let second_dir = dir.path().join("second");
    std::fs::create_dir(&second_dir).expect("mkdir");
    let second_ca = Ca::new(&second_dir, "ca-2");
    let (renewed, second_client) = (second_ca.issue("n0"), second_ca.issue_consumer("tail-2"));
    // The node's own copy of the CA bundle, replaced with CA 2's below.
    let node_ca = dir.path().join("node-ca.pem");
    std::fs::copy(&first_ca.cert, &node_ca).expect("copy CA 1");

    let mut args = served.serve_args(Some(&node_ca));
    args.extend(["--node-id", "n0", "--stats-interval", "0s"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = ServerProcess::start(&dir.path().join("data"), &args);
    assert_eq!(request(server.addr, &first_ca.cert, "SET k renewed").expect("SET"), "OK");
    let before = tails(&server, &first_ca.cert, &first_client);
    assert!(before.status.success(), "CA 1's consumer reads before the reload: {before:?}");
    assert!(!tails(&server, &second_ca.cert, &second_client).status.success(), "CA 2 is not served yet");

    std::fs::copy(&renewed.cert, &served.cert).expect("replace the certificate");
    std::fs::copy(&renewed.key, &served.key).expect("replace the key");
    std::fs::copy(&second_ca.cert, &node_ca).expect("replace the CA");
    server.signal(libc::SIGHUP);
    let after = poll_until("a gRPC call verifying against CA 2 after SIGHUP", || {
        let output = tails(&server, &second_ca.cert, &second_client);
        output.status.success().then_some(output)
    });
    assert!(String::from_utf8_lossy(&after.stdout).contains(" k renewed"), "{after:?}");
    assert!(!tails(&server, &first_ca.cert, &first_client).status.success(), "CA 1 is no longer served or trusted");
    assert!(server.stderr().contains("client port and the gRPC port use it"), "{}", server.stderr());
}
