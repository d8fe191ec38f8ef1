//! `sqlvault.json`, the cleartext marker anyone with bucket access can write.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sqlvault_format::{RepoMarker, is_repo_id};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = RepoMarker::decode(data) {
        // The id names a local directory: nothing but 32 lowercase hex digits passes.
        assert!(is_repo_id(&m.repo_id) && m.repo_id.len() == 32);
        let again = serde_json::to_vec(&m).expect("serialises");
        assert_eq!(RepoMarker::decode(&again).expect("re-decodes"), m);
    }
});
