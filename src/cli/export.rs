//! `msglog export`: the latest message of every live ID as `DIR/<id>.msg`, from one log or
//! from every partition's.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use indicatif::ProgressBar;

use crate::storage::{Log, Offset, StorageError};

use super::check::{Layout, existing_data_dir, holds_log, offline_config};
use super::msg_files::{NAME_MAX, file_name, progress, shown_id};

/// Write the latest message of every live ID to `OUT/<id>.msg` (exact bytes).
///
/// ID bytes outside [A-Za-z0-9._-] (and the IDs `.` and `..`) are %-encoded in file names,
/// so nothing escapes OUT. Each file is written to a temporary name and renamed, so a
/// reader never sees half a file. An ID whose file name would be over 255 bytes is skipped
/// with a warning, and the export, otherwise complete, exits 1. Takes the data-dir lock: it
/// refuses to run while a server owns the directory (stop the server, or export from a
/// follower's copy).
///
/// A data dir of a node with several partitions holds one log per partition
/// (`partitions/<p>/`); their IDs are disjoint, so every partition's live IDs go into the
/// one OUT (or only `--partition`'s).
#[derive(Debug, clap::Args)]
pub(crate) struct ExportArgs {
    /// Directory holding the log.
    #[arg(long, env = "MSGLOG_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Folder to write the .msg files into (created if missing).
    #[arg(long, default_value = "./messages")]
    out: PathBuf,
    /// Refresh an earlier export: only IDs changed at or after this offset are rewritten,
    /// and files of IDs deleted since then are removed. (Use the `next offset` an earlier
    /// export printed.) An offset is within one log: a data dir of several partitions needs
    /// `--partition` with it.
    #[arg(long)]
    since: Option<Offset>,
    /// Export only this partition's IDs (a data dir of several partitions; on a one-log
    /// data dir only 0, its log, is accepted).
    #[arg(long, value_name = "P")]
    partition: Option<u32>,
}

pub(crate) fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    existing_data_dir(&args.data_dir)?;
    let layout = Layout::of(&args.data_dir)?;
    if let (Layout::Partitions(count), Some(_), None) = (layout, args.since, args.partition) {
        anyhow::bail!(
            "--since is an offset within one log, and {} holds the logs of {count} partitions: give --partition \
             too (export each partition with the next offset its own export printed)",
            args.data_dir.display()
        );
    }
    // Every log is opened, so locked, before anything is written: a server owning any of
    // them stops the export before it begins.
    let mut logs = Vec::new();
    for p in layout.select(&args.data_dir, args.partition)? {
        let dir = layout.dir(&args.data_dir, p);
        if layout != Layout::OneLog && !holds_log(&dir) {
            eprintln!("msglog: note: partition {p} has no log in {} (this node holds no copy of it)", dir.display());
            continue;
        }
        let log =
            Log::open(&dir, offline_config()).with_context(|| format!("cannot open the log in {}", dir.display()))?;
        logs.push((p, log));
    }
    fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let mut tally = Tally::default();
    for (_, log) in &logs {
        match args.since {
            None => export_all(log, &args.out, &mut tally)?,
            Some(since) => refresh(log, &args.out, since, &mut tally)?,
        }
    }
    sync_dir(&args.out)?;
    let next = match logs.as_slice() {
        [(_, log)] => Some(log.stats().next_offset),
        _ => None,
    };
    let read = match (layout, logs.as_slice()) {
        (Layout::OneLog, _) => String::new(),
        (_, [(p, _)]) => format!(" from partition {p},"),
        (_, all) => format!(" from {} partition(s),", all.len()),
    };
    for (p, log) in logs {
        log.close().with_context(|| format!("closing the log of partition {p}"))?;
    }
    let Tally { written, removed, too_long } = tally;
    let skipped = match too_long {
        0 => String::new(),
        n => format!(", skipped {n} ID(s) whose file name would be too long"),
    };
    // The next offset is one log's: with several there is none to pass as --since.
    let next = next.map_or_else(String::new, |next| format!("; next offset {next}"));
    println!("exported {written} file(s), removed {removed}{skipped},{read} to {}{next}", args.out.display());
    // An export missing live IDs is not a copy of the log: scripts must notice, though
    // every other file is written.
    Ok(if too_long == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// What an export did, for its summary line.
#[derive(Debug, Default)]
struct Tally {
    written: u64,
    removed: u64,
    too_long: u64,
}

impl Tally {
    fn add(&mut self, id: &[u8], outcome: Outcome, bar: &ProgressBar) {
        match outcome {
            Outcome::Written => self.written += 1,
            Outcome::NameTooLong(why) => {
                self.too_long += 1;
                bar.suspend(|| eprintln!("msglog: warning: skipped ID {}: {why}", shown_id(id)));
            }
        }
    }
}

fn export_all(log: &Log, out: &Path, tally: &mut Tally) -> anyhow::Result<()> {
    let bar = progress(log.stats().ids, "exporting");
    log.for_each_live(|id, message| {
        let name = file_name(id);
        let outcome =
            write_message(out, &name, message).map_err(|error| Failure::Io { path: out.join(&name), error })?;
        tally.add(id, outcome, &bar);
        bar.inc(1);
        Ok::<_, Failure>(())
    })?;
    bar.finish_and_clear();
    Ok(())
}

/// Rewrites the IDs touched by records at or after `since`; removes the deleted ones.
fn refresh(log: &Log, out: &Path, since: Offset, tally: &mut Tally) -> anyhow::Result<()> {
    let next = log.stats().next_offset;
    if since > next {
        eprintln!("msglog: note: nothing since offset {since}: the log ends at {next}");
    }
    let start = log.log_start_offset();
    if since < start {
        eprintln!(
            "msglog: note: offset {since} is below the log start {start}: retention deleted the records before it; \
             refreshing from {start} (IDs deleted only by retention keep their files)"
        );
    }
    let mut touched: HashSet<Vec<u8>> = HashSet::new();
    for chunk in log.chunks_from(since, 1 << 20) {
        let chunk = chunk?;
        for record in chunk.records() {
            let record = record.map_err(|(at, why)| anyhow::anyhow!("bad record in chunk at byte {at}: {why}"))?;
            touched.insert(record.id.to_vec());
        }
    }
    let bar = ProgressBar::hidden();
    for id in touched {
        let name = file_name(&id);
        let path = out.join(&name);
        match log.get(&id)? {
            Some(message) => {
                let outcome =
                    write_message(out, &name, &message).with_context(|| format!("cannot write {}", path.display()))?;
                tally.add(&id, outcome, &bar);
            }
            // No file can have a name that long, so there is nothing to remove.
            None if name.len() > NAME_MAX => {}
            None => match fs::remove_file(&path) {
                Ok(()) => tally.removed += 1,
                Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::InvalidFilename) => {}
                Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
            },
        }
    }
    Ok(())
}

/// Either side of `for_each_live`'s callback can fail.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cannot write {}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
}

/// What became of one ID's message.
#[derive(Debug)]
enum Outcome {
    Written,
    /// Not written: the file name is too long for the file system (why, for the warning).
    NameTooLong(String),
}

/// Writes `OUT/name`, unless the name is too long: checked against Linux's limit before
/// anything is created, and, for a file system with a lower one, by the OS's answer.
fn write_message(out: &Path, name: &str, bytes: &[u8]) -> io::Result<Outcome> {
    if name.len() > NAME_MAX {
        let why = format!("its file name would be {} bytes, over the {NAME_MAX}-byte limit", name.len());
        return Ok(Outcome::NameTooLong(why));
    }
    match write_atomically(&out.join(name), bytes) {
        Ok(()) => Ok(Outcome::Written),
        Err(e) if e.kind() == io::ErrorKind::InvalidFilename => {
            let why =
                format!("its file name ({} bytes) is too long for the file system of {}", name.len(), out.display());
            Ok(Outcome::NameTooLong(why))
        }
        Err(e) => Err(e),
    }
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over `path`. The
/// temporary name starts with `~`, which no exported name can (`~` is always %-encoded);
/// it is one per process, which writes one file at a time; and it is short, so an exported
/// name may take all of `NAME_MAX`.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_file_name(format!("~export-{}.tmp", std::process::id()));
    let written = fs::write(&tmp, bytes).and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Makes the export durable before it is reported done: `syncfs` writes every file's data
/// (one call instead of an fsync per file, which would cost most of the export's speed),
/// then the folder's fsync makes the renames durable.
fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let synced = fs::File::open(dir).and_then(|d| {
        // SAFETY: syncfs only reads the descriptor, which `d` keeps open for the call.
        if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        d.sync_all()
    });
    synced.with_context(|| format!("cannot sync {}", dir.display()))
}
