//! Name handling for search: the search key (Unicode NFC + lower case) and pattern translation.
//!
//! Names are bytes (Linux names need not be UTF-8). The search key is derived from the name
//! decoded lossily, normalised to NFC and lower-cased, so NFC and NFD spellings of one name and
//! its upper- and lower-case forms all share one key.

use unicode_normalization::UnicodeNormalization;

/// The search key of a name: NFC, lower case, NFC again (lower-casing can decompose).
pub fn search_key(name: &[u8]) -> String {
    if name.is_ascii() {
        // ASCII is already NFC; lower-casing it cannot decompose anything.
        return String::from_utf8_lossy(name).to_ascii_lowercase();
    }
    let text = String::from_utf8_lossy(name);
    let nfc: String = text.nfc().collect();
    nfc.to_lowercase().nfc().collect()
}

/// Fold a user pattern the same way names are folded.
pub fn fold_pattern(pattern: &str) -> String {
    search_key(pattern.as_bytes())
}

/// Escape the SQLite GLOB metacharacters of a literal string.
pub fn glob_escape_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '*' => out.push_str("[*]"),
            '?' => out.push_str("[?]"),
            '[' => out.push_str("[[]"),
            _ => out.push(c),
        }
    }
    out
}

/// Whether `text` matches the GLOB `pattern` by SQLite's rules, so a back end without
/// SQLite's GLOB (and the name index's confirmation) matches exactly as the SQLite scan does:
/// `*` any run of characters, `?` one character, `[...]` one character of a set (`^` first
/// negates, `]` first is a member, `a-z` a range of code points), everything else itself,
/// case-sensitively. A `[` that no `]` closes matches nothing.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Two cursors and the last `*` seen: on a mismatch, that star takes one more character.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi + 1, ti));
                pi += 1;
                continue;
            }
            Some('?') => Some(pi + 1),
            Some('[') => match class_matches(&p, pi, t[ti]) {
                ClassMatch::Yes(next) => Some(next),
                ClassMatch::No => None,
                ClassMatch::Unclosed => return false,
            },
            Some(&c) if c == t[ti] => Some(pi + 1),
            _ => None,
        };
        match (step, star) {
            (Some(next), _) => {
                pi = next;
                ti += 1;
            }
            (None, Some((after_star, taken))) => {
                pi = after_star;
                ti = taken + 1;
                star = Some((after_star, taken + 1));
            }
            (None, None) => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

enum ClassMatch {
    /// The character is in the set; the pattern goes on at this index.
    Yes(usize),
    No,
    Unclosed,
}

/// Match `c` against the `[...]` class starting at `p[open]`, as SQLite's `patternCompare`.
fn class_matches(p: &[char], open: usize, c: char) -> ClassMatch {
    let mut i = open + 1;
    let mut invert = false;
    let mut seen = false;
    if p.get(i) == Some(&'^') {
        invert = true;
        i += 1;
    }
    if p.get(i) == Some(&']') {
        seen |= c == ']';
        i += 1;
    }
    let mut prior: Option<char> = None;
    loop {
        match p.get(i) {
            None => return ClassMatch::Unclosed,
            Some(']') => break,
            Some('-') if prior.is_some() && !matches!(p.get(i + 1), None | Some(']')) => {
                let (low, high) = (prior.unwrap_or('\0'), p[i + 1]);
                seen |= low <= c && c <= high;
                prior = None;
                i += 2;
            }
            Some(&member) => {
                seen |= member == c;
                prior = Some(member);
                i += 1;
            }
        }
    }
    if seen != invert {
        ClassMatch::Yes(i + 1)
    } else {
        ClassMatch::No
    }
}

/// True when a pattern uses glob syntax: `*`, `?`, or a closed `[...]` class. A `[` that no
/// `]` closes cannot be a glob (SQLite's GLOB would match nothing), so `deskd find "[draft"`
/// looks for the name part as written.
pub fn looks_like_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?']) || (pattern.contains('[') && unclosed_bracket(pattern).is_none())
}

/// The byte offset of the first `[` in a glob that no `]` closes, with SQLite's rules (`^`
/// right after `[` negates; a `]` right after `[` or `[^` is a member, not the end).
pub fn unclosed_bracket(pattern: &str) -> Option<usize> {
    let b = pattern.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'[' {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        if b.get(j) == Some(&b'^') {
            j += 1;
        }
        if b.get(j) == Some(&b']') {
            j += 1;
        }
        match b[j.min(b.len())..].iter().position(|&c| c == b']') {
            Some(k) => i = j + k + 1,
            None => return Some(i),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn brackets_make_a_glob_only_when_closed() {
        assert!(looks_like_glob("[nN]otes.txt"));
        assert!(looks_like_glob("*.pdf") && looks_like_glob("a?c"));
        assert!(!looks_like_glob("[draft"));
        assert!(!looks_like_glob("report"));
        assert_eq!(unclosed_bracket("[draft"), Some(0));
        assert_eq!(unclosed_bracket("ok[a]then[x"), Some(9));
        assert_eq!(unclosed_bracket("[]]"), None, "a leading ] is a member");
        assert_eq!(unclosed_bracket("[^]x]"), None);
        assert_eq!(
            unclosed_bracket("[]"),
            Some(0),
            "] as first member, then unclosed"
        );
        assert_eq!(
            unclosed_bracket("*[[]draft*"),
            None,
            "the escape for a literal ["
        );
    }

    #[test]
    fn nfc_and_nfd_share_a_key() {
        let nfc = "Caf\u{e9}.txt";
        let nfd = "Cafe\u{301}.TXT";
        assert_eq!(search_key(nfc.as_bytes()), search_key(nfd.as_bytes()));
        assert_eq!(search_key(nfc.as_bytes()), "caf\u{e9}.txt");
    }

    #[test]
    fn non_utf8_names_get_a_key() {
        let key = search_key(b"bad\xffname");
        assert!(key.starts_with("bad"));
        assert!(key.ends_with("name"));
    }

    #[test]
    fn escaping_keeps_literals_literal() {
        assert_eq!(glob_escape_literal("a*b?c[d"), "a[*]b[?]c[[]d");
    }

    /// SQLite's own GLOB on the same pattern and text.
    fn sqlite_glob(conn: &rusqlite::Connection, pattern: &str, text: &str) -> bool {
        conn.query_row("SELECT ?2 GLOB ?1", [pattern, text], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn glob_matches_as_sqlite_on_chosen_cases() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let cases = [
            ("*.txt", "notes.txt"),
            ("*.txt", "notes.txt.bak"),
            ("n?tes*", "notes"),
            ("[nN]otes", "notes"),
            ("[^a-c]x", "dx"),
            ("[^a-c]x", "bx"),
            ("[]]", "]"),
            ("[^]]", "]"),
            ("[a-]", "-"),
            ("[-a]", "-"),
            ("[draft", "[draft"),
            ("*[*]*", "a*b"),
            ("*[[]d*", "x[d"),
            ("caf\u{e9}*", "caf\u{e9} au lait"),
            ("[\u{e0}-\u{ff}]", "\u{e9}"),
            ("", ""),
            ("*", ""),
            ("?", ""),
            ("a*b*c", "aXbYbZc"),
            ("a*b*c", "aXbYbZ"),
        ];
        for (pattern, text) in cases {
            assert_eq!(
                glob_matches(pattern, text),
                sqlite_glob(&conn, pattern, text),
                "{pattern:?} on {text:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn key_is_idempotent(s in "\\PC{0,20}") {
            let once = search_key(s.as_bytes());
            prop_assert_eq!(search_key(once.as_bytes()), once.clone());
        }

        #[test]
        fn ascii_fast_path_matches_the_general_rule(s in "[ -~]{0,40}") {
            let general: String = s.nfc().collect::<String>().to_lowercase().nfc().collect();
            prop_assert_eq!(search_key(s.as_bytes()), general);
        }

        #[test]
        fn key_ignores_ascii_case(s in "[a-zA-Z0-9 ._-]{0,30}") {
            prop_assert_eq!(search_key(s.to_uppercase().as_bytes()), search_key(s.to_lowercase().as_bytes()));
        }

        #[test]
        fn glob_matches_as_sqlite(pattern in "[ab*?\\[\\]^\\-]{0,8}", text in "[ab\\]\\-^]{0,8}") {
            let conn = rusqlite::Connection::open_in_memory().unwrap();
            prop_assert_eq!(glob_matches(&pattern, &text), sqlite_glob(&conn, &pattern, &text));
        }
    }
}
