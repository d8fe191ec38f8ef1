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
    let mut h = blake3::Hasher::new();
    h.update(b"sqlvault-logical-v1");
    for pragma in ["user_version", "application_id"] {
        let v: i64 = conn.query_row(&format!("PRAGMA {pragma}"), [], |r| r.get(0))?;
        h.update(&v.to_le_bytes());
    }
    {
        let mut stmt = conn.prepare("SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY type, name")?;
        hash_rows(&mut h, &mut stmt)?;
    }
    let tables: Vec<(String, bool)> = {
        let mut stmt = conn.prepare(
            "SELECT name, wr FROM pragma_table_list WHERE schema = 'main' AND type IN ('table', 'shadow') \
             AND name NOT IN ('sqlite_schema', 'sqlite_temp_schema') ORDER BY name",
        )?;
        stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?)))?
            .collect::<Result<_, _>>()?
    };
    for (name, without_rowid) in tables {
        h.update(b"T");
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        let q = quote(&name);
        let sql = if without_rowid {
            let pk: Vec<String> = {
                let mut stmt = conn.prepare("SELECT name FROM pragma_table_info(?1) WHERE pk > 0 ORDER BY pk")?;
                stmt.query_map(params![name], |r| r.get::<_, String>(0))?
                    .collect::<Result<_, _>>()?
            };
            let order: Vec<String> = pk.iter().map(|c| quote(c)).collect();
            format!("SELECT * FROM {q} ORDER BY {}", order.join(", "))
        } else {
            format!("SELECT _rowid_, * FROM {q} ORDER BY _rowid_")
        };
        let mut stmt = conn.prepare(&sql)?;
        hash_rows(&mut h, &mut stmt)?;
    }
    Ok(*h.finalize().as_bytes())
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Values are encoded into a buffer and fed to BLAKE3 in large blocks: one `update`
/// per value costs more than the hashing itself (measured: 4.3 s → see benchmarks).
struct Sink<'a> {
    h: &'a mut blake3::Hasher,
    buf: Vec<u8>,
}

impl Sink<'_> {
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
}

fn hash_rows(h: &mut blake3::Hasher, stmt: &mut rusqlite::Statement<'_>) -> rusqlite::Result<()> {
    let n = stmt.column_count();
    let mut sink = Sink {
        h,
        buf: Vec::with_capacity(64 * 1024),
    };
    let mut rows = stmt.raw_query();
    while let Some(row) = rows.next()? {
        sink.put(b"R");
        sink.put(&(n as u32).to_le_bytes());
        for i in 0..n {
            match row.get_ref(i)? {
                ValueRef::Null => sink.put(&[0]),
                ValueRef::Integer(v) => {
                    sink.put(&[1]);
                    sink.put(&v.to_le_bytes());
                }
                ValueRef::Real(v) => {
                    sink.put(&[2]);
                    sink.put(&v.to_bits().to_le_bytes());
                }
                ValueRef::Text(b) => {
                    sink.put(&[3]);
                    sink.put(&(b.len() as u64).to_le_bytes());
                    sink.put(b);
                }
                ValueRef::Blob(b) => {
                    sink.put(&[4]);
                    sink.put(&(b.len() as u64).to_le_bytes());
                    sink.put(b);
                }
            }
        }
    }
    sink.flush();
    Ok(())
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
}
