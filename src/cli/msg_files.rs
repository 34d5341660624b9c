//! The assignment's `messages/<id>.msg` layout: file names for IDs, and progress bars.
//!
//! Bytes of an ID outside `[A-Za-z0-9._-]` are percent-encoded (`a/b` → `a%2Fb.msg`), and
//! the IDs `.` and `..` are encoded whole, so no ID can name a path outside the folder.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

pub(crate) const EXTENSION: &str = ".msg";

/// The longest file name, in bytes, that Linux file systems (ext4, xfs, btrfs, tmpfs) take.
/// An ID of up to 1024 bytes can need a longer one (and %-encoding triples a byte).
pub(crate) const NAME_MAX: usize = 255;

fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// The file name (without directory) holding `id`'s message.
pub(crate) fn file_name(id: &[u8]) -> String {
    let whole = id == b"." || id == b"..";
    let mut name = String::with_capacity(id.len() + EXTENSION.len());
    for &b in id {
        if plain(b) && !whole {
            name.push(b as char);
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    name.push_str(EXTENSION);
    name
}

/// The ID a file name holds, if it is one `file_name` could have written.
pub(crate) fn decode_file_name(name: &str) -> Result<Vec<u8>, String> {
    let stem = name.strip_suffix(EXTENSION).ok_or("no .msg extension")?;
    let bytes = stem.as_bytes();
    let mut id = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                let value = hex.and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or("bad %-escape")?;
                id.push(value);
                i += 3;
            }
            b if plain(b) => {
                id.push(b);
                i += 1;
            }
            _ => return Err(format!("byte {:?} should have been %-encoded", bytes[i] as char)),
        }
    }
    Ok(id)
}

/// `id` for a one-line message: escaped, and cut in the middle when long (an ID may be 1024
/// bytes), keeping both ends so IDs sharing a long prefix stay apart.
pub(crate) fn shown_id(id: &[u8]) -> String {
    const HEAD: usize = 40;
    const TAIL: usize = 16;
    if id.len() <= HEAD + TAIL {
        return id.escape_ascii().to_string();
    }
    let (head, tail) = (&id[..HEAD], &id[id.len() - TAIL..]);
    format!("{}...{} ({} bytes)", head.escape_ascii(), tail.escape_ascii(), id.len())
}

/// A progress bar on stderr when it is a terminal; hidden otherwise, so scripts stay quiet.
pub(crate) fn progress(len: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    let template = format!("{what} {{bar:40}} {{human_pos}}/{{human_len}} ({{per_sec:0}}, {{eta}} left)");
    bar.set_style(ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn awkward_ids_get_safe_names() {
        assert_eq!(file_name(b"plain-ID_1.x"), "plain-ID_1.x.msg");
        assert_eq!(file_name(b"a/b"), "a%2Fb.msg");
        assert_eq!(file_name(b"."), "%2E.msg");
        assert_eq!(file_name(b".."), "%2E%2E.msg");
        assert_eq!(file_name(b"%41"), "%2541.msg");
        assert_eq!(file_name("é".as_bytes()), "%C3%A9.msg");
    }

    #[test]
    fn long_ids_are_shown_by_both_ends() {
        assert_eq!(shown_id(b"short/id"), "short/id");
        let long = [vec![b'a'; 40], vec![b'b'; 100], b"\xff--end-of-the-id".to_vec()].concat();
        assert_eq!(shown_id(&long), format!("{}...\\xff--end-of-the-id (156 bytes)", "a".repeat(40)));
    }

    proptest! {
        #[test]
        fn names_decode_to_their_id_and_stay_in_the_folder(id in proptest::collection::vec(any::<u8>(), 1..64)) {
            let name = file_name(&id);
            prop_assert!(!name.contains('/') && name != ".msg" && !name.starts_with("..."));
            prop_assert_eq!(decode_file_name(&name).unwrap(), id);
        }
    }
}
