//! The logical checksum, and the table walk it is defined by.
//!
//! The walk ([`scan`]) is shared with the SQL dump: a dump visits exactly the tables,
//! rows and values the checksum hashes, in the same order, so both come out of one
//! read pass and cannot drift apart.

use rusqlite::types::ValueRef;
use rusqlite::{Connection, params};

/// Logical checksum of a database's content, independent of page layout.
///
/// Definition (version 1), fed to BLAKE3 in this order:
/// 1. `"sqlvault-logical-v1"`, `user_version`, `application_id`;
/// 2. every row of `sqlite_schema` except `rootpage`, ordered by type then name;
/// 3. for every ordinary or shadow table ordered by name: the table name, then every
///    row in rowid order (rowid first) or, for WITHOUT ROWID tables, in primary-key
///    order. Virtual tables contribute only their schema row: their content lives in
///    their shadow tables, which are covered.
///
/// Each value is a tag byte then its bytes: NULL `0`; INTEGER `1` + i64 LE; REAL `2` +
/// IEEE-754 bits LE (so −0.0 and 0.0 differ); TEXT `3` + u64 length + bytes; BLOB `4` +
/// u64 length + bytes. Rows start with `R` and a column count; tables with `T`.
pub fn logical_checksum(conn: &Connection) -> rusqlite::Result<[u8; 32]> {
    scan(conn, &mut NoVisit)
}

/// A column as `SELECT *` returns it.
#[derive(Debug, Clone)]
pub(crate) struct Column {
    pub name: String,
    /// A generated column (virtual or stored): selected and hashed, never inserted.
    pub generated: bool,
}

/// A table the checksum covers.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    pub name: String,
    pub without_rowid: bool,
    /// For rowid tables, the first of `_rowid_`, `rowid`, `oid` that no column
    /// shadows; `None` when all three are column names (the rowid cannot be named).
    pub rowid: Option<&'static str>,
    /// Whether a column is an alias of the rowid (INTEGER PRIMARY KEY).
    pub ipk: bool,
    pub columns: Vec<Column>,
    pk: Vec<String>,
}

impl Table {
    /// The query whose rows the checksum hashes: rowid first (when it can be named),
    /// then `*`, in rowid or primary-key order.
    pub fn select_sql(&self) -> String {
        let q = quote_ident(&self.name);
        if self.without_rowid {
            let order: Vec<String> = self.pk.iter().map(|c| quote_ident(c)).collect();
            format!("SELECT * FROM {q} ORDER BY {}", order.join(", "))
        } else if let Some(r) = self.rowid {
            format!("SELECT {r}, * FROM {q} ORDER BY {r}")
        } else {
            // A rowid table's natural scan order is rowid order.
            format!("SELECT * FROM {q}")
        }
    }

    /// Whether the rows selected by [`Table::select_sql`] start with the rowid.
    pub fn selects_rowid(&self) -> bool {
        !self.without_rowid && self.rowid.is_some()
    }
}

/// What a walk over the content sees, besides the digest it computes.
pub(crate) trait Visit {
    type Error: From<rusqlite::Error>;
    fn table(&mut self, _t: &Table) -> Result<(), Self::Error> {
        Ok(())
    }
    fn row(&mut self, _t: &Table, _row: &rusqlite::Row<'_>, _n: usize) -> Result<(), Self::Error> {
        Ok(())
    }
}

struct NoVisit;
impl Visit for NoVisit {
    type Error = rusqlite::Error;
}

/// The tables the checksum covers, ordered by name.
pub(crate) fn tables(conn: &Connection) -> rusqlite::Result<Vec<Table>> {
    let list: Vec<(String, bool)> = {
        let mut stmt = conn.prepare(
            "SELECT name, wr FROM pragma_table_list WHERE schema = 'main' AND type IN ('table', 'shadow') \
             AND name NOT IN ('sqlite_schema', 'sqlite_temp_schema') ORDER BY name",
        )?;
        stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?)))?
            .collect::<Result<_, _>>()?
    };
    let mut out = Vec::with_capacity(list.len());
    for (name, without_rowid) in list {
        let mut columns = Vec::new();
        let mut pk: Vec<(i64, String, String)> = Vec::new();
        {
            let mut stmt = conn.prepare("SELECT name, type, pk, hidden FROM pragma_table_xinfo(?1) ORDER BY cid")?;
            let mut rows = stmt.query(params![name])?;
            while let Some(r) = rows.next()? {
                let col: String = r.get(0)?;
                let ty: String = r.get::<_, Option<String>>(1)?.unwrap_or_default();
                let k: i64 = r.get(2)?;
                let hidden: i64 = r.get(3)?;
                if hidden == 1 {
                    continue; // hidden columns of virtual tables are not in `*`
                }
                if k > 0 {
                    pk.push((k, col.clone(), ty));
                }
                columns.push(Column {
                    name: col,
                    generated: hidden == 2 || hidden == 3,
                });
            }
        }
        pk.sort();
        let rowid = if without_rowid {
            None
        } else {
            ["_rowid_", "rowid", "oid"]
                .into_iter()
                .find(|a| !columns.iter().any(|c| c.name.eq_ignore_ascii_case(a)))
        };
        // A single-column INTEGER primary key is an alias of the rowid unless SQLite
        // had to build an index for it (the `PRIMARY KEY DESC` quirk).
        let ipk = !without_rowid
            && pk.len() == 1
            && pk[0].2.eq_ignore_ascii_case("INTEGER")
            && !conn
                .prepare("SELECT 1 FROM pragma_index_list(?1) WHERE origin = 'pk'")?
                .exists(params![name])?;
        out.push(Table {
            name,
            without_rowid,
            rowid,
            ipk,
            columns,
            pk: pk.into_iter().map(|(_, c, _)| c).collect(),
        });
    }
    Ok(out)
}

/// Walks every covered table and row in checksum order, handing each to `visit`, and
/// returns the checksum.
pub(crate) fn scan<V: Visit>(conn: &Connection, visit: &mut V) -> Result<[u8; 32], V::Error> {
    let mut h = blake3::Hasher::new();
    h.update(b"sqlvault-logical-v1");
    for pragma in ["user_version", "application_id"] {
        let v: i64 = conn.query_row(&format!("PRAGMA {pragma}"), [], |r| r.get(0))?;
        h.update(&v.to_le_bytes());
    }
    let mut sink = Sink::new(&mut h);
    {
        let mut stmt = conn.prepare("SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY type, name")?;
        let mut rows = stmt.raw_query();
        while let Some(row) = rows.next()? {
            sink.row(row, 4)?;
        }
    }
    for t in tables(conn)? {
        sink.put(b"T");
        sink.put(&(t.name.len() as u64).to_le_bytes());
        sink.put(t.name.as_bytes());
        visit.table(&t)?;
        let mut stmt = conn.prepare(&t.select_sql())?;
        let n = stmt.column_count();
        let mut rows = stmt.raw_query();
        while let Some(row) = rows.next()? {
            sink.row(row, n)?;
            visit.row(&t, row, n)?;
        }
    }
    sink.flush();
    Ok(*h.finalize().as_bytes())
}

pub(crate) fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Values are encoded into a buffer and fed to BLAKE3 in large blocks: one `update`
/// per value costs more than the hashing itself.
struct Sink<'a> {
    h: &'a mut blake3::Hasher,
    buf: Vec<u8>,
}

impl<'a> Sink<'a> {
    fn new(h: &'a mut blake3::Hasher) -> Self {
        Sink {
            h,
            buf: Vec::with_capacity(64 * 1024),
        }
    }

    #[inline]
    fn put(&mut self, b: &[u8]) {
        if self.buf.len() + b.len() > self.buf.capacity() {
            self.flush();
            if b.len() >= self.buf.capacity() {
                self.h.update(b);
                return;
            }
        }
        self.buf.extend_from_slice(b);
    }

    fn flush(&mut self) {
        self.h.update(&self.buf);
        self.buf.clear();
    }

    fn row(&mut self, row: &rusqlite::Row<'_>, n: usize) -> rusqlite::Result<()> {
        self.put(b"R");
        self.put(&(n as u32).to_le_bytes());
        for i in 0..n {
            match row.get_ref(i)? {
                ValueRef::Null => self.put(&[0]),
                ValueRef::Integer(v) => {
                    self.put(&[1]);
                    self.put(&v.to_le_bytes());
                }
                ValueRef::Real(v) => {
                    self.put(&[2]);
                    self.put(&v.to_bits().to_le_bytes());
                }
                ValueRef::Text(b) => {
                    self.put(&[3]);
                    self.put(&(b.len() as u64).to_le_bytes());
                    self.put(b);
                }
                ValueRef::Blob(b) => {
                    self.put(&[4]);
                    self.put(&(b.len() as u64).to_le_bytes());
                    self.put(b);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(sql: &str) -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(sql).unwrap();
        c
    }

    #[test]
    fn checksum_sees_content_not_layout() {
        let base = "CREATE TABLE t(a, b); INSERT INTO t VALUES (1, 'x'), (2, X'00ff');
                    CREATE TABLE w(k TEXT PRIMARY KEY, v) WITHOUT ROWID; INSERT INTO w VALUES ('b', 2), ('a', 1);";
        let a = logical_checksum(&db(base)).unwrap();
        // Same content, inserted in another order and vacuumed: same checksum.
        let b = logical_checksum(&db(
            "CREATE TABLE t(a, b); INSERT INTO t(rowid, a, b) VALUES (2, 2, X'00ff'), (1, 1, 'x');
             CREATE TABLE w(k TEXT PRIMARY KEY, v) WITHOUT ROWID; INSERT INTO w VALUES ('a', 1), ('b', 2); VACUUM;",
        ))
        .unwrap();
        assert_eq!(a, b);
        // Any change of value, type, rowid or pragma changes it.
        for change in [
            "UPDATE t SET b = 'y' WHERE a = 1",
            "UPDATE t SET a = 1.0 WHERE a = 1",
            "UPDATE t SET rowid = 5 WHERE a = 2",
            "PRAGMA user_version = 3",
            "UPDATE w SET v = 0.0 WHERE k = 'a'",
            "CREATE INDEX i ON t(a)",
        ] {
            let c = db(base);
            c.execute_batch(change).unwrap();
            assert_ne!(logical_checksum(&c).unwrap(), a, "{change}");
        }
        let c = db(base);
        c.execute_batch("UPDATE w SET v = 0.0 WHERE k = 'a'").unwrap();
        let pos = logical_checksum(&c).unwrap();
        c.execute_batch("UPDATE w SET v = -0.0 WHERE k = 'a'").unwrap();
        assert_ne!(logical_checksum(&c).unwrap(), pos, "-0.0 differs from 0.0");
    }

    #[test]
    fn rowid_is_hashed_even_when_a_column_is_named_rowid() {
        // `_rowid_` names the column here, so the real rowid is selected as `rowid`.
        let a = db("CREATE TABLE t(_rowid_, v); INSERT INTO t(rowid, _rowid_, v) VALUES (1, 9, 'a');");
        let b = db("CREATE TABLE t(_rowid_, v); INSERT INTO t(rowid, _rowid_, v) VALUES (2, 9, 'a');");
        assert_ne!(logical_checksum(&a).unwrap(), logical_checksum(&b).unwrap());
        let t = tables(&a).unwrap();
        assert_eq!(t[0].rowid, Some("rowid"));
    }

    #[test]
    fn integer_primary_key_aliases_are_recognised() {
        let c = db("CREATE TABLE a(id INTEGER PRIMARY KEY, v);
                    CREATE TABLE b(id INTEGER PRIMARY KEY DESC, v);
                    CREATE TABLE c(id INT PRIMARY KEY, v);
                    CREATE TABLE d(x, id INTEGER, PRIMARY KEY(id));
                    CREATE TABLE e(id INTEGER PRIMARY KEY, v) WITHOUT ROWID;");
        let ipk: Vec<(String, bool)> = tables(&c).unwrap().into_iter().map(|t| (t.name, t.ipk)).collect();
        assert_eq!(
            ipk,
            vec![
                ("a".into(), true),
                ("b".into(), false),
                ("c".into(), false),
                ("d".into(), true),
                ("e".into(), false)
            ]
        );
    }
}
