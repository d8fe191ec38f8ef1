//! SQLite side of sqlvault. Synchronous, rusqlite only.
//!
//! - [`Source`] takes a hot, consistent snapshot of a live database and streams its
//!   pages, without blocking WAL-mode writers beyond one read transaction and without
//!   ever checkpointing the application's database.
//! - [`logical_checksum`] digests the content (schema and every row, rowids included)
//!   independently of the physical layout; backup records it and restore compares it.
//! - [`verify_file`] checks a restored file: `PRAGMA integrity_check` plus the checksum.

mod checksum;
mod error;
mod snapshot;

pub use checksum::logical_checksum;
pub use error::SqliteError;
pub use rusqlite;
pub use snapshot::{
    DbInfo, SnapshotError, SnapshotMethod, Source, SourceOptions, VerifyReport, check_header, verify_file,
};

/// Version of the SQLite library linked into this build.
pub fn sqlite_version() -> &'static str {
    rusqlite::version()
}
