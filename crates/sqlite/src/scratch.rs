//! Temporary files and directories: one naming scheme, one registry, one sweep.
//!
//! Restores, loads, dumps, conversions, verify and drill write plaintext into private
//! (0600) temporary files beside their destination, or scratch directories. Every one is
//! made here, so that:
//!
//! - its name says whose it is: `.{stem}.sqlvault-{pid}-{random}{suffix}` for a file,
//!   `sqlvault-{kind}-{pid}-{random}` for a directory (SQLite may add `-journal`, `-wal`
//!   or `-shm` to a temporary database's name);
//! - it is registered while this process lives, so a signal handler can remove every
//!   one ([`remove_all_for_exit`]) before the process exits: files, their SQLite side
//!   files, and directories with their content;
//! - the first temporary made in a directory sweeps that directory ([`sweep`]) for
//!   leftovers of a sqlvault killed with SIGKILL (or a crash): entries with this naming,
//!   owned by this user, not symbolic links, whose pid no longer runs. Names of older
//!   sqlvault versions (no pid) go only once they are a day old. A live process's
//!   file is never touched: a pid that runs is taken to be its owner, whatever it is.
//!
//! Creation and registration happen under one lock that [`remove_all_for_exit`] takes
//! and keeps: after it, no new temporary can appear.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// The marker in every temporary name.
pub const SCRATCH_TAG: &str = "sqlvault-";

/// Names without a pid (made by sqlvault before pids were in names) are removed only
/// when older than this.
pub const LEGACY_MIN_AGE: Duration = Duration::from_secs(24 * 3600);

struct Registry {
    /// Registered paths; `true` for a directory.
    entries: Vec<(PathBuf, bool)>,
    /// Directories swept by this process.
    swept: Vec<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    entries: Vec::new(),
    swept: Vec::new(),
});

fn lock() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    fn sweep_once(&mut self, dir: &Path) {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let key = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        if self.swept.contains(&key) {
            return;
        }
        self.swept.push(key);
        sweep(dir);
    }
    fn register(&mut self, p: PathBuf, is_dir: bool) {
        // Forget entries that are gone (persisted or dropped): the list stays short.
        self.entries.retain(|(p, _)| std::fs::symlink_metadata(p).is_ok());
        self.entries.push((p, is_dir));
    }
}

/// A private (0600) temporary file in `dir`, named `.{stem}.sqlvault-{pid}-{random}{suffix}`,
/// removed on drop (as `tempfile` does) and on SIGINT/SIGTERM by the binary's handler.
/// The first temporary of this process in `dir` sweeps leftovers there first.
pub fn scratch_file(dir: &Path, stem: &str, suffix: &str) -> io::Result<tempfile::NamedTempFile> {
    let mut reg = lock();
    reg.sweep_once(dir);
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{stem}.{SCRATCH_TAG}{}-", std::process::id()))
        .suffix(suffix)
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)?;
    reg.register(tmp.path().to_path_buf(), false);
    Ok(tmp)
}

/// A private (0700) temporary directory in `parent`, named
/// `sqlvault-{kind}-{pid}-{random}`, removed with its content on drop and on
/// SIGINT/SIGTERM. Sweeps `parent` first, like [`scratch_file`].
pub fn scratch_dir(parent: &Path, kind: &str) -> io::Result<tempfile::TempDir> {
    let mut reg = lock();
    reg.sweep_once(parent);
    let d = tempfile::Builder::new()
        .prefix(&format!("{SCRATCH_TAG}{kind}-{}-", std::process::id()))
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(parent)?;
    reg.register(d.path().to_path_buf(), true);
    Ok(d)
}

/// Removes every registered temporary (files with their `-journal`, `-wal` and `-shm`,
/// directories with their content) and keeps the registry locked, so that no thread
/// can make a new one: call it only when the process is about to exit (a signal).
/// Returns how many existed. Never returns the lock.
pub fn remove_all_for_exit() -> usize {
    let reg = lock();
    let mut n = 0;
    for (p, is_dir) in &reg.entries {
        let gone = if *is_dir {
            std::fs::remove_dir_all(p).is_ok()
        } else {
            let ok = std::fs::remove_file(p).is_ok();
            for s in crate::SIDE_FILE_SUFFIXES {
                let mut side = p.as_os_str().to_owned();
                side.push(s);
                let _ = std::fs::remove_file(PathBuf::from(side));
            }
            ok
        };
        n += gone as usize;
    }
    std::mem::forget(reg);
    n
}

/// Who made a temporary, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScratchOwner {
    /// A process of this naming scheme.
    Pid(u32),
    /// An older sqlvault, which did not put its pid in names.
    Unknown,
}

/// Whether `name` is one of sqlvault's temporary names, whose, and whether it names a
/// directory (`sqlvault-drill-…`, `sqlvault-verify-…`) rather than a file.
pub fn parse_scratch_name(name: &str) -> Option<(ScratchOwner, bool)> {
    let alnum = |s: &str, n: std::ops::RangeInclusive<usize>| {
        n.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
    };
    let pid = |s: &str| {
        (!s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u32>().ok())
            .flatten()
            .filter(|&p| p > 0 && p <= i32::MAX as u32)
    };
    // A directory: sqlvault-{drill|verify}-[{pid}-]{random}, nothing after.
    for kind in ["drill-", "verify-"] {
        if let Some(rest) = name.strip_prefix(SCRATCH_TAG).and_then(|r| r.strip_prefix(kind)) {
            let parts: Vec<&str> = rest.split('-').collect();
            return match parts.as_slice() {
                [p, r] if alnum(r, 6..=16) => pid(p).map(|p| (ScratchOwner::Pid(p), true)),
                [r] if alnum(r, 6..=6) => Some((ScratchOwner::Unknown, true)),
                _ => None,
            };
        }
    }
    // A file: .{stem}.sqlvault-[{pid}-]{random}[.tmp|.sql.tmp][-journal|-wal|-shm], or
    // the older backup copy .sqlvault-snapshot-{random}.
    if !name.starts_with('.') {
        return None;
    }
    let mut base = name;
    for s in crate::SIDE_FILE_SUFFIXES {
        if let Some(b) = base.strip_suffix(s) {
            base = b;
            break;
        }
    }
    if let Some(r) = base.strip_prefix(".sqlvault-snapshot-") {
        return alnum(r, 6..=6).then_some((ScratchOwner::Unknown, false));
    }
    let (base, suffixed) = match base.strip_suffix(".sql.tmp").or_else(|| base.strip_suffix(".tmp")) {
        Some(b) => (b, true),
        None => (base, false),
    };
    let at = base.rfind(&format!(".{SCRATCH_TAG}"))?;
    if at == 0 {
        return None;
    }
    let rest = &base[at + 1 + SCRATCH_TAG.len()..];
    let parts: Vec<&str> = rest.split('-').collect();
    match parts.as_slice() {
        [p, r] if alnum(r, 6..=16) => pid(p).map(|p| (ScratchOwner::Pid(p), false)),
        [r] if suffixed && alnum(r, 6..=6) => Some((ScratchOwner::Unknown, false)),
        _ => None,
    }
}

/// Whether process `pid` runs (or exists and belongs to someone else).
fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Removes leftovers of killed sqlvault processes from `dir` (not recursively): entries
/// named by [`parse_scratch_name`], of the expected type (a file, or a directory for
/// directory names; never a symbolic link), owned by this user, whose pid does not run
/// (or, for names without a pid, older than [`LEGACY_MIN_AGE`]). Returns what it
/// removed; errors are ignored (a sweep never stops a command).
pub fn sweep(dir: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return removed };
    let me = std::process::id();
    let uid = euid();
    for e in rd.flatten() {
        let name = e.file_name();
        let Some((owner, is_dir)) = name.to_str().and_then(parse_scratch_name) else {
            continue;
        };
        let p = e.path();
        let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
        let ft = m.file_type();
        if m.uid() != uid || ft.is_symlink() || (is_dir && !ft.is_dir()) || (!is_dir && !ft.is_file()) {
            continue;
        }
        let stale = match owner {
            ScratchOwner::Pid(pid) => pid != me && !alive(pid),
            ScratchOwner::Unknown => m
                .modified()
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age >= LEGACY_MIN_AGE),
        };
        if !stale {
            continue;
        }
        let ok = if is_dir {
            std::fs::remove_dir_all(&p).is_ok()
        } else {
            std::fs::remove_file(&p).is_ok()
        };
        if ok {
            tracing::warn!(
                "removed {}, a temporary file left by a sqlvault that was killed{}",
                p.display(),
                match owner {
                    ScratchOwner::Pid(pid) => format!(" (pid {pid})"),
                    ScratchOwner::Unknown => String::new(),
                }
            );
            removed.push(p);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        use ScratchOwner::*;
        assert_eq!(
            parse_scratch_name(".app.db.sqlvault-123-AbC123.tmp"),
            Some((Pid(123), false))
        );
        assert_eq!(
            parse_scratch_name(".app.db.sqlvault-123-AbC123.sql.tmp"),
            Some((Pid(123), false))
        );
        assert_eq!(
            parse_scratch_name(".app.db.sqlvault-123-AbC123.tmp-journal"),
            Some((Pid(123), false))
        );
        assert_eq!(
            parse_scratch_name(".a-b.db.sqlvault-9-xyzxyz.tmp-wal"),
            Some((Pid(9), false))
        );
        assert_eq!(
            parse_scratch_name(".app.db.sqlvault-AbC123.tmp"),
            Some((Unknown, false))
        );
        assert_eq!(parse_scratch_name(".sqlvault-snapshot-AbC123"), Some((Unknown, false)));
        assert_eq!(parse_scratch_name("sqlvault-drill-77-AbC123"), Some((Pid(77), true)));
        assert_eq!(parse_scratch_name("sqlvault-verify-AbC123"), Some((Unknown, true)));
        // Not ours: no dot, no pid and no .tmp, other shapes.
        assert_eq!(parse_scratch_name("app.db.sqlvault-123-AbC123.tmp"), None);
        assert_eq!(parse_scratch_name(".app.db.sqlvault-AbC123"), None);
        assert_eq!(parse_scratch_name(".app.db.sqlvault-backup"), None);
        assert_eq!(parse_scratch_name(".sqlvault-123-AbC123.tmp"), None);
        assert_eq!(parse_scratch_name(".x.sqlvault-0-AbC123.tmp"), None);
        assert_eq!(parse_scratch_name("sqlvault-drill-x-AbC123"), None);
        assert_eq!(parse_scratch_name("notes.txt"), None);
    }

    #[test]
    fn made_names_parse_and_sweep_spares_the_living() {
        let dir = tempfile::tempdir().unwrap();
        let f = scratch_file(dir.path(), "app.db", ".tmp").unwrap();
        let n = f.path().file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(
            parse_scratch_name(&n),
            Some((ScratchOwner::Pid(std::process::id()), false))
        );
        let d = scratch_dir(dir.path(), "drill").unwrap();
        let n = d.path().file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(
            parse_scratch_name(&n),
            Some((ScratchOwner::Pid(std::process::id()), true))
        );
        // A dead pid's leftover goes; ours stay.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let left = dir.path().join(format!(".app.db.sqlvault-{dead}-qwerty.tmp"));
        std::fs::write(&left, b"plaintext").unwrap();
        assert_eq!(sweep(dir.path()), vec![left.clone()]);
        assert!(f.path().exists() && d.path().exists() && !left.exists());
    }
}
