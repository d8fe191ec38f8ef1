//! Only regular files are read: a FIFO, socket or device named like a database, a side
//! file or a key would block `open(2)` or `read(2)` forever (a FIFO without a writer),
//! or have side effects (a tape device).
//!
//! Two guards, for the two ways a file gets opened:
//! - sqlvault's own reads go through [`open_regular`]: `open(2)` with `O_NONBLOCK` (and
//!   `O_NOFOLLOW` when asked), then `fstat` of the descriptor, so the check is about the
//!   file actually opened, not one a path named a moment earlier.
//! - SQLite's own opens (the database, its `-journal`, `-wal`, `-shm`, a directory for
//!   fsync) go through the same check: [`guard_sqlite_opens`] replaces the `open`
//!   system call of SQLite's unix VFS, process-wide, with one that refuses anything but
//!   a regular file, a directory and `/dev/null` (SQLite's own filler for low
//!   descriptors). SQLite then fails with `SQLITE_CANTOPEN` where it would have hung.

use std::ffi::{CStr, c_char, c_int};
use std::fs::File;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::OnceLock;

use crate::SqliteError;

/// What a file that is not a regular file is, in words, from its type.
pub fn file_kind(ft: std::fs::FileType) -> &'static str {
    if ft.is_file() {
        "regular file"
    } else if ft.is_dir() {
        "directory"
    } else if ft.is_fifo() {
        "FIFO (named pipe)"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_symlink() {
        "symbolic link"
    } else {
        "special file"
    }
}

/// Descriptors of database files held by something of this process that has SQLite
/// connections on them, by (device, inode); weak, so a file is closed when its last
/// holder lets go.
static HELD: std::sync::Mutex<Vec<Held>> = std::sync::Mutex::new(Vec::new());

/// One held descriptor and the (device, inode) it was opened on.
type Held = ((u64, u64), std::sync::Weak<File>);

/// [`open_regular`] for a database this process is about to hold SQLite connections
/// on (a source being read, a replicated database): the caller keeps the returned
/// descriptor for as long as those connections live, and every read of the file by
/// this crate meanwhile goes through it ([`held`]) instead of opening and closing
/// another. Closing *any* descriptor of a file drops *every* POSIX lock the process
/// holds on it — SQLite's shared lock of a WAL-mode connection included, which is what
/// stops another process's last close from checkpointing and deleting the WAL under a
/// reader, as happened to replication's read pins when a read of the database's header
/// closed its descriptor. Read through it with positioned reads
/// (`FileExt::read_exact_at`), which share no file offset.
pub fn hold_file(path: &Path) -> Result<std::sync::Arc<File>, SqliteError> {
    use std::os::unix::fs::MetadataExt;
    if let Some(f) = held(path) {
        return Ok(f);
    }
    let f = std::sync::Arc::new(open_regular(path, true)?);
    let m = f.metadata().map_err(|source| SqliteError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut all = HELD.lock().unwrap_or_else(|e| e.into_inner());
    all.retain(|(_, w)| w.strong_count() > 0);
    all.push(((m.dev(), m.ino()), std::sync::Arc::downgrade(&f)));
    Ok(f)
}

/// The descriptor of `path` something of this process holds ([`hold_file`]), if any.
pub fn held(path: &Path) -> Option<std::sync::Arc<File>> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    let key = (m.dev(), m.ino());
    let all = HELD.lock().unwrap_or_else(|e| e.into_inner());
    all.iter().find(|(k, _)| *k == key).and_then(|(_, w)| w.upgrade())
}

/// Opens `path` for reading only if it is a regular file, without ever blocking: the
/// open uses `O_NONBLOCK` (a FIFO opens at once instead of waiting for a writer) and
/// the type is checked on the opened descriptor. With `follow == false` a symbolic link
/// is refused too (`O_NOFOLLOW`). The returned file is in blocking mode again.
///
/// Errors: [`SqliteError::NotRegular`] naming the file and what it is;
/// [`SqliteError::Missing`] when it does not exist; [`SqliteError::Io`] otherwise.
pub fn open_regular(path: &Path, follow: bool) -> Result<File, SqliteError> {
    let mut flags = libc::O_NONBLOCK | libc::O_NOCTTY;
    if !follow {
        flags |= libc::O_NOFOLLOW;
    }
    let f = match std::fs::OpenOptions::new().read(true).custom_flags(flags).open(path) {
        Ok(f) => f,
        Err(e) if !follow && e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(SqliteError::NotRegular {
                path: path.to_path_buf(),
                kind: "symbolic link",
            });
        }
        Err(e) => return Err(SqliteError::io_at(path, e)),
    };
    let meta = f.metadata().map_err(|e| SqliteError::io_at(path, e))?;
    if !meta.file_type().is_file() {
        return Err(SqliteError::NotRegular {
            path: path.to_path_buf(),
            kind: file_kind(meta.file_type()),
        });
    }
    set_blocking(&f);
    Ok(f)
}

fn set_blocking(f: &File) {
    use std::os::fd::AsRawFd;
    let fd = f.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own; F_GETFL/F_SETFL have no memory effects.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl >= 0 && fl & libc::O_NONBLOCK != 0 {
            libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK);
        }
    }
}

fn allowed(st: &libc::stat, path: *const c_char) -> bool {
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG | libc::S_IFDIR => true,
        libc::S_IFCHR => {
            // SAFETY: SQLite passes a NUL-terminated path.
            unsafe { CStr::from_ptr(path) }.to_bytes() == b"/dev/null"
        }
        _ => false,
    }
}

fn set_errno(v: c_int) {
    // SAFETY: the errno location is this thread's and always valid.
    #[cfg(target_os = "linux")]
    unsafe {
        *libc::__errno_location() = v;
    }
    #[cfg(not(target_os = "linux"))]
    let _ = v;
}

/// The `open` SQLite's unix VFS calls (as `int (*)(const char*, int, int)`).
unsafe extern "C" fn guarded_open(path: *const c_char, flags: c_int, mode: c_int) -> c_int {
    // SAFETY (whole body): `path` is SQLite's NUL-terminated file name; `st` is a
    // plain-old-data buffer the kernel fills; every descriptor is ours to close.
    unsafe {
        // Refuse by name first, so that a device is not even opened (opening one can
        // have effects); then check the descriptor actually opened, which a swap of the
        // name between the two cannot fool.
        let mut st: libc::stat = std::mem::zeroed();
        if libc::stat(path, &mut st) == 0 && !allowed(&st, path) {
            set_errno(libc::ENXIO);
            return -1;
        }
        let fd = libc::open(path, flags | libc::O_NONBLOCK, mode as libc::c_uint);
        if fd < 0 {
            return fd;
        }
        if libc::fstat(fd, &mut st) != 0 || !allowed(&st, path) {
            libc::close(fd);
            set_errno(libc::ENXIO);
            return -1;
        }
        if flags & libc::O_NONBLOCK == 0 {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            if fl >= 0 {
                libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK);
            }
        }
        fd
    }
}

/// Makes SQLite's unix VFS open only regular files, directories and `/dev/null`, for
/// every connection of this process (see the module docs). Idempotent; every path in
/// this crate that opens a connection calls it first. Returns whether the guard is in
/// place (false only if the VFS has no `open` system call to replace).
pub fn guard_sqlite_opens() -> bool {
    static GUARD: OnceLock<bool> = OnceLock::new();
    *GUARD.get_or_init(|| {
        // SAFETY: runs once, before this crate opens any connection (the OnceLock
        // orders it before them); the VFS pointer is SQLite's static default VFS; the
        // function installed has the signature SQLite calls `open` with.
        unsafe {
            let vfs = rusqlite::ffi::sqlite3_vfs_find(std::ptr::null());
            if vfs.is_null() {
                return false;
            }
            let Some(set) = (*vfs).xSetSystemCall else { return false };
            let f: unsafe extern "C" fn(*const c_char, c_int, c_int) -> c_int = guarded_open;
            let ptr: rusqlite::ffi::sqlite3_syscall_ptr = Some(std::mem::transmute::<
                unsafe extern "C" fn(*const c_char, c_int, c_int) -> c_int,
                unsafe extern "C" fn(),
            >(f));
            set(vfs, c"open".as_ptr(), ptr) == rusqlite::ffi::SQLITE_OK
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mkfifo(p: &Path) {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("app.db");
        mkfifo(&fifo);
        match open_regular(&fifo, true) {
            Err(SqliteError::NotRegular { kind, .. }) => assert!(kind.contains("FIFO")),
            other => panic!("{other:?}"),
        }
        // SQLite itself refuses it too, instead of blocking in open(2).
        assert!(guard_sqlite_opens());
        let r = rusqlite::Connection::open_with_flags(&fifo, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY);
        assert!(r.is_err());
    }

    #[test]
    fn symlink_refused_without_follow() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t");
        std::fs::write(&t, b"x").unwrap();
        let l = dir.path().join("l");
        std::os::unix::fs::symlink(&t, &l).unwrap();
        assert!(open_regular(&l, true).is_ok());
        assert!(matches!(open_regular(&l, false), Err(SqliteError::NotRegular { .. })));
    }
}
