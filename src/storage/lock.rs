//! One process per data dir: an exclusive `flock` on `<data-dir>/LOCK`, held for the
//! log's life and released by the kernel if the process dies.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::Path;

use super::{Result, StorageError};

pub fn acquire(data_dir: &Path) -> Result<File> {
    let path = data_dir.join("LOCK");
    let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(StorageError::Locked { dir: data_dir.to_path_buf(), lock: path });
        }
        Err(TryLockError::Error(e)) => return Err(e.into()),
    }
    // The holder's PID, for operators; the lock itself is the flock, not the content.
    file.set_len(0)?;
    writeln!(file, "{}", std::process::id())?;
    Ok(file)
}
