//! fileset's check file as found in permdir (corrupt, truncated, hostile): decoding never
//! panics, and a check file that passes its CRC re-encodes to the same value. Each input is
//! tried as it is and with its CRC set right, so the fuzzer reaches the parsing behind the CRC.
#![no_main]
use fileset::checkfile::CheckFile;
use libfuzzer_sys::fuzz_target;

fn round_trip(data: &[u8]) {
    if let Ok(check) = CheckFile::decode(data) {
        let bytes = check.encode().expect("a decoded check file encodes");
        let back = CheckFile::decode(&bytes).expect("an encoded check file decodes");
        assert_eq!(back, check);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip(data);
    if data.len() >= 4 {
        let mut fixed = data.to_vec();
        let crc = crc32fast::hash(&fixed[4..]);
        fixed[..4].copy_from_slice(&crc.to_le_bytes());
        round_trip(&fixed);
    }
});
