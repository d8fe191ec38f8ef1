//! `sqlvault check`.

use clap::Args;
use sqlvault_engine::{Error, ErrorKind, Repo};

use super::{Ctx, store};
use crate::exit::kind_code;
use crate::render::{counts, print_json, to_json};
use crate::secrets::{ReadKeys, required_access};

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Repository URL or path.
    repo: String,
    #[command(flatten)]
    keys: ReadKeys,
    /// Download and authenticate every pack.
    #[arg(long)]
    read_data: bool,
}

pub async fn run(a: CheckArgs, ctx: &Ctx) -> Result<u8, Error> {
    let acc = required_access(&a.keys, ctx.command)?;
    let repo = Repo::open_read(super::session(), store(&a.repo)?, acc).await?;
    let rep = sqlvault_engine::check(
        &repo,
        sqlvault_engine::CheckOptions::default().with_read_data(a.read_data),
    )
    .await?;
    if ctx.json {
        print_json(&to_json(&rep));
    } else {
        println!(
            "{}, {} ({} read), {} referenced: {}",
            counts(rep.snapshots, "snapshot"),
            counts(rep.packs, "pack"),
            rep.packs_read,
            counts(rep.chunks_referenced, "chunk"),
            if rep.problems.is_empty() {
                "no problems"
            } else {
                "PROBLEMS FOUND"
            }
        );
        for p in &rep.problems {
            println!("  [{}] {}", p.code, p.message);
        }
    }
    if let Some(p) = rep.problems.first() {
        eprintln!(
            "sqlvault: error: check found {}; first: {}",
            counts(rep.problems.len(), "problem"),
            p.message
        );
        return Ok(kind_code(ErrorKind::Integrity));
    }
    Ok(0)
}
