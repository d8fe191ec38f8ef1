//! Loading SQL written by an attacker (a forged dump from a compromised backup host, or a
//! file handed to `sqlvault load`): it builds its one database or is refused, and never
//! reaches a file, another database, or the host's time and memory beyond its own size.

use std::path::{Path, PathBuf};

use rusqlite::Connection;
use sqlvault_sqlite::{LoadOptions, LoadReport, Source, SourceOptions, SqliteError, load, logical_checksum};

fn load_sql(sql: &str, dest: &Path) -> Result<LoadReport, SqliteError> {
    load(sql.as_bytes(), Path::new("evil.sql"), dest, &LoadOptions::default())
}

/// Nothing of a failed load is left in `dir`: no destination, no temporary file.
fn nothing_left(dir: &Path, dest: &Path) {
    assert!(!dest.exists(), "{} was created", dest.display());
    crate::dump::no_leftovers(dir);
}

/// Loads `sql` and expects a refusal whose reason mentions `why`.
fn refused(sql: &str, why: &str) -> SqliteError {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest.db");
    let e = load_sql(sql, &dest).unwrap_err();
    let SqliteError::Refused { why: reason, .. } = &e else {
        panic!("not refused: {e}")
    };
    assert!(reason.contains(why), "{why:?} not in {reason:?}");
    nothing_left(dir.path(), &dest);
    e
}

fn victim(dir: &Path) -> (PathBuf, Vec<u8>) {
    let v = dir.join("victim.db");
    let c = Connection::open(&v).unwrap();
    c.execute_batch("CREATE TABLE secrets(k, v); INSERT INTO secrets VALUES ('a', 1);")
        .unwrap();
    drop(c);
    let bytes = std::fs::read(&v).unwrap();
    (v, bytes)
}

#[test]
fn a_dump_cannot_attach_and_write_another_database() {
    let dir = tempfile::tempdir().unwrap();
    let (v, before) = victim(dir.path());
    let dest = dir.path().join("dest.db");
    for sql in [
        format!(
            "CREATE TABLE t(a);\nATTACH '{}' AS v;\nINSERT INTO v.secrets VALUES('evil', 2);\n",
            v.display()
        ),
        format!(
            "ATTACH '{}' AS v; UPDATE v.secrets SET v = 666; DELETE FROM v.secrets;\n",
            v.display()
        ),
        format!("ATTACH 'file:{}?mode=rwc' AS v; DROP TABLE v.secrets;\n", v.display()),
    ] {
        let e = load_sql(&sql, &dest).unwrap_err();
        assert!(matches!(e, SqliteError::Refused { .. }), "{e}");
        assert!(e.to_string().contains("ATTACH"), "{e}");
        assert_eq!(std::fs::read(&v).unwrap(), before, "the other database is untouched");
        nothing_left(dir.path(), &dest);
    }
    // A database that does not exist yet is not created either.
    let new = dir.path().join("planted.db");
    let sql = format!("ATTACH '{}' AS n;\nCREATE TABLE n.t(a);\n", new.display());
    let e = load_sql(&sql, &dest).unwrap_err();
    assert!(matches!(e, SqliteError::Refused { .. }), "{e}");
    assert!(!new.exists());
    nothing_left(dir.path(), &dest);
}

#[test]
fn a_dump_cannot_vacuum_into_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest.db");
    let out = dir.path().join("copy.db");
    for sql in [
        format!(
            "CREATE TABLE t(a);\nINSERT INTO t VALUES(1);\nVACUUM INTO '{}';\n",
            out.display()
        ),
        format!("CREATE TABLE t(a); VACUUM main INTO '{}';\n", out.display()),
        "CREATE TABLE t(a);\nVACUUM;\n".to_string(),
    ] {
        let e = load_sql(&sql, &dest).unwrap_err();
        assert!(matches!(e, SqliteError::Refused { .. }), "{e}");
        assert!(!out.exists(), "VACUUM INTO wrote {}", out.display());
        nothing_left(dir.path(), &dest);
    }
}

#[test]
fn the_schema_is_writable_only_in_the_shapes_a_dump_writes() {
    let base = "CREATE TABLE t(a);\nINSERT INTO t VALUES(1);\n";
    for (attack, why) in [
        // The section opener on its own line, then a rewrite of the schema.
        (
            "PRAGMA writable_schema=ON;\nUPDATE sqlite_schema SET sql = 'CREATE TABLE t(a, b)' WHERE name = 't';\n",
            "while writable_schema is on",
        ),
        // On one line, the pragma goes to SQLite: refused there.
        (
            "PRAGMA writable_schema=ON; UPDATE sqlite_schema SET sql = 'CREATE TABLE t(a, b)';\n",
            "writable_schema",
        ),
        ("PRAGMA writable_schema = 1;\n", "writable_schema"),
        ("PRAGMA main.writable_schema=RESET;\n", "writable_schema"),
        // Rows that are not a virtual table as a dump records it.
        (
            "PRAGMA writable_schema=ON;\nINSERT INTO sqlite_schema(type,name,tbl_name,rootpage,sql) VALUES('table','x','x',2,'CREATE TABLE x(a)');\n",
            "while writable_schema is on",
        ),
        (
            "PRAGMA writable_schema=ON;\nINSERT INTO sqlite_schema(type,name,tbl_name,rootpage,sql) VALUES('index','x','t',0,'CREATE VIRTUAL TABLE x USING fts5(a)');\n",
            "while writable_schema is on",
        ),
        (
            "PRAGMA writable_schema=ON;\nINSERT INTO sqlite_schema(type,name,tbl_name,rootpage,sql) VALUES('table','x','t',0,'CREATE VIRTUAL TABLE x USING fts5(a)');\n",
            "while writable_schema is on",
        ),
        (
            "PRAGMA writable_schema=ON;\nINSERT INTO sqlite_schema(type,name,tbl_name,rootpage,sql) VALUES('table','x','x',0,'CREATE TABLE x(a)');\n",
            "CREATE VIRTUAL TABLE",
        ),
        (
            "PRAGMA writable_schema=ON;\nINSERT INTO sqlite_schema(type,name,tbl_name,rootpage,sql) VALUES('table','x','x',0,'CREATE VIRTUAL TABLE y USING fts5(a)');\n",
            "CREATE VIRTUAL TABLE",
        ),
        (
            "PRAGMA writable_schema=ON;\nINSERT INTO sqlite_schema(type,name,tbl_name,rootpage,sql) VALUES('table','t','t',0,'CREATE VIRTUAL TABLE t USING fts5(a)');\n",
            "already holds",
        ),
        (
            "PRAGMA writable_schema=ON;\nINSERT INTO sqlite_schema(type,name,tbl_name,rootpage,sql) VALUES('table','x','x',0,'CREATE VIRTUAL TABLE x USING fsdir');\n",
            "lacks",
        ),
        (
            "PRAGMA writable_schema=ON;\nINSERT INTO sqlite_schema(type,name,tbl_name,rootpage,sql) VALUES('table','x','x',0,'CREATE VIRTUAL TABLE x USING fts5(a)'); DELETE FROM sqlite_schema;\n",
            "while writable_schema is on",
        ),
        // An internal table whose CREATE is not SQLite's own.
        (
            "PRAGMA writable_schema=ON;\nCREATE TABLE sqlite_sequence(name,seq,extra);\n",
            "while writable_schema is on",
        ),
    ] {
        refused(&format!("{base}{attack}"), why);
    }
    // Outside the section, SQLite itself keeps the schema and its names to itself.
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest.db");
    assert!(load_sql(&format!("{base}CREATE TABLE sqlite_sequence(name,seq);\n"), &dest).is_err());
    nothing_left(dir.path(), &dest);
    let e = load_sql(
        &format!("{base}INSERT INTO sqlite_schema VALUES('table','x','x',0,'CREATE TABLE x(a)');\n"),
        &dest,
    )
    .unwrap_err();
    assert!(e.to_string().contains("sqlite_schema"), "{e}");
    nothing_left(dir.path(), &dest);
}

#[test]
fn a_recursive_query_is_refused_and_a_runaway_one_stopped() {
    refused(
        "CREATE TABLE t(x);\nINSERT INTO t WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT x FROM c;\n",
        "recursive",
    );
    // No recursion, just far more work than its size: a twelve-way cross join of 16 rows
    // (2^48 combinations) is stopped by the work budget.
    let mut sql = String::from("CREATE TABLE t(x);\n");
    for i in 0..16 {
        sql.push_str(&format!("INSERT INTO t VALUES({i});\n"));
    }
    let from: Vec<String> = (0..12).map(|i| format!("t t{i}")).collect();
    sql.push_str(&format!("SELECT max(t0.x) FROM {};\n", from.join(", ")));
    let e = refused(&sql, "steps of work");
    let SqliteError::Refused { line, .. } = e else {
        unreachable!()
    };
    assert_eq!(line, 18);
}

#[test]
fn functions_outside_the_list_are_refused_and_file_functions_do_not_exist() {
    refused("SELECT load_extension('/tmp/evil.so');\n", "load_extension");
    refused(
        "CREATE TABLE t(a);\nINSERT INTO t VALUES(zeroblob(1000000000));\n",
        "zeroblob",
    );
    refused(
        "CREATE TABLE t(a);\nINSERT INTO t SELECT fts3_tokenizer('simple');\n",
        "fts3_tokenizer",
    );
    refused("SELECT sqlite_compileoption_get(0);\n", "sqlite_compileoption_get");
    // The shell's file functions are not in the library: still no file appears.
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest.db");
    let planted = dir.path().join("planted");
    for f in ["writefile", "edit"] {
        let sql = format!("CREATE TABLE t(a);\nSELECT {f}('{}', 'x');\n", planted.display());
        assert!(load_sql(&sql, &dest).is_err());
        assert!(!planted.exists());
        nothing_left(dir.path(), &dest);
    }
    assert!(load_sql("SELECT readfile('/etc/passwd');\n", &dest).is_err());
    nothing_left(dir.path(), &dest);
}

#[test]
fn pragmas_outside_the_list_and_other_schemas_are_refused() {
    for (sql, why) in [
        ("PRAGMA temp_store_directory = '/tmp';\n", "temp_store_directory"),
        ("PRAGMA schema_version = 7;\n", "schema_version"),
        ("PRAGMA max_page_count = 1;\n", "max_page_count"),
        ("PRAGMA temp.user_version = 1;\n", "schema temp"),
        ("CREATE TEMP TABLE x(a);\n", "temp"),
        ("CREATE TABLE temp.x(a);\n", "temp"),
        ("CREATE TABLE t(a);\nCREATE TEMP VIEW v AS SELECT * FROM t;\n", "temp"),
        (
            "CREATE TABLE t(a);\nCREATE TEMP TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END;\n",
            "temp",
        ),
        ("SELECT * FROM temp.sqlite_master;\n", "schema temp"),
        ("CREATE TABLE t(a);\nDROP TABLE t;\n", "DROP"),
        ("CREATE TABLE t(a);\nALTER TABLE t RENAME TO u;\n", "ALTER"),
        ("CREATE VIRTUAL TABLE f USING fts5(a);\n", "CREATE VIRTUAL TABLE"),
        (
            "CREATE TABLE t(a);\nINSERT INTO t SELECT name FROM pragma_database_list;\n",
            "pragma_database_list",
        ),
        ("CREATE TABLE t(a);\nINSERT INTO t SELECT name FROM dbstat;\n", "dbstat"),
        // ANALYZE is refused when it would create sqlite_stat1 (or run, if it exists).
        ("CREATE TABLE t(a);\nANALYZE;\n", "sqlite_stat1"),
    ] {
        refused(sql, why);
    }
}

#[test]
fn a_trigger_cannot_carry_an_attack_into_the_load() {
    // Created before the data so that it fires: its body is held to the same rules.
    refused(
        "CREATE TABLE t(a);\nCREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT load_extension('/tmp/evil.so'); END;\nINSERT INTO t VALUES(1);\n",
        "load_extension",
    );
    refused(
        "CREATE TABLE t(a);\nCREATE TABLE u(a);\nCREATE TRIGGER tr AFTER INSERT ON t BEGIN INSERT INTO u WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT x FROM c; END;\nINSERT INTO t VALUES(1);\n",
        "recursive",
    );
    // Where a dump puts triggers (after the data) it never fires: the database holds it
    // as text, and the file it names is not written.
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest.db");
    let planted = dir.path().join("planted");
    let sql = format!(
        "CREATE TABLE t(a);\nINSERT INTO t VALUES(1);\nCREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT writefile('{}', 'x'); END;\n",
        planted.display()
    );
    load_sql(&sql, &dest).unwrap();
    assert!(!planted.exists());
}

#[test]
fn a_huge_statement_is_refused_before_it_fills_memory() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest.db");
    let opts = LoadOptions::default().with_max_statement_bytes(Some(1 << 20));
    // A line without end: the loader stops reading at the bound.
    let endless = std::io::BufReader::new(std::io::repeat(b'x'));
    let e = load(endless, Path::new("evil.sql"), &dest, &opts).unwrap_err();
    let SqliteError::Refused { why, line, .. } = &e else {
        panic!("{e}")
    };
    assert!(why.contains("line is longer"), "{why}");
    assert_eq!(*line, 1);
    nothing_left(dir.path(), &dest);
    // A statement spread over many short lines is bounded the same way.
    let mut sql = String::from("CREATE TABLE t(a);\nINSERT INTO t VALUES(\n");
    while sql.len() < 2 << 20 {
        sql.push_str("'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'||\n");
    }
    sql.push_str("'');\n");
    let e = load(sql.as_bytes(), Path::new("evil.sql"), &dest, &opts).unwrap_err();
    let SqliteError::Refused { why, line, .. } = &e else {
        panic!("{e}")
    };
    assert!(why.contains("statement is longer"), "{why}");
    assert_eq!(*line, 2);
    nothing_left(dir.path(), &dest);
    // A genuine fast-path row of a large BLOB is well within the default bound.
    let blob = "ab".repeat(8 << 20);
    let sql = format!("CREATE TABLE t(a);\nINSERT INTO t VALUES(X'{blob}');\n");
    let r = load(sql.as_bytes(), Path::new("ok.sql"), &dest, &LoadOptions::default()).unwrap();
    assert_eq!(r.fast_rows, 1);
}

/// Dumps of real databases (copied first: never opened in place) load back with their
/// checksum, and none of their statements comes near the work budget.
#[test]
fn real_databases_round_trip_inside_the_fence() {
    let corpus = sqlvault_testkit::corpus_dir();
    let dir = tempfile::tempdir().unwrap();
    let mut loaded = 0;
    for name in [
        "chinook.sqlite",
        "chinook_autoinc.sqlite",
        "northwind.db",
        "datasette_fixtures.db",
        "datasette_extra.db",
        "gdal_geopackage.gpkg",
        // (gdal_rtree.gpkg is left out: its R*Tree fails rtreecheck() in the source.)
        "sqliteutils_worldcities.db",
        "mbtiles_plain_1.mbtiles",
        "mbtiles_geocoder_data.mbtiles",
        "qa_edge_utf16.db",
        "anki2022_collection.anki21",
        "fossil_node_mbtiles.fossil",
    ] {
        let src = dir.path().join(name);
        std::fs::copy(corpus.join(name), &src).unwrap();
        let mut sql = Vec::new();
        let rep = match Source::open(&src, SourceOptions::default()).unwrap().dump(&mut sql) {
            Ok(r) => r,
            // An unknown collation or module is named by the dump; not the load's concern.
            Err(e @ SqliteError::Unreproducible { .. }) => {
                eprintln!("{name}: {e}");
                continue;
            }
            Err(e) => panic!("{name}: {e}"),
        };
        let dest = dir.path().join(format!("{name}.loaded"));
        let r = load(sql.as_slice(), Path::new(name), &dest, &LoadOptions::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(r.checksum_verified, "{name}");
        assert_eq!(r.logical_checksum, rep.logical_checksum, "{name}");
        assert_eq!(
            logical_checksum(&Connection::open(&dest).unwrap()).unwrap(),
            rep.logical_checksum,
            "{name}"
        );
        eprintln!("{name}: {} bytes of SQL, peak {} steps", sql.len(), r.peak_steps);
        assert!(
            r.peak_steps < 100_000_000 + sql.len() as u64 * 16,
            "{name}: {} steps is near the budget",
            r.peak_steps
        );
        loaded += 1;
    }
    assert!(loaded >= 8, "{loaded}");
}

/// The costliest statement of a genuine dump — an index over a large table — stays far
/// below the work budget: what `STEPS_PER_BYTE` was measured on.
#[test]
fn building_indexes_on_a_large_table_stays_far_below_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big.db");
    let c = Connection::open(&src).unwrap();
    c.execute_batch(
        "CREATE TABLE big(id INTEGER PRIMARY KEY, a INTEGER, b TEXT, c REAL);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000)
           INSERT INTO big SELECT i, i * 7919 % 100003, printf('k%06d', i % 5000), i / 3.0 FROM n;
         CREATE INDEX big_a ON big(a);
         CREATE INDEX big_bc ON big(b, c, a);
         CREATE INDEX big_expr ON big(lower(b) || a, abs(c));",
    )
    .unwrap();
    drop(c);
    let mut sql = Vec::new();
    let rep = Source::open(&src, SourceOptions::default())
        .unwrap()
        .dump(&mut sql)
        .unwrap();
    let dest = dir.path().join("out.db");
    let r = load(sql.as_slice(), Path::new("big.sql"), &dest, &LoadOptions::default()).unwrap();
    assert_eq!(r.logical_checksum, rep.logical_checksum);
    let per_byte = r.peak_steps as f64 / sql.len() as f64;
    eprintln!(
        "{} bytes of SQL, peak {} steps: {per_byte:.2} per byte",
        sql.len(),
        r.peak_steps
    );
    assert!(per_byte < 4.0, "{per_byte}");
}

/// A live writer's journal is not hot: read-only opens racing a writer that commits
/// in a loop (its journal appearing and vanishing around every commit) never report
/// one. The race this guards: header read while the writer held its lock, lock probed
/// after it committed.
#[test]
fn a_live_writers_journal_is_never_called_hot() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("busy.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch("PRAGMA journal_mode=DELETE; CREATE TABLE t(x BLOB);")
        .unwrap();
    drop(c);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || {
            let c = rusqlite::Connection::open(&db).unwrap();
            c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                c.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (zeroblob(3000)); DELETE FROM t WHERE rowid % 7 = 0; COMMIT;")
                    .unwrap();
                n += 1;
                // Room for readers: a writer that never pauses starves them in rollback mode.
                std::thread::sleep(std::time::Duration::from_micros(500));
            }
            n
        })
    };
    // Several readers on two cores: a reader is preempted between its probes, the
    // moment the race needs.
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(2000);
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let db = db.clone();
            std::thread::spawn(move || {
                let mut opens = 0u64;
                while std::time::Instant::now() < deadline {
                    let o =
                        sqlvault_sqlite::SourceOptions::default().with_busy_timeout(std::time::Duration::from_secs(10));
                    match sqlvault_sqlite::Source::open(&db, o) {
                        Ok(_) => opens += 1,
                        Err(e) => return Err(format!("a read-only open beside a live writer failed: {e}")),
                    }
                }
                Ok(opens)
            })
        })
        .collect();
    let results: Vec<_> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let commits = writer.join().unwrap();
    let opens: u64 = results.into_iter().map(|r| r.unwrap()).sum();
    assert!(opens > 10 && commits > 10, "opens {opens}, commits {commits}");
}
