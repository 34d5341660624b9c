//! The `msglog` command line: argv in, exit code out. One file per subcommand.

pub mod bench;
mod client;
mod serve;
mod units;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "msglog", version, about = "A durable message store", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a server.
    Serve(serve::ServeArgs),
    /// Send commands to a server: one from the arguments, a prompt on a terminal, or
    /// every line of piped input.
    Client(client::ClientArgs),
    /// Generate load against a running server and report throughput and latency.
    Bench(bench::BenchArgs),
    // Further subcommands (tail, export, import, check) go here, each in its own file
    // under src/cli/.
}

/// Runs the subcommand named on the command line. Errors are printed as one line.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Client(args) => client::run(args),
        Command::Bench(args) => bench::main(args).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("msglog: {err:#}");
            ExitCode::FAILURE
        }
    }
}
