//! Redis's glob patterns, as `KEYS` and `SCAN … MATCH` take them: `*` any bytes, `?` one
//! byte, `[abc]`, `[^abc]` and `[a-z]` one byte of a set, `\x` the byte `x` itself. Bytes,
//! not characters, and case-sensitive, like Redis.
//!
//! Matching backtracks only to the last `*`, so a hostile pattern such as `*a*a*a*…b` costs
//! at most pattern × ID steps (Redis's own matcher once took exponential time on those).

/// Whether `id` matches `pattern`. `nocase` folds ASCII case (CONFIG GET's names).
pub fn matches(pattern: &[u8], id: &[u8], nocase: bool) -> bool {
    let (mut p, mut n) = (0, 0);
    // After the last `*` seen: where the pattern resumes, and how much of the ID it took.
    let mut star: Option<(usize, usize)> = None;
    while n < id.len() {
        if pattern.get(p) == Some(&b'*') {
            star = Some((p + 1, n));
            p += 1;
            continue;
        }
        match one(pattern, p, id[n], nocase) {
            Some(next) => {
                p = next;
                n += 1;
            }
            None => match star {
                Some((after, taken)) => {
                    star = Some((after, taken + 1));
                    p = after;
                    n = taken + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Whether the single-byte element of `pattern` at `p` matches `byte`; the position after
/// the element if so. `None` at the pattern's end.
fn one(pattern: &[u8], p: usize, byte: u8, nocase: bool) -> Option<usize> {
    let same = |a: u8, b: u8| a == b || (nocase && a.eq_ignore_ascii_case(&b));
    match *pattern.get(p)? {
        b'?' => Some(p + 1),
        b'[' => class(pattern, p + 1, byte, nocase),
        // A trailing backslash stands for itself, as in Redis.
        b'\\' if p + 1 < pattern.len() => same(pattern[p + 1], byte).then_some(p + 2),
        c => same(c, byte).then_some(p + 1),
    }
}

/// A `[...]` set starting after its `[`: the position after its `]` if `byte` is in it.
/// An unclosed set runs to the pattern's end, as Redis reads it.
fn class(pattern: &[u8], mut p: usize, byte: u8, nocase: bool) -> Option<usize> {
    let fold = |b: u8| if nocase { b.to_ascii_lowercase() } else { b };
    let byte = fold(byte);
    let negated = pattern.get(p) == Some(&b'^');
    if negated {
        p += 1;
    }
    let mut found = false;
    while p < pattern.len() && pattern[p] != b']' {
        if pattern[p] == b'\\' && p + 1 < pattern.len() {
            found |= fold(pattern[p + 1]) == byte;
            p += 2;
        } else if p + 2 < pattern.len() && pattern[p + 1] == b'-' && pattern[p + 2] != b']' {
            let (a, b) = (fold(pattern[p]), fold(pattern[p + 2]));
            found |= (a.min(b)..=a.max(b)).contains(&byte);
            p += 3;
        } else {
            found |= fold(pattern[p]) == byte;
            p += 1;
        }
    }
    // Past the `]` (or the end of an unclosed set).
    (found != negated).then_some((p + 1).min(pattern.len()))
}

#[cfg(test)]
mod tests {
    use super::matches;

    fn m(pattern: &str, id: &str) -> bool {
        matches(pattern.as_bytes(), id.as_bytes(), false)
    }

    #[test]
    fn stars_and_question_marks() {
        assert!(m("*", ""));
        assert!(m("*", "anything"));
        assert!(m("user:*", "user:42"));
        assert!(!m("user:*", "order:42"));
        assert!(m("h?llo", "hello"));
        assert!(!m("h?llo", "hllo"));
        assert!(m("*:*:x", "a:b:c:x"));
        assert!(!m("*:*:x", "a:b:c:y"));
    }

    #[test]
    fn sets_ranges_negation_and_escapes() {
        assert!(m("h[ae]llo", "hallo"));
        assert!(!m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo"));
        assert!(!m("h[^e]llo", "hello"));
        assert!(m("id[0-9]", "id7"));
        assert!(m("id[9-0]", "id7"), "a reversed range is the same range, as in Redis");
        assert!(!m("id[0-9]", "idx"));
        assert!(m("a\\*b", "a*b"));
        assert!(!m("a\\*b", "axb"));
        assert!(m("[\\]]", "]"));
    }

    #[test]
    fn case_sensitive_unless_asked() {
        assert!(!m("USER:*", "user:1"));
        assert!(matches(b"USER:*", b"user:1", true));
        assert!(matches(b"[A-C]x", b"bx", true));
    }

    #[test]
    fn a_hostile_pattern_fails_fast() {
        let pattern = format!("{}b", "*a".repeat(30));
        let id = "a".repeat(5000);
        assert!(!m(&pattern, &id));
    }
}
