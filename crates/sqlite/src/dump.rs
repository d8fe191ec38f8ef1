//! Lossless SQL dumps.
//!
//! A dump is SQL text that `sqlvault load` and the stock `sqlite3` shell both turn back
//! into a database with the same logical checksum as the source (see
//! `docs/format.md`, "SQL dumps"). It is written in one pass over the same walk that
//! defines the logical checksum, so the checksum in its trailer is that of exactly the
//! rows it contains.
//!
//! Layout (one statement per line, except schema statements, which are verbatim):
//! ```text
//! -- sqlvault dump v1 …                      header comment
//! PRAGMA page_size / auto_vacuum / encoding  before anything creates the file
//! PRAGMA foreign_keys=OFF; BEGIN TRANSACTION;
//! PRAGMA user_version / application_id
//! internal tables (sqlite_sequence, sqlite_stat*) under writable_schema
//! CREATE TABLE …                             ordinary and shadow tables, schema order
//! virtual tables as sqlite_schema rows       so no module runs during the load
//! INSERT …                                   every table by name, rows in rowid/PK order
//! sqlite_sequence rows                       last, after AUTOINCREMENT inserts moved it
//! CREATE INDEX / VIEW / TRIGGER              after the data: faster, and no trigger fires
//! COMMIT; PRAGMA journal_mode=WAL (if WAL)
//! -- sqlvault logical checksum <hex>         trailer: completeness and content proof
//! ```

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use rusqlite::Connection;
use rusqlite::types::ValueRef;

use crate::checksum::{Table, Visit, quote_ident, scan, tables};
use crate::literal::{push_blob, push_real, push_text};
use crate::snapshot::read_info;
use crate::{DbInfo, SnapshotMethod, Source, SqliteError};

/// First line of every sqlvault dump.
pub const DUMP_HEADER: &str = "-- sqlvault dump v1";
/// Prefix of the trailer line that carries the logical checksum.
pub const DUMP_TRAILER: &str = "-- sqlvault logical checksum ";

/// What a dump produced.
#[derive(Debug, Clone)]
pub struct DumpReport {
    /// Facts about the source, read inside the dump's transaction.
    pub info: DbInfo,
    /// Logical checksum of exactly the content dumped.
    pub logical_checksum: [u8; 32],
    /// Bytes of SQL written.
    pub bytes: u64,
    /// Tables whose rows were dumped.
    pub tables: usize,
    /// Rows dumped.
    pub rows: u64,
    /// How a consistent view was obtained.
    pub method: SnapshotMethod,
}

/// How often the dump hands its buffer to the writer.
const FLUSH_AT: usize = 256 * 1024;

impl Source {
    /// Writes a lossless SQL dump of one consistent state of the database to `out`.
    ///
    /// WAL mode: one read transaction on the live database (writers continue; a long
    /// dump holds back checkpoints while it runs). Rollback-journal mode, or with
    /// `force_backup_copy`: a one-step backup-API copy to a private temporary file first,
    /// so the application's writers are blocked only for that copy.
    ///
    /// Everything that could make the dump lossy is checked before the first byte is
    /// written. `out` receives large writes; wrap it in nothing.
    pub fn dump<W: Write>(&mut self, out: W) -> Result<DumpReport, SqliteError> {
        let wal = self.journal_mode()? == "wal";
        if wal && !self.options().force_backup_copy {
            self.conn()
                .execute_batch("BEGIN; SELECT count(*) FROM sqlite_schema;")
                .map_err(|e| self.err(e))?;
            let r = read_info(self.conn())
                .map_err(|e| self.err(e))
                .and_then(|info| dump_conn(self.conn(), self.path(), info, out));
            let _ = self.conn().execute_batch("COMMIT");
            r.map(|r| DumpReport {
                method: SnapshotMethod::ReadTransaction,
                ..r
            })
        } else {
            let (tmp, _) = self.private_copy()?;
            let (copy, info) = self.open_copy(tmp.path())?;
            dump_conn(&copy, self.path(), info, out).map(|r| DumpReport {
                method: SnapshotMethod::BackupCopy,
                ..r
            })
        }
    }
}

struct Obj {
    ty: String,
    name: String,
    tbl: String,
    sql: Option<String>,
}

fn is_virtual(o: &Obj) -> bool {
    o.ty == "table"
        && o.sql
            .as_deref()
            .is_some_and(|s| s.len() >= 20 && s[..20].eq_ignore_ascii_case("CREATE VIRTUAL TABLE"))
}

fn is_internal(o: &Obj) -> bool {
    o.ty == "table" && o.name.len() > 7 && o.name[..7].eq_ignore_ascii_case("sqlite_")
}

/// A schema statement followed by its terminator; a trailing `--` comment would swallow
/// a `;` on the same line.
fn push_stmt(out: &mut Vec<u8>, sql: &str) {
    out.extend_from_slice(sql.as_bytes());
    if sql.lines().last().is_some_and(|l| l.contains("--")) {
        out.push(b'\n');
    }
    out.extend_from_slice(b";\n");
}

pub(crate) fn dump_conn<W: Write>(
    conn: &Connection,
    path: &Path,
    info: DbInfo,
    mut w: W,
) -> Result<DumpReport, SqliteError> {
    let sq = |source| SqliteError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let objs: Vec<Obj> = {
        let mut stmt = conn
            .prepare("SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY rowid")
            .map_err(sq)?;
        stmt.query_map([], |r| {
            Ok(Obj {
                ty: r.get(0)?,
                name: r.get(1)?,
                tbl: r.get(2)?,
                sql: r.get(3)?,
            })
        })
        .map_err(sq)?
        .collect::<Result<_, _>>()
        .map_err(sq)?
    };
    let shadow: HashSet<String> = {
        let mut stmt = conn
            .prepare("SELECT name FROM pragma_table_list WHERE schema = 'main' AND type = 'shadow'")
            .map_err(sq)?;
        stmt.query_map([], |r| r.get(0))
            .map_err(sq)?
            .collect::<Result<_, _>>()
            .map_err(sq)?
    };
    let auto_vacuum: i64 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0)).map_err(sq)?;
    let covered = tables(conn).map_err(sq)?;
    preflight(path, &info, &objs, &shadow, &covered)?;

    let mut out = Out {
        w: &mut w,
        buf: Vec::with_capacity(FLUSH_AT + 64 * 1024),
        bytes: 0,
    };
    let b = &mut out.buf;
    writeln!(
        b,
        "{DUMP_HEADER} (SQLite {}; page_size {}; encoding {}; journal_mode {})",
        rusqlite::version(),
        info.page_size,
        info.text_encoding,
        info.journal_mode
    )
    .expect("vec");
    b.extend_from_slice(b"-- load with `sqlvault load FILE DB` or `sqlite3 DB < FILE`\n");
    // Before anything creates the file: these are fixed once the first page exists.
    writeln!(b, "PRAGMA page_size={};", info.page_size).expect("vec");
    writeln!(b, "PRAGMA auto_vacuum={auto_vacuum};").expect("vec");
    writeln!(b, "PRAGMA encoding='{}';", info.text_encoding).expect("vec");
    b.extend_from_slice(b"PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\n");
    writeln!(b, "PRAGMA user_version={};", info.user_version).expect("vec");
    writeln!(b, "PRAGMA application_id={};", info.application_id).expect("vec");
    // Internal tables first, so that an AUTOINCREMENT table finds sqlite_sequence
    // already there, and exactly as the source has it (ANALYZE may not make stat4).
    let internal: Vec<&Obj> = objs.iter().filter(|o| is_internal(o) && o.sql.is_some()).collect();
    if !internal.is_empty() {
        b.extend_from_slice(b"PRAGMA writable_schema=ON;\n");
        for o in &internal {
            push_stmt(b, o.sql.as_deref().expect("filtered"));
        }
        b.extend_from_slice(b"PRAGMA writable_schema=OFF;\n");
    }
    for o in objs
        .iter()
        .filter(|o| o.ty == "table" && !is_internal(o) && !is_virtual(o))
    {
        if let Some(sql) = &o.sql {
            push_stmt(b, sql);
        }
    }
    // Virtual tables as schema rows (the shell's own technique): their shadow tables
    // were created above and get their rows below, and no module code runs at load.
    let vtabs: Vec<&Obj> = objs.iter().filter(|o| is_virtual(o)).collect();
    if !vtabs.is_empty() {
        b.extend_from_slice(b"PRAGMA writable_schema=ON;\n");
        for o in vtabs {
            b.extend_from_slice(b"INSERT INTO sqlite_schema(type,name,tbl_name,rootpage,sql) VALUES('table',");
            push_text(b, o.name.as_bytes(), true);
            b.push(b',');
            push_text(b, o.tbl.as_bytes(), true);
            b.extend_from_slice(b",0,");
            push_text(b, o.sql.as_deref().unwrap_or_default().as_bytes(), true);
            b.extend_from_slice(b");\n");
        }
        b.extend_from_slice(b"PRAGMA writable_schema=OFF;\n");
    }

    let mut emit = Emit {
        out: &mut out,
        seq: Vec::new(),
        prefix: Vec::new(),
        cols: Vec::new(),
        to_seq: false,
        utf8: info.text_encoding == "UTF-8",
        path,
        rows: 0,
        tables: 0,
    };
    let checksum = scan(conn, &mut emit).map_err(|e| match e {
        EmitError::Sql(source) => sq(source),
        EmitError::Other(e) => e,
    })?;
    let (rows, ntables, seq) = (emit.rows, emit.tables, std::mem::take(&mut emit.seq));
    let b = &mut out.buf;
    b.extend_from_slice(&seq);
    for o in objs
        .iter()
        .filter(|o| matches!(o.ty.as_str(), "index" | "view" | "trigger"))
    {
        if let Some(sql) = &o.sql {
            push_stmt(b, sql);
        }
    }
    b.extend_from_slice(b"COMMIT;\n");
    if info.journal_mode == "wal" {
        b.extend_from_slice(b"PRAGMA journal_mode=WAL;\n");
    }
    writeln!(b, "{DUMP_TRAILER}{}", hex::encode(checksum)).expect("vec");
    out.flush()?;
    Ok(DumpReport {
        info,
        logical_checksum: checksum,
        bytes: out.bytes,
        tables: ntables,
        rows,
        method: SnapshotMethod::ReadTransaction,
    })
}

/// Everything that would make the dump lossy or fail to load, found before writing:
/// the schema is replayed into an in-memory database (unknown collations, modules and
/// functions fail there by name), and rowids that cannot be named are refused.
fn preflight(
    path: &Path,
    info: &DbInfo,
    objs: &[Obj],
    shadow: &HashSet<String>,
    covered: &[Table],
) -> Result<(), SqliteError> {
    let bad = |what: String| SqliteError::Unreproducible {
        path: path.to_path_buf(),
        what,
        source: None,
    };
    for t in covered {
        if !t.without_rowid && t.rowid.is_none() && !t.ipk {
            return Err(bad(format!(
                "table {} has columns named rowid, _rowid_ and oid, so its rowids cannot be written",
                t.name
            )));
        }
    }
    let mem = Connection::open_in_memory().map_err(|source| SqliteError::Sqlite {
        path: path.to_path_buf(),
        source,
    })?;
    let _ = mem.execute_batch(&format!("PRAGMA encoding='{}'", info.text_encoding));
    let replay = |o: &Obj| -> Result<(), SqliteError> {
        let Some(sql) = &o.sql else { return Ok(()) };
        mem.execute_batch(sql).map_err(|e| {
            let mut what = if is_virtual(o) {
                format!("virtual table {} cannot be rebuilt here", o.name)
            } else {
                format!("{} {} cannot be rebuilt here", o.ty, o.name)
            };
            if e.to_string().contains("no such collation sequence") {
                // The application registers that collation itself; rebuilding its
                // indexes without it would order them wrongly for the application.
                what.push_str(
                    " (a collation only the application has: what it orders cannot be rebuilt without it; \
                     a page snapshot keeps the database as it is)",
                );
            }
            SqliteError::Unreproducible {
                path: path.to_path_buf(),
                what,
                source: Some(e),
            }
        })
    };
    // Shadow tables are made by their virtual table here, as they would be by any
    // application that creates one.
    for o in objs
        .iter()
        .filter(|o| o.ty == "table" && !is_internal(o) && !shadow.contains(&o.name))
    {
        replay(o)?;
    }
    for o in objs.iter().filter(|o| o.ty != "table") {
        replay(o)?;
    }
    Ok(())
}

struct Out<'w, W: Write> {
    w: &'w mut W,
    buf: Vec<u8>,
    bytes: u64,
}

impl<W: Write> Out<'_, W> {
    fn flush(&mut self) -> Result<(), SqliteError> {
        self.w
            .write_all(&self.buf)
            .map_err(|source| SqliteError::Output { source })?;
        self.bytes += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

enum EmitError {
    Sql(rusqlite::Error),
    Other(SqliteError),
}

impl From<rusqlite::Error> for EmitError {
    fn from(e: rusqlite::Error) -> Self {
        EmitError::Sql(e)
    }
}

/// The dump's side of the walk: one INSERT per row.
struct Emit<'a, 'w, W: Write> {
    out: &'a mut Out<'w, W>,
    /// sqlite_sequence's rows, written after every AUTOINCREMENT insert.
    seq: Vec<u8>,
    /// `INSERT INTO "t"(…) VALUES(` for the current table.
    prefix: Vec<u8>,
    /// Which selected columns are written.
    cols: Vec<usize>,
    to_seq: bool,
    utf8: bool,
    path: &'a Path,
    rows: u64,
    tables: usize,
}

impl<W: Write> Visit for Emit<'_, '_, W> {
    type Error = EmitError;

    fn table(&mut self, t: &Table) -> Result<(), EmitError> {
        self.tables += 1;
        self.to_seq = t.name == "sqlite_sequence";
        if self.to_seq {
            self.seq.extend_from_slice(b"DELETE FROM \"sqlite_sequence\";\n");
        }
        // Selected: [rowid,] then every column of `*`.
        let first = usize::from(t.selects_rowid());
        self.cols.clear();
        let mut names: Vec<String> = Vec::new();
        let explicit_rowid = !t.without_rowid && !t.ipk && t.selects_rowid();
        if explicit_rowid {
            self.cols.push(0);
            names.push(t.rowid.expect("selected").to_string());
        }
        for (j, c) in t.columns.iter().enumerate() {
            if !c.generated {
                self.cols.push(first + j);
                names.push(quote_ident(&c.name));
            }
        }
        let any_generated = t.columns.iter().any(|c| c.generated);
        self.prefix.clear();
        self.prefix.extend_from_slice(b"INSERT INTO ");
        self.prefix.extend_from_slice(quote_ident(&t.name).as_bytes());
        if explicit_rowid || any_generated {
            self.prefix.push(b'(');
            self.prefix.extend_from_slice(names.join(",").as_bytes());
            self.prefix.push(b')');
        }
        self.prefix.extend_from_slice(b" VALUES(");
        Ok(())
    }

    fn row(&mut self, t: &Table, row: &rusqlite::Row<'_>, _n: usize) -> Result<(), EmitError> {
        self.rows += 1;
        let b = if self.to_seq { &mut self.seq } else { &mut self.out.buf };
        b.extend_from_slice(&self.prefix);
        for (k, &i) in self.cols.iter().enumerate() {
            if k > 0 {
                b.push(b',');
            }
            match row.get_ref(i)? {
                ValueRef::Null => b.extend_from_slice(b"NULL"),
                ValueRef::Integer(v) => {
                    let _ = write!(b, "{v}");
                }
                ValueRef::Real(v) => push_real(b, v),
                ValueRef::Text(s) => {
                    if !push_text(b, s, self.utf8) {
                        return Err(EmitError::Other(SqliteError::Unreproducible {
                            path: self.path.to_path_buf(),
                            what: format!(
                                "table {} holds a TEXT value that is not valid UTF-16 (a lone surrogate)",
                                t.name
                            ),
                            source: None,
                        }));
                    }
                }
                ValueRef::Blob(s) => push_blob(b, s),
            }
        }
        b.extend_from_slice(b");\n");
        if self.out.buf.len() >= FLUSH_AT {
            self.out.flush().map_err(EmitError::Other)?;
        }
        Ok(())
    }
}
