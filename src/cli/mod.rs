//! Command-line entry points of the `msglog` binary.
//!
//! Temporary wiring from the `bench` branch: only `msglog bench` exists here. The real
//! subcommand enum comes with the server branch and replaces this file on merge; it only
//! needs a `Bench(bench::BenchArgs)` variant that calls [`bench::main`].

pub mod bench;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "msglog", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate load against a running server and report throughput and latency.
    Bench(bench::BenchArgs),
}

pub fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Bench(args) => bench::main(args),
    }
}
