//! The frame-grouped entry list shared by pack trailers and index sections.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sqlvault_format::{decode_entries, encode_entries};

fuzz_target!(|data: &[u8]| {
    let mut entries = Vec::new();
    if decode_entries(data, |e| entries.push(e)).is_err() {
        return;
    }
    // Never more entries than 32 bytes of input each.
    assert!(entries.len() * 32 <= data.len());
    let mut again = Vec::new();
    decode_entries(&encode_entries(&entries), |e| again.push(e)).expect("re-decodes");
    assert_eq!(again, entries);
});
