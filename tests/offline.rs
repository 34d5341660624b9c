//! `msglog export`, `import` and `check` run as real processes against data dirs the tests
//! build through the storage façade.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Mutex, MutexGuard};

use common::msglog;
use msglog::storage::{Config, FsyncPolicy, Log};
use tempfile::TempDir;

/// Runs msglog with the default log level (tests read its stderr whole).
fn run(args: &[&str]) -> Output {
    msglog().args(args).env_remove("RUST_LOG").output().expect("run msglog")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn open(dir: &Path) -> Log {
    Log::open(dir, Config { fsync: FsyncPolicy::Never, segment_bytes: 4096, ..Config::default() }).unwrap()
}

/// Runs `msglog import` of `from` into `data`, which must succeed; returns its stdout.
fn import_ok(data: &Path, from: &Path) -> String {
    let out = run(&["import", "--data-dir", path(data), "--from", path(from)]);
    assert!(out.status.success(), "{out:?}");
    stdout(&out)
}

/// Opens the log in `data`, sets every ID in `ids` to `message`, and closes it.
fn set_all(data: &Path, ids: &[&[u8]], message: &[u8]) {
    let log = open(data);
    for id in ids {
        log.append(id, message).unwrap();
    }
    log.close().unwrap();
}

/// Held by every test here. A child process forked by one test thread inherits the lock
/// file of a log another thread has open, and keeps that flock until it execs; run one at
/// a time, a test's own children never race its locks.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every file in `dir`, name → bytes.
fn folder(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().into_string().unwrap(), fs::read(e.path()).unwrap()))
        .collect()
}

const AWKWARD: [&[u8]; 6] = [b"a/b", b"..", b".", b"%41", "naïve-ü".as_bytes(), b"plain_1.x"];

#[test]
fn export_writes_exactly_the_live_ids_and_import_restores_them() {
    let _serial = serial();
    let tmp = TempDir::new().unwrap();
    let (data, out, copy) = (tmp.path().join("data"), tmp.path().join("messages"), tmp.path().join("copy"));
    {
        let log = open(&data);
        for (i, id) in AWKWARD.iter().enumerate() {
            log.append(id, format!("first {i}").as_bytes()).unwrap();
            log.append(id, &latest(i)).unwrap();
        }
        log.append(b"gone", b"soon deleted").unwrap();
        log.delete(b"gone").unwrap();
        log.close().unwrap();
    }
    let exported = run(&["export", "--data-dir", path(&data), "--out", path(&out)]);
    assert!(exported.status.success(), "{exported:?}");
    let files = folder(&out);
    let expected: BTreeMap<String, Vec<u8>> = [
        ("a%2Fb.msg", 0),
        ("%2E%2E.msg", 1),
        ("%2E.msg", 2),
        ("%2541.msg", 3),
        ("na%C3%AFve-%C3%BC.msg", 4),
        ("plain_1.x.msg", 5),
    ]
    .into_iter()
    .map(|(name, i)| (name.to_string(), latest(i)))
    .collect();
    assert_eq!(files, expected);

    let imported = import_ok(&copy, &out);
    assert!(imported.contains("imported 6 file(s), skipped 0"), "{imported}");
    // The import began a log in the empty dir, so the dir may lead it (no --adopt-log).
    let lineage = std::fs::read_to_string(copy.join("log-id")).expect("the import records a log-id");
    assert!(lineage.contains("origin=began"), "{lineage}");
    let (original, restored) = (open(&data), open(&copy));
    assert_eq!(restored.stats().ids, original.stats().ids);
    for id in AWKWARD {
        let value = original.get(id).unwrap();
        assert!(value.is_some());
        assert_eq!(restored.get(id).unwrap(), value, "{}", String::from_utf8_lossy(id));
        assert_eq!(files[&msglog_file_name(id)], value.unwrap(), "the file holds the latest bytes");
    }
    assert_eq!(restored.get(b"gone").unwrap(), None);
}

/// The latest value of the `i`th awkward ID: not UTF-8, with a NUL and edge spaces.
fn latest(i: usize) -> Vec<u8> {
    [&b" latest "[..], i.to_string().as_bytes(), b" \x00\xff "].concat()
}

fn msglog_file_name(id: &[u8]) -> String {
    let whole = id == b"." || id == b"..";
    let mut name = String::new();
    for &b in id {
        if !whole && (b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
            name.push(b as char);
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    name + ".msg"
}

#[test]
fn import_skips_files_that_are_not_ids_and_says_why() {
    let _serial = serial();
    let tmp = TempDir::new().unwrap();
    let (data, from) = (tmp.path().join("data"), tmp.path().join("in"));
    fs::create_dir_all(&from).unwrap();
    fs::write(from.join("good.msg"), b"yes").unwrap();
    fs::write(from.join("notes.txt"), b"no").unwrap();
    fs::write(from.join("bad%zz.msg"), b"no").unwrap();
    fs::write(from.join("%20.msg"), b"space id").unwrap();
    let text = import_ok(&data, &from);
    assert!(text.contains("imported 1 file(s), skipped 3"), "{text}");
    assert!(text.contains("skipped notes.txt: not a .msg file"), "{text}");
    assert_eq!(open(&data).get(b"good").unwrap().as_deref(), Some(&b"yes"[..]));
}

#[test]
fn export_since_rewrites_changed_ids_and_removes_deleted_ones() {
    let _serial = serial();
    let tmp = TempDir::new().unwrap();
    let (data, out) = (tmp.path().join("data"), tmp.path().join("messages"));
    set_all(&data, &[b"keep", b"change", b"drop"], b"v1");
    assert!(run(&["export", "--data-dir", path(&data), "--out", path(&out)]).status.success());
    let next = open(&data).stats().next_offset;
    fs::write(out.join("keep.msg"), b"untouched marker").unwrap();
    {
        let log = open(&data);
        log.append(b"change", b"v2").unwrap();
        log.delete(b"drop").unwrap();
        log.append(b"new", b"v1").unwrap();
        log.close().unwrap();
    }
    let refreshed = run(&["export", "--data-dir", path(&data), "--out", path(&out), "--since", &next.to_string()]);
    assert!(refreshed.status.success(), "{refreshed:?}");
    let files = folder(&out);
    let names: Vec<&str> = files.keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["change.msg", "keep.msg", "new.msg"]);
    assert_eq!(files["change.msg"], b"v2");
    assert_eq!(files["keep.msg"], b"untouched marker", "IDs unchanged since the offset are not rewritten");
}

fn segments(data: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(data.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

fn digest(output: &Output) -> String {
    stdout(output).lines().find_map(|l| l.strip_prefix("digest: ")).expect("a digest line").to_string()
}

#[test]
fn check_passes_a_clean_log_flags_a_flipped_byte_and_repair_keeps_the_prefix() {
    let _serial = serial();
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    write_history(&data);
    let clean = run(&["check", "--data-dir", path(&data)]);
    assert!(clean.status.success(), "{clean:?}");
    let text = stdout(&clean);
    assert!(text.contains("records=301 live_ids=49 tombstones=1"), "{text}");
    assert!(text.contains("first_offset=0 last_offset=300"), "{text}");
    assert_eq!(digest(&clean).len(), 64);
    assert_eq!(digest(&run(&["check", "--data-dir", path(&data)])), digest(&clean), "the digest is stable");

    // Flip a byte in the middle of the second segment.
    let second = segments(&data)[1].clone();
    let mut bytes = fs::read(&second).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x55;
    fs::write(&second, &bytes).unwrap();
    let damaged = run(&["check", "--data-dir", path(&data)]);
    assert_eq!(damaged.status.code(), Some(1));
    let text = stdout(&damaged);
    assert!(text.contains(&format!("problem: {} at byte", second.display())), "{text}");

    let repaired = repair(&data);
    assert!(stdout(&repaired).contains("repair: dropping"), "{}", stdout(&repaired));
    let after = run(&["check", "--data-dir", path(&data)]);
    assert!(after.status.success(), "{after:?}");
    let log = open(&data);
    let kept = log.stats().records;
    assert!(kept > 0 && kept < 301, "kept {kept}");
    // Every record before the damage survives, with its value.
    let mut offsets = Vec::new();
    for chunk in log.chunks_from(0, 1 << 20) {
        offsets.extend(chunk.unwrap().records().map(|r| r.unwrap().offset));
    }
    assert_eq!(offsets, (0..kept).collect::<Vec<_>>());
}

#[test]
fn check_refuses_a_data_dir_a_server_holds() {
    let _serial = serial();
    let tmp = TempDir::new().unwrap();
    let _held = open(tmp.path());
    let out = run(&["check", "--data-dir", path(tmp.path())]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("locked"), "{out:?}");
}

#[test]
fn replicas_with_the_same_records_print_the_same_digest_whatever_their_segments() {
    let _serial = serial();
    let tmp = TempDir::new().unwrap();
    let (leader_dir, follower_dir, other_dir) = (tmp.path().join("l"), tmp.path().join("f"), tmp.path().join("o"));
    {
        let leader = open(&leader_dir);
        let other = open(&other_dir);
        for i in 0..200 {
            leader.append(format!("k{}", i % 30).as_bytes(), format!("v{i}").as_bytes()).unwrap();
            other.append(format!("k{}", i % 30).as_bytes(), format!("w{i}").as_bytes()).unwrap();
        }
        // A follower with one big segment, fed the leader's bytes.
        let follower = Log::open(&follower_dir, Config { fsync: FsyncPolicy::Never, ..Config::default() }).unwrap();
        for chunk in leader.chunks_from(0, 1000) {
            follower.append_raw(&chunk.unwrap().bytes).unwrap();
        }
        assert!(leader.stats().segments > 1 && follower.stats().segments == 1);
        for log in [leader, follower, other] {
            log.close().unwrap();
        }
    }
    let digests: Vec<String> = [&leader_dir, &follower_dir, &other_dir]
        .iter()
        .map(|d| digest(&run(&["check", "--data-dir", path(d)])))
        .collect();
    assert_eq!(digests[0], digests[1]);
    assert_ne!(digests[0], digests[2]);
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn export_skips_ids_whose_file_name_would_be_too_long_and_exports_the_rest() {
    let _serial = serial();
    let tmp = TempDir::new().unwrap();
    let (data, out) = (tmp.path().join("data"), tmp.path().join("messages"));
    // 251 plain bytes + ".msg" is exactly 255; one more byte, or %-encoding, is too long.
    let longest = vec![b'a'; 251];
    let (one_over, encoded, huge) = (vec![b'b'; 252], b"/".repeat(84), [&b"c"[..], &[b'd'; 1022], b"e"].concat());
    set_all(&data, &[b"before", &longest, &one_over, &encoded, &huge, b"after"], b"v1");
    let exported = run(&["export", "--data-dir", path(&data), "--out", path(&out)]);
    assert_eq!(exported.status.code(), Some(1), "{exported:?}");
    let names: Vec<String> = folder(&out).into_keys().collect();
    assert_eq!(names, ["a".repeat(251) + ".msg", "after.msg".into(), "before.msg".into()], "and no temporary file");
    assert!(
        stdout(&exported).contains("exported 3 file(s), removed 0, skipped 3 ID(s) whose file name would be too long"),
        "{}",
        stdout(&exported)
    );
    let warnings = stderr(&exported);
    assert_eq!(warnings.lines().count(), 3, "one warning per skipped ID: {warnings}");
    for (shown, name_bytes) in [
        (format!("{}...{} (252 bytes)", "b".repeat(40), "b".repeat(16)), 256),
        (format!("{}...{} (84 bytes)", "/".repeat(40), "/".repeat(16)), 256),
        (format!("c{}...{}e (1024 bytes)", "d".repeat(39), "d".repeat(15)), 1028),
    ] {
        let warning = format!(
            "msglog: warning: skipped ID {shown}: its file name would be {name_bytes} bytes, over the 255-byte limit"
        );
        assert!(warnings.lines().any(|l| l == warning), "{warning} in {warnings}");
    }

    // A refresh skips them the same way; deleting one is not an error.
    let next = open(&data).stats().next_offset;
    {
        let log = open(&data);
        log.append(&one_over, b"v2").unwrap();
        log.delete(&huge).unwrap();
        log.append(b"after", b"v2").unwrap();
        log.close().unwrap();
    }
    let refreshed = run(&["export", "--data-dir", path(&data), "--out", path(&out), "--since", &next.to_string()]);
    assert_eq!(refreshed.status.code(), Some(1), "{refreshed:?}");
    assert!(stdout(&refreshed).contains("exported 1 file(s), removed 0, skipped 1 ID(s)"), "{}", stdout(&refreshed));
    assert_eq!(stderr(&refreshed).lines().count(), 1, "{}", stderr(&refreshed));
    assert_eq!(folder(&out)["after.msg"], b"v2");
}

#[test]
fn export_and_check_refuse_a_data_dir_that_does_not_exist() {
    let _serial = serial();
    let tmp = TempDir::new().unwrap();
    let (missing, out) = (tmp.path().join("missing"), tmp.path().join("messages"));
    let exported = run(&["export", "--data-dir", path(&missing), "--out", path(&out)]);
    let checked = run(&["check", "--data-dir", path(&missing)]);
    for output in [&exported, &checked] {
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        assert_eq!(stderr(output).trim_end(), format!("msglog: data dir {} does not exist", missing.display()));
    }
    assert!(!missing.exists(), "nothing is created");
    assert!(!out.exists(), "nothing is created");
}

#[test]
fn check_names_an_io_failure_once() {
    let _serial = serial();
    let tmp = TempDir::new().unwrap();
    fs::create_dir(tmp.path().join("LOCK")).unwrap();
    let out = run(&["check", "--data-dir", path(tmp.path())]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = stderr(&out);
    assert!(text.contains(&format!("cannot check {}", tmp.path().display())), "{text}");
    assert_eq!(text.matches("os error").count(), 1, "{text}");
}

#[test]
fn import_skips_entries_that_are_not_regular_files() {
    let _serial = serial();
    let tmp = TempDir::new().unwrap();
    let (data, from) = (tmp.path().join("data"), tmp.path().join("in"));
    fs::create_dir_all(from.join("sub.msg")).unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(from.join("socket.msg")).unwrap();
    fs::write(from.join("a.msg"), b"first").unwrap();
    fs::write(from.join("z.msg"), b"last").unwrap();
    let text = import_ok(&data, &from);
    assert!(text.contains("skipped sub.msg: not a regular file"), "{text}");
    assert!(text.contains("skipped socket.msg: not a regular file"), "{text}");
    assert!(text.contains("imported 2 file(s), skipped 2"), "{text}");
    let log = open(&data);
    assert_eq!(log.get(b"z").unwrap().as_deref(), Some(&b"last"[..]));
}

#[test]
fn import_skips_symbolic_links_even_to_regular_files() {
    let _serial = serial();
    let tmp = TempDir::new().unwrap();
    let (data, from) = (tmp.path().join("data"), tmp.path().join("in"));
    fs::create_dir_all(&from).unwrap();
    let outside = tmp.path().join("secret");
    fs::write(&outside, b"not for the log").unwrap();
    std::os::unix::fs::symlink(&outside, from.join("passwd.msg")).unwrap();
    fs::write(from.join("a.msg"), b"in the folder").unwrap();
    let text = import_ok(&data, &from);
    assert!(text.contains("skipped passwd.msg: a symbolic link, not a regular file"), "{text}");
    assert!(text.contains("imported 1 file(s), skipped 1"), "{text}");
    let log = open(&data);
    assert_eq!(log.get(b"passwd").unwrap(), None);
    assert_eq!(log.get(b"a").unwrap().as_deref(), Some(&b"in the folder"[..]));
}

/// Moves `dir` down a chain of new, long-named parent directories until its path is at
/// least `min_len` bytes, and returns the new path. Each rename names only short paths, so
/// it works where the final path would be too long to create directly.
fn lengthen_path(dir: &Path, min_len: usize) -> PathBuf {
    let (parent, name) = (dir.parent().unwrap(), dir.file_name().unwrap());
    let levels = (min_len.saturating_sub(dir.as_os_str().len())).div_ceil(61);
    // Nest under short names first, then lengthen them from the deepest up.
    let mut short = parent.to_path_buf();
    for _ in 0..levels {
        short.push("d");
    }
    fs::create_dir_all(&short).unwrap();
    fs::rename(dir, short.join(name)).unwrap();
    for depth in (1..=levels).rev() {
        let level: PathBuf = std::iter::once(parent.to_path_buf()).chain((0..depth).map(|_| "d".into())).collect();
        fs::rename(&level, level.with_file_name("l".repeat(60))).unwrap();
    }
    let mut long = parent.to_path_buf();
    for _ in 0..levels {
        long.push("l".repeat(60));
    }
    long.join(name)
}

#[test]
fn an_import_that_fails_keeps_none_of_its_records() {
    let _serial = serial();
    let tmp = TempDir::new().unwrap();
    let (data, from) = (tmp.path().join("data"), tmp.path().join("in"));
    set_all(&data, &[b"a"], b"before the import");
    fs::create_dir_all(&from).unwrap();
    fs::write(from.join("a.msg"), b"imported").unwrap();
    fs::write(from.join("b.msg"), b"imported").unwrap();
    // Sorted after a.msg and b.msg, so it fails once they are appended: its path is
    // longer than the OS allows (PATH_MAX), which no privilege gets around.
    let unreadable = format!("c{}.msg", "x".repeat(240));
    fs::write(from.join(&unreadable), b"never read").unwrap();
    let from = lengthen_path(&from, 4096 - unreadable.len());
    let out = run(&["import", "--data-dir", path(&data), "--from", path(&from)]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = stderr(&out);
    assert!(text.contains("nothing was imported"), "{text}");
    assert!(text.contains(&format!("cannot read {}", from.join(&unreadable).display())), "{text}");
    let log = open(&data);
    assert_eq!(log.stats().records, 1);
    assert_eq!(log.get(b"a").unwrap().as_deref(), Some(&b"before the import"[..]));
    assert_eq!(log.get(b"b").unwrap(), None);
}

#[test]
fn export_since_past_the_end_of_the_log_says_so() {
    let _serial = serial();
    let tmp = TempDir::new().unwrap();
    let (data, out) = (tmp.path().join("data"), tmp.path().join("messages"));
    set_all(&data, &[b"x", b"y", b"z"], b"v");
    let past = run(&["export", "--data-dir", path(&data), "--out", path(&out), "--since", "100"]);
    assert!(past.status.success(), "{past:?}");
    assert_eq!(stderr(&past).trim_end(), "msglog: note: nothing since offset 100: the log ends at 3");
    assert!(stdout(&past).contains("exported 0 file(s), removed 0"), "{}", stdout(&past));
    let at_end = run(&["export", "--data-dir", path(&data), "--out", path(&out), "--since", "3"]);
    assert!(at_end.status.success(), "{at_end:?}");
    assert_eq!(stderr(&at_end), "", "the next offset an export printed is no surprise");
}

/// A follower's copy, or any cluster member's dir, is not where records are added: they
/// would be on no other copy, and cut when the node next follows its leader.
#[test]
fn import_refuses_a_followers_copy_and_a_cluster_members_dir_and_adds_nothing() {
    let _serial = serial();
    let tmp = TempDir::new().unwrap();
    let from = tmp.path().join("in");
    fs::create_dir_all(&from).unwrap();
    fs::write(from.join("new.msg"), b"imported").unwrap();
    let copy = tmp.path().join("copy");
    set_all(&copy, &[b"a"], b"from the leader");
    fs::write(copy.join("log-id"), "log_id=0123456789abcdef0123456789abcdef\norigin=copied\n").unwrap();
    let member = tmp.path().join("member");
    set_all(&member, &[b"a"], b"from the leader");
    fs::write(member.join("cluster"), "cluster_id=1\nnode_id=n1\n").unwrap();
    for (dir, says) in
        [(&copy, "holds a copy of log 0123456789abcdef0123456789abcdef"), (&member, "belongs to a cluster")]
    {
        let out = run(&["import", "--data-dir", path(dir), "--from", path(&from)]);
        assert!(!out.status.success(), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{err}");
        assert_eq!(open(dir).get(b"new").unwrap(), None, "nothing was imported into {}", dir.display());
    }
    // The leader's own dir (origin began) takes the import.
    fs::write(copy.join("log-id"), "log_id=0123456789abcdef0123456789abcdef\norigin=began\n").unwrap();
    assert!(import_ok(&copy, &from).contains("imported 1 file(s)"));
}

/// Opening a log cuts a torn tail (a crash mid-append), which changes the data dir: the
/// offline tools that open logs say so on stderr, naming the segment, and go on.
#[test]
fn export_and_import_say_when_opening_the_log_cut_a_torn_tail() {
    let _serial = serial();
    let tmp = TempDir::new().unwrap();
    let (data, out, from) = (tmp.path().join("data"), tmp.path().join("messages"), tmp.path().join("in"));
    fs::create_dir_all(&from).unwrap();
    fs::write(from.join("new.msg"), b"imported").unwrap();
    set_all(&data, &[b"x", b"y"], b"v");
    let torn = tear(&data);
    let export = run(&["export", "--data-dir", path(&data), "--out", path(&out)]);
    assert!(export.status.success(), "{export:?}");
    assert!(stdout(&export).contains("exported 2 file(s)"), "{}", stdout(&export));
    let said = stderr(&export);
    assert!(said.contains("truncating the log at the first bad record") && said.contains(path(&torn)), "{said}");
    let torn = tear(&data);
    let import = run(&["import", "--data-dir", path(&data), "--from", path(&from)]);
    assert!(import.status.success(), "{import:?}");
    let said = stderr(&import);
    assert!(said.contains("truncating the log at the first bad record") && said.contains(path(&torn)), "{said}");
    let clean = run(&["export", "--data-dir", path(&data), "--out", path(&out)]);
    assert!(clean.status.success(), "{clean:?}");
    assert_eq!(stderr(&clean), "", "a log without damage opens without a word");
}

/// A segment file after the manifest's last segment (an interrupted roll left it) is not
/// part of the log: `check` names it rather than passing over it in silence, and the next
/// open deletes it, saying so.
#[test]
fn check_names_a_leftover_segment_and_opening_the_log_deletes_it() {
    let _serial = serial();
    let tmp = TempDir::new().unwrap();
    let (data, out) = (tmp.path().join("data"), tmp.path().join("messages"));
    set_all(&data, &[b"x", b"y"], b"v");
    let last = segments(&data).pop().unwrap();
    let leftover = data.join("log").join(format!("{:020}.log", 1000));
    fs::copy(&last, &leftover).unwrap();
    let check = run(&["check", "--data-dir", path(&data)]);
    assert!(check.status.success(), "a leftover is not damage: {check:?}");
    let said = stdout(&check);
    assert!(said.contains(&format!("leftover: {}: not part of the log", path(&leftover))), "{said}");
    assert!(said.contains("records=2 "), "the leftover's records are not counted: {said}");
    assert!(leftover.exists(), "check changes nothing");
    let export = run(&["export", "--data-dir", path(&data), "--out", path(&out)]);
    assert!(export.status.success(), "{export:?}");
    assert!(stderr(&export).contains("deleting segments an interrupted roll"), "{}", stderr(&export));
    assert!(!leftover.exists(), "opening the log deleted the leftover");
    let again = run(&["check", "--data-dir", path(&data)]);
    assert!(again.status.success(), "{again:?}");
    assert!(!stdout(&again).contains("leftover"), "{}", stdout(&again));
}

/// The last `logical-digest:` line `check` printed.
fn logical_digest(output: &Output) -> String {
    let text = stdout(output);
    text.lines().filter_map(|l| l.strip_prefix("logical-digest: ")).next_back().expect("a logical digest").to_string()
}

/// Appends bytes that are no record to the last segment, as a crash mid-append leaves it;
/// returns that segment.
fn tear(data: &Path) -> PathBuf {
    let last = segments(data).pop().unwrap();
    let mut file = fs::OpenOptions::new().append(true).open(&last).unwrap();
    std::io::Write::write_all(&mut file, b"\x07torn").unwrap();
    last
}

/// Runs `msglog check --repair`, which must succeed.
fn repair(data: &Path) -> Output {
    let repaired = run(&["check", "--data-dir", path(data), "--repair"]);
    assert!(repaired.status.success(), "{repaired:?}\n{}", stdout(&repaired));
    repaired
}

/// 300 SETs over 50 IDs in 4 KiB segments, and a DEL: several segments, IDs in each.
fn write_history(data: &Path) {
    let log = open(data);
    for i in 0..300 {
        log.append(format!("id-{}", i % 50).as_bytes(), format!("message {i}").as_bytes()).unwrap();
    }
    log.delete(b"id-7").unwrap();
    log.close().unwrap();
}

/// On a damaged log, `check`'s logical digest is that of the live set a repair keeps: with
/// a torn tail in the only segment (whose good records are all kept) it is the digest the
/// log had before the tear, not that of nothing.
#[test]
fn check_on_a_torn_log_prints_the_logical_digest_a_repair_keeps() {
    let _serial = serial();
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    set_all(&data, &[b"x", b"y", b"z"], b"v");
    let healthy = run(&["check", "--data-dir", path(&data)]);
    assert!(healthy.status.success(), "{healthy:?}");
    assert_eq!(segments(&data).len(), 1, "one segment");
    tear(&data);
    let torn = run(&["check", "--data-dir", path(&data)]);
    assert_eq!(torn.status.code(), Some(1), "{torn:?}");
    assert!(stdout(&torn).contains("live_ids=3"), "{}", stdout(&torn));
    assert_eq!(logical_digest(&torn), logical_digest(&healthy));
    assert_eq!(logical_digest(&repair(&data)), logical_digest(&healthy));
}

/// A bit flipped in a sealed segment: the logical digest `check` prints on the damaged log
/// is the one it prints after the repair, and counts the damaged segment's good records.
#[test]
fn check_on_a_damaged_sealed_segment_prints_the_logical_digest_after_repair() {
    let _serial = serial();
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    write_history(&data);
    let first = segments(&data)[0].clone();
    let mut bytes = fs::read(&first).unwrap();
    let at = bytes.len() * 3 / 4;
    bytes[at] ^= 0x55;
    fs::write(&first, &bytes).unwrap();
    let damaged = run(&["check", "--data-dir", path(&data)]);
    assert_eq!(damaged.status.code(), Some(1), "{damaged:?}");
    let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    assert_ne!(logical_digest(&damaged), empty, "the good records before the damage count");
    assert_eq!(logical_digest(&repair(&data)), logical_digest(&damaged));
}

/// A segment file the manifest does not list, inside the chain: `check` names it and counts
/// the listed segments (what a repair keeps), not the stray's records in their place.
#[test]
fn check_counts_the_listed_segments_around_an_unlisted_one() {
    let _serial = serial();
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    write_history(&data);
    let healthy = run(&["check", "--data-dir", path(&data)]);
    let all = segments(&data);
    assert!(all.len() >= 3, "{all:?}");
    let stray = data.join("log").join(format!("{:020}.log", 1));
    fs::copy(&all[all.len() - 1], &stray).unwrap();
    let unlisted = run(&["check", "--data-dir", path(&data)]);
    assert_eq!(unlisted.status.code(), Some(1), "{unlisted:?}");
    let text = stdout(&unlisted);
    assert!(text.contains(&format!("problem: {} at byte 0: segment not in the manifest", path(&stray))), "{text}");
    assert!(text.contains("records=301 live_ids=49 tombstones=1"), "{text}");
    assert!(!text.contains(&format!("segment {}:", path(&stray))), "{text}");
    assert_eq!(logical_digest(&unlisted), logical_digest(&healthy));
    let repaired = repair(&data);
    assert!(stray.with_extension("log.unlisted").exists(), "set aside");
    assert_eq!(logical_digest(&repaired), logical_digest(&healthy));
}
