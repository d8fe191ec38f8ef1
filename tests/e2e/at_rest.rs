//! At rest, through the CLI, on real databases of the corpus (always copied first):
//! audits with a database key, a crashed writer's hot journal under `backup`, page
//! sizes kept by `db encrypt`/`decrypt`, legacy SQLCipher files, `db migrate` of a
//! file already in SQLCipher 4.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use rusqlite::Connection;

use crate::support::{World, assert_no_secret, kit};

/// A private, writable copy of a corpus file in `dir`.
fn copy(dir: &Path, name: &str) -> String {
    let to = dir.join(name);
    std::fs::copy(kit::corpus_dir().join(name), &to).unwrap();
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
    to.display().to_string()
}

fn secret(w: &World, name: &str, text: &str) -> String {
    let p = w.s(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// name → (size, content hash, mtime) of every entry of `dir`.
fn listing(dir: &Path) -> BTreeMap<String, (u64, blake3::Hash, i64, i64)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            let h = if m.is_file() {
                blake3::hash(&std::fs::read(e.path()).unwrap())
            } else {
                blake3::hash(b"")
            };
            (
                e.file_name().to_string_lossy().into_owned(),
                (m.len(), h, m.mtime(), m.mtime_nsec()),
            )
        })
        .collect()
}

fn sum(p: &str, key: Option<&str>) -> [u8; 32] {
    let unlock = key.map(|k| sqlvault_sqlite::Unlock::key(sqlvault_sqlite::DbKey::from_text(k).unwrap()));
    let r = sqlvault_sqlite::verify_file_with(Path::new(p), unlock.as_ref()).unwrap();
    assert!(r.problems.is_empty(), "{p}: {:?}", r.problems);
    r.logical_checksum
}

fn page_size(p: &str) -> u32 {
    Connection::open_with_flags(p, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap()
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap()
}

/// (code, message, fix) of the findings about `path`.
fn findings_of(v: &serde_json::Value, path: &str) -> Vec<(String, String, String)> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["path"] == path)
        .map(|f| {
            (
                f["code"].as_str().unwrap().to_string(),
                f["message"].as_str().unwrap().to_string(),
                f["fix"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn audit_with_a_db_key_still_reports_the_plaintext_databases() {
    let w = World::new();
    let srv = w.path("srv");
    std::fs::create_dir(&srv).unwrap();
    std::fs::set_permissions(&srv, std::fs::Permissions::from_mode(0o700)).unwrap();
    let plain = copy(&srv, "chinook.sqlite");
    let enc = copy(&srv, "sqlcipher-4.0-testkey.db");
    let other = copy(&srv, "debian_sqlcipher3_rawkey.db");
    let wal = copy(&srv, "qa_live_wal.db");
    copy(&srv, "qa_live_wal.db-wal");
    let kf = secret(&w, "db.key", "testkey");
    let before = listing(&srv);
    for keyed in [false, true] {
        let mut args = vec!["audit", srv.to_str().unwrap(), "--json"];
        if keyed {
            args.extend(["--db-key-file", &kf]);
        }
        let r = w.run_env(&args, &[("SQLVAULT_LOG", "trace")]);
        assert_eq!(r.code, 12, "medium at worst: {}\n{}", r.stdout, r.stderr);
        // (The corpus key, "testkey", is part of the file names: no leak check here;
        // the other tests make one with keys of their own.)
        let v = r.json();
        for p in [&plain, &wal] {
            let f = findings_of(&v, p);
            let (_, _, fix) = f
                .iter()
                .find(|(c, _, _)| c == "db.plaintext")
                .unwrap_or_else(|| panic!("keyed {keyed}: {p}: {f:?}"));
            assert!(
                fix.contains("Firefox") && fix.contains("cannot open"),
                "the advice says who cannot follow it: {fix}"
            );
            assert!(!f.iter().any(|(c, _, _)| c.starts_with("db.not-checked")), "{f:?}");
        }
        let e = findings_of(&v, &enc);
        let o = findings_of(&v, &other);
        if keyed {
            assert!(e.is_empty(), "the key opens it, nothing to report: {e:?}");
            assert!(
                o.iter()
                    .any(|(c, m, _)| c == "db.unreadable" && m.contains("wrong database key")),
                "a file the key does not open is reported: {o:?}"
            );
        } else {
            assert!(e.iter().any(|(c, _, _)| c == "db.encrypted"), "{e:?}");
        }
        assert_eq!(listing(&srv), before, "the audit wrote into the directory");
    }
}

/// Runs sqlvault in a PID namespace of its own, as a backup in a container (or under
/// another user) runs beside the application: /proc shows it none of the processes
/// outside.
fn run_in_pid_namespace(w: &World, args: &[&str]) -> crate::support::Run {
    let mut c = Command::new("unshare");
    c.args(["--map-root-user", "--pid", "--fork", "--mount-proc"])
        .arg(env!("CARGO_BIN_EXE_sqlvault"))
        .args(args)
        .env_remove("SQLVAULT_IDENTITY_FILE");
    for (k, v) in &w.env {
        c.env(k, v);
    }
    let o = c.output().expect("unshare (util-linux)");
    crate::support::Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

#[test]
fn a_live_writers_journal_is_not_hot_even_when_the_writer_is_out_of_sight() {
    let w = World::new();
    let repo = w.s("repo");
    w.setup(&repo, 64 << 10, false);
    let data = w.path("data");
    std::fs::create_dir(&data).unwrap();
    let db = data.join("live.db");
    Connection::open(&db)
        .unwrap()
        .execute_batch(
            "PRAGMA journal_mode=DELETE; CREATE TABLE t(x); WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 500) INSERT INTO t SELECT randomblob(200) FROM s;",
        )
        .unwrap();
    // A writer mid-transaction, its cache spilled (a synced journal header, pages
    // written to the database), alive and waiting to commit.
    let mut writer = kit::python_ready(
        &format!(
            "import sqlite3, sys\nc = sqlite3.connect({:?}, isolation_level=None)\nc.execute('PRAGMA cache_size = 10')\nc.execute('BEGIN')\nc.execute('UPDATE t SET x = zeroblob(200)')\nc.execute('WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 300) INSERT INTO t SELECT randomblob(4000) FROM s')\nprint('ready', flush=True)\nsys.stdin.readline()\nc.execute('COMMIT')",
            db.display().to_string()
        ),
        &[],
    );
    let journal = data.join("live.db-journal");
    assert_eq!(
        std::fs::read(&journal).unwrap()[..4],
        [0xd9, 0xd5, 0x05, 0xf9],
        "fixture: a synced journal header"
    );
    let s = db.display().to_string();
    // From where the writer cannot be seen in /proc, the lock it holds still is: the
    // backup waits for it (and gives up after its busy timeout), it never calls the
    // journal hot.
    for kind in ["pages", "dump"] {
        let r = run_in_pid_namespace(
            &w,
            &["backup", &s, &repo, "--kind", kind, "--busy-timeout", "0.5", "--json"],
        );
        assert_ne!(r.code, 0, "the writer holds the database exclusively: {}", r.stdout);
        assert!(!r.stderr.contains("hot journal"), "{}", r.stderr);
        assert_eq!(r.json()["error"]["code"], "source.busy", "{}", r.stderr);
    }
    let a = run_in_pid_namespace(&w, &["audit", &s, "--json"]);
    assert!(
        !findings_of(&a.json(), &format!("{s}-journal"))
            .iter()
            .any(|(c, _, _)| c == "db.hot-journal"),
        "{}",
        a.stdout
    );
    assert!(journal.exists(), "the live writer's journal is left alone");
    // Once it commits, the same backup goes through.
    writer.stdin.take().unwrap().write_all(b"commit\n").unwrap();
    assert!(writer.wait().unwrap().success());
    run_in_pid_namespace(&w, &["backup", &s, &repo]).ok();
}

#[test]
fn backup_names_a_crashed_writers_hot_journal() {
    let w = World::new();
    let repo = w.s("repo");
    w.setup(&repo, 64 << 10, false);
    let data = w.path("data");
    std::fs::create_dir(&data).unwrap();
    let db = data.join("crashed.db");
    kit::crash_a_writer(&db);
    let before = listing(&data);
    assert!(before.contains_key("crashed.db-journal"), "{before:?}");
    let s = db.display().to_string();
    for kind in ["pages", "dump"] {
        let r = w.run(&["backup", &s, &repo, "--kind", kind]).fails(7);
        assert!(
            r.stderr.contains("hot journal") && r.stderr.contains("crashed.db-journal"),
            "{}",
            r.stderr
        );
        assert!(r.stderr.contains("read-write"), "says what to do: {}", r.stderr);
        assert!(!r.stderr.contains("readonly database"), "{}", r.stderr);
        let r = w.run(&["backup", &s, &repo, "--kind", kind, "--json"]).fails(7);
        assert_eq!(r.json()["error"]["code"], "source.hot-journal");
        assert_eq!(listing(&data), before, "nothing rolled back, nothing removed");
    }
    let v = w.run(&["snapshots", &repo, "--json"]).ok();
    assert!(!v.stdout.contains("crashed.db"), "no snapshot was made: {}", v.stdout);
    // The audit names the same journal.
    let a = w.run(&["audit", &s, "--json"]);
    assert_eq!(a.code, 13);
    assert!(
        findings_of(&a.json(), &format!("{s}-journal"))
            .iter()
            .any(|(c, _, _)| c == "db.hot-journal"),
        "{}",
        a.stdout
    );
    // Rolled back by a read-write open (what the error says to do), it backs up.
    Connection::open(&db)
        .unwrap()
        .query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
        .unwrap();
    w.run(&["backup", &s, &repo]).ok();
}

#[test]
fn db_encrypt_and_decrypt_keep_the_page_size_or_say_why_not() {
    let w = World::new();
    let kf = secret(&w, "db.key", "page-size-secret");
    for (name, page) in [
        ("dbfuzz2-seed1.db", 512),
        ("mbtiles_plain_1.mbtiles", 1024),
        ("fuzzdata6.db", 8192),
        ("mbtiles_geocoder_data.mbtiles", 65536),
    ] {
        let db = copy(w.dir.path(), name);
        let plain = sum(&db, None);
        let mut enc = vec!["db", "encrypt", &db, "--key-file", &kf, "--json"];
        let want = if page == 512 {
            let bytes = std::fs::read(&db).unwrap();
            let r = w.run(&enc).fails(2);
            assert_eq!(r.json()["error"]["code"], "db.page-size");
            assert!(
                r.stderr.contains("--page-size") && r.stderr.contains("512"),
                "{}",
                r.stderr
            );
            assert_eq!(std::fs::read(&db).unwrap(), bytes, "refused: untouched");
            enc.extend(["--page-size", "1024"]);
            1024
        } else {
            page
        };
        let r = w.run(&enc).ok();
        assert_no_secret(&r, &["page-size-secret"]);
        let v = r.json();
        assert_eq!(v["page_size"]["before"], page, "{name}");
        assert_eq!(v["page_size"]["after"], want, "{name}");
        assert_eq!(v["after"]["page_size"], want, "{name}");
        if want != 4096 {
            assert!(
                v["note"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("cipher_page_size = {want}")),
                "{name}: {v}"
            );
        }
        assert_eq!(sum(&db, Some("page-size-secret")), plain, "{name}");
        let r = w.run(&["db", "decrypt", &db, "--key-file", &kf]).ok();
        assert!(r.stdout.contains(&format!("page size {want} kept")), "{}", r.stdout);
        assert_eq!(page_size(&db), want, "{name}: decrypt keeps the page size");
        assert_eq!(sum(&db, None), plain, "{name}");
    }
}

#[test]
fn legacy_sqlcipher_files_back_up_and_migrate_and_a_wrong_key_is_still_wrong() {
    let w = World::new();
    let repo = w.s("repo");
    let (id, _) = w.setup(&repo, 64 << 10, false);
    let kf = secret(&w, "db.key", "testkey");
    let bad = secret(&w, "bad.key", "testkey2");
    for name in ["sqlcipher-1.1.8-testkey.db", "sqlcipher-2.0-le-testkey.db"] {
        let db = copy(w.dir.path(), name);
        let before = std::fs::read(&db).unwrap();
        let r = w.run(&["backup", &db, &repo, "--db-key-file", &bad, "--json"]).fails(5);
        assert_eq!(r.json()["error"]["code"], "source.wrong-key", "{name}");
        let r = w.run(&["db", "migrate", &db, "--key-file", &bad]).fails(5);
        assert!(r.stderr.contains("wrong database key"), "{}", r.stderr);
        assert_eq!(std::fs::read(&db).unwrap(), before);

        let s = sum(&db, Some("testkey"));
        w.run(&["backup", &db, &repo, "--db-key-file", &kf]).ok();
        let out = w.s(&format!("{name}.restored"));
        w.run(&["restore", &repo, &out, "-i", &id, "--name", name, "--db-key-file", &kf])
            .ok();
        assert_eq!(sum(&out, Some("testkey")), s, "{name}: restored");

        let v = w.run(&["db", "migrate", &db, "--key-file", &kf, "--json"]).ok().json();
        assert!(v["before"]["compatibility"].as_u64().unwrap() <= 2, "{v}");
        assert_eq!(v["after"]["compatibility"], 4);
        assert_eq!(v["unchanged"], false);
        // A SQLCipher 4 client opens it with the key alone.
        let c = Connection::open(&db).unwrap();
        c.pragma_update(None, "key", "testkey").unwrap();
        c.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get::<_, i64>(0))
            .unwrap();
        drop(c);
        assert_eq!(sum(&db, Some("testkey")), s, "{name}: migrated");
    }
}

#[test]
fn db_migrate_leaves_a_sqlcipher4_file_untouched() {
    let w = World::new();
    let dir = w.path("d");
    std::fs::create_dir(&dir).unwrap();
    let db = copy(&dir, "sqlcipher-4.0-testkey.db");
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
    std::fs::File::options()
        .write(true)
        .open(&db)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let kf = secret(&w, "db.key", "testkey");
    let before = listing(&dir);
    let r = w.run(&["db", "migrate", &db, "--key-file", &kf]).ok();
    assert!(r.stdout.contains("already SQLCipher 4"), "{}", r.stdout);
    assert!(!r.stdout.contains("4 → 4"), "{}", r.stdout);
    assert_eq!(listing(&dir), before);
    let v = w.run(&["db", "migrate", &db, "--key-file", &kf, "--json"]).ok().json();
    assert_eq!(v["unchanged"], true);
    assert_eq!(listing(&dir), before);
}

/// How many PBKDF2 runs a command made (sqlvault's own, and SQLCipher's on a
/// passphrase), from its debug log.
fn derivations(w: &World, args: &[&str]) -> usize {
    let r = w.run_env(args, &[("SQLVAULT_LOG", "sqlvault_sqlite::kdf=debug")]).ok();
    assert_no_secret(&r, &["kdf-secret-1", "kdf-secret-2"]);
    r.stderr.lines().filter(|l| l.contains("derive")).count()
}

#[test]
fn db_commands_derive_each_key_once() {
    let w = World::new();
    let db = copy(w.dir.path(), "sqlcipher-4.0-testkey.db");
    let s = sum(&db, Some("testkey"));
    let old = secret(&w, "old.key", "testkey");
    let k1 = secret(&w, "k1.key", "kdf-secret-1");
    let k2 = secret(&w, "k2.key", "kdf-secret-2");
    // One derivation per key: the old one (found with the first settings tried), the
    // new one (its new salt). Five before: detection, the conversion's own open, the
    // new file's load, its verification and checksum connections.
    assert_eq!(
        derivations(&w, &["db", "rekey", &db, "--key-file", &old, "--new-key-file", &k1]),
        2
    );
    assert_eq!(sum(&db, Some("kdf-secret-1")), s);
    assert_eq!(
        derivations(&w, &["db", "rekey", &db, "--key-file", &k1, "--new-key-file", &k2]),
        2
    );
    assert_eq!(derivations(&w, &["db", "migrate", &db, "--key-file", &k2]), 1);
    assert_eq!(derivations(&w, &["db", "decrypt", &db, "--key-file", &k2]), 1);
    assert_eq!(derivations(&w, &["db", "encrypt", &db, "--key-file", &k1]), 1);
    assert_eq!(sum(&db, Some("kdf-secret-1")), s);
    // The files are what SQLCipher itself makes of the passphrase: a client given only
    // `PRAGMA key` opens them.
    let c = Connection::open(&db).unwrap();
    c.pragma_update(None, "key", "kdf-secret-1").unwrap();
    let n: i64 = c
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .unwrap();
    assert!(n > 0);
}
