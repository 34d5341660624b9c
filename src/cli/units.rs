//! Flag values with units (sizes, durations, the fsync policy), and sizes shown to people.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::storage::FsyncPolicy;

/// A progress bar over bytes on stderr when it is a terminal (hidden otherwise, so scripts
/// stay quiet), in MB and MB/s: a count of bytes with decimals says nothing at a glance.
pub(crate) fn byte_progress(len: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    ProgressBar::new(len).with_style(byte_style(what))
}

fn byte_style(what: &str) -> ProgressStyle {
    let template = format!(
        "{what} {{bar:40}} {{decimal_bytes}}/{{decimal_total_bytes}} ({{decimal_bytes_per_sec}}, {{eta}} left)"
    );
    ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// A size as people read it, in decimal units like the progress bars: `1.50 MB`.
pub(crate) fn human_bytes(bytes: u64) -> String {
    indicatif::DecimalBytes(bytes).to_string()
}

/// `always`, `never`, or `interval=<ms>` (a unit such as `interval=1s` is accepted too).
pub(crate) fn parse_fsync(text: &str) -> Result<FsyncPolicy, String> {
    let expected = "expected always, never or interval=<ms> (e.g. interval=100)";
    match text.to_ascii_lowercase().as_str() {
        "always" => Ok(FsyncPolicy::Always),
        "never" => Ok(FsyncPolicy::Never),
        lower => {
            let Some(every) = lower.strip_prefix("interval=") else {
                return Err(format!("unknown fsync policy '{text}': {expected}"));
            };
            let every = match every.parse::<u64>() {
                Ok(ms) => Duration::from_millis(ms),
                Err(_) => parse_duration(every).map_err(|_| format!("bad interval in '{text}': {expected}"))?,
            };
            if every.is_zero() {
                return Err(format!("interval in '{text}' must be above zero: {expected}"));
            }
            Ok(FsyncPolicy::Interval(every))
        }
    }
}

/// A byte count: plain (`134217728`) or with a binary suffix `K`, `M`, `G` (`128M`;
/// `KiB`/`KB` spellings and lower case accepted, all meaning powers of 1024).
pub(crate) fn parse_bytes(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let digits_end = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    let (digits, suffix) = trimmed.split_at(digits_end);
    let bad = || format!("bad size '{text}': expected bytes, optionally with K, M or G (e.g. 128M)");
    let number: u64 = digits.parse().map_err(|_| bad())?;
    let multiplier: u64 = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    number.checked_mul(multiplier).ok_or_else(|| format!("size '{text}' is too large"))
}

/// A duration with a unit: `500ms`, `10s`, `1m`, `1h`. Zero (`0s`) is allowed.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let digits_end = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(digits_end);
    let bad = || format!("bad duration '{text}': expected a number and a unit, e.g. 500ms, 10s, 1m");
    let number: u64 = digits.parse().map_err(|_| bad())?;
    let duration = match unit {
        "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number.saturating_mul(60)),
        "h" => Duration::from_secs(number.saturating_mul(3600)),
        _ => return Err(bad()),
    };
    Ok(duration)
}

/// A node ID goes into `key=value` stats lines, so it must be one printable word.
pub(crate) fn parse_node_id(text: &str) -> Result<String, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("bad node id '{text}': expected printable ASCII without spaces"));
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A terminal that keeps what is drawn on it.
    #[derive(Debug, Default, Clone)]
    struct Screen(std::sync::Arc<std::sync::Mutex<String>>);

    impl indicatif::TermLike for Screen {
        fn width(&self) -> u16 {
            120
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.write_str(&format!("{s}\n"))
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.0.lock().unwrap().push_str(s);
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn byte_progress_shows_megabytes_not_raw_counts() {
        let screen = Screen::default();
        let target = indicatif::ProgressDrawTarget::term_like(Box::new(screen.clone()));
        let bar = ProgressBar::with_draw_target(Some(12_000_000), target).with_style(byte_style("checking"));
        bar.set_position(3_500_000);
        bar.tick();
        let drawn = screen.0.lock().unwrap().clone();
        assert!(drawn.contains("3.50 MB/12.00 MB"), "{drawn}");
        assert!(!drawn.contains("3500000"), "{drawn}");
        assert_eq!(human_bytes(1_500_000), "1.50 MB");
    }

    #[test]
    fn fsync_policies_parse() {
        assert_eq!(parse_fsync("always"), Ok(FsyncPolicy::Always));
        assert_eq!(parse_fsync("NEVER"), Ok(FsyncPolicy::Never));
        assert_eq!(parse_fsync("interval=250"), Ok(FsyncPolicy::Interval(Duration::from_millis(250))));
        assert_eq!(parse_fsync("interval=1s"), Ok(FsyncPolicy::Interval(Duration::from_secs(1))));
        assert!(parse_fsync("interval=0").is_err());
        assert!(parse_fsync("interval=").is_err());
        assert!(parse_fsync("sometimes").unwrap_err().contains("always, never or interval"));
    }

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("64K"), Ok(64 << 10));
        assert_eq!(parse_bytes("128M"), Ok(128 << 20));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("1mb"), Ok(1 << 20));
        assert!(parse_bytes("M").is_err());
        assert!(parse_bytes("12X").is_err());
        assert!(parse_bytes("99999999999999G").is_err());
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("ten s").is_err());
    }
}
