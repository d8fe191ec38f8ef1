//! Fixture databases, the test policy, and running statements as a principal.

use std::path::Path;

use rusqlite::Connection;
use rusqlite::types::ValueRef;
use sqlvault_policy::Policy;

/// Two databases that differ only in their secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    A,
    B,
}

/// Substrings of every secret of both variants.
pub const SECRETS: &[&str] = &["HASH-A", "HASH-B", "SSN-A", "SSN-B", "TOP-A", "TOP-B", "DOCA", "DOCB"];

pub const POLICY: &str = r#"
[roles.admin]
select = ["*"]
insert = ["*"]
update = ["*"]
delete = ["*"]
schema = true
temp = true
transactions = true
catalog = true
pragmas = ["user_version", "table_info"]

[roles.masked]
select = ["orders", "users", "user_names", "leaky", "docs", "staff"]
insert = ["orders", "users"]
update = ["orders", "users"]
delete = ["orders"]
mask = ["users.password_hash", "users.ssn", "docs.body", "staff.salary"]
temp = true
transactions = true

[roles.denier]
select = ["orders", "users", "user_names", "leaky", "docs", "staff"]
insert = ["orders", "users"]
update = ["orders", "users"]
delete = ["orders"]
deny = ["users.password_hash", "users.ssn", "docs.body", "staff.salary"]
temp = true
transactions = true

[roles.narrow]
select = ["orders"]
insert = ["orders"]
update = ["orders"]
delete = ["orders"]
temp = true
transactions = true
pragmas = ["table_info", "index_list"]

[roles.returner]
select = ["orders", "users", "staff"]
update = ["orders"]
mask = ["users.password_hash", "users.ssn", "staff.salary"]

[roles.reader]
select = ["docs", "user_names", "orders", "users"]
allow = ["users.id", "users.name", "users.email"]
pragmas = ["user_version"]

[roles.clerk]
select = ["orders"]
insert = ["orders", "audit_log"]

[roles.all_functions]
select = ["orders"]
functions = ["*"]

[roles.allowlisted]
select = ["users"]
allow = ["users.id", "users.name", "users.email"]

[principals.admin]
role = "admin"
uid = 1000
[principals.masked]
role = "masked"
uid = 1001
[principals.denier]
role = "denier"
uid = 1002
[principals.narrow]
role = "narrow"
uid = 1003
[principals.reader]
role = "reader"
uid = 1004
[principals.clerk]
role = "clerk"
uid = 1005
[principals.all_functions]
role = "all_functions"
uid = 1006
[principals.allowlisted]
role = "allowlisted"
uid = 1007
[principals.returner]
role = "returner"
uid = 1008
"#;

pub fn policy() -> Policy {
    Policy::from_toml(POLICY).expect("the test policy parses")
}

/// Writes the fixture database at `path`.
pub fn fixture(path: &Path, v: Variant) {
    let (h1, h2, s1, s2, top, doc, sal1, sal2) = match v {
        Variant::A => ("HASH-A1", "HASH-A2", "SSN-A1", "SSN-A2", "TOP-A", "alpha DOCA", 10, 20),
        Variant::B => ("HASH-B9", "HASH-B0", "SSN-B9", "SSN-B0", "TOP-B", "beta DOCB", 20, 10),
    };
    let c = Connection::open(path).unwrap();
    c.execute_batch(&format!(
        "PRAGMA user_version = 3;
         CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT, email TEXT UNIQUE, password_hash TEXT, ssn TEXT);
         CREATE TABLE staff(id INTEGER PRIMARY KEY, name TEXT, salary INT);
         CREATE INDEX staff_salary ON staff(salary);
         CREATE TABLE orders(id INTEGER PRIMARY KEY, user_id INT, total INT, note TEXT);
         CREATE TABLE audit_log(id INTEGER PRIMARY KEY AUTOINCREMENT, what TEXT);
         CREATE TABLE secrets(id INTEGER PRIMARY KEY, value TEXT);
         CREATE VIEW user_names AS SELECT id, name FROM users;
         CREATE VIEW leaky AS SELECT id, password_hash, ssn FROM users;
         CREATE VIRTUAL TABLE docs USING fts5(title, body);
         CREATE TRIGGER orders_audit AFTER INSERT ON orders BEGIN
           INSERT INTO audit_log(what) VALUES ('order ' || new.id);
         END;
         INSERT INTO users VALUES (1, 'ada', 'ada@x', '{h1}', '{s1}'), (2, 'bob', 'bob@x', '{h2}', '{s2}');
         INSERT INTO orders(user_id, total) VALUES (1, 10), (2, 20);
         INSERT INTO secrets(value) VALUES ('{top}');
         INSERT INTO staff VALUES (1, 'cy', {sal1}), (2, 'di', {sal2});
         INSERT INTO docs(title, body) VALUES ('t1', '{doc}');"
    ))
    .unwrap();
}

/// What a sequence of statements came to: the last one's values, or the first denial
/// or failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Rows(Vec<String>),
    Denied(String),
    Failed(String),
}

impl Outcome {
    pub fn assert_no_secret(&self, role: &str, steps: &[&str]) {
        let text = format!("{self:?}");
        for s in SECRETS {
            assert!(!text.contains(s), "role {role} read {s} with {steps:?}: {text}");
        }
    }
}

/// A value as the corpus compares them.
pub fn value(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Null => "NULL".into(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(r) => r.to_string(),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        ValueRef::Blob(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
    }
}

/// The application's own function, registered before the guard.
fn app_function(c: &Connection) {
    c.create_scalar_function("app_secret", 0, rusqlite::functions::FunctionFlags::SQLITE_UTF8, |_| {
        Ok("app-secret-value".to_string())
    })
    .unwrap();
}

/// Runs one statement; its rows, or the denial (when `denial` has one) or failure.
pub fn one(conn: &Connection, sql: &str, denial: &dyn Fn() -> Option<String>) -> Outcome {
    let fail = |e: rusqlite::Error| match denial() {
        Some(d) => Outcome::Denied(d),
        None => Outcome::Failed(e.to_string()),
    };
    let mut st = match conn.prepare(sql) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let n = st.column_count();
    let mut out = Vec::new();
    let mut rows = match st.query([]) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    loop {
        match rows.next() {
            Ok(Some(r)) => {
                for i in 0..n {
                    out.push(value(r.get_ref(i).unwrap()));
                }
            }
            Ok(None) => break,
            Err(e) => return fail(e),
        }
    }
    Outcome::Rows(out)
}

/// Runs `steps` on `conn`; the last one's values, or the first denial or failure.
pub fn steps_on(conn: &Connection, steps: &[&str], denial: &dyn Fn() -> Option<String>) -> Outcome {
    let mut last = Outcome::Rows(Vec::new());
    for sql in steps {
        last = one(conn, sql, denial);
        if !matches!(last, Outcome::Rows(_)) {
            return last;
        }
    }
    last
}

/// Runs `steps` as the principal named `role` on a fresh fixture of `v`.
pub fn run(role: &str, v: Variant, steps: &[&str]) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shop.db");
    fixture(&path, v);
    let p = policy();
    let who = p.trusted_identity(role).unwrap();
    let conn = Connection::open(&path).unwrap();
    app_function(&conn);
    let g = p.guard(conn, &who).unwrap();
    steps_on(&g, steps, &|| g.take_denial().map(|d| d.to_string()))
}

/// Runs `steps` on a fresh fixture of `v` with no guard: the control.
pub fn run_unguarded(v: Variant, steps: &[&str]) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shop.db");
    fixture(&path, v);
    let conn = Connection::open(&path).unwrap();
    app_function(&conn);
    steps_on(&conn, steps, &|| None)
}

/// `steps` run as `role` end in a denial whose text holds `needle` (any case).
pub fn assert_denied(role: &str, steps: &[&str], needle: &str) {
    match run(role, Variant::A, steps) {
        Outcome::Denied(d) => assert!(
            d.to_lowercase().contains(&needle.to_lowercase()),
            "role {role}, {steps:?}: denied, but the denial {d:?} does not mention {needle:?}"
        ),
        other => panic!("role {role}, {steps:?}: expected a denial, got {other:?}"),
    }
}
