//! The `config` object's JSON (read after age decryption: written by whoever holds a
//! recipient's identity, or damaged), and what is parsed out of its fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sqlvault_format::{AdminKey, RepoConfig, RepoSecret};

fuzz_target!(|data: &[u8]| {
    let Ok(c) = serde_json::from_slice::<RepoConfig>(data) else {
        return;
    };
    let _ = format!("{c:?}");
    if let Some(s) = RepoSecret::from_hex(&c.secret) {
        let _ = (s.keys(), s.fingerprint());
    }
    if let Some(k) = c.admin_key.as_deref().and_then(AdminKey::from_hex) {
        let public = k.public_hex();
        if let Some(set) = &c.published_set {
            let _ = set.verify(&public);
            let _ = set.admin_after(&public);
        }
    }
    // What parses serialises, and that parses to the same bytes again.
    let once = serde_json::to_vec(&c).expect("serialises");
    let c2: RepoConfig = serde_json::from_slice(&once).expect("re-parses");
    assert_eq!(serde_json::to_vec(&c2).expect("serialises"), once);
});
