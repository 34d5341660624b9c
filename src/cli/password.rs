//! Reading a password from the command line, the environment or the config file without
//! ever printing it: clap's own errors quote the refused value, and a refused password is
//! still most of a password (a typo, or one with a stray space), bound for a journal.

use std::ffi::OsStr;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;

use crate::server::Password;

/// Parses a [`Password`]; a refusal names where a password comes from, never its value.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PasswordParser;

impl TypedValueParser for PasswordParser {
    type Value = Password;

    fn parse_ref(&self, cmd: &clap::Command, arg: Option<&clap::Arg>, value: &OsStr) -> Result<Password, clap::Error> {
        let sources = arg.map_or_else(|| "the password".to_string(), sources);
        let refused = |why: &str| {
            let message = format!("the password given by {sources} was refused ({why}); its value is not shown\n");
            clap::Error::raw(ErrorKind::ValueValidation, message).with_cmd(cmd)
        };
        let text = value.to_str().ok_or_else(|| refused("it is not valid UTF-8"))?;
        Password::new(text).map_err(|err| refused(&err.to_string()))
    }
}

/// Where an argument's value may come from, e.g. "--requirepass, MSGLOG_PASSWORD or the
/// config file".
fn sources(arg: &clap::Arg) -> String {
    let flag = arg.get_long().map_or_else(|| arg.get_id().to_string(), |long| format!("--{long}"));
    match arg.get_env().and_then(OsStr::to_str) {
        Some(env) => format!("{flag}, {env} or the config file"),
        None => flag,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Args {
        #[arg(long, env = "MSGLOG_TEST_PASSWORD_UNSET", value_parser = PasswordParser)]
        requirepass: Option<Password>,
    }

    #[test]
    fn a_refused_password_is_not_printed() {
        let err = Args::try_parse_from(["msglog", "--requirepass", "Real Secret With Space"]).unwrap_err();
        let text = err.to_string();
        assert!(!text.contains("Secret"), "{text}");
        assert!(text.contains("--requirepass, MSGLOG_TEST_PASSWORD_UNSET or the config file"), "{text}");
        assert!(text.contains("refused"), "{text}");
    }

    #[test]
    fn a_good_password_is_taken() {
        let args = Args::try_parse_from(["msglog", "--requirepass", "s3cret!"]).unwrap();
        assert!(args.requirepass.is_some_and(|p| p.matches(b"s3cret!")));
    }
}
