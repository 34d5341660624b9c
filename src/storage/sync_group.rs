//! Group commit across logs: the partition logs of one node share their fsyncs.
//!
//! Under `--fsync always` each log has its own group commit ([`commit`](super::commit)),
//! so a node holding several partitions ran one per partition: a thread woken for, and
//! running, its own `fdatasync` in every round, each with a small share of the writes.
//! Logs that join one [`SyncGroup`] share rounds instead. One caller (the round's leader)
//! writes out the buffer of every log that someone waits on, makes them durable at once
//! and wakes every waiter; the others sleep on the group's futex word, and what arrives
//! during a round goes into the next. With one log waiting, the round is that log's
//! `fdatasync`; with several, the file system decides how ([`FileSystem::sync_files`]:
//! one `syncfs` on the real one; every member is on one device).
//!
//! A failed round fails every log of the group, not only those it covered: a failed
//! `syncfs` does not say whose pages were lost. Each log's waiters hear it through that
//! log's own failure.
//!
//! [`FileSystem::sync_files`]: super::fs::FileSystem::sync_files

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use super::commit::futex;
use super::fs::FileSystem;
use super::log::Shared;
use super::{Offset, Result};

/// The shared commit of several logs; see the module docs.
pub struct SyncGroup {
    /// Opened with the group, on the device every member's files are on: `syncfs` is
    /// called on it, so it reports every write-back error on that file system since the
    /// group began (the kernel reports one to each open file once; a member's segment
    /// opened later would not hear of an earlier one).
    anchor: File,
    anchor_path: PathBuf,
    device: u64,
    /// The file system every member does its file operations through (the first sets it).
    fs: std::sync::OnceLock<Arc<dyn FileSystem>>,
    /// Whether a leader is running a round right now.
    syncing: AtomicBool,
    /// Bumped after every round; waiters sleep while it is unchanged.
    generation: AtomicU32,
    /// Logs someone waits on that no round has taken yet, each once (`Commit::queued`
    /// says whether it is here; both change under this lock).
    waiting: Mutex<Vec<Arc<Shared>>>,
    /// Every log that joined: a failed `syncfs` fails them all.
    members: Mutex<Vec<Weak<Shared>>>,
    rounds: AtomicU64,
    logs_synced: AtomicU64,
}

/// How well the logs of a group share their syncs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncGroupStats {
    /// Rounds that synced at least one log.
    pub rounds: u64,
    /// Logs those rounds synced, summed: `logs_synced / rounds` is the sharing.
    pub logs_synced: u64,
}

impl std::fmt::Debug for SyncGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncGroup").field("anchor", &self.anchor_path).field("stats", &self.stats()).finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl SyncGroup {
    /// A group for logs on the device that holds `dir` (their data directory).
    pub fn new(dir: &Path) -> std::io::Result<Arc<SyncGroup>> {
        use std::os::unix::fs::MetadataExt;
        let anchor = File::open(dir)?;
        let device = anchor.metadata()?.dev();
        Ok(Arc::new(SyncGroup {
            anchor,
            anchor_path: dir.to_path_buf(),
            device,
            fs: std::sync::OnceLock::new(),
            syncing: AtomicBool::new(false),
            generation: AtomicU32::new(0),
            waiting: Mutex::new(Vec::new()),
            members: Mutex::new(Vec::new()),
            rounds: AtomicU64::new(0),
            logs_synced: AtomicU64::new(0),
        }))
    }

    pub fn stats(&self) -> SyncGroupStats {
        SyncGroupStats {
            rounds: self.rounds.load(Ordering::Relaxed),
            logs_synced: self.logs_synced.load(Ordering::Relaxed),
        }
    }

    /// Whether a log on `device`, whose files go through `fs`, may join: the group's
    /// files are synced as one batch, by one file system.
    pub(super) fn admits(&self, device: u64, fs: &Arc<dyn FileSystem>) -> bool {
        self.device == device && Arc::ptr_eq(self.fs.get_or_init(|| Arc::clone(fs)), fs)
    }

    pub(super) fn joined(&self, shared: &Arc<Shared>) {
        lock(&self.members).push(Arc::downgrade(shared));
    }

    /// Blocks until every record of `shared`'s log up to `offset` is fsynced; records a
    /// truncation cut are not waited for, as in `Commit::sync_through`.
    pub(super) fn sync_through(&self, shared: &Arc<Shared>, offset: Offset) -> Result<()> {
        let durable = &shared.commit.durable;
        loop {
            if durable.load(Ordering::Acquire) > offset {
                return Ok(());
            }
            // A round that failed this log left the reason with the log.
            shared.read().failure_for(offset)?;
            self.enqueue(shared);
            if self.syncing.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                self.round();
                self.syncing.store(false, Ordering::Release);
                self.generation.fetch_add(1, Ordering::Release);
                futex::wake_all(&self.generation);
                if shared.read().next_offset <= offset {
                    shared.read().failure_for(offset)?;
                    return Ok(());
                }
                continue;
            }
            // Read the generation before re-checking, so a leader finishing in between
            // changes it and the wait below returns at once.
            let generation = self.generation.load(Ordering::Acquire);
            if durable.load(Ordering::Acquire) > offset {
                return Ok(());
            }
            if self.syncing.load(Ordering::Acquire) {
                futex::wait(&self.generation, generation);
            }
        }
    }

    pub(super) fn enqueue(&self, shared: &Arc<Shared>) {
        let mut waiting = lock(&self.waiting);
        if !shared.commit.queued.swap(true, Ordering::AcqRel) {
            waiting.push(Arc::clone(shared));
        }
    }

    /// Writes out and syncs every waiting log in one call.
    fn round(&self) {
        let logs = {
            let mut waiting = lock(&self.waiting);
            waiting.iter().for_each(|shared| shared.commit.queued.store(false, Ordering::Release));
            std::mem::take(&mut *waiting)
        };
        let mut prepared = Vec::with_capacity(logs.len());
        for shared in logs {
            // A log that cannot be written out has failed; its waiters read why.
            if let Ok(pending) = shared.prepare_sync() {
                prepared.push((shared, pending));
            }
        }
        if prepared.is_empty() {
            return;
        }
        self.rounds.fetch_add(1, Ordering::Relaxed);
        self.logs_synced.fetch_add(prepared.len() as u64, Ordering::Relaxed);
        let files: Vec<(&File, &Path)> = prepared.iter().map(|(_, p)| (p.file.as_ref(), p.path.as_path())).collect();
        let started = Instant::now();
        let synced = prepared[0].1.fs().sync_files(&self.anchor, &files);
        let took = started.elapsed();
        match synced {
            Ok(()) => {
                for (shared, pending) in &prepared {
                    // An error here failed the log (and was logged); its waiters read it.
                    if let Err(error) = shared.finish_sync(pending, took) {
                        tracing::debug!(%error, "a shared sync could not complete a log");
                    }
                }
            }
            Err(e) => self.fail_all(&format!(
                "syncfs of the file system holding {} (shared by the partition logs) failed: {e}",
                self.anchor_path.display()
            )),
        }
    }

    /// A failed `syncfs` does not say whose pages were lost: every member stops taking
    /// writes, as after its own failed fsync, and its waiters hear why.
    fn fail_all(&self, why: &str) {
        for member in lock(&self.members).iter().filter_map(Weak::upgrade) {
            member.write().fail(why.to_string());
        }
    }
}
#[cfg(test)]
impl SyncGroup {
    /// Logs waiting for a round.
    fn waiting(&self) -> usize {
        lock(&self.waiting).len()
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Condvar, Mutex};

    use super::*;
    use crate::storage::fs::{FileSystem, RealFs};
    use crate::storage::{Config, Log, StorageError};

    /// The real file system, except that `sync_files` can be held in flight and made to
    /// fail, and its calls are counted.
    #[derive(Debug, Default)]
    struct Gate {
        state: Mutex<GateState>,
        changed: Condvar,
    }

    #[derive(Debug, Default)]
    struct GateState {
        /// The next `sync_files` waits until this is cleared.
        hold: bool,
        /// A held call is waiting.
        holding: bool,
        /// How many files each `sync_files` call was given.
        calls: Vec<usize>,
        /// Calls from this index on fail.
        fail_from: Option<usize>,
    }

    impl Gate {
        fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
            self.state.lock().unwrap()
        }

        fn hold(&self) {
            self.lock().hold = true;
        }

        fn wait_until_holding(&self) {
            let _held = self.changed.wait_while(self.lock(), |s| !s.holding).unwrap();
        }

        fn release(&self) {
            let mut state = self.lock();
            state.hold = false;
            self.changed.notify_all();
        }
    }

    impl FileSystem for Gate {
        fn create_new(&self, path: &Path) -> io::Result<File> {
            RealFs.create_new(path)
        }
        fn create(&self, path: &Path) -> io::Result<File> {
            RealFs.create(path)
        }
        fn open(&self, path: &Path) -> io::Result<File> {
            RealFs.open(path)
        }
        fn write_at(&self, file: &File, path: &Path, bytes: &[u8], position: u64) -> io::Result<()> {
            RealFs.write_at(file, path, bytes, position)
        }
        fn set_len(&self, file: &File, path: &Path, len: u64) -> io::Result<()> {
            RealFs.set_len(file, path, len)
        }
        fn sync_data(&self, file: &File, path: &Path) -> io::Result<()> {
            RealFs.sync_data(file, path)
        }
        fn sync_files(&self, anchor: &File, files: &[(&File, &Path)]) -> io::Result<()> {
            let mut state = self.lock();
            let call = state.calls.len();
            state.calls.push(files.len());
            if state.hold {
                state.holding = true;
                self.changed.notify_all();
                state = self.changed.wait_while(state, |s| s.hold).unwrap();
                state.holding = false;
            }
            if state.fail_from.is_some_and(|from| call >= from) {
                return Err(io::Error::other("injected"));
            }
            drop(state);
            RealFs.sync_files(anchor, files)
        }
        fn sync_all(&self, file: &File, path: &Path) -> io::Result<()> {
            RealFs.sync_all(file, path)
        }
        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            RealFs.sync_dir(dir)
        }
        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            RealFs.rename(from, to)
        }
        fn remove(&self, path: &Path) -> io::Result<()> {
            RealFs.remove(path)
        }
    }

    /// `n` logs in one group on a [`Gate`], the group anchored in the first's directory.
    fn grouped(gate: &Arc<Gate>, n: usize) -> (Vec<tempfile::TempDir>, Vec<Arc<Log>>, Arc<SyncGroup>) {
        let dirs: Vec<_> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
        let group = SyncGroup::new(dirs[0].path()).unwrap();
        let logs: Vec<_> = dirs
            .iter()
            .map(|dir| {
                let fs: Arc<dyn FileSystem> = gate.clone();
                let log = Log::open_with(dir.path(), Config::default(), fs).unwrap();
                assert!(log.join_sync_group(&group).unwrap());
                Arc::new(log)
            })
            .collect();
        (dirs, logs, group)
    }

    fn sync_in_thread(log: &Arc<Log>, offset: Offset) -> std::thread::JoinHandle<Result<()>> {
        let log = Arc::clone(log);
        std::thread::spawn(move || log.sync_through(offset))
    }

    /// Holds a first round (log 0 alone) in its sync while a record of each log waits, and
    /// returns the three waiting threads once both logs are queued for the next round.
    fn queue_both_behind_a_held_round(
        gate: &Gate,
        logs: &[Arc<Log>],
        group: &SyncGroup,
    ) -> [std::thread::JoinHandle<Result<()>>; 3] {
        gate.hold();
        let first = sync_in_thread(&logs[0], logs[0].append(b"a", b"0").unwrap());
        gate.wait_until_holding();
        let second = sync_in_thread(&logs[0], logs[0].append(b"a", b"1").unwrap());
        let third = sync_in_thread(&logs[1], logs[1].append(b"b", b"0").unwrap());
        // Both waiters queue their logs and sleep; bounded, as a test must be.
        for _ in 0..10_000_000 {
            if group.waiting() == 2 {
                break;
            }
            std::thread::yield_now();
        }
        assert_eq!(group.waiting(), 2, "both logs wait for the next round");
        [first, second, third]
    }

    #[test]
    fn a_round_syncs_every_log_that_waits_in_one_call() {
        let gate = Arc::new(Gate::default());
        let (_dirs, logs, group) = grouped(&gate, 2);
        let waiters = queue_both_behind_a_held_round(&gate, &logs, &group);
        gate.release();
        for waiter in waiters {
            waiter.join().unwrap().unwrap();
        }
        assert_eq!(gate.lock().calls, [1, 2], "the second round synced both logs in one call");
        assert_eq!(group.stats(), SyncGroupStats { rounds: 2, logs_synced: 3 });
        assert_eq!(logs[0].durable_offset(), 2);
        assert_eq!(logs[1].durable_offset(), 1);
    }

    #[test]
    fn a_failed_round_fails_every_log_of_the_group() {
        let gate = Arc::new(Gate::default());
        // The third log waits for nothing: a failed syncfs may have lost its pages too.
        let (_dirs, logs, group) = grouped(&gate, 3);
        let [first, second, third] = queue_both_behind_a_held_round(&gate, &logs, &group);
        gate.lock().fail_from = Some(1);
        gate.release();
        first.join().unwrap().unwrap();
        for waiter in [second, third] {
            match waiter.join().unwrap() {
                Err(StorageError::Failure(why)) => assert!(why.contains("syncfs") && why.contains("injected"), "{why}"),
                other => panic!("a waiter of the failed round got {other:?}"),
            }
        }
        for log in &logs {
            assert!(matches!(log.append(b"c", b"0"), Err(StorageError::Failed(_))), "every log refuses writes");
        }
        assert_eq!(logs[0].durable_offset(), 1, "what the first round synced stays durable");
        assert_eq!(logs[1].durable_offset(), 0);
    }

    #[test]
    fn a_log_on_another_device_or_file_system_stays_alone() {
        let dir = tempfile::tempdir().unwrap();
        let group = SyncGroup::new(dir.path()).unwrap();
        let (gate, other): (Arc<dyn FileSystem>, Arc<dyn FileSystem>) = (Arc::new(Gate::default()), Arc::new(RealFs));
        assert!(group.admits(group.device, &gate));
        assert!(!group.admits(group.device + 1, &gate), "another device");
        assert!(!group.admits(group.device, &other), "another file system object");
        let log = Log::open_with(dir.path(), Config::default(), other).unwrap();
        assert!(!log.join_sync_group(&group).unwrap());
        let another = tempfile::tempdir().unwrap();
        let log = Log::open_with(another.path(), Config::default(), gate).unwrap();
        assert!(log.join_sync_group(&group).unwrap());
        assert!(!log.join_sync_group(&SyncGroup::new(dir.path()).unwrap()).unwrap(), "a log joins one group");
    }
}
