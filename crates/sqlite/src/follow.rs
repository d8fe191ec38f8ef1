//! Following a live WAL-mode database without ever missing a committed frame and
//! without holding up the application: the read side of continuous replication.
//!
//! A [`Follower`] owns two read-only connections. One of them always holds a read
//! transaction (a *pin*); every so often the other begins one at the newest commit
//! ([`Follower::pin`]), the changes between the two are read from the `-wal` file
//! ([`Follower::advance`]), and only then is the older pin released
//! ([`Follower::release_older`]). Why this never loses a frame (from SQLite's
//! `wal.c`): a reader holding read-mark slot 1–4 at frame M stops every checkpoint
//! from copying frames past M and stops the WAL from being restarted at all; a reader
//! on slot 0 (taken when everything was already copied into the database) stops every
//! copy, so at most one restart can happen under it, and only when the WAL held
//! exactly what that reader saw. So while some pin is held, two consecutive pins see
//! either the same generation of the WAL (the second's frames extend the first's) or
//! the next one, which began right after the frames the first saw. Each pin is held
//! only from one handover to the next, so an application's FULL, RESTART or TRUNCATE
//! checkpoint waits for at most two handovers (a caller that sees it running, with
//! [`Follower::checkpoint_running`], hands over at once), its PASSIVE checkpoints and
//! its commits never wait at all: nothing here takes a write lock or checkpoints.
//! (While a caller holds a pin for long — a base snapshot's read — those checkpoints
//! wait that long.)
//!
//! What a pin sees comes from `sqlite3_snapshot_get`: its read mark (the last frame it
//! reads, the database size, the checksum chain there, the generation's salts). The
//! frames up to it are then read from the file and their checksum chain recomputed;
//! the chain must arrive at exactly the pin's value, which proves that the file and
//! the pin agree and that nothing before was rewritten. Any disagreement is a
//! [`Break`], named, and the caller starts again from a new base.
//!
//! The database file, its `-wal` and its `-shm` are each opened once by this module
//! ([`crate::hold_file`]) and closed only after the connections: closing any
//! descriptor of a file drops every POSIX lock the process holds on it, the pins'
//! included.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::error::SqliteError;
use crate::key::{CipherSettings, Unlock};
use crate::wal::{FRAME_HEADER, Position, WAL_HEADER, WalHeader, checksum};

/// What one pin sees of the WAL: SQLite's WAL-index header as the read transaction
/// started (`sqlite3_snapshot_get`). With `frames == 0` SQLite gives no snapshot and
/// the other fields are zero here (they mean nothing then).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalMark {
    /// Frames of the WAL the pin reads (0: it reads the database file only).
    pub frames: u32,
    /// The database's size in pages at the pin.
    pub pages: u32,
    /// The checksum chain after frame `frames` (zero when `frames` is 0).
    pub checksum: [u32; 2],
    /// The salts of the WAL generation (zero when `frames` is 0: not told).
    pub salt: [u32; 2],
}

/// Where a follower stands: the last frame of a generation it has accounted for.
/// `frame == 0` with a zero salt means "at a WAL that held no frame": the next
/// generation's salts are not known yet.
pub type FollowPosition = Position;

/// What became of the database between two pins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Advance {
    /// Pages written by the committed frames in between (ascending, deduplicated).
    pub pages: BTreeSet<u32>,
    /// Transactions committed in between (commit frames).
    pub commits: u64,
    /// The WAL was restarted in between (by a checkpoint of the application's), once.
    pub restarted: bool,
    /// The new position.
    pub position: Option<FollowPosition>,
}

/// Why the WAL cannot be followed on from a position: the caller needs a new base.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Break {
    /// The database path now names another file (replaced, e.g. by a rename).
    #[error("the database file was replaced")]
    Replaced,
    /// The WAL holds fewer frames of the same generation than were followed.
    #[error("the WAL was truncated (frame {had} was followed, the WAL now ends at {now})")]
    Truncated {
        /// Frames followed.
        had: u32,
        /// Frames the pin reads now.
        now: u32,
    },
    /// The frame followed last carries another checksum: it was rewritten.
    #[error("the WAL was overwritten (frame {frame} no longer holds what was followed)")]
    Overwritten {
        /// The frame.
        frame: u32,
    },
    /// The WAL was restarted while no read mark was held (reserved for a caller that
    /// resumes from a saved position).
    #[error("the WAL was restarted while no read mark was held")]
    Restarts,
    /// The frames in the file do not chain to what the pin reads.
    #[error("the WAL does not match the read transaction: {0}")]
    Mismatch(String),
    /// The database left WAL mode.
    #[error("the database is not in WAL mode any more")]
    NotWal,
}

/// Pins, the `-wal` file and the database file of one followed database.
pub struct Follower {
    path: PathBuf,
    busy_timeout: Duration,
    cipher: Option<CipherSettings>,
    conns: [Connection; 2],
    /// Which connections hold a read transaction, and the newest of them.
    held: [bool; 2],
    newest: usize,
    reserve: usize,
    // Kept open for the follower's life, after the connections in drop order: see the
    // module docs.
    wal: Option<File>,
    shm: Option<std::sync::Arc<File>>,
    db: std::sync::Arc<File>,
    ident: (u64, u64),
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn sqlite_err(path: &Path, timeout: Duration) -> impl Fn(rusqlite::Error) -> SqliteError + '_ {
    move |e| SqliteError::from_sqlite(path, timeout, e)
}

impl Follower {
    /// Opens the two pin connections (read-only; keyed when `unlock` is given) on a
    /// WAL-mode database. Nothing is pinned yet. Refuses a database not in WAL mode
    /// and a build of SQLite without `SQLITE_ENABLE_SNAPSHOT` and `sqlite_dbpage`.
    pub fn open(path: &Path, unlock: Option<&Unlock>, busy_timeout: Duration) -> Result<Follower, SqliteError> {
        crate::key::head(path)?;
        let path = std::fs::canonicalize(path).map_err(|source| SqliteError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let db = crate::hold_file(&path)?;
        let meta = db.metadata().map_err(|source| SqliteError::Io {
            path: path.clone(),
            source,
        })?;
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
        let (a, cipher) = crate::key::open_db(&path, unlock, flags, busy_timeout)?;
        let (b, _) = crate::key::open_db(&path, unlock, flags, busy_timeout)?;
        let err = |e| SqliteError::from_sqlite(&path, busy_timeout, e);
        for c in [&a, &b] {
            crate::collation::tolerate(c).map_err(&err)?;
            // A service follows hundreds of databases: a pin reads only the pages a
            // cut needs, once each, so it keeps no lookaside and a small page cache
            // (SQLite's defaults cost ~2 MiB a connection once used).
            // SAFETY: a valid open connection; a NULL buffer with size 0 turns the
            // lookaside off (refused harmlessly while allocations are outstanding).
            unsafe {
                rusqlite::ffi::sqlite3_db_config(
                    c.handle(),
                    rusqlite::ffi::SQLITE_DBCONFIG_LOOKASIDE,
                    std::ptr::null_mut::<std::ffi::c_void>(),
                    0 as std::ffi::c_int,
                    0 as std::ffi::c_int,
                );
            }
            c.execute_batch("PRAGMA cache_size = -256").map_err(&err)?;
        }
        let mode: String = a.query_row("PRAGMA journal_mode", [], |r| r.get(0)).map_err(&err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(SqliteError::Inconsistent {
                path: path.clone(),
                detail: format!("continuous replication follows WAL-mode databases; this one is in {mode} mode"),
            });
        }
        let has_dbpage = a
            .query_row(
                "SELECT 1 FROM pragma_module_list WHERE name = 'sqlite_dbpage'",
                [],
                |_| Ok(()),
            )
            .is_ok();
        if !has_dbpage || !cfg!(sqlvault_snapshot) {
            return Err(SqliteError::Inconsistent {
                path: path.clone(),
                detail: "this build of SQLite lacks sqlite_dbpage or SQLITE_ENABLE_SNAPSHOT, which replication needs"
                    .into(),
            });
        }
        Ok(Follower {
            ident: (meta.dev(), meta.ino()),
            path,
            busy_timeout,
            cipher,
            conns: [a, b],
            held: [false; 2],
            newest: 0,
            reserve: 0,
            wal: None,
            shm: None,
            db,
        })
    }

    /// The canonical path followed.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The SQLCipher settings of the database, when it is one.
    pub fn cipher(&self) -> Option<&CipherSettings> {
        self.cipher.as_ref()
    }

    /// Whether the path still names the file the follower opened.
    pub fn replaced(&self) -> bool {
        match std::fs::metadata(&self.path) {
            Ok(m) => (m.dev(), m.ino()) != self.ident,
            Err(_) => true,
        }
    }

    /// Begins a read transaction at the newest commit on the connection not holding
    /// the newest pin, and returns what it sees. The older pin stays held until
    /// [`Follower::release_older`]. When both hold one, the older is released first.
    pub fn pin(&mut self) -> Result<WalMark, SqliteError> {
        let next = 1 - self.newest;
        if self.held[next] {
            self.end(next);
        }
        let conn = &self.conns[next];
        let err = sqlite_err(&self.path, self.busy_timeout);
        if let Err(e) = conn.execute_batch("BEGIN; SELECT count(*) FROM sqlite_schema;") {
            // Never left inside a BEGIN whose read failed: the next pin would fail too.
            let _ = conn.execute_batch("ROLLBACK");
            return Err(err(e));
        }
        self.held[next] = true;
        self.newest = next;
        let mark = match snapshot_mark(conn) {
            Some(m) => m,
            None => {
                let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0)).map_err(&err)?;
                WalMark {
                    frames: 0,
                    pages: pages as u32,
                    checksum: [0; 2],
                    salt: [0; 2],
                }
            }
        };
        Ok(mark)
    }

    /// Ends the read transaction of the older pin, if one is held.
    pub fn release_older(&mut self) {
        let older = 1 - self.newest;
        if self.held[older] {
            self.end(older);
        }
    }

    /// Ends every read transaction.
    pub fn release_all(&mut self) {
        for i in 0..2 {
            if self.held[i] {
                self.end(i);
            }
        }
    }

    fn end(&mut self, i: usize) {
        if self.conns[i].execute_batch("COMMIT").is_err() {
            let _ = self.conns[i].execute_batch("ROLLBACK");
        }
        self.held[i] = false;
    }

    /// Whether some pin is held.
    pub fn pinned(&self) -> bool {
        self.held.iter().any(|h| *h)
    }

    /// Reads the frames between `from` and the newest pin's `mark` from the `-wal`
    /// file: which pages they wrote and how many transactions they committed. `from`
    /// must have been taken while a pin was held continuously since (see the module
    /// docs); `None` means the caller's state begins at `mark` itself.
    pub fn advance(&mut self, from: &FollowPosition, mark: &WalMark) -> Result<Result<Advance, Break>, SqliteError> {
        if self.replaced() {
            return Ok(Err(Break::Replaced));
        }
        let mut out = Advance::default();
        if mark.frames > 0 && mark.frames == from.frame && mark.salt == from.salt && mark.checksum == from.checksum {
            // Nothing committed since: no I/O at all (and nothing a concurrent
            // checkpoint of the application's could race).
            out.position = Some(*from);
            return Ok(Ok(out));
        }
        if mark.frames == 0 {
            // The pin reads the database file only. A position inside a generation
            // means that generation was checkpointed and the WAL restarted since, once
            // at most while pinned: its frames up to the position were all followed.
            out.restarted = from.frame > 0;
            out.position = Some(Position {
                salt: from.salt,
                checkpoint_seq: from.checkpoint_seq,
                frame: 0,
                checksum: [0; 2],
            });
            return Ok(Ok(out));
        }
        let path = self.path.clone();
        let io = |source| SqliteError::Io {
            path: wal_path(&path),
            source,
        };
        if self.wal.is_none() {
            self.wal = Some(crate::open_regular(&wal_path(&self.path), true)?);
        }
        let wal = self.wal.as_ref().expect("opened");
        // The -wal is never deleted while this process holds its locks; one that was is
        // a sign the locks were lost, and nothing read through the old one can be trusted.
        let same = match (std::fs::metadata(wal_path(&self.path)), wal.metadata()) {
            (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
            _ => false,
        };
        if !same {
            self.wal = None;
            return Ok(Err(Break::Mismatch("the -wal file was deleted or replaced".into())));
        }
        let short = |e: &std::io::Error| e.kind() == std::io::ErrorKind::UnexpectedEof;
        let mut head = [0u8; WAL_HEADER];
        if let Err(e) = wal.read_exact_at(&mut head, 0) {
            return match short(&e) {
                true => Ok(Err(Break::Truncated {
                    had: from.frame,
                    now: 0,
                })),
                false => Err(io(e)),
            };
        }
        let header = match WalHeader::parse(&head) {
            Ok(h) => h,
            Err(e) => return Ok(Err(Break::Mismatch(format!("WAL header: {e}")))),
        };
        if header.salt != mark.salt {
            return Ok(Err(Break::Mismatch(
                "the WAL header's salts are not the read mark's".into(),
            )));
        }
        let (start, chain) = if from.salt == header.salt && from.frame > 0 {
            if mark.frames < from.frame {
                return Ok(Err(Break::Truncated {
                    had: from.frame,
                    now: mark.frames,
                }));
            }
            let mut fh = [0u8; FRAME_HEADER];
            if let Err(e) = wal.read_exact_at(&mut fh, header.frame_offset(from.frame)) {
                return match short(&e) {
                    true => Ok(Err(Break::Truncated {
                        had: from.frame,
                        now: mark.frames,
                    })),
                    false => Err(io(e)),
                };
            }
            let be = |i: usize| u32::from_be_bytes(fh[i..i + 4].try_into().expect("4 bytes"));
            if [be(8), be(12)] != header.salt || [be(16), be(20)] != from.checksum {
                return Ok(Err(Break::Overwritten { frame: from.frame }));
            }
            (from.frame, from.checksum)
        } else {
            // Another generation. Under a pin held without interruption since `from`
            // (the caller's contract), the locks prove it began right after the frames
            // `from` accounts for (module docs), whatever its salts: SQLite draws them
            // at random when the writing connection never restarted a WAL before, and
            // a restart of an already empty WAL adds another. So its frames are read
            // from the first, chained from its header.
            out.restarted = from.frame > 0 || from.salt != [0, 0];
            (0, header.checksum)
        };
        let mut buf = vec![0u8; FRAME_HEADER + header.page_size as usize];
        let mut c = chain;
        let mut last_size = 0;
        for n in start + 1..=mark.frames {
            if let Err(e) = wal.read_exact_at(&mut buf, header.frame_offset(n)) {
                return match short(&e) {
                    true => Ok(Err(Break::Truncated {
                        had: n - 1,
                        now: mark.frames,
                    })),
                    false => Err(io(e)),
                };
            }
            let be = |i: usize| u32::from_be_bytes(buf[i..i + 4].try_into().expect("4 bytes"));
            if [be(8), be(12)] != header.salt {
                return Ok(Err(Break::Mismatch(format!("frame {n} carries other salts"))));
            }
            c = checksum(header.big_endian, c, &buf[..8]);
            c = checksum(header.big_endian, c, &buf[FRAME_HEADER..]);
            if c != [be(16), be(20)] {
                return Ok(Err(Break::Mismatch(format!("frame {n} breaks the checksum chain"))));
            }
            out.pages.insert(be(0));
            if be(4) != 0 {
                out.commits += 1;
                last_size = be(4);
            }
        }
        if c != mark.checksum {
            return Ok(Err(Break::Mismatch(format!(
                "the chain at frame {} is not the read mark's",
                mark.frames
            ))));
        }
        if mark.frames > start && last_size != mark.pages {
            return Ok(Err(Break::Mismatch(format!(
                "the last commit says {last_size} pages, the read mark {}",
                mark.pages
            ))));
        }
        out.position = Some(Position {
            salt: header.salt,
            checkpoint_seq: header.checkpoint_seq,
            frame: mark.frames,
            checksum: c,
        });
        Ok(Ok(out))
    }

    /// The position a base taken at `mark` stands at (the generation's checkpoint
    /// sequence read from the `-wal` header).
    pub fn position_of(&mut self, mark: &WalMark) -> Result<FollowPosition, SqliteError> {
        if mark.frames == 0 {
            return Ok(Position {
                salt: [0; 2],
                checkpoint_seq: 0,
                frame: 0,
                checksum: [0; 2],
            });
        }
        if self.wal.is_none() {
            self.wal = Some(crate::open_regular(&wal_path(&self.path), true)?);
        }
        let mut head = [0u8; WAL_HEADER];
        // Informational only (continuity rests on the locks and the chain): a header
        // that cannot be read gives 0.
        let seq = match self.wal.as_ref().expect("opened").read_exact_at(&mut head, 0) {
            Ok(()) => WalHeader::parse(&head).map(|h| h.checkpoint_seq).unwrap_or(0),
            Err(_) => 0,
        };
        Ok(Position {
            salt: mark.salt,
            checkpoint_seq: seq,
            frame: mark.frames,
            checksum: mark.checksum,
        })
    }

    /// Calls `page(pgno, bytes)` for each of `pages` (ascending) as the newest pin
    /// sees it, through `sqlite_dbpage` (decrypted for a SQLCipher database, its
    /// reserved area zeroed as snapshots store it). Pages past the pin's database size
    /// are skipped.
    pub fn read_pages<E>(
        &mut self,
        pages: impl IntoIterator<Item = u32>,
        mut page: impl FnMut(u32, &[u8]) -> Result<(), E>,
    ) -> Result<Result<(), E>, SqliteError> {
        let err = sqlite_err(&self.path, self.busy_timeout);
        let conn = &self.conns[self.newest];
        if self.cipher.is_some() && self.reserve == 0 {
            let p1: Vec<u8> = conn
                .query_row("SELECT data FROM sqlite_dbpage('main') WHERE pgno = 1", [], |r| {
                    r.get(0)
                })
                .map_err(&err)?;
            self.reserve = p1.get(20).copied().unwrap_or(0) as usize;
        }
        let mut stmt = conn
            .prepare_cached("SELECT data FROM sqlite_dbpage('main') WHERE pgno = ?1")
            .map_err(&err)?;
        let mut buf = Vec::new();
        for pgno in pages {
            let mut rows = stmt.query([pgno]).map_err(&err)?;
            let Some(row) = rows.next().map_err(&err)? else {
                continue;
            };
            let data = row.get_ref(0).map_err(&err)?;
            let data = data.as_blob().map_err(|e| err(e.into()))?;
            if self.cipher.is_some() && self.reserve > 0 && self.reserve < data.len() {
                buf.clear();
                buf.extend_from_slice(data);
                let n = buf.len();
                buf[n - self.reserve..].fill(0);
                if let Err(e) = page(pgno, &buf) {
                    return Ok(Err(e));
                }
            } else if let Err(e) = page(pgno, data) {
                return Ok(Err(e));
            }
        }
        Ok(Ok(()))
    }

    /// What a handover would find changed, read cheaply: the first copy of the
    /// WAL-index header in the `-shm` (48 bytes, which every commit and every WAL
    /// restart rewrites: `iChange`, `mxFrame`, the salts and checksums), through the
    /// held descriptor. Equal between two calls: nothing was committed or restarted in
    /// between (a checkpoint alone copies frames and changes nothing a reader sees).
    /// None when there is no `-shm` to read.
    pub fn signature(&mut self) -> Option<[u8; 48]> {
        if self.shm.is_none() {
            let mut s = self.path.as_os_str().to_owned();
            s.push("-shm");
            self.shm = crate::hold_file(Path::new(&s)).ok();
        }
        let mut h = [0u8; 48];
        self.shm.as_ref()?.read_exact_at(&mut h, 0).ok()?;
        Some(h)
    }

    /// Whether another process holds the WAL's checkpoint lock (byte 121 of the
    /// `-shm` file, SQLite's `WAL_CKPT_LOCK`): a checkpoint of the application's is
    /// running, and a FULL, RESTART or TRUNCATE one may be waiting for this follower's
    /// pin to move. A lock probe (`F_GETLK`) only: nothing is locked. The `-shm` is
    /// opened once and held (closing it would drop the pins' own locks on it).
    pub fn checkpoint_running(&mut self) -> bool {
        if self.shm.is_none() {
            let mut s = self.path.as_os_str().to_owned();
            s.push("-shm");
            self.shm = crate::hold_file(Path::new(&s)).ok();
        }
        let Some(f) = self.shm.as_ref() else {
            return false;
        };
        use std::os::fd::AsRawFd;
        // SAFETY: an all-zero flock is a valid value to fill in; F_GETLK only reads
        // the lock table into it; the descriptor is open for the call's duration.
        unsafe {
            let mut fl: libc::flock = std::mem::zeroed();
            fl.l_type = libc::F_WRLCK as libc::c_short;
            fl.l_whence = libc::SEEK_SET as libc::c_short;
            fl.l_start = 121;
            fl.l_len = 1;
            libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut fl) == 0 && fl.l_type != libc::F_UNLCK as libc::c_short
        }
    }

    /// The database file's descriptor (kept open; see the module docs).
    pub fn db_file(&self) -> &File {
        &self.db
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.release_all();
    }
}

/// The database's journal mode as SQLite reports it (lowercase), read on a read-only
/// connection keyed with `unlock` (a SQLCipher database's header is encrypted, so the
/// mode cannot be read from the file). The connection is closed before returning:
/// call it before any read transaction of this process is open on the file.
pub fn journal_mode(path: &Path, unlock: Option<&Unlock>, busy_timeout: Duration) -> Result<String, SqliteError> {
    crate::key::head(path)?;
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    let (c, _) = crate::key::open_db(path, unlock, flags, busy_timeout)?;
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .map_err(|e| SqliteError::from_sqlite(path, busy_timeout, e))?;
    Ok(mode.to_lowercase())
}

/// The `-wal` file of a database.
pub fn wal_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

/// The read mark of `conn`'s open read transaction, from `sqlite3_snapshot_get`
/// (whose opaque 48 bytes are SQLite's WAL-index header: native-endian `mxFrame` at
/// 16, `nPage` at 20, the frame checksum at 24, the salts' raw bytes at 32). `None`
/// when SQLite refuses one: the transaction reads no WAL frame. The values are
/// cross-checked by [`Follower::advance`] against the file's own checksum chain, so a
/// different layout shows as a mismatch, never as a silent error.
#[cfg(sqlvault_snapshot)]
pub fn snapshot_mark(conn: &Connection) -> Option<WalMark> {
    use rusqlite::ffi;
    let mut snap: *mut ffi::sqlite3_snapshot = std::ptr::null_mut();
    // SAFETY: `conn` is an open connection with a read transaction on this thread;
    // the snapshot is copied out and freed before returning.
    unsafe {
        let rc = ffi::sqlite3_snapshot_get(conn.handle(), c"main".as_ptr(), &mut snap);
        if rc != ffi::SQLITE_OK || snap.is_null() {
            return None;
        }
        let raw: [u8; 48] = std::ptr::read_unaligned(snap.cast::<[u8; 48]>());
        ffi::sqlite3_snapshot_free(snap);
        let ne = |i: usize| u32::from_ne_bytes(raw[i..i + 4].try_into().expect("4 bytes"));
        let be = |i: usize| u32::from_be_bytes(raw[i..i + 4].try_into().expect("4 bytes"));
        Some(WalMark {
            frames: ne(16),
            pages: ne(20),
            checksum: [ne(24), ne(28)],
            salt: [be(32), be(36)],
        })
    }
}

/// Without `SQLITE_ENABLE_SNAPSHOT` no read mark can be read.
#[cfg(not(sqlvault_snapshot))]
pub fn snapshot_mark(_conn: &Connection) -> Option<WalMark> {
    None
}
