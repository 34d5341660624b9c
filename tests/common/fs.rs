//! Test file systems plugged into the storage engine through `Log::open_with`:
//! - [`FaultFs`] fails the Nth write, fsync or file open with a chosen error, holds an
//!   fsync in flight, and counts fsyncs;
//! - [`PowerCutFs`] keeps a model of what is durable and, on a simulated power cut,
//!   rewrites the files on disk to only what survived.
//!
//! Both pass every operation on to the real files (the engine reads them through mmap).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Mutex, MutexGuard, PoisonError};

use msglog::storage::{FileSystem, RealFs};

// ---------------------------------------------------------------------------------------
// Fault injection
// ---------------------------------------------------------------------------------------

/// Counters of operations left before a failure (negative: never), and the error to fail
/// with (an OS error number; 0 for a plain "injected … failure").
#[derive(Debug)]
pub struct FaultFs {
    writes: Countdown,
    syncs: Countdown,
    opens: Countdown,
    /// The test's ends of a held fsync: the next fsync reports it started, then waits.
    held_sync: Mutex<Option<(Sender<()>, Receiver<()>)>>,
    /// Data fsyncs done (`sync_data`), for tests that watch background syncs.
    pub data_syncs: AtomicU64,
    /// The name of the thread that ran the last data fsync.
    pub last_syncer: Mutex<Option<String>>,
}

#[derive(Debug)]
struct Countdown {
    left: AtomicI64,
    errno: AtomicI64,
}

impl Countdown {
    fn never() -> Countdown {
        Countdown { left: AtomicI64::new(-1), errno: AtomicI64::new(0) }
    }
    fn arm(&self, after: i64, errno: i32) {
        self.errno.store(errno as i64, Ordering::SeqCst);
        self.left.store(after, Ordering::SeqCst);
    }
    fn tick(&self, what: &str) -> io::Result<()> {
        let step = |n: i64| if n >= 0 { Some(n - 1) } else { None };
        match self.left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, step) {
            Ok(0) => match self.errno.load(Ordering::SeqCst) {
                0 => Err(io::Error::other(format!("injected {what} failure"))),
                errno => Err(io::Error::from_raw_os_error(errno as i32)),
            },
            _ => Ok(()),
        }
    }
}

/// The test's side of a held fsync.
#[derive(Debug)]
pub struct HeldSync {
    /// Receives once the fsync has started (its buffer is written; the fsync waits).
    pub started: Receiver<()>,
    /// Send (or drop) to let the fsync finish.
    pub release: Sender<()>,
}

impl Default for FaultFs {
    fn default() -> Self {
        FaultFs {
            writes: Countdown::never(),
            syncs: Countdown::never(),
            opens: Countdown::never(),
            held_sync: Mutex::new(None),
            data_syncs: AtomicU64::new(0),
            last_syncer: Mutex::new(None),
        }
    }
}

impl FaultFs {
    /// The write after `n` more successful writes fails, half of it landing (as on a
    /// full disk).
    pub fn fail_write_after(&self, n: i64) {
        self.writes.arm(n, 0);
    }
    /// Like `fail_write_after`, failing with this OS error (e.g. `libc::ENOSPC`).
    pub fn fail_write_after_with(&self, n: i64, errno: i32) {
        self.writes.arm(n, errno);
    }
    /// The data fsync (`sync_data`: group commit, sealing, recovery) after `n` more
    /// successful ones fails. Creating files (`sync_all`) is left alone, so a log can
    /// still open.
    pub fn fail_sync_after(&self, n: i64) {
        self.syncs.arm(n, 0);
    }
    /// The file open or create after `n` more successful ones fails with this OS error.
    pub fn fail_open_after(&self, n: i64, errno: i32) {
        self.opens.arm(n, errno);
    }
    /// Holds the next fsync in flight, so a test can act while it is.
    pub fn hold_next_sync(&self) -> HeldSync {
        let (started_tx, started) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        *self.held_sync.lock().unwrap_or_else(PoisonError::into_inner) = Some((started_tx, release_rx));
        HeldSync { started, release }
    }
    fn check_sync(&self) -> io::Result<()> {
        let held = self.held_sync.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some((started, release)) = held {
            let _ = started.send(());
            // A dropped sender releases too.
            let _ = release.recv();
        }
        self.syncs.tick("fsync")
    }
}

impl FileSystem for FaultFs {
    fn create_new(&self, path: &Path) -> io::Result<File> {
        self.opens.tick("open")?;
        RealFs.create_new(path)
    }
    fn create(&self, path: &Path) -> io::Result<File> {
        self.opens.tick("open")?;
        RealFs.create(path)
    }
    fn open(&self, path: &Path) -> io::Result<File> {
        self.opens.tick("open")?;
        RealFs.open(path)
    }
    fn write_at(&self, file: &File, path: &Path, bytes: &[u8], position: u64) -> io::Result<()> {
        if let Err(e) = self.writes.tick("write") {
            RealFs.write_at(file, path, &bytes[..bytes.len() / 2], position)?;
            return Err(e);
        }
        RealFs.write_at(file, path, bytes, position)
    }
    fn set_len(&self, file: &File, path: &Path, len: u64) -> io::Result<()> {
        RealFs.set_len(file, path, len)
    }
    fn sync_data(&self, file: &File, path: &Path) -> io::Result<()> {
        let thread = std::thread::current().name().map(str::to_string);
        *self.last_syncer.lock().unwrap_or_else(PoisonError::into_inner) = thread;
        self.check_sync()?;
        self.data_syncs.fetch_add(1, Ordering::SeqCst);
        RealFs.sync_data(file, path)
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

// ---------------------------------------------------------------------------------------
// Power cuts
// ---------------------------------------------------------------------------------------

/// A file system that remembers what an fsync made durable. Until the cut, every
/// operation also happens on the real files (minus the fsyncs themselves, which the model
/// stands for). A power cut (after a chosen number of operations, or `cut_power`) makes
/// every later operation fail with EIO, as for a dead process; `restore` then rewrites
/// the files to what survived:
/// - a file's contents as of its last fsync, plus some of the writes since, chosen by a
///   seeded random number generator: either the first k writes with the k-th torn at a
///   random byte, or a random subset of them, each landing as a random subset of its
///   32-byte blocks (pages written back out of order). A write of at most 8 bytes (the
///   header's durable length) is never torn, as a sector write is atomic on real disks;
/// - a directory's entries (created, renamed, removed names) as of its last fsync.
#[derive(Debug)]
pub struct PowerCutFs {
    model: Mutex<Model>,
}

#[derive(Debug)]
struct Model {
    rng: u64,
    /// Operations left before the power goes; `None`: only `cut_power` cuts it.
    ops_left: Option<u64>,
    dead: bool,
    next_id: u64,
    names: HashMap<PathBuf, u64>,
    durable_names: HashMap<PathBuf, u64>,
    files: HashMap<u64, Contents>,
}

#[derive(Debug, Default)]
struct Contents {
    durable: Vec<u8>,
    pending: Vec<Change>,
}

#[derive(Debug, Clone)]
enum Change {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

fn apply(bytes: &mut Vec<u8>, change: &Change) {
    match change {
        Change::Write(at, data) => {
            let end = *at as usize + data.len();
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            bytes[*at as usize..end].copy_from_slice(data);
        }
        Change::SetLen(len) => bytes.resize(*len as usize, 0),
    }
}

/// Unit of out-of-order writeback: smaller than a page, so the tiny segments of a test
/// see it (any page-sized behaviour is a special case).
const BLOCK: usize = 32;

fn dead() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

impl Model {
    fn next_random(&mut self) -> u64 {
        // xorshift64*: deterministic per seed, good enough to pick cut points.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_random() % n }
    }
    /// Counts one operation; fails it (and all later ones) once the power is out.
    fn step(&mut self) -> io::Result<()> {
        if self.dead {
            return Err(dead());
        }
        if let Some(left) = self.ops_left.as_mut() {
            if *left == 0 {
                self.dead = true;
                return Err(dead());
            }
            *left -= 1;
        }
        Ok(())
    }
    fn new_file(&mut self, path: &Path, contents: Contents) -> u64 {
        self.next_id += 1;
        self.files.insert(self.next_id, contents);
        self.names.insert(path.to_path_buf(), self.next_id);
        self.next_id
    }
    /// The model's file behind `path`; a file the model has not seen yet existed before
    /// it started, so it is taken as durable as it is.
    fn file(&mut self, path: &Path) -> io::Result<&mut Contents> {
        if !self.names.contains_key(path) {
            let durable = std::fs::read(path)?;
            let id = self.new_file(path, Contents { durable, pending: Vec::new() });
            self.durable_names.insert(path.to_path_buf(), id);
        }
        let id = self.names[path];
        Ok(self.files.get_mut(&id).expect("named files exist"))
    }
    /// What survives of a file: its durable bytes plus some of its pending changes.
    fn survivor(&mut self, id: u64) -> Vec<u8> {
        let Contents { durable, pending } = self.files.remove(&id).unwrap_or_default();
        let mut bytes = durable;
        let out_of_order = self.below(2) == 0;
        let kept = self.below(pending.len() as u64 + 1) as usize;
        for (i, change) in pending.iter().enumerate() {
            let (keep, may_tear) = match out_of_order {
                true => (self.below(2) == 0, self.below(4) == 0),
                false => (i <= kept, i == kept),
            };
            if !keep {
                continue;
            }
            match change {
                // Written back out of order, a write's blocks land independently.
                Change::Write(at, data) if out_of_order && data.len() > 8 => {
                    let mut from = 0;
                    while from < data.len() {
                        let to = ((*at as usize + from) / BLOCK + 1) * BLOCK - *at as usize;
                        let to = to.min(data.len());
                        if self.below(2) == 0 {
                            apply(&mut bytes, &Change::Write(*at + from as u64, data[from..to].to_vec()));
                        }
                        from = to;
                    }
                }
                Change::Write(at, data) if may_tear && data.len() > 8 => {
                    let torn = self.below(data.len() as u64) as usize;
                    apply(&mut bytes, &Change::Write(*at, data[..torn].to_vec()));
                }
                change => apply(&mut bytes, change),
            }
        }
        bytes
    }
}

impl PowerCutFs {
    /// A file system whose power goes after `ops` more operations (`None`: only when
    /// `cut_power` is called), with `seed` choosing what survives.
    pub fn new(seed: u64, ops: Option<u64>) -> PowerCutFs {
        let model = Model {
            rng: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            ops_left: ops,
            dead: false,
            next_id: 0,
            names: HashMap::new(),
            durable_names: HashMap::new(),
            files: HashMap::new(),
        };
        PowerCutFs { model: Mutex::new(model) }
    }

    fn model(&self) -> MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn cut_power(&self) {
        self.model().dead = true;
    }

    pub fn is_dead(&self) -> bool {
        self.model().dead
    }

    /// After the cut (and after the log using this file system is dropped): rewrites
    /// every file the model knows to what survived. Files it never saw are left alone.
    pub fn restore(&self) {
        let mut m = self.model();
        m.dead = true;
        let names: Vec<PathBuf> = m.names.keys().chain(m.durable_names.keys()).cloned().collect();
        for name in names {
            match std::fs::remove_file(&name) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => panic!("removing {}: {e}", name.display()),
                _ => {}
            }
        }
        let mut survivors: Vec<(PathBuf, u64)> = m.durable_names.iter().map(|(p, &id)| (p.clone(), id)).collect();
        survivors.sort();
        for (name, id) in survivors {
            let bytes = m.survivor(id);
            std::fs::write(&name, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", name.display()));
        }
    }
}

impl FileSystem for PowerCutFs {
    fn create_new(&self, path: &Path) -> io::Result<File> {
        let mut m = self.model();
        m.step()?;
        let file = RealFs.create_new(path)?;
        m.new_file(path, Contents::default());
        Ok(file)
    }
    fn create(&self, path: &Path) -> io::Result<File> {
        let mut m = self.model();
        m.step()?;
        let file = RealFs.create(path)?;
        match m.names.get(path) {
            Some(&id) => m.files.get_mut(&id).expect("named files exist").pending.push(Change::SetLen(0)),
            None => _ = m.new_file(path, Contents::default()),
        }
        Ok(file)
    }
    fn open(&self, path: &Path) -> io::Result<File> {
        let mut m = self.model();
        m.step()?;
        let file = RealFs.open(path)?;
        m.file(path)?;
        Ok(file)
    }
    fn write_at(&self, file: &File, path: &Path, bytes: &[u8], position: u64) -> io::Result<()> {
        let mut m = self.model();
        m.step()?;
        RealFs.write_at(file, path, bytes, position)?;
        m.file(path)?.pending.push(Change::Write(position, bytes.to_vec()));
        Ok(())
    }
    fn set_len(&self, file: &File, path: &Path, len: u64) -> io::Result<()> {
        let mut m = self.model();
        m.step()?;
        RealFs.set_len(file, path, len)?;
        m.file(path)?.pending.push(Change::SetLen(len));
        Ok(())
    }
    fn sync_data(&self, _: &File, path: &Path) -> io::Result<()> {
        let mut m = self.model();
        m.step()?;
        let contents = m.file(path)?;
        for change in std::mem::take(&mut contents.pending) {
            apply(&mut contents.durable, &change);
        }
        Ok(())
    }
    fn sync_all(&self, file: &File, path: &Path) -> io::Result<()> {
        self.sync_data(file, path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut m = self.model();
        m.step()?;
        let in_dir = |p: &PathBuf| p.parent() == Some(dir);
        m.durable_names.retain(|p, _| !in_dir(p));
        let current: Vec<(PathBuf, u64)> =
            m.names.iter().filter(|(p, _)| in_dir(p)).map(|(p, &id)| (p.clone(), id)).collect();
        m.durable_names.extend(current);
        Ok(())
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut m = self.model();
        m.step()?;
        m.file(from)?;
        RealFs.rename(from, to)?;
        let id = m.names.remove(from).expect("known after file()");
        m.names.insert(to.to_path_buf(), id);
        Ok(())
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut m = self.model();
        m.step()?;
        RealFs.remove(path)?;
        m.names.remove(path);
        Ok(())
    }
}
