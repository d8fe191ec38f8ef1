//! Index objects (`index/<id>`): format 2 is MAC'd, format 1 is not (a bucket writer
//! with the public recipients can make one). Mode byte 0: the input as stored, under
//! the seeds' key. Mode byte 1: the input is everything before the MAC and the target
//! appends the MAC, so the parser behind it is reached.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use sqlvault_format::{IndexAuth, IndexFile};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let keys = common::keys();
    let bytes = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        let mut b = rest.to_vec();
        b.extend_from_slice(&keys.mac(rest));
        b
    };
    let Ok((idx, auth)) = IndexFile::decode(&bytes, &keys) else {
        return;
    };
    if bytes.starts_with(b"SQLVIDX2") {
        assert_eq!(auth, IndexAuth::Authenticated);
    } else {
        assert_eq!(auth, IndexAuth::Legacy);
    }
    let mut n = 0usize;
    IndexFile::decode_with(&bytes, &keys, |_, _| n += 1).expect("decodes twice");
    assert_eq!(n, idx.packs.iter().map(|p| p.entries.len()).sum::<usize>());
    // What decodes re-encodes (as format 2) to the same entries.
    let enc = idx.encode(&keys);
    assert_eq!(
        IndexFile::decode(&enc, &keys).expect("re-decodes"),
        (idx, IndexAuth::Authenticated)
    );
});
