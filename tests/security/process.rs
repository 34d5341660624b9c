//! Security through real `msglog` processes: the CLI's password handling and the warning
//! an exposed server logs at start.

use tempfile::TempDir;

use super::SECRET;
use super::common;

/// The CLI end to end: `serve` with the password in its environment, `client` and `tail`
/// with `--password` and without; the password never reaches the log or `--help`.
#[test]
fn the_cli_sends_the_password_and_never_prints_it() {
    let dir = TempDir::new().expect("temp dir");
    let server = common::ServerProcess::start(&dir.path().join("data"), &["--requirepass", SECRET]);
    let run = |args: &[&str], password: Option<&str>| {
        let mut command = common::msglog();
        command.args(args).env_remove("MSGLOG_PASSWORD");
        if let Some(password) = password {
            command.env("MSGLOG_PASSWORD", password);
        }
        let output = command.output().expect("run msglog");
        (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned(), output.stderr)
    };
    let addr = server.addr.to_string();
    let (ok, out, _) = run(&["client", "--addr", &addr, "--password", SECRET, "SET", "k", "v"], None);
    assert!(ok && out == "OK\n", "{out}");
    let (ok, out, _) = run(&["client", "--addr", &addr, "GET", "k"], None);
    assert!(!ok && out == "ERR NOAUTH authentication required\n", "{out}");
    let (ok, _, err) = run(&["client", "--addr", &addr, "GET", "k"], Some("wrong"));
    assert!(!ok && String::from_utf8_lossy(&err).contains("AUTH failed: ERR invalid password"));
    let (ok, out, _) = run(&["client", "--addr", &addr, "GET", "k"], Some(SECRET));
    assert!(ok && out == "v\n", "{out}");
    let grpc = server.grpc.to_string();
    let (ok, out, _) = run(&["tail", "--from", &grpc, "--no-follow"], Some(SECRET));
    assert!(ok && out.ends_with(" k v\n"), "{out}");
    let (ok, _, err) = run(&["tail", "--from", &grpc, "--no-follow"], None);
    assert!(!ok && String::from_utf8_lossy(&err).contains("requires the cluster's password"));
    for protocol in ["text", "resp"] {
        let bench = ["bench", "--addr", &addr, "--requests", "200", "--clients", "2", "--protocol", protocol];
        let (ok, out, err) = run(&bench, Some(SECRET));
        assert!(ok, "bench with the password over {protocol}: {out}{}", String::from_utf8_lossy(&err));
        let (ok, _, _) = run(&bench, None);
        assert!(!ok, "bench without the password over {protocol} saw no error");
    }
    let (_, help, _) = run(&["serve", "--help"], Some(SECRET));
    assert!(help.contains("--requirepass") && !help.contains(SECRET), "{help}");
    assert!(!server.stderr().contains(SECRET), "the server logged its password");
}

/// A `msglog serve` on 0.0.0.0, killed by PID when dropped.
struct Exposed(std::process::Child);

impl Drop for Exposed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_server_exposed_without_a_password_warns_at_start() {
    let dir = TempDir::new().expect("temp dir");
    let stderr_path = dir.path().join("serve.stderr");
    let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
    let child = common::msglog()
        .args(["serve", "--stats-interval", "0s", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--listen", &format!("0.0.0.0:{}", common::free_port())])
        .args(["--grpc-listen", &format!("127.0.0.1:{}", common::free_port())])
        .env_remove("MSGLOG_PASSWORD")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn msglog serve");
    let _server = Exposed(child);
    let log = common::poll_until("a protected-mode warning", || {
        let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        log.contains("protected mode").then_some(log)
    });
    let warning = log.lines().find(|l| l.contains("WARN") && l.contains("protected mode"));
    let warning = warning.unwrap_or_else(|| panic!("no protected-mode warning in:\n{log}"));
    assert!(warning.contains("--requirepass") && warning.contains("127.0.0.1"), "{warning}");
}

/// Protected mode covers the replication port too: exposed without a password or mutual
/// TLS, it serves followers on this machine and refuses one connecting from elsewhere.
#[test]
fn protected_mode_keeps_remote_followers_off_an_exposed_replication_port() {
    let Some(remote) = super::non_loopback_ipv4() else {
        assert!(std::env::var("MSGLOG_REQUIRE_TOOLS").as_deref() != Ok("1"), "no non-loopback address");
        eprintln!("SKIPPED: this machine has no non-loopback IPv4 address to connect from");
        return;
    };
    let dir = TempDir::new().expect("temp dir");
    let grpc_port = common::free_port();
    let client = std::net::SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let grpc = std::net::SocketAddr::from(([0, 0, 0, 0], grpc_port));
    let leader = common::ServerProcess::start_on(&dir.path().join("leader"), client, grpc, &[]);
    assert!(leader.stderr().contains("only peers on this machine"), "no warning at start:\n{}", leader.stderr());
    let upstream = format!("127.0.0.1:{grpc_port}");
    let remote = remote.to_string();
    let outsider = common::ServerProcess::start(
        &dir.path().join("outsider"),
        &["--follow", &upstream, "--bind-source-addr", &remote],
    );
    common::poll_until("the outsider's refusal", || outsider.stderr().contains("protected mode").then_some(()));
    assert_eq!(common::stats(leader.addr)["followers"], "0", "a follower from another address was served");
    let _neighbour = common::ServerProcess::start(&dir.path().join("neighbour"), &["--follow", &upstream]);
    common::poll_until("the local follower", || (common::stats(leader.addr)["followers"] == "1").then_some(()));
}

/// A password the server refuses (here: it holds a space) is not echoed in the error.
#[test]
fn a_refused_password_is_never_printed() {
    let dir = TempDir::new().expect("temp dir");
    for args in [&["serve", "--data-dir"][..], &["client", "--addr", "127.0.0.1:1", "PING"][..]] {
        let mut command = common::msglog();
        command.args(args);
        if args[0] == "serve" {
            command.arg(dir.path().join("data"));
        }
        let output = command.env("MSGLOG_PASSWORD", "Real Secret With Space").output().expect("run msglog");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{stderr}");
        assert!(stderr.contains("MSGLOG_PASSWORD") && !stderr.contains("Secret"), "{stderr}");
    }
}
