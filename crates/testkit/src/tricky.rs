//! A corpus of schemas and values that a lossy dump gets wrong: every case the SQL-dump
//! issue lists, in one database.

use std::path::Path;

use rusqlite::{Connection, params};

/// Shape of a corpus database.
#[derive(Debug, Clone)]
pub struct TrickyOptions {
    /// `UTF-8`, `UTF-16le` or `UTF-16be`.
    pub encoding: &'static str,
    /// Page size in bytes.
    pub page_size: u32,
    /// 0 none, 1 full, 2 incremental.
    pub auto_vacuum: u8,
    /// WAL journal mode (else rollback).
    pub wal: bool,
}

impl Default for TrickyOptions {
    fn default() -> Self {
        TrickyOptions {
            encoding: "UTF-8",
            page_size: 4096,
            auto_vacuum: 0,
            wal: true,
        }
    }
}

/// REAL values that must survive bit for bit.
pub const TRICKY_REALS: &[f64] = &[
    -0.0,
    0.0,
    5e-324,
    4.9407e-320,
    2.2250738585072014e-308,
    2.225073858507201e-308,
    1e308,
    1.7976931348623157e308,
    -1.7976931348623157e308,
    0.30000000000000004,
    0.1,
    1.0 / 3.0,
    123.45,
    -987654.3210987654,
    9007199254740993.0,
    1e22,
    1e23,
    6.02214076e23,
    f64::INFINITY,
    f64::NEG_INFINITY,
    1.5,
    2.0,
];

/// Builds the corpus at `path` (which must not exist).
pub fn tricky(path: &Path, o: &TrickyOptions) -> rusqlite::Result<()> {
    let c = Connection::open(path)?;
    c.execute_batch(&format!(
        "PRAGMA encoding='{}'; PRAGMA page_size={}; PRAGMA auto_vacuum={};",
        o.encoding, o.page_size, o.auto_vacuum
    ))?;
    if o.wal {
        c.execute_batch("PRAGMA journal_mode=WAL;")?;
    }
    c.execute_batch(
        r#"
        PRAGMA user_version = -42;
        PRAGMA application_id = 1397899348;
        BEGIN;
        -- rowids without an INTEGER PRIMARY KEY, with gaps
        CREATE TABLE plain(a, b, c);
        INSERT INTO plain(rowid, a, b, c) VALUES (3, 1, 'x', NULL), (10, 2, 'y', X''), (4000000000, 3, 'z', 1.5);
        CREATE TABLE ipk(id INTEGER PRIMARY KEY, v TEXT NOT NULL DEFAULT 'd');
        INSERT INTO ipk VALUES (-5, 'Neg'), (7, 'Seven'), (1000, 'Thousand');
        -- names that need quoting, and columns that shadow rowid names
        CREATE TABLE "odd ""name"" table"("col one" INTEGER, "select" TEXT, "x,y" REAL);
        INSERT INTO "odd ""name"" table" VALUES (1, 'sel', 2.5);
        CREATE TABLE shadowed(_rowid_ TEXT, rowid TEXT, v);
        INSERT INTO shadowed(oid, _rowid_, rowid, v) VALUES (77, 'a', 'b', 'c'), (5, 'd', 'e', 'f');
        CREATE TABLE wr(k TEXT, n INTEGER, v BLOB, PRIMARY KEY(k, n)) WITHOUT ROWID;
        INSERT INTO wr VALUES ('b', 2, X'01'), ('a', 9, NULL), ('a', 1, X'0203');
        CREATE TABLE strict_t(id INTEGER PRIMARY KEY, r REAL, t TEXT, b BLOB, a ANY) STRICT;
        INSERT INTO strict_t VALUES (1, 1.0, 'one', X'01', 1), (2, -0.0, '', X'', 'any'), (3, NULL, NULL, NULL, 2.5);
        CREATE TABLE auto(id INTEGER PRIMARY KEY AUTOINCREMENT, v);
        INSERT INTO auto(v) VALUES ('a'), ('b'), ('c');
        DELETE FROM auto WHERE v = 'c';
        CREATE TABLE auto2(id INTEGER PRIMARY KEY AUTOINCREMENT, v);
        INSERT INTO auto2(id, v) VALUES (100, 'x');
        -- generated columns, stored and virtual
        CREATE TABLE gen(a INTEGER, b INTEGER, s INTEGER AS (a * 2) STORED, v AS (a + b) VIRTUAL,
                         t TEXT GENERATED ALWAYS AS (upper(coalesce(b, 'n'))));
        INSERT INTO gen(a, b) VALUES (1, 2), (3, NULL);
        -- foreign keys whose child sorts before the parent
        CREATE TABLE parent(id INTEGER PRIMARY KEY, name TEXT UNIQUE);
        CREATE TABLE child(id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parent(id) ON DELETE CASCADE, note TEXT);
        INSERT INTO parent VALUES (1, 'p1'), (2, 'p2');
        INSERT INTO child VALUES (10, 1, 'c1'), (11, 2, 'c2'), (12, 2, 'c3');
        CREATE INDEX child_parent ON child(parent_id);
        CREATE INDEX plain_partial ON plain(a) WHERE a > 1;
        CREATE INDEX ipk_expr ON ipk(lower(v), length(v));
        CREATE VIEW child_names AS SELECT c.id, p.name FROM child c JOIN parent p ON p.id = c.parent_id;
        CREATE VIEW view_of_view AS SELECT * FROM child_names WHERE id > 10;
        -- if this fired during a load, parent names would change
        CREATE TRIGGER child_ai AFTER INSERT ON child BEGIN
            UPDATE parent SET name = name || '!' WHERE id = new.parent_id;
        END;
        -- virtual tables and their shadow tables
        CREATE VIRTUAL TABLE docs USING fts5(title, body);
        INSERT INTO docs VALUES ('first', 'the quick brown fox'), ('second', 'jumps over the lazy dog');
        INSERT INTO docs VALUES ('third', 'pack my box with five dozen liquor jugs');
        CREATE VIRTUAL TABLE old_docs USING fts4(content);
        INSERT INTO old_docs VALUES ('sphinx of black quartz'), ('judge my vow');
        CREATE VIRTUAL TABLE geo USING rtree(id, minx, maxx, miny, maxy);
        INSERT INTO geo VALUES (1, 0, 1, 0, 1), (2, -5.5, 5.5, 10, 20);
        CREATE TRIGGER ipk_to_fts AFTER INSERT ON ipk BEGIN
            INSERT INTO docs(title, body) VALUES (new.v, 'trigger');
        END;
        CREATE TABLE vals(id INTEGER PRIMARY KEY, v, note TEXT);
        COMMIT;
        "#,
    )?;
    let mut ins = c.prepare("INSERT INTO vals(v, note) VALUES (?1, ?2)")?;
    for r in TRICKY_REALS {
        ins.execute(params![r, "real"])?;
    }
    for i in [i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX] {
        ins.execute(params![i, "integer"])?;
    }
    let texts: &[&str] = &[
        "",
        "it's \"quoted\"",
        "line1\nline2\r\nline3\r",
        "nul\0inside",
        "\0",
        "non-BMP 😀 𝄞 and BMP é ü ß 中文",
        "-- not a comment; DROP TABLE vals;",
        "'||char(10)||'",
        "trailing backslash \\",
    ];
    for t in texts {
        ins.execute(params![t, "text"])?;
    }
    let big: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    for b in [Vec::new(), vec![0u8; 5], b"a\0b'c\n".to_vec(), big] {
        ins.execute(params![b, "blob"])?;
    }
    ins.execute(params![rusqlite::types::Null, "null"])?;
    ins.execute(params!["a".repeat(50_000), "long text on overflow pages"])?;
    if o.encoding == "UTF-8" {
        // TEXT that is not UTF-8 can only be made in a UTF-8 database.
        c.execute_batch(
            "INSERT INTO vals(v, note) VALUES (CAST(X'ff00fe' AS TEXT), 'invalid utf-8'), \
             (CAST(X'eda080' AS TEXT), 'surrogate bytes');",
        )?;
    }
    // Values whose affinity conversion must not change on reload.
    c.execute_batch(
        "CREATE TABLE affinity(i INTEGER, r REAL, t TEXT, n NUMERIC, b BLOB);
         INSERT INTO affinity VALUES ('12', '3.0', 12, '1e3', '7'), ('abc', 'x', 1.5, ' 12 ', 8.5),
                                     (1.5, 2, X'00', 'nan', NULL), (9223372036854775807, 1e400, -0.0, '0x10', '');
         INSERT INTO plain(a, b, c) WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
           SELECT i, hex(randomblob(20)), i * 1.5 FROM n;
         ANALYZE;",
    )?;
    Ok(())
}
