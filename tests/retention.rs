//! Retention (`--retention-bytes`, `--retention-age`): whole old sealed segments are
//! deleted, crash-atomically, the log start survives a restart, IDs whose latest record
//! went read NOT_FOUND, and `serve`, STATS, INFO, /metrics and `tail` show it.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::compaction::{CountingFs, segment_bases, small_segments as config, temp_dir};
use common::fs::PowerCutFs;
use common::{LineClient, ServerProcess, msglog, poll_until};
use msglog::storage::check::check;
use msglog::storage::record::encode;
use msglog::storage::{Log, RecordKind, Retention, StorageError};

const BY_BYTES: fn(u64) -> Retention = |bytes| Retention { bytes: Some(bytes), age: None };

/// Opens the log in `dir` again once the previous handle is gone. Another test of this
/// binary spawning a process can hold a copy of the lock's descriptor for the moment
/// between its fork and exec, so `Locked` is waited out (bounded); any other error is
/// returned.
fn reopen(dir: &Path) -> Result<Log, StorageError> {
    poll_until("the data dir's lock to be free", || match Log::open(dir, config()) {
        Err(StorageError::Locked { .. }) => None,
        other => Some(other),
    })
}

/// Writes `count` distinct IDs (so every record stays live until retention) and returns
/// each ID's offset and message.
fn write_ids(log: &Log, count: u32) -> HashMap<String, (u64, Vec<u8>)> {
    let mut written = HashMap::new();
    for n in 0..count {
        let (id, message) = (format!("id-{n:04}"), format!("message {n} {}", "m".repeat(40)).into_bytes());
        let offset = log.append(id.as_bytes(), &message).unwrap();
        written.insert(id, (offset, message));
    }
    log.sync().unwrap();
    written
}

/// Every ID below `start` reads as absent, every other one its own message at its offset.
fn assert_reads(log: &Log, written: &HashMap<String, (u64, Vec<u8>)>, start: u64) {
    for (id, (offset, message)) in written {
        let found = log.get_with_offset(id.as_bytes()).unwrap();
        match *offset < start {
            true => assert_eq!(found, None, "{id} at {offset} is below the log start {start}"),
            false => assert_eq!(found, Some((*offset, message.clone())), "{id} at {offset}, log start {start}"),
        }
    }
}

#[test]
fn retention_by_bytes_deletes_whole_old_segments_down_to_the_limit_and_a_restart_keeps_it() {
    let dir = temp_dir();
    let log = Log::open(dir.path(), config()).unwrap();
    let written = write_ids(&log, 300);
    let before = log.stats();
    let limit = before.bytes / 3;
    let summary = log.apply_retention(&BY_BYTES(limit), log.next_offset(), 0).unwrap().expect("segments deleted");
    let after = log.stats();
    assert!(after.bytes >= limit, "never below the limit: {} < {limit}", after.bytes);
    assert!(after.bytes < limit + config().segment_bytes, "at most one segment over: {}", after.bytes);
    assert_eq!(after.bytes, before.bytes - summary.bytes);
    assert_eq!(log.log_start_offset(), summary.log_start);
    assert!(summary.log_start > 0);
    assert_eq!(after.next_offset, before.next_offset, "offsets unchanged");
    assert_eq!(after.records, before.records - summary.log_start, "one record per offset below the start");
    assert_eq!(after.ids, 300 - summary.log_start);
    assert_reads(&log, &written, summary.log_start);
    let first = log.read_from(0, 1 << 16).unwrap();
    assert_eq!(first.records().next().unwrap().unwrap().offset, summary.log_start, "reads start at the log start");
    assert!(segment_bases(dir.path()).iter().all(|&b| b >= summary.log_start), "old files unlinked");
    assert_eq!(log.retention_stats().deleted_bytes, summary.bytes);
    assert_eq!(log.apply_retention(&BY_BYTES(limit), log.next_offset(), 0).unwrap(), None, "nothing more is due");
    log.close().unwrap();

    let log = reopen(dir.path()).expect("a log starting above 0 opens");
    assert_eq!(log.log_start_offset(), summary.log_start);
    assert_eq!(log.stats().records, after.records);
    assert_reads(&log, &written, summary.log_start);
    log.close().unwrap();
    let report = check(dir.path(), &config(), |_| {}).unwrap();
    assert!(report.damage.is_none(), "{:?}", report.damage);
}

#[test]
fn retention_never_deletes_the_active_segment_or_one_reaching_the_clean_point() {
    let dir = temp_dir();
    let log = Log::open(dir.path(), config()).unwrap();
    let written = write_ids(&log, 200);
    let upto = log.next_offset() / 2;
    let summary = log.apply_retention(&BY_BYTES(0), upto, 0).unwrap().expect("segments below the clean point go");
    assert!(summary.log_start <= upto, "a segment holding {upto} is kept: start {}", summary.log_start);
    assert!(log.stats().segments > 2);
    let summary = log.apply_retention(&BY_BYTES(0), log.next_offset(), 0).unwrap().expect("the rest of the sealed");
    assert_eq!(log.stats().segments, 1, "only the active segment is left");
    assert_eq!(segment_bases(dir.path()), vec![summary.log_start]);
    assert_reads(&log, &written, summary.log_start);
    assert_eq!(log.append(b"after", b"all").unwrap(), 200, "appends continue the offsets");
    log.close().unwrap();
}

#[test]
fn retention_by_age_deletes_segments_whose_newest_record_is_older_than_the_age() {
    let dir = temp_dir();
    let log = Log::open(dir.path(), config()).unwrap();
    // Records stamped one second apart: the clock is the caller's, so no test waits.
    let mut frames = Vec::new();
    for offset in 0..100u64 {
        let message = format!("{offset:040}");
        encode(&mut frames, offset, 0, 1_000 * offset as i64, RecordKind::Set, b"id", message.as_bytes());
        log.append_raw(&std::mem::take(&mut frames)).unwrap();
    }
    log.sync().unwrap();
    let bases = segment_bases(dir.path());
    let age = Duration::from_secs(10);
    let policy = Retention { bytes: None, age: Some(age) };
    let young = |offset: u64| 1_000 * offset as i64 + 10_000;
    assert_eq!(log.apply_retention(&policy, 100, young(0)).unwrap(), None, "every segment holds a record as new");
    let summary = log.apply_retention(&policy, 100, young(50)).unwrap().expect("older segments go");
    let holding_50 = bases.iter().copied().filter(|&b| b <= 50).max().unwrap();
    assert_eq!(summary.log_start, holding_50, "exactly the segments wholly older than record 50: {bases:?}");
    assert_eq!(log.get(b"id").unwrap(), Some(format!("{:040}", 99).into_bytes()));
    log.close().unwrap();
}

#[test]
fn a_missing_segment_in_the_middle_is_still_refused_after_retention() {
    let dir = temp_dir();
    let log = Log::open(dir.path(), config()).unwrap();
    write_ids(&log, 200);
    log.apply_retention(&BY_BYTES(log.stats().bytes / 2), log.next_offset(), 0).unwrap().expect("deleted");
    log.close().unwrap();
    let bases = segment_bases(dir.path());
    assert!(bases.len() >= 3, "{bases:?}");
    std::fs::remove_file(dir.path().join("log").join(format!("{:020}.log", bases[1]))).unwrap();
    let err = reopen(dir.path()).err().expect("a hole is refused");
    assert!(err.to_string().contains("segment missing"), "{err}");
}

/// Only retention licenses deleting a file before the first listed segment: a manifest
/// that lost its first line (hand-edited, or written by a bug) makes recovery refuse, not
/// delete the oldest records.
#[test]
fn a_segment_before_the_first_listed_one_is_refused_unless_retention_deleted_it() {
    let dir = temp_dir();
    let log = Log::open(dir.path(), config()).unwrap();
    write_ids(&log, 200);
    log.close().unwrap();
    let bases = segment_bases(dir.path());
    assert!(bases.len() >= 3, "{bases:?}");
    let manifest = dir.path().join("log").join("MANIFEST");
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(!text.contains("log-start"), "no retention ran: {text}");
    let without_first: String = text.lines().filter(|l| *l != bases[0].to_string()).map(|l| format!("{l}\n")).collect();
    std::fs::write(&manifest, &without_first).unwrap();
    let err = reopen(dir.path()).err().expect("an unexplained first segment is refused");
    assert!(err.to_string().contains("not in the manifest"), "{err}");
    assert_eq!(segment_bases(dir.path()), bases, "nothing deleted");
}

/// A power cut at every file operation of a retention step: the reopened log (strict
/// recovery) holds either the old segments or the new set, never a mix, and no file
/// below its start.
#[test]
fn a_power_cut_during_retention_leaves_the_old_or_the_new_set() {
    let run = |cut_after: Option<u64>| {
        let dir = temp_dir();
        let power = Arc::new(PowerCutFs::new(cut_after.unwrap_or(0), cut_after));
        let fs = Arc::new(CountingFs::new(power.clone()));
        let log = Log::open_with(dir.path(), config(), fs.clone()).unwrap();
        let written = write_ids(&log, 120);
        let ops_before = fs.ops();
        let deleted = log.apply_retention(&BY_BYTES(log.stats().bytes / 2), log.next_offset(), 0);
        let ops_during = fs.ops() - ops_before;
        power.cut_power();
        drop(log);
        power.restore();
        let log = reopen(dir.path()).expect("strict recovery accepts an interrupted retention");
        let start = log.log_start_offset();
        assert_reads(&log, &written, start);
        log.close().unwrap();
        assert!(segment_bases(dir.path()).iter().all(|&b| b >= start), "recovery removed the leftovers");
        (ops_before, ops_during, start, deleted.ok().flatten().map(|s| s.log_start))
    };
    let (ops_before, ops_during, start, deleted) = run(None);
    let new_start = deleted.expect("without a cut, retention deletes");
    assert_eq!(start, new_start);
    let mut seen = std::collections::BTreeSet::new();
    for cut in ops_before..=ops_before + ops_during {
        let (_, _, start, _) = run(Some(cut));
        assert!(start == 0 || start == new_start, "cut after {cut} ops: log start {start}");
        seen.insert(start);
    }
    assert_eq!(seen, [0, new_start].into(), "cuts land on both sides of the manifest rewrite");
}

// ---------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------

/// INFO `section` over RESP, as `key -> value`.
fn info(addr: SocketAddr, section: &str) -> HashMap<String, String> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(common::DEADLINE)).unwrap();
    stream.write_all(&common::resp(&[b"INFO", section.as_bytes()])).unwrap();
    let mut reader = BufReader::new(stream);
    let mut header = String::new();
    reader.read_line(&mut header).unwrap();
    let len: usize = header.trim_end().strip_prefix('$').and_then(|n| n.parse().ok()).expect("a bulk string");
    let mut body = vec![0; len + 2];
    reader.read_exact(&mut body).unwrap();
    let body = String::from_utf8(body).unwrap();
    body.lines().filter_map(|l| l.split_once(':')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn metric(addr: SocketAddr, name: &str) -> f64 {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let scrape = runtime.block_on(common::prometheus::scrape(addr));
    common::prometheus::value(&scrape, name, &[]).unwrap_or_else(|| panic!("{name} in /metrics"))
}

#[test]
fn serve_with_retention_bytes_deletes_old_segments_and_reports_the_log_start() {
    let dir = tempfile::TempDir::new().unwrap();
    let data = dir.path().join("data");
    let metrics: SocketAddr = format!("127.0.0.1:{}", common::free_port()).parse().unwrap();
    let metrics_arg = metrics.to_string();
    let flags = "--segment-bytes 64K --fsync never --cleanup none --retention-bytes 128K --stats-interval 0s";
    let args: Vec<&str> = flags.split(' ').chain(["--metrics-listen", &metrics_arg]).collect();
    let mut server = ServerProcess::start(&data, &args);
    let mut client = LineClient::connect(server.addr).unwrap();
    assert_eq!(metric(metrics, "msglog_log_start_offset"), 0.0);
    // 3000 IDs of ~130 bytes: about six 64 KiB segments.
    for n in 0..3000 {
        let line = format!("SET id-{n:05} {}", "x".repeat(100));
        assert_eq!(client.request(line.as_bytes()).unwrap(), b"OK");
    }
    // Polled until a pass ran after the last write: one that ran meanwhile left more.
    let stats = poll_until("retention down to the limit", || {
        let stats = common::stats(server.addr);
        let bytes: u64 = stats["bytes"].parse().unwrap();
        (stats["log_start_offset"] != "0" && bytes < (128 + 64) * 1024).then_some(stats)
    });
    let start: u64 = stats["log_start_offset"].parse().unwrap();
    let bytes: u64 = stats["bytes"].parse().unwrap();
    assert!((128 * 1024..(128 + 64) * 1024).contains(&bytes), "{stats:?}");
    assert!(stats["retention_deleted_bytes"].parse::<u64>().unwrap() > 0, "{stats:?}");
    assert_eq!(client.request(b"GET id-00000").unwrap(), b"NOT_FOUND");
    assert_eq!(client.request(b"GET id-02999").unwrap(), "x".repeat(100).as_bytes());
    let compaction = info(server.addr, "compaction");
    assert_eq!(compaction["log_start_offset"], start.to_string(), "{compaction:?}");
    for key in ["dirty_ratio", "cleaned_bytes", "cleaner_runs"] {
        assert!(compaction.contains_key(key), "{key} in {compaction:?}");
    }
    assert_eq!(metric(metrics, "msglog_log_start_offset"), start as f64);
    assert!(metric(metrics, "msglog_retention_deleted_bytes_total") > 0.0);
    for name in ["msglog_cleaner_dirty_ratio", "msglog_cleaner_cleaned_bytes_total", "msglog_cleaner_runs_total"] {
        metric(metrics, name);
    }

    let tail = msglog().args(["tail", "--no-follow", "--offset", "0", "--from", &server.grpc.to_string()]).output();
    let tail = tail.unwrap();
    assert!(tail.status.success(), "{tail:?}");
    let notice = String::from_utf8_lossy(&tail.stderr);
    assert!(notice.contains(&format!("below the log start {start}")), "{notice}");
    let first = String::from_utf8(tail.stdout).unwrap().lines().next().map(str::to_string).expect("records");
    assert!(first.starts_with(&format!("{start} ")), "tail starts at the log start: {first}");

    server.signal(libc::SIGTERM);
    assert!(server.wait_for_exit().success(), "{}", server.stderr());
    assert!(server.stderr().contains("retention deleted old segments"), "{}", server.stderr());
    let server = ServerProcess::start(&data, &args);
    assert_eq!(common::stats(server.addr)["log_start_offset"], start.to_string(), "kept across a restart");
}

#[test]
fn retention_on_a_follower_is_a_clear_startup_error() {
    let dir = tempfile::TempDir::new().unwrap();
    let data = dir.path().join("data");
    let out = msglog()
        .args(["serve", "--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0", "--follow", "127.0.0.1:1"])
        .args(["--retention-age", "7d", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("retention needs a standalone node for now: --retention-age cannot be used with --follow"),
        "{stderr}"
    );
    assert!(!Path::new(&data).exists(), "a failed start leaves no data dir");
}

#[test]
fn a_leader_running_retention_refuses_followers_but_serves_consumers() {
    let dir = tempfile::TempDir::new().unwrap();
    let leader = ServerProcess::start(&dir.path().join("leader"), &["--retention-age", "7d", "--stats-interval", "0s"]);
    let grpc = leader.grpc.to_string();
    let follower = ServerProcess::start(&dir.path().join("follower"), &["--follow", &grpc, "--stats-interval", "0s"]);
    poll_until("the follower to be refused", || follower.stderr().contains("runs retention").then_some(()));
    let mut client = LineClient::connect(leader.addr).unwrap();
    assert_eq!(client.request(b"SET a 1").unwrap(), b"OK");
    let tail = msglog().args(["tail", "--no-follow", "--from", &grpc]).output().unwrap();
    assert!(tail.status.success(), "{tail:?}");
    assert_eq!(String::from_utf8(tail.stdout).unwrap().lines().count(), 1);
}

/// A leader whose log retention has cut keeps refusing followers after a restart without
/// the flags: a follower would otherwise be handed a log starting past its own end.
#[test]
fn a_log_retention_has_cut_refuses_followers_even_without_the_flags() {
    let dir = tempfile::TempDir::new().unwrap();
    let data = dir.path().join("leader");
    {
        let log = Log::open(&data, config()).unwrap();
        write_ids(&log, 300);
        let limit = log.stats().bytes / 3;
        log.apply_retention(&BY_BYTES(limit), log.next_offset(), 0).unwrap().expect("segments deleted");
        assert!(log.log_start_offset() > 0);
        log.begin_lineage().unwrap();
        log.close().unwrap();
    }
    let leader = ServerProcess::start(&data, &["--stats-interval", "0s"]);
    let grpc = leader.grpc.to_string();
    let follower = ServerProcess::start(&dir.path().join("follower"), &["--follow", &grpc, "--stats-interval", "0s"]);
    poll_until("the follower to be refused", || follower.stderr().contains("its log starts at offset").then_some(()));
    assert_eq!(common::stats(follower.addr)["records"], "0", "the follower copied nothing");
}
