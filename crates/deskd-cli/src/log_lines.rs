//! The log writer of `deskd`: one event, one line. A name on disk may hold a newline (or a
//! carriage return, or a Unicode line separator); printed raw in a warning, it would start a
//! line of the writer's choosing, such as a forged `deskd::audit` line (the hostile review of
//! stop 35, finding 5). Every message goes through [`OneLine`], which escapes such characters
//! inside an event as `\n`, `\r`, `\xNN` or `\u{2028}`, whichever crate logged the path.

use std::io::Write;

/// A writer for `tracing_subscriber::fmt` (which writes each formatted event, with its final
/// newline, in one call): breaks inside the event are escaped, the final newline kept.
pub struct OneLine<W: Write>(pub W);

/// [`OneLine`] over stderr, as `with_writer` wants it.
pub fn stderr() -> OneLine<std::io::Stderr> {
    OneLine(std::io::stderr())
}

/// `event` with every line break and control character but tab (and the final newline)
/// escaped.
pub fn escape_breaks(event: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let (body, end) = match event.strip_suffix(b"\n") {
        Some(body) => (body, &b"\n"[..]),
        None => (event, &b""[..]),
    };
    let breaks = |b: &[u8]| {
        b.iter().any(|&c| c < 0x20 && c != b'\t' || c == 0x7f)
            || b.windows(3)
                .any(|w| w == b"\xe2\x80\xa8" || w == b"\xe2\x80\xa9")
    };
    if !breaks(body) {
        return event.into();
    }
    let mut out = Vec::with_capacity(event.len() + 16);
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            c if c < 0x20 && c != b'\t' || c == 0x7f => {
                let _ = write!(out, "\\x{c:02x}");
            }
            0xe2 if matches!(body.get(i + 1..i + 3), Some(b"\x80\xa8" | b"\x80\xa9")) => {
                let _ = write!(out, "\\u{{{:x}}}", 0x2000 + u32::from(body[i + 2] - 0x80));
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    out.extend_from_slice(end);
    out.into()
}

impl<W: Write> Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write_all(&escape_breaks(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::escape_breaks;

    #[test]
    fn a_break_inside_an_event_is_escaped_the_final_newline_kept() {
        let forged =
            b"WARN x: /v/.rsrc/evil\n2026-12-06T15:00:00Z  INFO deskd::audit: FORGED\r\x07\
                       \xe2\x80\xa8: a symbolic link\n";
        assert_eq!(
            &*escape_breaks(forged),
            &b"WARN x: /v/.rsrc/evil\\n2026-12-06T15:00:00Z  INFO deskd::audit: FORGED\\r\\x07\
               \\u{2028}: a symbolic link\n"[..]
        );
        let plain = "WARN x: caf\u{e9}\tok\n".as_bytes();
        assert_eq!(&*escape_breaks(plain), plain);
        assert_eq!(&*escape_breaks(b"\n"), b"\n");
    }
}
