//! A data dir written by a msglog from before `log-id` (records, no `<data-dir>/log-id`)
//! leads only on the operator's word, `msglog serve --adopt-log` (README "Replication"): a
//! follower's old copy looks the same on disk and must not lead.

mod common;

use std::path::Path;

use common::{LineClient, ServerProcess};
use msglog::storage::{Config, Log};
use tempfile::TempDir;

/// A data dir as an older msglog left it: records, and no `log-id` file.
fn old_data_dir(dir: &Path) {
    let log = Log::open(dir, Config::default()).expect("open");
    log.append(b"greeting", b"from before log ids").expect("append");
    log.close().expect("close");
    assert!(!dir.join("log-id").exists(), "the library writes no log-id by itself");
}

fn get(server: &ServerProcess, id: &str) -> String {
    let mut client = LineClient::connect(server.addr).expect("connect");
    let reply = client.request(format!("GET {id}").as_bytes()).expect("GET");
    String::from_utf8_lossy(&reply).trim_end().to_string()
}

#[test]
fn an_old_data_dir_with_records_leads_only_with_adopt_log_and_then_without_it() {
    let tmp = TempDir::new().expect("tempdir");
    let data = tmp.path().join("data");
    old_data_dir(&data);

    let mut refused = ServerProcess::spawn(&data, &[]);
    assert!(!refused.wait_for_exit().success(), "a leader start on an unmarked dir with records");
    let stderr = refused.stderr();
    assert!(
        stderr.contains("this data dir has records but no log-id (written by an older msglog)")
            && stderr.contains("start it once with --adopt-log"),
        "{stderr}"
    );
    assert!(!data.join("log-id").exists(), "a refused start marks nothing");

    let adopted = ServerProcess::start(&data, &["--adopt-log"]);
    assert_eq!(get(&adopted, "greeting"), "from before log ids");
    let lineage = std::fs::read_to_string(data.join("log-id")).expect("log-id written");
    assert!(lineage.contains("origin=began"), "{lineage}");
    drop(adopted);

    let again = ServerProcess::start(&data, &[]);
    assert_eq!(get(&again, "greeting"), "from before log ids", "once marked, it starts without the flag");
    assert_eq!(std::fs::read_to_string(data.join("log-id")).expect("log-id"), lineage, "and keeps its log id");
}

#[test]
fn an_empty_data_dir_leads_without_any_flag() {
    let tmp = TempDir::new().expect("tempdir");
    let server = ServerProcess::start(&tmp.path().join("data"), &[]);
    assert_eq!(get(&server, "anything"), "NOT_FOUND");
}

#[test]
fn adopt_log_is_refused_with_follow() {
    let tmp = TempDir::new().expect("tempdir");
    let out = common::msglog()
        .args(["serve", "--adopt-log", "--follow", "127.0.0.1:1", "--data-dir"])
        .arg(tmp.path().join("data"))
        .output()
        .expect("run msglog serve");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--adopt-log"), "{out:?}");
}
