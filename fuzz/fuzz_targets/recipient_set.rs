//! `keys/recipients-<generation>`: cleartext, signed, written by anyone with bucket
//! access; backup hosts parse it and check the signature before each backup.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sqlvault_format::RecipientSet;

fn admin_public() -> &'static str {
    static P: OnceLock<String> = OnceLock::new();
    P.get_or_init(|| common::admin().public_hex())
}

fuzz_target!(|data: &[u8]| {
    let Ok(set) = serde_json::from_slice::<RecipientSet>(data) else {
        return;
    };
    let public = admin_public();
    let ok = set.verify(public);
    let _ = set.admin_after(public);
    if let Some(next) = &set.next_admin {
        let _ = set.verify(next);
    }
    // A set that verifies still verifies after a round trip through its JSON: the
    // signature covers the fields, not the spelling.
    let again: RecipientSet =
        serde_json::from_slice(&serde_json::to_vec(&set).expect("serialises")).expect("re-parses");
    assert_eq!(again, set);
    assert_eq!(again.verify(public), ok);
});
