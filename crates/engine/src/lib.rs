//! The sqlvault engine: the only crate that knows the whole pipeline.
//!
//! ```text
//! backup:  SQLite snapshot ─▶ keyed page hashes ─▶ dedup ─▶ zstd frames ─▶ age packs ─▶ store
//!          then index ─▶ page map ─▶ manifest (create-if-absent, the commit point)
//! restore: manifest ─▶ page maps ─▶ indexes ─▶ packs ─▶ age ─▶ zstd ─▶ hash check ─▶ file
//!          then fsync ─▶ integrity_check + logical checksum ─▶ rename ─▶ fsync dir
//! ```
//!
//! All entry points are async; CPU and SQLite work runs on blocking threads.

mod audit;
mod backup;
mod catalog;
mod chain;
mod check;
mod commit;
mod copy;
mod drill;
mod error;
pub mod evidence;
mod forget;
mod install;
mod keys;
mod local;
mod logical;
pub mod names;
mod packer;
mod prune;
mod repo;
mod restore;
pub mod retention;
mod session;
mod source;

pub use audit::{AuditRequest, audit};
pub use backup::{BackupKind, BackupOptions, BackupReport, backup, backup_to_all};
pub use check::{CheckOptions, CheckReport, Problem, check};
pub use copy::{CopiedSnapshot, CopyOptions, CopyReport, copy};
pub use drill::{DrillOptions, DrillRecord, DrillReport, append_failure as append_drill_failure, drill};
pub use error::{Error, ErrorKind, Result};
pub use forget::{ForgetOptions, ForgetReport, GroupPlan, PlanEntry, forget};
pub use keys::{KeyChange, RewrapReport, change_recipients, rewrap};
pub use local::WriteKey;
pub use logical::{DumpOptions, DumpSummary, LoadSummary, dump_to_file, dump_to_writer, load_file};
pub use prune::{DEFAULT_GRACE, MIN_GRACE, PruneOptions, PruneReport, Tally, check_grace, prune};
pub use repo::{Access, InitKeys, InitReport, Repo, Skipped, Trust, escape_name};
pub use restore::{KeyProvider, RestoreOptions, RestoreReport, VerifyReport, restore, restore_snapshot, verify};
pub use session::{Cancel, NoProgress, Progress, Requests, Session, SessionBuilder};
pub use sqlvault_crypt as crypt;
pub use sqlvault_format as format;
pub use sqlvault_sqlite as sqlite;
pub use sqlvault_store as store;
