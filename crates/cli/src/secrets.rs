//! Secrets: repository identities and passphrases (→ [`Access`]), SQLCipher database
//! keys, recipients. Never from the command line itself: files, variables, prompts.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use clap::Args;
use sqlvault_crypt::secrecy::SecretString;
use sqlvault_crypt::{Identities, Recipient};
use sqlvault_engine::{Access, Error, ErrorKind};
use sqlvault_sqlite::{AtRest, DbKey, Unlock};

use crate::exit::{IDENTITY_REQUIRED, usage};

/// How a command that reads the repository's data gets in.
#[derive(Args, Debug)]
pub struct ReadKeys {
    /// Identity file (age identity or OpenSSH private key).
    #[arg(short = 'i', long = "identity", env = "SQLVAULT_IDENTITY_FILE")]
    pub identity: Option<Vec<PathBuf>>,
    /// Use the repository passphrase (from SQLVAULT_PASSPHRASE or a prompt). Without
    /// -i, SQLVAULT_PASSPHRASE alone is enough.
    #[arg(long)]
    pub passphrase: bool,
}

/// The key of a SQLCipher database given to commands that read one. Never on the
/// command line: a file, the SQLVAULT_DB_KEY variable, or a prompt.
#[derive(Args, Debug)]
pub struct DbKeyArgs {
    /// File holding the database's SQLCipher key: a passphrase, or x'<64 hex digits>'
    /// for a raw key (otherwise SQLVAULT_DB_KEY, or a prompt on a terminal).
    #[arg(long = "db-key-file", value_name = "FILE")]
    pub db_key_file: Option<PathBuf>,
    /// SQLCipher major version of the database's settings, instead of detecting it
    /// (4, then 3, then the legacy 2 and 1).
    #[arg(long = "cipher-compat", value_name = "1-4")]
    pub cipher_compat: Option<u8>,
}

/// SQLVAULT_PASSPHRASE, when set and not empty.
pub fn env_passphrase() -> Option<SecretString> {
    match std::env::var("SQLVAULT_PASSPHRASE") {
        Ok(p) if !p.is_empty() => {
            tracing::debug!("repository passphrase taken from SQLVAULT_PASSPHRASE");
            Some(SecretString::from(p))
        }
        _ => None,
    }
}

pub fn read_passphrase(confirm: bool) -> Result<SecretString, Error> {
    if let Some(p) = env_passphrase() {
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        return Err(usage(
            "--passphrase needs SQLVAULT_PASSPHRASE or a terminal to prompt on",
        ));
    }
    let p = prompt_secret(
        "repository passphrase",
        "passphrase",
        "passphrases do not match",
        confirm,
    )?;
    if p.is_empty() {
        return Err(usage("empty passphrase"));
    }
    Ok(SecretString::from(p.as_str()))
}

/// Asks for a secret on the terminal (twice with `confirm`); the text lives in a
/// zeroized buffer. `what` names it in a read error, `mismatch` is the error when the
/// two entries differ.
fn prompt_secret(
    label: &str,
    what: &str,
    mismatch: &'static str,
    confirm: bool,
) -> Result<zeroize::Zeroizing<String>, Error> {
    let ask = |p: &str| {
        rpassword::prompt_password(p)
            .map(zeroize::Zeroizing::new)
            .map_err(|e| usage(format!("cannot read {what}: {e}")))
    };
    let first = ask(&format!("{label}: "))?;
    if confirm && *ask("again: ")? != *first {
        return Err(usage(mismatch));
    }
    Ok(first)
}

/// A database key from `file`, else the variable `var`, else (when `prompt` is set and
/// stdin is a terminal) a prompt. The key's text never reaches argv, logs or errors.
pub fn read_db_key(
    file: Option<&PathBuf>,
    var: &str,
    prompt: Option<&str>,
    confirm: bool,
) -> Result<Option<DbKey>, Error> {
    if let Some(f) = file {
        tracing::debug!(file = %f.display(), "database key taken from a file");
        return DbKey::from_file(f).map(Some).map_err(Error::from);
    }
    if let Ok(v) = std::env::var(var)
        && !v.is_empty()
    {
        tracing::debug!("database key taken from {var}");
        let v = zeroize::Zeroizing::new(v);
        return DbKey::from_text(&v).map(Some).map_err(Error::from);
    }
    let Some(prompt) = prompt else { return Ok(None) };
    if !std::io::stdin().is_terminal() {
        return Ok(None);
    }
    let p = prompt_secret(prompt, "the key", "the keys do not match", confirm)?;
    DbKey::from_text(&p).map(Some).map_err(Error::from)
}

/// The unlock for a source database: a key only when one is given, or when the file
/// is encrypted and a terminal can be asked.
pub fn source_unlock(db: &Path, a: &DbKeyArgs) -> Result<Option<Unlock>, Error> {
    let encrypted = matches!(sqlvault_sqlite::probe(db, None), Ok(AtRest::Encrypted(_)));
    let key = read_db_key(
        a.db_key_file.as_ref(),
        "SQLVAULT_DB_KEY",
        encrypted.then_some("database key"),
        false,
    )?;
    key.map(|k| match a.cipher_compat {
        Some(c) => Unlock::with_compatibility(k, c).map_err(Error::from),
        None => Ok(Unlock::key(k)),
    })
    .transpose()
}

/// The identities or passphrase `keys` name explicitly, if any.
pub fn access(keys: &ReadKeys) -> Result<Option<Access>, Error> {
    if keys.passphrase {
        return Ok(Some(Access::Passphrase(read_passphrase(false)?)));
    }
    match &keys.identity {
        Some(paths) if !paths.is_empty() => {
            let mut ids: Option<Identities> = None;
            for p in paths {
                tracing::debug!(file = %p.display(), "reading identity file");
                let i = Identities::from_file(p)
                    .map_err(|e| Error::new(ErrorKind::Usage, "crypt.bad-key", e.to_string()))?;
                match ids.as_mut() {
                    Some(all) => all.extend(i),
                    None => ids = Some(i),
                }
            }
            Ok(ids.map(Access::Identities))
        }
        _ => Ok(None),
    }
}

/// [`access`] for a command that cannot work without it. SQLVAULT_PASSPHRASE alone
/// counts when nothing else is given: there is no other way in, and a passphrase
/// repository's users set it once rather than repeat `--passphrase`.
pub fn required_access(keys: &ReadKeys, command: &str) -> Result<Access, Error> {
    if let Some(a) = access(keys)? {
        return Ok(a);
    }
    env_passphrase().map(Access::Passphrase).ok_or_else(|| {
        Error::new(
            ErrorKind::Usage,
            IDENTITY_REQUIRED,
            format!("{command} needs the repository's identity or passphrase, and neither was given"),
        )
    })
}

pub fn parse_recipients(list: &[String], files: &[PathBuf]) -> Result<Vec<Recipient>, Error> {
    let mut rs: Vec<Recipient> = Vec::new();
    for r in list {
        rs.push(
            r.parse()
                .map_err(|e: sqlvault_crypt::CryptError| usage(e.to_string()))?,
        );
    }
    for f in files {
        rs.extend(sqlvault_crypt::read_recipients_file(f).map_err(|e| usage(e.to_string()))?);
    }
    Ok(rs)
}
