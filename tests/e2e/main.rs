//! End-to-end tests: they run the built `sqlvault` binary as a user would.
mod support;
