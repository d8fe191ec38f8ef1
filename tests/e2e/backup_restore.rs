use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{World, content, files, kit, mode};

#[test]
fn round_trip_restores_identical_pages_in_wal_and_rollback_mode() {
    for wal in [true, false] {
        let w = World::new();
        let repo = w.s("repo");
        let (key, db) = w.setup(&repo, 3 << 20, wal);
        let b = w.run(&["backup", &db, &repo, "--json"]).ok().json();
        assert_eq!(b["method"], if wal { "dbpage" } else { "backup-copy" });
        assert_eq!(b["journal_mode"], if wal { "wal" } else { "delete" });
        assert_eq!(b["name"], "app.db");
        assert!(b["chunks_total"].as_u64().unwrap() > 500);
        let out = w.s("out.db");
        w.run(&["restore", &repo, &out, "-i", &key]).ok();
        // The generator checkpointed and closed: the file is exactly the pages.
        let src = std::fs::read(&db).unwrap();
        let got = std::fs::read(&out).unwrap();
        assert_eq!(src.len(), got.len());
        let first_diff = src.iter().zip(&got).position(|(a, b)| a != b);
        assert!(
            first_diff.is_none(),
            "restored bytes differ from the source (wal={wal}) at {first_diff:?}"
        );
        assert_eq!(content(Path::new(&out)), content(Path::new(&db)));
        // And the stock sqlite3 CLI agrees.
        let o = Command::new("sqlite3")
            .args([&out, "PRAGMA integrity_check; PRAGMA user_version;"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&o.stdout), "ok\n7\n");
    }
}

#[test]
fn incremental_backup_stores_only_changed_pages() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 6 << 20, true);
    let first = w.run(&["backup", &db, &repo, "--json"]).ok().json();
    assert_eq!(first["map_kind"], "full");
    // Nothing changed: nothing new but the small map and manifest.
    let same = w.run(&["backup", &db, &repo, "--json"]).ok().json();
    assert_eq!(same["chunks_new"], 0);
    assert_eq!(same["map_kind"], "delta");
    assert_eq!(same["parent"], first["snapshot_id"]);
    assert!(same["bytes_new"].as_u64().unwrap() < 4096, "{same}");
    assert_eq!(same["requests"]["list"], 0, "a backup never lists the bucket");

    kit::update_random(Path::new(&db), 0.002, 3).unwrap();
    let inc = w.run(&["backup", &db, &repo, "--json"]).ok().json();
    let total = first["chunks_total"].as_u64().unwrap();
    let new = inc["chunks_new"].as_u64().unwrap();
    assert!(new > 0 && new < total / 5, "new {new} of {total}");
    assert!(inc["bytes_new"].as_u64().unwrap() < first["bytes_new"].as_u64().unwrap() / 4);
    assert_eq!(inc["requests"]["list"], 0);

    // Every snapshot of the chain restores to its own state.
    let out = w.s("latest.db");
    w.run(&["restore", &repo, &out, "-i", &key]).ok();
    assert_eq!(content(Path::new(&out)), content(Path::new(&db)));
    let old = w.s("first.db");
    let id = first["snapshot_id"].as_str().unwrap();
    w.run(&["restore", &repo, &old, "-i", &key, "--snapshot", &id[..10]])
        .ok();
    assert_ne!(content(Path::new(&old)).1, content(Path::new(&out)).1);
    w.run(&["verify", &repo, "-i", &key, "--all"]).ok();

    // Losing the local cache costs a full upload, never a wrong snapshot.
    std::fs::remove_dir_all(w.path("home/repos")).unwrap();
    w.run(&["join", &repo, "-i", &key]).ok();
    let again = w.run(&["backup", &db, &repo, "--json"]).ok().json();
    assert_eq!(again["map_kind"], "full");
    assert_eq!(again["chunks_new"], again["chunks_total"]);
    w.run(&["verify", &repo, "-i", &key, "--all"]).ok();
}

const WRITER: &str = r#"
import sqlite3, sys, time
db, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
c = sqlite3.connect(db, timeout=30, isolation_level=None)
c.execute("CREATE TABLE IF NOT EXISTS ledger(n INTEGER PRIMARY KEY, payload TEXT NOT NULL)")
c.execute("CREATE TABLE IF NOT EXISTS head(id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER)")
c.execute("INSERT OR IGNORE INTO head VALUES (1, 0)")
n = c.execute("SELECT n FROM head").fetchone()[0]
print("ready", flush=True)
end = time.time() + seconds
while time.time() < end:
    n += 1
    c.execute("BEGIN IMMEDIATE")
    c.execute("INSERT INTO ledger VALUES (?, ?)", (n, ("row %d " % n) * 40))
    c.execute("UPDATE head SET n = ? WHERE id = 1", (n,))
    c.execute("COMMIT")
    time.sleep(1.0 / rate)
print(n, flush=True)
"#;

#[test]
fn backup_during_steady_writes_is_a_committed_state() {
    for wal in [true, false] {
        let w = World::new();
        let repo = w.s("repo");
        let (key, db) = w.setup(&repo, 4 << 20, wal);
        let mut writer = Command::new("python3")
            .args(["-c", WRITER, &db, "200", "6"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the writer");
        let mut ready = [0u8; 6];
        std::io::Read::read_exact(writer.stdout.as_mut().unwrap(), &mut ready).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let mut snaps = Vec::new();
        for _ in 0..3 {
            let b = w.run(&["backup", &db, &repo, "--json"]).ok().json();
            snaps.push(b["snapshot_id"].as_str().unwrap().to_string());
            std::thread::sleep(Duration::from_millis(300));
        }
        let out = writer.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "writer failed: the backup must not break the application"
        );
        let mut heads = Vec::new();
        for (i, id) in snaps.iter().enumerate() {
            let dest = w.s(&format!("r{i}.db"));
            w.run(&["restore", &repo, &dest, "-i", &key, "--snapshot", id]).ok();
            let c = rusqlite::Connection::open(&dest).unwrap();
            let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
            assert_eq!(ok, "ok");
            let head: i64 = c.query_row("SELECT n FROM head", [], |r| r.get(0)).unwrap();
            let (count, max, bad): (i64, i64, i64) = c
                .query_row(
                    "SELECT count(*), coalesce(max(n), 0), sum(payload != replace(printf('%.40c', 'x'), 'x', 'row ' || n || ' ')) FROM ledger",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, Option<i64>>(2)?.unwrap_or(0))),
                )
                .unwrap();
            // A committed state: the head row and the ledger agree, with no gaps.
            assert_eq!(count, head, "snapshot {i} (wal={wal}) is not a committed state");
            assert_eq!(max, head);
            assert_eq!(bad, 0, "payloads intact");
            heads.push(head);
        }
        assert!(heads.windows(2).all(|p| p[0] <= p[1]));
        assert!(
            heads[2] > heads[0],
            "writes continued between backups (wal={wal}): {heads:?}"
        );
    }
}

#[test]
fn killed_backup_leaves_no_snapshot_and_the_next_one_succeeds() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 48 << 20, true);
    let mut child = Command::new(env!("CARGO_BIN_EXE_sqlvault"))
        .args(["backup", &db, &repo, "--pack-size", "1"])
        .envs(w.env.iter().map(|(k, v)| (k.clone(), v.clone())))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let packs = w.path("repo/packs");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if packs.is_dir() && std::fs::read_dir(&packs).unwrap().count() >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the backup was killed before it finished");
    assert!(
        !files(&packs).is_empty(),
        "the kill happened mid-way, after packs were written"
    );
    let list = w.run(&["snapshots", &repo, "--json"]).ok().json()["snapshots"].clone();
    assert_eq!(
        list.as_array().unwrap().len(),
        0,
        "no snapshot is visible after a killed backup"
    );
    w.run(&["check", &repo, "-i", &key]).ok();

    w.run(&["backup", &db, &repo]).ok();
    let out = w.s("out.db");
    w.run(&["restore", &repo, &out, "-i", &key]).ok();
    assert_eq!(content(Path::new(&out)), content(Path::new(&db)));
    w.run(&["check", &repo, "-i", &key, "--read-data"]).ok();
}

#[test]
fn restore_refuses_to_overwrite_and_force_removes_stale_wal() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 1 << 20, true);
    w.run(&["backup", &db, &repo]).ok();
    let dest = w.path("dest.db");
    std::fs::write(&dest, b"precious").unwrap();
    let r = w.run(&["restore", &repo, dest.to_str().unwrap(), "-i", &key]).fails(8);
    assert!(r.stderr.contains("dest.db"), "{}", r.stderr);
    assert_eq!(std::fs::read(&dest).unwrap(), b"precious");
    let wal = w.path("dest.db-wal");
    let shm = w.path("dest.db-shm");
    std::fs::write(&wal, b"stale wal that would be replayed").unwrap();
    std::fs::write(&shm, b"stale").unwrap();
    w.run(&["restore", &repo, dest.to_str().unwrap(), "-i", &key, "--force"])
        .ok();
    assert!(!wal.exists() && !shm.exists());
    assert_eq!(content(&dest), content(Path::new(&db)));
    // No temporary files are left next to the destination.
    crate::support::assert_no_leftovers(w.dir.path(), "after --force");
}

#[test]
fn everything_sqlvault_writes_is_private() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 1 << 20, true);
    w.run(&["backup", &db, &repo]).ok();
    let out = w.s("out.db");
    w.run(&["restore", &repo, &out, "-i", &key]).ok();
    assert_eq!(mode(Path::new(&key)), 0o600);
    assert_eq!(mode(Path::new(&out)), 0o600);
    let mut checked = 0;
    for f in files(&w.path("repo")).into_iter().chain(files(&w.path("home"))) {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
        checked += 1;
    }
    assert!(checked >= 8);
}
