//! The dump chunker over arbitrary bytes (a database's SQL text): every cut is in
//! range and the stream is always consumed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sqlvault_format::DUMP_CHUNKER;

fuzz_target!(|data: &[u8]| {
    let p = DUMP_CHUNKER;
    let mut rest = data;
    while !rest.is_empty() {
        let n = p.cut(rest);
        assert!(n >= 1 && n <= rest.len() && n <= p.max, "cut {n} of {}", rest.len());
        if rest.len() > p.min {
            assert!(n >= p.min);
        }
        rest = &rest[n..];
    }
});
