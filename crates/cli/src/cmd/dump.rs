//! `sqlvault dump`.

use std::path::PathBuf;

use clap::Args;
use sqlvault_engine::Error;

use super::{Ctx, busy};
use crate::exit::usage;
use crate::render::{human, print_json, to_json};
use crate::secrets::{DbKeyArgs, source_unlock};

#[derive(Args, Debug)]
pub struct DumpArgs {
    /// The SQLite database to dump.
    db: PathBuf,
    /// Write to this file (mode 0600, complete or not at all) instead of stdout. With
    /// --json, a summary is printed instead of the dump, so -o is needed.
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
    /// Replace an existing output file.
    #[arg(long, requires = "output")]
    force: bool,
    /// Longest wait for the application's locks, in seconds.
    #[arg(long, default_value_t = 10.0)]
    busy_timeout: f64,
    #[command(flatten)]
    db_key: DbKeyArgs,
}

pub async fn run(a: DumpArgs, ctx: &Ctx) -> Result<u8, Error> {
    // The dump itself would go to stdout, where the JSON document goes.
    if ctx.json && a.output.is_none() {
        return Err(usage(
            "dump --json needs -o FILE: without it the dump is written to stdout",
        ));
    }
    let opts = sqlvault_engine::DumpOptions::default()
        .with_busy_timeout(busy(a.busy_timeout)?)
        .with_force(a.force)
        .with_unlock(source_unlock(&a.db, &a.db_key)?)
        .with_temp_dir(Some(super::session().temp_dir().to_path_buf()))
        .with_progress(Some(super::session().progress_handle()));
    let Some(file) = &a.output else {
        sqlvault_engine::dump_to_writer(&a.db, std::io::stdout().lock(), &opts)?;
        return Ok(0);
    };
    let s = sqlvault_engine::dump_to_file(&a.db, file, &opts)?;
    if ctx.json {
        print_json(&to_json(&s));
    } else {
        println!(
            "dumped {} to {}: {}, {}, {} in {:.2}s; logical checksum {}",
            s.source,
            file.display(),
            crate::render::counts(s.tables, "table"),
            crate::render::counts(s.rows, "row"),
            human(s.bytes),
            s.seconds,
            &s.logical_checksum[..16]
        );
    }
    Ok(0)
}
