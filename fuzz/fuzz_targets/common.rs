//! What several targets share: the fixed repository secret and admin key the seed
//! corpus was written with (`cargo xtask fuzz --write-seeds`), so that MAC'd and signed
//! seeds authenticate and the fuzzer starts behind the checks.

#![allow(dead_code)]

use sqlvault_format::{AdminKey, RepoKeys, RepoSecret};

/// The repository secret of every seed (32 × 0x07).
pub fn keys() -> RepoKeys {
    RepoSecret::from_bytes([7; 32]).keys()
}

/// The admin key that signed the recipient-set seeds (32 × 0x08).
pub fn admin() -> AdminKey {
    AdminKey::from_hex(&"08".repeat(32)).expect("hex")
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a little-endian u32 at `at`, if the input is long enough.
pub fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}
