//! `msglog check`: verify every record and print counts and a digest; `--repair` cuts the
//! log at the first bad record.

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
#[derive(Debug, clap::Args)]
pub(crate) struct CheckArgs {
    /// Directory holding the log.
    #[arg(long, env = "MSGLOG_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Cut the log at the first bad record (dropping every later segment), fsync, and exit
    /// 0. Prints what is lost first. No prompt.
    #[arg(long)]
    repair: bool,
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

pub(crate) fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    existing_data_dir(&args.data_dir)?;
    let config = offline_config();
    let report = verify(&args, &config)?;
    print(&report);
    let Some(damage) = &report.damage else { return Ok(ExitCode::SUCCESS) };
    println!("problem: {} at byte {}: {}", damage.segment.display(), damage.position, damage.reason);
    if !args.repair {
        return Ok(ExitCode::FAILURE);
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
    let log = Log::open(&args.data_dir, Config { recovery: RecoveryMode::Repair, ..config.clone() })
        .with_context(|| format!("cannot repair {}", args.data_dir.display()))?;
    log.close().context("closing the repaired log")?;
    let after = verify(&args, &config)?;
    match after.damage {
        None => {
            println!("repaired: {} records, last offset {}", after.records(), or_none(after.last_offset()));
            println!("digest: {}", after.digest_hex());
            println!("logical-digest: {}", after.logical_digest_hex());
            Ok(ExitCode::SUCCESS)
        }
        Some(d) => {
            anyhow::bail!("still damaged after repair: {} at byte {}: {}", d.segment.display(), d.position, d.reason)
        }
    }
}

fn verify(args: &CheckArgs, config: &Config) -> anyhow::Result<CheckReport> {
    let dir = crate::storage::log_dir(&args.data_dir);
    let total = std::fs::read_dir(&dir)
        .map_or(0, |entries| entries.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum());
    let bar = byte_progress(total, "checking");
    let report = check(&args.data_dir, config, |bytes| bar.inc(bytes))
        .with_context(|| format!("cannot check {}", args.data_dir.display()))?;
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
}
