//! Attacks from the trust model (docs/security.md), each played as the attacker would: a
//! local user planting files beside a restore destination.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{World, assert_no_leftovers, content};

/// Names of the files in `dir`, sorted: what `ls` shows.
fn ls(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// One value through the stock `sqlite3` shell, as a user would open the file.
fn sqlite3(db: &Path, sql: &str) -> String {
    let o = Command::new("sqlite3").arg(db).arg(sql).output().expect("sqlite3 CLI");
    assert!(o.status.success(), "sqlite3: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// A WAL written by another database: a copy of `base` in which every order's note
/// was rewritten to 'PLANTED', committed to the WAL and never checkpointed.
fn foreign_wal(w: &World, base: &Path) -> Vec<u8> {
    let other = w.path("other.db");
    std::fs::copy(base, &other).unwrap();
    let wal = w.path("other.db-wal.copy");
    let st = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sqlite3, shutil, os\nc = sqlite3.connect({:?}, isolation_level=None)\nassert c.execute('PRAGMA journal_mode=WAL').fetchone()[0] == 'wal'\nc.execute('PRAGMA wal_autocheckpoint=0')\nc.execute(\"UPDATE orders SET note = 'PLANTED'\")\nshutil.copy({:?}, {:?})\nos._exit(0)",
            other.display().to_string(),
            format!("{}-wal", other.display()),
            wal.display().to_string()
        ))
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::read(&wal).unwrap()
}

/// Local attacker: a `-wal` (or `-shm`, or journal) planted beside a restore
/// destination would be applied to the restored file on its first open, replacing the
/// verified content. Restore refuses it (exit 8, nothing written, the planted file
/// untouched); with --force the file goes and the destination holds the snapshot.
#[test]
fn attack_stale_wal_beside_restore_destination_is_refused_not_replayed() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 1 << 20, true);
    w.run(&["backup", &db, &repo]).ok();
    let base = w.path("base.db");
    w.run(&["restore", &repo, base.to_str().unwrap(), "-i", &key]).ok();
    let planted = foreign_wal(&w, &base);

    // The threat is real: the stock shell applies such a WAL to a restored file.
    let probe = w.path("probe.db");
    std::fs::copy(&base, &probe).unwrap();
    std::fs::write(w.path("probe.db-wal"), &planted).unwrap();
    assert_ne!(
        sqlite3(&probe, "SELECT count(*) FROM orders WHERE note = 'PLANTED'"),
        "0",
        "the planted WAL replays onto a copy of the snapshot"
    );

    let dir = w.path("dest");
    std::fs::create_dir(&dir).unwrap();
    let dest = dir.join("restored.db");
    let d = dest.to_str().unwrap();
    for suffix in ["-wal", "-shm", "-journal"] {
        let side = PathBuf::from(format!("{d}{suffix}"));
        std::fs::write(&side, &planted).unwrap();
        let before = ls(&dir);
        let r = w.run(&["restore", &repo, d, "-i", &key, "--json"]).fails(8);
        assert_eq!(r.json()["error"]["code"], "restore.stale-side-files", "{suffix}");
        assert!(r.stderr.contains(&format!("restored.db{suffix}")), "{}", r.stderr);
        assert_eq!(ls(&dir), before, "{suffix}: refusal leaves the directory as it was");
        assert!(!dest.exists());
        assert_eq!(
            std::fs::read(&side).unwrap(),
            planted,
            "{suffix}: planted file untouched"
        );
        std::fs::remove_file(&side).unwrap();
    }

    std::fs::write(format!("{d}-wal"), &planted).unwrap();
    std::fs::write(format!("{d}-shm"), b"stale").unwrap();
    w.run(&["restore", &repo, d, "-i", &key, "--force"]).ok();
    assert_eq!(
        ls(&dir),
        vec!["restored.db".to_string()],
        "--force removes the side files"
    );
    assert_eq!(
        sqlite3(&dest, "SELECT count(*) FROM orders WHERE note = 'PLANTED'"),
        "0"
    );
    assert_eq!(sqlite3(&dest, "PRAGMA integrity_check"), "ok");
    assert_eq!(content(&dest), content(Path::new(&db)));
    assert_no_leftovers(w.dir.path(), "after --force");
}

/// The same attack on the other paths that install a database: restoring a dump
/// snapshot, and `sqlvault load`.
#[test]
fn attack_stale_side_files_beside_dump_restore_and_load_are_refused() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 1 << 20, true);
    let dump = w.run(&["backup", &db, &repo, "--kind", "dump", "--json"]).ok().json();
    let id = dump["snapshot_id"].as_str().unwrap().to_string();
    let base = w.path("base.db");
    w.run(&["restore", &repo, base.to_str().unwrap(), "-i", &key]).ok();
    let planted = foreign_wal(&w, &base);

    let dir = w.path("dest");
    std::fs::create_dir(&dir).unwrap();
    let dest = dir.join("from-dump.db");
    let d = dest.to_str().unwrap();
    let wal = PathBuf::from(format!("{d}-wal"));
    std::fs::write(&wal, &planted).unwrap();
    let r = w
        .run(&["restore", &repo, d, "-i", &key, "--snapshot", &id, "--json"])
        .fails(8);
    assert_eq!(r.json()["error"]["code"], "restore.stale-side-files");
    assert_eq!(ls(&dir), vec!["from-dump.db-wal".to_string()]);
    assert_eq!(std::fs::read(&wal).unwrap(), planted);
    w.run(&["restore", &repo, d, "-i", &key, "--snapshot", &id, "--force"])
        .ok();
    assert_eq!(ls(&dir), vec!["from-dump.db".to_string()]);
    assert_eq!(
        sqlite3(&dest, "SELECT count(*) FROM orders WHERE note = 'PLANTED'"),
        "0"
    );
    assert_eq!(content(&dest), content(Path::new(&db)));

    let sql = w.s("app.sql");
    w.run(&["dump", &db, "-o", &sql]).ok();
    let loaded = dir.join("loaded.db");
    let l = loaded.to_str().unwrap();
    let journal = PathBuf::from(format!("{l}-journal"));
    std::fs::write(&journal, b"a hot journal from elsewhere").unwrap();
    let before = ls(&dir);
    let r = w.run(&["load", &sql, l, "--json"]).fails(8);
    assert_eq!(r.json()["error"]["code"], "load.stale-side-files");
    assert!(r.stderr.contains("loaded.db-journal"), "{}", r.stderr);
    assert_eq!(ls(&dir), before);
    w.run(&["load", &sql, l, "--force"]).ok();
    assert!(!journal.exists());
    assert_eq!(content(&loaded), content(Path::new(&db)));
    assert_no_leftovers(w.dir.path(), "dump restore and load");
}
