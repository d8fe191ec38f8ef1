//! Restore drills for users' servers: the newest snapshot of each database restored into
//! a scratch directory and verified (integrity_check and the logical checksum, plus
//! cipher_integrity_check for SQLCipher sources), timed, and written down.
//!
//! Every outcome, failure included, becomes one JSON line appended to a local log (so a
//! scheduler's history survives a repository that cannot be reached) and, when asked, an
//! evidence object in the repository (so an auditor with the repository sees it). A
//! record carries the snapshot's age at that moment (the RPO a disaster then would have
//! meant) and the restore time (the RTO measured).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sqlvault_format::Manifest;
use sqlvault_sqlite::DbKey;

use crate::error::{Error, ErrorKind, Result, io_err};
use crate::evidence::Evidence;
use crate::repo::{Repo, Skipped, now_ms};
use crate::restore::{RestoreOptions, checks_of, restore_snapshot};
use crate::session::Session;

/// Options for [`drill`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct DrillOptions {
    /// Only this database name (default: every name in the repository).
    pub name: Option<String>,
    /// Key of snapshots of SQLCipher databases.
    pub db_key: Option<DbKey>,
    /// Also record each result as an evidence object in the repository.
    pub record_in_repo: bool,
    /// Where restores go (default: the system's temporary directory). It needs room
    /// for the largest database.
    pub scratch: Option<PathBuf>,
    /// JSON-lines log to append to (default: `drill.jsonl` in the state directory).
    pub log: Option<PathBuf>,
}

impl DrillOptions {
    /// Drills only this database name.
    pub fn with_name(mut self, name: Option<String>) -> Self {
        self.name = name;
        self
    }
    /// Database key for SQLCipher snapshots.
    pub fn with_db_key(mut self, k: Option<DbKey>) -> Self {
        self.db_key = k;
        self
    }
    /// Records results in the repository too.
    pub fn with_record_in_repo(mut self, yes: bool) -> Self {
        self.record_in_repo = yes;
        self
    }
    /// Scratch directory for the restores.
    pub fn with_scratch(mut self, dir: Option<PathBuf>) -> Self {
        self.scratch = dir;
        self
    }
    /// Log file.
    pub fn with_log(mut self, path: Option<PathBuf>) -> Self {
        self.log = path;
        self
    }

    /// The log this drill appends to: the one set, else `drill.jsonl` in the
    /// session's state directory.
    pub fn log_path(&self, session: &Session) -> PathBuf {
        self.log
            .clone()
            .unwrap_or_else(|| session.state_dir().join("drill.jsonl"))
    }
}

/// One drill of one snapshot: a line of the log.
#[derive(Debug, Clone, Serialize)]
pub struct DrillRecord {
    /// The evidence (kind `drill`): snapshot, its time, checks, result, timings, host.
    #[serde(flatten)]
    pub evidence: Evidence,
    /// The repository, as given.
    pub repo: String,
    /// Host the drilled database was backed up from (empty: not recorded).
    pub source_host: String,
    /// Its canonical path there (empty: not recorded).
    pub source_path: String,
    /// Age of the snapshot when drilled: the data a disaster at that moment would lose.
    pub rpo_seconds: f64,
    /// Size of the restored database.
    pub bytes: u64,
    /// What failed, when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The evidence object written into the repository, if asked and written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence_object: Option<String>,
    /// Checks that could not run, naming each index and why (indexes ordered by a
    /// collation only the application has).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_checked: Vec<String>,
}

/// What a drill did.
#[derive(Debug, Serialize)]
pub struct DrillReport {
    /// Whether every snapshot restored and verified.
    pub ok: bool,
    /// One record per database (name, and the host and path it was backed up from),
    /// in name order.
    pub records: Vec<DrillRecord>,
    /// The log appended to.
    pub log: String,
    /// The first failure, for the exit code.
    #[serde(skip)]
    pub failure: Option<Error>,
}

/// Drills the newest snapshot of each database (or of each of `opts.name`): a name
/// whose snapshots come from several sources (a moved database, adopted with
/// `--adopt-name`, or files of older versions that shared a name) is drilled once per
/// source, so that no database goes unchecked behind another's newer snapshot.
pub async fn drill(repo: &Repo, opts: &DrillOptions) -> Result<DrillReport> {
    repo.require_data_access("a restore drill")?;
    let log = opts.log_path(&repo.session);
    let (snaps, skipped) = match repo.snapshots_checked().await {
        Ok(s) => s,
        Err(e) => {
            append_failure(&log, repo.session.host(), repo.store.describe(), &e);
            return Err(e);
        }
    };
    // A damaged manifest may be the newest of a database: the drill cannot vouch for
    // it, so it fails (after drilling the rest). Junk a bucket writer left is not a
    // snapshot and is only warned about.
    let mut damage = Skipped::damage(&skipped);
    let newest = newest_per_name(snaps, opts.name.as_deref());
    if newest.is_empty()
        && let Some(e) = damage.take()
    {
        append_failure(&log, repo.session.host(), repo.store.describe(), &e);
        return Err(e);
    }
    // Warned about once they are not the drill's error.
    for s in &skipped {
        tracing::warn!("skipping {}: {}", s.key, s.message);
    }
    if newest.is_empty() {
        let e = Error::new(
            ErrorKind::NotFound,
            "snapshot.not-found",
            match &opts.name {
                Some(n) => format!("no snapshot of {n} in {}", repo.store.describe()),
                None => format!("no snapshots in {}", repo.store.describe()),
            },
        );
        append_failure(&log, repo.session.host(), repo.store.describe(), &e);
        return Err(e);
    }
    let made = match &opts.scratch {
        Some(s) => sqlvault_sqlite::scratch_dir(s, "drill")
            .map_err(|e| io_err(format!("cannot create a scratch directory in {}", s.display()), e)),
        None => repo.session.scratch("drill"),
    };
    let dir = match made {
        Ok(d) => d,
        Err(e) => {
            append_failure(&log, repo.session.host(), repo.store.describe(), &e);
            return Err(e);
        }
    };
    let mut records = Vec::new();
    let mut failure: Option<Error> = None;
    for m in &newest {
        let (mut rec, err) = drill_one(repo, m, dir.path(), opts).await;
        if opts.record_in_repo {
            match crate::evidence::record(repo, rec.evidence.clone()).await {
                Ok(k) => rec.evidence_object = Some(k),
                Err(e) => tracing::warn!("could not record drill evidence in the repository: {}", e.one_line()),
            }
        }
        append(&log, &rec)?;
        if let Some(e) = err {
            tracing::error!("drill of {} failed: {}", m.name, e.one_line());
            keep_worst(&mut failure, e);
        }
        records.push(rec);
    }
    if let Some(e) = damage {
        append_failure(&log, repo.session.host(), repo.store.describe(), &e);
        keep_worst(&mut failure, e);
    }
    Ok(DrillReport {
        ok: failure.is_none(),
        records,
        log: log.display().to_string(),
        failure,
    })
}

/// Keeps the first failure, unless it only says a source was already damaged (an
/// intact snapshot) and `e` is worse: a damaged backup decides the exit code.
fn keep_worst(failure: &mut Option<Error>, e: Error) {
    let replace = match failure {
        None => true,
        Some(f) => f.kind() == ErrorKind::SourceDamaged && e.kind() != ErrorKind::SourceDamaged,
    };
    if replace {
        *failure = Some(e);
    }
}

/// The newest snapshot of each database (name, source), by name: `snaps` comes oldest
/// first (by the creation time in the manifest), so the last of each wins. Future-dated
/// snapshots ([`crate::retention::is_future_dated`]) never win: a drill proves the
/// snapshots restore would pick, and restore does not pick them.
fn newest_per_name(snaps: Vec<Manifest>, only: Option<&str>) -> Vec<Manifest> {
    let now = now_ms();
    let mut by_db = std::collections::BTreeMap::new();
    for m in snaps.into_iter().filter(|m| only.is_none_or(|n| n == m.name)) {
        if crate::retention::is_future_dated(m.created_ms, now) {
            tracing::warn!(
                "skipping snapshot {}: dated more than {} ahead of this host's clock",
                m.id.short(),
                crate::retention::describe(crate::retention::CLOCK_SKEW)
            );
            continue;
        }
        by_db.insert((m.name.clone(), crate::names::SourceId::of(&m)), m);
    }
    by_db.into_values().collect()
}

async fn drill_one(repo: &Repo, m: &Manifest, dir: &Path, opts: &DrillOptions) -> (DrillRecord, Option<Error>) {
    let dest = dir.join(format!("{}.db", m.id));
    let one = RestoreOptions::default().with_db_key(opts.db_key.clone());
    let started = now_ms();
    let r = restore_snapshot(repo, m, &dest, &one).await;
    let _ = std::fs::remove_file(&dest);
    let (ok, restore_seconds, check_seconds, bytes, not_checked, err) = match r {
        Ok(rep) => (
            true,
            rep.restore_seconds,
            rep.check_seconds,
            rep.bytes,
            rep.not_checked,
            None,
        ),
        Err(e) => (false, 0.0, 0.0, 0, Vec::new(), Some(e)),
    };
    let rec = DrillRecord {
        evidence: Evidence {
            kind: "drill".into(),
            at_ms: now_ms(),
            snapshot_id: m.id.to_string(),
            name: m.name.clone(),
            snapshot_created_ms: m.created_ms,
            ok,
            checks: checks_of(m),
            code: err.as_ref().map(|e| e.code().to_string()),
            restore_seconds,
            check_seconds,
            host: repo.session.host().to_string(),
        },
        repo: repo.store.describe().to_string(),
        source_host: m.host.clone(),
        source_path: m.source_path.clone(),
        rpo_seconds: ((started - m.created_ms).max(0) as f64) / 1000.0,
        bytes,
        error: err.as_ref().map(Error::one_line),
        evidence_object: None,
        not_checked,
    };
    (rec, err)
}

/// Appends one line to the log, creating it 0600 (records name databases and hosts).
fn append(log: &Path, rec: &impl Serialize) -> Result<()> {
    if let Some(dir) = log.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::local::mkdir_private(dir)?;
    }
    let mut line = serde_json::to_vec(rec).expect("serialises");
    line.push(b'\n');
    // Anything but a regular file is refused: by name first, then (a FIFO swapped in
    // meanwhile) by the opened descriptor, opened with O_NONBLOCK so that a FIFO opens
    // or fails at once instead of waiting for a reader.
    let not_regular = |ft: std::fs::FileType| {
        Error::new(
            ErrorKind::Usage,
            "drill.log-not-regular",
            format!(
                "drill log {} is a {}, not a regular file: refused",
                log.display(),
                sqlvault_sqlite::file_kind(ft)
            ),
        )
    };
    if let Ok(m) = std::fs::metadata(log)
        && !m.is_file()
    {
        return Err(not_regular(m.file_type()));
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(log)
        .map_err(|e| io_err(format!("cannot open drill log {}", log.display()), e))?;
    let ft = f
        .metadata()
        .map_err(|e| io_err(format!("cannot open drill log {}", log.display()), e))?
        .file_type();
    if !ft.is_file() {
        return Err(not_regular(ft));
    }
    // One write of a whole line: concurrent drills appending to one log do not interleave.
    f.write_all(&line)
        .and_then(|()| f.sync_data())
        .map_err(|e| io_err(format!("cannot append to drill log {}", log.display()), e))
}

/// A drill that failed before any snapshot was restored (the repository could not be
/// opened or listed) still leaves its line in the log: the missing line would be the
/// only sign otherwise.
pub fn append_failure(log: &Path, host: &str, repo: &str, e: &Error) {
    #[derive(Serialize)]
    struct Failed<'a> {
        kind: &'static str,
        at_ms: i64,
        repo: String,
        ok: bool,
        code: &'a str,
        error: String,
        host: String,
    }
    let line = Failed {
        kind: "drill",
        at_ms: now_ms(),
        repo: repo.to_string(),
        ok: false,
        code: e.code(),
        error: e.one_line(),
        host: host.to_string(),
    };
    if let Err(err) = append(log, &line) {
        tracing::warn!("{}", err.one_line());
    }
}
