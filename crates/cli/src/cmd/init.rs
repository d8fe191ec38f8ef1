//! `sqlvault init`.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;
use sqlvault_engine::{Error, InitKeys, Repo};
use sqlvault_store::Store;

use super::{Ctx, opened};
use crate::exit::usage;
use crate::render::print_json;
use crate::secrets::{env_passphrase, parse_recipients, read_passphrase};

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Repository URL or path.
    repo: String,
    /// Recipient public key (age1…, ssh-ed25519 …, ssh-rsa …); repeatable.
    #[arg(short = 'r', long = "recipient")]
    recipients: Vec<String>,
    /// File of recipients, one per line.
    #[arg(short = 'R', long = "recipients-file")]
    recipients_file: Vec<PathBuf>,
    /// Protect the repository with a passphrase (from SQLVAULT_PASSPHRASE or a prompt).
    /// Without recipients, SQLVAULT_PASSPHRASE alone is enough.
    #[arg(long)]
    passphrase: bool,
    /// Declare the repository immutable for this many days: an s3:// bucket with S3
    /// Object Lock whose default retention is at least that long (checked now).
    /// forget and prune then never delete what is still locked, and prune extends the
    /// locks of everything kept snapshots reference (README, Immutable repositories).
    #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..=36500))]
    immutable_days: Option<u32>,
}

pub async fn run(a: InitArgs, ctx: &Ctx) -> Result<u8, Error> {
    let s = opened(Store::create_url(&a.repo, &super::store_env())?)?;
    let no_recipients = a.recipients.is_empty() && a.recipients_file.is_empty();
    let keys = if a.passphrase {
        if !no_recipients {
            return Err(usage("--passphrase cannot be combined with recipients"));
        }
        InitKeys::Passphrase(read_passphrase(true)?)
    } else if no_recipients {
        match env_passphrase() {
            Some(p) => InitKeys::Passphrase(p),
            None => return Err(usage("init needs -r RECIPIENT, -R FILE or --passphrase")),
        }
    } else {
        InitKeys::Recipients(parse_recipients(&a.recipients, &a.recipients_file)?)
    };
    let rep = Repo::init_immutable(super::session(), &s, keys, a.immutable_days).await?;
    if ctx.json {
        print_json(&json!({"repo_id": rep.repo_id, "fingerprint": rep.fingerprint, "recipients": rep.recipients}));
    } else {
        println!("created repository {} at {}", rep.repo_id, a.repo);
        println!(
            "fingerprint {} (keep it with your identity; restore hosts can pin it with SQLVAULT_REPO_FINGERPRINT)",
            rep.fingerprint
        );
    }
    Ok(0)
}
