//! `sqlvault audit`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde_json::json;
use sqlvault_engine::{Error, Repo};
use sqlvault_sqlite::{Severity, Unlock};

use super::{Ctx, parse_duration, store};
use crate::render::{counts, print_json};
use crate::secrets::{ReadKeys, read_db_key, required_access};

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Database files, key files or directories to scan (symbolic links are not followed).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Remove group/other permission bits from what is found (0600 files, 0700
    /// directories); never changes content or ownership.
    #[arg(long)]
    fix: bool,
    /// Repository whose newest snapshot and newest verification to check (needs -i or
    /// --passphrase: evidence is encrypted metadata).
    #[arg(long)]
    repo: Option<String>,
    #[command(flatten)]
    keys: ReadKeys,
    /// Database names to check in --repo (default: the file names of the databases found).
    #[arg(long = "name")]
    names: Vec<String>,
    /// A newest snapshot older than this is a finding (e.g. 90m, 24h, 7d).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    max_snapshot_age: Duration,
    /// A newest successful verification older than this is a finding.
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    max_verify_age: Duration,
    /// File holding the key of SQLCipher databases (or SQLVAULT_DB_KEY), to check their
    /// content too.
    #[arg(long = "db-key-file", value_name = "FILE")]
    db_key_file: Option<PathBuf>,
}

pub async fn run(a: AuditArgs, ctx: &Ctx) -> Result<u8, Error> {
    let repo = match &a.repo {
        Some(url) => {
            let acc = required_access(&a.keys, "audit --repo")?;
            Some(Repo::open_read(super::session(), store(url)?, acc).await?)
        }
        None => None,
    };
    let unlock = read_db_key(a.db_key_file.as_ref(), "SQLVAULT_DB_KEY", None, false)?.map(Unlock::key);
    let req = sqlvault_engine::AuditRequest::new(a.paths.clone())
        .with_fix(a.fix)
        .with_unlock(unlock)
        .with_repo(repo, a.names.clone())
        .with_max_ages(a.max_snapshot_age, a.max_verify_age);
    let mut rep = sqlvault_engine::audit(super::session(), req).await?;
    rep.findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    let worst = rep.worst();
    let code = match worst {
        None | Some(Severity::Info) => 0,
        Some(Severity::Low) => 11,
        Some(Severity::Medium) => 12,
        Some(Severity::High) => 13,
    };
    let count = |s: Severity| rep.findings.iter().filter(|f| f.severity == s && !f.fixed).count();
    let fixed = rep.findings.iter().filter(|f| f.fixed).count();
    if ctx.json {
        let findings: Vec<serde_json::Value> = rep
            .findings
            .iter()
            .map(|f| {
                json!({
                    "severity": f.severity.as_str(),
                    "code": f.code,
                    "path": f.path,
                    "message": f.message,
                    "fix": f.fix,
                    "fixed": f.fixed,
                })
            })
            .collect();
        print_json(&json!({
            "worst": worst.map(|s| s.as_str()),
            "exit_code": code,
            "databases": rep.databases,
            "stats": {"databases": rep.databases.len(), "files": rep.stats.files, "dirs": rep.stats.dirs},
            "fixed": fixed,
            "findings": findings,
        }));
        return Ok(code);
    }
    for f in &rep.findings {
        println!(
            "{:<6} {}: {} [{}]{}",
            f.severity.as_str().to_uppercase(),
            f.path.display(),
            f.message,
            f.code,
            if f.fixed { " (fixed)" } else { "" }
        );
        if !f.fix.is_empty() && !f.fixed {
            println!("       fix: {}", f.fix);
        }
    }
    println!(
        "audit: {}, {}, {}: {} high, {} medium, {} low{}",
        counts(rep.databases.len(), "database"),
        counts(rep.stats.files, "file"),
        crate::render::count(rep.stats.dirs, "directory", "directories"),
        count(Severity::High),
        count(Severity::Medium),
        count(Severity::Low),
        if fixed > 0 {
            format!(" ({fixed} fixed)")
        } else {
            String::new()
        }
    );
    Ok(code)
}
