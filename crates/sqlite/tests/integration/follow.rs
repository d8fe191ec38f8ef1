//! The follower against a live WAL: commits (through restarts of the WAL by the
//! application's checkpoints) are seen page by page, with the pages' content as SQLite
//! reads it; a WAL cut short or rewritten behind the follower's back is a named break.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;
use sqlvault_sqlite::follow::{Break, FollowPosition, Follower};

fn app(db: &Path) -> Connection {
    let c = Connection::open(db).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
         CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v BLOB);",
    )
    .unwrap();
    c
}

fn commit(c: &Connection, rows: i64) {
    c.execute(
        "WITH RECURSIVE k(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM k WHERE x < ?1)
         INSERT INTO t(v) SELECT randomblob(600) FROM k",
        [rows],
    )
    .unwrap();
}

/// Pins, follows from `pos`, releases the older pin; returns the advance.
fn step(f: &mut Follower, pos: &FollowPosition) -> Result<sqlvault_sqlite::follow::Advance, Break> {
    let mark = f.pin().unwrap();
    let r = f.advance(pos, &mark).unwrap();
    if r.is_ok() {
        f.release_older();
    }
    r
}

fn start(f: &mut Follower) -> FollowPosition {
    let mark = f.pin().unwrap();
    f.position_of(&mark).unwrap()
}

#[test]
fn commits_are_followed_through_the_applications_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("f.db");
    let c = app(&db);
    commit(&c, 5);
    let mut f = Follower::open(&db, None, Duration::from_secs(5)).unwrap();
    let mut pos = start(&mut f);
    // Nothing new: no pages, no commits.
    let a = step(&mut f, &pos).unwrap();
    assert!(a.pages.is_empty() && a.commits == 0 && !a.restarted);
    pos = a.position.unwrap();
    let mut restarts = 0;
    for round in 0..6 {
        commit(&c, 3 + round);
        commit(&c, 2);
        let a = step(&mut f, &pos).unwrap();
        assert_eq!(a.commits, 2, "round {round}");
        assert!(!a.pages.is_empty());
        // The pages reported are what SQLite itself reads now, through the pin.
        let mut seen = BTreeSet::new();
        f.read_pages(a.pages.iter().copied(), |p, data| {
            seen.insert(p);
            assert_eq!(data.len(), 4096);
            Ok::<(), ()>(())
        })
        .unwrap()
        .unwrap();
        assert_eq!(seen, a.pages);
        restarts += a.restarted as u32;
        pos = a.position.unwrap();
        // The application checkpoints (TRUNCATE every other round) while the follower
        // holds its pin: it completes once the follower has moved on.
        if round % 2 == 1 {
            c.busy_timeout(Duration::from_millis(50)).unwrap();
            let mut busy = 1;
            for _ in 0..4 {
                busy = c
                    .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0))
                    .unwrap();
                if busy == 0 {
                    break;
                }
                let a = step(&mut f, &pos).unwrap();
                restarts += a.restarted as u32;
                pos = a.position.unwrap();
            }
            assert_eq!(busy, 0, "the checkpoint waits for two moves of the pin at most");
        }
    }
    // Commits after a truncation start a new generation of the WAL: followed.
    commit(&c, 4);
    let a = step(&mut f, &pos).unwrap();
    restarts += a.restarted as u32;
    assert!(restarts >= 2, "{restarts}");
    assert_eq!(a.commits, 1);
}

#[test]
fn a_wal_cut_short_or_rewritten_behind_the_follower_is_a_break() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("b.db");
    let c = app(&db);
    commit(&c, 20);
    let mut f = Follower::open(&db, None, Duration::from_secs(5)).unwrap();
    let pos = start(&mut f);
    commit(&c, 3);
    let a = step(&mut f, &pos).unwrap();
    let pos = a.position.unwrap();
    let wal = sqlvault_sqlite::follow::wal_path(&db);

    // The frame followed last rewritten with another chain (something ignoring SQLite's
    // locks; its header's checksum words are what the follower compares).
    let off = 32 + (pos.frame as u64 - 1) * (24 + 4096) + 16;
    let keep = std::fs::read(&wal).unwrap();
    {
        use std::os::unix::fs::FileExt;
        let w = std::fs::OpenOptions::new().write(true).open(&wal).unwrap();
        w.write_all_at(b"tampered", off).unwrap();
    }
    commit(&c, 1);
    let r = step(&mut f, &pos);
    assert!(
        matches!(r, Err(Break::Mismatch(_) | Break::Overwritten { .. })),
        "{r:?}"
    );
    std::fs::write(&wal, &keep).unwrap();

    // The WAL cut short below what was followed.
    let f2 = std::fs::OpenOptions::new().write(true).open(&wal).unwrap();
    f2.set_len(32 + 2 * (24 + 4096)).unwrap();
    drop(f2);
    // SQLite itself may refuse the pin (a short read of the WAL): the replicator takes
    // that as a break too ("unreadable"); otherwise the follower names it.
    match f.pin() {
        Err(e) => assert!(e.to_string().contains("b.db"), "{e}"),
        Ok(mark) => {
            let r = f.advance(&pos, &mark).unwrap();
            assert!(matches!(r, Err(Break::Truncated { .. } | Break::Mismatch(_))), "{r:?}");
        }
    }
}

#[test]
fn a_database_replaced_on_disk_is_a_break() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let c = app(&db);
    commit(&c, 5);
    let mut f = Follower::open(&db, None, Duration::from_secs(5)).unwrap();
    let pos = start(&mut f);
    let other = dir.path().join("other.db");
    commit(&app(&other), 2);
    std::fs::rename(&other, &db).unwrap();
    assert!(f.replaced());
    assert_eq!(step(&mut f, &pos).unwrap_err(), Break::Replaced);
}

#[test]
fn a_rollback_journal_database_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("j.db");
    let c = Connection::open(&db).unwrap();
    c.execute_batch("CREATE TABLE t(x)").unwrap();
    let e = Follower::open(&db, None, Duration::from_secs(1)).unwrap_err();
    assert!(e.to_string().contains(&db.display().to_string()), "{e}");
    assert_eq!(
        sqlvault_sqlite::follow::journal_mode(&db, None, Duration::from_secs(1)).unwrap(),
        "delete"
    );
}
