//! Collations an application registers itself (Anki's `unicase`, Android's `LOCALIZED`
//! and `UNICODE`) and sqlvault cannot have.
//!
//! SQLite stores only a collation's *name*: any statement that touches an index (or a
//! WITHOUT ROWID table) ordered by an unknown collation fails to prepare with "no such
//! collation sequence", `integrity_check` included. A read-only connection can still
//! walk such a b-tree in its stored order, which is all the snapshot, the logical
//! checksum and the dump need: walking never compares keys. So read-only connections
//! get a *placeholder* for each such name (bytewise order), and every check whose
//! answer depends on the real order — `integrity_check`'s index-content checks — is
//! reported as not done, by index name, instead of failing the whole operation.
//!
//! A placeholder must never reach a connection that writes: an index built or updated
//! with it would be ordered differently from the application's collation, which is
//! corruption to the application. Connections that write (load, conversions) keep
//! failing at the `CREATE`, naming the collation.

use rusqlite::Connection;

/// The collations built into every SQLite.
const BUILT_IN: [&str; 3] = ["BINARY", "NOCASE", "RTRIM"];

/// An index (or WITHOUT ROWID table) ordered by a collation sqlvault does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppCollation {
    /// The index's name (`sqlite_autoindex_…` for a PRIMARY KEY or UNIQUE constraint).
    pub index: String,
    /// The table it belongs to.
    pub table: String,
    /// The collation's name, as the schema spells it.
    pub collation: String,
}

impl AppCollation {
    /// One line for reports: what was not checked and why.
    pub fn describe(&self) -> String {
        format!(
            "index {} of table {} was not order-checked: it uses collation {}, which only the application that made it has",
            self.index, self.table, self.collation
        )
    }
}

fn is_built_in(name: &str) -> bool {
    BUILT_IN.iter().any(|b| b.eq_ignore_ascii_case(name))
}

/// Names after a `COLLATE` keyword in `sql`, outside string literals and comments.
/// Lexical on purpose: it needs no collation to run, and the schema is the only
/// place a database names one. Bytes, not text: a schema may hold bytes that are not
/// UTF-8 (an old application's Latin-1 default value), which must not stop a read.
fn collate_names(b: &[u8], out: &mut Vec<String>) {
    let mut i = 0;
    let mut want_name = false;
    while i < b.len() {
        let c = b[i];
        match c {
            // A string literal, or a quoted identifier: after COLLATE, the name.
            b'\'' | b'"' | b'`' | b'[' => {
                let (text, next) = quoted(b, i);
                i = next;
                if want_name {
                    out.push(String::from_utf8_lossy(&text).into_owned());
                }
                want_name = false;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            c if c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80 => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$' || b[i] >= 0x80) {
                    i += 1;
                }
                let word = &b[start..i];
                if want_name {
                    out.push(String::from_utf8_lossy(word).into_owned());
                    want_name = false;
                } else {
                    want_name = word.eq_ignore_ascii_case(b"COLLATE");
                }
            }
            _ => {
                if !c.is_ascii_whitespace() {
                    want_name = false;
                }
                i += 1;
            }
        }
    }
}

/// The text of the quoted token that opens at `b[at]` (`'…'`, `"…"`, `` `…` `` with
/// the closing quote doubled inside, or `[…]` without escapes) and the index after it.
fn quoted(b: &[u8], at: usize) -> (Vec<u8>, usize) {
    let close = if b[at] == b'[' { b']' } else { b[at] };
    let mut text = Vec::new();
    let mut i = at + 1;
    while i < b.len() {
        if b[i] == close {
            if close != b']' && b.get(i + 1) == Some(&close) {
                text.push(close);
                i += 2;
                continue;
            }
            break;
        }
        text.push(b[i]);
        i += 1;
    }
    (text, i + 1)
}

/// Every collation the schema of `conn`'s main database names that is not built in,
/// each once (compared case-insensitively, as SQLite does).
pub(crate) fn unknown_collations(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut names = Vec::new();
    let mut stmt = conn.prepare("SELECT sql FROM sqlite_schema WHERE sql IS NOT NULL")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        collate_names(r.get_ref(0)?.as_bytes()?, &mut names);
    }
    let mut out: Vec<String> = Vec::new();
    for n in names {
        if !is_built_in(&n) && !out.iter().any(|o| o.eq_ignore_ascii_case(&n)) {
            out.push(n);
        }
    }
    Ok(out)
}

/// Gives a **read-only** connection a placeholder (bytewise order) for every
/// collation its schema names that is not built in, so that walking the database in
/// stored order works. Returns the names given a placeholder. Call it before any
/// statement touches a table: SQLite marks an index whose collation was missing once
/// as unusable for the rest of the connection's schema.
pub(crate) fn tolerate(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let names = unknown_collations(conn)?;
    for n in &names {
        conn.create_collation(n.as_str(), |a: &str, b: &str| a.as_bytes().cmp(b.as_bytes()))?;
    }
    Ok(names)
}

/// The indexes of `conn`'s main database ordered (in any column) by a collation that
/// is not built in.
pub fn app_collation_indexes(conn: &Connection) -> rusqlite::Result<Vec<AppCollation>> {
    let mut out = Vec::new();
    if unknown_collations(conn)?.is_empty() {
        return Ok(out);
    }
    let mut stmt = conn.prepare(
        "SELECT t.name, il.name, ix.coll FROM pragma_table_list AS t \
         JOIN pragma_index_list(t.name) AS il \
         JOIN pragma_index_xinfo(il.name) AS ix \
         WHERE t.schema = 'main' AND ix.key = 1 AND ix.coll IS NOT NULL \
         ORDER BY t.name, il.name, ix.seqno",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let (table, index, coll): (String, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
        if !is_built_in(&coll) && !out.iter().any(|a: &AppCollation| a.index == index) {
            out.push(AppCollation {
                index,
                table,
                collation: coll,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_collate_names_outside_literals_and_comments() {
        let mut v = Vec::new();
        collate_names(
            b"CREATE TABLE t(a TEXT COLLATE unicase, b TEXT collate \"My Coll\", c DEFAULT 'x COLLATE no', \
             d -- COLLATE nope\n TEXT COLLATE [LOCALIZED], e /* COLLATE nah */ TEXT COLLATE NOCASE, \
             f TEXT COLLATE 'UNICODE', g DEFAULT 'caf\xe9')",
            &mut v,
        );
        assert_eq!(v, ["unicase", "My Coll", "LOCALIZED", "NOCASE", "UNICODE"]);
    }

    #[test]
    fn placeholders_let_a_read_only_walk_and_name_the_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("app.db");
        {
            let c = Connection::open(&p).unwrap();
            c.create_collation("unicase", |a: &str, b: &str| a.to_lowercase().cmp(&b.to_lowercase()))
                .unwrap();
            c.execute_batch(
                "CREATE TABLE tags(tag TEXT PRIMARY KEY COLLATE unicase, n INT) WITHOUT ROWID;
                 CREATE TABLE d(id INTEGER PRIMARY KEY, name TEXT COLLATE unicase);
                 CREATE UNIQUE INDEX d_name ON d(name);
                 INSERT INTO tags VALUES('B',1),('a',2),('c',3);
                 INSERT INTO d(name) VALUES('b'),('A'),('c');",
            )
            .unwrap();
        }
        let ro = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
        let bare = Connection::open_with_flags(&p, ro).unwrap();
        assert!(bare.query_row("SELECT count(*) FROM tags", [], |_| Ok(())).is_err());
        // (A connection that failed once marks the index unusable until its schema is
        // reloaded: placeholders go on before the first statement that touches one.)
        let c = Connection::open_with_flags(&p, ro).unwrap();
        assert_eq!(tolerate(&c).unwrap(), ["unicase"]);
        // Stored (application) order, not the placeholder's bytewise B, a, c.
        let tags: Vec<String> = c
            .prepare("SELECT tag FROM tags ORDER BY tag")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(tags, ["a", "B", "c"]);
        let idx = app_collation_indexes(&c).unwrap();
        let names: Vec<&str> = idx.iter().map(|a| a.index.as_str()).collect();
        assert_eq!(names, ["d_name", "sqlite_autoindex_tags_1"]);
        assert!(idx.iter().all(|a| a.collation == "unicase"));
    }
}
