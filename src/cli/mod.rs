//! The `msglog` command line: argv in, exit code out. One file per subcommand.

pub mod bench;
mod check;
mod client;
mod cluster;
mod config_file;
mod export;
mod import;
mod msg_files;
mod password;
mod serve;
mod tail;
mod tolerance;
mod units;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "msglog", version, about = "A durable message store", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a server.
    Serve(Box<serve::ServeArgs>),
    /// Send commands to a server: one from the arguments, a prompt on a terminal, or
    /// every line of piped input.
    Client(client::ClientArgs),
    /// Generate load against a running server and report throughput and latency.
    Bench(bench::BenchArgs),
    /// Write the latest message of every ID to a folder of <id>.msg files.
    Export(export::ExportArgs),
    /// Load a folder of <id>.msg files into the log.
    Import(import::ImportArgs),
    /// Verify every record of a data dir; print counts and a digest; optionally repair.
    Check(check::CheckArgs),
    /// Print a node's log records from an offset, and keep following new ones.
    Tail(tail::TailArgs),
    /// Inspect a cluster-mode deployment (`serve --cluster`).
    Cluster(cluster::ClusterArgs),
}

/// Runs the subcommand named on the command line. Errors are printed as one line.
pub fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(err) => {
            eprintln!("msglog: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    if matches!(cli.command, Command::Export(_) | Command::Import(_) | Command::Check(_)) {
        offline_logs();
    }
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Client(args) => client::run(args),
        Command::Export(args) => export::run(args),
        Command::Import(args) => import::run(args),
        Command::Check(args) => check::run(args),
        Command::Tail(args) => tail::run(args),
        Command::Cluster(args) => cluster::run(args),
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

/// The offline tools open logs as the server does, and opening one may change it: a torn
/// tail is cut, leftover segment files deleted, a manifest written for an older log. The
/// storage engine says so in warnings (and the manifest's changes at `info`), which these
/// tools print to stderr; a healthy log opens without a word (`RUST_LOG` may ask for more,
/// or less).
fn offline_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,msglog::storage::manifest=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .with_target(false)
        .init();
}

/// The command line, with `serve --config`'s file settings under the flags and environment.
fn parse() -> anyhow::Result<Cli> {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let command = Cli::command();
    let matches = command.clone().get_matches_from(argv.clone());
    let argv = config_file::with_file_settings(&command, &matches, argv)?;
    let matches = command.get_matches_from(argv);
    Cli::from_arg_matches(&matches).map_err(|err| err.exit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve_args(argv: &[&str]) -> Result<serve::ServeArgs, clap::Error> {
        let argv = ["msglog", "serve"].iter().chain(argv);
        match Cli::try_parse_from(argv)?.command {
            Command::Serve(args) => Ok(*args),
            _ => unreachable!("parsed as serve"),
        }
    }

    #[test]
    fn protected_mode_takes_a_value_on_the_command_line_and_in_the_config_file() {
        assert!(!serve_args(&["--protected-mode", "no"]).unwrap().protected_mode);
        assert!(serve_args(&["--protected-mode=yes"]).unwrap().protected_mode);
        assert!(serve_args(&[]).unwrap().protected_mode, "on by default");
        assert!(serve_args(&["--protected-mode"]).is_err(), "a value is required");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("msglog.toml");
        std::fs::write(&path, "protected-mode = \"no\"\n").unwrap();
        let argv: Vec<std::ffi::OsString> =
            ["msglog", "serve", "--config", path.to_str().unwrap()].iter().map(Into::into).collect();
        let command = Cli::command();
        let matches = command.clone().try_get_matches_from(argv.clone()).unwrap();
        let argv = config_file::with_file_settings(&command, &matches, argv).unwrap();
        let Command::Serve(args) = Cli::try_parse_from(argv).unwrap().command else { unreachable!() };
        assert!(!args.protected_mode);
    }
}
