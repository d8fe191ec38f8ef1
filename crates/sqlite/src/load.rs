//! Loading a SQL dump into a new database, safely.
//!
//! The load builds a private temporary file next to the destination, runs the dump's
//! statements in it, checks the result (`integrity_check`, and the logical checksum
//! against the dump's trailer when it has one), and only then renames it into place.
//! A failure at any point leaves the destination as it was and no file behind.
//!
//! Speed: the stock shell parses and plans every INSERT from scratch. Here, a line of
//! the form `INSERT INTO "t"(…) VALUES(<literals>);` is parsed directly and its values
//! are bound to one cached prepared statement per table; everything else (schema,
//! pragmas, any expression the fast path does not know) goes through SQLite as text,
//! statement by statement (`sqlite3_complete`). Both paths apply the same column
//! affinities, so the result is the same.

use std::ffi::CString;
use std::fs::File;
use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rusqlite::Connection;
use rusqlite::types::{ToSqlOutput, ValueRef};

use crate::cipher::{Unlock, apply_key};
use crate::dump::{DUMP_HEADER, DUMP_TRAILER};
use crate::{DbInfo, SqliteError, verify_file_with};

/// Options for [`load`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct LoadOptions {
    /// Replace a destination that exists and is not empty (and remove its stale
    /// `-wal`/`-shm`/`-journal`).
    pub force: bool,
    /// The logical checksum the result must have (a snapshot's record); checked before
    /// the rename, like the dump's own trailer.
    pub expected_checksum: Option<[u8; 32]>,
    /// Build a SQLCipher database with this key and these settings (which must be
    /// given) instead of a plaintext one. The dump's `PRAGMA page_size` is then not
    /// applied: the settings' `page_size` is the database's.
    pub encrypt: Option<Unlock>,
}

impl LoadOptions {
    /// Sets the expected checksum.
    pub fn with_expected_checksum(mut self, sum: Option<[u8; 32]>) -> Self {
        self.expected_checksum = sum;
        self
    }
    /// Sets `force`.
    pub fn with_force(mut self, yes: bool) -> Self {
        self.force = yes;
        self
    }
    /// Sets the key and settings of an encrypted result.
    pub fn with_encrypt(mut self, unlock: Option<Unlock>) -> Self {
        self.encrypt = unlock;
        self
    }
}

/// What a load did.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// The new database.
    pub path: PathBuf,
    /// Facts about it.
    pub info: DbInfo,
    /// Its logical checksum.
    pub logical_checksum: [u8; 32],
    /// Whether the input was a sqlvault dump whose recorded checksum was matched (a
    /// plain SQL file has none to match).
    pub checksum_verified: bool,
    /// Statements run.
    pub statements: u64,
    /// Rows inserted through the fast path.
    pub fast_rows: u64,
    /// Seconds spent running statements.
    pub load_seconds: f64,
    /// Seconds spent in integrity_check and the checksum.
    pub check_seconds: f64,
}

/// Builds the database `dest` from the SQL read from `input` (`name` is used in
/// messages). See the module docs for the guarantees.
pub fn load<R: BufRead>(input: R, name: &Path, dest: &Path, opts: &LoadOptions) -> Result<LoadReport, SqliteError> {
    let dest = if dest.is_absolute() {
        dest.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|source| SqliteError::Io {
                path: dest.to_path_buf(),
                source,
            })?
            .join(dest)
    };
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SqliteError::Io { path, source }
    };
    let existing = match std::fs::metadata(&dest) {
        Ok(m) => Some(m.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(&dest)(e)),
    };
    if existing.is_some_and(|len| len > 0) && !opts.force {
        return Err(SqliteError::Exists { path: dest });
    }
    let (tmp, report) = load_temp(input, name, &dest, opts)?;
    install(tmp, &dest, existing.is_some())?;
    Ok(LoadReport { path: dest, ..report })
}

/// The load itself: a verified private temporary file next to `dest`, not yet moved
/// into place.
pub(crate) fn load_temp<R: BufRead>(
    input: R,
    name: &Path,
    dest: &Path,
    opts: &LoadOptions,
) -> Result<(tempfile::NamedTempFile, LoadReport), SqliteError> {
    let dir = dest.parent().map(Path::to_path_buf).unwrap_or_else(|| "/".into());
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SqliteError::Io { path, source }
    };
    let encrypt = match &opts.encrypt {
        Some(u) => match &u.settings {
            Some(s) => Some((u.key.clone(), s.clone())),
            None => {
                return Err(SqliteError::BadKey {
                    what: "an encrypted load needs its SQLCipher settings".into(),
                });
            }
        },
        None => None,
    };
    let tmp = tempfile::Builder::new()
        .prefix(&format!(
            ".{}.sqlvault-",
            dest.file_name().unwrap_or_default().to_string_lossy()
        ))
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(io(&dir))?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io(tmp.path()))?;

    let t0 = Instant::now();
    let run = (|| {
        let conn = Connection::open(tmp.path()).map_err(|source| SqliteError::Sqlite {
            path: tmp.path().to_path_buf(),
            source,
        })?;
        if let Some((key, settings)) = &encrypt {
            crate::cipher::quiet_sqlcipher();
            apply_key(&conn, key, settings).map_err(|source| SqliteError::Sqlite {
                path: tmp.path().to_path_buf(),
                source,
            })?;
        }
        // The file is private and thrown away on failure: no journal, no syncs until
        // the end. None of these create the file, so the dump's page_size, auto_vacuum
        // and encoding still apply.
        conn.execute_batch(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA locking_mode=EXCLUSIVE; \
             PRAGMA cache_size=-16384;",
        )
        .map_err(|source| SqliteError::Sqlite {
            path: tmp.path().to_path_buf(),
            source,
        })?;
        conn.set_prepared_statement_cache_capacity(64);
        let mut l = Loader::new(&conn, name);
        l.keep_cipher_page_size = encrypt.is_some();
        l.run(input)?;
        let out = (l.statements, l.fast_rows, l.header, l.trailer);
        drop(l);
        conn.close().map_err(|(_, source)| SqliteError::Sqlite {
            path: tmp.path().to_path_buf(),
            source,
        })?;
        Ok::<_, SqliteError>(out)
    })();
    let (statements, fast_rows, header, trailer) = run?;
    if header && trailer.is_none() {
        return Err(SqliteError::BadDump {
            path: name.to_path_buf(),
            what: "the dump ends without its checksum trailer (truncated)".into(),
        });
    }
    tmp.as_file().sync_all().map_err(io(tmp.path()))?;
    let load_seconds = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let report = verify_file_with(tmp.path(), opts.encrypt.as_ref())?;
    if !report.problems.is_empty() {
        return Err(SqliteError::Verify {
            path: name.to_path_buf(),
            what: format!(
                "the loaded database fails integrity_check: {}",
                report.problems.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
            ),
        });
    }
    if let Some(want) = trailer
        && want != report.logical_checksum
    {
        return Err(SqliteError::Verify {
            path: name.to_path_buf(),
            what: "the loaded database's logical checksum differs from the one the dump recorded".into(),
        });
    }
    if let Some(want) = opts.expected_checksum
        && want != report.logical_checksum
    {
        return Err(SqliteError::Verify {
            path: name.to_path_buf(),
            what: "the loaded database's logical checksum differs from the one recorded at backup".into(),
        });
    }
    let check_seconds = t1.elapsed().as_secs_f64();

    let path = dest.to_path_buf();
    Ok((
        tmp,
        LoadReport {
            path,
            info: report.info,
            logical_checksum: report.logical_checksum,
            checksum_verified: trailer.is_some(),
            statements,
            fast_rows,
            load_seconds,
            check_seconds,
        },
    ))
}

/// Moves a finished, synced database file into place at `dest`, in the same directory.
///
/// With `replace`, an existing `dest` is replaced and its `-wal`, `-shm` and `-journal`
/// are removed first: SQLite would replay a stale WAL onto the new file. Without it, a
/// `dest` that appeared meanwhile is never clobbered ([`SqliteError::Exists`]), and a
/// side file beside it is refused ([`SqliteError::StaleSideFile`]), not left to be
/// replayed. The directory is synced so the rename survives a crash.
pub fn install(tmp: tempfile::NamedTempFile, dest: &Path, replace: bool) -> Result<(), SqliteError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SqliteError::Io { path, source }
    };
    let sides = crate::side_files(dest).map_err(io(dest))?;
    if replace {
        for side in sides {
            match std::fs::remove_file(&side) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&side)(e)),
            }
        }
        tmp.persist(dest)
    } else {
        if let Some(side) = sides.into_iter().next() {
            return Err(SqliteError::StaleSideFile { path: side });
        }
        tmp.persist_noclobber(dest)
    }
    .map_err(|e| {
        if e.error.kind() == std::io::ErrorKind::AlreadyExists {
            SqliteError::Exists {
                path: dest.to_path_buf(),
            }
        } else {
            io(dest)(e.error)
        }
    })?;
    let dir = dest.parent().unwrap_or(Path::new("/"));
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// One parsed value of a fast-path INSERT; text and blob bytes live in `scratch`.
#[derive(Debug, Clone)]
enum Val {
    Null,
    Int(i64),
    Real(f64),
    Text(usize, usize),
    /// `CAST(X'…' AS TEXT)`: the bytes as text in a UTF-8 database.
    CastText(usize, usize),
    Blob(usize, usize),
}

struct Loader<'c> {
    conn: &'c Connection,
    name: &'c Path,
    line: u64,
    pending: String,
    pending_line: u64,
    header: bool,
    trailer: Option<[u8; 32]>,
    statements: u64,
    fast_rows: u64,
    utf8_db: Option<bool>,
    vals: Vec<Val>,
    scratch: Vec<u8>,
    sql: String,
    /// Skip the dump's `PRAGMA page_size`: on a keyed connection SQLCipher would take it
    /// as `cipher_page_size`, overriding the settings the file is meant to have.
    keep_cipher_page_size: bool,
}

fn shorten(s: &str) -> String {
    let one_line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 120 {
        format!("{}…", one_line.chars().take(120).collect::<String>())
    } else {
        one_line
    }
}

impl<'c> Loader<'c> {
    fn new(conn: &'c Connection, name: &'c Path) -> Self {
        Loader {
            conn,
            name,
            line: 0,
            pending: String::new(),
            pending_line: 0,
            header: false,
            trailer: None,
            statements: 0,
            fast_rows: 0,
            utf8_db: None,
            vals: Vec::new(),
            scratch: Vec::new(),
            sql: String::new(),
            keep_cipher_page_size: false,
        }
    }

    fn bad(&self, what: String) -> SqliteError {
        SqliteError::BadDump {
            path: self.name.to_path_buf(),
            what,
        }
    }

    fn run<R: BufRead>(&mut self, mut input: R) -> Result<(), SqliteError> {
        let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        loop {
            buf.clear();
            let n = input.read_until(b'\n', &mut buf).map_err(|source| SqliteError::Io {
                path: self.name.to_path_buf(),
                source,
            })?;
            if n == 0 {
                break;
            }
            self.line += 1;
            if self.trailer.is_some() && !buf.trim_ascii().is_empty() {
                return Err(self.bad(format!("line {}: content after the dump's trailer", self.line)));
            }
            if self.pending.is_empty() {
                let text = buf.trim_ascii();
                if text.is_empty() {
                    continue;
                }
                if text.starts_with(b"--") {
                    self.comment(text)?;
                    continue;
                }
                if self.fast_insert(&buf)? {
                    continue;
                }
                self.pending_line = self.line;
            }
            let s = std::str::from_utf8(&buf).map_err(|_| {
                self.bad(format!(
                    "line {} is not valid UTF-8 outside a fast-path INSERT",
                    self.line
                ))
            })?;
            self.pending.push_str(s);
            if complete(&self.pending) {
                self.exec_pending()?;
            }
        }
        if !self.pending.trim().is_empty() {
            let stmt = shorten(&self.pending);
            return Err(self.bad(format!(
                "the input ends inside the statement at line {}: {stmt}",
                self.pending_line
            )));
        }
        Ok(())
    }

    fn comment(&mut self, text: &[u8]) -> Result<(), SqliteError> {
        if self.line == 1 && text.starts_with(DUMP_HEADER.as_bytes()) {
            self.header = true;
        } else if let Some(hexsum) = text.strip_prefix(DUMP_TRAILER.as_bytes()) {
            let mut sum = [0u8; 32];
            hex::decode_to_slice(hexsum.trim_ascii(), &mut sum)
                .map_err(|_| self.bad(format!("line {}: malformed checksum trailer", self.line)))?;
            self.trailer = Some(sum);
        }
        Ok(())
    }

    fn exec_pending(&mut self) -> Result<(), SqliteError> {
        if self.keep_cipher_page_size && self.header && self.pending.trim_start().starts_with("PRAGMA page_size=") {
            self.statements += 1;
            self.pending.clear();
            return Ok(());
        }
        let r = self.conn.execute_batch(&self.pending);
        self.statements += 1;
        if let Err(source) = r {
            return Err(SqliteError::Load {
                path: self.name.to_path_buf(),
                line: self.pending_line,
                statement: shorten(&self.pending),
                source,
            });
        }
        self.pending.clear();
        Ok(())
    }

    /// Runs `line` through the fast path if it is a one-line INSERT of plain literals.
    fn fast_insert(&mut self, line: &[u8]) -> Result<bool, SqliteError> {
        let Some(prefix) = parse_insert(line, &mut self.vals, &mut self.scratch) else {
            return Ok(false);
        };
        let utf8 = match self.utf8_db {
            Some(u) => u,
            None => {
                let enc: String = self
                    .conn
                    .query_row("PRAGMA encoding", [], |r| r.get(0))
                    .map_err(|source| SqliteError::Sqlite {
                        path: self.name.to_path_buf(),
                        source,
                    })?;
                *self.utf8_db.insert(enc == "UTF-8")
            }
        };
        if !utf8 && self.vals.iter().any(|v| matches!(v, Val::CastText(..))) {
            return Ok(false); // the cast reads UTF-16 there: let SQLite do it
        }
        let Ok(prefix) = std::str::from_utf8(&line[..prefix]) else {
            return Ok(false);
        };
        self.sql.clear();
        self.sql.push_str(prefix);
        for i in 0..self.vals.len() {
            self.sql.push_str(if i == 0 { "?" } else { ",?" });
        }
        self.sql.push(')');
        let r = (|| {
            let mut stmt = self.conn.prepare_cached(&self.sql)?;
            for (i, v) in self.vals.iter().enumerate() {
                let out = match *v {
                    Val::Null => ToSqlOutput::Borrowed(ValueRef::Null),
                    Val::Int(x) => ToSqlOutput::Borrowed(ValueRef::Integer(x)),
                    Val::Real(x) => ToSqlOutput::Borrowed(ValueRef::Real(x)),
                    Val::Text(a, b) | Val::CastText(a, b) => ToSqlOutput::Borrowed(ValueRef::Text(&self.scratch[a..b])),
                    Val::Blob(a, b) => ToSqlOutput::Borrowed(ValueRef::Blob(&self.scratch[a..b])),
                };
                stmt.raw_bind_parameter(i + 1, out)?;
            }
            stmt.raw_execute()
        })();
        self.statements += 1;
        self.fast_rows += 1;
        match r {
            Ok(_) => Ok(true),
            Err(source) => Err(SqliteError::Load {
                path: self.name.to_path_buf(),
                line: self.line,
                statement: shorten(&String::from_utf8_lossy(line)),
                source,
            }),
        }
    }
}

fn complete(sql: &str) -> bool {
    match CString::new(sql) {
        // SAFETY: a valid NUL-terminated string; sqlite3_complete only reads it.
        Ok(c) => unsafe { rusqlite::ffi::sqlite3_complete(c.as_ptr()) != 0 },
        // A NUL byte cannot be inside SQL text SQLite reads; let execution report it.
        Err(_) => true,
    }
}

/// Parses `INSERT INTO <name>[(<names>)] VALUES(<literal>,…);` on one line. Returns the
/// length of the prefix up to and including `VALUES(`, or `None` for anything else.
fn parse_insert(line: &[u8], vals: &mut Vec<Val>, scratch: &mut Vec<u8>) -> Option<usize> {
    vals.clear();
    scratch.clear();
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let mut p = Parser { s: line, i: 0 };
    p.lit(b"INSERT INTO ")?;
    p.ident()?;
    if p.peek() == Some(b'(') {
        p.i += 1;
        loop {
            p.ident()?;
            match p.next()? {
                b',' => continue,
                b')' => break,
                _ => return None,
            }
        }
    }
    if p.peek() == Some(b' ') {
        p.i += 1;
    }
    p.lit(b"VALUES(")?;
    let prefix = p.i;
    loop {
        let v = p.value(scratch)?;
        vals.push(v);
        match p.next()? {
            b',' => continue,
            b')' => break,
            _ => return None,
        }
    }
    p.lit(b";")?;
    (p.i == line.len()).then_some(prefix)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }
    fn lit(&mut self, l: &[u8]) -> Option<()> {
        if self.s[self.i..].starts_with(l) {
            self.i += l.len();
            Some(())
        } else {
            None
        }
    }
    fn ident(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => {
                self.i += 1;
                loop {
                    match self.next()? {
                        b'"' if self.peek() == Some(b'"') => self.i += 1,
                        b'"' => return Some(()),
                        _ => {}
                    }
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_') {
                    self.i += 1;
                }
                // A bare keyword would change the statement's meaning: VALUES is the
                // only one the grammar above expects after a name.
                Some(())
            }
            _ => None,
        }
    }
    /// `'…'` with doubled quotes, appended to `out`.
    fn quoted(&mut self, out: &mut Vec<u8>) -> Option<()> {
        if self.next()? != b'\'' {
            return None;
        }
        loop {
            let rest = &self.s[self.i..];
            let q = rest.iter().position(|&c| c == b'\'')?;
            out.extend_from_slice(&rest[..q]);
            self.i += q + 1;
            if self.peek() == Some(b'\'') {
                out.push(b'\'');
                self.i += 1;
            } else {
                return Some(());
            }
        }
    }
    fn hex(&mut self, out: &mut Vec<u8>) -> Option<()> {
        self.lit(b"'")?;
        let rest = &self.s[self.i..];
        let q = rest.iter().position(|&c| c == b'\'')?;
        if q % 2 != 0 {
            return None;
        }
        let start = out.len();
        out.resize(start + q / 2, 0);
        hex::decode_to_slice(&rest[..q], &mut out[start..]).ok()?;
        self.i += q + 1;
        Some(())
    }
    fn value(&mut self, scratch: &mut Vec<u8>) -> Option<Val> {
        let start = scratch.len();
        match self.peek()? {
            b'N' => {
                self.lit(b"NULL")?;
                Some(Val::Null)
            }
            b'\'' => {
                self.quoted(scratch)?;
                while self.s[self.i..].starts_with(b"||") {
                    self.i += 2;
                    if self.peek()? == b'\'' {
                        self.quoted(scratch)?;
                    } else {
                        self.lit(b"char(")?;
                        let d0 = self.i;
                        while self.peek()?.is_ascii_digit() {
                            self.i += 1;
                        }
                        let n: u32 = std::str::from_utf8(&self.s[d0..self.i]).ok()?.parse().ok()?;
                        self.lit(b")")?;
                        let c = char::from_u32(n)?;
                        let mut b = [0u8; 4];
                        scratch.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                    }
                }
                Some(Val::Text(start, scratch.len()))
            }
            b'X' | b'x' => {
                self.i += 1;
                self.hex(scratch)?;
                Some(Val::Blob(start, scratch.len()))
            }
            b'C' => {
                self.lit(b"CAST(X")?;
                self.hex(scratch)?;
                self.lit(b" AS TEXT)")?;
                Some(Val::CastText(start, scratch.len()))
            }
            b'-' | b'0'..=b'9' => {
                let n0 = self.i;
                if self.peek() == Some(b'-') {
                    self.i += 1;
                }
                let d0 = self.i;
                let mut real = false;
                while let Some(c) = self.peek() {
                    match c {
                        b'0'..=b'9' => {}
                        b'.' | b'e' | b'E' => real = true,
                        b'+' | b'-' if matches!(self.s[self.i - 1], b'e' | b'E') => {}
                        _ => break,
                    }
                    self.i += 1;
                }
                if self.i == d0 || !self.s[d0].is_ascii_digit() {
                    return None;
                }
                let text = std::str::from_utf8(&self.s[n0..self.i]).ok()?;
                if real {
                    // Rust's parser rounds correctly, and sqlvault writes a decimal only
                    // when it is read back exactly; anything odd fails to parse here.
                    text.parse::<f64>().ok().map(Val::Real)
                } else {
                    // Out of i64 range SQLite would read a REAL: leave that to it.
                    text.parse::<i64>().ok().map(Val::Int)
                }
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Option<(usize, Vec<Val>, Vec<u8>)> {
        let (mut v, mut sc) = (Vec::new(), Vec::new());
        parse_insert(s.as_bytes(), &mut v, &mut sc).map(|p| (p, v, sc))
    }

    #[test]
    fn fast_path_takes_plain_literals_and_refuses_the_rest() {
        let (p, v, sc) =
            parse("INSERT INTO \"t\"(rowid,\"a b\") VALUES(-9223372036854775808,'it''s'||char(10)||'x',X'00ff',NULL,-0.0,1.5e20);\n")
                .unwrap();
        assert_eq!(p, "INSERT INTO \"t\"(rowid,\"a b\") VALUES(".len());
        assert!(matches!(v[0], Val::Int(i64::MIN)));
        let Val::Text(a, b) = v[1] else { panic!() };
        assert_eq!(&sc[a..b], b"it's\nx");
        let Val::Blob(a, b) = v[2] else { panic!() };
        assert_eq!(&sc[a..b], &[0, 255]);
        assert!(matches!(v[3], Val::Null));
        assert!(matches!(v[4], Val::Real(x) if x == 0.0 && x.is_sign_negative()));
        for other in [
            "INSERT INTO t VALUES(1+1);",
            "INSERT INTO t VALUES(-(CAST(1 AS REAL)/2));",
            "INSERT INTO t VALUES(99999999999999999999);",
            "INSERT INTO t VALUES(1); INSERT INTO t VALUES(2);",
            "INSERT INTO t VALUES('unterminated);",
            "INSERT INTO t SELECT 1;",
            "INSERT INTO t VALUES(x'0');",
            "INSERT INTO t VALUES(inf);",
        ] {
            assert!(parse(other).is_none(), "{other}");
        }
    }
}
