//! `msglog import`: load a folder of `<id>.msg` files as SETs, in one durable batch.

use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::protocol::validate_id;
use crate::storage::{Config, FsyncPolicy, Log};

use super::msg_files::{EXTENSION, decode_file_name, progress};

/// Append every `DIR/*.msg` file as a SET (ID from the decoded file name, message = the
/// file's exact bytes), then fsync once. Takes the data-dir lock: refuses to run while a
/// server owns the directory. Prints how many files were imported and skipped, and why.
#[derive(Debug, clap::Args)]
pub(crate) struct ImportArgs {
    /// Directory holding the log (created if missing).
    #[arg(long, env = "MSGLOG_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Folder of .msg files, as `msglog export` writes them.
    #[arg(long)]
    from: PathBuf,
    /// Largest message to import; larger files are skipped.
    #[arg(long, default_value_t = 1024 * 1024)]
    max_message_bytes: u64,
}

pub(crate) fn run(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let mut names: Vec<_> = fs::read_dir(&args.from)
        .with_context(|| format!("cannot read {}", args.from.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot read {}", args.from.display()))?;
    names.sort();
    let config = Config { fsync: FsyncPolicy::Never, ..super::check::offline_config() };
    let log = Log::open(&args.data_dir, config)
        .with_context(|| format!("cannot open the log in {}", args.data_dir.display()))?;
    let bar = progress(names.len() as u64, "importing");
    let (mut imported, mut skipped) = (0u64, Vec::new());
    for name in names {
        bar.inc(1);
        let shown = name.to_string_lossy().into_owned();
        let Some(text) = name.to_str().filter(|n| n.ends_with(EXTENSION)) else {
            skipped.push((shown, "not a .msg file".to_string()));
            continue;
        };
        let id = match decode_file_name(text).and_then(|id| validate_id(&id).map(|()| id).map_err(|e| e.to_string())) {
            Ok(id) => id,
            Err(why) => {
                skipped.push((shown, format!("not an ID: {why}")));
                continue;
            }
        };
        let path = args.from.join(&name);
        let size = fs::metadata(&path).with_context(|| format!("cannot read {}", path.display()))?.len();
        if size > args.max_message_bytes {
            skipped.push((shown, format!("{size} bytes, over --max-message-bytes")));
            continue;
        }
        let message = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        log.append(&id, &message)?;
        imported += 1;
    }
    bar.finish_and_clear();
    // One fsync makes the whole batch durable; nothing is reported imported before it.
    log.sync().context("making the import durable")?;
    log.close().context("closing the log")?;
    for (name, why) in &skipped {
        println!("skipped {name}: {why}");
    }
    println!("imported {imported} file(s), skipped {}, into {}", skipped.len(), args.data_dir.display());
    Ok(ExitCode::SUCCESS)
}
