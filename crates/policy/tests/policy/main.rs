//! sqlvault-policy from the outside: the attack corpus, authentication, and the guard.

mod attacks;
mod attacks_round2;
mod auth;
mod guard;
mod more_attacks;
mod support;
