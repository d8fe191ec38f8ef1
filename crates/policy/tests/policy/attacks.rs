//! The attack corpus: every way a principal without a right might reach a masked or
//! denied column, a table it was not granted, or the file around the rules — each a
//! test, each run from the attacker's side with only a guarded connection.
//!
//! A read attack runs on two databases that differ only in the secrets (password
//! hashes, SSNs, the `secrets` table, an FTS body). For a role without the right, the
//! outputs must be identical on both (so neither the values nor any oracle on them —
//! WHERE, ORDER BY, GROUP BY, an aggregate — tells them apart) or the statement denied;
//! for a role with the right (the control), they must differ: the statement really
//! reads the secret, so the test can fail.

use crate::support::*;

/// Roles that must not learn the secrets: masked, denied, and not granted at all.
const RESTRICTED: &[&str] = &["masked", "denier", "narrow", "returner"];

fn read_attack(steps: &[&str]) {
    let control_a = run("admin", Variant::A, steps);
    let control_b = run("admin", Variant::B, steps);
    assert!(
        matches!(control_a, Outcome::Rows(_)) && control_a != control_b,
        "control: admin must read the secret with {steps:?}: {control_a:?} / {control_b:?}"
    );
    for role in RESTRICTED {
        let a = run(role, Variant::A, steps);
        let b = run(role, Variant::B, steps);
        assert_eq!(a, b, "role {role} tells the secrets apart with {steps:?}");
        a.assert_no_secret(role, steps);
    }
}

macro_rules! read_attacks {
    ($($name:ident: [$($step:expr),+ $(,)?];)*) => {
        $(
            #[test]
            fn $name() {
                read_attack(&[$($step),+]);
            }
        )*
    };
}

read_attacks! {
    star_select: ["SELECT * FROM users"];
    named_column: ["SELECT id, password_hash FROM users"];
    case_and_quoting: ["SELECT \"PASSWORD_HASH\", [ssn] FROM main.\"USERS\""];
    granted_view_over_a_masked_column: ["SELECT * FROM leaky"];
    temp_view: ["CREATE TEMP VIEW tv AS SELECT password_hash AS p, ssn AS s FROM users", "SELECT p, s FROM tv"];
    temp_table_copy: ["CREATE TEMP TABLE tt AS SELECT password_hash, ssn FROM users", "SELECT * FROM tt"];
    temp_view_shadowing_a_granted_table: [
        "CREATE TEMP VIEW orders AS SELECT password_hash AS note, ssn AS total FROM users",
        "SELECT note, total FROM orders"
    ];
    temp_table_shadowing_a_granted_table: [
        "CREATE TEMP TABLE orders AS SELECT * FROM users",
        "SELECT * FROM orders"
    ];
    trigger_copying_into_a_readable_table: [
        "CREATE TEMP TRIGGER tr AFTER INSERT ON orders BEGIN UPDATE orders SET note = (SELECT group_concat(password_hash || ssn) FROM users) WHERE id = new.id; END",
        "INSERT INTO orders(user_id, total) VALUES (1, 1)",
        "SELECT note FROM orders ORDER BY id"
    ];
    trigger_named_like_a_granted_view: [
        "CREATE TEMP TRIGGER user_names AFTER INSERT ON orders BEGIN UPDATE orders SET note = (SELECT value FROM secrets) WHERE id = new.id; END",
        "INSERT INTO orders(user_id, total) VALUES (1, 1)",
        "SELECT note FROM orders ORDER BY id"
    ];
    cte: ["WITH x AS (SELECT password_hash, ssn FROM users) SELECT * FROM x"];
    recursive_cte: [
        "WITH RECURSIVE r(n, p) AS (SELECT 1, (SELECT password_hash FROM users WHERE id = 1) UNION ALL SELECT n + 1, p FROM r WHERE n < 3) SELECT * FROM r"
    ];
    scalar_subquery: ["SELECT (SELECT password_hash FROM users LIMIT 1), (SELECT ssn FROM users LIMIT 1)"];
    exists_subquery: ["SELECT count(*) FROM orders WHERE EXISTS (SELECT 1 FROM users WHERE password_hash = 'HASH-A1')"];
    where_equality: ["SELECT count(*) FROM users WHERE password_hash = 'HASH-A1' OR ssn = 'SSN-A1'"];
    where_like_prefix: ["SELECT name FROM users WHERE password_hash LIKE 'HASH-A%' OR ssn GLOB 'SSN-A*'"];
    where_through_an_index: ["SELECT name FROM staff INDEXED BY staff_salary WHERE salary > 15"];
    order_of_an_index_on_a_masked_column: ["SELECT name FROM staff INDEXED BY staff_salary"];
    covering_scan_of_an_index_on_a_masked_column: ["SELECT id FROM staff"];
    order_by: ["SELECT name FROM users ORDER BY password_hash, ssn"];
    group_by: ["SELECT count(*) FROM users GROUP BY password_hash < 'HASH-A2' ORDER BY 1"];
    having: ["SELECT id FROM users GROUP BY id HAVING max(password_hash) = 'HASH-A1'"];
    aggregates: ["SELECT max(password_hash), min(ssn), group_concat(password_hash), sum(unicode(substr(password_hash, 6))) FROM users"];
    window_function: ["SELECT name, rank() OVER (ORDER BY password_hash) FROM users ORDER BY name"];
    case_expression: ["SELECT CASE WHEN password_hash = 'HASH-A1' THEN 'yes' ELSE 'no' END FROM users"];
    functions_of_the_column: ["SELECT hex(password_hash), length(ssn), typeof(password_hash), instr(password_hash, 'A') FROM users"];
    json_functions: ["SELECT json_object('p', password_hash), json_array(ssn), json_quote(password_hash) -> '$' FROM users"];
    json_aggregate_and_each: [
        "SELECT value FROM json_each((SELECT json_group_array(password_hash || ssn) FROM users))"
    ];
    union_with_a_granted_table: ["SELECT note FROM orders UNION ALL SELECT password_hash FROM users"];
    join_with_a_granted_table: ["SELECT o.id, u.password_hash FROM orders o JOIN users u ON u.id = o.user_id"];
    returning_from_update: ["UPDATE users SET name = name RETURNING password_hash, ssn"];
    returning_from_delete: ["DELETE FROM users WHERE id = 2 RETURNING password_hash"];
    returning_from_upsert: [
        "INSERT INTO users(id, name) VALUES (1, 'x') ON CONFLICT(id) DO UPDATE SET name = 'y' RETURNING password_hash"
    ];
    returning_a_subquery_of_another_table: [
        "UPDATE orders SET note = note RETURNING (SELECT group_concat(password_hash || ssn) FROM users)"
    ];
    trigger_reading_old_values: [
        "CREATE TEMP TRIGGER tr AFTER UPDATE ON orders BEGIN UPDATE orders SET note = (SELECT old.total || password_hash FROM users WHERE id = 1) WHERE id = old.id; END",
        "UPDATE orders SET total = total + 1 WHERE id = 1",
        "SELECT note FROM orders ORDER BY id"
    ];
    salary_through_a_window: ["SELECT name, row_number() OVER (ORDER BY salary) FROM staff ORDER BY name"];
    update_as_an_oracle: [
        "UPDATE orders SET note = 'hit' WHERE user_id IN (SELECT id FROM users WHERE password_hash = 'HASH-A1')",
        "SELECT id, note FROM orders ORDER BY id"
    ];
    delete_as_an_oracle: [
        "DELETE FROM orders WHERE user_id IN (SELECT id FROM users WHERE ssn = 'SSN-A1')",
        "SELECT count(*) FROM orders"
    ];
    insert_select: [
        "INSERT INTO orders(user_id, note) SELECT id, password_hash || ssn FROM users",
        "SELECT note FROM orders ORDER BY id"
    ];
    upsert_reading_the_old_row: [
        "INSERT INTO orders(id, user_id, note) VALUES (1, 1, 'x') ON CONFLICT(id) DO UPDATE SET note = (SELECT password_hash FROM users WHERE id = 1)",
        "SELECT note FROM orders ORDER BY id"
    ];
    ungranted_table: ["SELECT value FROM secrets"];
    ungranted_table_in_a_join: ["SELECT o.id, s.value FROM orders o, secrets s"];
    fts_shadow_content: ["SELECT * FROM docs_content"];
    fts_shadow_data: ["SELECT count(*), sum(length(block)) FROM docs_data"];
    fts_match_as_an_oracle: ["SELECT count(*) FROM docs WHERE docs MATCH 'DOCA'"];
    fts_masked_column: ["SELECT body, highlight(docs, 1, '[', ']') FROM docs"];
    pragma_table_valued_on_a_secret_table: ["SELECT * FROM pragma_table_info('secrets') JOIN secrets"];
}

// ---- Statements that must be denied (and that work where the right exists) ----

#[test]
fn attach_is_denied_even_to_admin() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.db");
    let sql = format!("ATTACH '{}' AS other", other.display());
    for role in ["admin", "masked", "narrow"] {
        assert_denied(role, &[&sql], "ATTACH");
    }
    assert!(!other.exists(), "ATTACH created a file");
    assert!(matches!(run_unguarded(Variant::A, &[&sql]), Outcome::Rows(_)));
}

#[test]
fn detach_is_denied() {
    for role in ["admin", "narrow"] {
        assert_denied(role, &["DETACH temp"], "DETACH");
    }
}

#[test]
fn vacuum_into_is_denied_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("copy.db");
    let sql = format!("VACUUM INTO '{}'", out.display());
    for role in ["admin", "masked"] {
        assert_denied(role, &[&sql], "VACUUM");
        assert!(!out.exists(), "VACUUM INTO wrote a copy for {role}");
    }
    assert!(matches!(run_unguarded(Variant::A, &[&sql]), Outcome::Rows(_)));
    assert!(out.exists());
    assert_denied("admin", &["VACUUM"], "VACUUM");
}

#[test]
fn writable_schema_cannot_be_turned_on_or_used() {
    for role in ["admin", "masked"] {
        assert_denied(role, &["PRAGMA writable_schema = ON"], "writable_schema");
        assert_denied(role, &["PRAGMA main.writable_schema = 1"], "writable_schema");
    }
    // Even admin, who may write every table, cannot rewrite the schema.
    let out = run(
        "admin",
        Variant::A,
        &["UPDATE sqlite_schema SET sql = 'CREATE TABLE users(x)' WHERE name = 'users'"],
    );
    assert!(!matches!(out, Outcome::Rows(_)), "{out:?}");
}

#[test]
fn load_extension_is_denied_even_when_granted_as_a_function() {
    for role in ["admin", "masked", "all_functions"] {
        assert_denied(role, &["SELECT load_extension('/nonexistent/ext')"], "load_extension");
    }
}

#[test]
fn fts3_tokenizer_is_denied() {
    assert_denied("all_functions", &["SELECT fts3_tokenizer('simple')"], "fts3_tokenizer");
}

#[test]
fn raw_page_tables_are_denied_through_star() {
    // dbstat is compiled into the bundled SQLite; sqlite_dbpage may not be: then SQLite
    // itself refuses, and the guard's answer is checked on dbstat alone.
    assert!(matches!(
        run_unguarded(Variant::A, &["SELECT count(*) FROM dbstat"]),
        Outcome::Rows(_)
    ));
    for role in ["admin", "masked", "narrow"] {
        assert_denied(role, &["SELECT * FROM dbstat"], "dbstat");
        assert_denied(role, &["SELECT name, sum(pgsize) FROM dbstat GROUP BY name"], "dbstat");
        let out = run(role, Variant::A, &["SELECT data FROM sqlite_dbpage"]);
        assert!(!matches!(out, Outcome::Rows(_)), "{role}: {out:?}");
    }
}

#[test]
fn creating_a_raw_virtual_table_is_denied() {
    for sql in [
        "CREATE VIRTUAL TABLE temp.v USING fts5vocab('main', 'docs', 'row')",
        "CREATE VIRTUAL TABLE v USING fts5vocab('main', 'docs', 'row')",
        "CREATE VIRTUAL TABLE s USING dbstat",
    ] {
        assert_denied("admin", &[sql], "");
    }
}

#[test]
fn pragma_writes_are_denied_even_to_admin() {
    for sql in [
        "PRAGMA user_version = 7",
        "PRAGMA journal_mode = DELETE",
        "PRAGMA trusted_schema = ON",
        "PRAGMA foreign_keys = OFF",
        "PRAGMA query_only = 0",
        "PRAGMA cell_size_check = OFF",
        "PRAGMA secure_delete = OFF",
        "PRAGMA schema_version = 1",
        "PRAGMA main.application_id = 5",
        "PRAGMA temp_store = MEMORY",
        "PRAGMA mmap_size = 1000000000",
    ] {
        assert_denied("admin", &[sql], "pragma");
    }
    let out = run("admin", Variant::A, &["PRAGMA user_version"]);
    assert_eq!(out, Outcome::Rows(vec!["3".into()]));
}

#[test]
fn pragmas_on_tables_follow_the_table_grant() {
    assert!(matches!(run("narrow", Variant::A, &["PRAGMA table_info(orders)"]), Outcome::Rows(r) if !r.is_empty()));
    assert_denied("narrow", &["PRAGMA table_info(secrets)"], "table_info");
    assert_denied("narrow", &["PRAGMA index_list(users)"], "index_list");
    assert_denied("narrow", &["SELECT name FROM pragma_table_info('users')"], "table_info");
    assert_denied(
        "masked",
        &["PRAGMA table_info(orders)"],
        "pragma table_info is not granted",
    );
}

#[test]
fn schema_changes_need_the_schema_right() {
    for sql in [
        "CREATE TABLE t(x)",
        "CREATE INDEX i ON orders(total)",
        "CREATE VIEW v AS SELECT 1",
        "CREATE TRIGGER tr AFTER INSERT ON orders BEGIN SELECT 1; END",
        "DROP TABLE orders",
        "DROP VIEW user_names",
        "ALTER TABLE orders RENAME TO o2",
        "ALTER TABLE orders ADD COLUMN x",
        "ANALYZE",
        "REINDEX",
        "CREATE VIRTUAL TABLE f USING fts5(x)",
    ] {
        assert_denied("masked", &[sql], "schema");
        assert!(
            matches!(run("admin", Variant::A, &[sql]), Outcome::Rows(_)),
            "admin: {sql}"
        );
    }
}

#[test]
fn temp_objects_need_the_temp_right() {
    for sql in [
        "CREATE TEMP TABLE t(x)",
        "CREATE TEMP VIEW v AS SELECT 1",
        "CREATE TEMP TRIGGER tr AFTER INSERT ON orders BEGIN SELECT 1; END",
        "CREATE TABLE temp.t2(x)",
    ] {
        assert_denied("reader", &[sql], "temporary");
        assert!(
            matches!(run("masked", Variant::A, &[sql]), Outcome::Rows(_)),
            "masked: {sql}"
        );
    }
}

#[test]
fn transactions_need_their_right() {
    for sql in ["BEGIN", "BEGIN IMMEDIATE", "SAVEPOINT s"] {
        assert_denied("reader", &[sql], "transactions");
    }
    assert!(matches!(
        run("masked", Variant::A, &["BEGIN", "SELECT 1", "COMMIT"]),
        Outcome::Rows(_)
    ));
}

#[test]
fn the_schema_is_readable_only_with_catalog() {
    for sql in [
        "SELECT sql FROM sqlite_schema",
        "SELECT name FROM sqlite_master",
        "SELECT * FROM sqlite_temp_master",
        "SELECT * FROM temp.sqlite_schema",
        "SELECT * FROM sqlite_sequence",
    ] {
        assert_denied("masked", &[sql], "");
        assert!(
            matches!(run("admin", Variant::A, &[sql]), Outcome::Rows(_)),
            "admin: {sql}"
        );
    }
}

#[test]
fn writes_to_masked_or_denied_columns_are_denied() {
    for role in ["masked", "denier"] {
        for sql in [
            "UPDATE users SET password_hash = 'pwned'",
            "UPDATE users SET ssn = NULL WHERE id = 1",
            "INSERT INTO users(id, name) VALUES (1, 'x') ON CONFLICT(id) DO UPDATE SET password_hash = 'pwned'",
        ] {
            assert_denied(role, &[sql], "users");
        }
    }
    let out = run("masked", Variant::A, &["UPDATE users SET name = 'ok' WHERE id = 2"]);
    assert!(matches!(out, Outcome::Rows(_)), "{out:?}");
}

#[test]
fn ungranted_writes_are_denied() {
    for sql in [
        "INSERT INTO secrets(value) VALUES ('x')",
        "UPDATE secrets SET value = 'x'",
        "DELETE FROM secrets",
        "DELETE FROM users",
        "UPDATE sqlite_sequence SET seq = 0",
        "INSERT INTO docs(title, body) VALUES ('t', 'b')",
    ] {
        assert_denied("masked", &[sql], "");
    }
}

#[test]
fn shadow_tables_cannot_be_written_directly_even_by_admin() {
    // SQLITE_DBCONFIG_DEFENSIVE: without it, this corrupts the index.
    let sql = "INSERT INTO docs_data(id, block) VALUES (424242, x'00')";
    assert!(matches!(run_unguarded(Variant::A, &[sql]), Outcome::Rows(_)));
    let out = run("admin", Variant::A, &[sql]);
    assert!(!matches!(out, Outcome::Rows(_)), "{out:?}");
}

#[test]
fn application_functions_need_a_grant() {
    assert_denied("masked", &["SELECT app_secret()"], "app_secret");
    assert_eq!(
        run("all_functions", Variant::A, &["SELECT app_secret()"]),
        Outcome::Rows(vec!["app-secret-value".into()])
    );
}

// ---- What allowed principals can do ----

#[test]
fn a_reader_uses_fts_views_and_pragmas() {
    assert_eq!(
        run(
            "reader",
            Variant::A,
            &["SELECT title FROM docs WHERE docs MATCH 'DOCA'"]
        ),
        Outcome::Rows(vec!["t1".into()])
    );
    assert_eq!(
        run("reader", Variant::A, &["SELECT name FROM user_names ORDER BY id"]),
        Outcome::Rows(vec!["ada".into(), "bob".into()])
    );
    assert_denied("reader", &["SELECT password_hash FROM users"], "allowed columns");
    assert_eq!(
        run("reader", Variant::A, &["PRAGMA user_version"]),
        Outcome::Rows(vec!["3".into()])
    );
}

#[test]
fn masked_columns_read_as_null_and_the_rest_as_stored() {
    assert_eq!(
        run(
            "returner",
            Variant::A,
            &["SELECT name, password_hash IS NULL, ssn IS NULL FROM users ORDER BY id"]
        ),
        Outcome::Rows(vec![
            "ada".into(),
            "1".into(),
            "1".into(),
            "bob".into(),
            "1".into(),
            "1".into()
        ])
    );
    // A role that may write users could read them back through RETURNING, where
    // SQLite does not apply masks: there, masked columns are denied instead.
    assert_denied("masked", &["SELECT name, password_hash FROM users"], "RETURNING");
    assert_denied("denier", &["SELECT name, ssn FROM users"], "users.ssn is denied");
    assert_eq!(
        run("denier", Variant::A, &["SELECT name FROM users ORDER BY id"]),
        Outcome::Rows(vec!["ada".into(), "bob".into()])
    );
}

#[test]
fn a_clerk_inserts_with_the_audit_trigger_and_nothing_more() {
    let out = run(
        "clerk",
        Variant::A,
        &[
            "INSERT INTO orders(user_id, total) VALUES (2, 5)",
            "SELECT count(*) FROM orders",
        ],
    );
    assert_eq!(out, Outcome::Rows(vec!["3".into()]));
    assert_denied("clerk", &["DELETE FROM orders"], "delete on orders");
    assert_denied("clerk", &["SELECT * FROM audit_log"], "select on audit_log");
}

#[test]
fn column_allow_lists_deny_other_columns() {
    assert_eq!(
        run("allowlisted", Variant::A, &["SELECT id, name FROM users ORDER BY id"]),
        Outcome::Rows(vec!["1".into(), "ada".into(), "2".into(), "bob".into()])
    );
    assert_denied("allowlisted", &["SELECT ssn FROM users"], "allowed columns");
    assert_denied("allowlisted", &["SELECT * FROM users"], "allowed columns");
}

#[test]
fn a_table_ordered_by_a_hidden_column_is_denied_whole() {
    // staff_salary orders staff by salary, which these roles mask or deny: no read of
    // staff can be allowed without showing that order (INDEXED BY forces the scan).
    for role in ["masked", "denier", "returner"] {
        assert_denied(
            role,
            &["SELECT name FROM staff"],
            "index staff_salary of staff holds column staff.salary",
        );
    }
    assert!(matches!(
        run("admin", Variant::A, &["SELECT name FROM staff INDEXED BY staff_salary"]),
        Outcome::Rows(_)
    ));
}

#[test]
fn insert_or_replace_cannot_delete_without_the_delete_right() {
    // clerk may insert into orders but not delete: REPLACE would delete order 1.
    let out = run(
        "clerk",
        Variant::A,
        &[
            "REPLACE INTO orders(id, user_id, total) VALUES (1, 1, 0)",
            "SELECT total FROM orders WHERE id = 1",
        ],
    );
    assert!(
        matches!(out, Outcome::Failed(ref m) if m.contains("deleting rows of orders is not granted")),
        "{out:?}"
    );
    let out = run(
        "clerk",
        Variant::A,
        &[
            "INSERT INTO orders(user_id, total) VALUES (1, 3)",
            "SELECT count(*) FROM orders",
        ],
    );
    assert_eq!(out, Outcome::Rows(vec!["3".into()]));
    // The guard's trigger can be neither dropped nor replaced.
    assert_denied(
        "masked",
        &["DROP TRIGGER temp.sqlvault_guard_nodelete_1"],
        "the guard's own",
    );
    assert_denied(
        "masked",
        &["CREATE TEMP TRIGGER sqlvault_guard_x BEFORE DELETE ON orders BEGIN SELECT 1; END"],
        "the guard's own",
    );
}

#[test]
fn ctes_counted_without_columns_are_not_taken_for_tables() {
    // SQLite names no database for `count(*) FROM c`, whether c is a CTE or a table
    // written unqualified: allowed only where a table so named would be granted anyway.
    let cte = "WITH c(x) AS (SELECT 1 UNION ALL SELECT 2) SELECT count(*) FROM c";
    assert_eq!(run("admin", Variant::A, &[cte]), Outcome::Rows(vec!["2".into()]));
    assert_denied("reader", &[cte], "count(x)");
    // Counting a column of the CTE works for every role.
    for role in ["reader", "narrow", "masked"] {
        assert_eq!(
            run(
                role,
                Variant::A,
                &["WITH c(x) AS (SELECT 1 UNION ALL SELECT 2) SELECT count(x) FROM c"]
            ),
            Outcome::Rows(vec!["2".into()]),
            "{role}"
        );
    }
    // A temporary table the principal made counts as its own.
    assert_eq!(
        run(
            "narrow",
            Variant::A,
            &["CREATE TEMP TABLE mine(x)", "SELECT count(*) FROM mine"]
        ),
        Outcome::Rows(vec!["0".into()])
    );
    assert_denied("narrow", &["SELECT count(*) FROM secrets"], "select on secrets");
}
