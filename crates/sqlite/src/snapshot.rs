use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::collation::AppCollation;
use crate::key::{CipherSettings, Unlock, apply_key, open_db};
use crate::{SqliteError, logical_checksum};

/// Facts about a database read inside the snapshot's transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbInfo {
    /// Page size in bytes.
    pub page_size: u32,
    /// Number of pages.
    pub page_count: u32,
    /// `wal`, `delete`, `truncate`, `persist`, `memory` or `off`.
    pub journal_mode: String,
    /// `PRAGMA user_version`.
    pub user_version: i64,
    /// `PRAGMA application_id`.
    pub application_id: i64,
    /// `UTF-8`, `UTF-16le` or `UTF-16be`.
    pub text_encoding: String,
    /// Pages on the freelist.
    pub freelist_count: u32,
}

/// How the pages of a snapshot were read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotMethod {
    /// Streamed through `sqlite_dbpage` inside one read transaction (WAL mode).
    DbPage,
    /// Copied with the online backup API in one step to a private temporary file,
    /// then streamed from it. Used in rollback-journal mode, where a long read would
    /// block writers, and wherever `sqlite_dbpage` is not compiled in.
    BackupCopy,
    /// Read row by row inside one read transaction on the live database (WAL-mode
    /// SQL dumps).
    ReadTransaction,
}

/// Options for opening a source database.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SourceOptions {
    /// Longest wait for another connection's lock before failing.
    pub busy_timeout: Duration,
    /// Directory for the temporary copy of [`SnapshotMethod::BackupCopy`] (`/tmp`
    /// when unset).
    pub temp_dir: Option<PathBuf>,
    /// Force the backup-copy method even when `sqlite_dbpage` is available.
    pub force_backup_copy: bool,
    /// The key (and settings) of a SQLCipher database.
    pub unlock: Option<Unlock>,
    /// Also run `integrity_check` (and `cipher_integrity_check`) on exactly the state
    /// the snapshot holds, alongside the pages; see [`Source::integrity_problems`].
    pub integrity_check: bool,
    /// Called inside a WAL-mode snapshot's read transaction, before any page is read,
    /// with its read mark (continuous replication starts following the WAL from
    /// exactly the state a base snapshot holds). Not called by the backup-copy method.
    pub on_read: Option<ReadHook>,
}

/// A callback run inside a snapshot's read transaction with its read mark (`None`
/// when SQLite cannot tell one: the transaction reads no WAL frame). An error aborts
/// the snapshot.
#[derive(Clone)]
pub struct ReadHook(pub std::sync::Arc<dyn Fn(Option<crate::follow::WalMark>) -> Result<(), String> + Send + Sync>);

impl std::fmt::Debug for ReadHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadHook")
    }
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            busy_timeout: Duration::from_secs(10),
            temp_dir: None,
            force_backup_copy: false,
            unlock: None,
            integrity_check: false,
            on_read: None,
        }
    }
}

impl SourceOptions {
    /// Sets the busy timeout.
    pub fn with_busy_timeout(mut self, t: Duration) -> Self {
        self.busy_timeout = t;
        self
    }
    /// Sets the temporary directory.
    pub fn with_temp_dir(mut self, dir: PathBuf) -> Self {
        self.temp_dir = Some(dir);
        self
    }
    /// Forces the backup-copy method.
    pub fn with_force_backup_copy(mut self, yes: bool) -> Self {
        self.force_backup_copy = yes;
        self
    }
    /// Sets the key of a SQLCipher database.
    pub fn with_unlock(mut self, unlock: Option<Unlock>) -> Self {
        self.unlock = unlock;
        self
    }
    /// Sets the hook run inside the snapshot's read transaction.
    pub fn with_on_read(mut self, hook: Option<ReadHook>) -> Self {
        self.on_read = hook;
        self
    }
    /// Checks the snapshot's state with `integrity_check` too.
    pub fn with_integrity_check(mut self, yes: bool) -> Self {
        self.integrity_check = yes;
        self
    }
}

/// Checks that `path` exists and starts with the plaintext SQLite header.
pub fn check_header(path: &Path) -> Result<(), SqliteError> {
    match crate::key::head(path)? {
        crate::key::Head::Plain => Ok(()),
        _ => Err(SqliteError::NotADatabase {
            path: path.to_path_buf(),
        }),
    }
}

/// A live source database, opened read-only.
///
/// The connection is read-only, so closing it can never checkpoint or delete the
/// application's WAL: sqlvault does not run checkpoints against databases it backs up.
#[derive(Debug)]
pub struct Source {
    path: PathBuf,
    conn: Connection,
    opts: SourceOptions,
    cipher: Option<CipherSettings>,
    checked: Option<Vec<String>>,
    // After the connection, so dropped after it: this process's descriptor of the file
    // while it has connections on it (see `hold_file`).
    _hold: Option<std::sync::Arc<std::fs::File>>,
}

fn pragma_i64(conn: &Connection, name: &str) -> rusqlite::Result<i64> {
    // On a keyed connection SQLCipher answers `page_size` itself, as text.
    conn.query_row(&format!("PRAGMA {name}"), [], |r| {
        match r.get::<_, rusqlite::types::Value>(0)? {
            rusqlite::types::Value::Integer(i) => Ok(i),
            rusqlite::types::Value::Text(t) => t
                .trim()
                .parse()
                .map_err(|_| rusqlite::Error::InvalidColumnType(0, name.into(), rusqlite::types::Type::Text)),
            _ => Err(rusqlite::Error::InvalidColumnType(
                0,
                name.into(),
                rusqlite::types::Type::Null,
            )),
        }
    })
}

pub(crate) fn read_info(conn: &Connection) -> rusqlite::Result<DbInfo> {
    Ok(DbInfo {
        page_size: pragma_i64(conn, "page_size")? as u32,
        page_count: pragma_i64(conn, "page_count")? as u32,
        journal_mode: conn
            .query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))?
            .to_lowercase(),
        user_version: pragma_i64(conn, "user_version")?,
        application_id: pragma_i64(conn, "application_id")?,
        text_encoding: conn.query_row("PRAGMA encoding", [], |r| r.get(0))?,
        freelist_count: pragma_i64(conn, "freelist_count")? as u32,
    })
}

impl Source {
    /// Opens `path` read-only after checking that it is a database: plaintext, or
    /// SQLCipher with `opts.unlock` (the key is proven here, and the settings detected
    /// when not given).
    pub fn open(path: &Path, opts: SourceOptions) -> Result<Source, SqliteError> {
        crate::key::head(path)?;
        let path = std::fs::canonicalize(path).map_err(|source| SqliteError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let hold = crate::hold_file(&path).ok();
        let (conn, cipher) = open_db(
            &path,
            opts.unlock.as_ref(),
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
            opts.busy_timeout,
        )?;
        // Read-only: an application's own collations get placeholders so the walk works.
        crate::collation::tolerate(&conn).map_err(|e| SqliteError::from_sqlite(&path, opts.busy_timeout, e))?;
        Ok(Source {
            path,
            conn,
            opts,
            cipher,
            checked: None,
            _hold: hold,
        })
    }

    /// Canonical path of the database.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The SQLCipher settings of an encrypted source (`None`: plaintext).
    pub fn cipher(&self) -> Option<&CipherSettings> {
        self.cipher.as_ref()
    }

    /// After a [`Source::snapshot`] with [`SourceOptions::integrity_check`]: the
    /// `integrity_check` lines (and `cipher_integrity_check` lines) of exactly the state
    /// the snapshot holds, empty when healthy; `None` when not checked. Indexes ordered
    /// by an application's collation are left out, as in [`verify_file`].
    pub fn integrity_problems(&self) -> Option<&[String]> {
        self.checked.as_deref()
    }

    /// Keys a fresh connection to the source (or to a private copy of it) like the
    /// source's own; a no-op for a plaintext source.
    pub(crate) fn key_like_source(&self, conn: &Connection) -> rusqlite::Result<()> {
        match (&self.cipher, &self.opts.unlock) {
            (Some(s), Some(u)) => apply_key(conn, &u.key, s),
            _ => Ok(()),
        }
    }

    pub(crate) fn err(&self, e: rusqlite::Error) -> SqliteError {
        SqliteError::from_sqlite(&self.path, self.opts.busy_timeout, e)
    }

    fn has_dbpage(&self) -> bool {
        self.conn
            .query_row(
                "SELECT 1 FROM pragma_module_list WHERE name = 'sqlite_dbpage'",
                [],
                |_| Ok(()),
            )
            .is_ok()
    }

    /// Takes a consistent snapshot: calls `page(pgno, bytes)` for every page in order,
    /// then returns the database facts, the logical checksum of exactly the state the
    /// pages show, and the method used. An error from `page` aborts the snapshot.
    ///
    /// Pages of a SQLCipher source come decrypted, with their reserved area (the
    /// encrypted page's IV and MAC, meaningless in plaintext) zeroed: SQLCipher draws a
    /// fresh IV for every page it writes, so a backup-API copy of an unchanged database
    /// would otherwise differ in every page and never deduplicate. The restored image
    /// is re-encrypted, which writes new ones.
    pub fn snapshot<E, F>(&mut self, page: F) -> Result<(DbInfo, [u8; 32], SnapshotMethod), SnapshotError<E>>
    where
        F: FnMut(u32, &[u8]) -> Result<(), E>,
    {
        let mut page = ZeroReserve {
            on: self.cipher.is_some(),
            reserve: 0,
            buf: Vec::new(),
            inner: page,
        };
        let mut page = |pgno: u32, data: &[u8]| page.call(pgno, data);
        let journal_mode: String = self
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))
            .map_err(|e| SnapshotError::Db(self.err(e)))?
            .to_lowercase();
        let use_dbpage = journal_mode == "wal" && !self.opts.force_backup_copy && self.has_dbpage();
        if use_dbpage {
            // One read transaction: WAL writers continue, we see one point in time.
            self.conn
                .execute_batch("BEGIN; SELECT count(*) FROM sqlite_schema;")
                .map_err(|e| SnapshotError::Db(self.err(e)))?;
            if let Some(hook) = &self.opts.on_read
                && let Err(detail) = (hook.0)(crate::follow::snapshot_mark(&self.conn))
            {
                let _ = self.conn.execute_batch("COMMIT");
                return Err(SnapshotError::Db(SqliteError::Inconsistent {
                    path: self.path.clone(),
                    detail,
                }));
            }
            let r = self.snapshot_dbpage(&mut page);
            let _ = self.conn.execute_batch("COMMIT");
            r.map(|(i, c, p)| {
                self.checked = p;
                (i, c, SnapshotMethod::DbPage)
            })
        } else {
            self.snapshot_copy(&mut page).map(|(i, c, p)| {
                self.checked = p;
                (i, c, SnapshotMethod::BackupCopy)
            })
        }
    }

    /// What a thread checking the snapshot's state needs of the source.
    fn checker_facts(&self) -> (PathBuf, Duration, bool) {
        // SQLCipher 1.x pages carry no MAC: cipher_integrity_check has nothing to check.
        let macs = self.cipher.as_ref().is_some_and(|c| c.compatibility > 1);
        (self.path.clone(), self.opts.busy_timeout, macs)
    }

    #[allow(clippy::type_complexity)]
    fn snapshot_dbpage<E, F>(&self, page: &mut F) -> Result<(DbInfo, [u8; 32], Option<Vec<String>>), SnapshotError<E>>
    where
        F: FnMut(u32, &[u8]) -> Result<(), E>,
    {
        let info = read_info(&self.conn).map_err(|e| SnapshotError::Db(self.err(e)))?;
        // A second connection pinned to this transaction's snapshot computes the
        // checksum while pages stream; without the snapshot API it runs afterwards.
        let twin = self.pinned_twin();
        // A third, for the integrity check when asked (afterwards on the source's own
        // read transaction when it cannot be pinned).
        let checker = if self.opts.integrity_check {
            Some(self.pinned_twin())
        } else {
            None
        };
        std::thread::scope(|scope| {
            let facts = self.checker_facts();
            let check = checker.map(|c| {
                scope.spawn(move || match c {
                    Some(conn) => {
                        let r = integrity_of(&conn, &facts);
                        let _ = conn.execute_batch("COMMIT");
                        Some(r)
                    }
                    None => None,
                })
            });
            let side = twin.map(|conn| {
                scope.spawn(move || {
                    let t = std::time::Instant::now();
                    let r = logical_checksum(&conn);
                    let _ = conn.execute_batch("COMMIT");
                    tracing::debug!(seconds = t.elapsed().as_secs_f64(), "logical checksum (parallel)");
                    r
                })
            });
            self.stream_dbpage(&info, page)?;
            let sum = match side {
                Some(h) => h.join().expect("checksum thread panicked"),
                None => {
                    let t = std::time::Instant::now();
                    let r = logical_checksum(&self.conn);
                    tracing::debug!(seconds = t.elapsed().as_secs_f64(), "logical checksum");
                    r
                }
            }
            .map_err(|e| SnapshotError::Db(self.err(e)))?;
            let checked = match check.map(|h| h.join().expect("integrity thread panicked")) {
                None => None,
                Some(Some(r)) => Some(r.map_err(SnapshotError::Db)?),
                Some(None) => Some(integrity_of(&self.conn, &self.checker_facts()).map_err(SnapshotError::Db)?),
            };
            Ok((info, sum, checked))
        })
    }

    #[cfg(sqlvault_snapshot)]
    fn pinned_twin(&self) -> Option<Connection> {
        use rusqlite::ffi;
        let twin = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
        )
        .ok()?;
        twin.busy_timeout(self.opts.busy_timeout).ok()?;
        self.key_like_source(&twin).ok()?;
        crate::collation::tolerate(&twin).ok()?;
        // One read in autocommit first: the pager opens the WAL (and loads the schema)
        // lazily, and sqlite3_snapshot_open fails on a connection whose WAL is not open.
        twin.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
            .ok()?;
        twin.execute_batch("BEGIN").ok()?;
        let main = c"main";
        let mut snap: *mut ffi::sqlite3_snapshot = std::ptr::null_mut();
        // SAFETY: both handles are open connections owned by this thread; `snap` is
        // freed below on every path; the source connection holds its read
        // transaction, which keeps the snapshot valid until we open it.
        unsafe {
            let rc = ffi::sqlite3_snapshot_get(self.conn.handle(), main.as_ptr(), &mut snap);
            if rc != ffi::SQLITE_OK {
                // SQLite refuses a snapshot of a WAL with no frames: the source reads
                // the main file only, and a reader at that mark stops every checkpoint
                // from changing the file. The twin then sees the same state exactly
                // when its own view of the WAL is empty too, which its own
                // snapshot_get failing the same way tells us.
                twin.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
                    .ok()?;
                let mut probe: *mut ffi::sqlite3_snapshot = std::ptr::null_mut();
                let rc2 = ffi::sqlite3_snapshot_get(twin.handle(), main.as_ptr(), &mut probe);
                if rc2 == ffi::SQLITE_OK {
                    ffi::sqlite3_snapshot_free(probe);
                    tracing::debug!("the WAL grew between the two transactions; checksum runs after the pages");
                    return None;
                }
                return Some(twin);
            }
            let rc = ffi::sqlite3_snapshot_open(twin.handle(), main.as_ptr(), snap);
            ffi::sqlite3_snapshot_free(snap);
            if rc != ffi::SQLITE_OK {
                tracing::debug!(rc, "sqlite3_snapshot_open failed; checksum runs after the pages");
                return None;
            }
        }
        // The read transaction starts on the pinned snapshot with the first read.
        match twin.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(())) {
            Ok(()) => Some(twin),
            Err(e) => {
                tracing::debug!("pinned read failed ({e}); checksum runs after the pages");
                None
            }
        }
    }

    #[cfg(not(sqlvault_snapshot))]
    fn pinned_twin(&self) -> Option<Connection> {
        None
    }

    fn stream_dbpage<E, F>(&self, info: &DbInfo, page: &mut F) -> Result<(), SnapshotError<E>>
    where
        F: FnMut(u32, &[u8]) -> Result<(), E>,
    {
        self.stream_dbpage_of(&self.conn, info, None, page)
    }

    /// Streams every page of `conn`'s main database through `sqlite_dbpage` (decrypted
    /// when the connection is keyed). `copy_header`: the pages are a backup-API copy's,
    /// whose page 1 gets [`fix_page1`] with the source's header.
    fn stream_dbpage_of<E, F>(
        &self,
        conn: &Connection,
        info: &DbInfo,
        copy_header: Option<Option<&[u8; 100]>>,
        page: &mut F,
    ) -> Result<(), SnapshotError<E>>
    where
        F: FnMut(u32, &[u8]) -> Result<(), E>,
    {
        let db = |e| SnapshotError::Db(self.err(e));
        let mut stmt = conn
            .prepare("SELECT pgno, data FROM sqlite_dbpage('main')")
            .map_err(db)?;
        let mut rows = stmt.raw_query();
        let mut expect = 1u32;
        while let Some(row) = rows.next().map_err(db)? {
            let pgno: i64 = row.get(0).map_err(db)?;
            let data = row.get_ref(1).and_then(|v| Ok(v.as_blob()?)).map_err(db)?;
            if pgno as u32 != expect || data.len() != info.page_size as usize {
                return Err(SnapshotError::Db(SqliteError::Inconsistent {
                    path: self.path.clone(),
                    detail: format!("sqlite_dbpage returned page {pgno} out of order"),
                }));
            }
            match copy_header {
                Some(h) if expect == 1 => {
                    let mut p1 = data.to_vec();
                    fix_page1(&mut p1, info, h);
                    page(1, &p1).map_err(SnapshotError::Consumer)?;
                }
                _ => page(expect, data).map_err(SnapshotError::Consumer)?,
            }
            expect += 1;
        }
        if expect - 1 != info.page_count {
            return Err(SnapshotError::Db(SqliteError::Inconsistent {
                path: self.path.clone(),
                detail: "sqlite_dbpage returned fewer pages than page_count".into(),
            }));
        }
        Ok(())
    }

    #[allow(clippy::type_complexity)]
    fn snapshot_copy<E, F>(&self, page: &mut F) -> Result<(DbInfo, [u8; 32], Option<Vec<String>>), SnapshotError<E>>
    where
        F: FnMut(u32, &[u8]) -> Result<(), E>,
    {
        let (tmp, source_header) = self.private_copy().map_err(SnapshotError::Db)?;
        // The copy is private: read its facts and checksum, then stream its pages.
        let (copy, info) = self.open_copy(tmp.path()).map_err(SnapshotError::Db)?;
        // An encrypted copy's file holds ciphertext: its pages are read through
        // SQLCipher on a second connection.
        let reader = match self.cipher {
            Some(_) => Some(self.open_copy(tmp.path()).map_err(SnapshotError::Db)?.0),
            None => None,
        };
        let checker = if self.opts.integrity_check {
            Some(self.open_copy(tmp.path()).map_err(SnapshotError::Db)?.0)
        } else {
            None
        };
        // The copy is private and immutable now: checksum it on its own connection
        // while its pages stream.
        std::thread::scope(|scope| {
            let sum_thread = scope.spawn(move || logical_checksum(&copy));
            let facts = self.checker_facts();
            let check = checker.map(|c| scope.spawn(move || integrity_of(&c, &facts)));
            match &reader {
                Some(r) => self.stream_dbpage_of(r, &info, Some(source_header.as_ref()), page)?,
                None => self.stream_copy(tmp.path(), &info, source_header.as_ref(), page)?,
            }
            let sum = sum_thread
                .join()
                .expect("checksum thread panicked")
                .map_err(|e| SnapshotError::Db(self.err(e)))?;
            let checked = match check {
                Some(h) => Some(
                    h.join()
                        .expect("integrity thread panicked")
                        .map_err(SnapshotError::Db)?,
                ),
                None => None,
            };
            Ok((info, sum, checked))
        })
    }

    fn stream_copy<E, F>(
        &self,
        path: &Path,
        info: &DbInfo,
        source_header: Option<&[u8; 100]>,
        page: &mut F,
    ) -> Result<(), SnapshotError<E>>
    where
        F: FnMut(u32, &[u8]) -> Result<(), E>,
    {
        let io = |source| {
            SnapshotError::Db(SqliteError::Io {
                path: path.to_path_buf(),
                source,
            })
        };
        let f = File::open(path).map_err(io)?;
        let ps = info.page_size as usize;
        let batch = (1 << 20) / ps.max(1);
        let mut buf = vec![0u8; ps * batch.max(1)];
        let mut pgno = 1u32;
        while pgno <= info.page_count {
            let n = ((info.page_count - pgno + 1) as usize).min(batch.max(1));
            let slice = &mut buf[..n * ps];
            f.read_exact_at(slice, (pgno as u64 - 1) * ps as u64).map_err(io)?;
            for (i, p) in slice.chunks_exact(ps).enumerate() {
                let mut bytes = p;
                let owned;
                if pgno + i as u32 == 1 {
                    let mut p1 = p.to_vec();
                    fix_page1(&mut p1, info, source_header);
                    owned = p1;
                    bytes = &owned;
                }
                page(pgno + i as u32, bytes).map_err(SnapshotError::Consumer)?;
            }
            pgno += n as u32;
        }
        Ok(())
    }
}

/// Hands pages on, with the reserved area zeroed when `on` (a SQLCipher source; see
/// [`Source::snapshot`]). The reserve size is read from page 1, which comes first.
struct ZeroReserve<F> {
    on: bool,
    reserve: usize,
    buf: Vec<u8>,
    inner: F,
}

impl<F> ZeroReserve<F> {
    fn call<E>(&mut self, pgno: u32, data: &[u8]) -> Result<(), E>
    where
        F: FnMut(u32, &[u8]) -> Result<(), E>,
    {
        if !self.on {
            return (self.inner)(pgno, data);
        }
        if pgno == 1 {
            self.reserve = data.get(20).copied().unwrap_or(0) as usize;
        }
        if self.reserve == 0 || self.reserve >= data.len() {
            return (self.inner)(pgno, data);
        }
        self.buf.clear();
        self.buf.extend_from_slice(data);
        let n = self.buf.len();
        self.buf[n - self.reserve..].fill(0);
        (self.inner)(pgno, &self.buf)
    }
}

/// The backup API rewrites header fields of the copy: the WAL/legacy mode bytes (18,
/// 19), the change counter, the schema cookie, version-valid-for and the library
/// version. In rollback mode the source's header, read under the same lock, is
/// authoritative: put it back so the snapshot holds exactly the source's pages. In WAL
/// mode the newest header may live in the WAL, so only the mode bytes are set.
fn fix_page1(p1: &mut [u8], info: &DbInfo, source_header: Option<&[u8; 100]>) {
    match source_header {
        Some(h) => p1[..100].copy_from_slice(h),
        None => {
            let v = if info.journal_mode == "wal" { 2 } else { 1 };
            p1[18] = v;
            p1[19] = v;
        }
    }
}

impl Source {
    /// A private, consistent copy of the database: one `step(-1)` of the backup API
    /// under one read lock, into a 0600 temporary file that is removed on drop. Returns
    /// the source's own 100-byte header too, where it is authoritative.
    pub(crate) fn private_copy(&self) -> Result<(tempfile::NamedTempFile, Option<[u8; 100]>), SqliteError> {
        // `/tmp` unless the caller says (the engine passes its session's directory; this
        // crate reads no environment).
        let dir = self.opts.temp_dir.clone().unwrap_or_else(|| PathBuf::from("/tmp"));
        // Created 0600, removed on drop on every path, and on a signal (registered).
        let tmp = crate::scratch_file(&dir, "snapshot", ".tmp").map_err(|source| SqliteError::Io {
            path: dir.clone(),
            source,
        })?;
        // Hold a read transaction across the copy so that the source header we read
        // belongs to exactly the state the backup API copies.
        self.conn
            .execute_batch("BEGIN; SELECT count(*) FROM sqlite_schema;")
            .map_err(|e| self.err(e))?;
        let copied = self.copy_locked::<()>(tmp.path());
        let _ = self.conn.execute_batch("COMMIT");
        let header = copied.map_err(|e| match e {
            SnapshotError::Db(e) => e,
            SnapshotError::Consumer(()) => unreachable!("no consumer"),
        })?;
        Ok((tmp, header))
    }

    /// Opens a private copy read-only; its facts, with the source's journal mode (the
    /// copy's header says what the backup API made it).
    pub(crate) fn open_copy(&self, path: &Path) -> Result<(Connection, DbInfo), SqliteError> {
        let copy = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|e| self.err(e))?;
        self.key_like_source(&copy).map_err(|e| self.err(e))?;
        crate::collation::tolerate(&copy).map_err(|e| self.err(e))?;
        let mut info = read_info(&copy).map_err(|e| self.err(e))?;
        info.journal_mode = self.journal_mode()?;
        Ok((copy, info))
    }

    pub(crate) fn journal_mode(&self) -> Result<String, SqliteError> {
        Ok(self
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?
            .to_lowercase())
    }

    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    pub(crate) fn options(&self) -> &SourceOptions {
        &self.opts
    }

    /// The copy itself, called inside the source's read transaction. Returns the
    /// source's 100-byte header when the main file is authoritative (not WAL mode,
    /// where the newest header may live in the WAL).
    pub(crate) fn copy_locked<E>(&self, dst_path: &Path) -> Result<Option<[u8; 100]>, SnapshotError<E>> {
        let journal_mode: String = self
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))
            .map_err(|e| SnapshotError::Db(self.err(e)))?;
        // Read the header through SQLite, never by opening the file ourselves: closing
        // any descriptor of a file drops every POSIX lock this process holds on it,
        // SQLite's read lock included, and a writer could then commit mid-copy.
        let header = if journal_mode.eq_ignore_ascii_case("wal") || !self.has_dbpage() {
            None
        } else {
            let p1: Vec<u8> = self
                .conn
                .query_row("SELECT data FROM sqlite_dbpage('main') WHERE pgno = 1", [], |r| {
                    r.get(0)
                })
                .map_err(|e| SnapshotError::Db(self.err(e)))?;
            let mut h = [0u8; 100];
            h.copy_from_slice(p1.get(..100).ok_or_else(|| {
                SnapshotError::Db(SqliteError::Inconsistent {
                    path: self.path.clone(),
                    detail: "page 1 is shorter than the header".into(),
                })
            })?);
            Some(h)
        };
        let mut dst = Connection::open(dst_path).map_err(|e| SnapshotError::Db(self.err(e)))?;
        // SQLCipher's backup API copies an encrypted database only into one with the
        // same key and settings.
        self.key_like_source(&dst).map_err(|e| SnapshotError::Db(self.err(e)))?;
        let backup = rusqlite::backup::Backup::new(&self.conn, &mut dst).map_err(|e| SnapshotError::Db(self.err(e)))?;
        // One step under one read lock: small steps restart on every write and may
        // never finish under load; a single step is short even in rollback mode.
        loop {
            match backup.step(-1).map_err(|e| SnapshotError::Db(self.err(e)))? {
                rusqlite::backup::StepResult::Done => break,
                rusqlite::backup::StepResult::Busy | rusqlite::backup::StepResult::Locked => {
                    return Err(SnapshotError::Db(SqliteError::Busy {
                        path: self.path.clone(),
                        timeout: self.opts.busy_timeout,
                    }));
                }
                _ => continue,
            }
        }
        Ok(header)
    }
}

/// A snapshot failed in SQLite or in the page consumer.
#[derive(Debug)]
pub enum SnapshotError<E> {
    /// SQLite or the filesystem failed.
    Db(SqliteError),
    /// The consumer returned an error.
    Consumer(E),
}

impl<E: std::fmt::Display> std::fmt::Display for SnapshotError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotError::Db(e) => std::fmt::Display::fmt(e, f),
            SnapshotError::Consumer(e) => std::fmt::Display::fmt(e, f),
        }
    }
}

/// Transparent: the message and source are those of the error inside.
impl<E: std::error::Error + 'static> std::error::Error for SnapshotError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SnapshotError::Db(e) => e.source(),
            SnapshotError::Consumer(e) => e.source(),
        }
    }
}

/// Result of checking a database file.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// Facts read from the file.
    pub info: DbInfo,
    /// `integrity_check` output lines other than `ok`, and for an encrypted file every
    /// line of `cipher_integrity_check` (empty when healthy).
    pub problems: Vec<String>,
    /// Logical checksum of the file's content.
    pub logical_checksum: [u8; 32],
    /// The file's SQLCipher settings (`None`: plaintext).
    pub cipher: Option<CipherSettings>,
    /// Checks not done, one line each naming the index and why: indexes ordered by a
    /// collation only the application has (their structure is checked, their key
    /// order and content cannot be).
    pub not_checked: Vec<String>,
}

/// Opens `path` immutable (no locks, no `-wal`/`-shm` created) and runs
/// `PRAGMA integrity_check` and the logical checksum, on two connections at once (each
/// reads the whole file; together they take as long as the slower one).
pub fn verify_file(path: &Path) -> Result<VerifyReport, SqliteError> {
    verify_file_with(path, None)
}

/// [`verify_file`] for a file that may be encrypted: with `unlock`, the key is proven
/// and `cipher_integrity_check` (every page's MAC) runs before `integrity_check`.
pub fn verify_file_with(path: &Path, unlock: Option<&Unlock>) -> Result<VerifyReport, SqliteError> {
    let t = Duration::from_secs(0);
    let err = |e| SqliteError::from_sqlite(path, t, e);
    let uri = format!("file:{}?immutable=1", uri_escape(&path.to_string_lossy()));
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI;
    let (conn, cipher) = crate::key::open_db_as(path, &uri, unlock, flags, t)?;
    // The twin skips detection: same key, the settings just found.
    let twin_unlock = unlock.map(|u| Unlock {
        key: u.key.clone(),
        settings: cipher.clone(),
    });
    let (twin, _) = crate::key::open_db_as(path, &uri, twin_unlock.as_ref(), flags, t)?;
    // Both connections are read-only: an application's collations get placeholders,
    // and the checks that would need the real ones are reported as not done.
    crate::collation::tolerate(&conn).map_err(err)?;
    crate::collation::tolerate(&twin).map_err(err)?;
    let not_checked = crate::collation::app_collation_indexes(&conn).map_err(err)?;
    let info = read_info(&conn).map_err(err)?;
    // SQLCipher 1.x pages carry no MAC: cipher_integrity_check has nothing to check
    // there (and says so as an error).
    let encrypted = cipher.as_ref().is_some_and(|c| c.compatibility > 1);
    let (problems, sum) = std::thread::scope(|scope| {
        let sum = scope.spawn(move || logical_checksum(&twin));
        let problems = problems(&conn, encrypted, &not_checked);
        (problems, sum.join().expect("checksum thread panicked"))
    });
    Ok(VerifyReport {
        info,
        problems: problems.map_err(err)?,
        logical_checksum: sum.map_err(err)?,
        cipher,
        not_checked: not_checked.iter().map(AppCollation::describe).collect(),
    })
}

/// `integrity_check` of the state `conn` sees (a read-only connection to a snapshot's
/// state: a twin pinned to it, or the private copy); `facts` from
/// [`Source::checker_facts`].
fn integrity_of(conn: &Connection, facts: &(PathBuf, Duration, bool)) -> Result<Vec<String>, SqliteError> {
    let (path, timeout, encrypted) = facts;
    let err = |e| SqliteError::from_sqlite(path, *timeout, e);
    let t = std::time::Instant::now();
    let skip = crate::collation::app_collation_indexes(conn).map_err(err)?;
    let r = problems(conn, *encrypted, &skip).map_err(err);
    tracing::debug!(seconds = t.elapsed().as_secs_f64(), "source integrity_check");
    r
}

/// `integrity_check` (and `cipher_integrity_check`) lines other than `ok`.
///
/// When some indexes are ordered by an application's collation (`not_checked`), a
/// full `integrity_check` cannot be used: it compares their keys with the placeholder
/// and reports one false line per row out of bytewise order — which also spends its
/// budget of 100 lines before real damage elsewhere is reached. No output text is
/// filtered instead (a line cannot be attributed safely: names are arbitrary text).
/// Two checks that never compare keys of those indexes run: `quick_check` of the whole
/// file (every b-tree's structure, free pages, page usage, NOT NULL and CHECK), then
/// `integrity_check(T)` of every table none of whose indexes is in `not_checked`
/// (index contents of those tables, and virtual tables' own checks).
fn problems(conn: &Connection, encrypted: bool, not_checked: &[AppCollation]) -> rusqlite::Result<Vec<String>> {
    let mut out = Vec::new();
    if encrypted {
        let mut stmt = conn.prepare("PRAGMA cipher_integrity_check")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        for l in rows {
            out.push(format!("cipher_integrity_check: {}", l?));
        }
    }
    let push = |out: &mut Vec<String>, sql: &str, arg: Option<&str>| -> rusqlite::Result<()> {
        let mut stmt = conn.prepare(sql)?;
        let mut rows = match arg {
            Some(a) => stmt.query([a])?,
            None => stmt.query([])?,
        };
        while let Some(r) = rows.next()? {
            let l: String = r.get(0)?;
            if l != "ok" && !out.contains(&l) {
                out.push(l);
            }
        }
        Ok(())
    };
    if not_checked.is_empty() {
        push(&mut out, "PRAGMA integrity_check", None)?;
        return Ok(out);
    }
    push(&mut out, "PRAGMA quick_check", None)?;
    let tables: Vec<String> = conn
        .prepare(
            "SELECT name FROM pragma_table_list WHERE schema = 'main' \
             AND type IN ('table', 'virtual', 'shadow') AND name NOT IN ('sqlite_schema', 'sqlite_temp_schema') \
             ORDER BY name",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for t in tables.iter().filter(|t| !not_checked.iter().any(|a| &a.table == *t)) {
        push(&mut out, "SELECT * FROM pragma_integrity_check(?1)", Some(t))?;
    }
    Ok(out)
}

fn uri_escape(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for c in p.chars() {
        match c {
            '?' => out.push_str("%3f"),
            '#' => out.push_str("%23"),
            '%' => out.push_str("%25"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(path: &Path, wal: bool) {
        let c = Connection::open(path).unwrap();
        if wal {
            c.execute_batch("PRAGMA journal_mode=WAL").unwrap();
        }
        c.execute_batch(
            "PRAGMA user_version=42; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 2000)
             INSERT INTO t(v) SELECT hex(randomblob(50)) FROM n;",
        )
        .unwrap();
    }

    fn collect(src: &mut Source) -> (DbInfo, [u8; 32], SnapshotMethod, Vec<u8>) {
        let mut bytes = Vec::new();
        let (info, sum, m) = src
            .snapshot(|_, p| {
                bytes.extend_from_slice(p);
                Ok::<(), ()>(())
            })
            .unwrap();
        (info, sum, m, bytes)
    }

    #[test]
    fn both_methods_give_a_restorable_identical_image() {
        let dir = tempfile::tempdir().unwrap();
        for wal in [true, false] {
            let db = dir.path().join(format!("a{wal}.db"));
            make(&db, wal);
            // keep a writer connection open so the WAL is not checkpointed away
            let _app = Connection::open(&db).unwrap();
            let mut results = Vec::new();
            for force in [false, true] {
                let mut src = Source::open(&db, SourceOptions::default().with_force_backup_copy(force)).unwrap();
                results.push(collect(&mut src));
            }
            let (info, sum, m, bytes) = &results[0];
            assert_eq!(
                *m,
                if wal {
                    SnapshotMethod::DbPage
                } else {
                    SnapshotMethod::BackupCopy
                }
            );
            assert_eq!(info.user_version, 42);
            assert_eq!(info.journal_mode, if wal { "wal" } else { "delete" });
            assert_eq!(bytes.len(), info.page_size as usize * info.page_count as usize);
            assert_eq!(results[1].1, *sum);
            let out = dir.path().join(format!("restored{wal}.db"));
            std::fs::write(&out, bytes).unwrap();
            let rep = verify_file(&out).unwrap();
            assert!(rep.problems.is_empty(), "{:?}", rep.problems);
            assert_eq!(rep.logical_checksum, *sum);
            // The backup API rewrites header counters, so the images may differ in bytes;
            // what must agree is the size and the content.
            assert_eq!(results[1].3.len(), bytes.len());
        }
    }

    #[test]
    fn not_a_database_and_missing_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.txt");
        std::fs::write(&p, b"hello world, definitely not sqlite").unwrap();
        assert!(matches!(
            Source::open(&p, SourceOptions::default()),
            Err(SqliteError::NotADatabase { .. })
        ));
        let m = dir.path().join("missing.db");
        assert!(matches!(
            Source::open(&m, SourceOptions::default()),
            Err(SqliteError::Missing { .. })
        ));
    }
}
