//! `policy check`: a policy read against a database's schema, for mistakes that the
//! authorizer would turn into silent denials, or into reads nobody meant to grant.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use rusqlite::Connection;

use crate::names::ColumnRef;
use crate::policy::{Credential, Policy, Role};

/// How much a finding matters (the order is by weight).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Worth a look: a table no role covers, a broad right.
    Low,
    /// A role can read a column marked sensitive, or a grant reads around the rules.
    Medium,
    /// The policy names what the database does not have: a typo denies what was meant
    /// to be granted, or masks nothing.
    High,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
        })
    }
}

/// One problem `lint` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How much it matters.
    pub severity: Severity,
    /// What and where, in one line.
    pub message: String,
}

struct Schema {
    /// Lowercase table name → (kind, lowercase column → hidden flag).
    tables: BTreeMap<String, (String, BTreeMap<String, i64>)>,
}

/// The main schema's tables and columns, through PRAGMA statements (which no table can
/// stand in for, unlike the `pragma_*` table-valued forms).
fn read_schema(conn: &Connection) -> rusqlite::Result<Schema> {
    let mut tables = BTreeMap::new();
    // table_list: schema, name, type, ncol, wr, strict.
    let names: Vec<(String, String)> = conn
        .prepare("PRAGMA main.table_list")?
        .query_map([], |r| Ok((r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    for (name, ty) in names {
        // table_xinfo: cid, name, type, notnull, dflt_value, pk, hidden.
        let cols: BTreeMap<String, i64> = conn
            .prepare(&format!("PRAGMA main.table_xinfo('{}')", name.replace('\'', "''")))?
            .query_map([], |r| Ok((r.get::<_, String>(1)?.to_ascii_lowercase(), r.get(6)?)))?
            .collect::<Result<_, _>>()?;
        tables.insert(name.to_ascii_lowercase(), (ty, cols));
    }
    Ok(Schema { tables })
}

/// Tables that read the file around every grant.
const RAW: &[&str] = &["sqlite_dbpage", "dbstat"];

fn can_read(role: &Role, table: &str, column: &str) -> bool {
    (role.select.all || role.select.names(table))
        && !role.deny.iter().chain(&role.mask).any(|c| c.matches(table, column))
        && {
            let listed: Vec<&ColumnRef> = role
                .allow
                .iter()
                .filter(|c| c.table.as_deref() == Some(table))
                .collect();
            listed.is_empty() || listed.iter().any(|c| c.column == column)
        }
}

/// Reads `policy` against the schema of `conn`'s main database. Findings, most severe
/// first:
/// - high: a grant or column rule naming a table or column the database lacks; a
///   table the guard will deny whole because an index of it holds a hidden column;
/// - medium: a role that can read a column marked `sensitive`; a grant of
///   `sqlite_dbpage` or `dbstat` (raw pages, around every mask);
/// - low: a table no role covers, a role no principal holds, `schema` or `functions =
///   ["*"]` granted;
/// - medium too: hashes whose parameters differ (the decoy that hides which principals
///   exist costs the first one's, so logins of the others take another time).
pub fn lint(policy: &Policy, conn: &Connection) -> rusqlite::Result<Vec<Finding>> {
    let schema = read_schema(conn)?;
    let catalog = crate::guard::read_catalog(conn)?;
    let mut out = BTreeSet::new();
    let mut add = |severity: Severity, message: String| {
        out.insert((std::cmp::Reverse(severity), message));
    };
    let known = |t: &str| schema.tables.contains_key(t) || t == "sqlite_sequence" || t.starts_with("sqlite_stat");
    for (rname, role) in &policy.roles {
        for (what, set) in [
            ("select", &role.select),
            ("insert", &role.insert),
            ("update", &role.update),
            ("delete", &role.delete),
        ] {
            for t in &set.names {
                if RAW.contains(&t.as_str()) {
                    add(
                        Severity::Medium,
                        format!("role {rname}: {what} on {t} reads raw database pages, around every grant and mask"),
                    );
                } else if !known(t) {
                    add(Severity::High, format!("role {rname}: {what} names unknown table {t}"));
                }
            }
        }
        for (what, list) in [("mask", &role.mask), ("deny", &role.deny), ("allow", &role.allow)] {
            for c in list {
                check_column(&schema, &mut add, &format!("role {rname}: {what}"), c);
            }
        }
        if role.schema {
            add(
                Severity::Low,
                format!(
                    "role {rname}: schema is granted: it can drop tables, and create triggers that run under other principals' statements"
                ),
            );
        }
        if role.functions.iter().any(|f| f == "*") {
            add(
                Severity::Low,
                format!("role {rname}: functions = [\"*\"] grants every application function"),
            );
        }
        if !policy.principals.values().any(|p| &p.role == rname) {
            add(Severity::Low, format!("role {rname}: no principal holds it"));
        }
        // The guard denies every read of a table one of whose indexes holds a column
        // the role may not see: say so here, where it can still be fixed.
        let rules = crate::rules::Rules::new(rname, role, catalog.clone());
        for t in schema.tables.keys() {
            if let Some(why) = rules.ordered_reason(t) {
                add(
                    Severity::High,
                    format!(
                        "role {rname}: {why}: the guard denies every read of {t} (drop the index, or unmask the column)"
                    ),
                );
            }
        }
    }
    for c in &policy.sensitive {
        check_column(&schema, &mut add, "sensitive", c);
        for (t, (_, cols)) in &schema.tables {
            for col in cols.keys() {
                if !c.matches(t, col) {
                    continue;
                }
                for (rname, role) in &policy.roles {
                    if can_read(role, t, col) {
                        let holders: Vec<&str> = policy
                            .principals
                            .iter()
                            .filter(|(_, p)| &p.role == rname)
                            .map(|(n, _)| n.as_str())
                            .collect();
                        add(
                            Severity::Medium,
                            format!(
                                "role {rname} can read sensitive column {t}.{col} (principals: {})",
                                if holders.is_empty() {
                                    "none".to_string()
                                } else {
                                    holders.join(", ")
                                }
                            ),
                        );
                    }
                }
            }
        }
    }
    for (t, (ty, _)) in &schema.tables {
        if ty == "shadow" || t.starts_with("sqlite_") {
            continue;
        }
        let covered = policy.roles.values().any(|r| {
            [&r.select, &r.insert, &r.update, &r.delete]
                .iter()
                .any(|s| s.all || s.names.contains(t))
        });
        if !covered {
            add(
                Severity::Low,
                format!("{ty} {t} is covered by no role: no principal can use it"),
            );
        }
    }
    let params: BTreeSet<(u32, u32, u32)> = policy
        .principals
        .values()
        .filter_map(|p| match &p.credential {
            Credential::PasswordHash(h) => crate::hash::hash_parameters(h),
            Credential::Uid(_) => None,
        })
        .collect();
    if params.len() > 1 {
        add(
            Severity::Medium,
            "password hashes use different parameters: logins of some principals take longer than a miss, which tells their names apart; rehash them alike".into(),
        );
    }
    Ok(out
        .into_iter()
        .map(|(s, message)| Finding { severity: s.0, message })
        .collect())
}

fn check_column(schema: &Schema, add: &mut impl FnMut(Severity, String), what: &str, c: &ColumnRef) {
    match &c.table {
        Some(t) => match schema.tables.get(t) {
            None => add(Severity::High, format!("{what} names unknown table {t} ({c})")),
            Some((_, cols)) if !cols.contains_key(&c.column) && c.column != "rowid" => {
                add(Severity::High, format!("{what} names unknown column {c}"))
            }
            Some(_) => {}
        },
        None => {
            if !schema.tables.values().any(|(_, cols)| cols.contains_key(&c.column)) {
                add(Severity::Medium, format!("{what}: no table has a column {}", c.column));
            }
        }
    }
}
