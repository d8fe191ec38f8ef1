//! SQLite side of sqlvault. Synchronous, rusqlite only.
//!
//! - [`Source`] takes a hot, consistent snapshot of a live database and streams its
//!   pages, without blocking WAL-mode writers beyond one read transaction and without
//!   ever checkpointing the application's database.
//! - [`logical_checksum`] digests the content (schema and every row, rowids included)
//!   independently of the physical layout; backup records it and restore compares it.
//! - [`verify_file`] checks a restored file: `PRAGMA integrity_check` plus the checksum.
//! - [`Source::dump`] writes a lossless SQL dump in one read pass that also computes the
//!   checksum; [`load`] builds a database from one and proves it equal.
//! - Only regular files are read ([`open_regular`]); SQLite in this process opens only
//!   regular files and directories ([`guard_sqlite_opens`]): a FIFO or device named
//!   like a database or side file is refused, never waited on.
//! - Temporary files and directories are named, registered and swept in one place
//!   ([`scratch_file`], [`scratch_dir`], [`remove_all_for_exit`], [`sweep`]).

mod audit;
mod checksum;
mod cipher;
mod collation;
mod dump;
mod error;
mod guard;
mod image;
mod literal;
mod load;
mod regular;
mod scratch;
mod snapshot;

pub use audit::{
    AuditOptions, AuditReport, AuditStats, Auditor, DbFacts, Finding, KNOWN_BUGS, KnownBug, Severity, db_facts,
    known_bugs, version_string,
};
pub use checksum::logical_checksum;
pub use cipher::{
    AtRest, CipherSettings, ConvertOptions, ConvertReport, DbKey, MAX_KDF_ITER, Target, Unlock, convert, decrypt,
    encrypt, migrate, probe, rekey, sqlcipher_version,
};
pub use collation::{AppCollation, app_collation_indexes};
pub use dump::{DUMP_HEADER, DUMP_TRAILER, DumpReport};
pub use error::SqliteError;
pub use image::encrypt_image;
pub use load::{LoadOptions, LoadReport, ensure_not_in_use, install, load};
pub use regular::{file_kind, guard_sqlite_opens, open_regular};
pub use rusqlite;
pub use scratch::{
    LEGACY_MIN_AGE, SCRATCH_TAG, ScratchOwner, parse_scratch_name, remove_all_for_exit, scratch_dir, scratch_file,
    sweep,
};
pub use snapshot::{
    DbInfo, SnapshotError, SnapshotMethod, Source, SourceOptions, VerifyReport, check_header, verify_file,
    verify_file_with,
};
pub use tempfile;

/// Suffixes of the files SQLite keeps beside a database: its WAL, the WAL index and a
/// rollback journal. SQLite applies a `-wal` or a hot `-journal` it finds beside a
/// database when it next opens that database, whichever database wrote them.
pub const SIDE_FILE_SUFFIXES: [&str; 3] = ["-wal", "-shm", "-journal"];

/// The side files ([`SIDE_FILE_SUFFIXES`]) that exist beside `db` (a dangling symlink
/// counts: SQLite would create through it). A restore or load into `db` must refuse
/// them or remove them, never leave them to be replayed onto the new file.
pub fn side_files(db: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for suffix in SIDE_FILE_SUFFIXES {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let p = std::path::PathBuf::from(p);
        match std::fs::symlink_metadata(&p) {
            Ok(_) => out.push(p),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Version of the SQLite library linked into this build.
pub fn sqlite_version() -> &'static str {
    rusqlite::version()
}
