//! Page maps (`maps/<id>`, MAC-checked by the caller against the manifest before they
//! are decoded, so these bytes come from a holder of the repository secret: a backup
//! host, which must not be able to exhaust a restore host).
//!
//! `PageMap::apply_encoded` sizes its vectors from the declared `page_count` before
//! anything else is checked: a 17-byte delta declaring 2^32 − 1 pages asks for
//! ~137 GB. The page-map bound belongs to the engine (being fixed there), so this
//! target applies the caller's bound itself: inputs declaring more than
//! [`CALLER_BOUND`] pages are not handed to `apply_encoded` (they still go through
//! `decode`, which allocates only per entry present).
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use sqlvault_format::{ChunkId, PageMap, PageMapKind};

/// The most pages this target lets `apply_encoded` size for. A real caller's bound is
/// higher (the manifest's page count); 2^16 pages (2 MiB of ids) keeps the fuzzer fast
/// while still far past anything an input of libFuzzer's length can list.
const CALLER_BOUND: u32 = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let decoded = PageMap::decode(data);
    if let Ok(m) = &decoded {
        let mut last = 0;
        for &(pgno, _) in &m.entries {
            assert!(pgno > last && pgno <= m.page_count);
            last = pgno;
        }
        if m.kind == PageMapKind::Full {
            assert_eq!(m.entries.len(), m.page_count as usize);
        }
        assert_eq!(PageMap::decode(&m.encode()).expect("re-decodes"), *m);
    }

    if data.len() >= 17 && data.starts_with(b"SQLVMAP1") && common::u32_at(data, 9).unwrap() > CALLER_BOUND {
        return;
    }
    let base = [ChunkId([0xee; 32]); 3];
    let (mut pages, mut mapped) = (base.to_vec(), vec![true; 3]);
    let applied = PageMap::apply_encoded(data, &mut pages, &mut mapped);
    assert_eq!(pages.len(), mapped.len());
    match (applied, decoded) {
        (Ok(()), Ok(m)) => {
            assert_eq!(pages.len(), m.page_count as usize);
            for (pgno, id) in m.entries {
                assert_eq!(pages[pgno as usize - 1], id);
                assert!(mapped[pgno as usize - 1]);
            }
        }
        (Err(_), Err(_)) => {}
        (a, d) => panic!("apply_encoded and decode disagree: {a:?} vs {:?}", d.map(|_| ())),
    }
});
