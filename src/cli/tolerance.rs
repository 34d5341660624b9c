//! `--tolerance-file`: the assignment's `tolerance.conf`.
//!
//! One value, written `TOLERANCE=N`, `tolerance=N` (any case, spaces around `=` allowed) or
//! a bare `N`. `#` starts a comment; blank lines are ignored. Anything else, or a second
//! value, is an error naming the line, so a typo never silently means "tolerance 0".

use std::path::Path;

use anyhow::Context;

pub(crate) fn read_tolerance_file(path: &Path) -> anyhow::Result<u32> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read tolerance file {}", path.display()))?;
    parse_tolerance(&text).with_context(|| format!("bad tolerance file {}", path.display()))
}

fn parse_tolerance(text: &str) -> anyhow::Result<u32> {
    let mut found: Option<(u32, usize)> = None;
    // Editors on some systems start a UTF-8 file with a byte-order mark; it is not a typo.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let content = line.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let value = match content.split_once('=') {
            Some((key, value)) if key.trim().eq_ignore_ascii_case("tolerance") => value.trim(),
            Some((key, _)) => anyhow::bail!("line {number}: unknown setting '{}' (expected TOLERANCE=N)", key.trim()),
            None => content,
        };
        let tolerance = match value.parse::<u32>() {
            Ok(tolerance) => tolerance,
            Err(_) if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                anyhow::bail!("line {number}: {value} followers is more than a cluster can have")
            }
            Err(_) => anyhow::bail!("line {number}: '{value}' is not a whole number of followers"),
        };
        if let Some((_, first)) = found {
            anyhow::bail!("line {number}: a second tolerance (the first is on line {first})");
        }
        found = Some((tolerance, number));
    }
    found.map(|(tolerance, _)| tolerance).context("no tolerance in it (expected TOLERANCE=N)")
}

#[cfg(test)]
mod tests {
    use super::parse_tolerance;

    #[test]
    fn accepts_the_three_spellings_with_comments_and_blank_lines() {
        assert_eq!(parse_tolerance("TOLERANCE=2\n").unwrap(), 2);
        assert_eq!(parse_tolerance("# replicas\n\n tolerance = 1  # one follower\n").unwrap(), 1);
        assert_eq!(parse_tolerance("3").unwrap(), 3);
        assert_eq!(parse_tolerance("Tolerance=0\r\n").unwrap(), 0);
        assert_eq!(parse_tolerance("\u{feff}TOLERANCE=1\n").unwrap(), 1, "a byte-order mark is not a setting");
    }

    #[test]
    fn malformed_files_name_the_line() {
        let err = |text: &str| format!("{:#}", parse_tolerance(text).unwrap_err());
        assert_eq!(err("# c\nTOLERANCE=two\n"), "line 2: 'two' is not a whole number of followers");
        assert_eq!(err("REPLICAS=2"), "line 1: unknown setting 'REPLICAS' (expected TOLERANCE=N)");
        assert_eq!(err("1\n2\n"), "line 2: a second tolerance (the first is on line 1)");
        assert_eq!(err("-1"), "line 1: '-1' is not a whole number of followers");
        assert_eq!(err("# nothing\n"), "no tolerance in it (expected TOLERANCE=N)");
        assert_eq!(err("TOLERANCE=99999999999"), "line 1: 99999999999 followers is more than a cluster can have");
    }
}
