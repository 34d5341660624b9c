//! The file-system seam: every file operation that changes what is on disk goes through a
//! [`FileSystem`], so tests can plug in one that fails the Nth write, holds an fsync in
//! flight, or forgets unsynced data on a simulated power cut (raft-engine's
//! `env::FileSystem` is the model). Production uses [`RealFs`].
//!
//! Reads do not go through it: the engine maps the real files, so a test file system
//! must pass its writes on to the real files (and may keep its own record of what is
//! durable). Operations name the file by path as well as by handle, so a test file system
//! can track files without looking inside `File`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The mutating file operations the storage engine performs.
pub trait FileSystem: Send + Sync + std::fmt::Debug {
    /// Creates `path`, which must not exist, for reading and writing.
    fn create_new(&self, path: &Path) -> io::Result<File>;
    /// Creates `path` or empties it, for writing (temporary files).
    fn create(&self, path: &Path) -> io::Result<File>;
    /// Opens an existing `path` for reading and writing.
    fn open(&self, path: &Path) -> io::Result<File>;
    /// Writes all of `bytes` at `position`.
    fn write_at(&self, file: &File, path: &Path, bytes: &[u8], position: u64) -> io::Result<()>;
    fn set_len(&self, file: &File, path: &Path, len: u64) -> io::Result<()>;
    /// `fdatasync`: the file's data (and its size) are durable when it returns.
    fn sync_data(&self, file: &File, path: &Path) -> io::Result<()>;
    /// Makes the data of every one of `files`, which are on `anchor`'s device, durable, as
    /// `sync_data` on each would; a file system may do it in one call (the real one: one
    /// `syncfs` of `anchor`, see [`RealFs`]). `anchor` stays open from before the first
    /// write of any of `files`.
    fn sync_files(&self, _anchor: &File, files: &[(&File, &Path)]) -> io::Result<()> {
        files.iter().try_for_each(|(file, path)| self.sync_data(file, path))
    }
    /// Whether [`sync_files`](Self::sync_files) costs less than a `sync_data` of each: only
    /// then do several logs share their syncs.
    fn batches_syncs(&self) -> bool {
        false
    }
    /// `fsync`: data and metadata.
    fn sync_all(&self, file: &File, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (created, renamed, removed files) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
}

/// The operating system's file system.
///
/// [`FileSystem::sync_files`] on several files is one `syncfs(2)`, which writes out and
/// flushes their whole file system once instead of one `fdatasync` per file (each its own
/// journal commit and cache flush). It needs Linux 5.17 or later, where `syncfs` reports
/// every error; on older kernels each file gets its own `fdatasync`, and logs do not
/// share their syncs ([`FileSystem::batches_syncs`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

impl FileSystem for RealFs {
    fn create_new(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new().read(true).write(true).create_new(true).open(path)
    }
    fn create(&self, path: &Path) -> io::Result<File> {
        File::create(path)
    }
    fn open(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new().read(true).write(true).open(path)
    }
    fn write_at(&self, file: &File, _: &Path, bytes: &[u8], position: u64) -> io::Result<()> {
        file.write_all_at(bytes, position)
    }
    fn set_len(&self, file: &File, _: &Path, len: u64) -> io::Result<()> {
        file.set_len(len)
    }
    fn sync_data(&self, file: &File, _: &Path) -> io::Result<()> {
        file.sync_data()
    }
    fn sync_files(&self, anchor: &File, files: &[(&File, &Path)]) -> io::Result<()> {
        match files {
            [] => Ok(()),
            [(file, path)] => self.sync_data(file, path),
            _ if syncfs_reports_errors() => {
                // SAFETY: syncfs takes a file descriptor, which `anchor` keeps open.
                match unsafe { libc::syncfs(anchor.as_raw_fd()) } {
                    0 => Ok(()),
                    _ => Err(io::Error::last_os_error()),
                }
            }
            _ => files.iter().try_for_each(|(file, path)| self.sync_data(file, path)),
        }
    }
    fn batches_syncs(&self) -> bool {
        syncfs_reports_errors()
    }
    fn sync_all(&self, file: &File, _: &Path) -> io::Result<()> {
        file.sync_all()
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
}

/// Whether this kernel's `syncfs` reports every error of what it wrote: write-back errors
/// since Linux 5.8, and the file system's own (a failed journal commit) since 5.17. Before,
/// it could return success over lost pages.
fn syncfs_reports_errors() -> bool {
    static REPORTS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REPORTS.get_or_init(|| {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        release_at_least(&release, (5, 17))
    })
}

/// Whether a kernel release string (`6.1.0-13-amd64`, `5.17-rc1`) is `version` or later;
/// `false` for one that does not parse.
fn release_at_least(release: &str, version: (u32, u32)) -> bool {
    let mut numbers = release.trim().split(|c: char| !c.is_ascii_digit()).map(str::parse::<u32>);
    match (numbers.next(), numbers.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor) >= version,
        _ => false,
    }
}

/// Replaces `path` with `bytes` atomically and durably: a temporary file beside it is
/// written and fsynced, renamed over `path`, and the directory fsynced. A crash leaves
/// either the old contents or the new, never a mix.
pub(crate) fn replace_file(fs: &dyn FileSystem, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let temp = path.with_file_name(name);
    let file = fs.create(&temp)?;
    fs.write_at(&file, &temp, bytes, 0)?;
    fs.sync_all(&file, &temp)?;
    drop(file);
    fs.rename(&temp, path)?;
    fs.sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Removes `path` if it is there.
pub(crate) fn remove_if_present(fs: &dyn FileSystem, path: &Path) -> io::Result<()> {
    match fs.remove(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::release_at_least;

    #[test]
    fn kernel_releases_compare_by_major_and_minor() {
        assert!(!release_at_least("5.16.0", (5, 17)));
        assert!(!release_at_least("4.19.0-21-amd64", (5, 17)));
        assert!(release_at_least("5.17-rc1", (5, 17)));
        assert!(release_at_least("6.1.0-13-amd64", (5, 17)));
        assert!(release_at_least("6.18.44-fc-v1045\n", (5, 17)));
        assert!(!release_at_least("", (5, 17)));
        assert!(!release_at_least("garbage", (5, 17)));
    }
}
