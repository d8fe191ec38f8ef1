//! `sqlvault restore`.

use std::path::PathBuf;

use clap::Args;
use sqlvault_engine::{Error, Repo};

use super::{Ctx, store};
use crate::exit::usage;
use crate::render::{human, print_json, to_json};
use crate::secrets::{ReadKeys, read_db_key, required_access};

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Repository URL or path.
    repo: String,
    /// Destination database file.
    dest: PathBuf,
    #[command(flatten)]
    keys: ReadKeys,
    /// Snapshot id or unique prefix (default: newest).
    #[arg(long)]
    snapshot: Option<String>,
    /// Newest snapshot of this database name (needed, or --snapshot, when the repository
    /// holds several databases: exit 2 otherwise).
    #[arg(long)]
    name: Option<String>,
    /// Replace an existing destination and remove its stale -wal/-shm. Refused while
    /// another process holds it open (exit 7): stop the application first. The new file
    /// keeps the replaced one's owner and group (unless others may write to its
    /// directory) and at most its permissions, never group/other write; a symbolic link
    /// is refused (exit 8).
    #[arg(long)]
    force: bool,
    /// Install the database even though it fails integrity_check, when the snapshot
    /// is proven intact (every page hash and the logical checksum match): the source
    /// was already damaged when it was backed up (exit 15 without this flag). Needs
    /// --snapshot: it accepts that one snapshot.
    #[arg(long)]
    accept_damaged_source: bool,
    /// File holding the database key of a snapshot of a SQLCipher database
    /// (otherwise SQLVAULT_DB_KEY, or a prompt on a terminal).
    #[arg(long = "db-key-file", value_name = "FILE")]
    db_key_file: Option<PathBuf>,
    /// Restore the newest state shipped at or before this time (continuous
    /// replication, `sqlvault replicate`; plain snapshots count too): RFC 3339 in UTC
    /// (2026-11-28T14:03:07Z) or back from now (-15m, -90s, -2h).
    #[arg(long, value_name = "TIME", conflicts_with = "snapshot", allow_hyphen_values = true)]
    at: Option<String>,
    /// Restore the state right after this transaction of the newest replication chain
    /// (segments record transactions counted from the chain's base).
    #[arg(long, value_name = "N", conflicts_with_all = ["snapshot", "at"])]
    txid: Option<u64>,
    /// With --at or --txid: print the plan (base snapshot, segments, bytes) and
    /// restore nothing.
    #[arg(long)]
    dry_run: bool,
    /// Pages restored per pass (0: the engine's default); for tests and memory
    /// measurements.
    #[arg(long, default_value_t = 0, hide = true)]
    pass_pages: usize,
}

/// One warning line for a database installed with `--accept-damaged-source` that
/// fails integrity_check, as its source did.
pub fn damaged_source_warning(what: &str, problems: &[String]) {
    if let Some(first) = problems.first() {
        tracing::warn!(
            "{what} is exactly what was backed up and fails integrity_check as its source did ({} lines; first: {})",
            problems.len(),
            first.replace('\n', " ")
        );
    }
}

pub async fn run(a: RestoreArgs, ctx: &Ctx) -> Result<u8, Error> {
    let acc = required_access(&a.keys, ctx.command)?;
    // Accepting a damaged source is a decision about one snapshot, seen in its
    // error: never a blanket flag a script could carry past a different one.
    if a.accept_damaged_source && a.snapshot.is_none() {
        return Err(usage(
            "--accept-damaged-source needs --snapshot ID: the snapshot whose source damage you accept",
        ));
    }
    if a.dry_run && a.at.is_none() && a.txid.is_none() {
        return Err(usage("--dry-run is for --at or --txid"));
    }
    let spec = match (&a.at, a.txid) {
        (Some(t), _) => Some(sqlvault_engine::PointSpec::At(
            sqlvault_engine::parse_time(t, now_ms()).ok_or_else(|| {
                usage(format!(
                    "--at {t:?} is not a time: give 2026-11-28T14:03:07Z (UTC) or -15m"
                ))
            })?,
        )),
        (None, Some(n)) => Some(sqlvault_engine::PointSpec::Txid(n)),
        _ => None,
    };
    let repo = Repo::open_read(super::session(), store(&a.repo)?, acc).await?;
    // One engine call: it picks the snapshot, and asks for the database key (file,
    // SQLVAULT_DB_KEY or a prompt) only when that snapshot is of a SQLCipher database.
    let key_file = a.db_key_file.clone();
    let opts = sqlvault_engine::RestoreOptions::default()
        .with_snapshot(a.snapshot.clone())
        .with_name(a.name.clone())
        .with_force(a.force)
        .with_db_key_for(move |_| read_db_key(key_file.as_ref(), "SQLVAULT_DB_KEY", Some("database key"), false))
        .with_accept_damaged_source(a.accept_damaged_source)
        .with_pass_pages(a.pass_pages);
    let rep = match spec {
        None => sqlvault_engine::restore(&repo, &a.dest, opts).await?,
        Some(spec) => {
            let plan = sqlvault_engine::plan_point(&repo, a.name.as_deref(), spec).await?;
            if a.dry_run {
                if ctx.json {
                    print_json(&to_json(&plan));
                } else {
                    print_plan(&plan);
                }
                return Ok(0);
            }
            if ctx.chatty() {
                print_plan(&plan);
            }
            sqlvault_engine::restore_point(&repo, &plan, &a.dest, opts).await?
        }
    };
    damaged_source_warning(&format!("snapshot {}", &rep.snapshot_id[..8]), &rep.source_problems);
    if ctx.json {
        print_json(&to_json(&rep));
        return Ok(0);
    }
    println!(
        "restored snapshot {} of {} to {} ({}) in {:.2}s; {} and checksum verified in {:.2}s",
        &rep.snapshot_id[..8],
        rep.name,
        rep.path,
        human(rep.bytes),
        rep.restore_seconds,
        if rep.source_problems.is_empty() {
            "integrity_check ok"
        } else {
            "integrity_check FAILED as the source's did"
        },
        rep.check_seconds
    );
    for l in &rep.not_checked {
        println!("  note: {l}");
    }
    Ok(0)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn print_plan(p: &sqlvault_engine::PointPlan) {
    let when = sqlvault_engine::retention::iso_time(p.observed_ms);
    if p.segments == 0 {
        println!(
            "plan: snapshot {} of {} ({}), taken {when}",
            &p.base[..8],
            p.name,
            human(p.page_count as u64 * p.page_size as u64)
        );
    } else {
        println!(
            "plan: snapshot {} of {} then {} of its chain ({} stored), the state observed at {when}{} ({})",
            &p.base[..8],
            p.name,
            crate::render::count(p.segments as usize, "segment", "segments"),
            human(p.segment_bytes),
            p.txid.map(|t| format!(", transaction {t}")).unwrap_or_default(),
            human(p.page_count as u64 * p.page_size as u64)
        );
    }
}
