//! `sqlvault snapshots`.

use clap::Args;
use serde_json::json;
use sqlvault_engine::Error;
use sqlvault_format::Manifest;

use super::{Ctx, open_either};
use crate::render::{counts, future_dated, human, print_json, snapshot_json, time_str};
use crate::secrets::ReadKeys;

#[derive(Args, Debug)]
pub struct SnapshotsArgs {
    /// Repository URL or path.
    repo: String,
    /// Only snapshots of this database name.
    #[arg(long)]
    name: Option<String>,
    /// Per database: the span `restore --at` can reach (from the oldest snapshot to the
    /// newest segment), each replication chain with its resolution, and the breaks
    /// that started new chains.
    #[arg(long)]
    timeline: bool,
    #[command(flatten)]
    keys: ReadKeys,
}

pub async fn run(a: SnapshotsArgs, ctx: &Ctx) -> Result<u8, Error> {
    let repo = open_either(&a.repo, &a.keys).await?;
    if a.timeline {
        return timeline(&repo, a.name.as_deref(), ctx).await;
    }
    let snaps: Vec<Manifest> = repo
        .snapshots()
        .await?
        .into_iter()
        .filter(|m| a.name.as_ref().is_none_or(|n| &m.name == n))
        .collect();
    if ctx.json {
        print_json(&json!({"snapshots": snaps.iter().map(snapshot_json).collect::<Vec<_>>()}));
        return Ok(0);
    }
    println!(
        "{:<10} {:<21} {:<24} {:<6} {:>10} {:>12}  {}",
        "ID", "TIME", "NAME", "KIND", "PAGES", "SIZE", "SOURCE"
    );
    for m in &snaps {
        println!(
            "{:<10} {:<21} {:<24} {:<6} {:>10} {:>12}  {}{}",
            m.id.short(),
            time_str(m.created_ms),
            m.name,
            m.kind,
            m.page_count,
            human(m.db_size()),
            sqlvault_engine::names::SourceId::of(m).describe(),
            if future_dated(m) { "  FUTURE-DATED" } else { "" }
        );
        if let Some(c) = m.source_check.as_ref().filter(|c| !c.ok) {
            println!(
                "{:<10} the source failed integrity_check when backed up: {}",
                "",
                c.problems.first().map(|l| l.replace('\n', " ")).unwrap_or_default()
            );
        }
    }
    println!("{}", counts(snaps.len(), "snapshot"));
    let future = snaps.iter().filter(|m| future_dated(m)).count();
    if future > 0 {
        println!(
            "{future} future-dated (more than {} ahead of this host's clock): never picked as the newest, kept by no retention rule; see README, Retention",
            sqlvault_engine::retention::describe(sqlvault_engine::retention::CLOCK_SKEW)
        );
    }
    Ok(0)
}

async fn timeline(repo: &sqlvault_engine::Repo, name: Option<&str>, ctx: &Ctx) -> Result<u8, Error> {
    let t = sqlvault_engine::timeline(repo, name).await?;
    if ctx.json {
        print_json(&json!({ "timeline": t }));
        return Ok(0);
    }
    for d in &t {
        println!(
            "{} from {}: restorable from {} to {} ({})",
            d.name,
            if d.host.is_empty() {
                "an unrecorded source".to_string()
            } else {
                format!("{}:{}", d.host, d.source_path)
            },
            time_str(d.from_ms),
            time_str(d.to_ms),
            counts(d.snapshots, "snapshot")
        );
        for c in &d.chains {
            println!(
                "  chain {} {} to {}: {}{}{}{}",
                &c.base[..8],
                time_str(c.from_ms),
                time_str(c.to_ms),
                counts(c.segments as usize, "segment"),
                c.resolution_ms
                    .map(|r| format!(", one every {:.1}s", r as f64 / 1000.0))
                    .unwrap_or_default(),
                c.started_by
                    .as_ref()
                    .filter(|r| r.as_str() != "start")
                    .map(|r| format!(", started after a break: {r}"))
                    .unwrap_or_default(),
                if c.missing.is_empty() {
                    String::new()
                } else {
                    format!(", MISSING segments {:?}: later points are not restorable", c.missing)
                }
            );
        }
    }
    Ok(0)
}
