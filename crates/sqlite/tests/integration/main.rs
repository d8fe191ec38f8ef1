//! Integration tests of sqlvault-sqlite: SQL dumps and loads, SQLCipher.

mod at_rest;
mod cipher;
mod dump;
mod hostile;
mod review16;
