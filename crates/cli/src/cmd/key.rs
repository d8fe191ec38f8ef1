//! `sqlvault key generate|add|remove|list|rewrap`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;
use sqlvault_engine::{Error, ErrorKind};

use super::{Ctx, open_either, open_pinned};
use crate::render::{counts, human, print_json};
use crate::secrets::{ReadKeys, parse_recipients, required_access};

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// Write a new age identity (mode 0600) and print its recipient.
    Generate {
        /// Where to write the identity; refuses to overwrite.
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
    },
    /// Add recipients: snapshots taken from now on are encrypted to them too (backup
    /// hosts adopt the signed set at their next backup).
    Add(KeyChangeArgs),
    /// Remove recipients: they can no longer open the repository or read new
    /// snapshots; run `key rewrap` so they cannot read old ones either.
    Remove(KeyChangeArgs),
    /// Show the recipients in force (from the config with -i/--passphrase, else from
    /// this host's write key).
    List(KeyListArgs),
    /// Re-encrypt every object to the current recipients (resumable: run it again
    /// after an interruption).
    Rewrap(KeyListArgs),
}

impl KeyCmd {
    pub fn name(&self) -> &'static str {
        match self {
            KeyCmd::Generate { .. } => "key generate",
            KeyCmd::Add(_) => "key add",
            KeyCmd::Remove(_) => "key remove",
            KeyCmd::List(_) => "key list",
            KeyCmd::Rewrap(_) => "key rewrap",
        }
    }
}

#[derive(Args, Debug)]
pub struct KeyChangeArgs {
    /// Repository URL or path.
    repo: String,
    /// Recipient (age1…, ssh-ed25519 …, ssh-rsa …); repeatable.
    #[arg(short = 'r', long = "recipient")]
    recipients: Vec<String>,
    /// File of recipients, one per line.
    #[arg(short = 'R', long = "recipients-file")]
    recipients_file: Vec<PathBuf>,
    #[command(flatten)]
    keys: ReadKeys,
}

#[derive(Args, Debug)]
pub struct KeyListArgs {
    /// Repository URL or path.
    repo: String,
    #[command(flatten)]
    keys: ReadKeys,
}

pub async fn run(c: KeyCmd, ctx: &Ctx) -> Result<u8, Error> {
    match c {
        KeyCmd::Generate { output } => generate(&output, ctx),
        KeyCmd::Add(a) => change(a, true, ctx).await,
        KeyCmd::Remove(a) => change(a, false, ctx).await,
        KeyCmd::List(a) => list(a, ctx).await,
        KeyCmd::Rewrap(a) => rewrap(a, ctx).await,
    }
}

fn generate(output: &std::path::Path, ctx: &Ctx) -> Result<u8, Error> {
    let r = sqlvault_crypt::generate_identity_file(output).map_err(|e| match e {
        sqlvault_crypt::CryptError::IdentityFile { .. } => Error::new(
            ErrorKind::Exists,
            "key.exists",
            format!("cannot create {}: {e}", output.display()),
        ),
        other => Error::new(ErrorKind::Io, "io", format!("cannot write {}", output.display())).with_source(other),
    })?;
    if ctx.json {
        print_json(&json!({"recipient": r.to_string(), "identity_file": output.display().to_string()}));
        return Ok(0);
    }
    println!("{r}");
    if ctx.chatty() {
        eprintln!(
            "wrote identity to {} (mode 0600); the line above is its public recipient",
            output.display()
        );
    }
    Ok(0)
}

async fn list(a: KeyListArgs, ctx: &Ctx) -> Result<u8, Error> {
    let repo = open_either(&a.repo, &a.keys).await?;
    if ctx.json {
        print_json(&json!({"generation": repo.generation(), "recipients": repo.recipients()}));
    } else {
        println!("recipient set generation {}", repo.generation());
        for r in repo.recipients() {
            println!("{r}");
        }
    }
    Ok(0)
}

async fn rewrap(a: KeyListArgs, ctx: &Ctx) -> Result<u8, Error> {
    let acc = required_access(&a.keys, ctx.command)?;
    let repo = open_pinned(&a.repo, acc).await?;
    // Progress: the session's (a bar on a terminal, nothing with --json/--quiet).
    let rep = sqlvault_engine::rewrap(&repo).await?;
    if ctx.json {
        print_json(&json!(rep));
    } else {
        println!(
            "re-encrypted {} of {} ({}) to recipient set generation {}{}",
            rep.rewrapped,
            counts(rep.objects, "object"),
            human(rep.bytes),
            rep.generation,
            if rep.already_done > 0 {
                format!("; {} done by an earlier run", rep.already_done)
            } else {
                String::new()
            }
        );
    }
    Ok(0)
}

async fn change(a: KeyChangeArgs, add: bool, ctx: &Ctx) -> Result<u8, Error> {
    if a.recipients.is_empty() && a.recipients_file.is_empty() {
        return Err(crate::exit::usage("give the recipients with -r RECIPIENT or -R FILE"));
    }
    let acc = required_access(&a.keys, ctx.command)?;
    let repo = open_pinned(&a.repo, acc).await?;
    let ch = if add {
        let rs = parse_recipients(&a.recipients, &a.recipients_file)?;
        sqlvault_engine::change_recipients(&repo, &rs, &[]).await?
    } else {
        // Removal matches text, so a recipient that no longer parses can still go.
        let mut names = a.recipients.clone();
        for f in &a.recipients_file {
            let mut text = String::new();
            sqlvault_sqlite::open_regular(f, true)
                .map_err(|e| crate::exit::usage(format!("cannot read recipients file: {e}")))
                .and_then(|mut r| {
                    std::io::Read::read_to_string(&mut r, &mut text)
                        .map_err(|e| crate::exit::usage(format!("cannot read recipients file {}: {e}", f.display())))
                })?;
            names.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_string),
            );
        }
        sqlvault_engine::change_recipients(&repo, &[], &names).await?
    };
    if ctx.json {
        print_json(&json!(ch));
        return Ok(0);
    }
    for r in &ch.added {
        println!("added {r}");
    }
    for r in &ch.removed {
        println!("removed {r}");
    }
    println!(
        "recipient set generation {}: {}; backup hosts adopt it at their next backup",
        ch.generation,
        counts(ch.recipients.len(), "recipient")
    );
    if !ch.removed.is_empty() {
        println!(
            "existing objects are still encrypted to the removed {}: run `sqlvault key rewrap {}` (after every backup host has run once)",
            if ch.removed.len() == 1 { "key" } else { "keys" },
            a.repo
        );
    }
    Ok(0)
}
