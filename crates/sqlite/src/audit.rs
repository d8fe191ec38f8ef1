//! Security audit of an SQLite deployment: who can read or replace the database and
//! its side files, whether deleted data lingers on disk, whether a crash left a hot
//! journal, whether the file is intact, and whether the SQLite that writes it carries a
//! known corruption bug.
//!
//! The audit only reads. Databases are opened read-only (never through a hot journal,
//! which would need a rollback); `fix` changes nothing but permission bits, and only
//! removes group/other bits, so it is idempotent and never touches content or
//! ownership. Symbolic links are never followed: a link inside a scanned tree is
//! skipped (and reported when it leads out of the tree and looks like a database).

// (tidy: long file — every finding the audit makes is a few lines beside its check;
// split by subject they would share the private walker and its fix logic.)

use std::fs::Metadata;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};

use crate::error::SqliteError;
use crate::key::{CipherSettings, Head, Unlock, head, hot_journal, open_db_as};

/// How bad a finding is. The order is the order of badness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Worth knowing; nothing to do.
    Info,
    /// Hardening.
    Low,
    /// A weakness that matters when something else goes wrong.
    Medium,
    /// Data can be read, replaced or is already damaged.
    High,
}

impl Severity {
    /// Lower-case name, as in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
        }
    }
}

/// One finding: what, where, and how to fix it.
#[derive(Debug, Clone)]
pub struct Finding {
    /// Severity.
    pub severity: Severity,
    /// Stable identifier, such as `perm.db-readable`.
    pub code: &'static str,
    /// The file or directory concerned.
    pub path: PathBuf,
    /// What is wrong, one line.
    pub message: String,
    /// What to do about it, one line.
    pub fix: String,
    /// `--fix` applied the fix (the finding no longer holds).
    pub fixed: bool,
}

/// What an audit looked at (databases: [`AuditReport::databases`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct AuditStats {
    /// Files looked at (databases, side files, keys, repository objects).
    pub files: u64,
    /// Directories walked.
    pub dirs: u64,
}

/// Findings of an audit.
#[derive(Debug, Clone, Default)]
pub struct AuditReport {
    /// Every finding, in the order found.
    pub findings: Vec<Finding>,
    /// Every database inspected.
    pub databases: Vec<PathBuf>,
    /// Counts.
    pub stats: AuditStats,
}

impl AuditReport {
    /// The worst severity among findings that still hold (not fixed), if any.
    pub fn worst(&self) -> Option<Severity> {
        self.findings.iter().filter(|f| !f.fixed).map(|f| f.severity).max()
    }
}

/// Options of an [`Auditor`].
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// Tighten permissions as findings are made.
    pub fix: bool,
    /// Key for SQLCipher databases, so their content can be checked too.
    pub unlock: Option<Unlock>,
    /// Longest wait for an application's lock before skipping a content check.
    pub busy_timeout: Duration,
    /// A file name that marks a directory as a backup repository (checked as a private
    /// tree, not scanned for databases).
    pub repo_marker: Option<String>,
    /// Where a private copy of a live WAL database goes while its content is checked
    /// (`/tmp` unless set; a binary passes its `TMPDIR`: this crate reads no
    /// environment).
    pub temp_dir: PathBuf,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            fix: false,
            unlock: None,
            busy_timeout: Duration::from_secs(5),
            repo_marker: None,
            temp_dir: PathBuf::from("/tmp"),
        }
    }
}

/// A SQLite version with a known corruption bug.
#[derive(Debug, Clone, Copy)]
pub struct KnownBug {
    /// Short name.
    pub id: &'static str,
    /// First affected version, as SQLITE_VERSION_NUMBER.
    pub first: u32,
    /// First fixed version.
    pub fixed: u32,
    /// Only matters for databases in WAL mode.
    pub wal_only: bool,
    /// What goes wrong.
    pub summary: &'static str,
}

/// Corruption bugs of SQLite releases that sqlvault knows about.
pub const KNOWN_BUGS: &[KnownBug] = &[KnownBug {
    id: "wal-reset",
    first: 3_007_000,
    fixed: 3_051_003,
    wal_only: true,
    summary: "WAL-reset race: a checkpoint running while another connection resets the WAL can corrupt the database",
}];

/// Known bugs of the SQLite release `version` (as SQLITE_VERSION_NUMBER, 3054001).
pub fn known_bugs(version: u32) -> Vec<&'static KnownBug> {
    KNOWN_BUGS
        .iter()
        .filter(|b| version >= b.first && version < b.fixed)
        .collect()
}

/// "3.54.1" for 3054001.
pub fn version_string(v: u32) -> String {
    format!("{}.{}.{}", v / 1_000_000, v / 1000 % 1000, v % 1000)
}

const SIDE_SUFFIXES: [&str; 3] = ["-wal", "-shm", "-journal"];
const DB_EXTENSIONS: [&str; 6] = ["db", "sqlite", "sqlite3", "db3", "sdb", "sqlcipher"];

/// Runs checks and collects findings. Scan paths, add trees that must be private,
/// then [`Auditor::finish`].
#[derive(Debug)]
pub struct Auditor {
    opts: AuditOptions,
    report: AuditReport,
}

impl Auditor {
    /// An auditor with `opts`.
    pub fn new(opts: AuditOptions) -> Auditor {
        crate::key::quiet_sqlcipher();
        Auditor {
            opts,
            report: AuditReport::default(),
        }
    }

    /// Adds a finding made elsewhere (repository ages, for example).
    pub fn push(&mut self, f: Finding) {
        self.report.findings.push(f);
    }

    /// The findings so far.
    pub fn finish(self) -> AuditReport {
        self.report
    }

    /// Reports the SQLite this process links, and its known bugs.
    pub fn linked_library(&mut self) {
        let v = rusqlite::version_number() as u32;
        let bugs = known_bugs(v);
        let lib = format!(
            "SQLite {} (SQLCipher {})",
            version_string(v),
            crate::key::sqlcipher_version()
        );
        if bugs.is_empty() {
            self.push(Finding {
                severity: Severity::Info,
                code: "lib.version",
                path: PathBuf::from("<sqlvault>"),
                message: format!("sqlvault links {lib}: no known corruption bug"),
                fix: String::new(),
                fixed: false,
            });
        }
        for b in bugs {
            self.push(Finding {
                severity: Severity::High,
                code: "lib.known-bug",
                path: PathBuf::from("<sqlvault>"),
                message: format!("sqlvault links {lib}, which has the {} bug: {}", b.id, b.summary),
                fix: format!("use a sqlvault built with SQLite {} or later", version_string(b.fixed)),
                fixed: false,
            });
        }
    }

    /// Audits `path`: a database file (or key file), or a directory scanned for
    /// databases, key files and repositories. A symbolic link is not followed.
    pub fn scan(&mut self, path: &Path) -> Result<(), SqliteError> {
        let meta = std::fs::symlink_metadata(path).map_err(|e| SqliteError::io_at(path, e))?;
        if meta.file_type().is_symlink() {
            self.push(Finding {
                severity: Severity::Info,
                code: "scan.symlink",
                path: path.to_path_buf(),
                message: "is a symbolic link; not followed".into(),
                fix: "audit the link's target by its own path".into(),
                fixed: false,
            });
            return Ok(());
        }
        if meta.is_dir() {
            let root = path.to_path_buf();
            self.walk(&root, path);
            return Ok(());
        }
        if meta.is_file() {
            match classify(path, &meta) {
                Kind::Database => self.database(path, &meta),
                Kind::Side => self.orphan_side(path, &meta),
                // Named explicitly and not a database: the user says it is a key.
                Kind::Secret | Kind::Other => self.secret_file(path, &meta),
            }
        } else {
            // Named explicitly: whatever its name, it was meant to be a file.
            self.special_file(path, &meta, "a database, side or key file");
        }
        Ok(())
    }

    fn walk(&mut self, root: &Path, dir: &Path) {
        self.report.stats.dirs += 1;
        if let Some(marker) = &self.opts.repo_marker
            && dir.join(marker).is_file()
        {
            self.private_tree(dir, "local repository", Severity::Medium);
            return;
        }
        let Ok(rd) = std::fs::read_dir(dir) else {
            self.push(Finding {
                severity: Severity::Info,
                code: "scan.unreadable",
                path: dir.to_path_buf(),
                message: "directory cannot be read; not scanned".into(),
                fix: "run the audit as the user that owns the data".into(),
                fixed: false,
            });
            return;
        };
        let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        entries.sort();
        // Databases first, so that their side files are judged with them.
        let mut sides = Vec::new();
        for p in entries {
            let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
            if m.file_type().is_symlink() {
                self.symlink_in_tree(root, &p);
            } else if m.is_dir() {
                self.walk(root, &p);
            } else if m.is_file() {
                match classify(&p, &m) {
                    Kind::Database => self.database(&p, &m),
                    Kind::Secret => self.secret_file(&p, &m),
                    Kind::Side => sides.push((p, m)),
                    Kind::Other => {}
                }
            } else {
                // A FIFO, socket or device. Named like a database, or like a side file
                // of no database here (a database's own side files are judged with it).
                let name = p.file_name().unwrap_or_default().to_string_lossy().to_string();
                let side = SIDE_SUFFIXES.iter().any(|s| name.ends_with(s));
                if db_like_name(&name) && !side {
                    self.special_file(&p, &m, "a database");
                } else if side && !main_of_side(&p).is_some_and(|db| db.is_file()) {
                    self.special_file(&p, &m, "a database side file");
                }
            }
        }
        for (p, m) in sides {
            if !main_of_side(&p).is_some_and(|db| db.is_file()) {
                self.orphan_side(&p, &m);
            }
        }
    }

    fn symlink_in_tree(&mut self, root: &Path, link: &Path) {
        let looks = link
            .file_name()
            .map(|n| {
                let n = n.to_string_lossy();
                db_like_name(&n) || SIDE_SUFFIXES.iter().any(|s| n.ends_with(s))
            })
            .unwrap_or(false);
        if !looks {
            return;
        }
        let inside = match (std::fs::canonicalize(link), std::fs::canonicalize(root)) {
            (Ok(t), Ok(r)) => t.starts_with(r),
            _ => false,
        };
        if !inside {
            self.push(Finding {
                severity: Severity::Info,
                code: "scan.symlink-out",
                path: link.to_path_buf(),
                message: "symbolic link leading out of the scanned tree; not followed".into(),
                fix: "audit its target by its own path".into(),
                fixed: false,
            });
        }
    }

    /// Checks that nothing under `root` is readable, writable or enterable by group or
    /// other. One finding per tree (repositories hold thousands of objects); `fix`
    /// tightens every entry. `read_severity` is how bad reading is (writing is always
    /// high: it allows deleting or replacing).
    pub fn private_tree(&mut self, root: &Path, what: &str, read_severity: Severity) {
        let mut readable = 0u64;
        let mut writable = 0u64;
        let mut first: Option<PathBuf> = None;
        let mut fixed_all = true;
        let mut stack = vec![root.to_path_buf()];
        while let Some(p) = stack.pop() {
            let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
            if m.file_type().is_symlink() {
                continue;
            }
            if m.is_dir() {
                self.report.stats.dirs += 1;
                if let Ok(rd) = std::fs::read_dir(&p) {
                    stack.extend(rd.flatten().map(|e| e.path()));
                }
            } else {
                self.report.stats.files += 1;
            }
            let mode = m.mode() & 0o777;
            if mode & 0o077 == 0 {
                continue;
            }
            if mode & 0o022 != 0 {
                writable += 1;
            }
            if mode & 0o044 != 0 {
                readable += 1;
            }
            first.get_or_insert_with(|| p.clone());
            if !(self.opts.fix && tighten(&p, &m)) {
                fixed_all = false;
            }
        }
        if readable + writable == 0 {
            return;
        }
        let severity = if writable > 0 { Severity::High } else { read_severity };
        let mut parts = Vec::new();
        if readable > 0 {
            parts.push(format!("{readable} readable"));
        }
        if writable > 0 {
            parts.push(format!("{writable} writable"));
        }
        self.push(Finding {
            severity,
            code: "perm.private-tree",
            path: root.to_path_buf(),
            message: format!(
                "{what}: {} by group or other (first: {})",
                parts.join(", "),
                first.unwrap_or_default().display()
            ),
            fix: format!("chmod -R go-rwx {}", sh(root)),
            fixed: self.opts.fix && fixed_all,
        });
    }

    fn secret_file(&mut self, path: &Path, meta: &Metadata) {
        self.report.stats.files += 1;
        self.perm_finding(path, meta, "key or identity file", "perm.key-file");
    }

    fn orphan_side(&mut self, path: &Path, meta: &Metadata) {
        self.report.stats.files += 1;
        self.perm_finding(path, meta, "database side file", "perm.db-file");
    }

    fn database(&mut self, path: &Path, meta: &Metadata) {
        self.report.databases.push(path.to_path_buf());
        self.report.stats.files += 1;
        self.perm_finding(path, meta, "database", "perm.db-file");
        let mut present_sides = Vec::new();
        let mut special_side = false;
        for s in SIDE_SUFFIXES {
            let side = side_path(path, s);
            let Ok(m) = std::fs::symlink_metadata(&side) else {
                continue;
            };
            if !m.is_file() {
                if !m.file_type().is_symlink() && !m.is_dir() {
                    self.special_file(&side, &m, "a database side file");
                    special_side = true;
                }
                continue;
            }
            self.report.stats.files += 1;
            self.perm_finding(&side, &m, "database side file", "perm.db-file");
            if m.uid() != meta.uid() {
                self.push(Finding {
                    severity: Severity::Medium,
                    code: "owner.side-file",
                    path: side.clone(),
                    message: format!(
                        "owned by uid {}, the database by uid {}: the application may be unable to open, roll back or checkpoint it",
                        m.uid(),
                        meta.uid()
                    ),
                    fix: format!("chown {} {}", meta.uid(), sh(&side)),
                    fixed: false,
                });
            }
            present_sides.push((s, side, m));
        }
        if let Some(dir) = path
            .parent()
            .map(|d| if d.as_os_str().is_empty() { Path::new(".") } else { d })
            && let Ok(dm) = std::fs::symlink_metadata(dir)
            && dm.is_dir()
            && dm.mode() & 0o022 != 0
        {
            // A sticky shared directory (/tmp) is shared on purpose: closing it would
            // break the system, so the fix is to move the database, never a chmod.
            let shared = dm.mode() & 0o1000 != 0;
            let fixed = !shared && self.opts.fix && tighten(dir, &dm);
            self.push(Finding {
                severity: Severity::High,
                code: "perm.db-dir",
                path: dir.to_path_buf(),
                message: format!(
                    "directory of {} is writable by group or other (mode {:04o}): they can replace the database or plant a -journal/-wal that SQLite will replay into it",
                    path.file_name().unwrap_or_default().to_string_lossy(),
                    dm.mode() & 0o7777
                ),
                fix: if shared {
                    format!(
                        "move {} into a directory only its owner can write to (a shared sticky directory is never changed by --fix)",
                        sh(path)
                    )
                } else {
                    format!("chmod 0700 {}", sh(dir))
                },
                fixed,
            });
        }
        let hot = present_sides
            .iter()
            .find(|(s, _, m)| *s == "-journal" && m.len() > 0)
            .and_then(|(_, side, _)| hot_journal(path, side).then(|| side.clone()));
        if let Some(j) = hot {
            self.push(Finding {
                severity: Severity::High,
                code: "db.hot-journal",
                path: j,
                message: "hot journal: a writer crashed mid-transaction and the rollback has not run yet; content not checked".into(),
                fix: format!(
                    "keep the -journal with the database; back both up, then open the database once with its application or sqlite3 (it rolls back); never delete the journal: {}",
                    sh(path)
                ),
                fixed: false,
            });
            return;
        }
        if special_side {
            self.push(Finding {
                severity: Severity::Info,
                code: "db.not-checked",
                path: path.to_path_buf(),
                message: "content not checked: a side file beside it is not a regular file (see its finding)".into(),
                fix: String::new(),
                fixed: false,
            });
            return;
        }
        self.content(path);
    }

    /// A FIFO, socket or device where SQLite (the application's, or sqlvault's) expects
    /// a file: opening a FIFO blocks until someone writes to it, a device or socket
    /// cannot be a database. Never opened here.
    fn special_file(&mut self, path: &Path, meta: &Metadata, expected: &str) {
        self.report.stats.files += 1;
        let kind = crate::regular::file_kind(meta.file_type());
        self.push(Finding {
            severity: Severity::High,
            code: "file.not-regular",
            path: path.to_path_buf(),
            message: format!(
                "is a {kind} (owner uid {}) where {expected} is expected: SQLite blocks or fails opening it, the application's SQLite included; someone may have planted it",
                meta.uid()
            ),
            fix: format!("find out who made it and why; if nobody should have: rm {}", sh(path)),
            fixed: false,
        });
    }

    fn content(&mut self, path: &Path) {
        let facts = match db_facts_in(
            path,
            self.opts.unlock.as_ref(),
            self.opts.busy_timeout,
            &self.opts.temp_dir,
        ) {
            Ok(f) => f,
            Err(SqliteError::Encrypted { .. }) => {
                self.push(Finding {
                    severity: Severity::Info,
                    code: "db.encrypted",
                    path: path.to_path_buf(),
                    message: "encrypted at rest (SQLCipher); content checks need its key".into(),
                    fix: "pass --db-key-file to check its content too".into(),
                    fixed: false,
                });
                return;
            }
            Err(e) => {
                let (sev, code) = match e {
                    SqliteError::NotADatabase { .. } | SqliteError::WrongKey { .. } => {
                        (Severity::Medium, "db.unreadable")
                    }
                    _ => (Severity::Info, "db.not-checked"),
                };
                self.push(Finding {
                    severity: sev,
                    code,
                    path: path.to_path_buf(),
                    message: format!("content not checked: {}", one_line(&e)),
                    fix: "check the file by hand, and that the key given is its key".into(),
                    fixed: false,
                });
                return;
            }
        };
        if !facts.quick_check.is_empty() {
            self.push(Finding {
                severity: Severity::High,
                code: "db.quick-check",
                path: path.to_path_buf(),
                message: format!(
                    "quick_check failed ({} problem{}): {}",
                    facts.quick_check.len(),
                    if facts.quick_check.len() == 1 { "" } else { "s" },
                    facts.quick_check.first().map(String::as_str).unwrap_or("")
                ),
                fix: "restore the newest good snapshot (sqlvault restore), and find what corrupted it".into(),
                fixed: false,
            });
        }
        for l in &facts.not_checked {
            self.push(Finding {
                severity: Severity::Info,
                code: "db.app-collation",
                path: path.to_path_buf(),
                message: l.clone(),
                fix: "check that order where the collation exists: `PRAGMA integrity_check` run by the application"
                    .into(),
                fixed: false,
            });
        }
        if !facts.encrypted && facts.holds_data {
            self.push(Finding {
                severity: Severity::Medium,
                code: "db.plaintext",
                path: path.to_path_buf(),
                message: "holds data but is not encrypted at rest".into(),
                // Encrypting is not always the answer: an application that links stock
                // SQLite (Firefox, Fossil, GDAL, Anki and most others) cannot open a
                // SQLCipher file at all, so the advice says when it applies.
                fix: format!(
                    "only if every application that opens it can open SQLCipher files and is given the key: sqlvault db encrypt {} (stop the application first). Applications built on stock SQLite (Firefox, Fossil, GDAL, Anki and most others) cannot open an encrypted file and would stop working; protect those with file permissions and disk encryption instead",
                    sh(path)
                ),
                fixed: false,
            });
        }
        if !facts.encrypted && facts.free_pages_with_data > 0 {
            self.push(Finding {
                severity: Severity::Medium,
                code: "db.deleted-data",
                path: path.to_path_buf(),
                message: format!(
                    "{} of {} free pages still hold deleted data (secure_delete was off when they were freed)",
                    facts.free_pages_with_data, facts.freelist_count
                ),
                fix: "set PRAGMA secure_delete=ON in the application, then VACUUM once".into(),
                fixed: false,
            });
        }
        if let Some(v) = facts.last_writer_version {
            for b in known_bugs(v) {
                if b.wal_only && !facts.wal {
                    continue;
                }
                self.push(Finding {
                    severity: Severity::Medium,
                    code: "db.writer-known-bug",
                    path: path.to_path_buf(),
                    message: format!(
                        "last written by SQLite {}, which has the {} bug: {}",
                        version_string(v),
                        b.id,
                        b.summary
                    ),
                    fix: format!(
                        "upgrade the application's SQLite to {} or later",
                        version_string(b.fixed)
                    ),
                    fixed: false,
                });
            }
        }
    }

    /// One finding for group/other bits on a database, side or key file (high when
    /// readable or writable, low for execute bits alone); fixes it when asked.
    fn perm_finding(&mut self, path: &Path, meta: &Metadata, what: &str, code: &'static str) {
        let mode = meta.mode() & 0o7777;
        let read = mode & 0o044 != 0;
        let write = mode & 0o022 != 0;
        if !read && !write && mode & 0o011 == 0 {
            return;
        }
        let how = match (read, write) {
            (true, true) => "readable and writable",
            (true, false) => "readable",
            (false, true) => "writable",
            (false, false) => "executable",
        };
        let severity = if read || write { Severity::High } else { Severity::Low };
        let fixed = self.opts.fix && tighten(path, meta);
        self.push(Finding {
            severity,
            code,
            path: path.to_path_buf(),
            message: format!("{what} is {how} by group or other (mode {mode:04o})"),
            fix: format!("chmod go-rwx {}", sh(path)),
            fixed,
        });
    }
}

/// What the audit learned from inside a database.
#[derive(Debug, Clone, Default)]
pub struct DbFacts {
    /// SQLCipher-encrypted.
    pub encrypted: bool,
    /// In WAL mode.
    pub wal: bool,
    /// Pages.
    pub page_count: u64,
    /// Free pages.
    pub freelist_count: u64,
    /// Free pages that are not all zeros: deleted content still on disk.
    pub free_pages_with_data: u64,
    /// Some table holds a row.
    pub holds_data: bool,
    /// `PRAGMA quick_check` lines other than "ok" (at most 20).
    pub quick_check: Vec<String>,
    /// Indexes ordered by a collation only the application has, whose order
    /// quick_check could not check (one line each, naming the index and why).
    pub not_checked: Vec<String>,
    /// SQLITE_VERSION_NUMBER of the library that last wrote the file (header offset 96).
    pub last_writer_version: Option<u32>,
}

/// Reads facts from a database on a read-only connection (one read transaction),
/// without writing anything beside it: no `-wal` or `-shm` is created, an existing
/// `-shm` is mapped read-only, a `-wal` without a `-shm` is read from a private copy,
/// and nothing is checkpointed or rolled back. `unlock` is used only
/// for a file without the plaintext header: a plaintext database in a scan that was
/// given a key is checked like any other.
pub fn db_facts(path: &Path, unlock: Option<&Unlock>, timeout: Duration) -> Result<DbFacts, SqliteError> {
    db_facts_in(path, unlock, timeout, &AuditOptions::default().temp_dir)
}

/// [`db_facts`], with a private copy of a live WAL database made in `temp_dir`.
pub fn db_facts_in(
    path: &Path,
    unlock: Option<&Unlock>,
    timeout: Duration,
    temp_dir: &Path,
) -> Result<DbFacts, SqliteError> {
    let unlock = match head(path)? {
        Head::Opaque => unlock,
        _ => None,
    };
    let (conn, cipher, _copy) = open_quietly(path, unlock, timeout, temp_dir)?;
    let err = |e| SqliteError::from_sqlite(path, timeout, e);
    // Read-only: an application's own collations get placeholders (before any
    // statement touches a table), and the checks that need the real ones are named.
    crate::collation::tolerate(&conn).map_err(err)?;
    let skip = crate::collation::app_collation_indexes(&conn).map_err(err)?;
    let tx = conn.unchecked_transaction().map_err(err)?;
    let mut f = DbFacts {
        encrypted: cipher.is_some(),
        ..DbFacts::default()
    };
    f.wal = tx
        .query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))
        .map_err(err)?
        .eq_ignore_ascii_case("wal");
    f.page_count = tx
        .query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0))
        .map_err(err)? as u64;
    f.freelist_count = tx
        .query_row("PRAGMA freelist_count", [], |r| r.get::<_, i64>(0))
        .map_err(err)? as u64;
    {
        let mut stmt = tx.prepare("PRAGMA quick_check(20)").map_err(err)?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(err)?;
        for l in rows {
            let l = l.map_err(err)?;
            // With placeholders quick_check never compares those indexes' keys: no
            // line of it is the placeholder's.
            if l != "ok" {
                f.quick_check.push(l);
            }
        }
    }
    f.not_checked = skip.iter().map(crate::collation::AppCollation::describe).collect();
    let tables: Vec<String> = {
        let mut stmt = tx
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'")
            .map_err(err)?;
        stmt.query_map([], |r| r.get(0))
            .map_err(err)?
            .collect::<rusqlite::Result<_>>()
            .map_err(err)?
    };
    for t in tables {
        let q = format!("SELECT 1 FROM \"{}\" LIMIT 1", t.replace('"', "\"\""));
        // A virtual table whose module is missing cannot be read: not evidence either way.
        if let Ok(true) = tx.prepare(&q).and_then(|mut s| s.exists([])) {
            f.holds_data = true;
            break;
        }
    }
    // Page 1 through the library (it may be in the WAL, or encrypted on disk).
    let page = |pgno: u64| -> rusqlite::Result<Vec<u8>> {
        tx.query_row("SELECT data FROM sqlite_dbpage WHERE pgno = ?1", [pgno as i64], |r| {
            r.get::<_, Vec<u8>>(0)
        })
    };
    if let Ok(p1) = page(1)
        && p1.len() >= 100
    {
        let valid_for = u32::from_be_bytes(p1[92..96].try_into().unwrap());
        let version = u32::from_be_bytes(p1[96..100].try_into().unwrap());
        let change = u32::from_be_bytes(p1[24..28].try_into().unwrap());
        if version != 0 && valid_for == change {
            f.last_writer_version = Some(version);
        }
        if f.freelist_count > 0 {
            f.free_pages_with_data = free_pages_with_data(&p1, f.page_count, &page);
        }
    }
    Ok(f)
}

/// `path` as a `file:` URI (every byte but unreserved ones percent-encoded), followed by
/// `query`.
fn file_uri(path: &Path, query: &str) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut s = String::from("file:");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/._-~".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s.push('?');
    s.push_str(query);
    s
}

/// Opens a database for reading without creating, changing or removing anything beside
/// it. A plain read-only open is not enough: SQLite opening a WAL-mode database (or any
/// database with a `-wal` beside it) creates the `-wal` and `-shm` it lacks, and writes
/// into an existing `-shm`. So:
///
/// - a `-shm` exists (an application has the database open, or crashed): it is mapped
///   read-only (`readonly_shm`); when no writer vouches for it, SQLite builds its own
///   index of the `-wal` in private memory;
/// - a `-wal` with content but no `-shm` (nobody has it open in WAL mode): the database
///   and its `-wal` are copied into a private scratch directory (returned, removed on
///   drop) and the copy is read, since SQLite cannot read a `-wal` without a `-shm`;
/// - no `-wal` content: in WAL mode the main file is the whole database and nobody has
///   it open, so it is read `immutable` (no lock, no side file); in rollback mode it is
///   read with the usual shared lock, which creates nothing.
///
/// No connection here checkpoints on close (`SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE`), and a
/// read-only connection never rolls a hot journal back (the caller looks for one first).
#[allow(clippy::type_complexity)]
fn open_quietly(
    path: &Path,
    unlock: Option<&Unlock>,
    timeout: Duration,
    temp_dir: &Path,
) -> Result<(Connection, Option<CipherSettings>, Option<tempfile::TempDir>), SqliteError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let err = |e| SqliteError::from_sqlite(path, timeout, e);
    let quiet = |c: &Connection| {
        c.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            .map(|_| ())
            .map_err(err)
    };
    let wal = side_path(path, "-wal");
    let wal_len = std::fs::symlink_metadata(&wal).map(|m| m.len()).ok();
    let shm = std::fs::symlink_metadata(side_path(path, "-shm")).is_ok();
    if shm {
        let (c, s) = open_db_as(path, &file_uri(path, "mode=ro&readonly_shm=1"), unlock, flags, timeout)?;
        quiet(&c)?;
        return Ok((c, s, None));
    }
    if wal_len.is_some_and(|n| n > 0) {
        let dir = crate::scratch::scratch_dir(temp_dir, "audit").map_err(|e| SqliteError::io_at(path, e))?;
        let copy = dir.path().join("db");
        for (from, to) in [(path.to_path_buf(), copy.clone()), (wal, side_path(&copy, "-wal"))] {
            let mut src = crate::open_regular(&from, false)?;
            let mut dst = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&to)
                .map_err(|e| SqliteError::io_at(&to, e))?;
            std::io::copy(&mut src, &mut dst).map_err(|e| SqliteError::io_at(&from, e))?;
        }
        let (c, s) = open_db_as(&copy, &file_uri(&copy, "mode=ro"), unlock, flags, timeout).map_err(|e| {
            // Errors name the audited file, not the private copy.
            match e {
                SqliteError::WrongKey { .. } => SqliteError::WrongKey {
                    path: path.to_path_buf(),
                },
                SqliteError::NotADatabase { .. } => SqliteError::NotADatabase {
                    path: path.to_path_buf(),
                },
                other => other,
            }
        })?;
        quiet(&c)?;
        return Ok((c, s, Some(dir)));
    }
    let (c, s) = open_db_as(path, &file_uri(path, "immutable=1"), unlock, flags, timeout)?;
    quiet(&c)?;
    // Bytes 18 and 19 of the header: 2 in WAL mode. Read through the library, since an
    // encrypted file's header is ciphertext on disk.
    let wal_mode = c
        .query_row("SELECT data FROM sqlite_dbpage WHERE pgno = 1", [], |r| {
            r.get::<_, Vec<u8>>(0)
        })
        .map(|p| p.len() >= 20 && (p[18] == 2 || p[19] == 2))
        .map_err(err)?;
    if wal_mode || wal_len.is_some() {
        return Ok((c, s, None));
    }
    drop(c);
    // Rollback mode: read under a shared lock, so that a writer's half-written pages are
    // never seen. The settings are known now: no second detection.
    let known = unlock.map(|u| Unlock {
        key: u.key.clone(),
        settings: s.clone().or_else(|| u.settings.clone()),
    });
    let (c, s) = open_db_as(path, &file_uri(path, "mode=ro"), known.as_ref(), flags, timeout)?;
    quiet(&c)?;
    Ok((c, s, None))
}

/// Walks the freelist (trunk pages, then their leaves) and counts pages holding
/// anything other than zeros. Bounded by the page count, whatever the freelist says.
fn free_pages_with_data(p1: &[u8], page_count: u64, page: &dyn Fn(u64) -> rusqlite::Result<Vec<u8>>) -> u64 {
    let be = |b: &[u8], at: usize| u32::from_be_bytes(b[at..at + 4].try_into().unwrap()) as u64;
    let mut trunk = be(p1, 32);
    let mut dirty = 0;
    let mut seen = 0u64;
    while trunk != 0 && trunk <= page_count && seen <= page_count {
        let Ok(t) = page(trunk) else { break };
        seen += 1;
        let n = (be(&t, 4) as usize).min((t.len() - 8) / 4);
        // The unused tail of a trunk page is free space too.
        if t[8 + 4 * n..].iter().any(|&b| b != 0) {
            dirty += 1;
        }
        for i in 0..n {
            let leaf = be(&t, 8 + 4 * i);
            seen += 1;
            if leaf == 0 || leaf > page_count {
                continue;
            }
            if let Ok(l) = page(leaf)
                && l.iter().any(|&b| b != 0)
            {
                dirty += 1;
            }
        }
        trunk = be(&t, 0);
    }
    dirty
}

enum Kind {
    Database,
    Side,
    Secret,
    Other,
}

fn db_like_name(name: &str) -> bool {
    Path::new(name)
        .extension()
        .is_some_and(|e| DB_EXTENSIONS.contains(&e.to_string_lossy().to_ascii_lowercase().as_str()))
}

fn classify(path: &Path, meta: &Metadata) -> Kind {
    let name = path.file_name().unwrap_or_default().to_string_lossy().to_string();
    if SIDE_SUFFIXES.iter().any(|s| name.ends_with(s)) {
        return Kind::Side;
    }
    match head(path) {
        Ok(Head::Plain) => return Kind::Database,
        Ok(Head::Opaque) if db_like_name(&name) => return Kind::Database,
        _ => {}
    }
    if meta.len() <= 64 * 1024 {
        let mut buf = Vec::new();
        if crate::open_regular(path, false).is_ok_and(|f| f.take(64 * 1024).read_to_end(&mut buf).is_ok()) {
            let text = String::from_utf8_lossy(&buf);
            if text.contains("AGE-SECRET-KEY-1") || text.contains("PRIVATE KEY-----") {
                return Kind::Secret;
            }
        }
        let lower = name.to_ascii_lowercase();
        let ext = Path::new(&lower)
            .extension()
            .map(|e| e.to_string_lossy().to_string())
            .unwrap_or_default();
        if ext == "key" || ext == "pem" || (lower.contains("key") && meta.len() <= 4096) {
            return Kind::Secret;
        }
    }
    Kind::Other
}

fn side_path(db: &Path, suffix: &str) -> PathBuf {
    let mut s = db.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

fn main_of_side(side: &Path) -> Option<PathBuf> {
    let s = side.to_string_lossy();
    SIDE_SUFFIXES
        .iter()
        .find_map(|suf| s.strip_suffix(suf).map(PathBuf::from))
}

/// Removes group/other bits from `path`, which `judged` described, without following
/// a symbolic link and only if `path` still is the file that was judged.
fn tighten(path: &Path, judged: &Metadata) -> bool {
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(path)
    else {
        return false;
    };
    let Ok(now) = f.metadata() else { return false };
    if now.dev() != judged.dev() || now.ino() != judged.ino() || now.file_type().is_symlink() {
        return false;
    }
    use std::os::fd::AsRawFd;
    let via = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
    let mode = now.mode() & 0o7777 & !0o077;
    std::fs::set_permissions(&via, std::fs::Permissions::from_mode(mode)).is_ok()
}

fn one_line(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A path quoted for a shell command line in a fix.
fn sh(p: &Path) -> String {
    let s = p.to_string_lossy();
    if s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+:@".contains(c)) {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_bug_ranges() {
        assert_eq!(known_bugs(3_045_001).len(), 1);
        assert_eq!(known_bugs(3_007_000).len(), 1);
        assert_eq!(known_bugs(3_051_002).len(), 1);
        assert!(known_bugs(3_051_003).is_empty());
        assert!(known_bugs(3_006_023).is_empty());
        assert!(known_bugs(3_054_001).is_empty());
        assert_eq!(version_string(3_054_001), "3.54.1");
    }

    #[test]
    fn quoting() {
        assert_eq!(sh(Path::new("/a/b.db")), "/a/b.db");
        assert_eq!(sh(Path::new("/a b/it's")), "'/a b/it'\\''s'");
    }
}
