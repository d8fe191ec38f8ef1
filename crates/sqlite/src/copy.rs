//! A verified, consistent copy of a live database to a new file
//! ([`copy_database`]): what `sqlvault snapshot` does.
//!
//! Why not `cp`: a live database is more than its main file. In WAL mode committed
//! transactions live in the `-wal` until a checkpoint copies them back, so a copied
//! main file alone can miss any number of them (or every table); and while `cp` reads,
//! a writer or a checkpoint changes pages it has already read or not yet read, so the
//! copy mixes states that never existed together. SQLite's online backup API reads
//! through the pager inside one read transaction instead: one committed state, WAL
//! included.
//!
//! The steps, each for a reason:
//!
//! 1. The source is opened read-only ([`Source::open`], keyed for SQLCipher): closing
//!    it can never checkpoint or delete the application's WAL.
//! 2. One read transaction (`BEGIN` and a read of `sqlite_schema`, which is what
//!    starts it in WAL mode) pins one committed state. Inside it the logical checksum
//!    of exactly that state is computed, then the backup API copies that same state
//!    in one `step(-1)` from the same connection into a private 0600 scratch file
//!    beside the destination. One step, because a backup in small steps restarts
//!    whenever another connection commits and, under a steady writer, never finishes.
//!    In WAL mode writers go on meanwhile; in rollback-journal mode the read blocks
//!    them, so the transaction ends as soon as the copy is done.
//! 3. With `vacuum`, the private copy is rebuilt with `VACUUM INTO` a second scratch
//!    file under `PRAGMA secure_delete = ON`: a database freshly built from the live
//!    rows, with no free page, so what the application deleted (still on the source's
//!    freelist and in the slack of its pages) does not travel. `VACUUM INTO` does not
//!    fsync its output: it is synced here. An encrypted source must yield an output
//!    encrypted with the same key and settings; anything else is refused before it is
//!    written anywhere but the scratch file. (SQLCipher writes `VACUUM INTO`'s output
//!    with the main database's key but with its *default* settings, so only a
//!    database with SQLCipher 4's defaults can be vacuumed; others are refused before
//!    anything is read.)
//! 4. The result is verified as a restore is ([`verify_file_with`]):
//!    `integrity_check` (and `cipher_integrity_check`) and its logical checksum, which
//!    must equal the source's at the state copied. Any difference is an error and
//!    nothing is left behind.
//! 5. It is synced and moved into place with [`install`]: an existing destination is
//!    never replaced unless asked (and then never while another process holds it
//!    open), and the directory is synced after the rename.
//!
//! The copy is a rollback-journal (`delete` mode) database, as the backup API makes
//! it, whatever the source's mode (the report says the source's).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use crate::key::{CipherSettings, Unlock};
use crate::snapshot::read_info;
use crate::{Source, SourceOptions, SqliteError, install, logical_checksum, verify_file_with};

/// Options of [`copy_database`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CopyOptions {
    /// Longest wait for the application's locks before failing
    /// ([`SqliteError::Busy`]).
    pub busy_timeout: Duration,
    /// The key (and settings) of a SQLCipher source; the copy gets the same.
    pub unlock: Option<Unlock>,
    /// Rebuild the copy with `VACUUM INTO` under `secure_delete`: no free page, and no
    /// residue of deleted rows.
    pub vacuum: bool,
    /// Replace an existing destination (see [`install`]); otherwise it is refused
    /// ([`SqliteError::Exists`]) before anything is read.
    pub replace: bool,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            busy_timeout: Duration::from_secs(10),
            unlock: None,
            vacuum: false,
            replace: false,
        }
    }
}

impl CopyOptions {
    /// Sets the busy timeout.
    pub fn with_busy_timeout(mut self, t: Duration) -> Self {
        self.busy_timeout = t;
        self
    }
    /// Sets the key of a SQLCipher source.
    pub fn with_unlock(mut self, unlock: Option<Unlock>) -> Self {
        self.unlock = unlock;
        self
    }
    /// Compacts the copy (`VACUUM INTO` with `secure_delete`).
    pub fn with_vacuum(mut self, yes: bool) -> Self {
        self.vacuum = yes;
        self
    }
    /// Replaces an existing destination.
    pub fn with_replace(mut self, yes: bool) -> Self {
        self.replace = yes;
        self
    }
}

/// What [`copy_database`] made.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CopyReport {
    /// The source, canonical.
    pub source: PathBuf,
    /// The copy.
    pub path: PathBuf,
    /// Page size of the copy, in bytes.
    pub page_size: u32,
    /// Pages of the copy.
    pub pages: u32,
    /// Size of the copy in bytes.
    pub bytes: u64,
    /// Free pages of the source at the state copied.
    pub freelist_before: u32,
    /// Free pages of the copy (0 after a vacuum).
    pub freelist_after: u32,
    /// The source's journal mode (`wal`, `delete`, …); the copy is in `delete` mode.
    pub journal_mode: String,
    /// Logical checksum of the state copied: the source's, and the copy's.
    pub logical_checksum: [u8; 32],
    /// How long the source's read transaction lasted (checksum and copy): in
    /// rollback-journal mode, the longest a writer of the application waited on it.
    pub read_seconds: f64,
    /// Whole duration, verification included.
    pub seconds: f64,
    /// Whether the copy was rebuilt with `VACUUM INTO`.
    pub vacuumed: bool,
    /// The SQLCipher settings of the source and the copy (`None`: plaintext).
    pub cipher: Option<CipherSettings>,
    /// Checks of the copy not done (indexes ordered by an application's collation; see
    /// [`crate::VerifyReport::not_checked`]).
    pub not_checked: Vec<String>,
}

/// Removes the `-journal`, `-wal` and `-shm` SQLite may leave beside a scratch file
/// when a step fails midway (the scratch file itself goes with its `NamedTempFile`).
struct SideFiles(PathBuf);

impl Drop for SideFiles {
    fn drop(&mut self) {
        for suffix in crate::SIDE_FILE_SUFFIXES {
            let mut p = self.0.as_os_str().to_owned();
            p.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
    }
}

/// Copies the live database `src` to a new file `out`: one consistent committed state,
/// verified, 0600, synced, renamed into place. See the module docs for each step.
///
/// Errors: the source's ([`SqliteError::Missing`], [`SqliteError::NotADatabase`],
/// [`SqliteError::Encrypted`], [`SqliteError::WrongKey`], [`SqliteError::Busy`], …);
/// [`SqliteError::Exists`] for an existing `out` without [`CopyOptions::replace`]
/// ([`SqliteError::StaleSideFile`] for a `-wal`, `-shm` or `-journal` beside it);
/// [`SqliteError::NotReplaceable`] when `out` is the source itself;
/// [`SqliteError::BadKey`] for a vacuum of a SQLCipher database whose settings are not
/// SQLCipher 4's defaults; [`SqliteError::Verify`] when the copy fails its checks. On every error no file is
/// left at `out` (an existing one is untouched) and no scratch file remains.
pub fn copy_database(src: &Path, out: &Path, opts: &CopyOptions) -> Result<CopyReport, SqliteError> {
    let t0 = Instant::now();
    // A bare file name lives in the current directory: name it so, for the directory
    // sync after the rename.
    let named = match out.parent() {
        Some(p) if p.as_os_str().is_empty() => Path::new(".").join(out),
        _ => out.to_path_buf(),
    };
    let given = out;
    let out = named.as_path();
    match std::fs::symlink_metadata(out) {
        Ok(_) if !opts.replace => return Err(SqliteError::Exists { path: given.into() }),
        _ => {}
    }
    let source = Source::open(
        src,
        SourceOptions::default()
            .with_busy_timeout(opts.busy_timeout)
            .with_unlock(opts.unlock.clone()),
    )?;
    if let (Ok(a), Ok(b)) = (std::fs::metadata(source.path()), std::fs::metadata(out)) {
        use std::os::unix::fs::MetadataExt;
        if (a.dev(), a.ino()) == (b.dev(), b.ino()) {
            return Err(SqliteError::NotReplaceable {
                path: given.into(),
                why: "it is the source database itself".into(),
            });
        }
    }
    // SQLCipher attaches VACUUM INTO's output with the main database's key but its own
    // default settings: only a database with SQLCipher 4's defaults comes out readable
    // as the application reads it. Refused before anything is read.
    if opts.vacuum
        && let Some(s) = source.cipher()
        && *s != CipherSettings::defaults(4)?
    {
        return Err(SqliteError::BadKey {
            what: format!(
                "{}: a vacuumed copy cannot keep its SQLCipher settings (compatibility {}, page size {}): VACUUM INTO writes SQLCipher 4's defaults; copy it without vacuuming",
                source.path().display(),
                s.compatibility,
                s.page_size
            ),
        });
    }
    let dir = out.parent().unwrap_or(Path::new("/"));
    let stem = out.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let scratch = || {
        crate::scratch_file(dir, &stem, ".tmp").map_err(|source| SqliteError::Io {
            path: dir.to_path_buf(),
            source,
        })
    };
    let copy = scratch()?;
    let _copy_sides = SideFiles(copy.path().to_path_buf());

    // One read transaction: the checksum and the copy see the same committed state.
    let conn = source.conn();
    let t_read = Instant::now();
    conn.execute_batch("BEGIN; SELECT count(*) FROM sqlite_schema;")
        .map_err(|e| source.err(e))?;
    let in_txn = (|| {
        let info = read_info(conn).map_err(|e| source.err(e))?;
        let t = Instant::now();
        let sum = logical_checksum(conn).map_err(|e| source.err(e))?;
        tracing::debug!(seconds = t.elapsed().as_secs_f64(), "source logical checksum");
        source
            .copy_locked::<std::convert::Infallible>(copy.path())
            .map_err(|e| match e {
                crate::SnapshotError::Db(e) => e,
                crate::SnapshotError::Consumer(never) => match never {},
            })?;
        Ok::<_, SqliteError>((info, sum))
    })();
    // Ended at once: in rollback-journal mode this read blocks the application's writers.
    let _ = conn.execute_batch("COMMIT");
    let read_seconds = t_read.elapsed().as_secs_f64();
    let (info, sum) = in_txn?;
    tracing::debug!(read_seconds, journal_mode = %info.journal_mode, "source copied");
    let unlock = opts.unlock.as_ref().map(|u| Unlock {
        key: u.key.clone(),
        settings: source.cipher().cloned(),
    });

    let (result, _result_sides) = if opts.vacuum {
        let packed = scratch()?;
        let sides = SideFiles(packed.path().to_path_buf());
        vacuum_into(&source, copy.path(), packed.path())?;
        drop(copy);
        (packed, sides)
    } else {
        (copy, _copy_sides)
    };
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SqliteError::Io { path, source }
    };
    // VACUUM INTO never syncs its output, and the backup API's sync depends on the
    // destination's settings: sync it before it is checked and renamed.
    result.as_file().sync_all().map_err(io(result.path()))?;
    if source.cipher().is_some() && crate::check_header(result.path()).is_ok() {
        return Err(SqliteError::Verify {
            path: given.into(),
            what: "the copy of an encrypted database came out as plaintext; nothing was written".into(),
        });
    }

    let check = verify_file_with(result.path(), unlock.as_ref()).map_err(|e| match e {
        SqliteError::WrongKey { .. } | SqliteError::Encrypted { .. } | SqliteError::NotADatabase { .. } => {
            SqliteError::Verify {
                path: given.into(),
                what: "the copy does not open with the source's key and settings; nothing was written".into(),
            }
        }
        other => other,
    })?;
    if !check.problems.is_empty() {
        let first: Vec<&str> = check.problems.iter().take(3).map(String::as_str).collect();
        return Err(SqliteError::Verify {
            path: given.into(),
            what: format!(
                "the copy fails integrity_check ({}); nothing was written",
                first.join("; ")
            ),
        });
    }
    if check.logical_checksum != sum {
        return Err(SqliteError::Verify {
            path: given.into(),
            what: "the copy's logical checksum differs from the source's at the state copied; nothing was written"
                .into(),
        });
    }
    let bytes = result.as_file().metadata().map_err(io(result.path()))?.len();
    install(result, out, opts.replace)?;
    Ok(CopyReport {
        source: source.path().to_path_buf(),
        path: given.to_path_buf(),
        page_size: check.info.page_size,
        pages: check.info.page_count,
        bytes,
        freelist_before: info.freelist_count,
        freelist_after: check.info.freelist_count,
        journal_mode: info.journal_mode,
        logical_checksum: sum,
        read_seconds,
        seconds: t0.elapsed().as_secs_f64(),
        vacuumed: opts.vacuum,
        cipher: source.cipher().cloned(),
        not_checked: check.not_checked,
    })
}

/// `VACUUM INTO out` from the private copy `from` (keyed like the source), with
/// `secure_delete` on. The output of an encrypted copy is written by SQLCipher with
/// the copy's key (the vacuum attaches its output with the main database's key).
fn vacuum_into(source: &Source, from: &Path, out: &Path) -> Result<(), SqliteError> {
    let err = |e| SqliteError::from_sqlite(from, Duration::ZERO, e);
    let conn = Connection::open_with_flags(from, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(err)?;
    source.key_like_source(&conn).map_err(err)?;
    crate::collation::tolerate(&conn).map_err(err)?;
    let t = Instant::now();
    conn.execute_batch("PRAGMA secure_delete = ON;").map_err(err)?;
    // A bound parameter: the path is never SQL text (and never a lossy version of it).
    let name = out.to_str().ok_or_else(|| SqliteError::Io {
        path: out.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path is not UTF-8"),
    })?;
    conn.execute("VACUUM INTO ?1", [name]).map_err(err)?;
    tracing::debug!(seconds = t.elapsed().as_secs_f64(), "VACUUM INTO");
    Ok(())
}
