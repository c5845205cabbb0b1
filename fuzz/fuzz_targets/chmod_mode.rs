//! `dt chmod` mode strings: parsing any text never panics, and a parsed mode applies to every
//! starting mode without panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(spec) = deskd_cli::mode::parse_mode(text) {
            for current in [0, 0o644, 0o755, 0o4755, 0o7777] {
                for is_dir in [false, true] {
                    assert!(spec.apply(current, is_dir, 0o022) <= 0o7777);
                }
            }
        }
        let _ = deskd_cli::mode::parse_owner(text);
    }
});
