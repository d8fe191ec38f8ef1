//! Holding a live database still ([`Freeze`]) while something outside SQLite reads its
//! files: a filesystem snapshot (`zfs snapshot`, `btrfs subvolume snapshot`, `lvcreate
//! --snapshot`), a block-level copy, or a plain `cp` of the database and its `-wal`.
//!
//! Such a reader sees the bytes on disk, not a transaction, so it is consistent only
//! if no byte of the database or its WAL changes while it reads. Two kinds of
//! writers change them:
//!
//! - **Transactions.** `BEGIN IMMEDIATE` takes the database's write lock (the
//!   `RESERVED` lock of a rollback-journal database, the WAL write lock of a WAL-mode
//!   one) and holds it until the freeze ends: no other connection can commit, or even
//!   start writing. Readers go on. Writers wait in their busy handler, for as long as
//!   the freeze lasts (the application's busy timeout must be longer than that, or
//!   its writes fail with `SQLITE_BUSY`).
//! - **Checkpoints** (WAL mode). A checkpoint copies committed frames from the `-wal`
//!   into the main file and needs no write lock: the application's automatic
//!   checkpoint after a commit, or any process running `PRAGMA wal_checkpoint`, would
//!   rewrite pages of the main file mid-read. Every checkpoint first takes the WAL's
//!   checkpoint lock, byte 121 of the `-shm` (SQLite's `WAL_CKPT_LOCK`), with a
//!   non-blocking `fcntl` lock; so a freeze holds a write lock on that byte, and each
//!   checkpoint meanwhile returns `SQLITE_BUSY` at once without touching the file (an
//!   automatic one is simply retried after a later commit).
//!
//! The checkpoint lock is taken first and the write lock second: a checkpoint in
//! progress finishes before the freeze begins, no checkpointer can wait on a freeze
//! that waits on it (a FULL checkpoint holds the checkpoint lock while it waits for
//! writers), and the time writers are held (what [`Freeze::release`] returns) does
//! not include the wait for the checkpoint lock.
//!
//! The checkpoint lock is an open-file-description lock (`F_OFD_SETLK`, Linux; a
//! POSIX `F_SETLK` lock where those do not exist), on a read-write descriptor of the
//! `-shm` opened here. Unlike a POSIX lock it conflicts with this process's own SQLite
//! connections too, and it is not dropped when some other descriptor of the `-shm` in
//! this process is closed. POSIX locks are: closing *any* descriptor of a file drops
//! every POSIX lock the process holds on it — the ones SQLite's connections hold on
//! the `-shm` included (a reader's read mark, a writer's write lock, and the "in use"
//! lock that stops another process from resetting the WAL index), this freeze's own
//! connection's write lock first of all. So that descriptor is never closed while a
//! connection could be open: it is opened once per `-shm` file and kept for the life
//! of the process (one descriptor per database frozen). Since all the freezes of a
//! process then share one descriptor (whose lock is one lock), a process holds at most
//! one freeze of a database at a time: a second one waits for the first, within its
//! own timeout.
//!
//! The connection is opened read-write (`BEGIN IMMEDIATE` needs it) but never with
//! `SQLITE_OPEN_CREATE`, so a missing file is an error, not a new database; the
//! journal mode is never changed, so no `-wal` appears beside a rollback-journal
//! database; nothing is written, and releasing is a `ROLLBACK`. Checkpoint-on-close is
//! turned off: closing the last connection to a WAL database would otherwise
//! checkpoint the application's database, which sqlvault never does unasked.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};

use crate::SqliteError;
use crate::key::{Unlock, open_db};

/// Byte of the `-shm` file that every WAL checkpoint write-locks first (SQLite's
/// `WAL_CKPT_LOCK`: the shared-memory locks start at byte 120, the checkpoint lock is
/// the second of them).
pub const WAL_CKPT_LOCK_BYTE: i64 = 121;

/// How often a lock held by someone else is tried again.
const RETRY: Duration = Duration::from_millis(1);

/// A database held still: no transaction can commit and no checkpoint can run until
/// [`Freeze::release`] (or drop). See the module docs.
#[derive(Debug)]
pub struct Freeze {
    path: PathBuf,
    journal_mode: String,
    // Closed in `finish`.
    conn: Option<Connection>,
    /// The process's descriptor of the `-shm`, never closed (see the module docs).
    shm: Option<&'static File>,
    ckpt_locked: bool,
    since: Instant,
    acquired_in: Duration,
    released: Option<Duration>,
    // This process's descriptor of the database while it has a connection on it
    // (`hold_file`): the crate's own reads of the file go through it.
    _hold: Option<std::sync::Arc<File>>,
    // Dropped last: this process's claim on the database, which a second freeze of it
    // waits for.
    _claim: Claim,
}

/// The databases (device, inode) a freeze of this process holds.
static CLAIMED: std::sync::Mutex<Vec<(u64, u64)>> = std::sync::Mutex::new(Vec::new());

/// The read-write `-shm` descriptors of this process, by the `-shm`'s (device, inode):
/// opened once, never closed (see the module docs).
static SHMS: std::sync::Mutex<Vec<((u64, u64), &'static File)>> = std::sync::Mutex::new(Vec::new());

/// One database claimed in [`CLAIMED`] until dropped.
#[derive(Debug)]
struct Claim((u64, u64));

impl Claim {
    /// Claims `key`, waiting until `deadline` for another freeze of this process.
    fn take(key: (u64, u64), deadline: Instant) -> Option<Claim> {
        loop {
            {
                let mut all = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
                if !all.contains(&key) {
                    all.push(key);
                    return Some(Claim(key));
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(RETRY);
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        CLAIMED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k| *k != self.0);
    }
}

/// This process's read-write descriptor of the `-shm` at `path`, opened the first time.
fn shm_file(path: &Path) -> Result<&'static File, SqliteError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let io = |source| SqliteError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut all = SHMS.lock().unwrap_or_else(|e| e.into_inner());
    if let Ok(m) = std::fs::metadata(path)
        && let Some((_, f)) = all.iter().find(|(k, _)| *k == (m.dev(), m.ino()))
    {
        return Ok(f);
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| SqliteError::io_at(path, e))?;
    let meta = f.metadata().map_err(io)?;
    if !meta.is_file() {
        // Closing it drops no lock worth keeping: SQLite opens only regular files.
        return Err(SqliteError::NotRegular {
            path: path.to_path_buf(),
            kind: crate::file_kind(meta.file_type()),
        });
    }
    let f: &'static File = Box::leak(Box::new(f));
    all.push(((meta.dev(), meta.ino()), f));
    Ok(f)
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

impl Freeze {
    /// Holds `path` still: opens it read-write without creating it (keyed with
    /// `unlock` for SQLCipher), takes the WAL checkpoint lock in WAL mode, then runs
    /// `BEGIN IMMEDIATE`, each retried every millisecond until `timeout` has passed
    /// since the call ([`SqliteError::Busy`] then, with nothing held).
    ///
    /// Errors as when opening a source: [`SqliteError::Missing`],
    /// [`SqliteError::NotADatabase`], [`SqliteError::Encrypted`],
    /// [`SqliteError::WrongKey`], a read-only file ([`SqliteError::Sqlite`]).
    pub fn acquire(path: &Path, unlock: Option<&Unlock>, timeout: Duration) -> Result<Freeze, SqliteError> {
        let start = Instant::now();
        let deadline = start + timeout;
        crate::key::head(path)?;
        let path = std::fs::canonicalize(path).map_err(|e| SqliteError::io_at(path, e))?;
        let busy = || SqliteError::Busy {
            path: path.clone(),
            timeout,
        };
        let claim = {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata(&path).map_err(|e| SqliteError::io_at(&path, e))?;
            Claim::take((m.dev(), m.ino()), deadline).ok_or_else(busy)?
        };
        let hold = crate::hold_file(&path).ok();
        // Read-write (BEGIN IMMEDIATE needs it), never created.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let (conn, _) = open_db(&path, unlock, flags, remaining(deadline))?;
        let err = |e: rusqlite::Error| SqliteError::from_sqlite(&path, timeout, e);
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            .map_err(err)?;
        // A first read (busy-waiting at most what is left) opens the WAL and its index
        // when there is one, and tells the journal mode.
        conn.busy_timeout(remaining(deadline)).map_err(err)?;
        conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
            .map_err(err)?;
        let mode = journal_mode(&conn).map_err(err)?;
        // From here on dropping `f` releases whatever was taken, in the right order.
        let mut f = Freeze {
            path: path.clone(),
            journal_mode: mode,
            conn: Some(conn),
            shm: None,
            ckpt_locked: false,
            since: Instant::now(),
            acquired_in: Duration::ZERO,
            released: None,
            _hold: hold,
            _claim: claim,
        };
        if f.journal_mode == "wal" {
            f.lock_checkpoints(deadline, timeout)?;
        }
        let conn = f.conn.as_ref().expect("set above");
        // Our own polling from here: each attempt returns at once, so the instant an
        // attempt starts is at most its duration before the lock was taken, and the
        // held time measured from it bounds every writer's wait.
        conn.busy_timeout(Duration::ZERO).map_err(err)?;
        loop {
            let t = Instant::now();
            match conn.execute_batch("BEGIN IMMEDIATE") {
                Ok(()) => {
                    f.since = t;
                    break;
                }
                Err(e) if is_busy(&e) => {
                    if !conn.is_autocommit() {
                        let _ = conn.execute_batch("ROLLBACK");
                    }
                    if Instant::now() >= deadline {
                        return Err(busy());
                    }
                    std::thread::sleep(RETRY);
                }
                Err(e) => return Err(err(e)),
            }
        }
        // Nobody can change the journal mode while we hold the write lock: the mode
        // read now is the one for the whole freeze. A database that went into WAL mode
        // since the first read gets its checkpoint lock now.
        let now = journal_mode(conn).map_err(err)?;
        if now == "wal" && !f.ckpt_locked {
            f.lock_checkpoints(deadline, timeout)?;
        }
        f.journal_mode = now;
        f.acquired_in = start.elapsed();
        tracing::debug!(
            seconds = f.acquired_in.as_secs_f64(),
            mode = %f.journal_mode,
            "database frozen"
        );
        Ok(f)
    }

    /// Write-locks [`WAL_CKPT_LOCK_BYTE`] of the `-shm`, trying again every
    /// millisecond until `deadline` (a checkpoint in progress holds it).
    fn lock_checkpoints(&mut self, deadline: Instant, timeout: Duration) -> Result<(), SqliteError> {
        let mut shm = self.path.as_os_str().to_owned();
        shm.push("-shm");
        let shm = PathBuf::from(shm);
        let f = shm_file(&shm)?;
        self.shm = Some(f);
        loop {
            match set_lock(f, libc::F_WRLCK) {
                Ok(()) => {
                    self.ckpt_locked = true;
                    return Ok(());
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => {
                    if Instant::now() >= deadline {
                        return Err(SqliteError::Busy {
                            path: self.path.clone(),
                            timeout,
                        });
                    }
                    std::thread::sleep(RETRY);
                }
                Err(source) => return Err(SqliteError::Io { path: shm, source }),
            }
        }
    }

    /// The database, canonical.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its journal mode (`wal`, `delete`, …), as read under the write lock.
    pub fn journal_mode(&self) -> &str {
        &self.journal_mode
    }

    /// How long [`Freeze::acquire`] took (waiting for the locks included).
    pub fn acquired_in(&self) -> Duration {
        self.acquired_in
    }

    /// How long the database has been held so far.
    pub fn held(&self) -> Duration {
        self.released.unwrap_or_else(|| self.since.elapsed())
    }

    /// Lets the database go: `ROLLBACK` (writers may commit again), the checkpoint
    /// lock released, the connection closed. Returns how long writers were held: from
    /// just before the write lock was taken to just after it was released, so at
    /// least as long as any writer waited on it. Dropping a `Freeze` releases it too.
    pub fn release(mut self) -> Duration {
        self.finish()
    }

    fn finish(&mut self) -> Duration {
        if let Some(d) = self.released {
            return d;
        }
        if let Some(conn) = &self.conn
            && !conn.is_autocommit()
        {
            let _ = conn.execute_batch("ROLLBACK");
        }
        if self.ckpt_locked
            && let Some(f) = self.shm
        {
            let _ = set_lock(f, libc::F_UNLCK);
            self.ckpt_locked = false;
        }
        let held = self.since.elapsed();
        self.released = Some(held);
        // Closed without a checkpoint (SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE); the -shm
        // descriptor stays open (see the module docs).
        drop(self.conn.take());
        tracing::debug!(seconds = held.as_secs_f64(), "database released");
        held
    }
}

impl Drop for Freeze {
    /// Releases as [`Freeze::release`] does.
    fn drop(&mut self) {
        self.finish();
    }
}

/// The journal mode `conn` reports, lowercase.
fn journal_mode(conn: &Connection) -> rusqlite::Result<String> {
    Ok(conn
        .query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))?
        .to_lowercase())
}

/// Sets (`F_WRLCK`) or clears (`F_UNLCK`) a lock on [`WAL_CKPT_LOCK_BYTE`] of `f`,
/// without waiting: an open-file-description lock, or a POSIX one where the kernel has
/// none (`EINVAL`).
fn set_lock(f: &File, ty: libc::c_int) -> std::io::Result<()> {
    // SAFETY: an all-zero flock is a valid value (l_pid must be 0 for OFD locks).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = ty as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = WAL_CKPT_LOCK_BYTE;
    fl.l_len = 1;
    // SAFETY: `f` is an open descriptor for the call's duration and `fl` a valid flock
    // that fcntl only reads.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EINVAL) {
        return Err(e);
    }
    // SAFETY: as above.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
