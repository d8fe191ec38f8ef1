//! The guard's own promises: defensive settings, no attached databases, identities
//! from this policy only, the audit sink, and schema changes seen after a refresh.

use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use rusqlite::config::DbConfig;
use sqlvault_policy::{AuditEvent, Decision, GuardError, GuardOptions, Policy};

use crate::support::*;

fn fixture_conn(dir: &tempfile::TempDir) -> Connection {
    let path = dir.path().join("shop.db");
    fixture(&path, Variant::A);
    Connection::open(&path).unwrap()
}

#[test]
fn defensive_settings_are_on() {
    let dir = tempfile::tempdir().unwrap();
    let p = policy();
    let g = p
        .guard(fixture_conn(&dir), &p.trusted_identity("admin").unwrap())
        .unwrap();
    assert!(g.db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE).unwrap());
    assert!(!g.db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA).unwrap());
    assert!(!g.db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_FTS3_TOKENIZER).unwrap());
    assert_eq!(g.limit(rusqlite::limits::Limit::SQLITE_LIMIT_ATTACHED).unwrap(), 0);
    let conn = g.into_inner().unwrap();
    // Unguarded again, but still defensive: the attach limit stays at zero.
    assert!(conn.execute_batch("ATTACH ':memory:' AS m").is_err());
}

#[test]
fn a_connection_with_attached_databases_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = policy();
    let conn = fixture_conn(&dir);
    conn.execute_batch("ATTACH ':memory:' AS side").unwrap();
    let e = p.guard(conn, &p.trusted_identity("admin").unwrap()).unwrap_err();
    assert!(matches!(e, GuardError::Attached(ref n) if n == "side"), "{e}");
}

#[test]
fn an_identity_from_another_policy_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let other =
        Policy::from_toml("[roles.admin]\nselect=[\"*\"]\n[principals.mallory]\nrole=\"admin\"\nuid=1\n").unwrap();
    let who = other.trusted_identity("mallory").unwrap();
    let e = policy().guard(fixture_conn(&dir), &who).unwrap_err();
    assert!(matches!(e, GuardError::Identity(_)), "{e}");
    // Same name, another role: refused too.
    let other =
        Policy::from_toml("[roles.admin]\nselect=[\"*\"]\n[principals.reader]\nrole=\"admin\"\nuid=1\n").unwrap();
    let who = other.trusted_identity("reader").unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    assert!(policy().guard(fixture_conn(&dir2), &who).is_err());
}

#[test]
fn the_audit_sink_sees_every_decision_with_the_principal() {
    let dir = tempfile::tempdir().unwrap();
    let p = policy();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = {
        let seen = Arc::clone(&seen);
        move |e: &AuditEvent<'_>| {
            seen.lock().unwrap().push(format!(
                "{} {} {:?} {:?} {:?}",
                e.principal, e.action, e.object, e.detail, e.decision
            ))
        }
    };
    let g = p
        .guard_with(
            fixture_conn(&dir),
            &p.trusted_identity("returner").unwrap(),
            GuardOptions::default().with_audit(Arc::new(sink)),
        )
        .unwrap();
    g.query_row("SELECT name, password_hash FROM users LIMIT 1", [], |_| Ok(()))
        .unwrap();
    assert!(g.prepare("SELECT value FROM secrets").is_err());
    let seen = seen.lock().unwrap().join("\n");
    assert!(
        seen.contains(r#"returner read Some("users") Some("name") Allow"#),
        "{seen}"
    );
    assert!(
        seen.contains(r#"returner read Some("users") Some("password_hash") Mask"#),
        "{seen}"
    );
    assert!(
        seen.contains(r#"returner read Some("secrets") Some("value") Deny"#),
        "{seen}"
    );
    assert_eq!(Decision::Mask, Decision::Mask);
}

#[test]
fn a_table_made_later_is_seen_after_refresh_and_shadow_like_names_wait_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shop.db");
    fixture(&path, Variant::A);
    let p = policy();
    let g = p
        .guard(Connection::open(&path).unwrap(), &p.trusted_identity("admin").unwrap())
        .unwrap();
    let other = Connection::open(&path).unwrap();
    other
        .execute_batch("CREATE TABLE later(x); INSERT INTO later VALUES (1); CREATE VIRTUAL TABLE notes USING fts5(x); INSERT INTO notes VALUES ('n');")
        .unwrap();
    // A plain new table is covered by "*" at once.
    assert_eq!(
        g.query_row("SELECT x FROM later", [], |r| r.get::<_, i64>(0)).unwrap(),
        1
    );
    // A new FTS table's shadow tables look like shadow tables: named grants only until
    // the guard has read the schema again.
    assert!(g.prepare("SELECT * FROM notes_content").is_err());
    g.refresh().unwrap();
    assert!(g.prepare("SELECT * FROM notes_content").is_ok());
    assert_eq!(
        g.query_row("SELECT count(*) FROM notes WHERE notes MATCH 'n'", [], |r| r
            .get::<_, i64>(0))
            .unwrap(),
        1
    );
}

#[test]
fn lint_reports_typos_sensitive_readers_ordering_indexes_and_uncovered_tables() {
    let dir = tempfile::tempdir().unwrap();
    let conn = fixture_conn(&dir);
    let p = Policy::from_toml(
        r#"sensitive = ["users.password_hash", "*.ssn"]
[roles.analyst]
select = ["users", "ordrs", "staff"]
mask = ["users.password_hash", "users.nope", "staff.salary"]
[roles.ops]
select = ["*"]
schema = true
[principals.a]
role = "analyst"
uid = 1
"#,
    )
    .unwrap();
    let found: Vec<String> = sqlvault_policy::lint(&p, &conn)
        .unwrap()
        .into_iter()
        .map(|f| format!("{} {}", f.severity, f.message))
        .collect();
    let text = found.join("\n");
    for want in [
        "high role analyst: select names unknown table ordrs",
        "high role analyst: mask names unknown column users.nope",
        "high role analyst: index staff_salary of staff holds column staff.salary, which the role masks or denies",
        "medium role analyst can read sensitive column users.ssn (principals: a)",
        "medium role ops can read sensitive column users.password_hash (principals: none)",
        "low role ops: schema is granted",
        "low role ops: no principal holds it",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(
        !text.contains("role analyst can read sensitive column users.password_hash"),
        "{text}"
    );
    // Findings come most severe first.
    assert!(found.first().unwrap().starts_with("high"), "{text}");
    // A policy covering nothing of a table says so.
    let p = Policy::from_toml("[roles.r]\nselect = [\"users\"]\n[principals.a]\nrole = \"r\"\nuid = 1\n").unwrap();
    let text: Vec<String> = sqlvault_policy::lint(&p, &conn)
        .unwrap()
        .into_iter()
        .map(|f| f.message)
        .collect();
    assert!(
        text.iter()
            .any(|m| m == "table orders is covered by no role: no principal can use it"),
        "{text:?}"
    );
    assert!(
        !text.iter().any(|m| m.contains("docs_content")),
        "shadow tables are not reported: {text:?}"
    );
}
