//! A client's bytes on the deskd socket: frame reading, then request decoding. Whatever decodes
//! must encode and decode back to itself (the server answers from the decoded value).
#![no_main]
use deskd_proto::{decode, encode_frame, read_frame_body_within, RequestFrame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut reader = data;
    let mut body = Vec::new();
    while let Ok(true) = read_frame_body_within(&mut reader, &mut body, 1 << 16) {
        if let Ok(frame) = decode::<RequestFrame>(&body) {
            let again = encode_frame(&frame).expect("a decoded frame encodes");
            let back: RequestFrame = decode(&again[4..]).expect("an encoded frame decodes");
            assert_eq!(back, frame);
        }
    }
    // The body alone, without a length prefix.
    let _ = decode::<RequestFrame>(data);
});
