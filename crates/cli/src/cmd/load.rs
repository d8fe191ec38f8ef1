//! `sqlvault load`.

use std::path::PathBuf;

use clap::Args;
use sqlvault_engine::Error;

use super::Ctx;
use super::restore::damaged_source_warning;
use crate::render::{print_json, to_json};

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// The SQL dump (`-` for standard input).
    input: PathBuf,
    /// The database to create.
    db: PathBuf,
    /// Replace a destination that exists and is not empty (refused while another
    /// process holds it open, exit 7; a symbolic link is refused, exit 8; the new file
    /// keeps its owner and group unless others may write to the directory, and at most
    /// its permissions, never group/other write).
    #[arg(long)]
    force: bool,
    /// Keep a result that fails integrity_check when its content is proven to be
    /// exactly what was dumped (the dumped database was already damaged; exit 15
    /// without this flag).
    #[arg(long)]
    accept_damaged_source: bool,
}

pub async fn run(a: LoadArgs, ctx: &Ctx) -> Result<u8, Error> {
    let s = sqlvault_engine::load_file_with(
        &a.input,
        &a.db,
        a.force,
        a.accept_damaged_source,
        super::session().progress(),
    )?;
    damaged_source_warning("the loaded database", &s.source_problems);
    if ctx.json {
        print_json(&to_json(&s));
    } else {
        println!(
            "loaded {} into {} ({}) in {:.2}s; integrity_check ok{} in {:.2}s",
            a.input.display(),
            s.path,
            crate::render::counts(s.statements, "statement"),
            s.load_seconds,
            if s.checksum_verified {
                ", logical checksum matches the dump"
            } else {
                " (a plain SQL file: no checksum to match)"
            },
            s.check_seconds
        );
    }
    Ok(0)
}
