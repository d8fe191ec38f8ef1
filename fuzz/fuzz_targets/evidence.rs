//! Evidence records (`evidence/<id>`, JSON inside a MAC'd envelope written by a holder
//! of the repository secret): the body's parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sqlvault_engine::evidence::Evidence;

fuzz_target!(|data: &[u8]| {
    let Ok(e) = serde_json::from_slice::<Evidence>(data) else {
        return;
    };
    let again: Evidence = serde_json::from_slice(&serde_json::to_vec(&e).expect("serialises")).expect("re-parses");
    // Floats may move by an ulp through serde_json's text; everything else is exact.
    assert_eq!(
        (
            &again.kind,
            again.at_ms,
            &again.snapshot_id,
            &again.name,
            again.ok,
            &again.checks,
            &again.code
        ),
        (&e.kind, e.at_ms, &e.snapshot_id, &e.name, e.ok, &e.checks, &e.code)
    );
    assert_eq!(
        (again.snapshot_created_ms, &again.host),
        (e.snapshot_created_ms, &e.host)
    );
});
