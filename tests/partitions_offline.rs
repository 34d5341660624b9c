//! `msglog check`, `export` and `import` on a data dir holding one log per partition
//! (`<data-dir>/partitions/<p>/`, docs/FORMAT.md "Partitions"), run as real processes
//! against logs the tests write through the storage façade.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Mutex, MutexGuard};

use common::msglog;
use msglog::cluster::partitioning::partition_of;
use msglog::storage::{Config, FsyncPolicy, Log};
use tempfile::TempDir;

const PARTITIONS: u32 = 3;

fn run(args: &[&str]) -> Output {
    msglog().args(args).output().expect("run msglog")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Held by every test here: a child forked by one test thread inherits the lock file of a
/// log another thread has open, and keeps that flock until it execs.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn partition_dir(data: &Path, p: u32) -> PathBuf {
    data.join("partitions").join(p.to_string())
}

/// Small segments, so a partition's log has sealed ones to damage.
fn open(dir: &Path) -> Log {
    Log::open(dir, Config { fsync: FsyncPolicy::Never, segment_bytes: 4096, ..Config::default() }).unwrap()
}

/// A data dir laid out as a node with `PARTITIONS` partitions leaves it, every ID written
/// (a few times, its latest value last) into the log of the partition `partition_of`
/// names. Returns each partition's IDs with their latest message.
fn partitioned_data_dir(data: &Path) -> Vec<BTreeMap<String, Vec<u8>>> {
    let logs: Vec<Log> = (0..PARTITIONS).map(|p| open(&partition_dir(data, p))).collect();
    let mut latest = vec![BTreeMap::new(); PARTITIONS as usize];
    for round in 0..20 {
        for i in 0..30 {
            let id = format!("id-{i}");
            let p = partition_of(id.as_bytes(), PARTITIONS) as usize;
            let message = format!("message {round} of {id}, padded to fill segments").into_bytes();
            logs[p].append(id.as_bytes(), &message).unwrap();
            latest[p].insert(id, message);
        }
    }
    for log in logs {
        log.close().unwrap();
    }
    assert!(latest.iter().all(|ids| ids.len() >= 2), "every partition holds a few IDs: {latest:?}");
    latest
}

/// Every file in `dir`, name → bytes.
fn folder(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().into_string().unwrap(), fs::read(e.path()).unwrap()))
        .collect()
}

/// The export a partition's IDs make: `<id>.msg` → latest message (the IDs here need no
/// %-encoding).
fn as_files(ids: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, Vec<u8>> {
    ids.iter().map(|(id, message)| (format!("{id}.msg"), message.clone())).collect()
}

/// The report printed under each `partition <p>:` heading, by partition.
fn by_partition(text: &str) -> BTreeMap<u32, String> {
    let mut reports = BTreeMap::new();
    let mut current = None;
    for line in text.lines() {
        if let Some(p) = line.strip_prefix("partition ").and_then(|rest| rest.split(':').next()?.parse().ok()) {
            current = Some(p);
            reports.insert(p, String::new());
        } else if let Some(p) = current {
            let report: &mut String = reports.get_mut(&p).unwrap();
            report.push_str(line);
            report.push('\n');
        }
    }
    reports
}

fn digest(report: &str) -> &str {
    report.lines().find_map(|l| l.strip_prefix("digest: ")).expect("a digest line")
}

fn segments(log_dir: &Path) -> Vec<PathBuf> {
    let mut segments: Vec<PathBuf> = fs::read_dir(log_dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segments.sort();
    segments
}

#[test]
fn check_reports_every_partition_with_the_digests_of_its_own_log() {
    let _serial = serial();
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    let latest = partitioned_data_dir(&data);
    let checked = run(&["check", "--data-dir", path(&data)]);
    assert!(checked.status.success(), "{checked:?}");
    let text = stdout(&checked);
    let reports = by_partition(&text);
    assert_eq!(reports.keys().copied().collect::<Vec<_>>(), [0, 1, 2], "{text}");
    for (p, report) in &reports {
        let ids = latest[*p as usize].len();
        assert!(report.contains(&format!("records={} live_ids={ids} ", ids * 20)), "partition {p}: {report}");
        assert!(report.contains("logical-digest: "), "partition {p}: {report}");
        // The same digest as checking the partition's dir as a data dir of its own.
        let alone = run(&["check", "--data-dir", path(&partition_dir(&data, *p))]);
        assert!(alone.status.success(), "{alone:?}");
        assert_eq!(digest(report), digest(&stdout(&alone)), "partition {p}");
    }
    assert!(text.contains("clean: 3 partition(s) checked"), "{text}");

    let only = run(&["check", "--data-dir", path(&data), "--partition", "1"]);
    assert!(only.status.success(), "{only:?}");
    assert_eq!(by_partition(&stdout(&only)).into_keys().collect::<Vec<_>>(), [1]);
    let beyond = run(&["check", "--data-dir", path(&data), "--partition", "3"]);
    assert!(!beyond.status.success());
    assert!(stderr(&beyond).contains("holds partitions 0 to 2"), "{beyond:?}");
}

#[test]
fn a_flipped_byte_in_partition_2_fails_the_check_naming_it_and_repair_mends_it() {
    let _serial = serial();
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    partitioned_data_dir(&data);
    let sealed = segments(&partition_dir(&data, 2));
    assert!(sealed.len() >= 2, "partition 2 has a sealed segment: {sealed:?}");
    let mut bytes = fs::read(&sealed[0]).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x55;
    fs::write(&sealed[0], &bytes).unwrap();

    let damaged = run(&["check", "--data-dir", path(&data)]);
    assert_eq!(damaged.status.code(), Some(1), "{damaged:?}");
    let text = stdout(&damaged);
    assert!(text.contains("damaged: partition(s) 2 of 3 checked"), "{text}");
    let reports = by_partition(&text);
    assert!(reports[&2].contains(&format!("problem: {} at byte", sealed[0].display())), "{text}");
    assert!(!reports[&0].contains("problem:") && !reports[&1].contains("problem:"), "{text}");
    assert!(run(&["check", "--data-dir", path(&data), "--partition", "0"]).status.success());

    let repaired = run(&["check", "--data-dir", path(&data), "--repair"]);
    assert!(repaired.status.success(), "{repaired:?}");
    assert!(by_partition(&stdout(&repaired))[&2].contains("repair: dropping"), "{}", stdout(&repaired));
    assert!(run(&["check", "--data-dir", path(&data)]).status.success());
}

#[test]
fn export_writes_the_live_ids_of_every_partition() {
    let _serial = serial();
    let tmp = TempDir::new().unwrap();
    let (data, out) = (tmp.path().join("data"), tmp.path().join("messages"));
    let latest = partitioned_data_dir(&data);
    let exported = run(&["export", "--data-dir", path(&data), "--out", path(&out)]);
    assert!(exported.status.success(), "{exported:?}");
    let expected: BTreeMap<String, Vec<u8>> = latest.iter().flat_map(as_files).collect();
    assert_eq!(expected.len(), 30);
    assert_eq!(folder(&out), expected);
    let summary = stdout(&exported);
    assert!(summary.contains("exported 30 file(s), removed 0, from 3 partition(s),"), "{summary}");
    assert!(!summary.contains("next offset"), "no one offset to resume several logs from: {summary}");
}

#[test]
fn export_of_partition_1_writes_only_its_ids_and_its_next_offset() {
    let _serial = serial();
    let tmp = TempDir::new().unwrap();
    let (data, out) = (tmp.path().join("data"), tmp.path().join("messages"));
    let latest = partitioned_data_dir(&data);
    let exported = run(&["export", "--data-dir", path(&data), "--out", path(&out), "--partition", "1"]);
    assert!(exported.status.success(), "{exported:?}");
    assert_eq!(folder(&out), as_files(&latest[1]));
    let next = latest[1].len() * 20;
    assert!(stdout(&exported).contains(&format!("from partition 1, to {}; next offset {next}", out.display())));
}

#[test]
fn export_since_needs_a_partition_on_a_partitioned_data_dir() {
    let _serial = serial();
    let tmp = TempDir::new().unwrap();
    let (data, out) = (tmp.path().join("data"), tmp.path().join("messages"));
    let latest = partitioned_data_dir(&data);
    let refused = run(&["export", "--data-dir", path(&data), "--out", path(&out), "--since", "0"]);
    assert!(!refused.status.success(), "{refused:?}");
    assert!(stderr(&refused).contains("give --partition too"), "{refused:?}");
    assert!(!out.exists(), "a refused export writes nothing");

    let since = ["export", "--data-dir", path(&data), "--out", path(&out), "--since", "0", "--partition", "2"];
    let refreshed = run(&since);
    assert!(refreshed.status.success(), "{refreshed:?}");
    assert_eq!(folder(&out), as_files(&latest[2]));
}

#[test]
fn import_appends_each_id_to_the_log_of_its_partition() {
    let _serial = serial();
    let tmp = TempDir::new().unwrap();
    let (data, from) = (tmp.path().join("data"), tmp.path().join("in"));
    let before = partitioned_data_dir(&data);
    fs::create_dir_all(&from).unwrap();
    let new: Vec<String> = (0..30).map(|i| format!("new-{i}")).collect();
    for id in &new {
        fs::write(from.join(format!("{id}.msg")), format!("imported {id}")).unwrap();
    }
    fs::write(from.join("id-0.msg"), b"overwritten by the import").unwrap();
    let imported = run(&["import", "--data-dir", path(&data), "--from", path(&from)]);
    assert!(imported.status.success(), "{imported:?}");
    assert!(stdout(&imported).contains("imported 31 file(s), skipped 0"), "{}", stdout(&imported));
    assert!(!data.join("log").exists(), "no one-partition log was begun beside the partitions");

    let logs: Vec<Log> = (0..PARTITIONS).map(|p| open(&partition_dir(&data, p))).collect();
    let mut counts = [0; PARTITIONS as usize];
    for id in &new {
        let home = partition_of(id.as_bytes(), PARTITIONS);
        counts[home as usize] += 1;
        for (p, log) in logs.iter().enumerate() {
            let value = log.get(id.as_bytes()).unwrap();
            let expected = (p as u32 == home).then(|| format!("imported {id}").into_bytes());
            assert_eq!(value, expected, "{id} (partition {home}) in partition {p}'s log");
        }
    }
    assert!(counts.iter().all(|&n| n > 0), "the new IDs span every partition: {counts:?}");
    let home = partition_of(b"id-0", PARTITIONS) as usize;
    assert_eq!(logs[home].get(b"id-0").unwrap().as_deref(), Some(&b"overwritten by the import"[..]));
    for (p, log) in logs.iter().enumerate() {
        assert_eq!(log.stats().ids as usize, before[p].len() + counts[p] as usize, "partition {p}");
    }
}

#[test]
fn a_data_dir_holding_a_log_and_partitions_is_refused_naming_both() {
    let _serial = serial();
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    partitioned_data_dir(&data);
    let log = open(&data);
    log.append(b"stray", b"one-partition record").unwrap();
    log.close().unwrap();
    let (out, from) = (tmp.path().join("messages"), tmp.path().join("in"));
    fs::create_dir_all(&from).unwrap();
    for args in [&["check"][..], &["export", "--out", path(&out)], &["import", "--from", path(&from)]] {
        let refused = run(&[args, &["--data-dir", path(&data)]].concat());
        assert!(!refused.status.success(), "{refused:?}");
        let err = stderr(&refused);
        assert!(err.contains(&data.join("log").display().to_string()), "{err}");
        assert!(err.contains(&data.join("partitions").display().to_string()), "{err}");
    }

    // On a one-log data dir, partition 0 is its log and there is no other.
    let single = tmp.path().join("single");
    let log = open(&single);
    log.append(b"a", b"b").unwrap();
    log.close().unwrap();
    assert!(run(&["check", "--data-dir", path(&single), "--partition", "0"]).status.success());
    let refused = run(&["check", "--data-dir", path(&single), "--partition", "1"]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("holds one log, not partitions"), "{refused:?}");
}

/// A node leaves the dir of a partition it holds no copy of empty: the tools say so and
/// leave it empty.
#[test]
fn a_partition_this_node_holds_no_copy_of_is_skipped_and_left_empty() {
    let _serial = serial();
    let tmp = TempDir::new().unwrap();
    let (data, out) = (tmp.path().join("data"), tmp.path().join("messages"));
    let latest = partitioned_data_dir(&data);
    fs::remove_dir_all(partition_dir(&data, 1)).unwrap();
    fs::create_dir(partition_dir(&data, 1)).unwrap();

    let checked = run(&["check", "--data-dir", path(&data)]);
    assert!(checked.status.success(), "{checked:?}");
    let reports = by_partition(&stdout(&checked));
    assert!(reports[&1].contains("no log: this node holds no copy of partition 1"), "{reports:?}");
    assert!(reports[&0].contains("digest: ") && reports[&2].contains("digest: "), "{reports:?}");

    let exported = run(&["export", "--data-dir", path(&data), "--out", path(&out)]);
    assert!(exported.status.success(), "{exported:?}");
    assert!(stderr(&exported).contains("partition 1 has no log"), "{exported:?}");
    assert!(stdout(&exported).contains("from 2 partition(s)"), "{exported:?}");
    assert_eq!(folder(&out), [&latest[0], &latest[2]].into_iter().flat_map(as_files).collect());
    assert_eq!(fs::read_dir(partition_dir(&data, 1)).unwrap().count(), 0, "nothing was created in partition 1");
}
