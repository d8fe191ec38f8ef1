//! `copy_database` and `Freeze` through the public API: a copy of a live database is
//! the committed state, verified, refused where it would overwrite; a freeze stops
//! other connections' commits and checkpoints — this process's own included, which
//! needs the checkpoint lock to be an open-file-description lock — and creates nothing.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;
use sqlvault_sqlite::{CopyOptions, Freeze, SqliteError, copy_database, verify_file};

fn app(db: &Path, wal: bool) -> Connection {
    let c = Connection::open(db).unwrap();
    let mode = if wal { "WAL" } else { "DELETE" };
    c.execute_batch(&format!(
        "PRAGMA journal_mode={mode}; PRAGMA wal_autocheckpoint=0; PRAGMA secure_delete=OFF;
         CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT);
         WITH RECURSIVE k(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM k WHERE x < 2000)
         INSERT INTO t(v) SELECT 'row ' || x || hex(randomblob(40)) FROM k;
         DELETE FROM t WHERE id > 1500;"
    ))
    .unwrap();
    c
}

fn count(db: &Path) -> i64 {
    Connection::open(db)
        .unwrap()
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_copy_is_the_committed_state_verified_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    for wal in [true, false] {
        let db = dir.path().join(format!("live-{wal}.db"));
        // The application keeps its connection (and, in WAL mode, its WAL) open.
        let c = app(&db, wal);
        let out = dir.path().join(format!("copy-{wal}.db"));
        let r = copy_database(&db, &out, &CopyOptions::default()).unwrap();
        assert_eq!(r.journal_mode, if wal { "wal" } else { "delete" });
        assert_eq!(r.path, out);
        assert!(!r.vacuumed && r.cipher.is_none());
        assert!(r.freelist_before > 0 && r.freelist_after == r.freelist_before);
        let v = verify_file(&out).unwrap();
        assert!(v.problems.is_empty());
        assert_eq!(v.logical_checksum, r.logical_checksum);
        assert_eq!(count(&out), 1500);
        assert_eq!(std::fs::metadata(&out).unwrap().len(), r.bytes);

        // Vacuumed: no free page, the same content.
        let packed = dir.path().join(format!("packed-{wal}.db"));
        let p = copy_database(&db, &packed, &CopyOptions::default().with_vacuum(true)).unwrap();
        assert!(p.vacuumed && p.freelist_after == 0 && p.pages < r.pages);
        assert_eq!(p.logical_checksum, r.logical_checksum);

        // Never over an existing file unless asked; never over the source.
        c.execute("INSERT INTO t(v) VALUES ('later')", []).unwrap();
        assert!(matches!(
            copy_database(&db, &out, &CopyOptions::default()),
            Err(SqliteError::Exists { .. })
        ));
        assert_eq!(count(&out), 1500);
        copy_database(&db, &out, &CopyOptions::default().with_replace(true)).unwrap();
        assert_eq!(count(&out), 1501);
        assert!(matches!(
            copy_database(&db, &db, &CopyOptions::default().with_replace(true)),
            Err(SqliteError::NotReplaceable { .. })
        ));
    }
    // Nothing but the databases, their side files and the copies.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains(".sqlvault-")), "{names:?}");
}

#[test]
fn a_freeze_stops_commits_and_checkpoints_even_of_this_process() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("live.db");
    let app = app(&db, true);
    app.execute("INSERT INTO t(v) VALUES ('in the wal')", []).unwrap();
    let other = Connection::open(&db).unwrap();
    other.busy_timeout(Duration::ZERO).unwrap();

    let f = Freeze::acquire(&db, None, Duration::from_secs(5)).unwrap();
    assert_eq!(f.journal_mode(), "wal");
    let main_before = std::fs::read(&db).unwrap();
    let e = other.execute("INSERT INTO t(v) VALUES ('blocked')", []).unwrap_err();
    assert_eq!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::DatabaseBusy));
    // A checkpoint is refused: busy = 1, nothing copied into the main file.
    let (busy, _, _): (i64, i64, i64) = other
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(busy, 1);
    assert_eq!(std::fs::read(&db).unwrap(), main_before);
    // Readers go on.
    assert_eq!(count(&db), 1501);
    // A second freeze waits, and gives up at its timeout.
    let t = std::time::Instant::now();
    assert!(matches!(
        Freeze::acquire(&db, None, Duration::from_millis(200)),
        Err(SqliteError::Busy { .. })
    ));
    assert!(t.elapsed() >= Duration::from_millis(200));

    let held = f.release();
    assert!(held >= Duration::from_millis(200), "{held:?}");
    other.execute("INSERT INTO t(v) VALUES ('free again')", []).unwrap();
    let (busy, _, _): (i64, i64, i64) = other
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(busy, 0);
    drop(app);
}

#[test]
fn a_freeze_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rollback.db");
    drop(app(&db, false));
    let f = Freeze::acquire(&db, None, Duration::from_secs(5)).unwrap();
    assert_eq!(f.journal_mode(), "delete");
    let other = Connection::open(&db).unwrap();
    other.busy_timeout(Duration::ZERO).unwrap();
    assert!(other.execute("INSERT INTO t(v) VALUES ('blocked')", []).is_err());
    drop(f);
    other.execute("INSERT INTO t(v) VALUES ('free again')", []).unwrap();
    for side in ["-wal", "-shm", "-journal"] {
        assert!(!dir.path().join(format!("rollback.db{side}")).exists(), "{side}");
    }

    let missing = dir.path().join("missing.db");
    assert!(matches!(
        Freeze::acquire(&missing, None, Duration::from_secs(1)),
        Err(SqliteError::Missing { .. })
    ));
    assert!(!missing.exists());
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a database").unwrap();
    assert!(matches!(
        Freeze::acquire(&text, None, Duration::from_secs(1)),
        Err(SqliteError::NotADatabase { .. })
    ));
}
