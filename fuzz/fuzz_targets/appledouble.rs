//! Netatalk's AppleDouble metadata as found beside a file (rebuild imports it): parsing any
//! bytes never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = deskd_volume::netatalk::parse(data);
});
