//! Operating a node: Prometheus metrics scraped over HTTP and parsed, the config file's
//! precedence, log flags, and the checks `serve` makes before it starts.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::cluster::TestCluster;
use common::prometheus::{observations, scrape, value};
use common::{DEADLINE, LineClient, ServerProcess, free_port, msglog, poll_until};
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------

/// The labels of partition 0's series: a node's only partition unless `--partitions` says
/// otherwise.
const PARTITION_0: &[(&str, &str)] = &[("partition", "0")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_scraped_over_http_move_with_set_and_get() {
    let cluster = TestCluster::start_with(1, 0, |_, config| config.metrics_listen = Some("127.0.0.1:0".into())).await;
    let addr = cluster.node(0).metrics_addr().expect("metrics are served when metrics_listen is set");
    let before = scrape(addr).await;
    assert_eq!(value(&before, "msglog_commands_total", &[("command", "set")]), None);
    assert_eq!(value(&before, "msglog_log_records", &[]), Some(0.0));
    let fsyncs_before = value(&before, "msglog_fsyncs_total", &[]).expect("fsyncs");

    let mut client = cluster.client(0).await;
    assert_eq!(client.request(b"SET greeting hello").await, b"OK");
    assert_eq!(client.request(b"GET greeting").await, b"hello");
    assert_eq!(client.request(b"GET missing").await, b"NOT_FOUND");
    assert!(client.request(b"FROB x").await.starts_with(b"ERR "));

    let after = scrape(addr).await;
    let commands =
        |command, result| value(&after, "msglog_commands_total", &[("command", command), ("result", result)]);
    assert_eq!(commands("set", "ok"), Some(1.0));
    assert_eq!(commands("get", "ok"), Some(1.0));
    assert_eq!(commands("get", "not_found"), Some(1.0));
    assert_eq!(commands("other", "error"), Some(1.0), "unknown words share one label");
    assert_eq!(observations(&after, "msglog_command_duration_seconds", &[("command", "get")]), Some(2.0));
    assert_eq!(observations(&after, "msglog_command_duration_seconds", &[("command", "set")]), Some(1.0));
    assert_eq!(value(&after, "msglog_log_records", &[]), Some(1.0));
    assert_eq!(value(&after, "msglog_log_ids", &[]), Some(1.0));
    // One partition: the offsets are partition 0's.
    assert_eq!(value(&after, "msglog_log_next_offset", PARTITION_0), Some(1.0));
    assert!(value(&after, "msglog_log_bytes", &[]) > value(&before, "msglog_log_bytes", &[]));
    assert_eq!(value(&after, "msglog_connections", &[]), Some(1.0), "the client is still connected");
    // The SET waited for an fsync under the default `--fsync always`.
    assert!(value(&after, "msglog_fsyncs_total", &[]).expect("fsyncs") > fsyncs_before);
    assert!(observations(&after, "msglog_fsync_duration_seconds", &[]) >= Some(1.0));
    assert!(observations(&after, "msglog_records_per_fsync", &[]) >= Some(1.0));
    drop(client);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_connected_followers_and_their_lag() {
    let cluster = TestCluster::start_with(2, 1, |_, config| config.metrics_listen = Some("127.0.0.1:0".into())).await;
    cluster.wait_for_followers(0, 1).await;
    let mut client = cluster.client(0).await;
    assert_eq!(client.request(b"SET a 1").await, b"OK");

    let leader = scrape(cluster.node(0).metrics_addr().expect("leader metrics")).await;
    assert_eq!(value(&leader, "msglog_replication_leader", PARTITION_0), Some(1.0));
    assert_eq!(value(&leader, "msglog_replication_connected_followers", PARTITION_0), Some(1.0));
    // Tolerance 1: the OK came after the follower acknowledged, so it lags by nothing.
    let n1 = &[("partition", "0"), ("follower", "n1")];
    assert_eq!(value(&leader, "msglog_replication_follower_lag_records", n1), Some(0.0));
    let follower = scrape(cluster.node(1).metrics_addr().expect("follower metrics")).await;
    assert_eq!(value(&follower, "msglog_replication_leader", PARTITION_0), Some(0.0));
    assert!(value(&follower, "msglog_replication_lag_records", PARTITION_0).is_some());
    drop(client);
    cluster.shutdown().await;
}

/// A loopback address on a free port.
fn loopback_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().expect("addr")
}

/// Scrapes `metrics` until `ready` holds for what it read, or panics naming `what`.
async fn scrape_until(metrics: SocketAddr, what: &str, ready: impl Fn(&prometheus_parse::Scrape) -> bool) {
    let deadline = std::time::Instant::now() + DEADLINE;
    while !ready(&scrape(metrics).await) {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_metrics_show_the_isr_the_high_watermark_the_leader_and_leader_changes() {
    let dir = TempDir::new().unwrap();
    // (client, gRPC, metrics) addresses of n0, n1, n2.
    let addrs: Vec<[SocketAddr; 3]> = (0..3).map(|_| [loopback_addr(), loopback_addr(), loopback_addr()]).collect();
    let voters: Vec<String> = addrs.iter().enumerate().map(|(i, [_, grpc, _])| format!("n{i}={grpc}")).collect();
    let voters = voters.join(",");
    let mut nodes: Vec<Option<ServerProcess>> = addrs
        .iter()
        .enumerate()
        .map(|(i, [client, grpc, metrics])| {
            let (name, metrics) = (format!("n{i}"), metrics.to_string());
            let args = ["--node-id", &name, "--cluster", &voters, "--tolerance", "1", "--metrics-listen", &metrics];
            Some(ServerProcess::spawn_on(&dir.path().join(&name), *client, *grpc, &args))
        })
        .collect();
    nodes.iter_mut().flatten().for_each(ServerProcess::wait_until_ready);
    let stats = |i: usize| common::stats(addrs[i][0]);
    let leader = poll_until("a leader with all three in its ISR", || {
        (0..3).find(|&i| {
            let s = stats(i);
            s.get("leader").is_some_and(|l| l == "self") && s.get("isr").is_some_and(|isr| isr.split(',').count() == 3)
        })
    });
    let mut client = LineClient::connect(addrs[leader][0]).unwrap();
    assert_eq!(client.request(b"SET a 1").unwrap(), b"OK");

    // One partition: the cluster's gauges read here are partition 0's.
    let gauge = |scrape: &prometheus_parse::Scrape, name: &str| value(scrape, name, PARTITION_0);
    let mut changes_before = Vec::new();
    for (i, [_, _, metrics]) in addrs.iter().enumerate() {
        // A follower learns the high watermark from the leader's next chunk.
        scrape_until(*metrics, "the high watermark to reach 1", |s| {
            gauge(s, "msglog_cluster_high_watermark") == Some(1.0)
        })
        .await;
        let s = scrape(*metrics).await;
        let leads = if i == leader { 1.0 } else { 0.0 };
        assert_eq!(gauge(&s, "msglog_cluster_partition_leader"), Some(leads), "n{i}");
        assert_eq!(value(&s, "msglog_cluster_partitions_led", &[]), Some(leads), "n{i}");
        assert_eq!(gauge(&s, "msglog_cluster_isr_size"), Some(3.0), "n{i}");
        let changes = gauge(&s, "msglog_cluster_leader_changes_total").expect("a leader change counter");
        assert!(changes >= 1.0, "n{i} has learnt of a leader: {changes}");
        changes_before.push(changes);
    }

    let mut old = nodes[leader].take().expect("running");
    old.signal(libc::SIGTERM);
    assert!(old.wait_for_exit().success(), "{}", old.stderr());
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let new_leader = poll_until("a new leader", || survivors.iter().copied().find(|&i| stats(i)["leader"] == "self"));
    for &i in &survivors {
        let metrics = addrs[i][2];
        let before = changes_before[i];
        scrape_until(metrics, "the leader change to be counted", |s| {
            gauge(s, "msglog_cluster_leader_changes_total").is_some_and(|now| now > before)
        })
        .await;
        let leads = if i == new_leader { 1.0 } else { 0.0 };
        scrape_until(metrics, "the new leader to show", |s| gauge(s, "msglog_cluster_partition_leader") == Some(leads))
            .await;
    }
    // The new leader drops the stopped one from the ISR once it is seen to be gone.
    scrape_until(addrs[new_leader][2], "the ISR to shrink to 2", |s| gauge(s, "msglog_cluster_isr_size") == Some(2.0))
        .await;
}

/// Every series of `metric` in `scrape`, as (its `partition` label, value), in partition
/// order.
fn per_partition(scrape: &prometheus_parse::Scrape, metric: &str) -> Vec<(u32, f64)> {
    let mut series: Vec<(u32, f64)> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .map(|s| {
            let partition = s.labels.get("partition").unwrap_or_else(|| panic!("{metric} without a partition"));
            let prometheus_parse::Value::Gauge(v) = s.value else { panic!("{metric} is a gauge") };
            (partition.parse().expect("a partition number"), v)
        })
        .collect();
    series.sort_by_key(|(partition, _)| *partition);
    series
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_cluster_metrics_total_every_partition_and_name_each_partitions_leader() {
    const PARTITIONS: u32 = 3;
    const IDS: u64 = 30;
    let dir = TempDir::new().unwrap();
    // (client, gRPC, metrics) addresses of n0, n1, n2.
    let addrs: Vec<[SocketAddr; 3]> = (0..3).map(|_| [loopback_addr(), loopback_addr(), loopback_addr()]).collect();
    let voters: Vec<String> = addrs.iter().enumerate().map(|(i, [_, grpc, _])| format!("n{i}={grpc}")).collect();
    let voters = voters.join(",");
    let partitions = PARTITIONS.to_string();
    let mut nodes: Vec<ServerProcess> = addrs
        .iter()
        .enumerate()
        .map(|(i, [client, grpc, metrics])| {
            let (name, metrics) = (format!("n{i}"), metrics.to_string());
            let args =
                ["--node-id", &name, "--cluster", &voters, "--partitions", &partitions, "--metrics-listen", &metrics];
            ServerProcess::spawn_on(&dir.path().join(&name), *client, *grpc, &args)
        })
        .collect();
    nodes.iter_mut().for_each(ServerProcess::wait_until_ready);
    // Written once each node leads the one partition placed first on it (a hand-over
    // answers a write caught in it 'may or may not have been applied').
    poll_until("each node to lead one partition", || {
        (0..3).all(|i| common::stats(addrs[i][0]).get("partitions_led").is_some_and(|led| led == "1")).then_some(())
    });
    let mut client = LineClient::connect(addrs[0][0]).unwrap();
    for id in 0..IDS {
        assert_eq!(client.request(format!("SET id-{id} m").as_bytes()).unwrap(), b"OK", "SET id-{id}");
    }

    let mut leaders = vec![0.0; PARTITIONS as usize];
    for (i, [client, _, metrics]) in addrs.iter().enumerate() {
        // Three copies of each partition: every node ends up holding every ID.
        scrape_until(*metrics, "every ID to reach the node", |s| value(s, "msglog_log_ids", &[]) == Some(IDS as f64))
            .await;
        let s = scrape(*metrics).await;
        let ids = common::stats(*client)["ids"].parse::<f64>().expect("STATS ids=");
        assert_eq!(value(&s, "msglog_log_ids", &[]), Some(ids), "n{i}: STATS and metrics count the same IDs");
        // Nothing is compacted or deleted yet, so each log holds a record per offset.
        let next_offsets = per_partition(&s, "msglog_log_next_offset");
        assert_eq!(next_offsets.iter().map(|(p, _)| *p).collect::<Vec<_>>(), [0, 1, 2], "n{i}");
        let offsets: f64 = next_offsets.iter().map(|(_, offset)| offset).sum();
        assert_eq!(value(&s, "msglog_log_records", &[]), Some(offsets), "n{i}: records of every partition");
        let led = per_partition(&s, "msglog_cluster_partition_leader");
        assert_eq!(led.iter().map(|(p, _)| *p).collect::<Vec<_>>(), [0, 1, 2], "n{i}: a series per partition");
        assert_eq!(value(&s, "msglog_cluster_partitions_led", &[]), Some(1.0), "n{i}");
        for (p, leads) in led {
            leaders[p as usize] += leads;
        }
        assert_eq!(per_partition(&s, "msglog_cluster_isr_size").len(), PARTITIONS as usize, "n{i}");
        let changes = |p: &str| value(&s, "msglog_cluster_leader_changes_total", &[("partition", p)]);
        assert!((0..PARTITIONS).all(|p| changes(&p.to_string()) >= Some(1.0)), "n{i} learnt every leader");
    }
    assert_eq!(leaders, [1.0; PARTITIONS as usize], "one node leads each partition");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_off_by_default() {
    let cluster = TestCluster::start(1, 0).await;
    assert_eq!(cluster.node(0).metrics_addr(), None);
    cluster.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Processes: config file, logs, start checks
// ---------------------------------------------------------------------------------------

/// A `msglog serve` started with exactly the given arguments and environment (no
/// MSGLOG_* or RUST_LOG inherited), SIGKILLed by PID when dropped.
struct Serve {
    child: Child,
    stderr: PathBuf,
}

impl Serve {
    fn spawn(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Serve {
        let stderr = dir.join(format!("serve-{}.stderr", free_port()));
        let file = std::fs::File::create(&stderr).expect("stderr file");
        let child = clean(msglog())
            .arg("serve")
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn msglog serve");
        Serve { child, stderr }
    }

    /// Waits until it accepts clients on `addr`, then returns a client.
    fn client(&mut self, addr: SocketAddr) -> LineClient {
        poll_until("the server to accept clients", || {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("server exited early with {status}:\n{}", self.stderr());
            }
            LineClient::connect(addr).ok()
        })
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on our own unreaped child's PID.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

/// The command without the settings this test process's environment might carry.
fn clean(mut command: Command) -> Command {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("MSGLOG_") || key == "RUST_LOG" {
            command.env_remove(key);
        }
    }
    command
}

/// Runs a `msglog serve` that is expected to refuse to start; returns its stderr.
/// Anything not in `args` is a fresh data dir and free loopback ports, so a check that
/// failed to refuse starts a harmless server rather than one on the defaults.
fn refused_start(args: &[&str]) -> String {
    let dir = TempDir::new().expect("temp dir");
    let data = dir.path().join("data");
    let (data, listen) = (data.to_str().expect("utf8"), loopback());
    let mut all = args.to_vec();
    for (flag, value) in [("--data-dir", data), ("--listen", &listen), ("--grpc-listen", "127.0.0.1:0")] {
        if !args.contains(&flag) {
            all.extend([flag, value]);
        }
    }
    let mut server = Serve::spawn(dir.path(), &all, &[]);
    let status = poll_until("serve to refuse to start", || server.child.try_wait().expect("try_wait"));
    assert!(!status.success(), "serve {all:?} exited 0");
    server.stderr()
}

fn loopback() -> String {
    format!("127.0.0.1:{}", free_port())
}

fn stats(client: &mut LineClient) -> HashMap<String, String> {
    let line = client.request(b"STATS").expect("STATS");
    String::from_utf8(line)
        .expect("utf8")
        .split(' ')
        .filter_map(|pair| pair.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

#[test]
fn config_file_settings_lose_to_env_which_loses_to_flags() {
    let dir = TempDir::new().expect("temp dir");
    let listen = loopback();
    let file = dir.path().join("msglog.toml");
    std::fs::write(
        &file,
        format!(
            "# every key is a serve flag's long name\nlisten = \"{listen}\"\ngrpc-listen = \"127.0.0.1:0\"\n\
             data-dir = \"{}\"\nnode-id = \"from-file\"\nmax-message-bytes = \"1K\"\n",
            dir.path().join("data").display()
        ),
    )
    .expect("write config");
    let config = file.to_str().expect("utf8 path");
    let addr: SocketAddr = listen.parse().expect("addr");
    let node_id_with = |args: &[&str], env: &[(&str, &str)]| {
        let mut server = Serve::spawn(dir.path(), &[&["--config", config], args].concat(), env);
        let mut client = server.client(addr);
        let node_id = stats(&mut client).remove("node_id").expect("node_id");
        // The file's max-message-bytes applies too: 1K refuses a 2000-byte message.
        let long = [&b"SET big "[..], &[b'x'; 2000]].concat();
        assert!(client.request(&long).expect("reply").starts_with(b"ERR "), "max-message-bytes from the file");
        node_id
    };
    assert_eq!(node_id_with(&[], &[]), "from-file");
    assert_eq!(node_id_with(&[], &[("MSGLOG_NODE_ID", "from-env")]), "from-env");
    assert_eq!(node_id_with(&["--node-id", "from-flag"], &[("MSGLOG_NODE_ID", "from-env")]), "from-flag");
}

#[test]
fn config_file_unknown_key_is_an_error_naming_it() {
    let dir = TempDir::new().expect("temp dir");
    let file = dir.path().join("msglog.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:0\"\nmax-mesage-bytes = 10\n").expect("write config");
    let data = dir.path().join("data");
    let output = refused_start(&["--config", file.to_str().expect("utf8"), "--data-dir", data.to_str().expect("utf8")]);
    assert!(output.contains("unknown key 'max-mesage-bytes'"), "{}", output);
    assert!(!data.exists(), "nothing was started");
}

#[test]
fn json_logs_carry_the_recovery_line_and_log_level_beats_rust_log() {
    let dir = TempDir::new().expect("temp dir");
    let listen = loopback();
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf8");
    let args = ["--data-dir", data, "--listen", &listen, "--grpc-listen", "127.0.0.1:0", "--log-format", "json"];
    let mut server = Serve::spawn(dir.path(), &args, &[("RUST_LOG", "info")]);
    server.client(listen.parse().expect("addr"));
    let logs = server.stderr();
    let lines: Vec<serde_json::Value> =
        logs.lines().map(|line| serde_json::from_str(line).expect("every log line is JSON")).collect();
    let recovered = lines
        .iter()
        .filter_map(|line| line["fields"]["message"].as_str())
        .find(|message| message.starts_with("recovered "))
        .unwrap_or_else(|| panic!("a recovery line in {logs}"));
    assert!(recovered.starts_with("recovered 0 records, 0 IDs in "), "{recovered}");
    drop(server);

    let quiet = [&args[..], &["--log-level", "warn"]].concat();
    let mut server = Serve::spawn(dir.path(), &quiet, &[("RUST_LOG", "info")]);
    let mut client = server.client(listen.parse().expect("addr"));
    assert_eq!(client.request(b"PING").expect("PING"), b"PONG");
    assert!(!server.stderr().contains("recovered"), "--log-level warn hides info lines: {}", server.stderr());
}

#[test]
fn listen_without_a_host_names_host_port() {
    let output = refused_start(&["--listen", "6666"]);
    assert!(output.contains("host:port"), "{}", output);
}

#[test]
fn data_dir_that_is_a_file_is_not_a_directory() {
    let dir = TempDir::new().expect("temp dir");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").expect("write file");
    let output = refused_start(&["--data-dir", file.to_str().expect("utf8"), "--listen", &loopback()]);
    assert!(output.contains("is not a directory"), "{}", output);
}

#[test]
fn max_message_bytes_zero_is_refused() {
    let output = refused_start(&["--max-message-bytes", "0"]);
    assert!(output.contains("--max-message-bytes"), "{}", output);
}

#[test]
fn follow_naming_its_own_grpc_listen_is_refused() {
    let dir = TempDir::new().expect("temp dir");
    let grpc = loopback();
    let data = dir.path().join("data");
    let args = ["--data-dir", data.to_str().expect("utf8"), "--grpc-listen", &grpc, "--follow", &grpc];
    let output = refused_start(&args);
    assert!(output.contains("own --grpc-listen"), "{}", output);
}

#[test]
fn a_failed_start_leaves_no_data_dir_behind() {
    let dir = TempDir::new().expect("temp dir");
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = held.local_addr().expect("addr").to_string();
    let data = dir.path().join("data");
    let output = refused_start(&["--data-dir", data.to_str().expect("utf8"), "--listen", &taken]);
    assert!(output.contains("cannot listen"), "{}", output);
    assert!(!data.exists(), "the data dir made by the failed start is removed");
    drop(held);
}

#[test]
fn the_example_config_file_is_accepted() {
    let dir = TempDir::new().expect("temp dir");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/msglog.example.toml");
    let listen = loopback();
    let data = dir.path().join("data");
    let args = ["--config", example, "--data-dir", data.to_str().expect("utf8"), "--listen", &listen];
    let mut server = Serve::spawn(dir.path(), &[&args[..], &["--grpc-listen", "127.0.0.1:0"]].concat(), &[]);
    let mut client = server.client(listen.parse().expect("addr"));
    assert_eq!(client.request(b"PING").expect("PING"), b"PONG");
}

#[test]
fn systemd_is_told_ready_once_clients_are_accepted_and_stopping_on_sigterm() {
    use std::os::unix::net::UnixDatagram;
    let dir = TempDir::new().expect("temp dir");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind notify socket");
    socket.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let listen = loopback();
    let data = dir.path().join("data");
    let args = ["--data-dir", data.to_str().expect("utf8"), "--listen", &listen, "--grpc-listen", "127.0.0.1:0"];
    let mut server = Serve::spawn(dir.path(), &args, &[("NOTIFY_SOCKET", socket_path.to_str().expect("utf8"))]);
    let mut message = [0u8; 64];
    let n = socket.recv(&mut message).expect("a readiness message before the deadline");
    assert_eq!(&message[..n], b"READY=1");
    // Ready means serving: the first connection is answered without retrying.
    let mut client = LineClient::connect(listen.parse().expect("addr")).expect("connect once ready");
    assert_eq!(client.request(b"PING").expect("PING"), b"PONG");
    // SAFETY: kill(2) on our own unreaped child.
    unsafe { libc::kill(server.child.id() as libc::pid_t, libc::SIGTERM) };
    let n = socket.recv(&mut message).expect("a stopping message");
    assert_eq!(&message[..n], b"STOPPING=1");
    let status = poll_until("the server to exit", || server.child.try_wait().expect("try_wait"));
    assert!(status.success(), "graceful stop exits 0: {}", server.stderr());
}

#[test]
fn a_lost_follower_is_a_warning_on_the_leader() {
    let dir = TempDir::new().expect("temp dir");
    let leader = ServerProcess::start(&dir.path().join("leader"), &["--stats-interval", "0s"]);
    let grpc = leader.grpc.to_string();
    let follower_args = ["--follow", grpc.as_str(), "--node-id", "f1", "--stats-interval", "0s"];
    let mut follower = ServerProcess::start(&dir.path().join("follower"), &follower_args);
    let mut client = LineClient::connect(leader.addr).expect("connect");
    poll_until("the follower to connect", || (stats(&mut client)["followers"] == "1").then_some(()));
    follower.kill9();
    let line = poll_until("a warning about the lost follower", || {
        leader.stderr().lines().find(|line| line.contains("lost a follower")).map(str::to_string)
    });
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("follower=f1"), "{line}");
}

#[test]
fn a_follower_known_from_an_earlier_run_is_waited_for_and_not_reported_lost() {
    let dir = TempDir::new().expect("temp dir");
    let leader_dir = dir.path().join("leader");
    let args = ["--stats-interval", "0s"];
    let mut leader = ServerProcess::start(&leader_dir, &args);
    let grpc = leader.grpc.to_string();
    let follower_args = ["--follow", grpc.as_str(), "--node-id", "f1", "--stats-interval", "0s"];
    let mut follower = ServerProcess::start(&dir.path().join("follower"), &follower_args);
    let mut client = LineClient::connect(leader.addr).expect("connect");
    assert_eq!(client.request(b"SET a 1").expect("SET"), b"OK");
    // The leader names a follower in its followers file before shipping it a record.
    poll_until("the leader to remember the follower", || {
        let text = std::fs::read_to_string(leader_dir.join("followers")).unwrap_or_default();
        text.lines().any(|line| line == "f1").then_some(())
    });
    drop(client);
    for node in [&mut follower, &mut leader] {
        node.signal(libc::SIGTERM);
        assert!(node.wait_for_exit().success(), "{}", node.stderr());
    }
    let leader = ServerProcess::start(&leader_dir, &args);
    let line = poll_until("the leader to say it waits for f1", || {
        leader.stderr().lines().find(|line| line.contains("known from an earlier run")).map(str::to_string)
    });
    assert!(line.contains("follower=f1"), "{line}");
    // Said on the same look that would have reported it lost.
    assert!(!leader.stderr().contains("lost a follower"), "{}", leader.stderr());
}

#[test]
fn two_followers_sharing_a_node_id_are_a_warning_on_the_leader() {
    let dir = TempDir::new().expect("temp dir");
    let leader = ServerProcess::start(&dir.path().join("leader"), &["--stats-interval", "0s"]);
    let grpc = leader.grpc.to_string();
    let follower_args = ["--follow", grpc.as_str(), "--node-id", "twin", "--stats-interval", "0s"];
    let _first = ServerProcess::start(&dir.path().join("first"), &follower_args);
    let _second = ServerProcess::start(&dir.path().join("second"), &follower_args);
    let line = poll_until("a warning about the shared ID", || {
        leader.stderr().lines().find(|line| line.contains("share this node ID")).map(str::to_string)
    });
    assert!(line.contains("WARN") && line.contains("follower=twin") && line.contains("streams=2"), "{line}");
}

/// More serving loops than CPUs take turns on the cores: the server starts, and says so.
#[test]
fn more_serving_loops_than_cpus_start_with_a_warning() {
    let dir = TempDir::new().expect("temp dir");
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let listen = loopback();
    let data = dir.path().join("data");
    let loops = (cpus + 1).to_string();
    let args = ["--data-dir", data.to_str().expect("utf8"), "--listen", &listen, "--grpc-listen", "127.0.0.1:0"];
    let mut server = Serve::spawn(dir.path(), &[&args[..], &["--serving-loops", &loops]].concat(), &[]);
    let mut client = server.client(listen.parse().expect("addr"));
    assert_eq!(client.request(b"SET k v").expect("SET"), b"OK");
    // The warning is logged before the loops start, so before any reply.
    let stderr = server.stderr();
    assert!(stderr.contains("more serving loops than CPUs") && stderr.contains(&format!("cpus={cpus}")), "{stderr}");
}
