//! integrity_check of databases whose indexes are ordered by a collation only the
//! application has (placeholders stand in for it): `verify_file` (restore, verify,
//! drill) and `backup --integrity-check` must neither report the placeholder's order as
//! damage nor let it hide real damage. Found by the issue 16 review against an earlier
//! design that filtered integrity_check's output by index name.

use std::path::Path;

use rusqlite::Connection;

fn fold(a: &str, b: &str) -> std::cmp::Ordering {
    a.to_lowercase().cmp(&b.to_lowercase()).then_with(|| a.cmp(b))
}

fn app_conn(p: &Path) -> Connection {
    let c = Connection::open(p).unwrap();
    c.create_collation("unicase", fold).unwrap();
    c
}

fn words(n: usize) -> Vec<String> {
    let mut x: u64 = 7;
    (0..n)
        .map(|i| {
            let w: String = (0..8)
                .map(|_| {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ['a', 'B', 'c', 'D', 'Z', 'x', 'Y'][((x >> 33) % 7) as usize]
                })
                .collect();
            format!("{w}{i}")
        })
        .collect()
}

/// Inserts rows into `table` while `index` is hidden from the schema, so that the index
/// misses them: the kind of damage integrity_check reports as "row N missing from index".
fn damage_index(p: &Path, index: &str, update: &str) {
    let c = Connection::open(p).unwrap();
    let (sql, root): (String, i64) = c
        .query_row(
            "SELECT sql, rootpage FROM sqlite_schema WHERE name = ?1",
            [index],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    c.execute_batch("PRAGMA writable_schema = ON").unwrap();
    c.execute("DELETE FROM sqlite_schema WHERE name = ?1", [index]).unwrap();
    drop(c);
    let c = Connection::open(p).unwrap();
    c.execute_batch(update).unwrap();
    c.execute_batch("PRAGMA writable_schema = ON").unwrap();
    let tbl = sql
        .split(" ON ")
        .nth(1)
        .unwrap()
        .split('(')
        .next()
        .unwrap()
        .trim()
        .to_string();
    c.execute(
        "INSERT INTO sqlite_schema VALUES('index', ?1, ?2, ?3, ?4)",
        (index, tbl, root, sql),
    )
    .unwrap();
}

/// Anki's `tags` table: WITHOUT ROWID, keyed by `unicase`. The file is healthy (the
/// application's own integrity_check passes), yet a full integrity_check with the
/// placeholder's bytewise order reports "row not in PRIMARY KEY order for tags": that
/// must not make restore say "source damaged" (exit 15).
#[test]
fn without_rowid_table_keyed_by_an_app_collation_is_not_damage() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("anki.db");
    let c = app_conn(&p);
    c.execute_batch("CREATE TABLE tags(tag TEXT NOT NULL PRIMARY KEY COLLATE unicase, usn INT) WITHOUT ROWID")
        .unwrap();
    for (i, w) in words(300).iter().enumerate() {
        c.execute("INSERT INTO tags VALUES(?1, ?2)", (w, i as i64)).unwrap();
    }
    let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok", "healthy for the application");
    drop(c);
    let rep = sqlvault_sqlite::verify_file(&p).unwrap();
    assert!(
        rep.problems.is_empty(),
        "a healthy Anki-like file is reported damaged: {:?}",
        &rep.problems[..rep.problems.len().min(3)]
    );
}

/// integrity_check stops after 100 error lines. An index ordered by an application
/// collation yields one placeholder line per row whose bytewise and application order
/// differ, so on any real Anki/Android database the budget is spent on lines that are
/// then filtered out, and real damage elsewhere is never reported: restore and verify
/// say "integrity_check ok", `backup --integrity-check` records `ok: true`.
#[test]
fn placeholder_lines_must_not_use_up_integrity_checks_budget() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("app.db");
    let c = app_conn(&p);
    c.execute_batch(
        "CREATE TABLE accounts(id INTEGER PRIMARY KEY, email TEXT NOT NULL);
         CREATE INDEX accounts_email ON accounts(email);
         CREATE TABLE decks(id INTEGER PRIMARY KEY, name TEXT NOT NULL COLLATE unicase);
         CREATE INDEX idx_decks_name ON decks(name);",
    )
    .unwrap();
    for w in words(500) {
        c.execute("INSERT INTO decks(name) VALUES(?1)", [&w]).unwrap();
        c.execute("INSERT INTO accounts(email) VALUES(?1)", [format!("{w}@x")])
            .unwrap();
    }
    drop(c);
    damage_index(
        &p,
        "accounts_email",
        "UPDATE accounts SET email = 'changed' || id WHERE id % 7 = 0",
    );
    let c = app_conn(&p);
    let real: Vec<String> = c
        .prepare("PRAGMA integrity_check")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(real.iter().any(|l| l.contains("accounts_email")), "damaged: {real:?}");
    drop(c);
    let rep = sqlvault_sqlite::verify_file(&p).unwrap();
    assert!(
        rep.problems.iter().any(|l| l.contains("accounts_email")),
        "damage to an ordinary index is hidden: problems {:?}",
        rep.problems
    );
}

/// Index names are arbitrary text: no output line may be dropped because it mentions
/// one. An application-collation index named `main` must not hide the "*** in database
/// main ***" row that carries every b-tree error, nor one named "" every "... index X"
/// line.
#[test]
fn index_names_cannot_hide_other_lines() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("hostile.db");
    let c = app_conn(&p);
    c.execute_batch(
        "CREATE TABLE t(a TEXT);
         CREATE INDEX \"main\" ON t(a COLLATE unicase);
         CREATE INDEX \"\" ON t(a COLLATE unicase);
         CREATE TABLE u(id INTEGER PRIMARY KEY, v TEXT);
         CREATE INDEX u_v ON u(v);",
    )
    .unwrap();
    for i in 0..50 {
        c.execute("INSERT INTO u(v) VALUES(?1)", [i.to_string()]).unwrap();
    }
    drop(c);
    damage_index(&p, "u_v", "UPDATE u SET v = 'z' || id WHERE id % 5 = 0");
    // An orphan page: b-tree level damage ("Page N: never used").
    let mut d = std::fs::read(&p).unwrap();
    let ps = u16::from_be_bytes([d[16], d[17]]) as usize;
    let n = u32::from_be_bytes(d[28..32].try_into().unwrap());
    d[28..32].copy_from_slice(&(n + 1).to_be_bytes());
    d.extend(std::iter::repeat_n(0u8, ps));
    std::fs::write(&p, d).unwrap();

    let rep = sqlvault_sqlite::verify_file(&p).unwrap();
    assert!(
        rep.problems.iter().any(|l| l.contains("never used")),
        "b-tree damage hidden by an index named main: {:?}",
        rep.problems
    );
    assert!(
        rep.problems.iter().any(|l| l.contains("u_v")),
        "index damage hidden by an index named \"\": {:?}",
        rep.problems
    );
}

/// A schema with a non-UTF-8 byte (a Latin-1 default value written by an old
/// application) must not make read-only opens fail: looking for collation names reads
/// the schema as bytes, as the checksum does.
#[test]
fn a_schema_with_non_utf8_bytes_still_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("latin1.db");
    let c = Connection::open(&p).unwrap();
    c.execute_batch("CREATE TABLE t(a TEXT DEFAULT 'cafe', b); INSERT INTO t(b) VALUES(1);")
        .unwrap();
    c.execute_batch("PRAGMA writable_schema = ON").unwrap();
    let sql: String = c
        .query_row("SELECT sql FROM sqlite_schema WHERE name = 't'", [], |r| r.get(0))
        .unwrap();
    let bad = sql.into_bytes();
    let bad: Vec<u8> = String::from_utf8(bad)
        .unwrap()
        .replace("'cafe'", "'caf\u{1}'")
        .into_bytes();
    let bad: Vec<u8> = bad.into_iter().map(|b| if b == 1 { 0xe9 } else { b }).collect();
    c.execute(
        "UPDATE sqlite_schema SET sql = CAST(?1 AS TEXT) WHERE name = 't'",
        [bad],
    )
    .unwrap();
    drop(c);
    let c = Connection::open(&p).unwrap();
    let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok");
    drop(c);
    let rep = sqlvault_sqlite::verify_file(&p);
    assert!(rep.is_ok(), "a healthy file no longer verifies: {:?}", rep.err());
}
