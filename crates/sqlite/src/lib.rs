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

mod audit;
mod checksum;
mod cipher;
mod dump;
mod error;
mod guard;
mod literal;
mod load;
mod snapshot;

pub use audit::{
    AuditOptions, AuditReport, AuditStats, Auditor, DbFacts, Finding, KNOWN_BUGS, KnownBug, Severity, db_facts,
    known_bugs, version_string,
};
pub use checksum::logical_checksum;
pub use cipher::{
    AtRest, CipherSettings, ConvertOptions, ConvertReport, DbKey, Target, Unlock, convert, decrypt, encrypt, migrate,
    probe, rekey, sqlcipher_version,
};
pub use dump::{DUMP_HEADER, DUMP_TRAILER, DumpReport};
pub use error::SqliteError;
pub use load::{LoadOptions, LoadReport, install, load};
pub use rusqlite;
pub use snapshot::{
    DbInfo, SnapshotError, SnapshotMethod, Source, SourceOptions, VerifyReport, check_header, verify_file,
    verify_file_with,
};
pub use tempfile;

/// Version of the SQLite library linked into this build.
pub fn sqlite_version() -> &'static str {
    rusqlite::version()
}
