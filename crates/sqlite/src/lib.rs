//! Everything sqlvault does to SQLite, as a library: hot consistent snapshots of a
//! live database, lossless SQL dumps and verified loads, verification of a restored
//! file, SQLCipher keys and conversions, and a read-only audit of databases on disk.
//! Synchronous, rusqlite only; no async runtime, no other sqlvault crate.
//!
//! # Main types
//!
//! - [`Source`] opens a live database ([`SourceOptions`]) and takes a hot snapshot of
//!   it: [`Source::snapshot`] streams every page of one consistent state without
//!   blocking WAL-mode writers beyond one read transaction and without ever
//!   checkpointing the application's database; [`Source::dump`] writes a lossless
//!   SQL dump ([`DumpReport`]) in one read pass that also computes the checksum.
//! - [`logical_checksum`] digests the content (schema and every row, rowids included)
//!   independently of the physical layout; backup records it and restore compares it.
//! - [`verify_file`] / [`verify_file_with`] check a restored file: `PRAGMA
//!   integrity_check` plus the checksum ([`VerifyReport`]).
//! - [`copy_database`] writes a verified copy of a live database to a new file
//!   ([`CopyOptions`], [`CopyReport`]); [`Freeze`] holds a database still (no commit,
//!   no checkpoint) while something outside SQLite, such as a filesystem snapshot,
//!   reads its files.
//! - [`load`] builds a database from a dump and proves it equal ([`LoadOptions`],
//!   [`LoadReport`]); it refuses what a dump never contains ([`SqliteError::Refused`]).
//! - SQLCipher: [`DbKey`], [`CipherSettings`] and [`Unlock`] say how to open an
//!   encrypted database; [`probe`] tells plaintext from encrypted; [`encrypt`],
//!   [`decrypt`], [`rekey`], [`migrate`] convert a file in place, never touching the
//!   original until the copy is proven equal ([`ConvertOptions`], [`ConvertReport`]).
//! - [`Auditor`] and [`db_facts`] report permission, ownership and corruption
//!   findings ([`Finding`], [`Severity`]) without writing anything.
//! - Only regular files are read ([`open_regular`]); SQLite in this process opens only
//!   regular files and directories ([`guard_sqlite_opens`]): a FIFO or device named
//!   like a database or side file is refused, never waited on.
//! - Temporary files and directories are named, registered and swept in one place
//!   ([`scratch_file`], [`scratch_dir`], [`remove_all_for_exit`], [`sweep`]).
//!
//! Every fallible function returns [`SqliteError`]: one `#[non_exhaustive]` enum
//! with the file it concerns in each variant and SQLite's or the OS's error attached
//! as its `source` (never repeated in the message). [`Source::snapshot`] wraps it in
//! [`SnapshotError`] to tell it from the page consumer's own error.
//!
//! # SQLCipher is a feature
//!
//! By default this crate links plain bundled SQLite. The `sqlcipher` feature links
//! SQLCipher 4 (with a vendored OpenSSL) in its place; unkeyed databases behave as
//! with plain SQLite. Without it, [`has_sqlcipher`] is false and every operation that
//! needs a key fails with [`SqliteError::NoSqlcipher`] before touching any file
//! (an encrypted file is still recognised: [`probe`] says [`AtRest::Encrypted`]).
//! The `sqlvault` binary enables it.
//!
//! # Example
//!
//! Snapshot a live WAL database while a connection holds it open, rebuild the file
//! from the pages, and verify it; then the same through a dump and a load.
//!
//! ```
//! use sqlvault_sqlite::rusqlite::Connection;
//! use sqlvault_sqlite::{LoadOptions, Source, SourceOptions, load, tempfile, verify_file};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let db = dir.path().join("app.db");
//! let app = Connection::open(&db)?;
//! app.execute_batch(
//!     "PRAGMA journal_mode = WAL;
//!      CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT);
//!      INSERT INTO notes(body) VALUES ('one'), ('two');",
//! )?;
//!
//! // One consistent state, page by page; `app` keeps its connection open.
//! let mut source = Source::open(&db, SourceOptions::default())?;
//! let mut pages = Vec::new();
//! let (info, checksum, _method) = source.snapshot(|pgno, page| {
//!     pages.push((pgno, page.to_vec()));
//!     Ok::<(), std::io::Error>(())
//! })?;
//! pages.sort_by_key(|(pgno, _)| *pgno);
//! assert_eq!(pages.len() as u32, info.page_count);
//!
//! // The pages are the database: write them out and verify the copy.
//! let copy = dir.path().join("copy.db");
//! let image: Vec<u8> = pages.into_iter().flat_map(|(_, page)| page).collect();
//! std::fs::write(&copy, image)?;
//! let report = verify_file(&copy)?;
//! assert!(report.problems.is_empty());
//! assert_eq!(report.logical_checksum, checksum);
//!
//! // A lossless SQL dump of the same content, loaded into a new, verified database.
//! let mut sql = Vec::new();
//! let dumped = source.dump(&mut sql)?;
//! assert_eq!(dumped.logical_checksum, checksum);
//! let loaded = load(&sql[..], "notes.sql".as_ref(), &dir.path().join("loaded.db"), &LoadOptions::default())?;
//! assert!(loaded.checksum_verified);
//! assert_eq!(loaded.logical_checksum, checksum);
//! # Ok(())
//! # }
//! ```

#![deny(unsafe_code)]
#![deny(missing_docs)]
#![deny(rustdoc::broken_intra_doc_links)]

mod audit;
mod checksum;
mod collation;
mod convert;
mod copy;
mod dump;
mod error;
// SAFETY (module): `fcntl` locks (`F_OFD_SETLK`, `F_SETLK`) on a descriptor it owns,
// with a zeroed `flock` it fills in.
#[allow(unsafe_code)]
mod freeze;
// SAFETY (module): `sqlite3_enable_load_extension` on a connection this module owns.
#[allow(unsafe_code)]
mod guard;
mod image;
// SAFETY (module): OpenSSL's PBKDF2 and `sqlite3_key_v2` with buffers of the lengths
// passed, `getrandom` into a local buffer, and an `F_OFD_GETLK` probe; each call site
// states its own contract.
#[allow(unsafe_code)]
mod key;
mod literal;
// SAFETY (module): `sqlite3_complete` on a NUL-terminated `CString`.
#[allow(unsafe_code)]
mod load;
// SAFETY (module): installing the guarded `open` in SQLite's unix VFS
// (`xSetSystemCall`) and the `extern "C"` wrapper it calls.
#[allow(unsafe_code)]
mod regular;
// SAFETY (module): `kill(pid, 0)` and `geteuid`, which touch no memory.
#[allow(unsafe_code)]
mod scratch;
// SAFETY (module): `sqlite3_snapshot_get/open/free` on connections it owns, each
// snapshot freed once.
#[allow(unsafe_code)]
mod snapshot;
pub mod wal;
// SAFETY (module): `sqlite3_snapshot_get/free` on a connection it owns, the 48
// opaque bytes copied out before the snapshot is freed.
#[allow(unsafe_code)]
pub mod follow;

pub use audit::{
    AuditOptions, AuditReport, AuditStats, Auditor, DbFacts, Finding, KNOWN_BUGS, KnownBug, Severity, db_facts,
    db_facts_in, known_bugs, version_string,
};
pub use checksum::logical_checksum;
pub use collation::{AppCollation, app_collation_indexes};
pub use convert::{ConvertOptions, ConvertReport, Target, convert, decrypt, encrypt, migrate, rekey};
pub use copy::{CopyOptions, CopyReport, copy_database};
pub use dump::{DUMP_HEADER, DUMP_TRAILER, DumpReport};
pub use error::SqliteError;
pub use freeze::{Freeze, WAL_CKPT_LOCK_BYTE};
pub use image::encrypt_image;
pub use key::{
    AtRest, CipherSettings, DbKey, MAX_KDF_ITER, Unlock, has_sqlcipher, open_database, probe, sqlcipher_version,
};
pub use load::{LoadOptions, LoadReport, ensure_not_in_use, install, load};
pub use regular::{file_kind, guard_sqlite_opens, held, hold_file, open_regular};
pub use rusqlite;
pub use scratch::{
    LEGACY_MIN_AGE, SCRATCH_TAG, ScratchOwner, parse_scratch_name, remove_all_for_exit, scratch_dir, scratch_file,
    sweep,
};
pub use snapshot::{
    DbInfo, ReadHook, SnapshotError, SnapshotMethod, Source, SourceOptions, VerifyReport, check_header, verify_file,
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
