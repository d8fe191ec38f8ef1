//! Integration tests of sqlvault-sqlite: SQL dumps and loads, SQLCipher.

mod cipher;
mod dump;
mod hostile;
