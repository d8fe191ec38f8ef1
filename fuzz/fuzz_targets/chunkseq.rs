//! Chunk sequences of dump snapshots (`maps/<id>` of a dump, MAC-checked by the caller
//! against the manifest). The first byte picks the base sequence (0..=31 chunks); the
//! rest is the encoding applied on top of it.
//!
//! `apply_encoded` reserves `min(chunk_count, 2^24)` entries (~576 MiB of capacity) from
//! the 25-byte header before checking the body; like the page map's, that bound belongs
//! to the engine (being fixed there), so inputs declaring more than [`CALLER_BOUND`]
//! chunks are not applied here.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use sqlvault_format::{ChunkId, ChunkSeq};

/// The most chunks a caller lets `apply_encoded` reserve for.
const CALLER_BOUND: u32 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((&b, rest)) = data.split_first() else {
        return;
    };
    if rest.len() >= 25 && rest.starts_with(b"SQLVSEQ1") && common::u32_at(rest, 9).unwrap() > CALLER_BOUND {
        return;
    }
    let n = b % 32;
    let base = ChunkSeq {
        ids: (0..n).map(|i| ChunkId([i; 32])).collect(),
        lens: (0..n).map(|i| 100 + i as u32).collect(),
    };
    let mut seq = base.clone();
    match seq.apply_encoded(rest) {
        Ok(()) => {
            assert_eq!(seq.ids.len(), seq.lens.len());
            let mut full = ChunkSeq::default();
            full.apply_encoded(&seq.encode_full()).expect("full re-applies");
            assert_eq!(full, seq);
            let edit = seq.edit_from(&base, usize::MAX).expect("no limit");
            let mut again = base.clone();
            again.apply_encoded(&edit).expect("edit re-applies");
            assert_eq!(again, seq);
        }
        // A failed apply leaves the base as it was.
        Err(_) => assert_eq!(seq, base),
    }
});
