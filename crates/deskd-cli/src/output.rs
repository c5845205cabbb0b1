//! Rendering names (bytes, not always UTF-8) and four-character codes for people and JSON.

use std::fmt::Write as _;

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
