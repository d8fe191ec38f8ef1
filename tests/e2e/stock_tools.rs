use std::path::Path;
use std::process::Command;

use crate::support::{World, content, kit};

/// Runs docs/recover.py with the real python3 (and through it, age and zstd).
fn recover(repo: &str, key: &str, out: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/recover.py");
    let o = Command::new("python3")
        .args([script, repo, key, out])
        .output()
        .expect("python3");
    assert!(
        o.status.success(),
        "recover.py failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// docs/format.md promises that a snapshot can be rebuilt with only `age`, `zstd` and
/// a short script. This runs exactly that, with the real CLIs, on an incremental
/// snapshot (full map + delta).
#[test]
fn a_snapshot_rebuilds_with_age_zstd_and_the_documented_script() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 2 << 20, true);
    w.run(&["backup", &db, &repo]).ok();
    kit::update_random(Path::new(&db), 0.01, 9).unwrap();
    w.run(&["backup", &db, &repo]).ok();
    let out = w.s("rebuilt.db");
    recover(&repo, &key, &out);
    let via_sqlvault = w.s("restored.db");
    w.run(&["restore", &repo, &via_sqlvault, "-i", &key]).ok();
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&via_sqlvault).unwrap());
    assert_eq!(content(Path::new(&out)), content(Path::new(&db)));
    let check = Command::new("sqlite3")
        .args([&out, "PRAGMA integrity_check"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&check.stdout).trim(), "ok");
}

/// The same promise for dump snapshots: the script gives back the SQL, and the stock
/// shell loads it into the database that was backed up.
#[test]
fn a_dump_snapshot_rebuilds_with_age_zstd_the_script_and_sqlite3() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 2 << 20, true);
    w.run(&["backup", &db, &repo, "--kind", "dump"]).ok();
    kit::update_random(Path::new(&db), 0.01, 9).unwrap();
    w.run(&["backup", &db, &repo, "--kind", "dump"]).ok();
    let sql = w.s("rebuilt.sql");
    recover(&repo, &key, &sql);
    // Byte for byte what `sqlvault dump` writes for the database now.
    assert_eq!(
        std::fs::read(&sql).unwrap(),
        w.run(&["dump", &db]).ok().stdout.as_bytes()
    );
    let rebuilt = w.s("rebuilt.db");
    let st = Command::new("sh")
        .args(["-c", &format!("sqlite3 '{rebuilt}' < '{sql}' > /dev/null")])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(content(Path::new(&rebuilt)), content(Path::new(&db)));
}
