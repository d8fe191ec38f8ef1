//! sqlvault-policy from the outside: the attack corpus, authentication, and the guard.

mod attacks;
mod auth;
mod guard;
mod more_attacks;
mod support;
