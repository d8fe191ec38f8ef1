//! Integration tests of sqlvault-sqlite: SQL dumps and loads, SQLCipher.

mod app_collations;
mod copy_freeze;
// SQLCipher tests need the `sqlcipher` feature
// (`cargo test -p sqlvault-sqlite --features sqlcipher`); without it, `no_sqlcipher`
// checks that the same operations fail with the typed error instead.
#[cfg(feature = "sqlcipher")]
mod at_rest;
#[cfg(feature = "sqlcipher")]
mod cipher;
mod dump;
mod follow;
mod hostile;
#[cfg(not(feature = "sqlcipher"))]
mod no_sqlcipher;
mod wal;
