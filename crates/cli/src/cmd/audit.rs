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
    /// A policy file (sqlvault-policy) guarding these databases: reported when others
    /// can change or read it, and every database found is reported when its file
    /// permissions let other users open it around the policy. Repeatable.
    #[arg(long = "policy", value_name = "FILE")]
    policies: Vec<PathBuf>,
}

/// Group/other permission bits of `path` (not following a link), removed with `fix`.
fn loose_bits(path: &std::path::Path, mask: u32, fix: bool) -> Option<(u32, bool)> {
    use std::os::unix::fs::PermissionsExt;
    let m = std::fs::symlink_metadata(path).ok()?;
    if !m.file_type().is_file() {
        return None;
    }
    let bits = m.permissions().mode() & mask;
    if bits == 0 {
        return None;
    }
    let fixed = fix
        && std::fs::set_permissions(
            path,
            std::fs::Permissions::from_mode(m.permissions().mode() & !0o077 & 0o7777),
        )
        .is_ok();
    Some((bits, fixed))
}

/// What a policy adds to an audit: its own file, and databases it cannot protect.
fn policy_findings(a: &AuditArgs, databases: &[PathBuf]) -> Vec<sqlvault_sqlite::Finding> {
    let mut out = Vec::new();
    for p in &a.policies {
        if !p.exists() {
            out.push(sqlvault_sqlite::Finding {
                severity: Severity::High,
                code: "policy.missing",
                path: p.clone(),
                message: "the policy file does not exist".into(),
                fix: String::new(),
                fixed: false,
            });
            continue;
        }
        let fixed = loose_bits(p, 0o077, a.fix).is_some_and(|(_, f)| f);
        for f in super::policy::file_findings(p) {
            out.push(sqlvault_sqlite::Finding {
                severity: match f.severity {
                    sqlvault_policy::Severity::High => Severity::High,
                    sqlvault_policy::Severity::Medium => Severity::Medium,
                    sqlvault_policy::Severity::Low => Severity::Low,
                },
                code: "policy.file-permissions",
                path: p.clone(),
                message: f.message,
                fix: format!("chmod 600 {}", p.display()),
                fixed: fixed && f.severity != sqlvault_policy::Severity::Low,
            });
        }
    }
    if a.policies.is_empty() {
        return out;
    }
    for db in databases {
        for file in std::iter::once(db.clone()).chain(sqlvault_sqlite::side_files(db).unwrap_or_default()) {
            if let Some((bits, fixed)) = loose_bits(&file, 0o066, a.fix) {
                let who = if bits & 0o006 != 0 { "every user" } else { "its group" };
                out.push(sqlvault_sqlite::Finding {
                    severity: Severity::High,
                    code: "policy.bypass",
                    path: file.clone(),
                    message: format!(
                        "{who} can open this file directly, around the policy's authorizer: it reads what the policy masks or denies"
                    ),
                    fix: format!("chmod 600 {} (or audit --fix), and run the application as the only user that can open it", file.display()),
                    fixed,
                });
            }
        }
    }
    out
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
    let extra = policy_findings(&a, &rep.databases);
    rep.findings.extend(extra);
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
