//! `sqlvault verify`.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;
use sqlvault_engine::{Error, ErrorKind, Repo};
use sqlvault_format::Manifest;

use super::{Ctx, store};
use crate::exit::kind_code;
use crate::render::print_json;
use crate::secrets::{ReadKeys, read_db_key, required_access};

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Repository URL or path.
    repo: String,
    #[command(flatten)]
    keys: ReadKeys,
    /// Snapshot id or unique prefix (default: newest).
    #[arg(long, conflicts_with = "all")]
    snapshot: Option<String>,
    /// Only snapshots of this database name (without --all: its newest; needed, or
    /// --snapshot, when the repository holds several databases).
    #[arg(long)]
    name: Option<String>,
    /// Every snapshot (of --name, when given), not only the newest.
    #[arg(long)]
    all: bool,
    /// Verify the state restorable at this time instead (replicated databases: a base
    /// and its segments, checked by the state checksum): RFC 3339 UTC or -15m.
    #[arg(long, value_name = "TIME", conflicts_with_all = ["snapshot", "all"], allow_hyphen_values = true)]
    at: Option<String>,
    /// Verify N points at random times of each database's timeline (of --name, when
    /// given), from its oldest restorable state to its newest.
    #[arg(long, value_name = "N", conflicts_with_all = ["snapshot", "all", "at"])]
    points: Option<u32>,
    /// File holding the database key of snapshots of SQLCipher databases
    /// (otherwise SQLVAULT_DB_KEY, or a prompt on a terminal).
    #[arg(long = "db-key-file", value_name = "FILE")]
    db_key_file: Option<PathBuf>,
    /// Do not record the results as evidence in the repository (by default each
    /// result is written to evidence/, read by `audit --repo`).
    #[arg(long)]
    no_evidence: bool,
    /// Pages restored per pass (0: the engine's default); for tests and memory
    /// measurements.
    #[arg(long, default_value_t = 0, hide = true)]
    pass_pages: usize,
}

pub async fn run(a: VerifyArgs, ctx: &Ctx) -> Result<u8, Error> {
    let acc = required_access(&a.keys, ctx.command)?;
    let repo = Repo::open_read(super::session(), store(&a.repo)?, acc).await?;
    if a.at.is_some() || a.points.is_some() {
        return verify_points(&repo, &a, ctx).await;
    }
    // With --all, a manifest the repository wrote that is damaged fails the
    // verification (after the others are verified); junk is only warned about.
    let mut damage = None;
    let snaps = if a.all {
        let (all, skipped) = repo.snapshots_checked().await?;
        damage = sqlvault_engine::Skipped::damage(&skipped);
        // The damage that becomes the error is reported by it, not warned about too.
        let reported = skipped.iter().position(|s| !s.is_foreign());
        for (i, s) in skipped.iter().enumerate() {
            if Some(i) != reported {
                tracing::warn!("skipping {}: {}", s.key, s.message);
            }
        }
        let all: Vec<Manifest> = all
            .into_iter()
            .filter(|m| a.name.as_ref().is_none_or(|n| &m.name == n))
            .collect();
        if all.is_empty() {
            if let Some(e) = damage {
                return Err(e);
            }
            return Err(Error::new(
                ErrorKind::NotFound,
                "snapshot.not-found",
                "no snapshots to verify",
            ));
        }
        all
    } else {
        vec![repo.find_snapshot(a.snapshot.as_deref(), a.name.as_deref()).await?]
    };
    let db_key = read_db_key(
        a.db_key_file.as_ref(),
        "SQLVAULT_DB_KEY",
        snaps.iter().any(|m| m.cipher.is_some()).then_some("database key"),
        false,
    )?;
    let reports = sqlvault_engine::verify(
        &repo,
        snaps,
        &sqlvault_engine::RestoreOptions::default()
            .with_db_key(db_key)
            .with_evidence(!a.no_evidence)
            .with_pass_pages(a.pass_pages),
    )
    .await?;
    let failed: Vec<_> = reports.iter().filter(|r| !r.ok).collect();
    if ctx.json {
        print_json(&json!({"ok": failed.is_empty() && damage.is_none(), "snapshots": reports}));
    } else {
        for r in &reports {
            if r.ok {
                println!(
                    "snapshot {} of {}: ok (restore {:.2}s, integrity_check + checksum {:.2}s)",
                    &r.snapshot_id[..8],
                    r.name,
                    r.restore_seconds,
                    r.check_seconds
                );
                for l in &r.not_checked {
                    println!("  note: {l}");
                }
            } else {
                println!(
                    "snapshot {} of {}: FAILED: {}",
                    &r.snapshot_id[..8],
                    r.name,
                    r.error.as_deref().unwrap_or("")
                );
            }
        }
    }
    if let Some(f) = failed.first() {
        // The failed verification is the error; the damaged manifest, held back above
        // to be the error, would go unmentioned.
        if let Some(e) = &damage {
            tracing::warn!("{}", e.one_line());
        }
        eprintln!(
            "sqlvault: error: verification failed for snapshot {}: {}",
            &f.snapshot_id[..8],
            f.error.as_deref().unwrap_or("")
        );
        // A snapshot proven intact whose source was already damaged is not a
        // damaged backup: it has its own exit code, unless a backup failed too.
        let only_sources = failed
            .iter()
            .all(|r| r.code.as_deref() == Some("restore.source-damaged"));
        if only_sources && let Some(h) = crate::exit::hint("restore.source-damaged", ctx.command) {
            eprintln!("hint: {h}");
        }
        return Ok(if only_sources {
            kind_code(ErrorKind::SourceDamaged)
        } else {
            kind_code(ErrorKind::Integrity)
        });
    }
    if let Some(e) = damage {
        return Err(e);
    }
    Ok(0)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `verify --at` / `--points`: points in time, restored into scratch and checked.
async fn verify_points(repo: &Repo, a: &VerifyArgs, ctx: &Ctx) -> Result<u8, Error> {
    use sqlvault_engine::PointSpec;
    let mut plans = Vec::new();
    if let Some(t) = &a.at {
        let at = sqlvault_engine::parse_time(t, now_ms()).ok_or_else(|| {
            crate::exit::usage(format!(
                "--at {t:?} is not a time: give 2026-11-28T14:03:07Z (UTC) or -15m"
            ))
        })?;
        plans.push(sqlvault_engine::plan_point(repo, a.name.as_deref(), PointSpec::At(at)).await?);
    }
    if let Some(n) = a.points {
        // Random times, not reproducible on purpose: each run looks somewhere new.
        let mut x = (now_ms() as u64) ^ 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
        for t in sqlvault_engine::timeline(repo, a.name.as_deref()).await? {
            for _ in 0..n {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let span = (t.to_ms - t.from_ms).max(0) as u64;
                let at = t.from_ms + (x % (span + 1)) as i64;
                plans.push(sqlvault_engine::plan_point(repo, Some(&t.name), PointSpec::At(at)).await?);
            }
        }
        if plans.is_empty() {
            return Err(Error::new(
                ErrorKind::NotFound,
                "snapshot.not-found",
                "no snapshots to verify",
            ));
        }
    }
    let db_key = read_db_key(a.db_key_file.as_ref(), "SQLVAULT_DB_KEY", None, false)?;
    let reports = sqlvault_engine::verify_points(
        repo,
        plans,
        &sqlvault_engine::RestoreOptions::default()
            .with_db_key(db_key)
            .with_evidence(!a.no_evidence)
            .with_pass_pages(a.pass_pages),
    )
    .await?;
    let failed: Vec<_> = reports.iter().filter(|r| !r.ok).collect();
    if ctx.json {
        print_json(&json!({"ok": failed.is_empty(), "points": reports}));
    } else {
        for r in &reports {
            println!(
                "{} at {}: {}",
                r.name,
                r.point.as_deref().unwrap_or(""),
                match r.ok {
                    true => format!("ok (restore {:.2}s, checks {:.2}s)", r.restore_seconds, r.check_seconds),
                    false => format!("FAILED: {}", r.error.as_deref().unwrap_or("")),
                }
            );
        }
    }
    if let Some(f) = failed.first() {
        eprintln!(
            "sqlvault: error: verification failed at {}: {}",
            f.point.as_deref().unwrap_or(""),
            f.error.as_deref().unwrap_or("")
        );
        return Ok(kind_code(ErrorKind::Integrity));
    }
    Ok(0)
}
