//! The engine's integration tests, in one binary: every test builds its own
//! [`sqlvault_engine::Session`] over a private state directory, so they run in
//! parallel without touching the process environment.

mod copy;
mod flaky;
mod lifecycle;
