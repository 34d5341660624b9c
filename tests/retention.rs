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
use common::{LineClient, ServerProcess, msglog, once_unlocked, poll_until};
use msglog::storage::check::check;
use msglog::storage::record::encode;
use msglog::storage::{Log, RecordKind, Retention, StorageError};

const BY_BYTES: fn(u64) -> Retention = |bytes| Retention { bytes: Some(bytes), age: None };

/// Opens the log in `dir` again once the previous handle is gone (see [`once_unlocked`]).
fn reopen(dir: &Path) -> Result<Log, StorageError> {
    once_unlocked(|| Log::open(dir, config()))
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

/// The manifest's `log-start` line is what lets recovery delete retention's leftovers, so
/// the rewrites that follow (a roll lists every new segment) must keep it.
#[test]
fn the_log_start_retention_records_survives_later_rolls_and_a_reopen() {
    let dir = temp_dir();
    let log = Log::open(dir.path(), config()).unwrap();
    write_ids(&log, 200);
    let start = log.apply_retention(&BY_BYTES(log.stats().bytes / 2), log.next_offset(), 0).unwrap().unwrap().log_start;
    let segments = segment_bases(dir.path()).len();
    write_ids(&log, 50);
    log.close().unwrap();
    assert!(segment_bases(dir.path()).len() > segments, "the later writes rolled new segments");
    let manifest = std::fs::read_to_string(dir.path().join("log").join("MANIFEST")).unwrap();
    assert!(manifest.lines().any(|l| l == format!("log-start {start}")), "{manifest}");
    let log = reopen(dir.path()).unwrap();
    assert_eq!(log.log_start_offset(), start);
    log.close().unwrap();
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
        stderr.contains("--retention-age cannot be used with --follow: a follower deletes what its leader's retention"),
        "{stderr}"
    );
    assert!(!Path::new(&data).exists(), "a failed start leaves no data dir");
}

/// Flags of a node whose 64 KiB segments retention deletes down to 128 KiB.
const RETAINING: &str = "--segment-bytes 64K --fsync never --cleanup none --retention-bytes 128K --stats-interval 0s";

/// Writes `SET id-<n> ...` for `n` in `range`, one record per ID.
fn set_ids(addr: SocketAddr, range: std::ops::Range<u32>) {
    let mut client = LineClient::connect(addr).unwrap();
    for n in range {
        let line = format!("SET id-{n:05} {n}-{}", "x".repeat(100));
        assert_eq!(client.request(line.as_bytes()).unwrap(), b"OK");
    }
}

fn stat(addr: SocketAddr, key: &str) -> u64 {
    common::stats(addr)[key].parse().unwrap()
}

fn wait_caught_up(leader: &ServerProcess, follower: &ServerProcess) {
    let end = common::stats(leader.addr)["last_offset"].clone();
    poll_until("the follower to catch up", || (common::stats(follower.addr)["last_offset"] == end).then_some(()));
}

/// Every ID `n` in `range` reads the same on both nodes.
fn assert_same_reads(a: SocketAddr, b: SocketAddr, range: std::ops::Range<u32>) {
    let (mut a, mut b) = (LineClient::connect(a).unwrap(), LineClient::connect(b).unwrap());
    for n in range {
        let get = format!("GET id-{n:05}");
        assert_eq!(a.request(get.as_bytes()).unwrap(), b.request(get.as_bytes()).unwrap(), "{get}");
    }
}

#[test]
fn a_follower_started_after_retention_cut_the_log_begins_at_the_leaders_log_start() {
    let dir = tempfile::TempDir::new().unwrap();
    let leader_flags: Vec<&str> = RETAINING.split(' ').chain(["--tolerance", "1"]).collect();
    let leader = ServerProcess::start(&dir.path().join("leader"), &leader_flags);
    let grpc = leader.grpc.to_string();
    let follower_flags: Vec<&str> = ["--follow", &grpc, "--segment-bytes", "64K", "--stats-interval", "0s"].to_vec();
    let early = ServerProcess::start(&dir.path().join("early"), &follower_flags);
    // Writes wait for a follower (`--tolerance 1`) and are refused until one connects.
    poll_until("the follower to connect", || (common::stats(leader.addr)["followers"] == "1").then_some(()));
    // 3000 IDs of ~130 bytes: about six 64 KiB segments, so retention deletes some.
    set_ids(leader.addr, 0..3000);
    // Down to the limit, so the log start stays put: retention follows the committed
    // offset, which moves as the follower acknowledges.
    let start = poll_until("retention to cut the leader's log down to the limit", || {
        let start = stat(leader.addr, "log_start_offset");
        (start > 0 && stat(leader.addr, "bytes") < (128 + 64) * 1024).then_some(start)
    });
    let late = ServerProcess::start(&dir.path().join("late"), &follower_flags);
    wait_caught_up(&leader, &late);
    let late_stats = common::stats(late.addr);
    let late_start: u64 = late_stats["log_start_offset"].parse().unwrap();
    assert!(late_start >= start, "the new follower began at the leader's log start: {late_stats:?}");
    assert_eq!(stat(late.addr, "records"), 3000 - late_start, "and copied every record from there");
    assert!(late.stderr().contains("this log begins there"), "{}", late.stderr());
    assert_same_reads(leader.addr, late.addr, stat(leader.addr, "log_start_offset") as u32..3000);
    // The follower that was there all along deletes its own segments below the start.
    poll_until("the early follower to follow the leader's log start", || {
        (stat(early.addr, "log_start_offset") > 0).then_some(())
    });
    assert!(stat(early.addr, "log_start_offset") <= stat(leader.addr, "log_start_offset"));
    assert_same_reads(leader.addr, early.addr, stat(leader.addr, "log_start_offset") as u32..3000);
}

#[test]
fn a_follower_whose_records_all_lie_below_the_leaders_log_start_drops_them_and_begins_there() {
    let dir = tempfile::TempDir::new().unwrap();
    let leader = ServerProcess::start(&dir.path().join("leader"), &RETAINING.split(' ').collect::<Vec<_>>());
    let grpc = leader.grpc.to_string();
    let follower_flags = ["--follow", &grpc, "--stats-interval", "0s"];
    let follower_dir = dir.path().join("follower");
    let mut follower = ServerProcess::start(&follower_dir, &follower_flags);
    set_ids(leader.addr, 0..100);
    wait_caught_up(&leader, &follower);
    follower.signal(libc::SIGTERM);
    assert!(follower.wait_for_exit().success(), "{}", follower.stderr());
    set_ids(leader.addr, 100..3000);
    poll_until("retention to cut past the follower's end, down to the limit", || {
        (stat(leader.addr, "log_start_offset") > 100 && stat(leader.addr, "bytes") < (128 + 64) * 1024).then_some(())
    });
    let follower = ServerProcess::start(&follower_dir, &follower_flags);
    wait_caught_up(&leader, &follower);
    let start = stat(leader.addr, "log_start_offset");
    assert!(stat(follower.addr, "log_start_offset") > 100, "the follower's log starts past all it held");
    assert!(
        follower.stderr().contains("dropped=100") && follower.stderr().contains("dropping them"),
        "a WARN line says how many records went and why: {}",
        follower.stderr()
    );
    assert_eq!(common::stats(follower.addr)["records"], (3000 - stat(follower.addr, "log_start_offset")).to_string());
    let mut client = LineClient::connect(follower.addr).unwrap();
    assert_eq!(client.request(b"GET id-00000").unwrap(), b"NOT_FOUND", "nothing below the start is left");
    assert_same_reads(leader.addr, follower.addr, start as u32..3000);
}

#[test]
fn begin_at_drops_every_record_below_and_the_log_starts_there_after_a_restart() {
    let dir = temp_dir();
    let log = Log::open(dir.path(), config()).unwrap();
    write_ids(&log, 50);
    assert!(log.begin_at(49).is_err(), "a record at 49 lies at the new start");
    assert_eq!(log.begin_at(1000).unwrap(), 50);
    assert_eq!((log.next_offset(), log.log_start_offset(), log.stats().records), (1000, 1000, 0));
    assert_eq!(log.get(b"id-0001").unwrap(), None);
    let offset = log.append(b"after", b"the reset").unwrap();
    assert_eq!(offset, 1000);
    log.close().unwrap();
    assert_eq!(segment_bases(dir.path()), [1000], "the old segment files are gone");
    let log = reopen(dir.path()).unwrap();
    assert_eq!((log.log_start_offset(), log.next_offset()), (1000, 1001));
    assert_eq!(log.get(b"after").unwrap(), Some(b"the reset".to_vec()));
    log.close().unwrap();
}

#[test]
fn following_a_log_start_deletes_segments_wholly_below_it_and_leaves_out_the_rest_below() {
    let dir = temp_dir();
    let log = Log::open(dir.path(), config()).unwrap();
    let written = write_ids(&log, 300);
    let bases = segment_bases(dir.path());
    // Inside the fourth segment: the first three go, and the fourth's records below the
    // start stay on disk but out of the log, as on the leader.
    let start = bases[3] + 1;
    let records = log.stats().records;
    let summary = log.follow_log_start(start).unwrap().expect("segments deleted");
    assert_eq!((summary.segments, summary.log_start), (3, start));
    assert_eq!(segment_bases(dir.path())[0], bases[3], "the fourth segment's file stays");
    assert_eq!(log.stats().records, records - start, "one record per offset below the start went");
    let check = |log: &Log| {
        assert_eq!(log.log_start_offset(), start);
        assert_reads(log, &written, start);
        let first = log.read_from(0, 1 << 20).unwrap().records().next().unwrap().unwrap().offset;
        assert_eq!(first, start, "a read from below the start begins at it");
        assert_eq!(log.follow_log_start(start).unwrap(), None, "nothing more is below it");
    };
    check(&log);
    log.close().unwrap();
    let log = reopen(dir.path()).unwrap();
    check(&log);
    assert_eq!(log.stats().records, records - start, "and after a restart");
    log.close().unwrap();
}

#[test]
fn following_a_log_start_inside_the_active_segment_seals_it_and_leaves_out_the_records_below() {
    let dir = temp_dir();
    let log = Log::open(dir.path(), config()).unwrap();
    let written = write_ids(&log, 20);
    let bases = segment_bases(dir.path());
    let active = *bases.last().unwrap();
    assert!(bases.len() > 1 && active + 2 < 20, "the active segment holds several records: {bases:?}");
    // Inside the active segment: every sealed one goes, and the active one's first two
    // records are left out.
    let start = active + 2;
    let summary = log.follow_log_start(start).unwrap().expect("records left out");
    assert_eq!((summary.segments, summary.log_start), (bases.len() as u64 - 1, start));
    assert_eq!(log.stats().records, 20 - start);
    let check = |log: &Log| {
        assert_eq!(log.log_start_offset(), start);
        assert_reads(log, &written, start);
        let first = log.read_from(0, 1 << 20).unwrap().records().next().unwrap().unwrap().offset;
        assert_eq!(first, start, "a read from below the start begins at it");
    };
    check(&log);
    assert_eq!(log.append(b"after", b"the start").unwrap(), 20, "appends go on at the log's end");
    log.close().unwrap();
    let log = reopen(dir.path()).unwrap();
    check(&log);
    assert_eq!(log.stats().records, 21 - start, "and after a restart");
    log.close().unwrap();
}

#[test]
fn cleaning_after_following_a_log_start_drops_the_records_left_out_without_counting_them() {
    let dir = temp_dir();
    let log = Log::open(dir.path(), config()).unwrap();
    write_ids(&log, 20);
    let bases = segment_bases(dir.path());
    // Inside the second segment: its first two records are left out.
    let start = bases[1] + 2;
    log.follow_log_start(start).unwrap().expect("records left out");
    // One ID left out comes back, one kept is superseded: the pass drops that one.
    let (back, superseded) = (format!("id-{:04}", bases[1]), format!("id-{start:04}"));
    log.append(back.as_bytes(), b"back").unwrap();
    log.append(superseded.as_bytes(), b"newer").unwrap();
    log.sync().unwrap();
    let before = log.stats();
    let summary = log.clean(&common::compaction::options(log.next_offset())).unwrap().expect("a pass");
    assert_eq!(summary.records_dropped, 1, "only the superseded record counts as dropped: {summary:?}");
    let counts = |log: &Log| (log.stats().records, log.stats().ids);
    assert_eq!(counts(&log), (before.records - 1, before.ids));
    assert_eq!(log.get(back.as_bytes()).unwrap().as_deref(), Some(&b"back"[..]));
    assert_eq!(log.get(format!("id-{:04}", bases[1] + 1).as_bytes()).unwrap(), None, "left out, still out");
    log.close().unwrap();
    let log = reopen(dir.path()).unwrap();
    assert_eq!(counts(&log), (before.records - 1, before.ids), "the same after a restart");
    log.close().unwrap();
}

#[test]
fn a_follower_whose_segments_straddle_the_leaders_log_start_holds_exactly_what_the_leader_holds() {
    let dir = tempfile::TempDir::new().unwrap();
    let leader_flags: Vec<&str> = RETAINING.split(' ').chain(["--tolerance", "1"]).collect();
    let leader = ServerProcess::start(&dir.path().join("leader"), &leader_flags);
    let grpc = leader.grpc.to_string();
    // Smaller segments than the leader's: the follower's boundaries fall elsewhere, so the
    // leader's log start lies inside one of the follower's segments.
    let follower_flags = ["--follow", &grpc, "--segment-bytes", "80K", "--stats-interval", "0s"];
    let follower_dir = dir.path().join("follower");
    let mut follower = ServerProcess::start(&follower_dir, &follower_flags);
    poll_until("the follower to connect", || (common::stats(leader.addr)["followers"] == "1").then_some(()));
    // Each ID written once: one whose record lies below the leader's log start is gone.
    set_ids(leader.addr, 0..3000);
    let same = |follower: &ServerProcess| {
        let (l, f) = (common::stats(leader.addr), common::stats(follower.addr));
        let keys = ["log_start_offset", "ids", "records", "last_offset"];
        keys.iter().all(|k| l[*k] == f[*k]).then_some(l)
    };
    // Down to the limit, so the log start stays put.
    poll_until("retention to cut the leader's log down to the limit", || {
        (stat(leader.addr, "log_start_offset") > 0 && stat(leader.addr, "bytes") < (128 + 64) * 1024).then_some(())
    });
    // No write after the last retention step: the idle stream carries the log start.
    let stats = poll_until("the follower to hold what the leader holds", || same(&follower));
    let start: u32 = stats["log_start_offset"].parse().unwrap();
    assert!(start > 0, "retention moved the leader's log start: {stats:?}");
    assert_same_reads(leader.addr, follower.addr, 0..3000);
    follower.signal(libc::SIGTERM);
    assert!(follower.wait_for_exit().success(), "{}", follower.stderr());
    let follower = ServerProcess::start(&follower_dir, &follower_flags);
    poll_until("the restarted follower to hold what the leader holds", || same(&follower));
    assert_same_reads(leader.addr, follower.addr, 0..3000);
    let mut client = LineClient::connect(follower.addr).unwrap();
    assert_eq!(client.request(b"GET id-00000").unwrap(), b"NOT_FOUND", "below the start, gone on both");
    drop(client);
    let (mut leader, mut follower) = (leader, follower);
    for node in [&mut follower, &mut leader] {
        node.signal(libc::SIGTERM);
        assert!(node.wait_for_exit().success(), "{}", node.stderr());
    }
    let logical = |node: &ServerProcess| common::compaction::check_lines(&node.data_dir).1;
    assert_eq!(logical(&leader), logical(&follower), "the same live set");
}
