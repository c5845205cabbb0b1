//! Rendering names (bytes, not always UTF-8), four-character codes and find matches for people
//! and JSON, and the find mode the `find` verbs' flags ask for.

use std::fmt::Write as _;

use deskd_client::{FindMode, ObjectInfo};

/// A name or path as text: valid UTF-8 as is, every invalid byte as `\xNN`.
pub fn display_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// `ctime(3)`-style local time, as HELIOS prints times: `Thu Nov 24 18:22:48 2009` (the
/// number itself when the local time zone has no such moment).
pub fn ctime_string(unix: i64) -> String {
    use chrono::TimeZone;
    chrono::Local
        .timestamp_opt(unix, 0)
        .single()
        .map(|t| t.format("%a %b %e %H:%M:%S %Y").to_string())
        .unwrap_or_else(|| unix.to_string())
}

/// A Mac four-character code: printable ASCII as text, otherwise `0x` and hex.
pub fn fourcc(code: &[u8; 4]) -> String {
    if code.iter().all(|&c| (0x20..0x7f).contains(&c)) {
        String::from_utf8_lossy(code).into_owned()
    } else {
        format!(
            "0x{}",
            code.iter().map(|b| format!("{b:02x}")).collect::<String>()
        )
    }
}

/// How a `find` verb matches names and prints matches (`deskd find` and `dt find`).
#[derive(clap::Args, Debug, Clone)]
pub struct FindArgs {
    /// Match names that start with PATTERN.
    #[arg(long, short, conflicts_with_all = ["glob", "exact"])]
    pub prefix: bool,
    /// PATTERN is a shell glob over the whole name (default when it holds * ?, or a closed
    /// [...] class).
    #[arg(long, short, conflicts_with = "exact")]
    pub glob: bool,
    /// Match whole names.
    #[arg(long, short)]
    pub exact: bool,
    /// One JSON object per match per line.
    #[arg(long)]
    pub json: bool,
}

impl FindArgs {
    /// The mode the flags ask for; without any, a pattern with `*`, `?` or a closed `[...]` is
    /// a glob and anything else a substring.
    pub fn mode(&self, pattern: &str) -> FindMode {
        if self.prefix {
            FindMode::Prefix
        } else if self.exact {
            FindMode::Exact
        } else if self.glob || deskd_db::names::looks_like_glob(pattern) {
            FindMode::Glob
        } else {
            FindMode::Substring
        }
    }
}

/// Print one find match of the volume at `root`: its full path, or with `json` one object with
/// `volume path id parent_id name kind`.
pub fn write_match(
    out: &mut impl std::io::Write,
    json: bool,
    root: &[u8],
    hit: &ObjectInfo,
) -> std::io::Result<()> {
    let mut full = root.to_vec();
    full.push(b'/');
    full.extend_from_slice(hit.path.as_deref().unwrap_or_default());
    if json {
        let line = serde_json::json!({
            "volume": display_bytes(root),
            "path": display_bytes(&full),
            "id": hit.id,
            "parent_id": hit.parent,
            "name": display_bytes(&hit.name),
            "kind": hit.kind.as_str(),
        });
        writeln!(out, "{line}")
    } else {
        out.write_all(&full)?;
        out.write_all(b"\n")
    }
}

/// Makes a write to a closed pipe end the process as SIGPIPE's default action does, so
/// `dt ls | head` or `deskd find … | head` ends quietly, as ls(1) and find(1) do (Rust ignores
/// SIGPIPE, and the next `println!` would panic). signal-hook's safe
/// `register_conditional_default` installs a handler that, with the condition always true,
/// restores the default disposition and raises the signal again: the same death by SIGPIPE as
/// `signal(SIGPIPE, SIG_DFL)`, with no unsafe call here. Only for tools whose output is all
/// they do: not for the server, which must outlive a client that hangs up.
pub fn end_quietly_on_a_closed_pipe() {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    // It fails only for a signal it does not know; then a closed pipe is an error, as before.
    let _ = signal_hook::flag::register_conditional_default(
        signal_hook::consts::SIGPIPE,
        Arc::new(AtomicBool::new(true)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_codes() {
        assert_eq!(display_bytes(b"caf\xc3\xa9"), "caf\u{e9}");
        assert_eq!(display_bytes(b"bad\xffname"), "bad\\xffname");
        assert_eq!(fourcc(b"TEXT"), "TEXT");
        assert_eq!(fourcc(&[0, 0, 0, 0]), "0x00000000");
    }
}
