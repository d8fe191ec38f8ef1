//! `sqlvault copy`.

use clap::Args;
use sqlvault_engine::{Error, Repo};

use super::{Ctx, store};
use crate::render::{counts, human, print_json, to_json};
use crate::secrets::{ReadKeys, required_access};

#[derive(Args, Debug)]
pub struct CopyArgs {
    /// Source repository URL or path (read with -i or --passphrase).
    src: String,
    /// Destination repository URL or path (written with this host's write key: run
    /// `sqlvault init` or `sqlvault join` for it here first).
    dst: String,
    /// Snapshot id or unique prefix to copy; repeatable (default: every snapshot).
    #[arg(long = "snapshot", value_name = "ID")]
    snapshots: Vec<String>,
    /// Only snapshots of this database name.
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    keys: ReadKeys,
}

pub async fn run(a: CopyArgs, ctx: &Ctx) -> Result<u8, Error> {
    let acc = required_access(&a.keys, ctx.command)?;
    let src = Repo::open_read(super::session(), store(&a.src)?, acc).await?;
    let dst = Repo::open_write(super::session(), store(&a.dst)?).await?;
    let opts = sqlvault_engine::CopyOptions::default()
        .with_snapshots(a.snapshots)
        .with_name(a.name);
    let rep = sqlvault_engine::copy(&src, &dst, &opts).await?;
    if ctx.json {
        print_json(&to_json(&rep));
        return Ok(0);
    }
    for c in &rep.copied {
        println!(
            "copied snapshot {} of {}: {}, {} read from the source, {} sent ({})",
            &c.id[..8],
            c.name,
            counts(c.chunks_total, "chunk"),
            c.chunks_read,
            c.chunks_sent,
            human(c.bytes_sent)
        );
    }
    println!(
        "{} copied, {} already in {}",
        counts(rep.copied.len(), "snapshot"),
        rep.already_present.len(),
        a.dst
    );
    Ok(0)
}
