//! `sqlvault drill`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use sqlvault_engine::{Error, Repo};

use super::{Ctx, store};
use crate::render::{print_json, to_json};
use crate::secrets::{ReadKeys, read_db_key, required_access};

#[derive(Args, Debug)]
pub struct DrillArgs {
    /// Repository URL or path.
    repo: String,
    /// Only this database name (each host and path it was backed up from).
    #[arg(long, conflicts_with = "all_databases")]
    name: Option<String>,
    /// Every database in the repository (the default): each name, and each host and
    /// path a name was backed up from. Each one's newest snapshot is drilled, never
    /// all its snapshots (that is `verify --all`).
    #[arg(long, alias = "all")]
    all_databases: bool,
    /// JSON-lines log to append to (default: drill.jsonl in the state directory).
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    /// Also record each result as evidence in the repository (seen by `audit --repo`).
    #[arg(long)]
    record: bool,
    /// Directory to restore into (needs room for the largest database; default: the
    /// system temporary directory).
    #[arg(long, value_name = "DIR")]
    scratch: Option<PathBuf>,
    /// File holding the key of snapshots of SQLCipher databases (or SQLVAULT_DB_KEY).
    #[arg(long = "db-key-file", value_name = "FILE")]
    db_key_file: Option<PathBuf>,
    #[command(flatten)]
    keys: ReadKeys,
}

pub async fn run(a: DrillArgs, ctx: &Ctx) -> Result<u8, Error> {
    let db_key = read_db_key(a.db_key_file.as_ref(), "SQLVAULT_DB_KEY", None, false)?;
    let opts = sqlvault_engine::DrillOptions::default()
        .with_name(a.name)
        .with_db_key(db_key)
        .with_record_in_repo(a.record)
        .with_scratch(a.scratch)
        .with_log(a.log);
    let opened = async {
        Repo::open_read(
            super::session(),
            store(&a.repo)?,
            required_access(&a.keys, ctx.command)?,
        )
        .await
    };
    let repo = match opened.await {
        Ok(r) => r,
        Err(e) => {
            // The log shows a drill that could not even start.
            sqlvault_engine::append_drill_failure(
                &opts.log_path(super::session()),
                super::session().host(),
                &a.repo,
                &e,
            );
            return Err(e);
        }
    };
    let rep = sqlvault_engine::drill(&repo, &opts).await?;
    if ctx.json {
        print_json(&to_json(&rep));
    } else {
        for r in &rep.records {
            let e = &r.evidence;
            if e.ok {
                println!(
                    "{}: snapshot {} ({} old) restored in {:.2}s, {} verified in {:.2}s: ok",
                    e.name,
                    &e.snapshot_id[..8],
                    sqlvault_engine::retention::describe(Duration::from_secs_f64(r.rpo_seconds)),
                    e.restore_seconds,
                    e.checks.join(", "),
                    e.check_seconds
                );
                for l in &r.not_checked {
                    println!("  note: {l}");
                }
            } else {
                println!(
                    "{}: snapshot {}: FAILED: {}",
                    e.name,
                    &e.snapshot_id[..8],
                    r.error.as_deref().unwrap_or("")
                );
            }
        }
        println!("evidence appended to {}", rep.log);
    }
    match rep.failure {
        Some(e) => Err(e),
        None => Ok(0),
    }
}
