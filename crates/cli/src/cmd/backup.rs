//! `sqlvault backup`: one database into one or several repositories.

use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::json;
use sqlvault_engine::{BackupReport, Error, ErrorKind, Repo};

use super::{Ctx, busy, store};
use crate::exit::{error_json, kind_code, usage};
use crate::render::{human, print_json, to_json};
use crate::secrets::{DbKeyArgs, source_unlock};

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// The SQLite database to back up.
    db: PathBuf,
    /// Repository URL or path; several write one snapshot (the database is read once)
    /// to each, in parallel. Exit 10 when some succeed and others fail.
    #[arg(required = true, value_name = "REPO")]
    repos: Vec<String>,
    /// Database name in the repository (default: the file name). A name belongs to the
    /// host and path that first backed up under it: another source is refused (exit 8,
    /// `backup.name-taken`).
    #[arg(long)]
    name: Option<String>,
    /// The database moved (another path or host): take over its name from the source
    /// the repository records. Snapshots of the old source stay, in a retention group
    /// of their own.
    #[arg(long)]
    adopt_name: bool,
    /// One writer per database name: hold the name's lease in each repository while
    /// backing up, so that another host backing up the same name (with --lease too) is
    /// refused (exit 14, `lease.held`, naming the holder) until this one is done. The
    /// lease is renewed every third of --lease-ttl; a holder that stops renewing (killed)
    /// blocks others for --lease-ttl at most. Needs overwrite permission on `leases/`.
    #[arg(long)]
    lease: bool,
    /// The lease's time to live, in seconds (at least 5).
    #[arg(long, default_value_t = 300, value_name = "SECONDS", requires = "lease", value_parser = clap::value_parser!(u64).range(5..=86400))]
    lease_ttl: u64,
    /// Longest wait for the application's locks, in seconds.
    #[arg(long, default_value_t = 10.0)]
    busy_timeout: f64,
    /// zstd level.
    #[arg(long, default_value_t = 3)]
    level: i32,
    /// Seal and upload packs at this many MiB.
    #[arg(long, default_value_t = 16)]
    pack_size: usize,
    /// What the snapshot holds: the database's pages (restores byte for byte), or a
    /// lossless SQL dump (readable, portable, deduplicated between dumps).
    #[arg(long, value_enum, default_value_t = KindArg::Pages)]
    kind: KindArg,
    /// Also run SQLite's integrity_check on exactly the state the snapshot holds (page
    /// snapshots; it reads the database once more): a failure is warned about and
    /// recorded in the snapshot, and the backup is still taken. `auto` (the default)
    /// checks databases of at most 64 MiB, where it costs little; `--integrity-check`
    /// alone means `always`.
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = CheckArg::Auto, num_args = 0..=1, default_missing_value = "always")]
    integrity_check: CheckArg,
    #[command(flatten)]
    db_key: DbKeyArgs,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum CheckArg {
    Auto,
    Always,
    Never,
}

/// `--integrity-check auto` checks databases up to this size (main file and `-wal`):
/// integrity_check reads about 80 MB/s of plaintext here (13 s for 1 GiB), so a
/// small database pays well under a second while a large one's backups keep their pace.
const AUTO_CHECK_MAX: u64 = 64 << 20;

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum KindArg {
    Pages,
    Dump,
}

/// One warning line when `backup --integrity-check` found the source damaged (the
/// snapshot was taken and records it).
fn warn_source_check(db: &Path, rep: &BackupReport) {
    if let Some(c) = rep.source_check.as_ref().filter(|c| !c.ok) {
        tracing::warn!(
            "{} fails integrity_check ({}); snapshot {} holds it as it is and records this",
            db.display(),
            c.problems
                .iter()
                .take(3)
                .map(|l| l.replace('\n', " "))
                .collect::<Vec<_>>()
                .join("; "),
            &rep.snapshot_id[..8]
        );
    }
}

fn summary(rep: &BackupReport, to: &str) -> String {
    format!(
        "snapshot {} of {} saved to {to} ({}): {} chunks read ({}), {} new chunks, {} stored, {:.2}s",
        &rep.snapshot_id[..8],
        rep.name,
        rep.kind,
        rep.chunks_total,
        human(rep.bytes_read),
        rep.chunks_new,
        human(rep.bytes_new),
        rep.seconds
    )
}

pub async fn run(a: BackupArgs, ctx: &Ctx) -> Result<u8, Error> {
    let dump = matches!(a.kind, KindArg::Dump);
    if a.integrity_check == CheckArg::Always && dump {
        return Err(usage(
            "--integrity-check is for page snapshots (a dump snapshot is loaded and checked when restored)",
        ));
    }
    let check = match a.integrity_check {
        CheckArg::Always => true,
        CheckArg::Never => false,
        CheckArg::Auto => {
            let len = |p: &Path| std::fs::metadata(p).map(|m| m.len());
            let mut wal = a.db.as_os_str().to_owned();
            wal.push("-wal");
            let size = len(&a.db)
                .unwrap_or(u64::MAX)
                .saturating_add(len(Path::new(&wal)).unwrap_or(0));
            !dump && size <= AUTO_CHECK_MAX
        }
    };
    let opts = sqlvault_engine::BackupOptions::default()
        .with_integrity_check(check)
        .with_name(a.name.clone())
        .with_adopt_name(a.adopt_name)
        .with_lease(a.lease.then(|| std::time::Duration::from_secs(a.lease_ttl)))
        .with_level(a.level)
        .with_pack_target(a.pack_size << 20)
        .with_busy_timeout(busy(a.busy_timeout)?)
        .with_kind(match a.kind {
            KindArg::Pages => sqlvault_engine::BackupKind::Pages,
            KindArg::Dump => sqlvault_engine::BackupKind::Dump,
        })
        .with_unlock(source_unlock(&a.db, &a.db_key)?);
    if a.repos.len() == 1 {
        let repo = Repo::open_write(super::session(), store(&a.repos[0])?).await?;
        let rep = sqlvault_engine::backup(&repo, &a.db, opts).await?;
        warn_source_check(&a.db, &rep);
        if ctx.json {
            print_json(&to_json(&rep));
        } else {
            println!("{}", summary(&rep, &a.repos[0]));
        }
        return Ok(0);
    }
    // Several destinations: each opened, written and reported on its own.
    let opened = futures::future::join_all(a.repos.iter().map(|url| async move {
        let s = store(url)?;
        Repo::open_write(super::session(), s).await
    }))
    .await;
    let mut repos = Vec::new();
    let mut results: Vec<Option<Result<BackupReport, Error>>> = Vec::new();
    for r in opened {
        match r {
            Ok(repo) => {
                repos.push(repo);
                results.push(None);
            }
            Err(e) => results.push(Some(Err(e))),
        }
    }
    let mut written = sqlvault_engine::backup_to_all(&repos, &a.db, opts).await?.into_iter();
    let results: Vec<Result<BackupReport, Error>> = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| written.next().expect("one result per opened repository")))
        .collect();
    if let Some(rep) = results.iter().find_map(|r| r.as_ref().ok()) {
        warn_source_check(&a.db, rep);
    }
    let failed: Vec<(&String, &Error)> = a
        .repos
        .iter()
        .zip(&results)
        .filter_map(|(u, r)| r.as_ref().err().map(|e| (u, e)))
        .collect();
    if ctx.json {
        let dests: Vec<serde_json::Value> = a
            .repos
            .iter()
            .zip(&results)
            .map(|(u, r)| match r {
                Ok(rep) => json!({"repo": u, "ok": true, "report": rep}),
                Err(e) => json!({"repo": u, "ok": false, "error": error_json(e, ctx)}),
            })
            .collect();
        print_json(&json!({
            "ok": failed.is_empty(),
            "succeeded": results.len() - failed.len(),
            "failed": failed.len(),
            "destinations": dests,
        }));
    } else {
        for (u, r) in a.repos.iter().zip(&results) {
            match r {
                Ok(rep) => println!("{}", summary(rep, u)),
                Err(e) => println!("{u}: FAILED: {}", e.one_line()),
            }
        }
    }
    match failed.as_slice() {
        [] => Ok(0),
        // Nothing written anywhere: the error of the first destination, its exit code.
        [(_, e), ..] if failed.len() == results.len() => {
            eprintln!(
                "sqlvault: error: backup failed for all {} destinations; first: {}",
                results.len(),
                e.one_line()
            );
            if let Some(h) = crate::exit::hint_for(e, ctx.command) {
                eprintln!("hint: {h}");
            }
            Ok(crate::exit::exit_code(e))
        }
        _ => {
            let names: Vec<String> = failed.iter().map(|(u, e)| format!("{u} ({})", e.code())).collect();
            eprintln!(
                "sqlvault: error: partial backup: {} of {} destinations written; failed: {}",
                results.len() - failed.len(),
                results.len(),
                names.join(", ")
            );
            Ok(kind_code(ErrorKind::Partial))
        }
    }
}
