//! `msglog export`: the latest message of every live ID as `DIR/<id>.msg`.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::storage::{Log, Offset, StorageError};

use super::check::offline_config;
use super::msg_files::{file_name, progress};

/// Write the latest message of every live ID to `OUT/<id>.msg` (exact bytes).
///
/// ID bytes outside [A-Za-z0-9._-] (and the IDs `.` and `..`) are %-encoded in file names,
/// so nothing escapes OUT. Each file is written to a temporary name and renamed, so a
/// reader never sees half a file. Takes the data-dir lock: it refuses to run while a
/// server owns the directory (stop the server, or export from a follower's copy).
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
    /// export printed.)
    #[arg(long)]
    since: Option<Offset>,
}

pub(crate) fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let log = Log::open(&args.data_dir, offline_config())
        .with_context(|| format!("cannot open the log in {}", args.data_dir.display()))?;
    fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let next = log.stats().next_offset;
    let (written, removed) = match args.since {
        None => (export_all(&log, &args.out)?, 0),
        Some(since) => refresh(&log, &args.out, since)?,
    };
    sync_dir(&args.out)?;
    log.close().context("closing the log")?;
    println!("exported {written} file(s), removed {removed}, to {}; next offset {next}", args.out.display());
    Ok(ExitCode::SUCCESS)
}

fn export_all(log: &Log, out: &Path) -> anyhow::Result<u64> {
    let bar = progress(log.stats().ids, "exporting");
    let mut written = 0u64;
    log.for_each_live(|id, message| {
        write_atomically(&out.join(file_name(id)), message).map_err(Failure::Io)?;
        written += 1;
        bar.inc(1);
        Ok::<_, Failure>(())
    })?;
    bar.finish_and_clear();
    Ok(written)
}

/// Rewrites the IDs touched by records at or after `since`; removes the deleted ones.
fn refresh(log: &Log, out: &Path, since: Offset) -> anyhow::Result<(u64, u64)> {
    let mut touched: HashSet<Vec<u8>> = HashSet::new();
    for chunk in log.chunks_from(since, 1 << 20) {
        let chunk = chunk?;
        for record in chunk.records() {
            let record = record.map_err(|(at, why)| anyhow::anyhow!("bad record in chunk at byte {at}: {why}"))?;
            touched.insert(record.id.to_vec());
        }
    }
    let (mut written, mut removed) = (0, 0);
    for id in touched {
        let path = out.join(file_name(&id));
        match log.get(&id)? {
            Some(message) => {
                write_atomically(&path, &message).with_context(|| format!("cannot write {}", path.display()))?;
                written += 1;
            }
            None => match fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
            },
        }
    }
    Ok((written, removed))
}

/// Either side of `for_each_live`'s callback can fail.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cannot write a message file: {0}")]
    Io(io::Error),
}

/// Writes `bytes` to a temporary sibling, then renames it over `path`. The temporary name
/// ends in `~tmp`, which no exported name can (`~` is always %-encoded).
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".~tmp");
    let mut file = fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    drop(file);
    fs::rename(&tmp, path)
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("cannot sync {}", dir.display()))
}
