//! `sqlvault audit`: the SQLite-side checks of [`sqlvault_sqlite::Auditor`], plus what
//! only the engine knows: this host's sqlvault state (write keys hold the repository
//! secret), local repositories, and how old the newest snapshot and the newest
//! verification of each database are.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlvault_format::layout;
use sqlvault_sqlite::{AuditOptions, AuditReport, Auditor, Finding, Severity, Unlock};

use crate::error::{Error, ErrorKind, Result};
use crate::repo::{Repo, escape_name, now_ms};
use crate::session::Session;

/// What to audit.
#[derive(Debug)]
#[non_exhaustive]
pub struct AuditRequest {
    /// Database files, key files or directories to scan.
    pub paths: Vec<PathBuf>,
    /// Tighten permissions (group/other bits off) of what is found.
    pub fix: bool,
    /// Key of SQLCipher databases, to check their content too.
    pub unlock: Option<Unlock>,
    /// A repository whose snapshot and verification ages to check (opened with read
    /// access: evidence records are encrypted metadata, snapshots too).
    pub repo: Option<Repo>,
    /// Database names to check in `repo` (default: the names of the databases found,
    /// or every name in the repository when none were scanned).
    pub names: Vec<String>,
    /// A newest snapshot older than this is a finding.
    pub max_snapshot_age: Duration,
    /// A newest successful verification older than this is a finding.
    pub max_verify_age: Duration,
}

impl AuditRequest {
    /// Audits `paths` with default thresholds (snapshot 24 h, verification 7 days).
    pub fn new(paths: Vec<PathBuf>) -> AuditRequest {
        AuditRequest {
            paths,
            fix: false,
            unlock: None,
            repo: None,
            names: Vec::new(),
            max_snapshot_age: Duration::from_secs(24 * 3600),
            max_verify_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
    /// Sets [`AuditRequest::fix`].
    pub fn with_fix(mut self, yes: bool) -> Self {
        self.fix = yes;
        self
    }
    /// Sets [`AuditRequest::unlock`].
    pub fn with_unlock(mut self, u: Option<Unlock>) -> Self {
        self.unlock = u;
        self
    }
    /// Sets [`AuditRequest::repo`] and [`AuditRequest::names`].
    pub fn with_repo(mut self, repo: Option<Repo>, names: Vec<String>) -> Self {
        self.repo = repo;
        self.names = names;
        self
    }
    /// Sets both age thresholds.
    pub fn with_max_ages(mut self, snapshot: Duration, verify: Duration) -> Self {
        self.max_snapshot_age = snapshot;
        self.max_verify_age = verify;
        self
    }
}

/// Runs the audit.
pub async fn audit(session: &Session, req: AuditRequest) -> Result<AuditReport> {
    let home = session.state_dir().to_path_buf();
    session.ensure_temp_dir()?;
    let temp_dir = session.temp_dir().to_path_buf();
    let AuditRequest {
        paths,
        fix,
        unlock,
        repo,
        names,
        max_snapshot_age,
        max_verify_age,
    } = req;
    let local_repo = repo
        .as_ref()
        .and_then(|r| r.store.local_root().map(|p| p.to_path_buf()));
    let mut report = tokio::task::spawn_blocking(move || -> Result<AuditReport> {
        let mut a = Auditor::new(AuditOptions {
            fix,
            unlock,
            repo_marker: Some(layout::MARKER.to_string()),
            temp_dir: temp_dir.clone(),
            ..AuditOptions::default()
        });
        a.linked_library();
        if home.is_dir() {
            a.private_tree(
                &home,
                "sqlvault state (write keys hold repository secrets)",
                Severity::High,
            );
        }
        if let Some(root) = &local_repo {
            a.private_tree(root, "local repository", Severity::Medium);
        }
        for p in &paths {
            a.scan(p).map_err(|e| match e {
                sqlvault_sqlite::SqliteError::Missing { .. } => Error::new(
                    ErrorKind::NotFound,
                    "audit.not-found",
                    format!("{} does not exist", p.display()),
                ),
                other => other.into(),
            })?;
        }
        Ok(a.finish())
    })
    .await
    .map_err(|e| Error::new(ErrorKind::Internal, "internal.task", e.to_string()))??;
    if let Some(repo) = &repo {
        let names = if !names.is_empty() {
            names
        } else {
            let found: BTreeSet<String> = report
                .databases
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
                .collect();
            found.into_iter().collect()
        };
        lock_findings(repo, &mut report).await?;
        ages(repo, &names, max_snapshot_age, max_verify_age, &mut report).await?;
    }
    Ok(report)
}

/// Whether the bucket's S3 Object Lock holds what the repository declared at `init`.
async fn lock_findings(repo: &Repo, report: &mut AuditReport) -> Result<()> {
    let where_ = PathBuf::from(repo.store.describe());
    let declared = repo.declared_lock_days;
    let lock = match crate::immutable::lock_state(repo).await {
        Ok(l) => l,
        Err(e) if e.code() == "repo.lock-unreadable" => {
            report.findings.push(Finding {
                severity: Severity::High,
                code: "repo.lock-unreadable",
                path: where_.clone(),
                message: e.one_line(),
                fix: "grant this host s3:GetBucketObjectLockConfiguration and s3:GetObjectRetention".into(),
                fixed: false,
            });
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let mut push = |severity, code, message: String, fix: &str| {
        report.findings.push(Finding {
            severity,
            code,
            path: where_.clone(),
            message,
            fix: fix.into(),
            fixed: false,
        })
    };
    match (declared, &lock) {
        (Some(d), None) => push(
            Severity::High,
            "repo.lock-missing",
            format!(
                "the repository was declared immutable for {d} days, but its bucket has no S3 Object Lock: nothing stops a deletion"
            ),
            "move the repository to a bucket created with Object Lock (sqlvault copy), with a default retention of at least that many days",
        ),
        (_, Some(l)) => {
            let covers = declared.unwrap_or(0);
            match l.bucket.days {
                None => push(
                    Severity::Medium,
                    "repo.lock-no-default",
                    "the bucket has S3 Object Lock but no default retention: new objects are not locked".into(),
                    "aws s3api put-object-lock-configuration --bucket B --object-lock-configuration '{\"ObjectLockEnabled\":\"Enabled\",\"Rule\":{\"DefaultRetention\":{\"Mode\":\"COMPLIANCE\",\"Days\":N}}}'",
                ),
                Some(days) if days < covers => push(
                    Severity::High,
                    "repo.lock-shorter-than-declared",
                    format!(
                        "the bucket's default retention is {days} days, shorter than the {covers} days the repository was declared immutable for"
                    ),
                    "raise the bucket's default retention (aws s3api put-object-lock-configuration)",
                ),
                Some(days) => push(
                    Severity::Info,
                    "repo.lock-covers",
                    format!(
                        "S3 Object Lock: {} for {days} days by default{}; prune keeps what kept snapshots reference locked that far ahead",
                        l.bucket.mode.map(|m| m.as_str()).unwrap_or("GOVERNANCE"),
                        match declared {
                            Some(d) => format!(", covering the {d} days the repository was declared immutable for"),
                            None => String::new(),
                        }
                    ),
                    "run prune at least every quarter of that period",
                ),
            }
            if l.bucket.mode == Some(sqlvault_store::LockMode::Governance) {
                push(
                    Severity::Low,
                    "repo.lock-governance",
                    "the bucket's default retention is GOVERNANCE: a principal with s3:BypassGovernanceRetention can lift it (a stolen admin credential can still delete backups)".into(),
                    "use COMPLIANCE mode for backups that must outlive a compromised account",
                );
            }
        }
        (None, None) => {}
    }
    Ok(())
}

async fn ages(
    repo: &Repo,
    names: &[String],
    max_snapshot_age: Duration,
    max_verify_age: Duration,
    report: &mut AuditReport,
) -> Result<()> {
    repo.require_data_access("checking verification evidence")?;
    let (snaps, skipped_snaps) = repo.snapshots_checked().await?;
    let (evidence, skipped_evidence) = crate::evidence::load_all(repo).await?;
    let where_ = PathBuf::from(repo.store.describe());
    // What cannot be authenticated is not trusted, and is a finding of its own: someone
    // without the repository's secret wrote into it, or an object was damaged.
    for s in skipped_snaps.iter().chain(&skipped_evidence) {
        report.findings.push(Finding {
            severity: Severity::High,
            code: "repo.unauthenticated-object",
            path: where_.clone(),
            message: format!("{} cannot be authenticated and was ignored: {}", s.key, s.message),
            fix: "sqlvault check REPO -i KEY; remove the object once you know who wrote it".into(),
            fixed: false,
        });
    }
    let names: Vec<String> = if names.is_empty() {
        snaps
            .iter()
            .map(|m| m.name.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    } else {
        names.to_vec()
    };
    let now = now_ms();
    let hours = |ms: i64| ms as f64 / 3_600_000.0;
    if names.is_empty() {
        report.findings.push(Finding {
            severity: Severity::High,
            code: "repo.no-snapshots",
            path: where_.clone(),
            message: "the repository holds no snapshot".into(),
            fix: "sqlvault backup DB REPO".into(),
            fixed: false,
        });
    }
    for name in names {
        // A future-dated snapshot would look fresh for years: it is a finding of its
        // own, and never the newest.
        for m in snaps
            .iter()
            .filter(|m| m.name == name && crate::retention::is_future_dated(m.created_ms, now))
        {
            report.findings.push(Finding {
                severity: Severity::High,
                code: "repo.future-dated-snapshot",
                path: where_.clone(),
                message: format!(
                    "snapshot {} of {name} is dated {:.1} h ahead of this host's clock: restore, drill and retention ignore it",
                    &m.id.to_string()[..8],
                    hours(m.created_ms - now)
                ),
                fix: "check the clock of the host that made it (or who holds its write key); sqlvault snapshots REPO shows it".into(),
                fixed: false,
            });
        }
        let newest = snaps
            .iter()
            .filter(|m| m.name == name && !crate::retention::is_future_dated(m.created_ms, now))
            .max_by_key(|m| m.created_ms);
        match newest {
            None => report.findings.push(Finding {
                severity: Severity::High,
                code: "repo.no-snapshot",
                path: where_.clone(),
                message: format!("no snapshot of {name}"),
                fix: format!("sqlvault backup … --name {name}, on a schedule"),
                fixed: false,
            }),
            Some(m) => {
                let age = now.saturating_sub(m.created_ms);
                let stale = age > max_snapshot_age.as_millis() as i64;
                report.findings.push(age_finding(
                    &where_,
                    stale,
                    ("repo.snapshot-stale", "repo.snapshot-age"),
                    format!(
                        "newest snapshot of {name} ({}) is {:.1} h old{}",
                        &m.id.to_string()[..8],
                        hours(age),
                        if stale {
                            format!(" (more than {:.0} h)", hours(max_snapshot_age.as_millis() as i64))
                        } else {
                            String::new()
                        }
                    ),
                    "check that scheduled backups run and succeed".into(),
                ));
            }
        }
        let verified = evidence
            .iter()
            .filter(|e| e.name == name && e.ok)
            .max_by_key(|e| e.at_ms);
        let failed_after = evidence
            .iter()
            .filter(|e| e.name == name && !e.ok && verified.is_none_or(|v| e.at_ms > v.at_ms))
            .max_by_key(|e| e.at_ms);
        if let Some(f) = failed_after {
            report.findings.push(Finding {
                severity: Severity::High,
                code: "repo.verify-failed",
                path: where_.clone(),
                message: format!(
                    "the latest verification of {name} (snapshot {}, {:.1} h ago) FAILED: {}",
                    escape_name(f.snapshot_id.get(..8).unwrap_or(&f.snapshot_id)),
                    hours(now.saturating_sub(f.at_ms)),
                    f.code.as_deref().unwrap_or("unknown")
                ),
                fix: "sqlvault check --read-data REPO, then back up again".into(),
                fixed: false,
            });
        }
        match verified {
            None => report.findings.push(Finding {
                severity: Severity::Medium,
                code: "repo.never-verified",
                path: where_.clone(),
                message: format!("no snapshot of {name} has ever been verified"),
                fix: format!("sqlvault verify REPO -i KEY --name {name}, on a schedule"),
                fixed: false,
            }),
            Some(v) => {
                let age = now.saturating_sub(v.at_ms);
                report.findings.push(age_finding(
                    &where_,
                    age > max_verify_age.as_millis() as i64,
                    ("repo.verify-stale", "repo.verify-age"),
                    format!(
                        "newest successful verification of {name} (snapshot {}, taken {:.1} h before) was {:.1} h ago",
                        escape_name(v.snapshot_id.get(..8).unwrap_or(&v.snapshot_id)),
                        hours(v.at_ms.saturating_sub(v.snapshot_created_ms)),
                        hours(age)
                    ),
                    format!("sqlvault verify REPO -i KEY --name {name}, on a schedule"),
                ));
            }
        }
    }
    Ok(())
}

/// How old something is: info while fresh; medium, with `fix`, once `stale`.
/// `codes` is (stale, fresh).
fn age_finding(path: &Path, stale: bool, codes: (&'static str, &'static str), message: String, fix: String) -> Finding {
    Finding {
        severity: if stale { Severity::Medium } else { Severity::Info },
        code: if stale { codes.0 } else { codes.1 },
        path: path.to_path_buf(),
        message,
        fix: if stale { fix } else { String::new() },
        fixed: false,
    }
}
