//! `sqlvault forget`.

use std::time::Duration;

use clap::Args;
use serde_json::json;
use sqlvault_engine::Error;

use super::{Ctx, open_either, parse_duration};
use crate::exit::usage;
use crate::render::{counts, print_json, time_str, to_json};
use crate::secrets::ReadKeys;

#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// Repository URL or path.
    repo: String,
    /// Keep the N newest snapshots.
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_last: u32,
    /// Keep the newest snapshot of each of the last N hours that have snapshots.
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_hourly: u32,
    /// … of each of the last N days (local time) that have snapshots.
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_daily: u32,
    /// … of each of the last N ISO weeks that have snapshots.
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_weekly: u32,
    /// … of each of the last N months that have snapshots.
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_monthly: u32,
    /// … of each of the last N years that have snapshots.
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_yearly: u32,
    /// Keep every snapshot made within this long before the newest one (e.g. 36h, 14d).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    keep_within: Option<Duration>,
    /// Point-in-time window of replicated databases (`sqlvault replicate`): every state
    /// shipped within this long before now stays restorable; the segments of chains
    /// that ended before it are removed (their bases then follow the other rules).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pitr_window: Option<Duration>,
    /// Only snapshots of this database name.
    #[arg(long)]
    name: Option<String>,
    /// Show the plan (keep/remove, and the rule that kept each) without removing.
    #[arg(long)]
    dry_run: bool,
    /// Allow a policy that removes every snapshot of a database name.
    #[arg(long)]
    remove_all: bool,
    /// Run `prune` afterwards.
    #[arg(long)]
    prune: bool,
    /// With --prune: grace period to record (see `prune --grace`).
    #[arg(long, value_parser = parse_duration, requires = "prune")]
    grace: Option<Duration>,
    /// With --prune: see `prune --no-running-backups`.
    #[arg(long, requires = "prune")]
    no_running_backups: bool,
    #[command(flatten)]
    keys: ReadKeys,
}

pub async fn run(a: ForgetArgs, ctx: &Ctx) -> Result<u8, Error> {
    let repo = open_either(&a.repo, &a.keys).await?;
    let policy = sqlvault_engine::retention::Policy::new()
        .with_last(a.keep_last)
        .with_hourly(a.keep_hourly)
        .with_daily(a.keep_daily)
        .with_weekly(a.keep_weekly)
        .with_monthly(a.keep_monthly)
        .with_yearly(a.keep_yearly)
        .with_within(a.keep_within);
    if policy.is_empty() && !a.remove_all && a.pitr_window.is_none() {
        return Err(usage(
            "no policy given: use --keep-last/--keep-hourly/--keep-daily/--keep-weekly/--keep-monthly/--keep-yearly/--keep-within (or --remove-all)",
        ));
    }
    // Prune's options are checked before forget removes anything.
    let prune_opts = super::prune::options(a.dry_run, a.grace, 0.5, a.no_running_backups)?;
    let opts = sqlvault_engine::ForgetOptions::new(policy)
        .with_name(a.name.clone())
        .with_dry_run(a.dry_run)
        .with_allow_remove_all(a.remove_all)
        .with_pitr_window(a.pitr_window);
    let rep = sqlvault_engine::forget(&repo, &opts).await?;
    let pruned = if a.prune {
        Some(sqlvault_engine::prune(&repo, &prune_opts).await?)
    } else {
        None
    };
    if ctx.json {
        let mut v = to_json(&rep);
        // Each plan entry also gets its time as every output writes times.
        if let Some(groups) = v["groups"].as_array_mut() {
            for g in groups {
                if let Some(snaps) = g["snapshots"].as_array_mut() {
                    for s in snaps {
                        if let Some(ms) = s["created_ms"].as_i64() {
                            s["time"] = json!(time_str(ms));
                        }
                    }
                }
            }
        }
        if let Some(p) = &pruned {
            v["prune"] = super::prune::report_json(p);
        }
        print_json(&v);
        return Ok(0);
    }
    for g in &rep.groups {
        let source = sqlvault_engine::names::SourceId {
            host: g.host.clone(),
            path: g.source_path.clone(),
        };
        println!(
            "{} from {}: {}",
            g.name,
            source.describe(),
            counts(g.snapshots.len(), "snapshot")
        );
        for s in &g.snapshots {
            let why = match s.locked_until_ms {
                Some(u) => format!(
                    "under S3 Object Lock until {}: removed by a forget after that",
                    time_str(u)
                ),
                None => s.reasons.join(", "),
            };
            println!(
                "  {} {:<8} {}  {}",
                match (s.keep, s.locked_until_ms) {
                    (true, _) => "keep  ",
                    (false, Some(_)) => "locked",
                    (false, None) => "remove",
                },
                &s.id[..8],
                time_str(s.created_ms),
                why
            );
        }
    }
    println!(
        "{} kept, {} {}",
        rep.kept,
        rep.removed,
        if rep.dry_run {
            "would be removed (dry run)"
        } else {
            "removed"
        }
    );
    if rep.locked > 0 {
        println!(
            "{} due to go but still under S3 Object Lock: kept until their lock ends",
            counts(rep.locked, "snapshot")
        );
    }
    if rep.future_dated > 0 {
        println!(
            "{} kept by no rule and not removed: look at {} (README, Retention)",
            counts(rep.future_dated, "future-dated snapshot"),
            if rep.future_dated == 1 { "it" } else { "them" }
        );
    }
    if let Some(p) = &pruned {
        super::prune::print_report(p);
    }
    Ok(0)
}
