//! The background cleaner: a thread that wakes periodically, deletes segments past
//! retention (`--retention-bytes`, `--retention-age`) and cleans the log once enough of it
//! is dirty (`msglog serve --cleanup compact`).

use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::cleaner::CleanOptions;
use super::log::now_ms;
use super::retention::Retention;
use super::rewrite::Pace;
use super::{Log, Offset};

/// How the background cleaner runs.
#[derive(Debug, Clone, PartialEq)]
pub struct CleanerSettings {
    /// Clean once dirty bytes reach this share of the cleanable ones (`--min-cleanable-ratio`).
    pub min_cleanable_ratio: f64,
    /// How long tombstones are kept (`--delete-retention`).
    pub delete_retention: Duration,
    /// Read plus write rate limit (`--cleaner-mb-per-sec`); `None`: unlimited.
    pub bytes_per_sec: Option<u64>,
    /// How often the cleaner looks at the dirty ratio and retention.
    pub check_every: Duration,
    /// Whether to compact (`--cleanup compact`); off, the thread only applies retention.
    pub compact: bool,
    /// Whole old segments to delete; off by default.
    pub retention: Retention,
}

impl Default for CleanerSettings {
    fn default() -> Self {
        CleanerSettings {
            min_cleanable_ratio: 0.5,
            delete_retention: Duration::from_secs(24 * 3600),
            bytes_per_sec: None,
            check_every: Duration::from_secs(1),
            compact: true,
            retention: Retention::default(),
        }
    }
}

/// Where one check of the background cleaner may act, as the node's role decides
/// (`docs/FORMAT.md`, "Compaction" and "Retention").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanPoints {
    /// Only records below this decide what a pass drops, and only segments wholly below it
    /// are cleaned or deleted (0: nothing is).
    pub upto: Offset,
    /// A tombstone is dropped only below this.
    pub tombstone_horizon: Offset,
    /// Whether this node's own retention policy applies: only where it leads. A follower
    /// deletes what its leader's retention deleted instead, as the fetch stream says.
    pub own_retention: bool,
}

/// The running background cleaner. Dropping it (or [`stop`](Cleaner::stop)) stops the
/// thread promptly, abandoning a pass under way, and waits for it.
pub struct Cleaner {
    signal: Arc<Signal>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Signal {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl Signal {
    /// Waits up to `timeout`; true once stopped.
    fn wait(&self, timeout: Duration) -> bool {
        let stopped = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        let (stopped, _) = self.wake.wait_timeout_while(stopped, timeout, |s| !*s).unwrap_or_else(|e| e.into_inner());
        *stopped
    }

    fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.wake.notify_all();
    }
}

impl Cleaner {
    /// Starts cleaning `log` in the background. `points` gives each check where it may
    /// act; an `upto` of 0 cleans nothing. The thread holds the log only during a pass, so
    /// the log's owner can still take it back once this is stopped.
    pub fn start(
        log: Arc<Log>,
        settings: CleanerSettings,
        points: impl Fn(&Log) -> CleanPoints + Send + 'static,
    ) -> std::io::Result<Cleaner> {
        let signal = Arc::new(Signal::default());
        let weak = Arc::downgrade(&log);
        drop(log);
        let thread = std::thread::Builder::new().name("msglog-cleaner".to_string()).spawn({
            let signal = Arc::clone(&signal);
            move || run(weak, settings, points, signal)
        })?;
        Ok(Cleaner { signal, thread: Some(thread) })
    }

    pub fn stop(mut self) {
        self.join();
    }

    fn join(&mut self) {
        self.signal.stop();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the cleaner thread panicked");
        }
    }
}

impl Drop for Cleaner {
    fn drop(&mut self) {
        self.join();
    }
}

/// How many times per `check_every` the cleaner looks while the log is busy.
const BUSY_LOOKS_PER_CHECK: u32 = 10;

fn run(log: Weak<Log>, settings: CleanerSettings, points: impl Fn(&Log) -> CleanPoints, signal: Arc<Signal>) {
    let mut wait = settings.check_every;
    // When the last pass that swapped something in ended.
    let mut last_pass: Option<Instant> = None;
    while !signal.wait(wait) {
        // A log that needed a pass within the last interval is being written fast: at 50
        // MB/s, waiting a whole second lets three segments of dirty log pile up before the
        // next pass, all on disk beside the clean part. Looking more often meanwhile starts
        // each pass once a segment or so is dirty (the ratio rule still decides).
        let busy = last_pass.is_some_and(|at| at.elapsed() < settings.check_every);
        wait = match busy {
            true => settings.check_every / BUSY_LOOKS_PER_CHECK,
            false => settings.check_every,
        };
        let Some(log) = log.upgrade() else { return };
        let CleanPoints { upto, tombstone_horizon, own_retention } = points(&log);
        if upto == 0 {
            continue;
        }
        // First, so the cleaner does not rewrite segments about to be deleted.
        if own_retention && let Err(e) = log.apply_retention(&settings.retention, upto, now_ms()) {
            tracing::warn!(error = %e, "deleting segments past retention failed; retrying at the next check");
        }
        // Nothing dirty means nothing new to drop, whatever the minimum ratio.
        let ratio = log.dirty_ratio(upto);
        if !settings.compact || ratio == 0.0 || ratio < settings.min_cleanable_ratio {
            continue;
        }
        let opts = CleanOptions {
            upto,
            tombstone_horizon: recorded_horizon(&log, tombstone_horizon, &points),
            delete_retention: settings.delete_retention,
            bytes_per_sec: settings.bytes_per_sec,
        };
        let mut pace =
            Stoppable { signal: &signal, bytes_per_sec: settings.bytes_per_sec, started: Instant::now(), bytes: 0 };
        match log.clean_paced(&opts, &mut pace) {
            // A busy log seals segments while a pass runs: looking again at once, rather
            // than a whole interval later, keeps what piles up meanwhile (and the disk's
            // high-water mark) down. The ratio rule above ends the run of passes.
            Ok(Some(_)) => {
                wait = Duration::ZERO;
                last_pass = Some(Instant::now());
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "log cleaning failed; retrying at the next check"),
        }
    }
}

/// The tombstone horizon a pass about to run may use: `horizon` is recorded in the log's
/// `HORIZON` first (only here, so a look that runs no pass leaves the file as it is), then
/// the points are asked for again and the lower horizon wins. Whoever the points wait for
/// (a replica that registers meanwhile) either holds the second answer down or, arriving
/// after it, finds the recorded horizon and is told it missed deletions. 0 when recording
/// fails: the pass keeps every tombstone.
fn recorded_horizon(log: &Log, horizon: Offset, points: &impl Fn(&Log) -> CleanPoints) -> Offset {
    match log.let_tombstones_drop_below(horizon) {
        Ok(horizon) => horizon.min(points(log).tombstone_horizon),
        Err(err) => {
            tracing::warn!(%err, "recording the tombstone horizon failed; tombstones are kept until it succeeds");
            0
        }
    }
}

/// Paces a background pass, and ends it when the cleaner stops.
struct Stoppable<'a> {
    signal: &'a Signal,
    bytes_per_sec: Option<u64>,
    started: Instant,
    bytes: u64,
}

impl Pace for Stoppable<'_> {
    fn pace(&mut self, bytes: u64) -> bool {
        self.bytes += bytes;
        let wait = match self.bytes_per_sec {
            Some(rate) => Duration::from_secs_f64(self.bytes as f64 / rate.max(1) as f64)
                .checked_sub(self.started.elapsed())
                .unwrap_or_default(),
            None => Duration::ZERO,
        };
        !self.signal.wait(wait)
    }
}

/// No pacing: `Log::clean` called directly runs flat out unless asked not to.
pub(super) struct Unpaced;

impl Pace for Unpaced {
    fn pace(&mut self, _: u64) -> bool {
        true
    }
}

/// Paces to a byte rate by sleeping.
pub(super) struct RateLimit {
    pub bytes_per_sec: u64,
    pub started: Instant,
    pub bytes: u64,
}

impl Pace for RateLimit {
    fn pace(&mut self, bytes: u64) -> bool {
        self.bytes += bytes;
        let due = Duration::from_secs_f64(self.bytes as f64 / self.bytes_per_sec.max(1) as f64);
        if let Some(wait) = due.checked_sub(self.started.elapsed()) {
            std::thread::sleep(wait);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::storage::Config;

    /// Bounds any wait: it only turns a hang into a failure.
    const DEADLINE: Duration = Duration::from_secs(60);

    /// A cleaner on `log` that may clean everything and drop every tombstone, and a
    /// channel that hears of each look (each time it asks for the points).
    fn start_eager(log: &Arc<Log>) -> (Cleaner, mpsc::Receiver<()>) {
        let settings = CleanerSettings {
            check_every: Duration::from_millis(1),
            delete_retention: Duration::ZERO,
            ..CleanerSettings::default()
        };
        let (looked, looks) = mpsc::channel();
        let points = move |log: &Log| {
            let _ = looked.send(());
            CleanPoints { upto: log.next_offset(), tombstone_horizon: log.next_offset(), own_retention: false }
        };
        (Cleaner::start(Arc::clone(log), settings, points).unwrap(), looks)
    }

    #[test]
    fn looks_that_run_no_pass_leave_the_horizon_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path(), Config::default()).unwrap());
        // One segment, still the active one: nothing to clean.
        log.append(b"victim", b"old").unwrap();
        log.delete(b"victim").unwrap();
        let (cleaner, looks) = start_eager(&log);
        for _ in 0..3 {
            looks.recv_timeout(DEADLINE).expect("the cleaner to look");
        }
        cleaner.stop();
        assert_eq!(log.cleaner_stats().runs, 0, "no pass ran");
        assert_eq!(log.tombstones_dropped_below().unwrap(), 0, "so no horizon was recorded");
        assert!(!dir.path().join("log/HORIZON").exists());
    }

    #[test]
    fn a_pass_records_its_horizon_before_it_drops_tombstones() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config { segment_bytes: 512, max_record_bytes: 400, ..Config::default() };
        let log = Arc::new(Log::open(dir.path(), config).unwrap());
        log.append(b"victim", b"old").unwrap();
        log.delete(b"victim").unwrap();
        // Sealed segments of superseded records: a pass has work, the tombstone among it.
        for n in 0..40 {
            log.append(format!("id-{}", n % 4).as_bytes(), "x".repeat(40).as_bytes()).unwrap();
        }
        let end = log.next_offset();
        let (cleaner, looks) = start_eager(&log);
        for _ in 0..1000 {
            if log.cleaner_stats().runs > 0 {
                break;
            }
            looks.recv_timeout(DEADLINE).expect("the cleaner to look");
        }
        cleaner.stop();
        assert!(log.cleaner_stats().runs > 0, "a pass ran");
        assert_eq!(log.tombstones_dropped_below().unwrap(), end, "the horizon it was given is recorded");
        assert_eq!(log.get(b"victim").unwrap(), None);
    }
}
