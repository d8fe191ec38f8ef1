//! Restore and verify: page map → index → fetch packs → decrypt → decompress →
//! authenticate every chunk → write pages → fsync → integrity check and logical
//! checksum → atomic rename.

// (tidy: long file — restore, verify and the SQLCipher re-encryption share the checks
// before a file is installed; each part is short. The fetch stage is in fetch.rs.)

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use sqlvault_format::{Manifest, kind};

use crate::error::{Error, ErrorKind, Result, io_err};
use crate::fetch::{Layout, Plan, fetch_chunks};
use crate::install::{in_use, side_file_error, stale_side_files, temp_in};
use crate::pagetable::{self, PageTable};
use crate::repo::{Repo, unknown_kind};
use crate::session::Requests;
use sqlvault_sqlite::{CipherSettings, DbKey, Unlock};

/// Options for [`restore`] and [`verify`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RestoreOptions {
    /// Snapshot id or unique prefix; default the newest.
    pub snapshot: Option<String>,
    /// Restrict to snapshots of this database name.
    pub name: Option<String>,
    /// Replace an existing destination (and remove its stale `-wal`/`-shm`).
    pub force: bool,
    /// Worker threads (0 = one per core).
    pub threads: usize,
    /// The database key of snapshots of SQLCipher databases: restore re-encrypts
    /// with it (it must be the key the snapshot was taken with).
    pub db_key: Option<DbKey>,
    /// verify: record each result as evidence in the repository (best effort: a
    /// repository this host cannot write to only logs a warning).
    pub evidence: bool,
    /// Install a database that fails integrity_check when the snapshot itself is
    /// proven intact (every page hash and the logical checksum match): the source was
    /// already damaged when it was backed up, and these are its exact bytes.
    pub accept_damaged_source: bool,
    /// Asked for the database key once the snapshot is chosen, only when it is of a
    /// SQLCipher database and `db_key` is not set: a caller that prompts for it does
    /// so only when it is needed, in the same [`restore`] call.
    pub db_key_for: Option<KeyProvider>,
    /// Pages restored per pass (0: 512 Ki, 2 GiB of 4 KiB pages). A restore holds
    /// about 70 bytes per page of a pass (chunk ids, the pages each fills, where each
    /// is), whatever the database's size; a database of more pages is restored in
    /// several passes, each reading the indexes again. Lower it to bound memory
    /// further, at that cost.
    pub pass_pages: usize,
    /// A point in a replication chain: the state checksum the rebuilt page table must
    /// have (it stands in for the logical checksum, which no segment records).
    pub(crate) point: Option<PointCheck>,
}

/// What a point-in-time restore checks ([`RestoreOptions::point`]).
#[derive(Debug, Clone)]
pub(crate) struct PointCheck {
    pub(crate) state: sqlvault_format::StateChecksum,
    /// "segment N of chain X", for errors.
    pub(crate) what: String,
}

/// Pages per pass when [`RestoreOptions::pass_pages`] is 0: ~36 MiB of per-page state
/// at most, and a database of up to 2 GiB (of 4 KiB pages) in one pass.
const PASS_PAGES: usize = 512 << 10;

/// Gives the database key for a snapshot of a SQLCipher database ([`RestoreOptions::db_key_for`]).
#[derive(Clone)]
pub struct KeyProvider(pub Arc<KeyFn>);

/// The function inside a [`KeyProvider`].
pub type KeyFn = dyn Fn(&Manifest) -> Result<Option<DbKey>> + Send + Sync;

impl std::fmt::Debug for KeyProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyProvider")
    }
}

impl RestoreOptions {
    /// Selects a snapshot.
    pub fn with_snapshot(mut self, s: Option<String>) -> Self {
        self.snapshot = s;
        self
    }
    /// Selects a database name.
    pub fn with_name(mut self, n: Option<String>) -> Self {
        self.name = n;
        self
    }
    /// Allows replacing the destination.
    pub fn with_force(mut self, f: bool) -> Self {
        self.force = f;
        self
    }
    /// verify: record results as evidence in the repository.
    pub fn with_evidence(mut self, yes: bool) -> Self {
        self.evidence = yes;
        self
    }
    /// Sets the database key for snapshots of SQLCipher databases.
    pub fn with_db_key(mut self, k: Option<DbKey>) -> Self {
        self.db_key = k;
        self
    }
    /// Sets [`RestoreOptions::db_key_for`].
    pub fn with_db_key_for(mut self, f: impl Fn(&Manifest) -> Result<Option<DbKey>> + Send + Sync + 'static) -> Self {
        self.db_key_for = Some(KeyProvider(Arc::new(f)));
        self
    }
    /// Sets [`RestoreOptions::pass_pages`].
    pub fn with_pass_pages(mut self, pages: usize) -> Self {
        self.pass_pages = pages;
        self
    }
    /// Installs a proven-intact snapshot of a source that already failed
    /// integrity_check (see [`RestoreOptions::accept_damaged_source`]).
    pub fn with_accept_damaged_source(mut self, yes: bool) -> Self {
        self.accept_damaged_source = yes;
        self
    }
}

/// The key and settings a snapshot of a SQLCipher database is restored with, after
/// proving the key is the one the snapshot was taken with. `None` for a snapshot of a
/// plaintext database.
fn db_unlock(repo: &Repo, m: &Manifest, key: Option<&DbKey>) -> Result<Option<Unlock>> {
    let Some(c) = &m.cipher else {
        return Ok(None);
    };
    // Before any key is derived from them: a forged kdf_iter or page size is refused
    // here, not spent hours on in PBKDF2 or handed to SQLCipher.
    if let Err(sqlvault_sqlite::SqliteError::BadKey { what }) = settings_of(c).validate() {
        return Err(Error::new(
            ErrorKind::Integrity,
            "repo.corrupt-object",
            format!("snapshot {} records {what}", m.id.short()),
        ));
    }
    let Some(key) = key else {
        return Err(Error::new(
            ErrorKind::Auth,
            "restore.db-key-required",
            format!(
                "snapshot {} is of an SQLCipher database: restoring or verifying it needs its database key",
                m.id.short()
            ),
        ));
    };
    let mut salt = [0u8; 16];
    let mut check = [0u8; 32];
    let malformed = match &c.key_check_sealed {
        Some(sealed) => {
            let Ok(ct) = hex::decode(sealed) else {
                return Err(Error::new(
                    ErrorKind::Integrity,
                    "repo.corrupt-object",
                    format!("snapshot {} records a malformed database-key check", m.id.short()),
                ));
            };
            match sqlvault_crypt::decrypt_to_vec(&repo.identities, &ct).map(zeroize::Zeroizing::new) {
                Ok(b) if b.len() == 48 => {
                    salt.copy_from_slice(&b[..16]);
                    check.copy_from_slice(&b[16..]);
                    false
                }
                // Sealed to recipients this identity is not among (added by `key add`
                // after the snapshot; `rewrap` does not reach inside manifests): the
                // key cannot be checked up front, only by the restore's own checks.
                Err(sqlvault_crypt::CryptError::NoMatchingIdentity) => {
                    tracing::warn!(
                        "snapshot {} was taken before this identity could read it: the database key given cannot be checked against it in advance",
                        m.id.short()
                    );
                    return Ok(Some(unlock_with(key, c)));
                }
                _ => true,
            }
        }
        None => {
            hex::decode_to_slice(&c.key_check_salt, &mut salt).is_err()
                || hex::decode_to_slice(&c.key_check, &mut check).is_err()
        }
    };
    if malformed {
        return Err(Error::new(
            ErrorKind::Integrity,
            "repo.corrupt-object",
            format!("snapshot {} records a malformed database-key check", m.id.short()),
        ));
    }
    if key.check_value(&salt) != check {
        return Err(Error::new(
            ErrorKind::Auth,
            "restore.wrong-db-key",
            format!(
                "the database key given is not the one snapshot {} of {} was taken with",
                m.id.short(),
                m.name
            ),
        ));
    }
    Ok(Some(unlock_with(key, c)))
}

fn unlock_with(key: &DbKey, c: &sqlvault_format::CipherFacts) -> Unlock {
    Unlock {
        key: key.clone(),
        settings: Some(settings_of(c)),
    }
}

fn settings_of(c: &sqlvault_format::CipherFacts) -> CipherSettings {
    CipherSettings {
        compatibility: c.compatibility,
        page_size: c.page_size,
        kdf_iter: c.kdf_iter,
        hmac_algorithm: c.hmac_algorithm.clone(),
        kdf_algorithm: c.kdf_algorithm.clone(),
    }
}

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    /// Snapshot restored.
    pub snapshot_id: String,
    /// Database name.
    pub name: String,
    /// Destination path.
    pub path: String,
    /// Bytes written.
    pub bytes: u64,
    /// Seconds spent fetching, decrypting, decompressing, writing and syncing.
    pub restore_seconds: f64,
    /// Seconds spent in integrity_check and the logical checksum.
    pub check_seconds: f64,
    /// Whether the restored database is SQLCipher-encrypted (as its source was).
    pub encrypted: bool,
    /// integrity_check lines of a database installed with `accept_damaged_source`:
    /// the source's own damage, restored exactly (empty when healthy).
    pub source_problems: Vec<String>,
    /// Checks that could not run, naming each index and why (indexes ordered by a
    /// collation only the application has).
    pub not_checked: Vec<String>,
    /// Store requests.
    pub requests: Requests,
}

/// Outcome of verifying one snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Snapshot.
    pub snapshot_id: String,
    /// Database name.
    pub name: String,
    /// Whether every check passed.
    pub ok: bool,
    /// Error code when not ok.
    pub code: Option<String>,
    /// What failed, when not ok.
    pub error: Option<String>,
    /// Restore time.
    pub restore_seconds: f64,
    /// Check time.
    pub check_seconds: f64,
    /// Evidence object written for this result, if any.
    pub evidence: Option<String>,
    /// Checks that could not run, naming each index and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_checked: Vec<String>,
    /// A point in time of a replication chain (`verify --at`): which one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub point: Option<String>,
}

/// Restores a snapshot to `dest`.
pub async fn restore(repo: &Repo, dest: &Path, opts: RestoreOptions) -> Result<RestoreReport> {
    repo.require_data_access("restore")?;
    let m = repo
        .find_snapshot(opts.snapshot.as_deref(), opts.name.as_deref())
        .await?;
    restore_snapshot(repo, &m, dest, &opts).await
}

/// Restores the snapshot `m` (already found, e.g. to see whether it needs a database
/// key) to `dest`; `opts.snapshot` and `opts.name` are not consulted.
pub async fn restore_snapshot(repo: &Repo, m: &Manifest, dest: &Path, opts: &RestoreOptions) -> Result<RestoreReport> {
    repo.require_data_access("restore")?;
    let before = repo.store.stats();
    let t0 = Instant::now();
    let dest = absolute(dest)?;
    let dir = dest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    if !dir.is_dir() {
        return Err(Error::new(
            ErrorKind::NotFound,
            "restore.no-directory",
            format!("destination directory {} does not exist", dir.display()),
        ));
    }
    if dest.exists() && !opts.force {
        return Err(Error::new(
            ErrorKind::Exists,
            "restore.destination-exists",
            format!("{} exists and is not to be replaced", dest.display()),
        ));
    }
    if opts.force {
        // Before any work: a destination an application holds open is never replaced
        // (checked again just before the rename).
        sqlvault_sqlite::ensure_not_in_use(&dest).map_err(|e| in_use(e, "restore.destination-in-use"))?;
    }
    stale_side_files(&dest, opts.force, "restore.stale-side-files")?;

    let asked;
    let key = match (&opts.db_key, &opts.db_key_for) {
        (Some(k), _) => Some(k),
        (None, Some(f)) if m.cipher.is_some() => {
            asked = (f.0)(m)?;
            asked.as_ref()
        }
        _ => None,
    };
    let unlock = db_unlock(repo, m, key)?;
    match m.kind.as_str() {
        kind::PAGES => {}
        kind::DUMP => return restore_dump(repo, m, &dest, &dir, opts, unlock, before, t0).await,
        other => return Err(unknown_kind(m, other)),
    }
    let table = PageTable::build(repo, m).await?;
    // A compaction point of a chain carries a state checksum instead of a logical one.
    let compacted = (m.logical_checksum.is_empty())
        .then(|| m.state.as_deref().and_then(sqlvault_format::StateChecksum::from_hex))
        .flatten()
        .map(|state| PointCheck {
            state,
            what: format!("compaction point {}", m.id.short()),
        });
    let mut opts = std::borrow::Cow::Borrowed(opts);
    if opts.point.is_none() && compacted.is_some() {
        opts.to_mut().point = compacted;
    }
    let opts: &RestoreOptions = &opts;
    if let Some(p) = &opts.point {
        let got = table.state(&sqlvault_format::StateKey::new(&repo.keys))?;
        if got != p.state {
            return Err(Error::new(
                ErrorKind::Integrity,
                "restore.state-mismatch",
                format!(
                    "the pages rebuilt at {} do not have the state checksum it records: a map or segment was altered",
                    p.what
                ),
            ));
        }
    }
    let tmp = temp_in(&dir, &dest, ".tmp")?;
    let size = m.page_size as u64 * m.page_count as u64;
    tmp.as_file()
        .set_len(size)
        .map_err(|e| io_err(format!("cannot size {}", tmp.path().display()), e))?;
    // In passes over ranges of pages, so that what is held per page (the ids of the
    // pass, the unique chunks, where each is) is bounded by a pass, not the database.
    // Each pass reads the indexes again, and a pack holding chunks of several passes
    // is fetched once for each: the price of a database larger than one pass.
    let progress = repo.session.progress();
    progress.start("restoring", Some(size));
    let per = if opts.pass_pages == 0 {
        PASS_PAGES
    } else {
        opts.pass_pages
    };
    for (first, n) in pagetable::passes(table.pages(), per) {
        let plan = Plan::new(table.read(first, n)?, first);
        fetch_chunks(
            repo,
            m,
            plan,
            Layout::Pages(m.page_size as u64),
            tmp.as_file(),
            opts.threads,
        )
        .await?;
    }
    progress.finish();
    drop(table);
    tracing::debug!(seconds = t0.elapsed().as_secs_f64(), "restore: pages written");
    tmp.as_file()
        .sync_all()
        .map_err(|e| io_err(format!("cannot fsync {}", tmp.path().display()), e))?;
    let restore_seconds = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let tpath = tmp.path().to_path_buf();
    let report = tokio::task::spawn_blocking(move || sqlvault_sqlite::verify_file(&tpath))
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, "internal", "verifier panicked").with_source(e))??;
    // At a point of a chain the state checksum above has proven every page.
    let checksum_ok = opts.point.is_some() || hex::encode(report.logical_checksum) == m.logical_checksum;
    let image_sum = hex::encode(report.logical_checksum);
    let source_problems = judge_image(m, &report.problems, checksum_ok, opts.accept_damaged_source)?;
    for l in &report.not_checked {
        tracing::debug!("snapshot {}: {l}", m.id.short());
    }
    // A SQLCipher source: the verified plaintext image becomes a database in the
    // source's cipher format and key, itself verified (cipher_integrity_check,
    // integrity_check, checksum) before it replaces the image. Page by page where the
    // image allows (every snapshot of a SQLCipher source since pages carry their
    // reserved area): nothing is rebuilt, so an index ordered by an application's
    // collation survives; through a dump and a keyed load otherwise.
    let encrypted = unlock.is_some();
    let tmp = match unlock {
        None => tmp,
        Some(u) => {
            let enc = temp_in(&dir, &dest, ".enc.tmp")?;
            let want = match opts.point {
                Some(_) => image_sum.clone(),
                None => m.logical_checksum.clone(),
            };
            let (short, accepted) = (m.id.short(), !source_problems.is_empty());
            tokio::task::spawn_blocking(move || -> Result<tempfile::NamedTempFile> {
                match sqlvault_sqlite::encrypt_image(tmp.path(), enc.path(), &u)? {
                    Some(rep) => {
                        let sum_ok = hex::encode(rep.logical_checksum) == want;
                        if !sum_ok || (!rep.problems.is_empty() && !accepted) {
                            return Err(Error::new(
                                ErrorKind::Integrity,
                                "verify.integrity-check",
                                format!(
                                    "snapshot {}: the re-encrypted database does not verify{}",
                                    short,
                                    rep.problems.first().map(|p| format!(": {p}")).unwrap_or_default()
                                ),
                            ));
                        }
                        Ok(enc)
                    }
                    None => {
                        drop(enc);
                        let settings = u.settings.clone().expect("set by db_unlock");
                        sqlvault_sqlite::encrypt(
                            tmp.path(),
                            u.key,
                            settings,
                            &sqlvault_sqlite::ConvertOptions::default(),
                        )?;
                        Ok(tmp)
                    }
                }
            })
            .await
            .map_err(|e| Error::new(ErrorKind::Internal, "internal", "encryptor panicked").with_source(e))??
        }
    };
    let check_seconds = t1.elapsed().as_secs_f64();

    sqlvault_sqlite::install(tmp, &dest, opts.force).map_err(|e| match e {
        sqlvault_sqlite::SqliteError::Exists { .. } => Error::new(
            ErrorKind::Exists,
            "restore.destination-exists",
            format!(
                "{} appeared during the restore and is not to be replaced",
                dest.display()
            ),
        ),
        sqlvault_sqlite::SqliteError::StaleSideFile { path } => {
            side_file_error(&[path], &dest, "restore.stale-side-files")
        }
        sqlvault_sqlite::SqliteError::Io { path, source } => {
            io_err(format!("cannot install the restore at {}", path.display()), source)
        }
        other => in_use(other, "restore.destination-in-use"),
    })?;

    Ok(RestoreReport {
        snapshot_id: m.id.to_string(),
        name: m.name.clone(),
        path: dest.display().to_string(),
        bytes: size,
        restore_seconds,
        check_seconds,
        encrypted,
        source_problems,
        not_checked: report.not_checked,
        requests: repo.store.stats().since(before),
    })
}

/// What a restored image failing or passing its checks means. Every page was
/// authenticated against the snapshot's map on the way in, so when the logical
/// checksum matches too the image *is* the database that was backed up: an
/// integrity_check failure then belongs to the source (damaged before the backup, or
/// judged by a stricter SQLite than the one that wrote it), never to the backup. That
/// is a distinct outcome ([`ErrorKind::SourceDamaged`]), and with `accept` the exact
/// bytes are the user's to have. Returns the problems accepted.
fn judge_image(m: &Manifest, problems: &[String], checksum_ok: bool, accept: bool) -> Result<Vec<String>> {
    let first = |p: &[String]| p.iter().take(3).cloned().collect::<Vec<_>>().join("; ");
    // The backup checked its source and found it healthy: an image that fails now is
    // not the source's damage, whatever else matches.
    let recorded_healthy = m.source_check.as_ref().is_some_and(|c| c.ok);
    let source_damaged = checksum_ok && !recorded_healthy;
    match (problems.is_empty(), checksum_ok, source_damaged) {
        (true, true, _) => Ok(Vec::new()),
        (false, _, true) if accept => Ok(problems.to_vec()),
        (false, _, true) => Err(Error::new(
            ErrorKind::SourceDamaged,
            "restore.source-damaged",
            format!(
                "snapshot {} is intact (every page hash and the logical checksum match what was backed up), \
                 but the database itself fails integrity_check, so its source was already damaged when it was \
                 backed up{}: {}; these exact bytes (snapshot {}) can be restored only when asked to accept a damaged source",
                m.id.short(),
                match &m.source_check {
                    Some(c) if !c.ok => " (the backup's own integrity_check recorded it too)",
                    _ => "",
                },
                first(problems),
                m.id.short()
            ),
        )
        .with_snapshot(m.id.to_string())),
        (false, _, false) => Err(Error::new(
            ErrorKind::Integrity,
            "verify.integrity-check",
            format!(
                "snapshot {} restores to a database failing integrity_check{}: {}",
                m.id.short(),
                if recorded_healthy && checksum_ok {
                    " although its backup found the source healthy"
                } else {
                    ""
                },
                first(problems)
            ),
        )),
        (true, false, _) => Err(Error::new(
            ErrorKind::Integrity,
            "verify.checksum-mismatch",
            format!(
                "snapshot {} restores to content whose logical checksum differs from the recorded one",
                m.id.short()
            ),
        )),
    }
}

/// A dump snapshot: its SQL is rebuilt chunk by chunk into a private temporary file
/// next to the destination, then loaded (temp database, integrity_check, logical
/// checksum equal to the manifest's, rename). Both temporary files go on any error.
#[allow(clippy::too_many_arguments)]
async fn restore_dump(
    repo: &Repo,
    m: &Manifest,
    dest: &Path,
    dir: &Path,
    opts: &RestoreOptions,
    unlock: Option<Unlock>,
    before: sqlvault_store::RequestCounts,
    t0: Instant,
) -> Result<RestoreReport> {
    let seq = repo.chunk_seq(m).await?;
    let mut offsets = Vec::with_capacity(seq.len() + 1);
    let mut at = 0u64;
    offsets.push(0);
    for &l in &seq.lens {
        at += l as u64;
        offsets.push(at);
    }
    let sql = temp_in(dir, dest, ".sql.tmp")?;
    sql.as_file()
        .set_len(at)
        .map_err(|e| io_err(format!("cannot size {}", sql.path().display()), e))?;
    let progress = repo.session.progress();
    progress.start("restoring", Some(at));
    let plan = Plan::new(seq.ids, 1);
    fetch_chunks(repo, m, plan, Layout::Chunks(offsets), sql.as_file(), opts.threads).await?;
    progress.finish();
    let mut want = [0u8; 32];
    hex::decode_to_slice(&m.logical_checksum, &mut want).map_err(|_| {
        Error::new(
            ErrorKind::Integrity,
            "repo.corrupt-object",
            format!("snapshot {} records no valid checksum", m.id.short()),
        )
    })?;
    let encrypted = unlock.is_some();
    let (path, name, dest2, force) = (
        sql.path().to_path_buf(),
        format!("snapshot {}", m.id.short()),
        dest.to_path_buf(),
        opts.force,
    );
    let accept = opts.accept_damaged_source;
    let short = m.id.short();
    let full_id = m.id.to_string();
    let loaded = tokio::task::spawn_blocking(move || {
        let f = File::open(&path).map_err(|e| io_err(format!("cannot read {}", path.display()), e))?;
        sqlvault_sqlite::load(
            std::io::BufReader::with_capacity(1 << 20, f),
            Path::new(&name),
            &dest2,
            &sqlvault_sqlite::LoadOptions::default()
                .with_force(force)
                .with_expected_checksum(Some(want))
                .with_encrypt(unlock)
                .with_accept_damaged_source(accept),
        )
        .map_err(|e| match e {
            // The dump's content is proven against the manifest's checksum: the same
            // outcome, and the same way to accept it, as for a page snapshot.
            sqlvault_sqlite::SqliteError::SourceDamaged { path, what } => Error::new(
                ErrorKind::SourceDamaged,
                "restore.source-damaged",
                format!(
                    "{} is intact (the loaded database's logical checksum matches what was backed up), but it \
                     fails integrity_check, so its source was already damaged when it was backed up: {what}; \
                     snapshot {short} can be restored as it is only when asked to accept a damaged source",
                    path.display(),
                ),
            )
            .with_snapshot(full_id.clone()),
            e => in_use(e, "restore.destination-in-use"),
        })
    })
    .await
    .map_err(|e| Error::new(ErrorKind::Internal, "internal", "loader panicked").with_source(e))??;
    drop(sql);
    let bytes = std::fs::metadata(dest).map(|md| md.len()).unwrap_or(0);
    Ok(RestoreReport {
        snapshot_id: m.id.to_string(),
        name: m.name.clone(),
        path: dest.display().to_string(),
        bytes,
        restore_seconds: t0.elapsed().as_secs_f64() - loaded.check_seconds,
        check_seconds: loaded.check_seconds,
        encrypted,
        source_problems: loaded.source_problems,
        not_checked: Vec::new(),
        requests: repo.store.stats().since(before),
    })
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        std::path::absolute(p).map_err(|e| io_err(format!("cannot resolve {}", p.display()), e))
    }
}

/// Restores each snapshot into a private temporary directory and checks it.
///
/// Snapshots of SQLCipher databases are restored encrypted with `opts.db_key` and
/// checked with it (`cipher_integrity_check` too); only `db_key`, `threads` and
/// `pass_pages` of `opts` apply.
pub async fn verify(repo: &Repo, snapshots: Vec<Manifest>, opts: &RestoreOptions) -> Result<Vec<VerifyReport>> {
    verify_each(repo, snapshots.into_iter().map(|m| (m, None, None)).collect(), opts).await
}

/// [`verify`] of manifests, each with the point check it needs (a point of a
/// replication chain: its rebuilt manifest and state checksum) and a label.
pub(crate) async fn verify_each(
    repo: &Repo,
    items: Vec<(Manifest, Option<PointCheck>, Option<String>)>,
    opts: &RestoreOptions,
) -> Result<Vec<VerifyReport>> {
    repo.require_data_access("verify")?;
    let dir = repo.session.scratch("verify")?;
    let mut out = Vec::new();
    for (m, point, label) in items {
        let dest = dir.path().join(format!("{}.db", m.id));
        let one = RestoreOptions {
            threads: opts.threads,
            db_key: opts.db_key.clone(),
            pass_pages: opts.pass_pages,
            point,
            ..RestoreOptions::default()
        };
        let r = restore_snapshot(repo, &m, &dest, &one).await;
        let _ = std::fs::remove_file(&dest);
        let mut rep = match r {
            Ok(rep) => VerifyReport {
                snapshot_id: m.id.to_string(),
                name: m.name.clone(),
                ok: true,
                code: None,
                error: None,
                restore_seconds: rep.restore_seconds,
                check_seconds: rep.check_seconds,
                evidence: None,
                not_checked: rep.not_checked,
                point: label.clone(),
            },
            Err(e) if matches!(e.kind(), ErrorKind::Store | ErrorKind::Io | ErrorKind::Auth) => {
                return Err(e);
            }
            Err(e) => VerifyReport {
                snapshot_id: m.id.to_string(),
                name: m.name.clone(),
                ok: false,
                code: Some(e.code().to_string()),
                error: Some(e.one_line()),
                restore_seconds: 0.0,
                check_seconds: 0.0,
                evidence: None,
                not_checked: Vec::new(),
                point: label.clone(),
            },
        };
        if opts.evidence {
            let e = crate::evidence::Evidence {
                kind: "verify".into(),
                at_ms: crate::repo::now_ms(),
                snapshot_id: rep.snapshot_id.clone(),
                name: rep.name.clone(),
                snapshot_created_ms: m.created_ms,
                ok: rep.ok,
                checks: checks_of(&m),
                code: rep.code.clone(),
                restore_seconds: rep.restore_seconds,
                check_seconds: rep.check_seconds,
                host: repo.session.host().to_string(),
            };
            match crate::evidence::record(repo, e).await {
                Ok(k) => rep.evidence = Some(k),
                Err(e) => tracing::warn!("could not record verification evidence: {}", e.one_line()),
            }
        }
        out.push(rep);
    }
    Ok(out)
}

/// The checks a restore of `m` runs, as evidence records them.
pub(crate) fn checks_of(m: &Manifest) -> Vec<String> {
    let mut c = vec![if m.kind == kind::DUMP {
        "load-dump".to_string()
    } else {
        "chunk-hashes".to_string()
    }];
    // SQLCipher 1.x pages carry no MAC: there is no cipher_integrity_check to run.
    if m.cipher.as_ref().is_some_and(|c| c.compatibility > 1) {
        c.push("cipher_integrity_check".into());
    }
    c.push("integrity_check".into());
    c.push("logical_checksum".into());
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlvault_format::{ObjectId, SnapshotStats, SourceCheck};

    fn manifest(source_check: Option<SourceCheck>) -> Manifest {
        Manifest {
            version: 1,
            id: ObjectId([7; 16]),
            name: "app.db".into(),
            kind: kind::PAGES.into(),
            created_ms: 1,
            host: "h".into(),
            source_path: "/srv/app.db".into(),
            page_size: 4096,
            page_count: 1,
            journal_mode: "wal".into(),
            user_version: 0,
            application_id: 0,
            text_encoding: "UTF-8".into(),
            sqlite_version: "3".into(),
            tool_version: "0".into(),
            logical_checksum: "00".into(),
            maps: vec![],
            parent: None,
            stats: SnapshotStats::default(),
            dump: None,
            cipher: None,
            source_check,
            replicated: false,
            state: None,
        }
    }

    #[test]
    fn only_a_proven_image_of_an_unvouched_source_is_source_damage() {
        let bad = vec!["row 1 missing from index i".to_string()];
        let plain = manifest(None);
        // Intact and healthy; intact but failing: the source's; accepted: its lines.
        assert!(judge_image(&plain, &[], true, false).unwrap().is_empty());
        let e = judge_image(&plain, &bad, true, false).unwrap_err();
        assert_eq!(
            (e.kind(), e.code()),
            (ErrorKind::SourceDamaged, "restore.source-damaged")
        );
        assert_eq!(judge_image(&plain, &bad, true, true).unwrap(), bad);
        // A checksum that differs is the backup's damage, accepted or not.
        for accept in [false, true] {
            let e = judge_image(&plain, &bad, false, accept).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Integrity);
            let e = judge_image(&plain, &[], false, accept).unwrap_err();
            assert_eq!(e.code(), "verify.checksum-mismatch");
        }
        // The backup found its source healthy: a failing image is never the source's.
        let vouched = manifest(Some(SourceCheck::of(&[])));
        for accept in [false, true] {
            let e = judge_image(&vouched, &bad, true, accept).unwrap_err();
            assert_eq!((e.kind(), e.code()), (ErrorKind::Integrity, "verify.integrity-check"));
            assert!(e.one_line().contains("found the source healthy"), "{}", e.one_line());
        }
        // It recorded the damage: the message says so.
        let recorded = manifest(Some(SourceCheck::of(&bad)));
        let e = judge_image(&recorded, &bad, true, false).unwrap_err();
        assert!(e.one_line().contains("recorded it too"), "{}", e.one_line());
    }
}
