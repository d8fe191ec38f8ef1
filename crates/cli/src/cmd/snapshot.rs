//! `sqlvault snapshot`: a verified, consistent copy of a live database to a local file.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;
use sqlvault_engine::{Error, ErrorKind};
use sqlvault_sqlite::{CopyOptions, SqliteError, copy_database};

use super::{Ctx, busy};
use crate::render::{counts, human, print_json};
use crate::secrets::{DbKeyArgs, source_unlock};

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    /// The live SQLite database to copy (its application may keep writing).
    db: PathBuf,
    /// The copy to create (mode 0600; complete and verified, or not at all).
    out: PathBuf,
    /// Compact the copy with VACUUM INTO under secure_delete: no free pages, and
    /// nothing the application deleted survives in it.
    #[arg(long)]
    vacuum: bool,
    /// Replace an existing OUT (refused while another process holds it open, exit 7;
    /// a symbolic link is refused, exit 8).
    #[arg(long)]
    force: bool,
    /// Longest wait for the application's locks, in seconds.
    #[arg(long, default_value_t = 10.0)]
    busy_timeout: f64,
    #[command(flatten)]
    db_key: DbKeyArgs,
}

/// The library's error, with codes of this command where the generic ones would name
/// another (`load.destination-exists`, `load.verify-failed`).
fn classify(e: SqliteError) -> Error {
    match e {
        e @ SqliteError::Exists { .. } => Error::wrap(ErrorKind::Exists, "snapshot.output-exists", e),
        e @ SqliteError::Verify { .. } => Error::wrap(ErrorKind::Integrity, "snapshot.verify-failed", e),
        e => Error::from(e),
    }
}

pub async fn run(a: SnapshotArgs, ctx: &Ctx) -> Result<u8, Error> {
    let dir = match a.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(Error::new(
            ErrorKind::NotFound,
            "snapshot.no-directory",
            format!("the directory of {} does not exist", a.out.display()),
        ));
    }
    let opts = CopyOptions::default()
        .with_busy_timeout(busy(a.busy_timeout)?)
        .with_unlock(source_unlock(&a.db, &a.db_key)?)
        .with_vacuum(a.vacuum)
        .with_replace(a.force);
    let (db, out) = (a.db.clone(), a.out.clone());
    let r = tokio::task::spawn_blocking(move || copy_database(&db, &out, &opts))
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, "internal", format!("the copy stopped: {e}")))?
        .map_err(classify)?;
    let checksum = hex::encode(r.logical_checksum);
    if ctx.json {
        print_json(&json!({
            "source": r.source.display().to_string(),
            "path": r.path.display().to_string(),
            "page_size": r.page_size,
            "pages": r.pages,
            "bytes": r.bytes,
            "freelist_before": r.freelist_before,
            "freelist_after": r.freelist_after,
            "journal_mode": r.journal_mode,
            "logical_checksum": checksum,
            "read_seconds": r.read_seconds,
            "seconds": r.seconds,
            "vacuumed": r.vacuumed,
            "encrypted": r.cipher.is_some(),
            "cipher_compatibility": r.cipher.as_ref().map(|c| c.compatibility),
            "integrity_check": "ok",
            "not_checked": r.not_checked,
        }));
    } else {
        for n in &r.not_checked {
            eprintln!("note: {n}");
        }
        println!(
            "copied {} ({} mode{}) to {}: {} of {} bytes ({}), {} free{} in {:.2}s (read transaction {:.3}s); integrity_check ok, logical checksum {} matches the source",
            r.source.display(),
            r.journal_mode,
            if r.cipher.is_some() { ", SQLCipher" } else { "" },
            r.path.display(),
            counts(r.pages, "page"),
            r.page_size,
            human(r.bytes),
            counts(r.freelist_after, "page"),
            if r.vacuumed {
                format!(" (vacuumed from {})", r.freelist_before)
            } else {
                String::new()
            },
            r.seconds,
            r.read_seconds,
            &checksum[..16]
        );
    }
    Ok(0)
}
