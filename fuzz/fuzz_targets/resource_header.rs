//! A resource file's header as found on disk (any bytes a user or a crash left there): decoding
//! never panics, and what decodes encodes to a header that decodes to the same value.
#![no_main]
use deskd_volume::rsrc::ResourceHeader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = ResourceHeader::decode(data) {
        let bytes = header.encode();
        let back = ResourceHeader::decode(&bytes).expect("an encoded header decodes");
        assert_eq!(back, header);
    }
});
