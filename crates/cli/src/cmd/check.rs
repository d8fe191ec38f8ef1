//! `sqlvault check`.

use clap::Args;
use sqlvault_engine::{Error, ErrorKind, Repo};

use super::{Ctx, open_either, store};
use crate::exit::kind_code;
use crate::render::{counts, human, print_json, to_json};
use crate::secrets::{ReadKeys, required_access};

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Repository URL or path.
    repo: String,
    #[command(flatten)]
    keys: ReadKeys,
    /// Download and authenticate every pack.
    #[arg(long, conflicts_with = "cost")]
    read_data: bool,
    /// Instead of checking: the repository's objects and bytes by kind, and the
    /// requests a typical incremental backup makes (a write key is enough).
    #[arg(long)]
    cost: bool,
}

/// Backups a month when made hourly: what `--cost` projects to.
const HOURLY_PER_MONTH: u64 = 730;

pub async fn run(a: CheckArgs, ctx: &Ctx) -> Result<u8, Error> {
    if a.cost {
        return cost(a, ctx).await;
    }
    let acc = required_access(&a.keys, ctx.command)?;
    let repo = Repo::open_read(super::session(), store(&a.repo)?, acc).await?;
    let rep = sqlvault_engine::check(
        &repo,
        sqlvault_engine::CheckOptions::default().with_read_data(a.read_data),
    )
    .await?;
    if ctx.json {
        print_json(&to_json(&rep));
    } else {
        println!(
            "{}, {} ({} read), {} referenced: {}",
            counts(rep.snapshots, "snapshot"),
            counts(rep.packs, "pack"),
            rep.packs_read,
            counts(rep.chunks_referenced, "chunk"),
            if rep.problems.is_empty() {
                "no problems"
            } else {
                "PROBLEMS FOUND"
            }
        );
        for p in &rep.problems {
            println!("  [{}] {}", p.code, p.message);
        }
    }
    if let Some(p) = rep.problems.first() {
        eprintln!(
            "sqlvault: error: check found {}; first: {}",
            counts(rep.problems.len(), "problem"),
            p.message
        );
        return Ok(kind_code(ErrorKind::Integrity));
    }
    Ok(0)
}

async fn cost(a: CheckArgs, ctx: &Ctx) -> Result<u8, Error> {
    let repo = open_either(&a.repo, &a.keys).await?;
    let rep = sqlvault_engine::cost(&repo).await?;
    if ctx.json {
        print_json(&to_json(&rep));
        return Ok(0);
    }
    println!("{:<12} {:>9} {:>12}", "KIND", "OBJECTS", "BYTES");
    for k in &rep.kinds {
        println!("{:<12} {:>9} {:>12}", k.kind, k.objects, human(k.bytes));
    }
    println!("{:<12} {:>9} {:>12}", "total", rep.objects, human(rep.bytes));
    println!(
        "{}, {} incremental",
        counts(rep.snapshots, "snapshot"),
        rep.incremental_snapshots
    );
    match &rep.typical_incremental {
        Some(t) => {
            let r = &t.requests;
            println!(
                "typical incremental backup (median of the newest {}): {} PUT, {} GET, {} LIST, {} HEAD, {} DELETE; {} uploaded, {} read",
                t.sampled,
                r.put,
                r.get,
                r.list,
                r.head,
                r.delete,
                human(t.bytes_new),
                human(t.bytes_read)
            );
            let o = &rep.open_requests;
            println!(
                "  plus opening the repository, once per command: {} GET, {} LIST, {} HEAD",
                o.get, o.list, o.head
            );
            let m = HOURLY_PER_MONTH;
            println!(
                "hourly, a month ({m} backups, each its own command): {} PUT, {} GET, {} LIST, {} HEAD, {} DELETE; {} uploaded",
                // Figures a backup host wrote: saturating, never wrapping.
                r.put.saturating_mul(m),
                r.get.saturating_add(o.get).saturating_mul(m),
                r.list.saturating_add(o.list).saturating_mul(m),
                r.head.saturating_add(o.head).saturating_mul(m),
                r.delete.saturating_mul(m),
                human(t.bytes_new.saturating_mul(m))
            );
        }
        None => println!("typical incremental backup: not known yet (no incremental snapshot recorded its requests)"),
    }
    Ok(0)
}
