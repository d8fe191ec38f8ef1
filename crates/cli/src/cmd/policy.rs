//! `sqlvault policy hash|check`: making the hashes a policy holds, and reading a policy
//! against a database's schema.

use std::io::{IsTerminal, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::json;
use sqlvault_engine::{Error, ErrorKind};
use sqlvault_policy::{Finding, Policy, Severity};

use super::Ctx;
use crate::exit::usage;
use crate::render::print_json;
use crate::secrets::{DbKeyArgs, source_unlock};

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Read a secret (stdin, or a prompt asked twice on a terminal) and print its
    /// argon2id hash for a principal's `password_hash`.
    Hash(HashArgs),
    /// Read a policy against a database's schema: unknown tables or columns, tables no
    /// role covers, roles that can read columns marked sensitive, and the policy file's
    /// permissions. Exit code: 0 clean, 11 low, 12 medium, 13 high.
    Check(CheckArgs),
}

impl PolicyCmd {
    pub fn name(&self) -> &'static str {
        match self {
            PolicyCmd::Hash(_) => "policy hash",
            PolicyCmd::Check(_) => "policy check",
        }
    }
}

#[derive(Args, Debug)]
pub struct HashArgs {
    /// Argon2id memory in KiB (default 19456, OWASP's setting; 8192 to 1048576).
    #[arg(long)]
    memory_kib: Option<u32>,
    /// Argon2id passes (default 2).
    #[arg(long)]
    iterations: Option<u32>,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The policy file (TOML).
    policy: PathBuf,
    /// The database it guards (read-only; never changed).
    db: PathBuf,
    #[command(flatten)]
    db_key: DbKeyArgs,
}

pub async fn run(cmd: PolicyCmd, ctx: &Ctx) -> Result<u8, Error> {
    match cmd {
        PolicyCmd::Hash(a) => hash(a, ctx),
        PolicyCmd::Check(a) => check(a, ctx),
    }
}

/// Loads a policy file, as a usage error naming it when it cannot be used.
pub fn load(path: &Path) -> Result<Policy, Error> {
    Policy::load(path).map_err(|e| Error::new(ErrorKind::Usage, "policy.invalid", e.to_string()))
}

fn hash(a: HashArgs, ctx: &Ctx) -> Result<u8, Error> {
    let secret = if std::io::stdin().is_terminal() {
        let first = zeroize::Zeroizing::new(
            rpassword::prompt_password("secret: ").map_err(|e| usage(format!("cannot read the secret: {e}")))?,
        );
        let again = zeroize::Zeroizing::new(
            rpassword::prompt_password("again: ").map_err(|e| usage(format!("cannot read the secret: {e}")))?,
        );
        if *first != *again {
            return Err(usage("the secrets do not match"));
        }
        first
    } else {
        let mut s = zeroize::Zeroizing::new(String::new());
        std::io::stdin()
            .take(64 * 1024)
            .read_to_string(&mut s)
            .map_err(|e| usage(format!("cannot read the secret from stdin: {e}")))?;
        // One line: the newline `echo` or a heredoc adds is not part of the secret.
        let trimmed = s.strip_suffix('\n').unwrap_or(&s);
        let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
        zeroize::Zeroizing::new(trimmed.to_string())
    };
    if secret.is_empty() {
        return Err(usage("empty secret"));
    }
    let h = sqlvault_policy::hash_secret(secret.as_bytes(), a.memory_kib, a.iterations)
        .map_err(|e| usage(e.to_string()))?;
    if ctx.json {
        print_json(&json!({ "password_hash": h }));
    } else {
        println!("{h}");
    }
    Ok(0)
}

/// Findings about the policy file itself: who else can change or read it.
pub fn file_findings(path: &Path) -> Vec<Finding> {
    let Ok(m) = std::fs::metadata(path) else {
        return Vec::new();
    };
    let mode = m.mode();
    let mut out = Vec::new();
    if mode & 0o022 != 0 {
        out.push(Finding {
            severity: Severity::High,
            message: format!(
                "policy file {} is writable by {}: they can grant themselves any right (chmod go-w)",
                path.display(),
                if mode & 0o002 != 0 { "every user" } else { "its group" }
            ),
        });
    }
    if mode & 0o004 != 0 {
        out.push(Finding {
            severity: Severity::Medium,
            message: format!(
                "policy file {} is readable by every user: its password hashes can be attacked offline (chmod o-r)",
                path.display()
            ),
        });
    }
    if m.uid() != 0 && m.uid() != euid() {
        out.push(Finding {
            severity: Severity::Low,
            message: format!(
                "policy file {} belongs to uid {}, neither root nor this user: its owner can change every right",
                path.display(),
                m.uid()
            ),
        });
    }
    out
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

pub fn severity_code(worst: Option<Severity>) -> u8 {
    match worst {
        None => 0,
        Some(Severity::Low) => 11,
        Some(Severity::Medium) => 12,
        Some(Severity::High) => 13,
    }
}

fn check(a: CheckArgs, ctx: &Ctx) -> Result<u8, Error> {
    let policy = load(&a.policy)?;
    let unlock = source_unlock(&a.db, &a.db_key)?;
    let conn = sqlvault_sqlite::open_database(&a.db, unlock.as_ref(), false, std::time::Duration::from_secs(10))?;
    let mut findings = sqlvault_policy::lint(&policy, &conn).map_err(|e| {
        Error::new(
            ErrorKind::Source,
            "policy.schema-unreadable",
            format!("cannot read the schema of {}: {e}", a.db.display()),
        )
    })?;
    findings.extend(file_findings(&a.policy));
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    let worst = findings.iter().map(|f| f.severity).max();
    let code = severity_code(worst);
    if ctx.json {
        let list: Vec<serde_json::Value> = findings
            .iter()
            .map(|f| json!({"severity": f.severity.to_string(), "message": f.message}))
            .collect();
        print_json(&json!({
            "policy": a.policy,
            "database": a.db,
            "roles": policy.roles().len(),
            "principals": policy.principals().len(),
            "worst": worst.map(|s| s.to_string()),
            "exit_code": code,
            "findings": list,
        }));
        return Ok(code);
    }
    for f in &findings {
        println!("{:<6} {}", f.severity.to_string().to_uppercase(), f.message);
    }
    let n = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
    println!(
        "policy check: {} roles, {} principals against {}: {} high, {} medium, {} low",
        policy.roles().len(),
        policy.principals().len(),
        a.db.display(),
        n(Severity::High),
        n(Severity::Medium),
        n(Severity::Low)
    );
    Ok(code)
}
