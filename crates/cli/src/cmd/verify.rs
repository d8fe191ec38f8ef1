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
