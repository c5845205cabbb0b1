//! What coreutils tells and asks: names quoted as GNU tools quote them (`'a b'`), the
//! questions of `-i` (on stderr, answered by a line on stdin) and the lines of `-v`.

use std::io::{BufRead, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A path quoted as GNU coreutils quote names in messages: `'name'`, or `"it's"` for a name
/// holding a single quote (and nothing a shell would expand in double quotes).
pub fn quote(path: &Path) -> String {
    let text = crate::output::display_bytes(path.as_os_str().as_bytes());
    if text.contains('\'') {
        if !text.contains(['"', '$', '`', '\\']) {
            return format!("\"{text}\"");
        }
        return format!("'{}'", text.replace('\'', "'\\''"));
    }
    format!("'{text}'")
}

/// Ask `question` on stderr (as `dt: QUESTION? `) and read one line from stdin: a line that
/// starts with `y` or `Y` is yes; anything else, or the end of input, is no.
pub fn ask(question: &str) -> bool {
    eprint!("dt: {question}? ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(n) if n > 0 => matches!(line.trim_start().as_bytes().first(), Some(b'y' | b'Y')),
        _ => false,
    }
}

/// A system error as coreutils word it: `No such file or directory`, without Rust's
/// ` (os error 2)`.
pub fn io_text(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_string(),
        _ => text,
    }
}

/// Print a `-v` line on stdout, as coreutils do (`renamed 'a' -> 'b'`).
pub fn tell(line: &str) {
    println!("{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_quoted_as_coreutils_quote_them() {
        assert_eq!(quote(Path::new("a b")), "'a b'");
        assert_eq!(quote(Path::new("it's")), "\"it's\"");
        assert_eq!(quote(Path::new("it's $x")), "'it'\\''s $x'");
    }
}
