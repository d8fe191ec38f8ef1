//! Integration tests of sqlvault-sqlite: SQL dumps and loads, SQLCipher.

mod app_collations;
mod at_rest;
mod cipher;
mod dump;
mod hostile;
