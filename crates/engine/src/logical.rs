//! SQL dumps and loads outside a repository: `sqlvault dump` and `sqlvault load`.
//! Synchronous: both are one SQLite connection streaming through a file.

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlvault_sqlite::{LoadOptions, Source, SourceOptions};

use crate::error::{Error, ErrorKind, Result, io_err};

/// Options for [`dump_to_writer`] and [`dump_to_file`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DumpOptions {
    /// Longest wait for the application's locks.
    pub busy_timeout: Duration,
    /// Replace an existing output file.
    pub force: bool,
    /// The key of a SQLCipher source.
    pub unlock: Option<sqlvault_sqlite::Unlock>,
    /// Where a rollback-journal source's private copy goes (the SQLite crate's
    /// default when unset): a session's [`crate::Session::temp_dir`].
    pub temp_dir: Option<std::path::PathBuf>,
    /// Where the bytes of SQL written are reported.
    pub progress: Option<std::sync::Arc<dyn crate::Progress>>,
}

impl Default for DumpOptions {
    fn default() -> Self {
        DumpOptions {
            busy_timeout: Duration::from_secs(10),
            force: false,
            unlock: None,
            temp_dir: None,
            progress: None,
        }
    }
}

impl DumpOptions {
    /// Sets the busy timeout.
    pub fn with_busy_timeout(mut self, t: Duration) -> Self {
        self.busy_timeout = t;
        self
    }
    /// Allows replacing the output file.
    pub fn with_force(mut self, yes: bool) -> Self {
        self.force = yes;
        self
    }
    /// Sets the key of a SQLCipher source.
    pub fn with_unlock(mut self, unlock: Option<sqlvault_sqlite::Unlock>) -> Self {
        self.unlock = unlock;
        self
    }
    /// Sets [`DumpOptions::progress`].
    pub fn with_progress(mut self, p: Option<std::sync::Arc<dyn crate::Progress>>) -> Self {
        self.progress = p;
        self
    }
    /// Sets [`DumpOptions::temp_dir`].
    pub fn with_temp_dir(mut self, dir: Option<std::path::PathBuf>) -> Self {
        self.temp_dir = dir;
        self
    }
}

/// What a dump wrote.
#[derive(Debug, Clone, Serialize)]
pub struct DumpSummary {
    /// The source database.
    pub source: String,
    /// The output file, if not a stream.
    pub path: Option<String>,
    /// Bytes of SQL.
    pub bytes: u64,
    /// Tables dumped.
    pub tables: usize,
    /// Rows dumped.
    pub rows: u64,
    /// Hex logical checksum, also in the dump's trailer.
    pub logical_checksum: String,
    /// `read-transaction` or `backup-copy`.
    pub method: String,
    /// Wall time.
    pub seconds: f64,
}

/// Writes a lossless SQL dump of `db` to `out`. Everything that would make it lossy is
/// reported before the first byte; an error later (a full disk, a closed pipe) leaves
/// output without its checksum trailer, which `load` refuses as truncated.
pub fn dump_to_writer(db: &Path, out: impl Write, opts: &DumpOptions) -> Result<DumpSummary> {
    let t = Instant::now();
    let mut src_opts = SourceOptions::default()
        .with_busy_timeout(opts.busy_timeout)
        .with_unlock(opts.unlock.clone());
    if let Some(d) = &opts.temp_dir {
        src_opts = src_opts.with_temp_dir(d.clone());
    }
    let mut src = Source::open(db, src_opts)?;
    let none = crate::NoProgress;
    let progress: &dyn crate::Progress = opts.progress.as_deref().unwrap_or(&none);
    progress.start("dumping", None);
    let r = src.dump(crate::session::Metered { inner: out, progress });
    progress.finish();
    let r = r?;
    Ok(DumpSummary {
        source: src.path().display().to_string(),
        path: None,
        bytes: r.bytes,
        tables: r.tables,
        rows: r.rows,
        logical_checksum: hex::encode(r.logical_checksum),
        method: crate::backup::method_name(r.method).into(),
        seconds: t.elapsed().as_secs_f64(),
    })
}

/// The directory `path` will be created in; it must exist (`what` names it in the error).
fn existing_dir(path: &Path, code: &'static str, what: &str) -> Result<PathBuf> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(Error::new(
            ErrorKind::NotFound,
            code,
            format!("{what} directory {} does not exist", dir.display()),
        ))
    }
}

/// Writes the dump to `file` (mode 0600) through a temporary file in the same
/// directory, synced and renamed only when complete: no partial file on any error.
pub fn dump_to_file(db: &Path, file: &Path, opts: &DumpOptions) -> Result<DumpSummary> {
    let dir = existing_dir(file, "dump.no-directory", "output")?;
    if file.exists() && !opts.force {
        return Err(Error::new(
            ErrorKind::Exists,
            "dump.output-exists",
            format!("{} exists and is not to be replaced", file.display()),
        ));
    }
    let tmp = crate::install::temp_in(&dir, file, ".tmp")?;
    let mut summary = dump_to_writer(db, tmp.as_file(), opts)?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| io_err(format!("cannot fsync {}", tmp.path().display()), e))?;
    if opts.force {
        tmp.persist(file)
    } else {
        tmp.persist_noclobber(file)
    }
    .map_err(|e| io_err(format!("cannot rename into {}", file.display()), e.error))?;
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(format!("cannot fsync {}", dir.display()), e))?;
    summary.path = Some(file.display().to_string());
    Ok(summary)
}

/// What a load did.
#[derive(Debug, Clone, Serialize)]
pub struct LoadSummary {
    /// The new database.
    pub path: String,
    /// Hex logical checksum of the new database.
    pub logical_checksum: String,
    /// Whether it matched the checksum the dump recorded (sqlvault dumps carry one).
    pub checksum_verified: bool,
    /// Statements run.
    pub statements: u64,
    /// Seconds spent loading.
    pub load_seconds: f64,
    /// Seconds spent in integrity_check and the checksum.
    pub check_seconds: f64,
    /// integrity_check lines of a result kept with `accept_damaged_source` (the
    /// dump's source was already damaged); empty when healthy.
    pub source_problems: Vec<String>,
}

/// Builds `dest` from the dump at `input` (`-` for standard input); see
/// [`sqlvault_sqlite::load`] for the guarantees. `accept_damaged_source`: keep a
/// result whose checksum matches the dump's but which fails integrity_check, as the
/// dumped database did ([`LoadOptions::accept_damaged_source`]).
pub fn load_file(input: &Path, dest: &Path, force: bool, accept_damaged_source: bool) -> Result<LoadSummary> {
    load_file_with(input, dest, force, accept_damaged_source, &crate::NoProgress)
}

/// [`load_file`], reporting the bytes of SQL read to `progress` (with the file's size
/// as the total).
pub fn load_file_with(
    input: &Path,
    dest: &Path,
    force: bool,
    accept_damaged_source: bool,
    progress: &dyn crate::Progress,
) -> Result<LoadSummary> {
    existing_dir(dest, "load.no-directory", "destination")?;
    // Before any work: a destination an application holds open is never replaced
    // (checked again just before the rename).
    if force {
        sqlvault_sqlite::ensure_not_in_use(dest).map_err(|e| crate::install::in_use(e, "load.destination-in-use"))?;
    }
    crate::install::stale_side_files(dest, force, "load.stale-side-files")?;
    let opts = LoadOptions::default()
        .with_force(force)
        .with_accept_damaged_source(accept_damaged_source);
    let in_use = |e| crate::install::in_use(e, "load.destination-in-use");
    let r = if input == Path::new("-") {
        progress.start("loading", None);
        let stdin = crate::session::Metered {
            inner: std::io::stdin().lock(),
            progress,
        };
        sqlvault_sqlite::load(stdin, Path::new("<stdin>"), dest, &opts).map_err(in_use)?
    } else {
        // Only a regular file, checked without blocking (a FIFO would hang the
        // open); a stream comes through standard input (`-`).
        let f = sqlvault_sqlite::open_regular(input, true).map_err(|e| match e {
            sqlvault_sqlite::SqliteError::Missing { .. } => Error::new(
                ErrorKind::NotFound,
                "load.input-missing",
                format!("dump {} does not exist", input.display()),
            ),
            sqlvault_sqlite::SqliteError::NotRegular { .. } => Error::new(
                ErrorKind::Source,
                "load.input-not-regular",
                format!("{e} (to load from a pipe, give - and pipe it to standard input)"),
            ),
            other => Error::from(other),
        })?;
        progress.start("loading", f.metadata().ok().map(|m| m.len()));
        let reader = crate::session::Metered {
            inner: BufReader::with_capacity(1 << 20, f),
            progress,
        };
        sqlvault_sqlite::load(reader, input, dest, &opts).map_err(in_use)?
    };
    progress.finish();
    Ok(LoadSummary {
        path: r.path.display().to_string(),
        logical_checksum: hex::encode(r.logical_checksum),
        checksum_verified: r.checksum_verified,
        statements: r.statements,
        load_seconds: r.load_seconds,
        check_seconds: r.check_seconds,
        source_problems: r.source_problems,
    })
}
