//! STUB: in-memory stand-in for the real engine, same API. Replaced by the real log.
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use super::{Config, Epoch, Offset, Result};

/// Counters for STATS and the periodic stats line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Records in the log (SETs and tombstones).
    pub records: u64,
    /// Live IDs.
    pub ids: u64,
    pub segments: u64,
    /// Bytes of log on disk and in the write buffer.
    pub bytes: u64,
    /// Offset the next record will get.
    pub next_offset: Offset,
    /// Every record below this offset is durable per the fsync policy.
    pub durable_offset: Offset,
    pub epoch: Epoch,
}

pub struct Log {
    inner: Mutex<(HashMap<Vec<u8>, Vec<u8>>, u64)>,
}

impl Log {
    /// Opens (creating if needed) the log under `data_dir`, locking it and recovering.
    pub fn open(_data_dir: &Path, _config: Config) -> Result<Log> {
        Ok(Log {
            inner: Mutex::new((HashMap::new(), 0)),
        })
    }
    /// Appends a SET record; visible to `get` at once, durable after `sync_through`.
    pub fn append(&self, id: &[u8], message: &[u8]) -> Result<Offset> {
        let mut g = self.inner.lock().unwrap();
        g.0.insert(id.to_vec(), message.to_vec());
        g.1 += 1;
        Ok(g.1 - 1)
    }
    /// Appends a tombstone if `id` is live; `None` (nothing written) if it is not.
    pub fn delete(&self, id: &[u8]) -> Result<Option<Offset>> {
        let mut g = self.inner.lock().unwrap();
        if g.0.remove(id).is_none() {
            return Ok(None);
        }
        g.1 += 1;
        Ok(Some(g.1 - 1))
    }
    /// The latest message of `id`, CRC-checked.
    pub fn get(&self, id: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.inner.lock().unwrap().0.get(id).cloned())
    }
    /// Blocks until every record up to and including `offset` is durable per the policy
    /// (`Always`: fsynced, sharing the fsync with concurrent callers; otherwise written to
    /// the OS).
    pub fn sync_through(&self, _offset: Offset) -> Result<()> {
        Ok(())
    }
    pub fn stats(&self) -> LogStats {
        let g = self.inner.lock().unwrap();
        LogStats {
            records: g.1,
            ids: g.0.len() as u64,
            segments: 1,
            next_offset: g.1,
            durable_offset: g.1,
            ..Default::default()
        }
    }
    /// Flushes, fsyncs, writes indexes and releases the lock.
    pub fn close(self) -> Result<()> {
        Ok(())
    }
}
