//! Real Redis clients against an in-process msglog: the `redis` crate always, and
//! `redis-cli` / `redis-benchmark` when they are installed (skipped, and said so, if not;
//! with `MSGLOG_REQUIRE_TOOLS=1`, as `.ci/run` sets, a missing tool fails instead).

mod common;

use std::process::Output;

use common::{DEADLINE, TestServer, resp};
use msglog::server::ServerConfig;
use redis::Commands;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_crate_works_unchanged() {
    let server = TestServer::start().await;
    let url = format!("redis://{}/", server.addr);
    let client = tokio::task::spawn_blocking(move || -> redis::RedisResult<()> {
        let mut con = redis::Client::open(url)?.get_connection_with_timeout(DEADLINE)?;
        con.set_read_timeout(Some(DEADLINE))?;
        assert_eq!(redis::cmd("PING").query::<String>(&mut con)?, "PONG");

        let () = con.set("greeting", "hello world")?;
        assert_eq!(con.get::<_, String>("greeting")?, "hello world");
        assert_eq!(con.get::<_, Option<String>>("missing")?, None);

        let binary: Vec<u8> = (0u8..=255).chain(*b"\r\n").collect();
        let () = con.set(b"bin\xff", &binary)?;
        assert_eq!(con.get::<_, Vec<u8>>(b"bin\xff")?, binary);

        let () = con.mset(&[("a", "1"), ("b", "2")])?;
        assert_eq!(
            con.mget::<_, Vec<Option<String>>>(&["a", "nope", "b"])?,
            [Some("1".into()), None, Some("2".into())]
        );
        assert_eq!(con.exists::<_, usize>(&["a", "b", "nope"])?, 2);
        assert_eq!(con.del::<_, usize>(&["a", "nope"])?, 1);
        assert!(!con.exists::<_, bool>("a")?);

        // A refused request is an error reply, and the connection carries on.
        let refused = redis::cmd("SET").arg("k").arg("v").arg("EX").arg(10).query::<()>(&mut con).unwrap_err();
        assert!(refused.to_string().contains("not supported"), "{refused}");
        let bad_id = con.set::<_, _, ()>("has space", "v").unwrap_err();
        assert!(bad_id.to_string().contains("invalid id"), "{bad_id}");
        assert_eq!(con.get::<_, String>("b")?, "2");
        Ok(())
    });
    tokio::time::timeout(DEADLINE, client).await.expect("client finished").expect("client thread").expect("redis");
    server.stop().await;
}

/// Runs an installed tool to completion, or `None` if it is not installed (a failure when
/// `MSGLOG_REQUIRE_TOOLS=1`: a test that passes without its tool tests nothing).
async fn run(tool: &str, args: &[&str]) -> Option<Output> {
    let child = tokio::process::Command::new(tool).args(args).kill_on_drop(true).output();
    match tokio::time::timeout(DEADLINE, child).await.expect("tool finished before the deadline") {
        Ok(output) => Some(output),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let required = std::env::var("MSGLOG_REQUIRE_TOOLS").is_ok_and(|v| v == "1");
            assert!(!required, "{tool} is not installed and MSGLOG_REQUIRE_TOOLS=1 (install redis-tools)");
            None
        }
        Err(err) => panic!("could not run {tool}: {err}"),
    }
}

/// `redis-cli -h 127.0.0.1 -p <port> <args>`; `None` if it is not installed.
async fn redis_cli(port: &str, args: &[&str]) -> Option<Output> {
    let mut full = vec!["-h", "127.0.0.1", "-p", port];
    full.extend_from_slice(args);
    run("redis-cli", &full).await
}

/// Runs redis-benchmark's SET and GET tests with `extra` flags and checks that both ran
/// and that its stderr holds none of `errors`.
async fn benchmark_runs_clean(port: &str, extra: &[&str], errors: &[&str]) {
    let mut args = vec!["-h", "127.0.0.1", "-p", port, "-t", "set,get", "-n", "2000", "-q"];
    args.extend_from_slice(extra);
    match run("redis-benchmark", &args).await {
        None => eprintln!("skipped: redis-benchmark is not installed"),
        Some(output) => {
            let report = stdout(&output);
            assert!(report.contains("SET: ") && report.contains("GET: "), "{report}");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(!errors.iter().any(|e| stderr.contains(e)), "{stderr}");
        }
    }
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "{:?}: {}", output.status, String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_and_redis_benchmark_work_with_no_flags() {
    let server = TestServer::start().await;
    let port = server.addr.port().to_string();
    let cli = |args: &'static [&'static str]| redis_cli(&port, args);
    let Some(set) = cli(&["SET", "a", "b c"]).await else {
        eprintln!("skipped: redis-cli is not installed");
        server.stop().await;
        return;
    };
    assert_eq!(stdout(&set), "OK\n");
    assert_eq!(stdout(&cli(&["GET", "a"]).await.expect("redis-cli")), "b c\n");
    assert_eq!(stdout(&cli(&["EXISTS", "a", "nope"]).await.expect("redis-cli")), "1\n");
    assert_eq!(stdout(&cli(&["DBSIZE"]).await.expect("redis-cli")), "1\n");
    assert_eq!(stdout(&cli(&["DEL", "a"]).await.expect("redis-cli")), "1\n");
    assert_eq!(stdout(&cli(&["GET", "a"]).await.expect("redis-cli")), "\n");

    benchmark_runs_clean(&port, &[], &["ERR", "rror"]).await;
    server.stop().await;
}

const SECRET: &str = "s3cret-pw";

async fn server_with_password() -> TestServer {
    let password = msglog::server::Password::new(SECRET).expect("password");
    let config = ServerConfig { stats_interval: None, password: Some(password), ..ServerConfig::default() };
    TestServer::start_with(config, msglog::storage::Config::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_and_redis_benchmark_authenticate_with_dash_a() {
    let server = server_with_password().await;
    let port = server.addr.port().to_string();
    let cli = |args: Vec<&'static str>| {
        let port = port.clone();
        async move { redis_cli(&port, &[&["--no-auth-warning"][..], &args].concat()).await }
    };
    let Some(refused) = cli(vec!["SET", "a", "b"]).await else {
        eprintln!("skipped: redis-cli is not installed");
        server.stop().await;
        return;
    };
    assert_eq!(stdout(&refused).trim_end(), "NOAUTH Authentication required.");
    assert_eq!(stdout(&cli(vec!["-a", SECRET, "SET", "a", "b"]).await.expect("redis-cli")), "OK\n");
    assert_eq!(stdout(&cli(vec!["-a", SECRET, "GET", "a"]).await.expect("redis-cli")), "b\n");
    let wrong = cli(vec!["-a", "wrong", "GET", "a"]).await.expect("redis-cli");
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("WRONGPASS"), "{wrong:?}");
    assert_eq!(stdout(&wrong).trim_end(), "NOAUTH Authentication required.");

    benchmark_runs_clean(&port, &["-a", SECRET], &["NOAUTH", "WRONGPASS"]).await;
    server.stop().await;
}

/// `redis-cli -u <url> <args>`; `None` if it is not installed.
async fn redis_cli_url(url: &str, args: &[&str]) -> Option<Output> {
    run("redis-cli", &[&["--no-auth-warning", "-u", url][..], args].concat()).await
}

/// `redis-cli -u redis://default:<pw>@…` authenticates as on Redis, whose user `default` is
/// the requirepass user. With the user left empty, `redis://:<pw>@…`, redis-cli 7.0 sends
/// `AUTH "" <pw>`, which Redis 7 refuses (there is no user ""): msglog must refuse it alike,
/// and a redis-cli that sends the password alone for it gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_authenticates_from_a_url_as_with_redis() {
    let server = server_with_password().await;
    let url = |user: &str, password: &str| format!("redis://{user}:{password}@{}", server.addr);
    let Some(set) = redis_cli_url(&url("default", SECRET), &["SET", "u", "v"]).await else {
        eprintln!("SKIPPED: redis-cli is not installed");
        server.stop().await;
        return;
    };
    assert_eq!(stdout(&set), "OK\n");
    assert_eq!(stdout(&redis_cli_url(&url("default", SECRET), &["GET", "u"]).await.expect("redis-cli")), "v\n");
    let wrongpass = "WRONGPASS invalid username-password pair or user is disabled.";
    let refused = |output: &Output| {
        let (out, err) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(err.contains(&format!("AUTH failed: {wrongpass}")), "{output:?}");
        assert_eq!(out.trim_end(), "NOAUTH Authentication required.", "nothing ran unauthenticated");
    };
    refused(&redis_cli_url(&url("default", "wrong"), &["GET", "u"]).await.expect("redis-cli"));

    // What redis-cli 7.0 sends for an empty user, answered as Redis 7 answers it.
    let mut raw = server.connect().await;
    raw.send(&resp(&[b"AUTH", b"", SECRET.as_bytes()])).await;
    assert_eq!(String::from_utf8_lossy(&raw.read_reply().await), format!("-{wrongpass}"));
    let empty_user = redis_cli_url(&url("", SECRET), &["GET", "u"]).await.expect("redis-cli");
    if String::from_utf8_lossy(&empty_user.stderr).contains("AUTH failed") {
        refused(&empty_user);
    } else {
        assert_eq!(stdout(&empty_user), "v\n", "a redis-cli that sends the password alone is let in");
    }
    server.stop().await;
}
