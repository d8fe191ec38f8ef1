//! `sqlvault audit`: findings with severities and fixes, `--fix` that only tightens
//! permission bits (idempotent, content and owner untouched), symbolic links never
//! followed out of the tree, the documented exit codes, and repository ages.

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use rusqlite::Connection;

use crate::support::{World, kit};

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn digest(p: &Path) -> blake3::Hash {
    blake3::hash(&std::fs::read(p).unwrap())
}

/// Findings of a JSON audit as (code, path) → (severity, fixed).
fn findings(v: &serde_json::Value) -> HashMap<(String, String), (String, bool)> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                (
                    f["code"].as_str().unwrap().to_string(),
                    f["path"].as_str().unwrap().to_string(),
                ),
                (
                    f["severity"].as_str().unwrap().to_string(),
                    f["fixed"].as_bool().unwrap(),
                ),
            )
        })
        .collect()
}

fn has(f: &HashMap<(String, String), (String, bool)>, code: &str, path: &Path) -> Option<(String, bool)> {
    f.get(&(code.to_string(), path.display().to_string())).cloned()
}

/// A database whose deleted rows' pages sit on the freelist, full of the old data.
fn with_deleted_data(p: &Path, secure_delete: bool) {
    let c = Connection::open(p).unwrap();
    c.execute_batch(&format!(
        "PRAGMA secure_delete = {};
         CREATE TABLE keep(x); INSERT INTO keep VALUES ('stays');
         CREATE TABLE gone(x);
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 50) INSERT INTO gone SELECT randomblob(3000) FROM s;
         DELETE FROM gone;",
        if secure_delete { "ON" } else { "OFF" }
    ))
    .unwrap();
    let free: i64 = c.query_row("PRAGMA freelist_count", [], |r| r.get(0)).unwrap();
    assert!(free > 10, "the fixture must leave free pages ({free})");
}

#[test]
fn audit_reports_fixes_permissions_idempotently_and_never_leaves_the_tree() {
    let w = World::new();
    let tree = w.path("srv");
    let data = tree.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let outside = w.path("outside");
    std::fs::create_dir_all(&outside).unwrap();

    // A WAL database with its side files, group/other-readable, in a world-writable dir.
    let app = data.join("app.db");
    kit::generate(
        &app,
        &kit::GenOptions {
            target_bytes: 256 << 10,
            seed: 3,
            ..Default::default()
        },
    )
    .unwrap();
    let holder = Connection::open(&app).unwrap();
    holder
        .execute_batch("PRAGMA journal_mode=WAL; UPDATE customers SET name = name || 'x' WHERE rowid < 5;")
        .unwrap();
    drop(holder);
    let wal = Connection::open(&app).unwrap(); // keeps -wal/-shm present during the audit
    wal.execute_batch("PRAGMA wal_autocheckpoint=0; UPDATE customers SET name = name || 'y' WHERE rowid < 5;")
        .unwrap();
    for p in [&app, &data.join("app.db-wal"), &data.join("app.db-shm")] {
        chmod(p, 0o644);
    }
    chmod(&data, 0o777);

    let residue = tree.join("residue.db");
    with_deleted_data(&residue, false);
    let scrubbed = tree.join("scrubbed.db");
    with_deleted_data(&scrubbed, true);
    chmod(&residue, 0o600);
    chmod(&scrubbed, 0o600);

    // A crash mid-transaction in rollback mode leaves a hot journal.
    let crashed = tree.join("crashed.db");
    kit::crash_a_writer(&crashed);
    let journal = tree.join("crashed.db-journal");
    assert!(
        std::fs::metadata(&journal).unwrap().len() > 0,
        "fixture: journal left behind"
    );
    // SQLite calls a journal hot only once its header is synced (first byte non-zero),
    // which the spill of a small cache forces.
    assert_eq!(
        std::fs::read(&journal).unwrap()[0],
        0xd9,
        "fixture: journal header synced"
    );
    chmod(&crashed, 0o600);
    chmod(&journal, 0o600);

    // A corrupted database: garbage over an interior part of a table's b-tree page.
    let broken = tree.join("broken.db");
    Connection::open(&broken)
        .unwrap()
        .execute_batch("CREATE TABLE t(x); WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 2000) INSERT INTO t SELECT randomblob(100) FROM s;")
        .unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&broken).unwrap();
        f.write_all_at(&[0xff; 64], 4096 * 3 + 8).unwrap();
    }
    chmod(&broken, 0o600);

    // Keys: an age identity found by content, a SQLCipher key file found by name.
    let id = tree.join("backup-identity.txt");
    let r = w.run(&["key", "generate", "-o", &id.display().to_string()]).ok();
    assert!(r.stdout.contains("age1"));
    chmod(&id, 0o640);
    let dbkey = tree.join("app.key");
    std::fs::write(&dbkey, "some passphrase\n").unwrap();
    chmod(&dbkey, 0o604);

    // A link out of the tree to a loose database: must be neither audited nor fixed.
    let foreign = outside.join("foreign.db");
    Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
    chmod(&foreign, 0o666);
    std::os::unix::fs::symlink(&foreign, tree.join("link.db")).unwrap();

    let before: Vec<(std::path::PathBuf, blake3::Hash, u32, u32)> =
        [&app, &residue, &crashed, &journal, &broken, &id, &dbkey]
            .iter()
            .map(|p| {
                let m = std::fs::metadata(p).unwrap();
                (p.to_path_buf(), digest(p), m.uid(), m.gid())
            })
            .collect();

    let t = tree.display().to_string();
    let r = w.run(&["audit", &t, "--json"]);
    assert_eq!(r.code, 13, "high findings exit 13: {}", r.stdout);
    let v = r.json();
    assert_eq!(v["worst"], "high");
    let f = findings(&v);
    let high = |code: &str, p: &Path| {
        assert_eq!(
            has(&f, code, p),
            Some(("high".to_string(), false)),
            "{code} on {}: {f:#?}",
            p.display()
        )
    };
    high("perm.db-file", &app);
    high("perm.db-file", &data.join("app.db-wal"));
    high("perm.db-file", &data.join("app.db-shm"));
    high("perm.db-dir", &data);
    high("perm.key-file", &id);
    high("perm.key-file", &dbkey);
    high("db.hot-journal", &journal);
    high("db.quick-check", &broken);
    assert_eq!(has(&f, "db.plaintext", &app).unwrap().0, "medium");
    assert_eq!(has(&f, "db.deleted-data", &residue).unwrap().0, "medium");
    assert!(
        has(&f, "db.deleted-data", &scrubbed).is_none(),
        "secure_delete=ON leaves no residue"
    );
    assert!(
        has(&f, "db.plaintext", &crashed).is_none(),
        "a hot journal stops content checks"
    );
    assert!(has(&f, "scan.symlink-out", &tree.join("link.db")).is_some());
    assert!(
        f.keys().all(|(_, p)| !p.contains("outside")),
        "nothing outside the tree is audited: {f:#?}"
    );
    for finding in v["findings"].as_array().unwrap() {
        if finding["severity"] != "info" {
            assert!(
                !finding["fix"].as_str().unwrap().is_empty(),
                "every finding says how to fix it"
            );
        }
    }

    let r = w.run(&["audit", &t, "--fix", "--json"]);
    let v = r.json();
    let f = findings(&v);
    assert_eq!(has(&f, "perm.db-file", &app), Some(("high".into(), true)));
    assert_eq!(has(&f, "perm.db-dir", &data), Some(("high".into(), true)));
    // What --fix cannot fix still decides the exit code.
    assert_eq!(r.code, 13, "the hot journal and corruption remain: {}", r.stdout);
    assert_eq!(mode(&app), 0o600);
    assert_eq!(mode(&data.join("app.db-wal")), 0o600);
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&id), 0o600);
    assert_eq!(mode(&dbkey), 0o600);
    assert_eq!(mode(&foreign), 0o666, "the link's target outside the tree is untouched");
    assert!(
        std::fs::symlink_metadata(tree.join("link.db"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    for (p, d, uid, gid) in &before {
        let m = std::fs::metadata(p).unwrap();
        assert_eq!(digest(p), *d, "--fix changed the content of {}", p.display());
        assert_eq!((m.uid(), m.gid()), (*uid, *gid));
    }
    assert!(journal.exists(), "the hot journal is evidence, never removed");

    // Idempotent: nothing left to fix, same findings otherwise.
    let r = w.run(&["audit", &t, "--fix", "--json"]);
    let v = r.json();
    assert_eq!(v["fixed"], 0, "second --fix has nothing to do: {}", r.stdout);
    let f = findings(&v);
    assert!(f.keys().all(|(c, _)| !c.starts_with("perm.")), "{f:#?}");

    // Once the hot journal is rolled back and the broken file removed, the worst left
    // is medium (plaintext data, deleted data): exit 12.
    drop(wal);
    Connection::open(&crashed)
        .unwrap()
        .query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
        .unwrap();
    assert!(!journal.exists());
    std::fs::remove_file(&broken).unwrap();
    let r = w.run(&["audit", &t]);
    assert_eq!(r.code, 12, "{}", r.stdout);
    assert!(
        r.stdout.contains("MEDIUM") && r.stdout.contains("fix: "),
        "{}",
        r.stdout
    );

    // A database in a shared sticky directory (like /tmp): reported, and --fix leaves
    // the directory alone.
    let shared = w.path("shared");
    std::fs::create_dir_all(&shared).unwrap();
    chmod(&shared, 0o1777);
    let loose = shared.join("loose.db");
    Connection::open(&loose)
        .unwrap()
        .execute_batch("CREATE TABLE t(x);")
        .unwrap();
    chmod(&loose, 0o600);
    let v = w
        .run(&["audit", &loose.display().to_string(), "--fix", "--json"])
        .json();
    assert_eq!(has(&findings(&v), "perm.db-dir", &shared), Some(("high".into(), false)));
    assert_eq!(mode(&shared), 0o1777, "--fix never closes a shared sticky directory");

    // A missing path is an error (exit 4), not a clean audit.
    w.run(&["audit", &w.s("nope")]).fails(4);
}

#[test]
fn audit_checks_snapshot_and_verification_ages_in_a_repository() {
    let w = World::new();
    let db = w.path("shop.db");
    kit::generate(
        &db,
        &kit::GenOptions {
            target_bytes: 128 << 10,
            seed: 5,
            ..Default::default()
        },
    )
    .unwrap();
    chmod(&db, 0o600);
    let id = w.s("id.txt");
    let r = w.run(&["key", "generate", "-o", &id]).ok();
    let recipient = r
        .stdout
        .split_whitespace()
        .find(|s| s.starts_with("age1"))
        .unwrap()
        .to_string();
    let repo = w.s("repo");
    w.run(&["init", &repo, "-r", &recipient]).ok();
    w.run(&["backup", &db.display().to_string(), &repo]).ok();

    let d = db.display().to_string();
    let r = w.run(&["audit", &d, "--repo", &repo, "-i", &id, "--json"]);
    let v = r.json();
    let codes: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap())
        .collect();
    assert!(codes.contains(&"repo.snapshot-age"), "{codes:?}");
    assert!(codes.contains(&"repo.never-verified"), "{codes:?}");
    assert_eq!(r.code, 12);

    // verify records evidence; the audit then sees a recent verification.
    w.run(&["verify", &repo, "-i", &id]).ok();
    let r = w.run(&["audit", &d, "--repo", &repo, "-i", &id, "--json"]);
    let v = r.json();
    let codes: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap())
        .collect();
    assert!(codes.contains(&"repo.verify-age"), "{codes:?}");
    assert!(!codes.contains(&"repo.never-verified"), "{codes:?}");
    // Only the plaintext-at-rest finding is left: medium.
    assert_eq!(r.code, 12, "{}", r.stdout);

    // Thresholds: anything older than zero seconds is stale.
    let r = w.run(&[
        "audit",
        &d,
        "--repo",
        &repo,
        "-i",
        &id,
        "--max-snapshot-age",
        "0s",
        "--max-verify-age",
        "0s",
        "--json",
    ]);
    let codes: Vec<String> = r.json()["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap().to_string())
        .collect();
    assert!(codes.iter().any(|c| c == "repo.snapshot-stale"), "{codes:?}");
    assert!(codes.iter().any(|c| c == "repo.verify-stale"), "{codes:?}");

    // A database name with no snapshot at all is high.
    let r = w.run(&["audit", &d, "--repo", &repo, "-i", &id, "--name", "other.db"]);
    assert_eq!(r.code, 13, "{}", r.stdout);
    assert!(r.stdout.contains("no snapshot of other.db"), "{}", r.stdout);

    // Without an identity the repository cannot be audited: a clear error.
    w.run(&["audit", &d, "--repo", &repo]).fails(16);

    // Encrypted at rest: no plaintext finding; nothing else wrong → exit 0. With the
    // key, the content is checked too.
    let key = w.path("db.pass");
    std::fs::write(&key, "audit passphrase\n").unwrap();
    chmod(&key, 0o600);
    let k = key.display().to_string();
    w.run(&["db", "encrypt", &d, "--key-file", &k]).ok();
    let codes = |r: &crate::support::Run| -> Vec<String> {
        r.json()["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["code"].as_str().unwrap().to_string())
            .collect()
    };
    let r = w.run(&["audit", &d, "--json"]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    let c = codes(&r);
    assert!(
        c.contains(&"db.encrypted".to_string()) && !c.contains(&"db.plaintext".to_string()),
        "{c:?}"
    );
    let r = w.run(&["audit", &d, "--db-key-file", &k, "--json"]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    let c = codes(&r);
    assert!(!c.iter().any(|c| c.starts_with("db.")), "{c:?}");
    assert_eq!(r.json()["stats"]["databases"], 1);
}
