//! Storage engine benchmarks: append by size and policy, group commit against a raw
//! `write`+`fdatasync` baseline, hot `get`, recovery time with the ID index's memory, and
//! one cleaning pass over a churned log.
//!
//! `cargo bench --bench storage`; `MSGLOG_BENCH_RECOVERY_RECORDS` sets the recovery log
//! size (default 1,000,000; the figures in docs/BENCHMARKS.md use 10,000,000).

use std::alloc::{GlobalAlloc, Layout, System};
use std::fs::File;
use std::hint::black_box;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use msglog::storage::{CleanOptions, Config, FsyncPolicy, Log};
use tempfile::TempDir;

/// Counts live heap bytes, to measure what the ID index costs per ID.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn key(i: u64) -> [u8; 16] {
    let mut k = *b"key:000000000000";
    let mut n = i;
    for b in k[4..].iter_mut().rev() {
        *b = b'0' + (n % 10) as u8;
        n /= 10;
    }
    k
}

fn open(dir: &TempDir, fsync: FsyncPolicy) -> Log {
    Log::open(dir.path(), Config { fsync, ..Config::default() }).expect("open log")
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append_never");
    group.measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    for size in [100usize, 1024] {
        let value = vec![b'v'; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &value, |b, value| {
            let dir = TempDir::new().unwrap();
            let log = open(&dir, FsyncPolicy::Never);
            let mut i = 0u64;
            b.iter(|| {
                i += 1;
                black_box(log.append(&key(i), value).unwrap())
            });
        });
    }
    group.finish();
}

const WRITERS: usize = 64;
const RECORD: usize = 128;

/// 64 threads, each appending a record and waiting until it is durable.
fn group_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("durable_128B");
    group.sample_size(10).measurement_time(Duration::from_secs(5)).throughput(Throughput::Elements(1));
    group.bench_function("log_always_64_writers", |b| {
        let dir = TempDir::new().unwrap();
        let log = Arc::new(open(&dir, FsyncPolicy::Always));
        let value = vec![b'v'; RECORD - 16 - 31];
        b.iter_custom(|iters| {
            let per_thread = iters.div_ceil(WRITERS as u64);
            let start = Arc::new(Barrier::new(WRITERS + 1));
            let threads: Vec<_> = (0..WRITERS as u64)
                .map(|t| {
                    let (log, start, value) = (log.clone(), start.clone(), value.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        for i in 0..per_thread {
                            let at = log.append(&key(t << 32 | i), &value).unwrap();
                            log.sync_through(at).unwrap();
                        }
                    })
                })
                .collect();
            start.wait();
            let began = Instant::now();
            threads.into_iter().for_each(|t| t.join().unwrap());
            began.elapsed().mul_f64(iters as f64 / (per_thread * WRITERS as u64) as f64)
        });
    });
    group.bench_function("raw_write_fdatasync_every_64", |b| {
        let dir = TempDir::new().unwrap();
        let mut file = File::create(dir.path().join("raw")).unwrap();
        let batch = vec![b'r'; RECORD * WRITERS];
        b.iter_custom(|iters| {
            let began = Instant::now();
            for _ in 0..iters.div_ceil(WRITERS as u64) {
                file.write_all(&batch).unwrap();
                file.sync_data().unwrap();
            }
            began.elapsed().mul_f64(iters as f64 / (iters.div_ceil(WRITERS as u64) * WRITERS as u64) as f64)
        });
    });
    group.finish();
}

fn get(c: &mut Criterion) {
    let mut group = c.benchmark_group("get_random_hot");
    group.throughput(Throughput::Elements(1)).measurement_time(Duration::from_secs(3));
    for ids in [100_000u64, 1_000_000] {
        let dir = TempDir::new().unwrap();
        let log = open(&dir, FsyncPolicy::Never);
        let value = vec![b'v'; 100];
        for i in 0..ids {
            log.append(&key(i), &value).unwrap();
        }
        log.sync().unwrap();
        group.bench_function(BenchmarkId::from_parameter(ids), |b| {
            let mut x = 0x9E37_79B9_7F4A_7C15u64;
            b.iter(|| {
                // xorshift: a cheap uniform pick, so the bench measures the lookup.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                black_box(log.get(&key(x % ids)).unwrap().unwrap())
            });
        });
    }
    group.finish();
}

fn recovery(c: &mut Criterion) {
    let records: u64 =
        std::env::var("MSGLOG_BENCH_RECOVERY_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let dir = TempDir::new().unwrap();
    {
        let log = open(&dir, FsyncPolicy::Never);
        let value = vec![b'v'; 100];
        for i in 0..records {
            log.append(&key(i), &value).unwrap();
        }
        log.close().unwrap();
    }
    let before = LIVE.load(Ordering::Relaxed);
    let log = open(&dir, FsyncPolicy::Never);
    let heap = LIVE.load(Ordering::Relaxed) - before;
    let stats = log.stats();
    eprintln!(
        "recovery log: {} records, {} bytes, {} segments; heap after open {} bytes = {:.1} bytes/ID \
         for 16-byte IDs (ID index {} bytes)",
        stats.records,
        stats.bytes,
        stats.segments,
        heap,
        heap as f64 / stats.ids as f64,
        log.id_index_bytes()
    );
    drop(log);
    let mut group = c.benchmark_group("recovery");
    group.sample_size(10).throughput(Throughput::Elements(records));
    group.bench_function(BenchmarkId::new("open", records), |b| {
        b.iter(|| black_box(open(&dir, FsyncPolicy::Never).stats().records));
    });
    group.finish();
}

/// One cleaning pass over 20,000 IDs overwritten 10 times (100-byte values, 4 MiB
/// segments): each iteration cleans a fresh copy of the same dirty log, so the pass reads
/// from the page cache and the figure is the cleaner's own cost (docs/BENCHMARKS.md,
/// "Log compaction", has the server-level figures).
fn clean(c: &mut Criterion) {
    let config = Config { fsync: FsyncPolicy::Never, segment_bytes: 4 << 20, ..Config::default() };
    let template = TempDir::new().unwrap();
    let bytes = {
        let log = Log::open(template.path(), config.clone()).expect("open log");
        let value = vec![b'v'; 100];
        for i in 0..200_000u64 {
            log.append(&key(i % 20_000), &value).unwrap();
        }
        let bytes = log.stats().bytes;
        log.close().unwrap();
        bytes
    };
    let mut group = c.benchmark_group("clean");
    group.sample_size(10).measurement_time(Duration::from_secs(8)).throughput(Throughput::Bytes(bytes));
    group.bench_function("20k_ids_x10", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let dir = TempDir::new().unwrap();
                copy_dir(template.path(), dir.path());
                let log = Log::open(dir.path(), config.clone()).expect("open log copy");
                let opts = CleanOptions {
                    upto: log.next_offset(),
                    tombstone_horizon: 0,
                    delete_retention: Duration::ZERO,
                    bytes_per_sec: None,
                };
                let began = Instant::now();
                let summary = log.clean(&opts).unwrap().expect("a pass over the sealed segments");
                spent += began.elapsed();
                black_box(summary);
            }
            spent
        });
    });
    group.finish();
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        match entry.file_type().unwrap().is_dir() {
            true => copy_dir(&entry.path(), &target),
            false => _ = std::fs::copy(entry.path(), target).unwrap(),
        }
    }
}

criterion_group!(benches, append, group_commit, get, recovery, clean);
criterion_main!(benches);
