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
            // The holder wrote its PID once it had the lock; unreadable or not yet written
            // is no reason to hide the real error.
            let holder = std::fs::read_to_string(&path)
                .ok()
                .and_then(|text| text.trim().parse::<u32>().ok())
                .map_or_else(String::new, |pid| format!(", PID {pid}"));
            return Err(StorageError::Locked { dir: data_dir.to_path_buf(), lock: path, holder });
        }
        Err(TryLockError::Error(e)) => return Err(e.into()),
    }
    // The holder's PID, for operators; the lock itself is the flock, not the content.
    file.set_len(0)?;
    writeln!(file, "{}", std::process::id())?;
    Ok(file)
}
