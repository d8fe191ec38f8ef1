//! `sqlvault replicate`: continuous replication of a live WAL-mode database.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;
use sqlvault_engine::{Error, Repo};

use super::{Ctx, busy, parse_duration, store};
use crate::render::{human, print_json, to_json};
use crate::secrets::{DbKeyArgs, source_unlock};

#[derive(Args, Debug)]
pub struct ReplicateArgs {
    /// The SQLite database (WAL mode) to replicate.
    db: PathBuf,
    /// Repository URL or path; each destination keeps its own chain.
    #[arg(required = true, value_name = "REPO")]
    repos: Vec<String>,
    /// Database name in the repository (default: the file name).
    #[arg(long)]
    name: Option<String>,
    /// Longest time between a commit and the segment that ships it (e.g. 1s, 250ms).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: std::time::Duration,
    /// Longest wait for the application's locks, in seconds.
    #[arg(long, default_value_t = 10.0)]
    busy_timeout: f64,
    /// A change of more than this many MiB between two segments starts a new chain
    /// (a base snapshot that uploads only what changed) instead of one large segment.
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    max_segment: usize,
    /// Compact a chain after this many segments: a snapshot of its newest state is
    /// written from the maps alone (no database read, no upload of pages) and the
    /// chain goes on from it, so a restore applies at most this many segments.
    #[arg(long, default_value_t = 300, value_name = "N")]
    compact_segments: u64,
    /// …or once its first segment is this old (e.g. 5m).
    #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "AGE")]
    compact_after: std::time::Duration,
    #[command(flatten)]
    db_key: DbKeyArgs,
}

pub async fn run(a: ReplicateArgs, ctx: &Ctx) -> Result<u8, Error> {
    if a.interval < std::time::Duration::from_millis(10) || a.interval > std::time::Duration::from_secs(3600) {
        return Err(crate::exit::usage("--interval must be between 10ms and 1h"));
    }
    let stop = sqlvault_engine::Cancel::default();
    let _ = crate::GRACEFUL.set(stop.clone());
    // A long-lived process: its bases read with one worker and smaller packs, so its
    // peak memory stays low (a base is rare; its speed matters less than a backup's).
    let base = sqlvault_engine::BackupOptions::default()
        .with_threads(1)
        .with_pack_target(8 << 20)
        .with_name(a.name.clone())
        .with_busy_timeout(busy(a.busy_timeout)?)
        .with_unlock(source_unlock(&a.db, &a.db_key)?);
    let opts = sqlvault_engine::ReplicateOptions::default()
        .with_interval(a.interval)
        .with_base(base)
        .with_max_cut_bytes(a.max_segment.max(1) << 20)
        .with_compaction(a.compact_segments, a.compact_after)
        .with_stop(stop);
    let mut repos = Vec::new();
    for url in &a.repos {
        repos.push(Repo::open_write(super::session(), store(url)?).await?);
    }
    if ctx.chatty() {
        eprintln!(
            "replicating {} to {} every {:?}; SIGTERM or Ctrl-C ships what is committed and stops",
            a.db.display(),
            crate::render::count(repos.len(), "repository", "repositories"),
            a.interval
        );
    }
    let rep = sqlvault_engine::replicate(&repos, &a.db, opts).await?;
    if ctx.json {
        print_json(&to_json(&rep));
    } else if !ctx.quiet {
        for d in &rep.destinations {
            println!(
                "{} → {}: {} (chain {}, last {}), {} stored{}",
                rep.name,
                d.repo,
                crate::render::count(d.segments as usize, "segment", "segments"),
                d.chain.get(..8).unwrap_or("-"),
                d.last_seq,
                human(d.bytes_new),
                d.last_error
                    .as_ref()
                    .map(|e| format!("; last error: {e}"))
                    .unwrap_or_default()
            );
        }
        println!(
            "{} transactions followed, {} base snapshots, {} WAL restarts followed{}",
            rep.commits,
            rep.bases,
            rep.wal_restarts,
            if rep.breaks.is_empty() {
                String::new()
            } else {
                format!("; new chains: {}", json!(rep.breaks))
            }
        );
    }
    let failing = rep.destinations.iter().any(|d| d.last_error.is_some());
    Ok(if failing { 10 } else { 0 })
}
