//! `msglog check`: verify every record and print counts and a digest; `--repair` cuts the
//! log at the first bad record. Also how the offline tools find the logs of a data dir
//! ([`Layout`]): one, or one per partition.

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::storage::check::{CheckReport, Damage, DamageKind, check};
use crate::storage::{Config, Log, RecoveryMode};

use super::units::{byte_progress, human_bytes};

/// Verify a data dir: every record's CRC, the segment headers and offset order.
///
/// Prints per-segment and total counts, a `digest:` line (SHA-256 over every record's
/// bytes in log order; equal on replicas holding the same records) and a `logical-digest:`
/// line (over the live IDs, their offsets and messages; equal on logs that held the same
/// records, however compaction has cleaned them since). Exits 0 when clean, 1
/// naming the file and byte offset of the first problem. Holds the data-dir lock, so it
/// refuses to run while a server owns the directory.
///
/// A data dir of a node with several partitions holds one log per partition
/// (`partitions/<p>/`): each is checked, and reported under a `partition <p>:` line, with
/// its own digests; the exit code is 1 if any is damaged.
#[derive(Debug, clap::Args)]
pub(crate) struct CheckArgs {
    /// Directory holding the log.
    #[arg(long, env = "MSGLOG_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Cut the log at the first bad record (dropping every later segment), fsync, and exit
    /// 0. Prints what is lost first. No prompt. With partitions, every damaged partition
    /// (of those checked) is repaired.
    #[arg(long)]
    repair: bool,
    /// Check only this partition's log (a data dir of several partitions; on a one-log
    /// data dir only 0, its log, is accepted).
    #[arg(long, value_name = "P")]
    partition: Option<u32>,
}

/// Offline tools accept any record a server could have written.
pub(crate) fn offline_config() -> Config {
    Config { max_record_bytes: 1 << 30, ..Config::default() }
}

/// Offline tools that read a log refuse a data dir that is not there: `Log::open` would
/// create it (its LOCK and log/ too), so a mistyped path would pass as an empty log.
pub(crate) fn existing_data_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => anyhow::bail!("data dir {} is not a directory", dir.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => anyhow::bail!("data dir {} does not exist", dir.display()),
        Err(e) => Err(e).with_context(|| format!("cannot read data dir {}", dir.display())),
    }
}

/// `<data-dir>/partitions`: with several partitions, one data dir per partition inside it.
/// How a data dir holds its records (README "Data directory", docs/FORMAT.md
/// "Partitions"). Offline tools cannot know a cluster's partition count, so they read it
/// from the directories a node made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// One log, in the data dir itself: a standalone node, or a cluster of one partition.
    OneLog,
    /// `partitions/<p>/` for every `p` below the count, each laid out as a one-log data dir.
    Partitions(u32),
}

impl Layout {
    /// The layout `data_dir` holds (one log when it holds nothing yet). Refuses a dir with
    /// both a one-partition log and partition dirs, and one whose partition numbers have a
    /// gap: reading either as one layout would hide records of the other.
    pub(crate) fn of(data_dir: &Path) -> anyhow::Result<Layout> {
        let root = crate::storage::partitions_dir(data_dir);
        let numbers =
            crate::storage::partition_numbers(&root).with_context(|| format!("cannot read {}", root.display()))?;
        let Some(&highest) = numbers.last() else { return Ok(Layout::OneLog) };
        let log = crate::storage::log_dir(data_dir);
        if crate::storage::holds_segments(&log).with_context(|| format!("cannot read {}", log.display()))? {
            anyhow::bail!(
                "{} holds both a one-partition log ({}) and the logs of {} partition(s) ({}): a data dir is laid \
                 out one way or the other; move one of them away",
                data_dir.display(),
                log.display(),
                numbers.len(),
                root.display()
            );
        }
        let count = numbers.len() as u32;
        if let Some(missing) = (0..count).find(|p| numbers.binary_search(p).is_err()) {
            anyhow::bail!(
                "{} holds partitions up to {highest} but no partition {missing}: a node keeps a directory for \
                 every partition of its cluster",
                root.display()
            );
        }
        Ok(Layout::Partitions(count))
    }

    /// How many logs the layout holds.
    pub(crate) fn partitions(self) -> u32 {
        match self {
            Layout::OneLog => 1,
            Layout::Partitions(count) => count,
        }
    }

    /// The data dir of partition `p`'s log.
    pub(crate) fn dir(self, data_dir: &Path, p: u32) -> PathBuf {
        match self {
            Layout::OneLog => data_dir.to_path_buf(),
            Layout::Partitions(_) => crate::storage::partitions_dir(data_dir).join(p.to_string()),
        }
    }

    /// The partitions a tool works on: all, or only `only`, which the dir must hold.
    pub(crate) fn select(self, data_dir: &Path, only: Option<u32>) -> anyhow::Result<Vec<u32>> {
        match (self, only) {
            (_, None) => Ok((0..self.partitions()).collect()),
            (_, Some(p)) if p < self.partitions() => Ok(vec![p]),
            (Layout::OneLog, Some(p)) => anyhow::bail!(
                "--partition {p}: {} holds one log, not partitions (its log is partition 0)",
                data_dir.display()
            ),
            (Layout::Partitions(count), Some(p)) => anyhow::bail!(
                "--partition {p}: {} holds partitions 0 to {}",
                crate::storage::partitions_dir(data_dir).display(),
                count - 1
            ),
        }
    }
}

/// Whether a partition's dir holds a log: a node leaves the dir of a partition it holds no
/// copy of empty, and a tool that opened a log there would create one.
pub(crate) fn holds_log(partition_dir: &Path) -> bool {
    crate::storage::log_dir(partition_dir).is_dir()
}

pub(crate) fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    existing_data_dir(&args.data_dir)?;
    let layout = Layout::of(&args.data_dir)?;
    let partitions = layout.select(&args.data_dir, args.partition)?;
    if layout == Layout::OneLog {
        let clean = check_log(&args.data_dir, args.repair)?;
        return Ok(if clean { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    let mut damaged = Vec::new();
    for &p in &partitions {
        let dir = layout.dir(&args.data_dir, p);
        println!("partition {p}: {}", dir.display());
        if !holds_log(&dir) {
            println!("no log: this node holds no copy of partition {p}");
            continue;
        }
        if !check_log(&dir, args.repair).with_context(|| format!("partition {p}"))? {
            damaged.push(p.to_string());
        }
    }
    if damaged.is_empty() {
        println!("clean: {} partition(s) checked", partitions.len());
        return Ok(ExitCode::SUCCESS);
    }
    println!("damaged: partition(s) {} of {} checked", damaged.join(","), partitions.len());
    Ok(ExitCode::FAILURE)
}

/// Checks the log of `data_dir` and prints its report; repairs it when told to. Whether
/// the log is (now) clean.
fn check_log(data_dir: &Path, repair: bool) -> anyhow::Result<bool> {
    let config = offline_config();
    let report = verify(data_dir, &config)?;
    print(&report);
    let Some(damage) = &report.damage else { return Ok(true) };
    println!("problem: {} at byte {}: {}", damage.segment.display(), damage.position, damage.reason);
    if !repair {
        return Ok(false);
    }
    match damage.kind {
        DamageKind::Bytes => {
            println!(
                "repair: dropping {} bytes ({}) from byte {} of {}, and {} later segment(s) holding {} good record(s)",
                damage.lost_bytes,
                human_bytes(damage.lost_bytes),
                damage.position,
                damage.segment.display(),
                damage.lost_segments,
                damage.lost_records
            );
            println!("{}", lost_line(damage));
        }
        DamageKind::MissingSegment => println!(
            "repair: forgetting every missing segment (first {}): their records are lost, and older values of \
             their IDs may show again; the segments still present are kept",
            damage.segment.display()
        ),
        DamageKind::UnlistedSegment => println!(
            "repair: renaming every segment the manifest does not list (first {}) to <name>.log.unlisted, out of \
             the log",
            damage.segment.display()
        ),
    }
    let log = Log::open(data_dir, Config { recovery: RecoveryMode::Repair, ..config.clone() })
        .with_context(|| format!("cannot repair {}", data_dir.display()))?;
    log.close().context("closing the repaired log")?;
    let after = verify(data_dir, &config)?;
    match after.damage {
        None => {
            println!("repaired: {} records, last offset {}", after.records(), or_none(after.last_offset()));
            println!("digest: {}", after.digest_hex());
            println!("logical-digest: {}", after.logical_digest_hex());
            Ok(true)
        }
        Some(d) => {
            anyhow::bail!("still damaged after repair: {} at byte {}: {}", d.segment.display(), d.position, d.reason)
        }
    }
}

fn verify(data_dir: &Path, config: &Config) -> anyhow::Result<CheckReport> {
    let dir = crate::storage::log_dir(data_dir);
    let total = std::fs::read_dir(&dir)
        .map_or(0, |entries| entries.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum());
    let bar = byte_progress(total, "checking");
    let report = check(data_dir, config, |bytes| bar.inc(bytes))
        .with_context(|| format!("cannot check {}", data_dir.display()))?;
    bar.finish_and_clear();
    Ok(report)
}

/// What a cut loses, in the words an operator checks against: records and IDs. The cut
/// bytes of the damaged segment can be counted only when a later segment bounds them, and
/// their IDs cannot be read at all.
fn lost_line(damage: &Damage) -> String {
    let records = match damage.cut_records {
        Some(cut) => format!("{} record(s)", damage.lost_records + cut),
        // No later segment: every lost byte is in the damaged one.
        None => format!(
            "{} record(s), plus those in the {} cut bytes of the damaged segment (uncountable: no later segment \
             bounds them)",
            damage.lost_records, damage.lost_bytes
        ),
    };
    format!(
        "lost: {records}; {} ID(s) lose their newest value (older values may show again), besides any written only \
         in the damaged bytes",
        damage.lost_ids
    )
}

fn or_none(offset: Option<u64>) -> String {
    offset.map_or_else(|| "none".to_string(), |o| o.to_string())
}

fn print(report: &CheckReport) {
    for s in &report.segments {
        println!(
            "segment {}: records={} tombstones={} bytes={} first_offset={} last_offset={}",
            s.path.display(),
            s.records,
            s.tombstones,
            s.bytes,
            or_none(s.first_offset),
            or_none(s.last_offset)
        );
    }
    println!(
        "total: segments={} records={} live_ids={} tombstones={} bytes={} first_offset={} last_offset={}",
        report.segments.len(),
        report.records(),
        report.live_ids,
        report.tombstones(),
        report.bytes(),
        or_none(report.first_offset()),
        or_none(report.last_offset())
    );
    println!("digest: {}", report.digest_hex());
    println!("logical-digest: {}", report.logical_digest_hex());
    for path in &report.leftover {
        println!(
            "leftover: {}: not part of the log (an interrupted roll or truncation, or retention, left it); not \
             checked, and deleted when the log is next opened",
            path.display()
        );
    }
}
