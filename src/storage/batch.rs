//! Atomic batches: several writes that become visible, durable and replicated together
//! (MULTI/EXEC and MSET). See [`Log::transaction`](super::Log::transaction).
//!
//! A [`Batch`] lives while the log's write lock is held. Its writes are staged in memory
//! and appended in one go when the transaction's closure returns; its reads look at the
//! staged writes first, so a GET after a SET in the same batch sees the new message, as
//! in Redis.

use std::cell::Cell;
use std::collections::HashMap;

use super::log::{Shared, State};
use super::record::{self, RecordKind, RecordRef};
use super::{Log, Offset, Result, StorageError};

impl Log {
    /// Runs `f` on an atomic batch: its reads see the log plus the batch's own writes,
    /// and its writes are appended together when `f` returns, all under the write lock, so
    /// a concurrent reader sees all of them or none. Returns `f`'s result and the batch's
    /// last offset (`None` if it wrote nothing); nothing is appended if that fails.
    pub fn transaction<R>(&self, f: impl FnOnce(&mut Batch<'_>) -> R) -> Result<(R, Option<Offset>)> {
        let mut st = self.shared.write();
        st.check_writable()?;
        run(&mut st, &self.shared, f)
    }

    /// Runs `f` on a read-only view of the log at one instant (under the read lock), so
    /// reads of several IDs (MGET) never see part of a batch appended meanwhile.
    pub fn read_at_once<R>(&self, f: impl FnOnce(&Batch<'_>) -> R) -> R {
        let st = self.shared.read();
        f(&Batch::new(&st, &self.shared))
    }

    /// Most bytes one atomic batch may take (framed): the record limit.
    pub fn max_batch_bytes(&self) -> usize {
        self.shared.config.max_record_bytes as usize
    }
}

/// The writes of one transaction, and the log as it will be after them.
pub struct Batch<'s> {
    state: &'s State,
    shared: &'s Shared,
    writes: Vec<(RecordKind, Vec<u8>, Vec<u8>)>,
    /// ID → index in `writes` of its latest staged write.
    latest: HashMap<Vec<u8>, usize>,
    bytes: usize,
    /// Offset of the newest logged record a read returned: a server shows it only once
    /// that record is durable.
    newest_read: Cell<Option<Offset>>,
}

impl<'s> Batch<'s> {
    fn new(state: &'s State, shared: &'s Shared) -> Batch<'s> {
        Batch { state, shared, writes: Vec::new(), latest: HashMap::new(), bytes: 0, newest_read: Cell::new(None) }
    }

    /// Offset of the newest record (already in the log, not staged) any read returned, or
    /// the log's last offset once a read reported an ID absent or asked whether it exists.
    pub fn newest_read(&self) -> Option<Offset> {
        self.newest_read.get()
    }

    /// The message `id` will hold after the writes staged so far, its CRC checked.
    pub fn get(&self, id: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(&i) = self.latest.get(id) {
            let (kind, _, message) = &self.writes[i];
            return Ok((*kind == RecordKind::Set).then(|| message.clone()));
        }
        let Some(at) = self.state.locate(id) else {
            self.saw_absence();
            return Ok(None);
        };
        let record = self.state.record_at(&self.shared.config, at)?;
        if record.id != id {
            return Err(self.state.corruption(at, "ID index points at another ID's record"));
        }
        self.newest_read.set(self.newest_read.get().max(Some(record.offset)));
        Ok(Some(record.message.to_vec()))
    }

    pub fn contains(&self, id: &[u8]) -> bool {
        match self.latest.get(id) {
            Some(&i) => self.writes[i].0 == RecordKind::Set,
            None => {
                self.saw_absence();
                self.state.locate(id).is_some()
            }
        }
    }

    /// A read that tells whether an ID is there names no record (the tombstone that makes
    /// it absent is gone from the index): it counts as having read everything in the log.
    fn saw_absence(&self) {
        let last = self.state.next_offset.checked_sub(1);
        self.newest_read.set(self.newest_read.get().max(last));
    }

    /// Stages a SET. Refused, staging nothing, if the batch would outgrow the record limit.
    pub fn set(&mut self, id: &[u8], message: &[u8]) -> Result<()> {
        self.stage(RecordKind::Set, id, message)
    }

    /// Stages a tombstone if `id` is live (after the staged writes); `false` if it is not.
    pub fn delete(&mut self, id: &[u8]) -> Result<bool> {
        if !self.contains(id) {
            return Ok(false);
        }
        self.stage(RecordKind::Delete, id, &[])?;
        Ok(true)
    }

    /// Forgets every write staged so far: the transaction appends nothing.
    pub fn discard(&mut self) {
        self.writes.clear();
        self.latest.clear();
        self.bytes = 0;
    }

    fn stage(&mut self, kind: RecordKind, id: &[u8], message: &[u8]) -> Result<()> {
        let max = self.shared.config.max_record_bytes as usize;
        let bytes = self.bytes + record::framed_len(id, message);
        if bytes > max {
            return Err(StorageError::BatchTooLarge { size: bytes, max });
        }
        self.bytes = bytes;
        self.latest.insert(id.to_vec(), self.writes.len());
        self.writes.push((kind, id.to_vec(), message.to_vec()));
        Ok(())
    }
}

/// Runs `f` on a batch over `state`, then appends what it staged as one atomic batch.
pub(super) fn run<R>(
    state: &mut State,
    shared: &Shared,
    f: impl FnOnce(&mut Batch<'_>) -> R,
) -> Result<(R, Option<Offset>)> {
    let (result, writes) = {
        let mut batch = Batch::new(state, shared);
        let result = f(&mut batch);
        (result, batch.writes)
    };
    let writes: Vec<_> = writes.iter().map(|(kind, id, message)| (*kind, &id[..], &message[..])).collect();
    let last = state.append_batch(shared, &writes)?;
    Ok((result, last))
}

/// For a follower appending `records`: the framed length of the batch that starts at
/// `records[i]`, or `None` if `records[i]` continues a batch.
pub(super) fn bytes_of_batch_starting_at(records: &[RecordRef<'_>], i: usize) -> Option<usize> {
    if i > 0 && records[i - 1].continues {
        return None;
    }
    let end = records[i..].iter().position(|r| !r.continues).map_or(records.len(), |e| i + e + 1);
    Some(records[i..end].iter().map(RecordRef::framed_len).sum())
}

#[cfg(test)]
mod tests;
