//! Table and column names as SQLite compares them: ASCII case-insensitively.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

/// Runs `f` on the ASCII-lowercase form of `s`, without allocating for names of up to
/// 64 bytes: the authorizer runs for every column of every statement prepared.
pub(crate) fn with_lower<R>(s: &str, f: impl FnOnce(&str) -> R) -> R {
    if !s.bytes().any(|b| b.is_ascii_uppercase()) {
        return f(s);
    }
    let mut buf = [0u8; 64];
    if s.len() <= buf.len() {
        let b = &mut buf[..s.len()];
        b.copy_from_slice(s.as_bytes());
        b.make_ascii_lowercase();
        // Lowercasing ASCII bytes keeps UTF-8 valid.
        match std::str::from_utf8(b) {
            Ok(l) => f(l),
            Err(_) => f(&s.to_ascii_lowercase()),
        }
    } else {
        f(&s.to_ascii_lowercase())
    }
}

/// FNV-1a: the authorizer hashes a table name or two per call, and SipHash's
/// resistance to chosen collisions buys nothing here — the sets are the policy's and
/// the schema's names, not the caller's.
#[derive(Debug, Clone, Copy)]
pub struct NameHasher(u64);

impl Default for NameHasher {
    fn default() -> Self {
        NameHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for NameHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// A set of lowercase names, hashed with [`NameHasher`].
pub type NameSet = HashSet<String, BuildHasherDefault<NameHasher>>;
/// A map from lowercase names, hashed with [`NameHasher`].
pub type NameMap<V> = HashMap<String, V, BuildHasherDefault<NameHasher>>;

/// A set of tables: every table (`"*"`) and/or names, kept lowercase.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableSet {
    /// `"*"` was given.
    pub all: bool,
    /// The names given, lowercase.
    pub names: NameSet,
}

impl TableSet {
    /// Parses a list of names; `"*"` means every table.
    pub fn parse<S: AsRef<str>>(list: &[S]) -> Result<TableSet, String> {
        let mut set = TableSet::default();
        for s in list {
            let s = s.as_ref();
            if s == "*" {
                set.all = true;
            } else if s.is_empty() || s.contains('.') || s.chars().any(|c| c.is_control()) {
                return Err(format!("{s:?} is not a table name"));
            } else {
                set.names.insert(s.to_ascii_lowercase());
            }
        }
        Ok(set)
    }

    /// Whether `name` is listed by name (not through `"*"`).
    pub fn names(&self, name: &str) -> bool {
        with_lower(name, |l| self.names.contains(l))
    }

    /// [`TableSet::names`] for a name already lowercase.
    pub(crate) fn names_lower(&self, lower: &str) -> bool {
        !self.names.is_empty() && self.names.contains(lower)
    }

    /// Covered by `"*"` or by name (`lower` already lowercase).
    pub(crate) fn covers_lower(&self, lower: &str) -> bool {
        self.all || self.names_lower(lower)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        !self.all && self.names.is_empty()
    }
}

/// `table.column`, or `*.column` for that column in every table; lowercase.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ColumnRef {
    /// The table (`None`: every table).
    pub table: Option<String>,
    /// The column.
    pub column: String,
}

impl ColumnRef {
    /// Parses `table.column` (split at the first dot); `*.column` when `star`.
    pub fn parse(s: &str, star: bool) -> Result<ColumnRef, String> {
        let Some((t, c)) = s.split_once('.') else {
            return Err(format!("{s:?} is not table.column"));
        };
        if c.is_empty() || t.is_empty() || s.chars().any(|ch| ch.is_control()) {
            return Err(format!("{s:?} is not table.column"));
        }
        let table = match t {
            "*" if star => None,
            "*" => return Err(format!("{s:?}: a table must be named here")),
            t => Some(t.to_ascii_lowercase()),
        };
        Ok(ColumnRef {
            table,
            column: c.to_ascii_lowercase(),
        })
    }

    /// Whether this names `column` of `table` (both lowercase).
    pub fn matches(&self, table: &str, column: &str) -> bool {
        self.column == column && self.table.as_deref().is_none_or(|t| t == table)
    }
}

impl fmt::Display for ColumnRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.table.as_deref().unwrap_or("*"), self.column)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_compare_as_sqlite_compares_them() {
        let s = TableSet::parse(&["Users", "orders"]).unwrap();
        assert!(s.names("USERS") && s.names("users") && s.names("Orders"));
        assert!(!s.names("user"));
        let long = "X".repeat(100);
        let s = TableSet::parse(&[long.as_str()]).unwrap();
        assert!(s.names(&"x".repeat(100)));
        assert!(TableSet::parse(&["a.b"]).is_err());
        let c = ColumnRef::parse("*.Password_Hash", true).unwrap();
        assert!(c.matches("users", "password_hash") && c.matches("staff", "password_hash"));
        assert!(ColumnRef::parse("*.x", false).is_err());
        assert!(ColumnRef::parse("nodot", true).is_err());
    }
}
