//! afpd's bytes on the CNID bridge: the handshake, then requests; a request that decodes must
//! encode back to the same request.
#![no_main]
use deskd_netatalk::wire::{encode_request, read_handshake, read_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut reader = data;
    let _ = read_handshake(&mut reader);
    let mut reader = data;
    while let Ok(Some(request)) = read_request(&mut reader) {
        let bytes = encode_request(&request);
        let back = read_request(&mut bytes.as_slice())
            .expect("an encoded request decodes")
            .expect("and is there");
        assert_eq!(back, request);
    }
});
