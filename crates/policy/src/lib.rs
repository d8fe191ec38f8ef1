//! Database access control for SQLite: declarative roles enforced by SQLite's
//! authorizer on the application's own rusqlite connections.
//!
//! SQLite has no users. What it has is the authorizer: a callback asked, while each
//! statement is prepared, about every table and column it reads or writes, every
//! function, pragma, schema change and transaction. This crate answers it from a
//! policy — roles granting tables and actions, with columns allowed, masked (read as
//! NULL) or denied; schema changes, temporary objects, pragmas (read-only ones),
//! functions and transactions as explicit rights — for one authenticated principal per
//! connection. Everything not granted is denied.
//!
//! - [`Policy`]: parsed from TOML ([`Policy::from_toml`], [`Policy::load`]) or built
//!   in code ([`Policy::new`], [`Policy::with_role`], [`Policy::with_principal`]).
//! - [`Policy::authenticate`]: an argon2id check in constant time whether or not the
//!   principal exists; [`Policy::authenticate_uid`] for OS users;
//!   [`hash_secret`] makes the hashes a policy holds.
//! - [`Policy::guard`]: a [`Guarded`] connection for one [`Identity`], with SQLite's
//!   defensive settings on and an optional [`AuditSink`] receiving every decision.
//!
//! What it cannot do: the authorizer sees SQL, not files. A process that can read the
//! database file reads everything; pair a policy with file permissions (which
//! `sqlvault audit` checks) and SQLCipher. See docs/policy.md.
//!
//! # Example: one connection per principal
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use rusqlite::Connection;
//! use sqlvault_policy::{AuditEvent, Decision, GuardOptions, Policy, hash_secret};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("shop.db");
//! let setup = Connection::open(&path)?;
//! setup.execute_batch(
//!     "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT, password_hash TEXT);
//!      CREATE TABLE orders(id INTEGER PRIMARY KEY, user_id INT, total INT);
//!      INSERT INTO users VALUES (1, 'ada', 'secret-hash');
//!      INSERT INTO orders VALUES (1, 1, 42);",
//! )?;
//!
//! // Normally read from a file with Policy::load; hashes come from `sqlvault policy hash`.
//! let alice_hash = hash_secret(b"correct horse", None, None)?;
//! let policy = Policy::from_toml(&format!(
//!     r#"
//!     [roles.analyst]
//!     select = ["orders", "users"]
//!     mask   = ["users.password_hash"]
//!     [roles.app]
//!     select = ["*"]
//!     insert = ["orders"]
//!     [principals.alice]
//!     role = "analyst"
//!     password_hash = "{alice_hash}"
//!     [principals.shop]
//!     role = "app"
//!     uid = 1000
//!     "#
//! ))?;
//!
//! // Every decision, allowed or not, reaches the audit sink with the principal.
//! let denials = Arc::new(Mutex::new(Vec::new()));
//! let sink = {
//!     let denials = Arc::clone(&denials);
//!     move |e: &AuditEvent<'_>| {
//!         if e.decision == Decision::Deny {
//!             denials.lock().unwrap().push(format!("{} {} {:?}", e.principal, e.action, e.object));
//!         }
//!     }
//! };
//!
//! // Alice logs in: a wrong secret and an unknown name fail alike.
//! assert!(policy.authenticate("alice", b"wrong").is_err());
//! assert!(policy.authenticate("mallory", b"correct horse").is_err());
//! let alice = policy.authenticate("alice", b"correct horse")?;
//! let conn = policy.guard_with(
//!     Connection::open(&path)?,
//!     &alice,
//!     GuardOptions::default().with_audit(Arc::new(sink)),
//! )?;
//!
//! // She reads orders and users; the masked column reads as NULL, even in WHERE.
//! let (name, hash): (String, Option<String>) =
//!     conn.query_row("SELECT name, password_hash FROM users", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
//! assert_eq!((name.as_str(), hash), ("ada", None));
//! let n: i64 = conn.query_row(
//!     "SELECT count(*) FROM users WHERE password_hash = 'secret-hash'", [], |r| r.get(0))?;
//! assert_eq!(n, 0);
//!
//! // Writing is not granted, and neither is ATTACH: the statement fails to prepare.
//! assert!(conn.execute("DELETE FROM orders", []).is_err());
//! assert_eq!(conn.last_denial().unwrap().to_string(),
//!            "delete orders: delete on orders is not granted for role analyst");
//! assert!(conn.execute_batch("ATTACH 'other.db' AS o").is_err());
//! assert_eq!(denials.lock().unwrap().len(), 2);
//!
//! // The application's own service principal, proven by its uid, on its own connection.
//! let shop = policy.authenticate_uid("shop", 1000)?;
//! let app = policy.guard(Connection::open(&path)?, &shop)?;
//! app.execute("INSERT INTO orders(user_id, total) VALUES (1, 7)", [])?;
//! assert!(app.execute("UPDATE orders SET total = 0", []).is_err());
//! # Ok(())
//! # }
//! ```

mod action;
mod auth;
mod guard;
mod hash;
mod lint;
mod lists;
mod names;
mod policy;
mod recent;
mod rules;

use std::path::PathBuf;

pub use auth::Identity;
pub use guard::{AuditEvent, AuditSink, Denial, GuardOptions, Guarded, TracingAudit};
pub use hash::{DEFAULT_ITERATIONS, DEFAULT_MEMORY_KIB, hash_parameters, hash_secret};
pub use lint::{Finding, Severity, lint};
pub use lists::{BUILTIN_FUNCTIONS, CREATABLE_MODULES, NEVER_FUNCTIONS, PRAGMAS_TAKING_A_NAME, READ_ONLY_PRAGMAS};
pub use names::{ColumnRef, NameHasher, NameMap, NameSet, TableSet};
pub use policy::{Credential, Policy, Principal, Role};
pub use rules::Decision;
pub use rusqlite;

/// A policy that cannot be read or is not valid. Messages name the role, principal or
/// line, and never quote a password hash.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML of the policy's shape.
    #[error("policy is not valid: {0}")]
    Parse(String),
    /// Valid TOML, but a rule that cannot hold.
    #[error("policy is not valid: {0}")]
    Invalid(String),
    /// An error in a named file.
    #[error("policy {}: {message}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl PolicyError {
    fn in_file(self, path: &std::path::Path) -> PolicyError {
        match self {
            PolicyError::Parse(m) | PolicyError::Invalid(m) => PolicyError::InFile {
                path: path.to_path_buf(),
                message: m,
            },
            e => e,
        }
    }
}

/// Authentication failed, or a hash could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// Unknown principal, wrong secret or wrong uid: deliberately one answer.
    #[error("authentication failed for principal {principal}")]
    Rejected {
        /// The name given.
        principal: String,
    },
    /// Hash parameters out of range.
    #[error("cannot hash: {0}")]
    Parameters(String),
}

/// A connection could not be guarded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuardError {
    /// The identity does not come from this policy.
    #[error("principal {0} is not in this policy with that role")]
    Identity(String),
    /// The connection has attached databases, which a policy cannot cover.
    #[error("the connection has attached databases ({0}); a guarded connection has only main")]
    Attached(String),
    /// The connection has temporary objects, which a policy cannot cover.
    #[error("the connection has {0} temporary objects; guard a connection before making any")]
    TempObjects(u64),
    /// A defensive setting did not take.
    #[error("SQLite refused the defensive setting {0}")]
    Setting(String),
    /// SQLite failed.
    #[error("SQLite: {0}")]
    Sqlite(rusqlite::Error),
}
