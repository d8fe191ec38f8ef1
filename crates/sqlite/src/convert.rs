//! In-place conversions of a database between plaintext and SQLCipher, or between
//! keys and settings (encrypt, decrypt, rekey, migrate). Built on the key layer
//! (`key`) below and on dump and load: it sits above both, and nothing below imports it.
//!
//! Conversions never modify the original until the converted file is complete and
//! proven equal. Under an exclusive lock on the original (a WAL-mode original first
//! leaves WAL mode, which SQLite refuses while anyone else has it open), a lossless
//! dump of it streams into a load that builds a private temporary file in the same
//! directory with the target's key and settings; that file must pass
//! `cipher_integrity_check` (when encrypted) and `integrity_check`, and its logical
//! checksum must equal the one the dump computed from the original. Only then does
//! it take the original's mode and owner, get synced, and replace the original by an
//! atomic rename followed by a directory fsync. `sqlcipher_export` is not used: it
//! renumbers rowids that only `oid` can name.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use crate::SqliteError;
use crate::key::{AtRest, CipherSettings, DbKey, Unlock, open_db, other_openers, probe};

/// What a converted file is to become.
#[derive(Debug, Clone)]
pub enum Target {
    /// Plaintext SQLite.
    Plaintext,
    /// Encrypted with `key` and `settings`.
    Encrypted {
        /// The new key.
        key: DbKey,
        /// The new settings.
        settings: CipherSettings,
    },
}

/// Options for conversions.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConvertOptions {
    /// Longest wait for another connection's lock.
    pub busy_timeout: Duration,
    /// Convert a file that has other hard links ([`SqliteError::OtherLinks`]
    /// otherwise); the other names keep the old bytes ([`ConvertReport::other_links`]).
    pub allow_other_links: bool,
    /// Page size of the converted file. `None` keeps the original's (encrypt, decrypt,
    /// rekey) or takes the SQLCipher 4 default (migrate).
    pub page_size: Option<u32>,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            busy_timeout: Duration::from_secs(10),
            allow_other_links: false,
            page_size: None,
        }
    }
}

impl ConvertOptions {
    /// Allows converting a file with other hard links.
    pub fn with_allow_other_links(mut self, yes: bool) -> Self {
        self.allow_other_links = yes;
        self
    }
    /// Sets the busy timeout.
    pub fn with_busy_timeout(mut self, t: Duration) -> Self {
        self.busy_timeout = t;
        self
    }
    /// Sets the page size of the converted file ([`ConvertOptions::page_size`]).
    pub fn with_page_size(mut self, p: Option<u32>) -> Self {
        self.page_size = p;
        self
    }
}

/// What a conversion did.
#[derive(Debug, Clone)]
pub struct ConvertReport {
    /// The database (canonical path).
    pub path: PathBuf,
    /// Its settings before (`None`: plaintext).
    pub before: Option<CipherSettings>,
    /// Its settings after (`None`: plaintext).
    pub after: Option<CipherSettings>,
    /// The logical checksum, equal before and after.
    pub logical_checksum: [u8; 32],
    /// Pages of the new file.
    pub page_count: u32,
    /// Seconds in all.
    pub seconds: f64,
    /// Other hard links of the original, counted after the rename: names that still
    /// hold the old bytes (the plaintext, after `encrypt`). 0 normally.
    pub other_links: u64,
    /// Page size before and after.
    pub page_size: (u32, u32),
    /// Nothing was done: the file already was what was asked (`migrate` of a file
    /// with the target settings). Not a byte of it was written.
    pub unchanged: bool,
}

/// Encrypts a plaintext database in place (see the module docs for the guarantees).
/// The page size is the original's unless [`ConvertOptions::page_size`] says
/// otherwise (`settings.page_size` is not used): a size SQLCipher cannot use is
/// [`SqliteError::PageSize`], naming the sizes that work.
pub fn encrypt(
    path: &Path,
    key: DbKey,
    settings: CipherSettings,
    opts: &ConvertOptions,
) -> Result<ConvertReport, SqliteError> {
    convert(path, None, Target::Encrypted { key, settings }, opts)
}

/// Decrypts a SQLCipher database in place, keeping its page size unless
/// [`ConvertOptions::page_size`] says otherwise.
pub fn decrypt(path: &Path, unlock: &Unlock, opts: &ConvertOptions) -> Result<ConvertReport, SqliteError> {
    convert(path, Some(unlock), Target::Plaintext, opts)
}

/// Changes the key of a SQLCipher database, keeping its settings.
pub fn rekey(
    path: &Path,
    unlock: &Unlock,
    new_key: DbKey,
    opts: &ConvertOptions,
) -> Result<ConvertReport, SqliteError> {
    let settings = match probe(path, Some(unlock))? {
        AtRest::Encrypted(Some(s)) => s,
        _ => {
            return Err(SqliteError::NotEncrypted {
                path: path.to_path_buf(),
            });
        }
    };
    // Detected once: the conversion opens the original with them, no second guess.
    let known = Unlock {
        key: unlock.key.clone(),
        settings: Some(settings.clone()),
    };
    convert(path, Some(&known), Target::Encrypted { key: new_key, settings }, opts)
}

/// Upgrades a SQLCipher 3, 2.x or 1.x (or any non-default) database to SQLCipher 4
/// defaults (the page size too, unless [`ConvertOptions::page_size`] says otherwise),
/// keeping its key. A file that already has exactly these settings is left alone: not
/// rewritten, not even opened for writing ([`ConvertReport::unchanged`]).
pub fn migrate(path: &Path, unlock: &Unlock, opts: &ConvertOptions) -> Result<ConvertReport, SqliteError> {
    crate::key::require_sqlcipher("migrating a SQLCipher database")?;
    let t0 = Instant::now();
    let mut target = CipherSettings::defaults(4)?;
    if let Some(p) = opts.page_size {
        target.page_size = p;
    }
    let canon = std::fs::canonicalize(path).map_err(|source| SqliteError::io_at(path, source))?;
    let timeout = opts.busy_timeout;
    let (conn, before) = open_db(
        &canon,
        Some(unlock),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        timeout,
    )?;
    let before = before.ok_or_else(|| SqliteError::NotEncrypted { path: canon.clone() })?;
    if before == target {
        let err = |e| SqliteError::from_sqlite(&canon, timeout, e);
        let tx = conn.unchecked_transaction().map_err(err)?;
        let sum = crate::checksum::logical_checksum(&tx).map_err(err)?;
        let page_count = tx
            .query_row("PRAGMA page_count", [], |r| r.get::<_, u32>(0))
            .map_err(err)?;
        drop(tx);
        return Ok(ConvertReport {
            path: canon,
            before: Some(before.clone()),
            after: Some(before),
            logical_checksum: sum,
            page_count,
            seconds: t0.elapsed().as_secs_f64(),
            other_links: 0,
            page_size: (target.page_size, target.page_size),
            unchanged: true,
        });
    }
    drop(conn);
    // Detected once: the conversion opens the original with them, no second guess.
    let known = Unlock {
        key: unlock.key.clone(),
        settings: Some(before),
    };
    let opts = opts.clone().with_page_size(Some(target.page_size));
    convert(
        &canon,
        Some(&known),
        Target::Encrypted {
            key: unlock.key.clone(),
            settings: target,
        },
        &opts,
    )
}

/// Converts `path` in place from what `from` unlocks (plaintext when `None`) to
/// `target`. See the module docs.
pub fn convert(
    path: &Path,
    from: Option<&Unlock>,
    target: Target,
    opts: &ConvertOptions,
) -> Result<ConvertReport, SqliteError> {
    if from.is_some() || matches!(target, Target::Encrypted { .. }) {
        crate::key::require_sqlcipher("converting to or from SQLCipher")?;
    }
    let t0 = Instant::now();
    let path = std::fs::canonicalize(path).map_err(|source| SqliteError::io_at(path, source))?;
    let path = path.as_path();
    let timeout = opts.busy_timeout;
    let err = |e| SqliteError::from_sqlite(path, timeout, e);
    let in_use = |detail: String| SqliteError::InUse {
        path: path.to_path_buf(),
        detail,
    };
    // The original, held for its link count after the rename. Opened before the
    // connection so that it is closed after it: closing a descriptor of a file drops
    // this process's POSIX locks on it, SQLite's included.
    let original = crate::open_regular(path, true)?;
    let pids = other_openers(path);
    if !pids.is_empty() {
        return Err(in_use(format!(
            "held open by process {pids:?}; stop the application first"
        )));
    }
    let meta = original.metadata().map_err(|source| SqliteError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // Another name of the same file keeps the old bytes after the rename, and stops
    // being the same database: never without being told.
    if meta.nlink() > 1 && !opts.allow_other_links {
        return Err(SqliteError::OtherLinks {
            path: path.to_path_buf(),
            links: meta.nlink() - 1,
            what: match (&target, from) {
                (Target::Encrypted { .. }, None) => ", the plaintext,",
                (Target::Encrypted { .. }, Some(_)) => " (readable with the old key and settings)",
                (Target::Plaintext, _) => "",
            },
        });
    }
    let (conn, before) = open_db(
        path,
        from,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        timeout,
    )?;
    // The page size is kept unless asked otherwise; a size the target's SQLCipher
    // settings cannot hold is refused here, naming the choices.
    // On a keyed connection SQLCipher answers `page_size` itself, as text.
    let page0: u32 = conn
        .query_row("PRAGMA page_size", [], |r| r.get::<_, rusqlite::types::Value>(0))
        .map_err(err)
        .and_then(|v| {
            match v {
                rusqlite::types::Value::Integer(i) => u32::try_from(i).ok(),
                rusqlite::types::Value::Text(t) => t.trim().parse().ok(),
                _ => None,
            }
            .ok_or_else(|| SqliteError::Inconsistent {
                path: path.to_path_buf(),
                detail: "PRAGMA page_size is not a number".into(),
            })
        })?;
    let page1 = opts.page_size.unwrap_or(page0);
    let target = match target {
        Target::Plaintext => {
            if !page1.is_power_of_two() || !(512..=65536).contains(&page1) {
                return Err(SqliteError::PageSize {
                    path: path.to_path_buf(),
                    what: format!("{page1} is not a page size (a power of two from 512 to 65536)"),
                });
            }
            Target::Plaintext
        }
        Target::Encrypted { key, mut settings } => {
            if !settings.fits_page_size(page1) {
                let min = (9..=16)
                    .map(|b| 1u32 << b)
                    .find(|&p| settings.fits_page_size(p))
                    .unwrap_or(65536);
                return Err(SqliteError::PageSize {
                    path: path.to_path_buf(),
                    what: format!(
                        "{} {page1}-byte pages cannot be encrypted with SQLCipher {} settings: SQLCipher keeps {} bytes of every page for its IV and MAC, and SQLite needs at least 480 of the rest; choose a page size with --page-size: {min} (the smallest that works) or 4096 (SQLCipher 4's default)",
                        if opts.page_size.is_some() { "asked for" } else { "its" },
                        settings.compatibility,
                        settings.reserve()
                    ),
                });
            }
            settings.page_size = page1;
            Target::Encrypted { key, settings }
        }
    };
    let journal0: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))
        .map_err(err)?
        .to_lowercase();
    // Leave WAL mode for the conversion: it checkpoints everything into the main file
    // and removes the -wal, which SQLite refuses while any other connection has the
    // database open. The new file gets the original mode back before it replaces the
    // original; on failure the original gets it back.
    let wal = journal0 == "wal";
    if wal {
        let m: String = conn
            .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
            .map_err(|e| match err(e) {
                SqliteError::Busy { .. } => in_use("another connection has it open in WAL mode".into()),
                other => other,
            })?;
        if !m.eq_ignore_ascii_case("delete") {
            return Err(in_use("another connection has it open in WAL mode".into()));
        }
    }
    let r = convert_locked(path, &conn, &target, &meta, timeout, &journal0, page1);
    if r.is_err() && wal {
        let _ = conn.execute_batch("PRAGMA locking_mode = NORMAL; SELECT count(*) FROM sqlite_schema;");
        let _ = conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()));
    }
    let (after, sum, page_count) = r?;
    drop(conn);
    // The original's inode now has only its other names.
    let other_links = original.metadata().map(|m| m.nlink()).unwrap_or(meta.nlink() - 1);
    drop(original);
    Ok(ConvertReport {
        other_links,
        path: path.to_path_buf(),
        before,
        after,
        logical_checksum: sum,
        page_count,
        seconds: t0.elapsed().as_secs_f64(),
        page_size: (page0, page1),
        unchanged: false,
    })
}

#[allow(clippy::type_complexity)]
fn convert_locked(
    path: &Path,
    conn: &Connection,
    target: &Target,
    meta: &std::fs::Metadata,
    timeout: Duration,
    journal0: &str,
    page_size: u32,
) -> Result<(Option<CipherSettings>, [u8; 32], u32), SqliteError> {
    let err = |e| SqliteError::from_sqlite(path, timeout, e);
    let dir = path.parent().unwrap_or(Path::new("/"));
    // Keep the lock on the original after the transaction ends, until the connection
    // closes after the rename: nobody writes to it in between.
    conn.execute_batch("PRAGMA main.locking_mode = EXCLUSIVE;")
        .map_err(err)?;
    conn.execute_batch("BEGIN EXCLUSIVE").map_err(|e| match err(e) {
        SqliteError::Busy { path, .. } => SqliteError::InUse {
            path,
            detail: "another connection holds a lock on it".into(),
        },
        other => other,
    })?;
    let mut info = crate::snapshot::read_info(conn).map_err(err)?;
    info.journal_mode = journal0.to_string();
    // The dump's `PRAGMA page_size` builds a plaintext copy; an encrypted copy takes
    // its page size from the settings (set to the same value by the caller).
    info.page_size = page_size;
    let unlock = match target {
        Target::Plaintext => None,
        Target::Encrypted { key, settings } => {
            settings.validate()?;
            Some(Unlock {
                key: key.clone(),
                settings: Some(settings.clone()),
            })
        }
    };
    // The copy is rebuilt from a lossless dump of the locked original, streamed
    // through a pipe into a verified load: every row with its rowid, the schema,
    // user_version, application_id, auto_vacuum and journal mode. (sqlcipher_export
    // renumbers rowids that only `oid` can name.) The load checks integrity, the
    // cipher MACs, and the checksum the dump computed in the same pass.
    let (reader, writer) = std::io::pipe().map_err(|source| SqliteError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let opts = crate::LoadOptions::default().with_encrypt(unlock);
    let loaded = std::thread::scope(|scope| {
        let loader = scope
            .spawn(|| crate::load::load_temp(std::io::BufReader::with_capacity(1 << 20, reader), path, path, &opts));
        let dumped = crate::dump::dump_conn(conn, path, info, writer);
        let loaded = loader.join().expect("loader thread panicked");
        match (dumped, loaded) {
            // A loader that stopped closes the pipe: its error is the cause.
            (Err(SqliteError::Output { .. }), Err(e)) => Err(e),
            (Err(e), _) => Err(e),
            (Ok(d), Ok((tmp, rep))) if rep.logical_checksum == d.logical_checksum && rep.checksum_verified => {
                Ok((tmp, rep))
            }
            (Ok(_), Ok(_)) => Err(SqliteError::Verify {
                path: path.to_path_buf(),
                what: "the converted copy's logical checksum differs from the original's; the original is unchanged"
                    .into(),
            }),
            (Ok(_), Err(e)) => Err(e),
        }
    });
    let _ = conn.execute_batch("COMMIT");
    let (tmp, rep) = loaded?;
    let tmp_path = tmp.path().to_path_buf();
    let _cleanup = SideFiles(tmp_path.clone());
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| SqliteError::Io { path: p, source }
    };
    let f = tmp.as_file();
    // The converted file takes the original's place: same mode, and same owner where
    // this user may set it (root converting an application's database).
    std::fs::set_permissions(
        &tmp_path,
        std::os::unix::fs::PermissionsExt::from_mode(meta.mode() & 0o7777),
    )
    .map_err(io(&tmp_path))?;
    // The temporary file is owned by whoever runs this (effective ids): give it the
    // original's owner when that differs.
    let mine = f.metadata().map_err(io(&tmp_path))?;
    if meta.uid() != mine.uid() || meta.gid() != mine.gid() {
        let _ = std::os::unix::fs::fchown(f, Some(meta.uid()), Some(meta.gid()));
    }
    f.sync_all().map_err(io(&tmp_path))?;
    tmp.persist(path).map_err(|e| io(path)(e.error))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    let after = match target {
        Target::Plaintext => None,
        Target::Encrypted { settings, .. } => Some(settings.clone()),
    };
    Ok((after, rep.logical_checksum, rep.info.page_count))
}

/// Removes `-journal`/`-wal`/`-shm` files SQLite may leave next to a temporary file
/// when a conversion fails midway.
struct SideFiles(PathBuf);

impl Drop for SideFiles {
    fn drop(&mut self) {
        for suffix in ["-journal", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}
