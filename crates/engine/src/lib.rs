//! The sqlvault engine: the only crate that knows the whole pipeline. It turns a live
//! SQLite database into encrypted, deduplicated snapshots in a repository, and
//! snapshots back into verified databases.
//!
//! ```text
//! backup:  SQLite snapshot ─▶ keyed page hashes ─▶ dedup ─▶ zstd frames ─▶ age packs ─▶ store
//!          then index ─▶ page map ─▶ manifest (create-if-absent, the commit point)
//! restore: manifest ─▶ page maps ─▶ indexes ─▶ packs ─▶ age ─▶ zstd ─▶ hash check ─▶ file
//!          then fsync ─▶ integrity_check + logical checksum ─▶ rename ─▶ fsync dir
//! ```
//!
//! # How to use it
//!
//! - A [`Session`] carries everything an operation takes from its surroundings: the
//!   state directory (write keys, location pins, caches), the scratch directory, this
//!   host's identity, the repository fingerprint expected, a [`Cancel`] flag, a
//!   [`Progress`] sink and the request counts of every store opened through it. The
//!   engine reads no environment variable: build the session from what you mean.
//! - [`Repo::init`] creates a repository; [`Repo::open_write`] opens it with this host's
//!   write key (back up, never read data); [`Repo::open_read`] with an identity or
//!   passphrase ([`Access`]) to restore, verify and check.
//! - [`backup`] / [`backup_to_all`], [`restore`], [`verify`], [`check`], [`forget`],
//!   [`prune`], [`copy`], [`drill`], [`audit`]: each takes options with `Default` and
//!   builder-style setters, and returns a serialisable report.
//! - Every failure is an [`Error`] with a [`ErrorKind`] (for exit codes) and a stable
//!   [`Error::code`] (`"repo.corrupt-object"`) to match on, never its text.
//!
//! All entry points are async; the CPU side (hashing, zstd, age, SQLite) runs on worker
//! and blocking threads, and only object-store requests on the runtime.
//!
//! # Example
//!
//! Back up a database into a local-disk repository, change it, back up again (only the
//! changed pages travel), and restore the newest snapshot:
//!
//! ```
//! use sqlvault_engine::crypt::{Identities, generate_x25519};
//! use sqlvault_engine::store::{Store, StoreEnv};
//! use sqlvault_engine::{Access, BackupOptions, InitKeys, Repo, RestoreOptions, Session};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let db = dir.path().join("app.db");
//! let conn = rusqlite::Connection::open(&db)?;
//! conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1), (2);")?;
//!
//! let rt = tokio::runtime::Runtime::new()?;
//! rt.block_on(async {
//!     let session = Session::new(dir.path().join("state"));
//!     let store = Store::create_url(dir.path().join("repo").to_str().unwrap(), &StoreEnv::default())?;
//!     let (identity, recipient) = generate_x25519();
//!     Repo::init(&session, &store, InitKeys::Recipients(vec![recipient.parse()?])).await?;
//!
//!     // A backup host holds the write key only: it cannot read what it wrote.
//!     let writer = Repo::open_write(&session, store.clone()).await?;
//!     let first = sqlvault_engine::backup(&writer, &db, BackupOptions::default()).await?;
//!     conn.execute("UPDATE t SET x = x + 10 WHERE x = 2", [])?;
//!     let second = sqlvault_engine::backup(&writer, &db, BackupOptions::default()).await?;
//!     assert!(second.chunks_new < first.chunks_new.max(2));
//!
//!     // Restoring needs the identity; the result is verified before it appears.
//!     let reader = Repo::open_read(&session, store, Access::Identities(Identities::from_secret_string(&identity)?)).await?;
//!     let out = dir.path().join("restored.db");
//!     let report = sqlvault_engine::restore(&reader, &out, RestoreOptions::default()).await?;
//!     assert_eq!(report.snapshot_id, second.snapshot_id);
//!     let x: i64 = rusqlite::Connection::open(&out)?.query_row("SELECT max(x) FROM t", [], |r| r.get(0))?;
//!     assert_eq!(x, 12);
//!     Ok::<_, Box<dyn std::error::Error>>(())
//! })?;
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]
#![deny(rustdoc::broken_intra_doc_links)]
#![deny(unsafe_code)]

mod audit;
mod backup;
mod catalog;
mod chain;
mod check;
mod commit;
mod copy;
mod copymap;
mod cost;
mod drill;
mod error;
pub mod evidence;
mod fetch;
mod forget;
pub mod immutable;
mod install;
mod keys;
pub mod lease;
mod local;
mod logical;
mod mapparts;
pub mod names;
mod objects;
mod packer;
mod pagetable;
mod pitr;
mod prune;
mod replicate;
mod repo;
mod restore;
pub mod retention;
mod runs;
mod session;
mod source;
mod spill;

pub use audit::{AuditRequest, audit};
pub use backup::{BackupKind, BackupOptions, BackupReport, backup, backup_to_all};
pub use check::{CheckOptions, CheckReport, Problem, check};
pub use copy::{CopiedSnapshot, CopyOptions, CopyReport, copy};
pub use cost::{CostReport, KindUsage, TYPICAL_SAMPLE, TypicalBackup, cost};
pub use drill::{DrillOptions, DrillRecord, DrillReport, append_failure as append_drill_failure, drill};
pub use error::{Error, ErrorKind, Result};
pub use forget::{ForgetOptions, ForgetReport, GroupPlan, PlanEntry, forget};
pub use keys::{KeyChange, RewrapReport, change_recipients, rewrap};
pub use local::WriteKey;
pub use logical::{DumpOptions, DumpSummary, LoadSummary, dump_to_file, dump_to_writer, load_file, load_file_with};
pub use pitr::{
    ChainSpan, PointPlan, PointSpec, Timeline, parse_time, plan_point, restore_point, timeline, verify_points,
};
pub use prune::{DEFAULT_GRACE, MIN_GRACE, PruneOptions, PruneReport, Tally, check_grace, prune};
pub use replicate::{DestinationReport, ReplicateOptions, ReplicateReport, replicate};
pub use repo::{Access, InitKeys, InitReport, Repo, Skipped, Trust, escape_name};
pub use restore::{KeyProvider, RestoreOptions, RestoreReport, VerifyReport, restore, restore_snapshot, verify};
pub use session::{Cancel, NoProgress, Progress, Requests, Session, SessionBuilder};
pub use sqlvault_crypt as crypt;
pub use sqlvault_format as format;
pub use sqlvault_sqlite as sqlite;
pub use sqlvault_store as store;
