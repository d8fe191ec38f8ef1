//! The plaintext image of a SQLCipher database — the pages a snapshot holds, each with
//! its reserved area — written back as a SQLCipher database, page by page.
//!
//! Restore used to re-encrypt through a dump and a keyed load, which rebuilds every
//! table and index: it fails on an index ordered by a collation only the application
//! has (Android's `LOCALIZED` in a SQLCipher app), and it is the slow side of a restore.
//! Writing each page through `sqlite_dbpage` on a keyed connection runs no statement of
//! the database at all: SQLCipher encrypts the pages as they are written, with the
//! image's page numbers, free pages, rowids and index order exactly.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use crate::key::{Unlock, apply_key};
use crate::{SqliteError, VerifyReport, verify_file_with};

/// Writes the plaintext database image `image` as the SQLCipher database `out` (an
/// empty file the caller made, 0600, next to its destination) with `unlock`'s key and
/// settings (which must be given), then verifies `out` with [`verify_file_with`]
/// (`cipher_integrity_check`, `integrity_check`, logical checksum) and returns that
/// report for the caller to compare.
///
/// `Ok(None)` when the image cannot be written page by page under these settings —
/// its reserved area is not the size they reserve (an image of a plaintext database,
/// or settings that differ from the source's) — and nothing was written: convert it
/// another way.
pub fn encrypt_image(image: &Path, out: &Path, unlock: &Unlock) -> Result<Option<VerifyReport>, SqliteError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| SqliteError::Io { path: p, source }
    };
    crate::key::require_sqlcipher("writing an encrypted database image")?;
    let mut settings = unlock.settings.clone().ok_or_else(|| SqliteError::BadKey {
        what: "the SQLCipher settings of the image are needed".into(),
    })?;
    let f = File::open(image).map_err(io(image))?;
    let len = f.metadata().map_err(io(image))?.len();
    let mut header = [0u8; 100];
    if len < 100 {
        return Ok(None);
    }
    f.read_exact_at(&mut header, 0).map_err(io(image))?;
    let page_size = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65536u32,
        n => n as u32,
    };
    if !settings.fits_page_size(page_size)
        || header[20] as u32 != settings.reserve()
        || len % page_size as u64 != 0
        || len == 0
    {
        return Ok(None);
    }
    settings.page_size = page_size;
    let unlock = Unlock {
        key: unlock.key.clone(),
        settings: Some(settings.clone()),
    };
    let err = |e| SqliteError::from_sqlite(out, std::time::Duration::ZERO, e);
    {
        let conn =
            Connection::open_with_flags(out, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .map_err(err)?;
        apply_key(&conn, &unlock.key, &settings).map_err(err)?;
        // A private file, fsynced below and verified before anything uses it.
        conn.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; BEGIN;")
            .map_err(err)?;
        let mut ins = conn
            .prepare("INSERT INTO sqlite_dbpage(pgno, data) VALUES (?1, ?2)")
            .map_err(err)?;
        let ps = page_size as usize;
        let batch = ((1 << 20) / ps).max(1);
        let mut buf = vec![0u8; ps * batch];
        let pages = len / ps as u64;
        // The page holding byte 2^30 (SQLite's lock bytes) is never used and cannot be
        // written: SQLite answers it with SQLITE_CORRUPT. It stays a hole in the file,
        // as in every database past 1 GiB.
        let lock_page = (1u64 << 30) / ps as u64 + 1;
        let mut pgno = 1u64;
        while pgno <= pages {
            let n = ((pages - pgno + 1) as usize).min(batch);
            let slice = &mut buf[..n * ps];
            f.read_exact_at(slice, (pgno - 1) * ps as u64).map_err(io(image))?;
            for (i, page) in slice.chunks_exact(ps).enumerate() {
                let at = pgno + i as u64;
                if at != lock_page {
                    ins.execute(rusqlite::params![at as i64, page]).map_err(err)?;
                }
            }
            pgno += n as u64;
        }
        drop(ins);
        conn.execute_batch("COMMIT").map_err(err)?;
    }
    File::open(out).and_then(|f| f.sync_all()).map_err(io(out))?;
    verify_file_with(out, Some(&unlock)).map(Some)
}
