//! The WAL reader against WAL files SQLite wrote: the committed frames, applied to the
//! main file, are the database SQLite itself reads from the two files.

use std::path::Path;

use rusqlite::Connection;
use sqlvault_sqlite::logical_checksum;
use sqlvault_sqlite::wal::scan;

/// A WAL database with `n` committed transactions still in its WAL (no checkpoint),
/// copied (main file and WAL) while the writer holds it open; and one uncommitted
/// transaction's frames are never in a copy (SQLite writes them at commit).
fn live_copy(dir: &Path, n: usize) -> (std::path::PathBuf, std::path::PathBuf) {
    let db = dir.join("live.db");
    let c = Connection::open(&db).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
         CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);",
    )
    .unwrap();
    for i in 0..n {
        c.execute(
            "WITH RECURSIVE k(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM k WHERE x < ?1)
             INSERT INTO t(v) SELECT randomblob(700) FROM k",
            [1 + (i % 7) as i64 * 10],
        )
        .unwrap();
        c.execute("UPDATE t SET v = randomblob(300) WHERE id % 5 = ?1", [(i % 5) as i64])
            .unwrap();
    }
    let main = dir.join("copy.db");
    let wal = dir.join("copy.db-wal");
    std::fs::copy(&db, &main).unwrap();
    std::fs::copy(dir.join("live.db-wal"), &wal).unwrap();
    drop(c);
    (main, wal)
}

/// The main file with the committed frames written over it, truncated to the last
/// commit's size.
fn apply(main: &Path, wal: &Path, out: &Path) -> usize {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut w = std::fs::File::open(wal).unwrap();
    let s = scan(&mut w).unwrap().expect("a WAL");
    std::fs::copy(main, out).unwrap();
    let mut o = std::fs::OpenOptions::new().write(true).open(out).unwrap();
    let ps = s.header.page_size as u64;
    let mut page = vec![0u8; ps as usize];
    for f in s.committed() {
        w.seek(SeekFrom::Start(s.header.frame_offset(f.n) + 24)).unwrap();
        w.read_exact(&mut page).unwrap();
        o.seek(SeekFrom::Start((f.page as u64 - 1) * ps)).unwrap();
        o.write_all(&page).unwrap();
    }
    o.set_len(u64::from(s.commit_size().unwrap()) * ps).unwrap();
    s.committed().len()
}

#[test]
fn committed_frames_rebuild_what_sqlite_reads() {
    let dir = tempfile::tempdir().unwrap();
    let (main, wal) = live_copy(dir.path(), 40);
    let out = dir.path().join("rebuilt.db");
    let frames = apply(&main, &wal, &out);
    assert!(frames > 80, "{frames}");
    let rebuilt = Connection::open(&out).unwrap();
    let ok: String = rebuilt.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok");
    // SQLite's own reading of the same two copied files.
    let sqlite = Connection::open(&main).unwrap();
    let n: i64 = sqlite.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    assert!(n > 0);
    assert_eq!(logical_checksum(&rebuilt).unwrap(), logical_checksum(&sqlite).unwrap());
}

#[test]
fn a_torn_wal_tail_loses_only_the_torn_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let (main, wal) = live_copy(dir.path(), 10);
    let full = scan(&mut std::fs::File::open(&wal).unwrap()).unwrap().unwrap();
    let committed = full.committed().len();
    // Cut into the last frame: the last transaction's commit frame is gone.
    let len = std::fs::metadata(&wal).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&wal).unwrap();
    f.set_len(len - 100).unwrap();
    let torn = scan(&mut std::fs::File::open(&wal).unwrap()).unwrap().unwrap();
    let kept = torn.committed();
    assert!(kept.len() < committed, "{} vs {committed}", kept.len());
    assert_eq!(
        kept,
        &full.frames[..kept.len()],
        "the frames before the tear are the same"
    );
    let out = dir.path().join("rebuilt.db");
    apply(&main, &wal, &out);
    let c = Connection::open(&out).unwrap();
    let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok");
}

#[test]
fn a_follower_of_a_live_wal_sees_each_commit_and_each_restart() {
    use sqlvault_sqlite::wal::Continuity;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let wal = dir.path().join("app.db-wal");
    let c = Connection::open(&db).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; CREATE TABLE t(v);
         INSERT INTO t VALUES(randomblob(100));",
    )
    .unwrap();
    let read = || scan(&mut std::fs::File::open(&wal).unwrap()).unwrap();
    let first = read().unwrap();
    let p = first.position();
    assert_eq!(
        first.since(&p),
        Continuity::Continues {
            new: p.frame as usize..p.frame as usize
        }
    );

    // Three more commits: exactly their frames are new, ending at a commit frame.
    for _ in 0..3 {
        c.execute("INSERT INTO t VALUES(randomblob(3000))", []).unwrap();
    }
    let later = read().unwrap();
    let Continuity::Continues { new } = later.since(&p) else {
        panic!("{:?}", later.since(&p));
    };
    let commits = later.frames[new.clone()].iter().filter(|f| f.commit_size != 0).count();
    assert_eq!(commits, 3);
    assert_eq!(new.end, later.committed().len());

    // The application checkpoints and restarts the WAL, then commits: another
    // generation, with a checkpoint sequence one higher.
    let p = later.position();
    c.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(())).unwrap();
    c.execute("INSERT INTO t VALUES(1)", []).unwrap();
    let restarted = read().unwrap();
    assert_eq!(restarted.since(&p), Continuity::Restarted);
    assert_eq!(restarted.header.checkpoint_seq, p.checkpoint_seq + 1);

    // TRUNCATE empties the file: nothing to follow until the next commit.
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
    assert_eq!(read(), None);
}
