//! `msglog bench`: a load generator for a running msglog (or Redis) server.
//!
//! One tokio task per client, each on its own TCP connection with up to `--pipeline`
//! requests in flight. Every reply is checked against its request; wrong replies are
//! counted and reported, never taken as successes. Latency runs from queueing a request to
//! parsing its reply, kept in one HDR histogram per client and merged at the end.
//!
//! - [`workload`]: the SET/GET mix, keys, values and the PRNG that picks them.
//! - [`codec`]: request encoding and incremental reply parsing, text and RESP2.
//! - [`client`]: one connection's send/verify loop.
//! - [`transport`]: its socket, plain or TLS.
//! - [`report`]: merged results, printed as a table or JSON.

mod client;
mod codec;
mod report;
mod transport;
mod workload;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::builder::RangedU64ValueParser;
use indicatif::{ProgressBar, ProgressStyle};

use client::{Budget, ClientStats, Conn, PreloadRequests, RandomRequests, RequestSource, Shared};
pub use codec::Protocol;
use report::Setup;
pub use report::{BenchReport, Latency};
pub use workload::Workload;
use workload::{MAX_KEYS, Rng, value_bytes};

/// Total requests when neither `--requests` nor `--duration` is given.
pub const DEFAULT_REQUESTS: u64 = 100_000;

/// Largest `--value-size`: 256 MiB, 256 times the server's default `--max-message-bytes`
/// and 16 times its default record limit, so values over any usual server limit can still
/// be sent and show up as errors. A server can be configured for messages up to nearly
/// 4 GiB, but the generator holds a value about four times over (the value, its encoded
/// SET, a client's write buffer, a GET reply being read), so above this one client alone
/// would need several GiB.
pub const MAX_VALUE_SIZE: usize = 256 << 20;

/// Longest `--duration`, 30 days: a soak test fits in it; anything longer is surely a
/// typo, and unbounded ones overflow the deadline.
const MAX_RUN_HOURS: u64 = 720;
const MAX_RUN_TIME: Duration = Duration::from_secs(MAX_RUN_HOURS * 3600);

/// The most the clients may buffer at once, by [`peak_buffered_bytes`]: past it a run
/// would exhaust the generator's memory rather than load the server.
const MAX_BUFFERED_BYTES: u128 = 2 << 30;

/// Bytes of a SET beyond its value, rounded up: RESP framing, the key, and its entry in
/// the in-flight queue.
const REQUEST_OVERHEAD: u128 = 64;

/// Flags of `msglog bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Server address (host:port).
    #[arg(long, default_value = "127.0.0.1:6666")]
    pub addr: String,
    /// Concurrent connections, one task each.
    #[arg(long, default_value_t = 50, value_parser = RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub clients: usize,
    /// Total requests over all clients [default: 100000 unless --duration is given].
    #[arg(long, conflicts_with = "duration", value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: Option<u64>,
    /// Send for this long instead of a request count, e.g. 10s, 500ms, 2m; at most 720h.
    #[arg(long, value_parser = parse_run_time)]
    pub duration: Option<Duration>,
    /// Bytes in each SET's value, at most 268435456 (256 MiB). Values over the server's
    /// --max-message-bytes are still sent, and their replies counted as errors.
    #[arg(long, default_value_t = 100,
          value_parser = RangedU64ValueParser::<usize>::new().range(0..=MAX_VALUE_SIZE as u64))]
    pub value_size: usize,
    /// Size of the key space; keys `key:000000000000` .. are picked uniformly at random.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=MAX_KEYS))]
    pub keys: u64,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 1, value_parser = RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub pipeline: usize,
    /// set, get, or mixed:<percentage of SETs>.
    #[arg(long, default_value = "set")]
    pub workload: Workload,
    /// Wire protocol.
    #[arg(long, value_enum, default_value_t = Protocol::Text)]
    pub protocol: Protocol,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// SET every key once before measuring, so GETs hit.
    #[arg(long)]
    pub preload: bool,
    /// The server's password (its --requirepass): each connection sends AUTH first.
    #[arg(long, env = "MSGLOG_PASSWORD", hide_env_values = true, value_parser = super::password::PasswordParser)]
    pub password: Option<crate::server::Password>,
    /// Speak TLS to a server started with --tls-cert; needs --cacert.
    #[arg(long)]
    pub tls: bool,
    /// The CA certificate (PEM) that signed the server's certificate, for --tls.
    #[arg(long, value_name = "PEM")]
    pub cacert: Option<std::path::PathBuf>,
}

/// Runs the preload (if asked) and the measured load, and returns the report.
pub async fn run(args: BenchArgs) -> anyhow::Result<BenchReport> {
    anyhow::ensure!(args.clients > 0, "--clients must be at least 1");
    anyhow::ensure!(args.pipeline > 0, "--pipeline must be at least 1");
    anyhow::ensure!((1..=MAX_KEYS).contains(&args.keys), "--keys must be in 1..={MAX_KEYS}");
    anyhow::ensure!(args.duration.is_none() || args.requests.is_none(), "give --requests or --duration, not both");
    anyhow::ensure!(args.value_size <= MAX_VALUE_SIZE, "--value-size must be at most {MAX_VALUE_SIZE}");
    anyhow::ensure!(args.duration.is_none_or(|d| d <= MAX_RUN_TIME), "--duration must be at most {MAX_RUN_HOURS}h");
    let tls = match (args.tls, &args.cacert) {
        (true, Some(ca)) => Some(crate::tls::ClientPortConnector::new(ca)?),
        (true, None) => anyhow::bail!("--tls needs --cacert <PEM>: the CA certificate that signed the server's"),
        (false, Some(_)) => anyhow::bail!("--cacert is for TLS: add --tls"),
        (false, None) => None,
    };
    let buffered = peak_buffered_bytes(&args);
    anyhow::ensure!(
        buffered <= MAX_BUFFERED_BYTES,
        "--clients {} × --pipeline {} requests of --value-size {} would buffer about {} MiB in \
         this generator, over its limit of {} MiB; lower one of them",
        args.clients,
        args.pipeline,
        args.value_size,
        buffered >> 20,
        MAX_BUFFERED_BYTES >> 20,
    );

    let value = value_bytes(args.value_size);
    let shared = Arc::new(Shared {
        protocol: args.protocol,
        encoder: codec::Encoder::new(args.protocol, &value),
        value,
        pipeline: args.pipeline,
        reply_limit: 2 * args.value_size + (1 << 20),
        progress: AtomicU64::new(0),
    });
    let mut conns = connect_all(&args.addr, args.clients, args.pipeline, tls).await?;
    if let Some(password) = &args.password {
        for conn in &mut conns {
            conn.authenticate(args.protocol, password.reveal())
                .await
                .map_err(|reply| anyhow::anyhow!("AUTH on {} failed: {reply}", args.addr))?;
        }
    }

    let clients = args.clients as u64;
    let mut preloaded = 0;
    if args.preload {
        let _bar = Progress::show(&shared, "preload", Goal::Requests(args.keys));
        let source = |i: u64| PreloadRequests { next: i, step: clients, end: args.keys };
        let (alive, stats) = run_phase(conns, &shared, source).await?;
        if let Some(failure) = stats.iter().find_map(|s| s.first_error.as_ref()) {
            let errors: u64 = stats.iter().map(|s| s.errors).sum();
            anyhow::bail!("preload failed with {errors} errors; first: {}", failure.1);
        }
        conns = alive;
        preloaded = args.keys;
    }

    shared.progress.store(0, Ordering::Relaxed);
    let start = Instant::now();
    let (budget, goal) = match args.duration {
        Some(duration) => (Budget::Until(start + duration), Goal::Duration(duration)),
        None => {
            let total = args.requests.unwrap_or(DEFAULT_REQUESTS);
            (Budget::Requests { issued: Arc::new(AtomicU64::new(0)), total }, Goal::Requests(total))
        }
    };
    let bar = Progress::show(&shared, "bench", goal);
    let mut seeds = Rng::new(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64);
    let source = |_| RandomRequests {
        workload: args.workload,
        keys: args.keys,
        rng: Rng::new(seeds.next_u64()),
        budget: budget.clone(),
    };
    let (_, stats) = run_phase(conns, &shared, source).await?;
    let elapsed = start.elapsed();
    drop(bar);

    let setup = Setup {
        addr: args.addr,
        protocol: args.protocol,
        workload: args.workload,
        clients: args.clients,
        pipeline: args.pipeline,
        value_size: args.value_size,
        keys: args.keys,
        preloaded,
    };
    Ok(BenchReport::new(setup, stats, elapsed))
}

/// `msglog bench`: runs the load on a fresh runtime and prints the report to stdout.
/// Exits with an error after printing if any request failed.
pub fn main(args: BenchArgs) -> anyhow::Result<()> {
    let json = args.json;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(run(args))?;
    match json {
        true => println!("{}", report.to_json()),
        false => print!("{report}"),
    }
    anyhow::ensure!(
        report.errors == 0,
        "{} errors; first: {}",
        report.errors,
        report.first_error.as_deref().unwrap_or("?")
    );
    Ok(())
}

/// Bytes the run holds at its peak, about: every request in flight, encoded in a write
/// buffer; one value-sized reply being read per client; the value and its encoded SET that
/// all clients share. In flight are `--clients` × `--pipeline` requests, or fewer when the
/// run (or its preload) has fewer requests than that in all.
fn peak_buffered_bytes(args: &BenchArgs) -> u128 {
    let slots = args.clients as u128 * args.pipeline as u128;
    let measured = match args.duration {
        Some(_) => slots,
        None => slots.min(args.requests.unwrap_or(DEFAULT_REQUESTS).into()),
    };
    let preload = if args.preload { slots.min(args.keys.into()) } else { 0 };
    let per_request = args.value_size as u128 + REQUEST_OVERHEAD;
    (measured.max(preload) + args.clients as u128 + 2) * per_request
}

/// Opens every connection before the clock starts, so connecting is not measured.
async fn connect_all(
    addr: &str,
    clients: usize,
    pipeline: usize,
    tls: Option<crate::tls::ClientPortConnector>,
) -> anyhow::Result<Vec<Conn>> {
    let target: SocketAddr = tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("cannot resolve {addr}"))?
        .next()
        .with_context(|| format!("{addr} resolves to no address"))?;
    let tls = tls.map(|connector| (connector, addr.to_string()));
    let connecting: Vec<_> = (0..clients).map(|_| tokio::spawn(Conn::connect(target, pipeline, tls.clone()))).collect();
    let mut conns = Vec::with_capacity(clients);
    for task in connecting {
        conns.push(task.await?.with_context(|| format!("cannot connect to {addr}"))?);
    }
    Ok(conns)
}

/// Runs one task per connection, each with the request source `source(client index)`, and
/// returns the connections still usable together with every client's stats.
async fn run_phase<S: RequestSource + Send + 'static>(
    conns: Vec<Conn>,
    shared: &Arc<Shared>,
    mut source: impl FnMut(u64) -> S,
) -> anyhow::Result<(Vec<Conn>, Vec<ClientStats>)> {
    let tasks: Vec<_> = (0..)
        .zip(conns)
        .map(|(i, conn)| {
            let (shared, mut source) = (Arc::clone(shared), source(i));
            tokio::spawn(async move {
                let mut stats = ClientStats::new();
                let conn = conn.drive(&mut source, &shared, &mut stats).await;
                (conn, stats)
            })
        })
        .collect();
    let (mut alive, mut all_stats) = (Vec::with_capacity(tasks.len()), Vec::with_capacity(tasks.len()));
    for task in tasks {
        let (conn, stats) = task.await.context("bench client panicked")?;
        alive.extend(conn);
        all_stats.push(stats);
    }
    Ok((alive, all_stats))
}

/// What a progress bar counts towards.
#[derive(Clone, Copy)]
enum Goal {
    Requests(u64),
    Duration(Duration),
}

/// A progress bar on stderr, refreshed from the clients' shared counter; only on a
/// terminal, so piped output and tests stay quiet. Cleared when dropped.
struct Progress {
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Progress {
    fn show(shared: &Arc<Shared>, label: &'static str, goal: Goal) -> Option<Progress> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let (len, template) = match goal {
            Goal::Requests(n) => (n, "{prefix:>7} [{wide_bar}] {human_pos}/{human_len} {per_sec:0} eta {eta}"),
            Goal::Duration(d) => (d.as_millis() as u64, "{prefix:>7} [{wide_bar}] {elapsed}, {msg}"),
        };
        let style = ProgressStyle::with_template(template).expect("the template is valid").progress_chars("=> ");
        let bar = ProgressBar::new(len).with_style(style).with_prefix(label);
        let (shared, ticking) = (Arc::clone(shared), bar.clone());
        let ticker = tokio::spawn(async move {
            let start = Instant::now();
            let mut interval = tokio::time::interval(Duration::from_millis(100));
            loop {
                interval.tick().await;
                let done = shared.progress.load(Ordering::Relaxed);
                match goal {
                    Goal::Requests(_) => ticking.set_position(done),
                    Goal::Duration(_) => {
                        ticking.set_position(start.elapsed().as_millis() as u64);
                        ticking.set_message(format!("{done} requests"));
                    }
                }
            }
        });
        Some(Progress { bar, ticker })
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}

/// A run time: a duration with a unit, above zero and at most [`MAX_RUN_TIME`].
fn parse_run_time(text: &str) -> Result<Duration, String> {
    match super::units::parse_duration(text)? {
        Duration::ZERO => Err(format!("bad duration '{text}': a run needs a time above zero")),
        d if d > MAX_RUN_TIME => Err(format!("bad duration '{text}': a run lasts at most {MAX_RUN_HOURS}h")),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_times_need_a_unit_and_a_nonzero_value() {
        assert_eq!(parse_run_time("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_run_time("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_run_time("720h"), Ok(MAX_RUN_TIME));
        for bad in ["", "0s", "ten", "5x", "-1s", "3", "721h", "18446744073709551615h"] {
            assert!(parse_run_time(bad).is_err(), "{bad:?}");
        }
    }

    fn args(flags: &str) -> BenchArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: BenchArgs,
        }
        clap::Parser::try_parse_from(["bench"].into_iter().chain(flags.split_whitespace()))
            .map(|c: Cli| c.args)
            .unwrap()
    }

    #[test]
    fn only_runs_that_would_exhaust_memory_buffer_too_much() {
        let fits = |flags| peak_buffered_bytes(&args(flags)) <= MAX_BUFFERED_BYTES;
        assert!(fits(""));
        assert!(fits("--clients 100000"));
        assert!(fits("--clients 16 --pipeline 16 --value-size 4065 --duration 10s"));
        assert!(fits("--clients 1 --value-size 268435456"));
        assert!(fits("--clients 50 --pipeline 1000000"), "100000 requests in all");
        assert!(!fits("--clients 50 --pipeline 1000000 --duration 10s"));
        assert!(!fits("--clients 50 --value-size 268435456"));
        assert!(!fits("--clients 1000 --pipeline 1000 --value-size 4096 --preload --keys 1000000 --requests 1"));
    }
}
