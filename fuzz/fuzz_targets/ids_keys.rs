//! The small text decoders: object ids (from bucket listings, which a bucket writer
//! controls), repository ids, hex secrets and admin keys (from config and write-key
//! files), and admin signatures (`public|signature|message`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sqlvault_format::{AdminKey, ObjectId, RepoSecret, is_repo_id, verify_admin_signature};

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    if let Ok(id) = s.parse::<ObjectId>() {
        assert_eq!(id.to_string().parse::<ObjectId>().expect("re-parses"), id);
        assert_eq!(id.short().len(), 8);
    }
    if let Ok(id) = serde_json::from_slice::<ObjectId>(data) {
        assert_eq!(id.to_string().len(), 32);
    }
    if is_repo_id(&s) {
        assert!(s.parse::<ObjectId>().is_ok());
    }
    if let Some(secret) = RepoSecret::from_hex(&s) {
        let hex = secret.to_hex();
        assert_eq!(RepoSecret::from_hex(&hex).map(|x| x.to_hex()), Some(hex));
    }
    if let Some(k) = AdminKey::from_hex(&s) {
        assert_eq!(k.public_hex().len(), 64);
    }
    let mut parts = data.splitn(3, |&c| c == b'|');
    if let (Some(public), Some(sig), Some(msg)) = (parts.next(), parts.next(), parts.next()) {
        let _ = verify_admin_signature(&String::from_utf8_lossy(public), msg, &String::from_utf8_lossy(sig));
    }
});
