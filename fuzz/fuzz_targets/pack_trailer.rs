//! The trailer at the end of a pack's plaintext (read by `check --read-data`, copy and
//! index rebuilds; a backup host wrote it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sqlvault_format::{decode_pack_trailer, encode_pack_trailer};

fuzz_target!(|data: &[u8]| {
    let Ok((entries, start)) = decode_pack_trailer(data) else {
        return;
    };
    assert!(start + 12 <= data.len());
    for e in &entries {
        // Every frame lies in the frame area, and every chunk's end is a u32.
        assert!(e.frame_offset + e.frame_len as u64 <= start as u64);
        assert!(e.offset.checked_add(e.len).is_some());
    }
    let mut pack = data[..start].to_vec();
    pack.extend_from_slice(&encode_pack_trailer(&entries));
    let (again, start2) = decode_pack_trailer(&pack).expect("re-decodes");
    assert_eq!((again, start2), (entries, start));
});
