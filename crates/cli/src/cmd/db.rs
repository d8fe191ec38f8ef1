//! `sqlvault db encrypt|decrypt|rekey|migrate`: SQLCipher at rest.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;
use sqlvault_engine::{Error, ErrorKind};
use sqlvault_sqlite::{CipherSettings, ConvertOptions, DbKey, Unlock};

use super::{Ctx, busy};
use crate::exit::usage;
use crate::render::{counts, print_json, terminal_safe};
use crate::secrets::read_db_key;

#[derive(Subcommand, Debug)]
pub enum DbCmd {
    /// Encrypt a plaintext database in place with SQLCipher (verified, atomic).
    Encrypt(DbConvertArgs),
    /// Decrypt a SQLCipher database in place to plaintext (verified, atomic).
    Decrypt(DbConvertArgs),
    /// Change the key of a SQLCipher database (new key from --new-key-file,
    /// SQLVAULT_NEW_DB_KEY or a prompt).
    Rekey(DbConvertArgs),
    /// Upgrade a SQLCipher 3 database to SQLCipher 4 settings, same key.
    Migrate(DbConvertArgs),
}

impl DbCmd {
    pub fn name(&self) -> &'static str {
        match self {
            DbCmd::Encrypt(_) => "db encrypt",
            DbCmd::Decrypt(_) => "db decrypt",
            DbCmd::Rekey(_) => "db rekey",
            DbCmd::Migrate(_) => "db migrate",
        }
    }
}

#[derive(Args, Debug)]
pub struct DbConvertArgs {
    /// The database file.
    db: PathBuf,
    /// File holding the key (encrypt: the new key; otherwise the current one); else
    /// SQLVAULT_DB_KEY, else a prompt on a terminal.
    #[arg(long = "key-file", value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// rekey: file holding the new key; else SQLVAULT_NEW_DB_KEY, else a prompt.
    #[arg(long = "new-key-file", value_name = "FILE")]
    new_key_file: Option<PathBuf>,
    /// encrypt: SQLCipher settings to write (4, the default, or 3 for legacy
    /// clients); otherwise the current file's (1 to 4), instead of detecting them.
    #[arg(long = "cipher-compat", value_name = "1-4")]
    cipher_compat: Option<u8>,
    /// Longest wait for another connection's lock, in seconds.
    #[arg(long, default_value_t = 10.0)]
    busy_timeout: f64,
    /// Convert even when the file has other hard links: they keep the old bytes (after
    /// encrypt, the plaintext) and stop being the same database (exit 8 otherwise).
    #[arg(long)]
    force: bool,
    /// Page size of the converted file (512 to 65536, a power of two). Default: the
    /// original's (encrypt, decrypt, rekey), SQLCipher 4's 4096 (migrate).
    #[arg(long = "page-size", value_name = "BYTES")]
    page_size: Option<u32>,
}

fn need(k: Option<DbKey>, what: &str, var: &str, flag: &str) -> Result<DbKey, Error> {
    k.ok_or_else(|| {
        Error::new(
            ErrorKind::Usage,
            "db.key-required",
            format!("{what} is needed: {flag} FILE, {var}, or a terminal to prompt on"),
        )
    })
}

/// The current key of the database `a` names.
fn current(a: &DbConvertArgs) -> Result<Unlock, Error> {
    let k = read_db_key(a.key_file.as_ref(), "SQLVAULT_DB_KEY", Some("database key"), false)?;
    let k = need(k, "the database key", "SQLVAULT_DB_KEY", "--key-file")?;
    match a.cipher_compat {
        Some(n) => Ok(Unlock::with_compatibility(k, n)?),
        None => Ok(Unlock::key(k)),
    }
}

fn describe(s: &Option<CipherSettings>) -> String {
    match s {
        None => "plaintext".to_string(),
        Some(s) => format!("SQLCipher {} settings", s.compatibility),
    }
}

pub async fn run(c: DbCmd, ctx: &Ctx) -> Result<u8, Error> {
    let (verb, a) = match &c {
        DbCmd::Encrypt(a) => ("encrypted", a),
        DbCmd::Decrypt(a) => ("decrypted", a),
        DbCmd::Rekey(a) => ("rekeyed", a),
        DbCmd::Migrate(a) => ("migrated", a),
    };
    let opts = ConvertOptions::default()
        .with_busy_timeout(busy(a.busy_timeout)?)
        .with_allow_other_links(a.force)
        .with_page_size(a.page_size);
    let rep = match &c {
        DbCmd::Encrypt(a) => {
            let k = read_db_key(a.key_file.as_ref(), "SQLVAULT_DB_KEY", Some("new database key"), true)?;
            let k = need(k, "the new database key", "SQLVAULT_DB_KEY", "--key-file")?;
            let compat = a.cipher_compat.unwrap_or(4);
            // 1.x and 2.x settings are there to read legacy files: 1.x pages carry no
            // MAC at all. New files get 3 or 4.
            if compat < 3 {
                return Err(usage(format!(
                    "--cipher-compat {compat}: encrypt writes SQLCipher 4 or 3 settings; 1 and 2 are for reading legacy files"
                )));
            }
            let settings = CipherSettings::defaults(compat)?;
            sqlvault_sqlite::encrypt(&a.db, k, settings, &opts)?
        }
        DbCmd::Decrypt(a) => sqlvault_sqlite::decrypt(&a.db, &current(a)?, &opts)?,
        DbCmd::Rekey(a) => {
            let old = current(a)?;
            let new = read_db_key(
                a.new_key_file.as_ref(),
                "SQLVAULT_NEW_DB_KEY",
                Some("new database key"),
                true,
            )?;
            let new = need(new, "the new database key", "SQLVAULT_NEW_DB_KEY", "--new-key-file")?;
            sqlvault_sqlite::rekey(&a.db, &old, new, &opts)?
        }
        DbCmd::Migrate(a) => sqlvault_sqlite::migrate(&a.db, &current(a)?, &opts)?,
    };
    if rep.other_links > 0 {
        let old = match &c {
            DbCmd::Encrypt(_) => "the old plaintext bytes",
            DbCmd::Rekey(_) => "the old bytes, readable with the old key",
            _ => "the old bytes",
        };
        eprintln!(
            "sqlvault: warning: {} has {}: those names still hold {old}; only this name was {verb}",
            terminal_safe(&rep.path.display().to_string()),
            counts(rep.other_links, "other hard link")
        );
    }
    // A SQLCipher file whose page size is not its version's default opens only for a
    // client told `PRAGMA cipher_page_size` after the key: say so, with the way out.
    let page_note = match &rep.after {
        Some(s)
            if !rep.unchanged
                && CipherSettings::defaults(s.compatibility).is_ok_and(|d| d.page_size != s.page_size) =>
        {
            Some(format!(
                "note: the {}-byte page size was kept, which is not SQLCipher {}'s default: clients must run `PRAGMA cipher_page_size = {}` after the key to open it (or convert with --page-size {} for the default)",
                s.page_size,
                s.compatibility,
                s.page_size,
                CipherSettings::defaults(s.compatibility)
                    .map(|d| d.page_size)
                    .unwrap_or(4096)
            ))
        }
        _ => None,
    };
    if ctx.json {
        let settings = |s: &Option<CipherSettings>| {
            s.as_ref().map(|s| {
                json!({"compatibility": s.compatibility, "page_size": s.page_size, "kdf_iter": s.kdf_iter,
                       "hmac_algorithm": s.hmac_algorithm, "kdf_algorithm": s.kdf_algorithm})
            })
        };
        print_json(&json!({
            "path": rep.path.display().to_string(),
            "before": settings(&rep.before),
            "after": settings(&rep.after),
            "logical_checksum": hex::encode(rep.logical_checksum),
            "page_count": rep.page_count,
            "seconds": rep.seconds,
            "other_links": rep.other_links,
            "page_size": {"before": rep.page_size.0, "after": rep.page_size.1},
            "unchanged": rep.unchanged,
            "note": page_note,
        }));
    } else if rep.unchanged {
        println!(
            "{} is already {} (page size {}): left untouched",
            terminal_safe(&rep.path.display().to_string()),
            describe(&rep.after).replace(" settings", ""),
            rep.page_size.1
        );
    } else {
        // The note tells how to open the file: it is part of the result, so --quiet
        // keeps it (--json carries it as `note`).
        if let Some(n) = &page_note {
            eprintln!("sqlvault: {n}");
        }
        println!(
            "{verb} {} ({} → {}, page size {}) in {:.2}s; integrity_check ok, logical checksum {} unchanged",
            rep.path.display(),
            describe(&rep.before),
            describe(&rep.after),
            if rep.page_size.0 == rep.page_size.1 {
                format!("{} kept", rep.page_size.1)
            } else {
                format!("{} → {}", rep.page_size.0, rep.page_size.1)
            },
            rep.seconds,
            &hex::encode(rep.logical_checksum)[..16]
        );
    }
    Ok(0)
}
