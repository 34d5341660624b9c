//! `msglog serve --config msglog.toml`: settings from a file, below flags and environment.
//!
//! clap has no file layer, so the file's settings become extra flags: the command line is
//! parsed once to learn which settings the user gave (as flags or MSGLOG_* variables, as
//! `ArgMatches::value_source` tells), and parsed again with `--key value` appended for every
//! file key the user did not give. Every value then goes through the same parser and the
//! same error messages as its flag, and precedence is flag > environment > file > default.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{Context, bail};
use clap::ArgMatches;
use clap::parser::ValueSource;

/// The subcommand that reads a config file, and the flag naming it.
const SUBCOMMAND: &str = "serve";
const CONFIG: &str = "config";

/// `argv` with the settings of `serve`'s config file appended as flags, or unchanged when
/// no file is named. `command` is the whole CLI, `matches` its parse of `argv`.
pub(crate) fn with_file_settings(
    command: &clap::Command,
    matches: &ArgMatches,
    argv: Vec<OsString>,
) -> anyhow::Result<Vec<OsString>> {
    let Some((SUBCOMMAND, serve)) = matches.subcommand() else { return Ok(argv) };
    let Some(path) = serve.get_one::<std::path::PathBuf>(CONFIG) else { return Ok(argv) };
    let Some(serve_command) = command.find_subcommand(SUBCOMMAND) else { return Ok(argv) };
    let settings = read(path)?;
    let mut argv = argv;
    for (key, value) in settings {
        let id = key.replace('-', "_");
        let arg = serve_command
            .get_arguments()
            .find(|arg| arg.get_id().as_str() == id && arg.get_long().is_some() && id != CONFIG)
            .ok_or_else(|| unknown_key(&key, path, serve_command))?;
        let given = matches!(serve.value_source(&id), Some(ValueSource::CommandLine | ValueSource::EnvVariable));
        if given {
            continue;
        }
        let long = arg.get_long().unwrap_or_default();
        argv.push(OsString::from(format!("--{long}={}", flag_value(&key, &value, path)?)));
    }
    Ok(argv)
}

fn read(path: &Path) -> anyhow::Result<toml::Table> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read --config {}", path.display()))?;
    text.parse::<toml::Table>().with_context(|| format!("--config {} is not valid TOML", path.display()))
}

fn unknown_key(key: &str, path: &Path, serve: &clap::Command) -> anyhow::Error {
    let known: Vec<&str> = serve.get_arguments().filter_map(|a| a.get_long()).filter(|l| *l != CONFIG).collect();
    anyhow::anyhow!("unknown key '{key}' in --config {}; known keys: {}", path.display(), known.join(", "))
}

/// A TOML value as the flag's text: strings as they are, numbers and booleans as written.
fn flag_value(key: &str, value: &toml::Value, path: &Path) -> anyhow::Result<String> {
    Ok(match value {
        toml::Value::String(text) => text.clone(),
        toml::Value::Integer(n) => n.to_string(),
        toml::Value::Float(x) => x.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        _ => bail!("key '{key}' in --config {} must be a string, number or boolean", path.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, Command};

    fn cli() -> Command {
        Command::new("msglog").subcommand(
            Command::new("serve")
                .arg(Arg::new("listen").long("listen").env("TEST_CONFIG_FILE_LISTEN").default_value("a:1"))
                .arg(Arg::new("node_id").long("node-id"))
                .arg(Arg::new("config").long("config").value_parser(clap::value_parser!(std::path::PathBuf))),
        )
    }

    fn settled(file: &str, args: &[&str]) -> anyhow::Result<ArgMatches> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("msglog.toml");
        std::fs::write(&path, file)?;
        let mut argv: Vec<OsString> = ["msglog", "serve", "--config"].iter().map(OsString::from).collect();
        argv.push(path.clone().into_os_string());
        argv.extend(args.iter().map(OsString::from));
        let matches = cli().try_get_matches_from(argv.clone())?;
        let argv = with_file_settings(&cli(), &matches, argv)?;
        Ok(cli().try_get_matches_from(argv)?)
    }

    fn serve_value(matches: &ArgMatches, id: &str) -> Option<String> {
        matches.subcommand_matches("serve")?.get_one::<String>(id).cloned()
    }

    #[test]
    fn file_fills_what_flags_leave_unset() {
        let matches = settled("listen = \"f:2\"\nnode-id = \"from-file\"\n", &["--node-id", "flag"]).unwrap();
        assert_eq!(serve_value(&matches, "listen").as_deref(), Some("f:2"));
        assert_eq!(serve_value(&matches, "node_id").as_deref(), Some("flag"));
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = settled("lisen = \"f:2\"\n", &[]).unwrap_err().to_string();
        assert!(err.contains("unknown key 'lisen'"), "{err}");
        assert!(err.contains("listen"), "the known keys are listed: {err}");
    }

    #[test]
    fn the_file_cannot_name_another_file() {
        let err = settled("config = \"other.toml\"\n", &[]).unwrap_err().to_string();
        assert!(err.contains("unknown key 'config'"), "{err}");
    }
}
