//! `msglog import`: load a folder of `<id>.msg` files as SETs, in one durable batch (one
//! per partition's log when the data dir holds several).

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use indicatif::ProgressBar;

use crate::cluster::partitioning::partition_of;
use crate::protocol::validate_id;
use crate::storage::{Config, FsyncPolicy, Lineage, Log, Offset, Origin};

use super::check::Layout;
use super::msg_files::{EXTENSION, decode_file_name, progress};

/// Append every `DIR/*.msg` file as a SET (ID from the decoded file name, message = the
/// file's exact bytes), then fsync once. Takes the data-dir lock: refuses to run while a
/// server owns the directory. Prints how many files were imported and skipped, and why:
/// entries that are not regular `<id>.msg` files of at most `--max-message-bytes` are
/// skipped. A file that cannot be read stops the import, and what it had appended is
/// removed: a failed import changes nothing.
///
/// A data dir holding one log per partition (`partitions/<p>/`, left by a node with
/// several partitions) gets each ID appended to its partition's log (docs/FORMAT.md,
/// "Partitions"). A data dir that does not exist yet gets one log: the partition count is
/// the cluster's, which an import cannot know.
#[derive(Debug, clap::Args)]
pub(crate) struct ImportArgs {
    /// Directory holding the log, or the logs of its partitions (`partitions/<p>/`: each ID
    /// goes to its partition's). Created if missing, with one log: an import cannot know a
    /// cluster's partition count.
    #[arg(long, env = "MSGLOG_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Folder of .msg files, as `msglog export` writes them.
    #[arg(long)]
    from: PathBuf,
    /// Largest message to import; larger files are skipped.
    #[arg(long, default_value_t = 1024 * 1024)]
    max_message_bytes: u64,
}

/// One log the import appends to, and where it stood before.
struct Target {
    dir: PathBuf,
    log: Log,
    start: Offset,
}

pub(crate) fn run(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let mut names: Vec<_> = fs::read_dir(&args.from)
        .with_context(|| format!("cannot read {}", args.from.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot read {}", args.from.display()))?;
    names.sort();
    refuse_a_member(&args.data_dir)?;
    let layout = Layout::of(&args.data_dir)?;
    let config = Config { fsync: FsyncPolicy::Never, ..super::check::offline_config() };
    let mut targets = Vec::new();
    for p in 0..layout.partitions() {
        let dir = layout.dir(&args.data_dir, p);
        let log =
            Log::open(&dir, config.clone()).with_context(|| format!("cannot open the log in {}", dir.display()))?;
        refuse_a_copy(&log, &dir)?;
        let start = log.next_offset();
        targets.push(Target { dir, log, start });
    }
    for target in &targets {
        if target.start == 0 {
            // An import into an empty log begins it, and this dir may then lead it.
            target
                .log
                .begin_lineage()
                .with_context(|| format!("cannot record the log-id of {}", target.dir.display()))?;
        }
    }
    let bar = progress(names.len() as u64, "importing");
    let appended = append_all(&targets, &args, names, &bar);
    bar.finish_and_clear();
    let (imported, skipped) = match appended {
        Ok(done) => done,
        Err(e) => return Err(roll_back(targets, e)),
    };
    // One fsync per log makes the whole batch durable; nothing is reported imported before.
    for target in targets {
        target.log.sync().with_context(|| format!("making the import into {} durable", target.dir.display()))?;
        target.log.close().with_context(|| format!("closing the log in {}", target.dir.display()))?;
    }
    for (name, why) in &skipped {
        println!("skipped {name}: {why}");
    }
    let partitions = match layout {
        Layout::OneLog => String::new(),
        Layout::Partitions(count) => format!(" (each ID into its partition's log, of {count})"),
    };
    println!("imported {imported} file(s), skipped {}, into {}{partitions}", skipped.len(), args.data_dir.display());
    Ok(ExitCode::SUCCESS)
}

/// Records imported into one cluster member's files would be on no other member, and cut
/// when it next follows a leader.
fn refuse_a_member(data_dir: &Path) -> anyhow::Result<()> {
    if crate::node::is_cluster_member(data_dir) {
        anyhow::bail!(
            "{} belongs to a cluster: records imported into one member's files would be on no other \
             member (and cut when it next follows a leader). Send the messages through any node instead",
            data_dir.display()
        );
    }
    Ok(())
}

/// Records appended to a follower's copy are not on its leader: the follower would cut
/// them when it next fetches, or hold writes no other copy has.
fn refuse_a_copy(log: &Log, data_dir: &Path) -> anyhow::Result<()> {
    let lineage = log.lineage().with_context(|| format!("cannot read which log {} holds", data_dir.display()))?;
    if let Some(Lineage { origin: Origin::Copied, log_id }) = lineage {
        anyhow::bail!(
            "{} holds a copy of log {log_id}, made by following its leader: records imported here would \
             not be on the leader and would be cut when this node next follows it. Import into the \
             leader's data dir (stopped), or send the messages through the leader",
            data_dir.display()
        );
    }
    Ok(())
}

/// Appends every good file as a SET to the log of its ID's partition, in `names` order,
/// and lists the entries skipped and why; fails on the first file it cannot read or append.
fn append_all(
    targets: &[Target],
    args: &ImportArgs,
    names: Vec<OsString>,
    bar: &ProgressBar,
) -> anyhow::Result<(u64, Vec<(String, String)>)> {
    let partitions = targets.len() as u32;
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
        let message = match read_regular_file(&path, args.max_message_bytes)? {
            Ok(message) => message,
            Err(why) => {
                skipped.push((shown, why));
                continue;
            }
        };
        let log = &targets[partition_of(&id, partitions) as usize].log;
        log.append(&id, &message).with_context(|| format!("cannot append {}", path.display()))?;
        imported += 1;
    }
    Ok((imported, skipped))
}

/// The bytes of `path` if it is a regular file of at most `max_bytes`, or why it is
/// skipped. Never follows a symbolic link, even one swapped in after the directory was
/// listed (`O_NOFOLLOW`): `passwd.msg -> /etc/passwd` must not be imported.
fn read_regular_file(path: &Path, max_bytes: u64) -> anyhow::Result<Result<Vec<u8>, String>> {
    let cannot_read = || format!("cannot read {}", path.display());
    let entry = fs::symlink_metadata(path).with_context(cannot_read)?;
    if entry.file_type().is_symlink() {
        return Ok(Err("a symbolic link, not a regular file".to_string()));
    }
    if !entry.is_file() {
        return Ok(Err("not a regular file".to_string()));
    }
    // Non-blocking, so a FIFO swapped in since the check above cannot hang the open.
    let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK;
    let file = match fs::OpenOptions::new().read(true).custom_flags(flags).open(path) {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Ok(Err("a symbolic link, not a regular file".to_string()));
        }
        Err(e) => return Err(e).with_context(cannot_read),
    };
    let meta = file.metadata().with_context(cannot_read)?;
    if !meta.is_file() {
        return Ok(Err("not a regular file".to_string()));
    }
    if meta.len() > max_bytes {
        return Ok(Err(format!("{} bytes, over --max-message-bytes", meta.len())));
    }
    let mut message = Vec::with_capacity(meta.len() as usize);
    // One byte past the limit tells a file that grew since its size was read.
    file.take(max_bytes + 1).read_to_end(&mut message).with_context(cannot_read)?;
    if message.len() as u64 > max_bytes {
        return Ok(Err("over --max-message-bytes (it grew while being read)".to_string()));
    }
    Ok(Ok(message))
}

/// Cuts every log back to where the import began: the records appended so far are not
/// synced, but they are in the OS's hands and a later open would find them.
fn roll_back(targets: Vec<Target>, failure: anyhow::Error) -> anyhow::Error {
    let mut failed = Vec::new();
    for Target { dir, log, start } in targets {
        if let Err(e) = log.truncate_to(start).and_then(|()| log.close()) {
            failed.push(format!("{} from offset {start}: {e}", dir.display()));
        }
    }
    if failed.is_empty() {
        return failure.context("import failed; nothing was imported");
    }
    failure.context(format!(
        "import failed, and removing the records it had appended failed too ({}); run `msglog check` on the data dir",
        failed.join("; ")
    ))
}
