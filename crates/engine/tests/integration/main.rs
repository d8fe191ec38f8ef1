//! The engine's integration tests, in one binary: every test builds its own
//! [`sqlvault_engine::Session`] over a private state directory, so they run in
//! parallel without touching the process environment.

mod backup;
mod cancel_other;
mod catalog;
mod check;
mod copy;
mod copy_keys;
mod flaky;
mod lifecycle;
mod prune;
mod restore;
mod send;
mod session;
mod support;
