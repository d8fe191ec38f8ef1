//! `sqlvault prune`, and the prune options and report `forget --prune` shares.

use std::time::Duration;

use clap::Args;
use sqlvault_engine::{Error, PruneOptions, PruneReport, Tally};

use super::{Ctx, open_either, parse_duration};
use crate::exit::usage;
use crate::render::{count, counts, human, print_json, time_str, to_json};
use crate::secrets::ReadKeys;

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Repository URL or path.
    repo: String,
    /// Show what would be deleted, marked and repacked without changing anything.
    #[arg(long)]
    dry_run: bool,
    /// Grace period between marking and deleting, recorded in the repository (default:
    /// the repository's, 24h at first; at least 1h). It is also the longest a backup or
    /// copy may run, on every host: one that runs longer fails (exit 14) instead of
    /// committing, so it must exceed your longest backup. Lowering it applies to marks
    /// made from now on, and to backups only after the old grace has passed (unless
    /// --no-running-backups).
    #[arg(long, value_parser = parse_duration)]
    grace: Option<Duration>,
    /// Repack packs whose referenced bytes are below this fraction (0 disables).
    #[arg(long, default_value_t = 0.5)]
    repack_below: f64,
    /// Assert that no backup or copy is running against the repository now: marks
    /// already made are deleted in this run (when still unreferenced) without waiting
    /// for the grace, and a lowered --grace applies at once. New garbage is only marked.
    /// Wrong, it can delete data a running backup is about to commit.
    #[arg(long)]
    no_running_backups: bool,
    /// Replace prune's stored state when it cannot be read (exit 6 otherwise). Its marks
    /// are lost: unreferenced objects are marked again and wait a new grace period, but
    /// packs an earlier repack had made redundant are not reclaimed. Give --grace again
    /// if you had raised it.
    #[arg(long)]
    reset_damaged_state: bool,
    #[command(flatten)]
    keys: ReadKeys,
}

pub async fn run(a: PruneArgs, ctx: &Ctx) -> Result<u8, Error> {
    let repo = open_either(&a.repo, &a.keys).await?;
    let opts = options(a.dry_run, a.grace, a.repack_below, a.no_running_backups)?
        .with_reset_damaged_state(a.reset_damaged_state);
    let rep = sqlvault_engine::prune(&repo, &opts).await?;
    if ctx.json {
        print_json(&report_json(&rep));
    } else {
        print_report(&rep);
    }
    Ok(0)
}

/// Prune's options, checked before anything is changed.
pub fn options(
    dry_run: bool,
    grace: Option<Duration>,
    repack_below: f64,
    no_running_backups: bool,
) -> Result<PruneOptions, Error> {
    if !(0.0..=1.0).contains(&repack_below) {
        return Err(usage("--repack-below is a fraction between 0 and 1"));
    }
    if let Some(g) = grace {
        sqlvault_engine::check_grace(g)?;
    }
    Ok(PruneOptions::default()
        .with_dry_run(dry_run)
        .with_grace(grace)
        .with_repack_below(repack_below)
        .with_no_running_backups(no_running_backups))
}

/// The report as JSON, with the next deletion's time as every output writes times.
pub fn report_json(r: &PruneReport) -> serde_json::Value {
    let mut v = to_json(r);
    if let Some(at) = r.next_deletion_ms {
        v["next_deletion"] = serde_json::json!(time_str(at));
    }
    v
}

fn tally(t: &Tally) -> String {
    format!(
        "{}, {}, {} ({})",
        counts(t.packs, "pack"),
        counts(t.maps, "map"),
        count(t.indexes, "index", "indexes"),
        human(t.bytes)
    )
}

pub fn print_report(r: &PruneReport) {
    let (would, would_paren) = if r.dry_run {
        ("would be ", " (would be)")
    } else {
        ("", "")
    };
    println!(
        "{}, {} ({}) in the repository",
        counts(r.snapshots, "snapshot"),
        counts(r.packs, "pack"),
        human(r.pack_bytes)
    );
    println!("deleted{would_paren}: {}", tally(&r.deleted));
    if r.repacked > 0 {
        println!(
            "repacked{would_paren}: {} ({} into {})",
            count(r.repacked, "mostly-unused pack", "mostly-unused packs"),
            counts(r.repacked_chunks, "chunk"),
            count(r.repack_packs_written, "new pack", "new packs")
        );
    }
    if let Some(why) = &r.repack_skipped {
        println!("repack skipped: {why}");
    }
    if let Some(l) = &r.object_lock {
        if l.held.packs + l.held.maps + l.held.indexes > 0 {
            println!(
                "held by S3 Object Lock{would_paren}: {}, until as late as {}; deleted by a prune after that",
                tally(&l.held),
                l.held_until_ms.map(time_str).unwrap_or_default()
            );
        }
        let e = &l.extended;
        if e.objects > 0 {
            println!(
                "Object Lock extended: {} until {} ({} already far enough)",
                count(e.objects, "object", "objects"),
                e.until_ms.map(time_str).unwrap_or_default(),
                e.already
            );
        }
        if let Some(f) = &e.first_failure {
            println!(
                "Object Lock extension refused for {}: {f}",
                count(e.failed, "object", "objects")
            );
        }
    }
    if r.kept_in_doubt > 0 {
        println!(
            "kept: {} due for deletion, because no pack trailer proved their referenced chunks are held elsewhere (prune with -i to check), or an index could not be read",
            counts(r.kept_in_doubt, "pack")
        );
    }
    for s in &r.skipped {
        println!("skipped {}: {}", s.key, s.message);
    }
    println!("{would}marked for deletion: {}", tally(&r.marked));
    if r.waiting.packs + r.waiting.maps + r.waiting.indexes > 0 {
        println!("still waiting for the grace period: {}", tally(&r.waiting));
    }
    if let Some(at) = r.next_deletion_ms {
        println!(
            "marked objects are deleted by a prune run after {} (grace {})",
            time_str(at),
            sqlvault_engine::retention::describe(Duration::from_secs(r.grace_seconds))
        );
    }
}
