//! Snapshot manifests: `body \n hex-mac \n`. Mode byte 0: the input as stored, under
//! the seeds' key (the fuzzer must forge the MAC to get further). Mode byte 1: the
//! input is the body and the target MACs it, so the JSON parser and every check
//! behind the MAC are reached.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use sqlvault_format::{ObjectId, decode_manifest, encode_manifest};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let keys = common::keys();
    let bytes = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        let mut b = rest.to_vec();
        b.push(b'\n');
        b.extend_from_slice(common::hex(&keys.mac(rest)).as_bytes());
        b.push(b'\n');
        b
    };
    let id = ObjectId([1; 16]);
    if let Ok(m) = decode_manifest(&keys, &bytes, &id) {
        assert_eq!(m.id, id);
        let _ = m.db_size();
        let enc = encode_manifest(&keys, &m);
        assert_eq!(decode_manifest(&keys, &enc, &id).expect("re-decodes"), m);
    }
});
