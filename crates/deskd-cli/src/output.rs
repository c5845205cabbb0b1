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

/// Parse a four-character code given on a command line (exactly 4 bytes, or `0x` + 8 hex).
pub fn parse_fourcc(text: &str) -> Result<[u8; 4], String> {
    if let Some(hex) = text.strip_prefix("0x") {
        let v = u32::from_str_radix(hex, 16).map_err(|_| format!("{text:?}: not a hex code"))?;
        return Ok(v.to_be_bytes());
    }
    text.as_bytes()
        .try_into()
        .map_err(|_| format!("{text:?}: a type or creator code is exactly 4 bytes"))
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
        assert_eq!(parse_fourcc("ttxt").unwrap(), *b"ttxt");
        assert_eq!(parse_fourcc("0x41504c4c").unwrap(), *b"APLL");
        assert!(parse_fourcc("toolong").is_err());
    }
}
