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
//!
//! # Untrusted input
//!
//! The SQL is untrusted: `sqlvault load` takes any file, and a dump snapshot's SQL was
//! written on a backup host, which may be compromised. Checking the result afterwards
//! cannot undo what a statement did while it ran (write another file, rewrite another
//! database, run forever), so the input can only build the one database in the temporary
//! file, and every statement is bounded. What is accepted:
//!
//! - DDL and DML on schema `main` only, on tables the input created (CREATE TABLE /
//!   INDEX / VIEW / TRIGGER, INSERT, UPDATE, DELETE, SELECT, transactions); the pragmas a
//!   dump writes (`page_size`, `auto_vacuum`, `encoding`, `foreign_keys`, `user_version`,
//!   `application_id`, `journal_mode`); deterministic built-in functions (the list is in
//!   `guard.rs`). Refused, with [`SqliteError::Refused`] naming the statement and the
//!   reason: ATTACH/DETACH, VACUUM (it writes through an ATTACH), `temp`, any other pragma
//!   or function (`load_extension`, `zeroblob`, …), CREATE VIRTUAL TABLE, DROP, ALTER,
//!   ANALYZE and recursive CTEs. This is an authorizer: it runs when a statement
//!   is prepared, so the fast path's cached INSERTs pay nothing per row, and a trigger's
//!   body is held to the same rules when a statement that fires it is prepared.
//! - SQLite's defensive mode is on, the schema is untrusted and extension loading off,
//!   so that a gap in that list still could not write `sqlite_schema` or shadow tables.
//! - `writable_schema`: a dump needs it for two things the SQL language cannot say —
//!   creating `sqlite_sequence`/`sqlite_stat1`/`sqlite_stat4` exactly as the source had
//!   them, and recording virtual tables as `sqlite_schema` rows so that no module code
//!   runs during the load. Turned on by the input's text it would let the input rewrite
//!   the schema into anything (an integrity bomb for whoever opens the file next). So
//!   the input's `PRAGMA writable_schema=ON;` turns nothing on: it opens a section in
//!   which the loader accepts only those two statement shapes, checks their values (the
//!   internal table's CREATE is SQLite's own text; a virtual table's row has type
//!   `table`, name = tbl_name, rootpage 0, a `CREATE VIRTUAL TABLE <name> USING
//!   <module>` whose module this SQLite has, and a name not yet used), and runs a
//!   constant statement of its own with those values, writable_schema on and defensive
//!   mode off for that statement only. Anything else in the section is refused.
//! - Work: a progress handler stops any statement whose work exceeds 10^8 VM steps plus
//!   64 per byte of input read so far. Genuine dumps do work in proportion to their
//!   size (the costliest statement, a CREATE INDEX over a big table, was measured at
//!   0.2 steps per byte of the dump, see [`LoadReport::peak_steps`]); a recursive or
//!   runaway query does not.
//! - Size: a line may be up to 2 GB (the largest row SQLite can hold, as hex), and a
//!   statement that goes to SQLite as text up to 10^9 bytes (SQLite's own limit);
//!   [`LoadOptions::max_statement_bytes`] lowers both.
//!
//! A refusal, like any failure, leaves nothing behind: the temporary file is removed.

// (tidy: long file — the statement gate, the loader and the verification share the
// private parser state; a third of the file is the tests of the gate.)

use std::ffi::CString;
use std::fs::File;
use std::io::BufRead;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rusqlite::Connection;
use rusqlite::types::{ToSqlOutput, ValueRef};

use crate::dump::{DUMP_HEADER, DUMP_TRAILER};
use crate::guard::{BASE_STEPS, Guard, INTERNAL_CREATES, STEPS_PER_BYTE};
use crate::key::{Unlock, apply_key};
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
    /// The longest line and statement accepted, in bytes, if lower than the defaults
    /// (see the module docs): a bound on the memory a load takes.
    pub max_statement_bytes: Option<usize>,
    /// Install a result that fails `integrity_check` when its logical checksum matches
    /// the recorded one: the dump reproduced a source that was already damaged, and
    /// its exact content is the user's to have ([`LoadReport::source_problems`]).
    pub accept_damaged_source: bool,
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
    /// Sets the longest line and statement accepted.
    pub fn with_max_statement_bytes(mut self, max: Option<usize>) -> Self {
        self.max_statement_bytes = max;
        self
    }
    /// Sets the key and settings of an encrypted result.
    pub fn with_encrypt(mut self, unlock: Option<Unlock>) -> Self {
        self.encrypt = unlock;
        self
    }
    /// Sets [`LoadOptions::accept_damaged_source`].
    pub fn with_accept_damaged_source(mut self, yes: bool) -> Self {
        self.accept_damaged_source = yes;
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
    /// The most work one statement needed, in SQLite VM steps (counted in units of
    /// 10,000), against the budget that stops a runaway statement: see the module docs.
    pub peak_steps: u64,
    /// integrity_check lines of a result installed with
    /// [`LoadOptions::accept_damaged_source`] (empty when healthy).
    pub source_problems: Vec<String>,
}

/// Builds the database `dest` from the SQL read from `input` (`name` is used in
/// messages). See the module docs for the guarantees.
pub fn load<R: BufRead>(input: R, name: &Path, dest: &Path, opts: &LoadOptions) -> Result<LoadReport, SqliteError> {
    let dest = std::path::absolute(dest).map_err(|source| SqliteError::Io {
        path: dest.to_path_buf(),
        source,
    })?;
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
    if opts.encrypt.is_some() {
        crate::key::require_sqlcipher("an encrypted load")?;
    }
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
    crate::guard_sqlite_opens();
    // Named with this process's pid, registered for removal on a signal; the first
    // temporary in `dir` sweeps leftovers of killed runs.
    let tmp =
        crate::scratch_file(&dir, &dest.file_name().unwrap_or_default().to_string_lossy(), ".tmp").map_err(io(&dir))?;

    let t0 = Instant::now();
    let run = (|| {
        let mut conn = Connection::open(tmp.path()).map_err(|source| SqliteError::Sqlite {
            path: tmp.path().to_path_buf(),
            source,
        })?;
        if let Some((key, settings)) = &encrypt {
            crate::key::quiet_sqlcipher();
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
        let guard = Guard::install(&mut conn).map_err(|source| SqliteError::Sqlite {
            path: tmp.path().to_path_buf(),
            source,
        })?;
        let mut l = Loader::new(&conn, &guard, name);
        l.keep_cipher_page_size = encrypt.is_some();
        if let Some(max) = opts.max_statement_bytes {
            l.max_line = l.max_line.min(max);
            l.max_sql = l.max_sql.min(max);
        }
        l.run(input)?;
        let out = (l.statements, l.fast_rows, l.header, l.trailer, guard.peak_steps());
        drop(l);
        conn.close().map_err(|(_, source)| SqliteError::Sqlite {
            path: tmp.path().to_path_buf(),
            source,
        })?;
        Ok::<_, SqliteError>(out)
    })();
    let (statements, fast_rows, header, trailer, peak_steps) = run?;
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
    let recorded = [trailer, opts.expected_checksum];
    // Content proven equal to what was recorded: an integrity failure is the source's.
    let proven =
        recorded.iter().any(Option::is_some) && recorded.iter().flatten().all(|w| *w == report.logical_checksum);
    let first = report.problems.iter().take(3).cloned().collect::<Vec<_>>().join("; ");
    let mut source_problems = Vec::new();
    if !report.problems.is_empty() {
        if !proven {
            return Err(SqliteError::Verify {
                path: name.to_path_buf(),
                what: format!("the loaded database fails integrity_check: {first}"),
            });
        }
        if !opts.accept_damaged_source {
            return Err(SqliteError::SourceDamaged {
                path: name.to_path_buf(),
                what: first,
            });
        }
        source_problems = report.problems.clone();
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
            peak_steps,
            source_problems,
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
///
/// Replacing is refused while another process holds `dest` open
/// ([`SqliteError::InUse`], see [`ensure_not_in_use`]), and when `dest` is not a
/// regular file reached without following a symbolic link, or is no longer the file
/// that was checked when it would be replaced ([`SqliteError::NotReplaceable`]). The
/// new file takes the owner, group and (at most) the permissions of the one it
/// replaces, only where that cannot hand it to someone who planted that file (a
/// directory nobody but root and its owner can write to; elsewhere it stays the
/// running user's, 0600); a new (or empty) destination keeps the temporary file's 0600.
pub fn install(tmp: tempfile::NamedTempFile, dest: &Path, replace: bool) -> Result<(), SqliteError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SqliteError::Io { path, source }
    };
    let sides = crate::side_files(dest).map_err(io(dest))?;
    if replace {
        ensure_not_in_use(dest)?;
        // Never through a link (the rename replaces the link, not its target), and
        // never a directory, FIFO or device.
        let old = match std::fs::symlink_metadata(dest) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(dest)(e)),
        };
        if let Some(m) = &old {
            replaceable(dest, m)?;
        }
        // An empty file holds no database (load takes it without --force): the result
        // is a new database and stays 0600, like any new destination.
        if let Some(old) = old.as_ref().filter(|m| m.len() > 0) {
            take_place_of(&tmp, old, dest)?;
        }
        for side in sides {
            match std::fs::remove_file(&side) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&side)(e)),
            }
        }
        match &old {
            Some(old) => {
                // Still the file checked, and still not held open, just before the
                // rename (a file swapped in at the name meanwhile is not replaced).
                let now = std::fs::symlink_metadata(dest).map_err(io(dest))?;
                if (now.dev(), now.ino()) != (old.dev(), old.ino()) {
                    return Err(SqliteError::NotReplaceable {
                        path: dest.to_path_buf(),
                        why: "another file took its place while the new one was made; nothing was replaced".into(),
                    });
                }
                ensure_not_in_use(dest)?;
                tmp.persist(dest)
            }
            // Nothing was there: whatever appeared meanwhile is not clobbered.
            None => tmp.persist_noclobber(dest),
        }
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

/// Refuses a destination that is not a regular file (by `lstat`: a symbolic link is
/// refused, never followed).
fn replaceable(dest: &Path, m: &std::fs::Metadata) -> Result<(), SqliteError> {
    if m.file_type().is_symlink() {
        return Err(SqliteError::NotReplaceable {
            path: dest.to_path_buf(),
            why: "it is a symbolic link (the link would be replaced, not what it points to); give the real path".into(),
        });
    }
    if !m.is_file() {
        return Err(SqliteError::NotReplaceable {
            path: dest.to_path_buf(),
            why: format!("it is a {}, not a regular file", crate::file_kind(m.file_type())),
        });
    }
    Ok(())
}

/// Refuses ([`SqliteError::InUse`], naming the pids) when another process holds `dest`
/// open, and ([`SqliteError::NotReplaceable`]) a `dest` that is a symbolic link or not
/// a regular file. Replacing a database under an application that has it open loses
/// data: the rename swaps the name, but the application keeps reading and writing the
/// old, unlinked inode, so every write it makes afterwards goes nowhere, and its next
/// open sees a file it never wrote. The application must be stopped first. The file
/// looked at is the one the rename replaces (never a link's target). Only processes
/// this user may inspect are seen (all of them for root); a missing `dest` is not in
/// use. A process that opens `dest` after this check and before the rename is not
/// seen (the check runs again just before the rename, which narrows this to
/// moments): stop the application, do not merely hope it is idle.
pub fn ensure_not_in_use(dest: &Path) -> Result<(), SqliteError> {
    match std::fs::symlink_metadata(dest) {
        Ok(m) => replaceable(dest, &m)?,
        Err(_) => return Ok(()),
    }
    let pids = crate::key::other_openers(dest);
    if pids.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = pids.iter().map(u32::to_string).collect();
    Err(SqliteError::InUse {
        path: dest.to_path_buf(),
        detail: format!(
            "held open by process {}; stop the application, replace it (--force), then start the application again",
            list.join(", ")
        ),
    })
}

/// Gives the file about to replace `dest` the owner and group of `old`, the file it
/// replaces, so the application that runs as that user can still open its database,
/// and at most its permissions: the owner's bits, and read (never write, execute or
/// set-id) for group and others.
///
/// Only when `dest`'s directory is writable by no one but root and its owner: then
/// `old` was put there (or given its owner) by one of them. In a directory others may
/// write to (a sticky, world-writable `/tmp`, a group-writable directory), anyone could
/// have planted `old` to be handed the restored database: the new file stays the
/// running user's, 0600, and a warning says why. When the owner cannot be given (a
/// user other than root restoring over another user's file), nothing is replaced: a
/// database the application cannot open, or that its group can no longer read, is
/// not a restore.
fn take_place_of(tmp: &tempfile::NamedTempFile, old: &std::fs::Metadata, dest: &Path) -> Result<(), SqliteError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |source| SqliteError::Io {
        path: tmp.path().to_path_buf(),
        source,
    };
    let dir = dest.parent().unwrap_or(Path::new("/"));
    let d = std::fs::metadata(dir).map_err(|source| SqliteError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let f = tmp.as_file();
    if d.mode() & 0o022 != 0 {
        tracing::warn!(
            "{} is in {}, a directory others may write to (mode {:04o}): the file it replaced could have been planted there, so the new file does not take its owner {}:{} and mode {:04o}; it is the running user's, 0600",
            dest.display(),
            dir.display(),
            d.mode() & 0o7777,
            old.uid(),
            old.gid(),
            old.mode() & 0o7777
        );
        f.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        return f.sync_all().map_err(io);
    }
    let now = f.metadata().map_err(io)?;
    if (now.uid(), now.gid()) != (old.uid(), old.gid()) {
        std::os::unix::fs::fchown(f, Some(old.uid()), Some(old.gid())).map_err(|e| SqliteError::Io {
            path: dest.to_path_buf(),
            source: std::io::Error::new(
                e.kind(),
                format!(
                    "cannot give the new file the owner {}:{} of the one it replaces ({e}); nothing was replaced (run as that user or root, or move the old file away first)",
                    old.uid(),
                    old.gid()
                ),
            ),
        })?;
    }
    // The owner's bits, read for group and others: never write for them, never
    // set-id or sticky bits (which mean nothing on a database).
    f.set_permissions(std::fs::Permissions::from_mode(old.mode() & MODE_KEPT))
        .map_err(io)?;
    f.sync_all().map_err(io)
}

/// The permission bits a replacing file keeps of the file it replaces.
const MODE_KEPT: u32 = 0o744;

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

/// The longest line read: a row of the largest size SQLite allows (`SQLITE_MAX_LENGTH`,
/// 10^9 bytes) written as one hex BLOB, plus room for its table's column names.
const MAX_LINE: usize = 2_000_000_000 + (64 << 20);
/// The longest statement handed to SQLite as text: its own limit (`SQLITE_MAX_SQL_LENGTH`).
const MAX_SQL: usize = 1_000_000_000;
const WRITABLE_ON: &str = "PRAGMA writable_schema=ON;";
const WRITABLE_OFF: &str = "PRAGMA writable_schema=OFF;";

struct Loader<'c> {
    conn: &'c Connection,
    guard: &'c Guard,
    name: &'c Path,
    line: u64,
    /// Bytes of input read so far.
    read: u64,
    /// Inside a dump's `PRAGMA writable_schema=ON` … `OFF` section.
    writable: bool,
    max_line: usize,
    max_sql: usize,
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

/// The statement on one line, cut after 120 characters; reads no more of `s` than that
/// needs (a statement may be a gigabyte long).
fn shorten(s: &str) -> String {
    let mut out = String::new();
    let mut n = 0;
    let mut space = false;
    for c in s.trim().chars() {
        if c.is_whitespace() {
            space = true;
            continue;
        }
        if n == 120 {
            out.push('…');
            break;
        }
        if std::mem::take(&mut space) {
            out.push(' ');
            n += 1;
            if n == 120 {
                out.push('…');
                break;
            }
        }
        out.push(c);
        n += 1;
    }
    out
}

fn shorten_bytes(b: &[u8]) -> String {
    shorten(&String::from_utf8_lossy(&b[..b.len().min(1024)]))
}

impl<'c> Loader<'c> {
    fn new(conn: &'c Connection, guard: &'c Guard, name: &'c Path) -> Self {
        Loader {
            conn,
            guard,
            name,
            line: 0,
            read: 0,
            writable: false,
            max_line: MAX_LINE,
            max_sql: MAX_SQL,
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

    fn refuse(&self, line: u64, statement: String, why: String) -> SqliteError {
        SqliteError::Refused {
            path: self.name.to_path_buf(),
            line,
            statement,
            why,
        }
    }

    /// The work the next statement may do: it grows with the input read so far.
    fn budget(&self) -> u64 {
        BASE_STEPS.saturating_add(STEPS_PER_BYTE.saturating_mul(self.read))
    }

    /// The error for a statement SQLite failed: a refusal if the guard stopped it.
    fn failed(&self, line: u64, statement: String, source: rusqlite::Error) -> SqliteError {
        match self.guard.refusal() {
            Some(why) => self.refuse(line, statement, why),
            None => SqliteError::Load {
                path: self.name.to_path_buf(),
                line,
                statement,
                source,
            },
        }
    }

    fn run<R: BufRead>(&mut self, mut input: R) -> Result<(), SqliteError> {
        let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        loop {
            buf.clear();
            let n = std::io::Read::take(&mut input, self.max_line as u64 + 1)
                .read_until(b'\n', &mut buf)
                .map_err(|source| SqliteError::Io {
                    path: self.name.to_path_buf(),
                    source,
                })?;
            if n == 0 {
                break;
            }
            self.line += 1;
            self.read += n as u64;
            if buf.len() > self.max_line {
                return Err(self.refuse(
                    self.line,
                    shorten_bytes(&buf),
                    format!("the line is longer than the {} bytes a load accepts", self.max_line),
                ));
            }
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
                if !self.writable && self.fast_insert(&buf)? {
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
            if self.pending.len() + s.len() > self.max_sql {
                let line = self.pending_line;
                let text = if self.pending.is_empty() { s } else { &self.pending };
                return Err(self.refuse(
                    line,
                    shorten(text),
                    format!("the statement is longer than the {} bytes a load accepts", self.max_sql),
                ));
            }
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
        self.statements += 1;
        let text = self.pending.trim();
        let on = text == WRITABLE_ON;
        let skip = self.keep_cipher_page_size && self.header && text.starts_with("PRAGMA page_size=");
        if self.writable {
            self.schema_statement()?;
        } else if on {
            // Nothing is made writable here: the section's statements are checked and
            // run one by one (schema_statement).
            self.writable = true;
        } else if skip {
            // Left out on purpose (see keep_cipher_page_size).
        } else {
            self.guard.start(self.budget());
            if let Err(source) = self.conn.execute_batch(&self.pending) {
                return Err(self.failed(self.pending_line, shorten(&self.pending), source));
            }
        }
        self.pending.clear();
        Ok(())
    }

    /// A statement between `PRAGMA writable_schema=ON;` and `OFF;`. A dump writes only
    /// two shapes there: the CREATE TABLE of an internal table, and a virtual table's
    /// `sqlite_schema` row. Each is recognised, its values checked, and then a constant
    /// statement of this crate runs with those values, with writable_schema on and
    /// defensive mode off for just that statement. The input's text itself never runs
    /// with the schema writable.
    fn schema_statement(&mut self) -> Result<(), SqliteError> {
        let text = self.pending.trim();
        let line = self.pending_line;
        if text == WRITABLE_OFF {
            self.writable = false;
            return Ok(());
        }
        let sq = |source| SqliteError::Load {
            path: self.name.to_path_buf(),
            line,
            statement: shorten(text),
            source,
        };
        if let Some(create) = text
            .strip_suffix(';')
            .and_then(|body| INTERNAL_CREATES.iter().find(|c| **c == body))
        {
            return self
                .guard
                .trusted(self.conn, true, || {
                    self.conn.execute_batch("PRAGMA writable_schema=ON")?;
                    let r = self.conn.execute_batch(create);
                    let off = self.conn.execute_batch("PRAGMA writable_schema=OFF");
                    r.and(off)
                })
                .map_err(sq);
        }
        let Some((name, sql)) = parse_vtab_row(text) else {
            return Err(self.refuse(
                line,
                shorten(text),
                "while writable_schema is on, a load runs only what a dump writes there: the CREATE TABLE \
                 of sqlite_sequence or sqlite_stat1/3/4, or INSERT INTO sqlite_schema(type,name,tbl_name,\
                 rootpage,sql) VALUES('table',…) of a virtual table"
                    .into(),
            ));
        };
        let why = match vtab_module(&sql, &name) {
            _ if name.len() >= 7 && name[..7].eq_ignore_ascii_case("sqlite_") => {
                Some(format!("virtual table name {name:?} is reserved to SQLite"))
            }
            None => Some(format!(
                "the schema row of {name:?} is not a CREATE VIRTUAL TABLE {name} USING … statement"
            )),
            Some(module) => {
                let (known, taken): (bool, bool) = self
                    .guard
                    .trusted(self.conn, false, || {
                        self.conn.query_row(
                            "SELECT EXISTS(SELECT 1 FROM pragma_module_list WHERE name = ?1 COLLATE NOCASE),
                                    EXISTS(SELECT 1 FROM sqlite_schema WHERE name = ?2 COLLATE NOCASE)",
                            [&module, &name],
                            |r| Ok((r.get(0)?, r.get(1)?)),
                        )
                    })
                    .map_err(sq)?;
                if !known {
                    Some(format!(
                        "virtual table {name:?} needs module {module:?}, which this SQLite lacks"
                    ))
                } else if taken {
                    Some(format!("the schema already holds an object named {name:?}"))
                } else {
                    None
                }
            }
        };
        if let Some(why) = why {
            return Err(self.refuse(line, shorten(text), why));
        }
        self.guard
            .trusted(self.conn, true, || {
                self.conn.execute_batch("PRAGMA writable_schema=ON")?;
                let r = self.conn.execute(
                    "INSERT INTO sqlite_schema(type,name,tbl_name,rootpage,sql) VALUES('table',?1,?1,0,?2)",
                    [&name, &sql],
                );
                let off = self.conn.execute_batch("PRAGMA writable_schema=OFF");
                r.and(off)
            })
            .map_err(sq)
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
        self.guard.start(self.budget());
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
            Err(source) => Err(self.failed(self.line, shorten_bytes(line), source)),
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

/// Parses a virtual table's schema row as a dump writes it (the stock shell's spelling,
/// without the space before VALUES, too): `INSERT INTO sqlite_schema(type,name,tbl_name,
/// rootpage,sql) VALUES('table',<name>,<name>,0,<sql>);`. Returns the name and the SQL.
fn parse_vtab_row(text: &str) -> Option<(String, String)> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    p.lit(b"INSERT INTO sqlite_schema(type,name,tbl_name,rootpage,sql)")?;
    if p.peek() == Some(b' ') {
        p.i += 1;
    }
    p.lit(b"VALUES(")?;
    let mut sc = Vec::new();
    let mut text_val = |p: &mut Parser<'_>| -> Option<String> {
        sc.clear();
        match p.value(&mut sc)? {
            Val::Text(a, b) => String::from_utf8(sc[a..b].to_vec()).ok(),
            _ => None,
        }
    };
    let ty = text_val(&mut p)?;
    p.lit(b",")?;
    let name = text_val(&mut p)?;
    p.lit(b",")?;
    let tbl = text_val(&mut p)?;
    p.lit(b",0,")?;
    let sql = text_val(&mut p)?;
    p.lit(b");")?;
    (p.i == p.s.len() && ty == "table" && name == tbl && !sql.contains('\0')).then_some((name, sql))
}

/// The module of `sql` if it is `CREATE VIRTUAL TABLE <name> USING <module>…`, as SQLite
/// stores every virtual table (its own prefix, then the statement from the name on).
fn vtab_module(sql: &str, name: &str) -> Option<String> {
    let prefix = "CREATE VIRTUAL TABLE ";
    if sql.len() < prefix.len() || !sql[..prefix.len()].eq_ignore_ascii_case(prefix) {
        return None;
    }
    let (ident, rest) = sql_ident(sql[prefix.len()..].trim_start())?;
    if !ident.eq_ignore_ascii_case(name) {
        return None;
    }
    let rest = rest.trim_start();
    if rest.len() < 6 || !rest[..5].eq_ignore_ascii_case("USING") || !rest[5..].starts_with(char::is_whitespace) {
        return None;
    }
    sql_ident(rest[5..].trim_start()).map(|(m, _)| m)
}

/// An SQL identifier at the start of `s` (bare, or quoted with `"`, `` ` ``, `[…]` or
/// `'`), dequoted, and the rest of `s`.
fn sql_ident(s: &str) -> Option<(String, &str)> {
    let close = match s.chars().next()? {
        '"' => '"',
        '`' => '`',
        '\'' => '\'',
        '[' => ']',
        c if c.is_alphanumeric() || c == '_' || !c.is_ascii() => {
            let end = s
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$' || !c.is_ascii()))
                .unwrap_or(s.len());
            return Some((s[..end].to_string(), &s[end..]));
        }
        _ => return None,
    };
    let mut out = String::new();
    let mut chars = s[1..].char_indices();
    while let Some((i, c)) = chars.next() {
        if c == close {
            if close != ']' && s[1 + i + 1..].starts_with(close) {
                out.push(close);
                chars.next();
                continue;
            }
            return Some((out, &s[1 + i + 1..]));
        }
        out.push(c);
    }
    None
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
