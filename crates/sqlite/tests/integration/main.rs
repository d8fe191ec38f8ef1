//! Integration tests of sqlvault-sqlite: SQL dumps and loads.

mod dump;
