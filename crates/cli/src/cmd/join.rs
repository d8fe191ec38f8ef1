//! `sqlvault join`.

use clap::Args;
use serde_json::json;
use sqlvault_engine::Error;

use super::{Ctx, open_pinned};
use crate::render::print_json;
use crate::secrets::{ReadKeys, required_access};

#[derive(Args, Debug)]
pub struct JoinArgs {
    /// Repository URL or path.
    repo: String,
    #[command(flatten)]
    keys: ReadKeys,
}

pub async fn run(a: JoinArgs, ctx: &Ctx) -> Result<u8, Error> {
    let acc = required_access(&a.keys, ctx.command)?;
    let repo = open_pinned(&a.repo, acc).await?;
    repo.save_write_key()?;
    if ctx.json {
        print_json(&json!({"repo_id": repo.id(), "fingerprint": repo.fingerprint()}));
    } else {
        println!(
            "this host can now back up into repository {} (fingerprint {})",
            repo.id(),
            repo.fingerprint()
        );
    }
    Ok(0)
}
