//! The policy: roles, their grants, and the principals who hold them. Parsed from TOML
//! or built in code; validated once, so the authorizer never meets a malformed rule.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;

use crate::PolicyError;
use crate::lists::READ_ONLY_PRAGMAS;
use crate::names::{ColumnRef, TableSet};

/// A role: what its principals may do. Everything not granted is denied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Role {
    /// Tables and views that may be read (`"*"`: every table and view of the main
    /// database, but never SQLite's internal tables, virtual tables' shadow tables or
    /// `dbstat`/`sqlite_dbpage`, which must be named to be granted).
    pub select: TableSet,
    /// Tables that may be inserted into.
    pub insert: TableSet,
    /// Tables that may be updated.
    pub update: TableSet,
    /// Tables that may be deleted from.
    pub delete: TableSet,
    /// Columns that read as NULL (`table.column`, or `*.column` for every table), and
    /// that may not be written.
    pub mask: Vec<ColumnRef>,
    /// Columns whose every use fails the statement.
    pub deny: Vec<ColumnRef>,
    /// Per-table column allow-lists: when a table has entries here, its other columns
    /// are denied.
    pub allow: Vec<ColumnRef>,
    /// CREATE, ALTER, DROP, REINDEX and ANALYZE in the main database.
    pub schema: bool,
    /// Temporary tables, views, triggers and indexes (this connection's own), and
    /// reading what they hold.
    pub temp: bool,
    /// BEGIN, COMMIT, ROLLBACK and savepoints.
    pub transactions: bool,
    /// Reading the schema: `sqlite_schema`, `sqlite_temp_schema`, `sqlite_sequence`,
    /// `sqlite_stat*`.
    pub catalog: bool,
    /// Read-only pragmas (from [`READ_ONLY_PRAGMAS`]).
    pub pragmas: Vec<String>,
    /// Functions beyond SQLite's built-in ones (see [`crate::BUILTIN_FUNCTIONS`]);
    /// `"*"` for every function the connection has.
    pub functions: Vec<String>,
}

/// How a principal proves who it is.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// An argon2id hash in PHC form (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`), as
    /// `sqlvault policy hash` prints.
    PasswordHash(String),
    /// The operating-system user with this uid, proven by the process's real uid.
    Uid(u32),
}

impl fmt::Debug for Credential {
    // A hash is a secret's verifier: never printed, even in debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::PasswordHash(_) => f.write_str("PasswordHash(<redacted>)"),
            Credential::Uid(u) => write!(f, "Uid({u})"),
        }
    }
}

/// Someone who may connect, and the role they hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The role's name.
    pub role: String,
    /// How the principal authenticates.
    pub credential: Credential,
}

/// Roles, principals and sensitive columns. Build one with [`Policy::from_toml`],
/// [`Policy::load`] or [`Policy::new`] and the `with_*` methods; it is validated as
/// it is built.
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) roles: BTreeMap<String, Role>,
    pub(crate) principals: BTreeMap<String, Principal>,
    pub(crate) sensitive: Vec<ColumnRef>,
    /// Verified for an unknown principal, so a miss costs what a wrong secret costs.
    pub(crate) decoy: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    sensitive: Vec<String>,
    #[serde(default)]
    roles: BTreeMap<String, RawRole>,
    #[serde(default)]
    principals: BTreeMap<String, RawPrincipal>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRole {
    #[serde(default)]
    select: Vec<String>,
    #[serde(default)]
    insert: Vec<String>,
    #[serde(default)]
    update: Vec<String>,
    #[serde(default)]
    delete: Vec<String>,
    #[serde(default)]
    mask: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    schema: bool,
    #[serde(default)]
    temp: bool,
    #[serde(default)]
    transactions: bool,
    #[serde(default)]
    catalog: bool,
    #[serde(default)]
    pragmas: Vec<String>,
    #[serde(default)]
    functions: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrincipal {
    role: String,
    #[serde(default)]
    password_hash: Option<String>,
    #[serde(default)]
    uid: Option<u32>,
}

impl Role {
    fn from_raw(name: &str, r: RawRole) -> Result<Role, PolicyError> {
        let bad = |what: String| PolicyError::Invalid(format!("role {name}: {what}"));
        let tables = |list: Vec<String>, what: &str| TableSet::parse(&list).map_err(|e| bad(format!("{what}: {e}")));
        let columns = |list: Vec<String>, what: &str, star: bool| {
            list.iter()
                .map(|s| ColumnRef::parse(s, star).map_err(|e| bad(format!("{what}: {e}"))))
                .collect::<Result<Vec<_>, _>>()
        };
        let mut pragmas = Vec::new();
        for p in r.pragmas {
            let l = p.to_ascii_lowercase();
            if !READ_ONLY_PRAGMAS.contains(&l.as_str()) {
                return Err(bad(format!(
                    "pragma {p:?} is not a read-only pragma; only these can be granted: {}",
                    READ_ONLY_PRAGMAS.join(", ")
                )));
            }
            pragmas.push(l);
        }
        let mut functions = Vec::new();
        for f in r.functions {
            if f.is_empty() || !f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '*') {
                return Err(bad(format!("function {f:?} is not a function name")));
            }
            let l = f.to_ascii_lowercase();
            if crate::lists::NEVER_FUNCTIONS.contains(&l.as_str()) {
                return Err(bad(format!("function {f} can never be granted")));
            }
            functions.push(l);
        }
        Ok(Role {
            select: tables(r.select, "select")?,
            insert: tables(r.insert, "insert")?,
            update: tables(r.update, "update")?,
            delete: tables(r.delete, "delete")?,
            mask: columns(r.mask, "mask", true)?,
            deny: columns(r.deny, "deny", true)?,
            allow: columns(r.allow, "allow", false)?,
            schema: r.schema,
            temp: r.temp,
            transactions: r.transactions,
            catalog: r.catalog,
            pragmas,
            functions,
        })
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 128 && n.chars().all(|c| c.is_ascii_graphic())
}

impl Policy {
    /// An empty policy: no roles, no principals; everything denied.
    pub fn new() -> Policy {
        Policy {
            roles: BTreeMap::new(),
            principals: BTreeMap::new(),
            sensitive: Vec::new(),
            decoy: crate::hash::DECOY.to_string(),
        }
    }

    /// Parses and validates a policy file's text. Unknown keys, a principal whose role
    /// is not defined, a password hash that is not argon2id, a pragma that writes and a
    /// malformed table or column reference are errors (none of them quotes a hash back).
    pub fn from_toml(text: &str) -> Result<Policy, PolicyError> {
        let raw: RawPolicy = toml::from_str(text).map_err(|e| PolicyError::Parse(toml_error(text, &e)))?;
        let mut p = Policy::new();
        for (name, r) in raw.roles {
            if !valid_name(&name) {
                return Err(PolicyError::Invalid(format!(
                    "role name {name:?} is not printable ASCII"
                )));
            }
            let role = Role::from_raw(&name, r)?;
            p.roles.insert(name, role);
        }
        for (name, r) in raw.principals {
            let credential = match (r.password_hash, r.uid) {
                (Some(h), None) => Credential::PasswordHash(h),
                (None, Some(u)) => Credential::Uid(u),
                (Some(_), Some(_)) => {
                    return Err(PolicyError::Invalid(format!(
                        "principal {name}: give password_hash or uid, not both"
                    )));
                }
                (None, None) => {
                    return Err(PolicyError::Invalid(format!(
                        "principal {name}: no credential (give password_hash or uid)"
                    )));
                }
            };
            p = p.with_principal(&name, &r.role, credential)?;
        }
        for s in raw.sensitive {
            let c = ColumnRef::parse(&s, true).map_err(|e| PolicyError::Invalid(format!("sensitive: {e}")))?;
            p.sensitive.push(c);
        }
        Ok(p)
    }

    /// Reads and parses a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        Policy::from_toml(&text).map_err(|e| e.in_file(path))
    }

    /// Adds (or replaces) a role.
    pub fn with_role(mut self, name: &str, role: Role) -> Result<Policy, PolicyError> {
        if !valid_name(name) {
            return Err(PolicyError::Invalid(format!(
                "role name {name:?} is not printable ASCII"
            )));
        }
        for p in &role.pragmas {
            if !READ_ONLY_PRAGMAS.contains(&p.as_str()) {
                return Err(PolicyError::Invalid(format!(
                    "role {name}: pragma {p:?} is not a lowercase read-only pragma"
                )));
            }
        }
        for f in &role.functions {
            if crate::lists::NEVER_FUNCTIONS.contains(&f.to_ascii_lowercase().as_str()) {
                return Err(PolicyError::Invalid(format!(
                    "role {name}: function {f} can never be granted"
                )));
            }
        }
        self.roles.insert(name.to_string(), role);
        Ok(self)
    }

    /// Adds (or replaces) a principal holding role `role`, which must be defined.
    /// A password hash must be argon2id in PHC form.
    pub fn with_principal(mut self, name: &str, role: &str, credential: Credential) -> Result<Policy, PolicyError> {
        if !valid_name(name) {
            return Err(PolicyError::Invalid(format!(
                "principal name {name:?} is not printable ASCII"
            )));
        }
        if !self.roles.contains_key(role) {
            return Err(PolicyError::Invalid(format!(
                "principal {name}: role {role:?} is not defined"
            )));
        }
        if let Credential::PasswordHash(h) = &credential {
            crate::hash::check_hash(h).map_err(|why| PolicyError::Invalid(format!("principal {name}: {why}")))?;
        }
        self.principals.insert(
            name.to_string(),
            Principal {
                role: role.to_string(),
                credential,
            },
        );
        let first = self.principals.values().find_map(|p| match &p.credential {
            Credential::PasswordHash(h) => Some(h.as_str()),
            Credential::Uid(_) => None,
        });
        self.decoy = crate::hash::decoy_for(first);
        Ok(self)
    }

    /// Marks columns sensitive (`table.column` or `*.column`): `sqlvault policy check`
    /// reports every role that can read them.
    pub fn with_sensitive(mut self, columns: &[&str]) -> Result<Policy, PolicyError> {
        for c in columns {
            self.sensitive
                .push(ColumnRef::parse(c, true).map_err(|e| PolicyError::Invalid(format!("sensitive: {e}")))?);
        }
        Ok(self)
    }

    /// The roles, by name.
    pub fn roles(&self) -> &BTreeMap<String, Role> {
        &self.roles
    }

    /// The principals, by name.
    pub fn principals(&self) -> &BTreeMap<String, Principal> {
        &self.principals
    }

    /// The columns marked sensitive.
    pub fn sensitive(&self) -> &[ColumnRef] {
        &self.sensitive
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy::new()
    }
}

/// A TOML error as one line: its message and line, never the file's text (which
/// may hold a hash) nor a quoted value.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let msg = redact_quoted(&e.message().split_whitespace().collect::<Vec<_>>().join(" "));
    match e.span() {
        Some(span) => format!(
            "line {}: {msg}",
            text[..span.start.min(text.len())].matches('\n').count() + 1
        ),
        None => msg,
    }
}

/// Replaces every double-quoted part of a message with `"…"`: serde quotes the value
/// it could not take, and a misplaced hash must not reach a log.
fn redact_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut inside = false;
    for c in s.chars() {
        if c == '"' {
            if inside {
                out.push_str("…\"");
            } else {
                out.push('"');
            }
            inside = !inside;
        } else if !inside {
            out.push(c);
        }
    }
    out
}
