//! Installing a file at a user's destination (restore, load, dump): a private
//! temporary file beside it, the SQLite side files that would corrupt it, and a
//! destination another process holds open. Shared by the commands that write one,
//! below all of them.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result, io_err};

/// A destination that another process holds open ([`sqlvault_sqlite::SqliteError::InUse`])
/// as the command's error (`code`, exit 7, like `db …` on a database in use); any
/// other error as usual.
pub(crate) fn in_use(e: sqlvault_sqlite::SqliteError, code: &'static str) -> Error {
    match e {
        sqlvault_sqlite::SqliteError::InUse { .. } => Error::wrap(ErrorKind::Source, code, e),
        other => Error::from(other),
    }
}

/// Checks for the files SQLite keeps beside a database (`-wal`, `-shm`, `-journal`)
/// next to the destination `dest` of a restore or load, before anything is written:
/// SQLite would apply a stale WAL or hot journal to the new file on its first open,
/// replacing verified content with whatever database wrote them.
///
/// Without `force` they are refused ([`ErrorKind::Exists`], `code`, naming them). With
/// `force`, when `dest` exists they are removed with it, just before the verified file
/// is renamed into place ([`sqlvault_sqlite::install`]); when it does not they belong
/// to no database, and go now (a load installs a new destination without replacing).
pub(crate) fn stale_side_files(dest: &Path, force: bool, code: &'static str) -> Result<()> {
    let sides =
        sqlvault_sqlite::side_files(dest).map_err(|e| io_err(format!("cannot look beside {}", dest.display()), e))?;
    if sides.is_empty() {
        return Ok(());
    }
    if !force {
        return Err(side_file_error(&sides, dest, code));
    }
    if std::fs::symlink_metadata(dest).is_err() {
        for side in sides {
            tracing::info!(file = %side.display(), "removing a stale side file of the destination");
            match std::fs::remove_file(&side) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(format!("cannot remove {}", side.display()), e)),
            }
        }
    }
    Ok(())
}

pub(crate) fn side_file_error(sides: &[PathBuf], dest: &Path, code: &'static str) -> Error {
    let names: Vec<String> = sides.iter().map(|p| p.display().to_string()).collect();
    let it = if sides.len() == 1 { "it" } else { "them" };
    Error::new(
        ErrorKind::Exists,
        code,
        format!(
            "stale {} beside {}: SQLite would apply {it} to the new database when it first opens it (remove {it}, or ask to replace the destination)",
            names.join(", "),
            dest.display(),
        ),
    )
}

/// A private 0600 temporary file next to `dest`, removed on drop and on a signal, named
/// with this pid (see [`sqlvault_sqlite::scratch_file`]).
pub(crate) fn temp_in(dir: &Path, dest: &Path, suffix: &str) -> Result<tempfile::NamedTempFile> {
    let tmp = sqlvault_sqlite::scratch_file(dir, &dest.file_name().unwrap_or_default().to_string_lossy(), suffix)
        .map_err(|e| io_err(format!("cannot create a temporary file in {}", dir.display()), e))?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io_err("chmod", e))?;
    Ok(tmp)
}
