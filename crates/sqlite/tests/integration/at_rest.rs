//! At rest, on real databases from the corpus (always copied first, never opened in
//! place): audits write nothing, a key does not hide plaintext findings, conversions
//! keep the page size, legacy SQLCipher files open and migrate, a file already in the
//! target format is left alone, a hot journal is named.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;
use sqlvault_sqlite::{
    AtRest, AuditOptions, Auditor, ConvertOptions, DbKey, Severity, Source, SourceOptions, SqliteError, Unlock,
    decrypt, encrypt, migrate, probe, verify_file, verify_file_with,
};

/// Copies corpus files into `dir` (writable copies), returns the first one's path.
fn copy(dir: &Path, names: &[&str]) -> PathBuf {
    for n in names {
        let to = dir.join(n);
        std::fs::copy(sqlvault_testkit::corpus_dir().join(n), &to).unwrap();
        let mut p = std::fs::metadata(&to).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o600);
        std::fs::set_permissions(&to, p).unwrap();
    }
    dir.join(names[0])
}

fn key(s: &str) -> DbKey {
    DbKey::from_text(s).unwrap()
}

/// Every entry of `dir`: name → (size, BLAKE3 of the content, mtime in ns).
fn listing(dir: &Path) -> BTreeMap<String, (u64, String, i128)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            let h = blake3::hash(&std::fs::read(e.path()).unwrap()).to_hex().to_string();
            (
                e.file_name().to_string_lossy().into_owned(),
                (m.len(), h, m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128),
            )
        })
        .collect()
}

fn audit(path: &Path, unlock: Option<Unlock>) -> sqlvault_sqlite::AuditReport {
    let mut a = Auditor::new(AuditOptions {
        unlock,
        ..AuditOptions::default()
    });
    a.scan(path).unwrap();
    a.finish()
}

fn codes(r: &sqlvault_sqlite::AuditReport, p: &Path) -> Vec<(&'static str, String)> {
    r.findings
        .iter()
        .filter(|f| f.path == p)
        .map(|f| (f.code, f.message.clone()))
        .collect()
}

fn page_size_plain(p: &Path) -> u32 {
    Connection::open_with_flags(p, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap()
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap()
}

fn cipher_page_size(p: &Path, k: &str) -> u32 {
    match probe(p, Some(&Unlock::key(key(k)))).unwrap() {
        AtRest::Encrypted(Some(s)) => s.page_size,
        other => panic!("{}: {other:?}", p.display()),
    }
}

#[test]
fn auditing_writes_nothing_beside_any_database() {
    // Each case: a directory, and what the audit must find inside the database.
    let dir = tempfile::tempdir().unwrap();

    // 1. A WAL database whose whole content is in an existing -wal, no -shm (corpus).
    let live = dir.path().join("live");
    std::fs::create_dir(&live).unwrap();
    copy(&live, &["qa_live_wal.db", "qa_live_wal.db-wal"]);

    // 2. A WAL database closed cleanly: no side file at all.
    let clean = dir.path().join("clean");
    std::fs::create_dir(&clean).unwrap();
    copy(&clean, &["sqliteutils_worldcities.db"]);
    assert!(!clean.join("sqliteutils_worldcities.db-wal").exists());

    // 3. A rollback-mode database.
    let rollback = dir.path().join("rollback");
    std::fs::create_dir(&rollback).unwrap();
    copy(&rollback, &["chinook.sqlite"]);

    // 4. An encrypted WAL database, closed cleanly.
    let enc = dir.path().join("enc");
    std::fs::create_dir(&enc).unwrap();
    let e = copy(&enc, &["sqlcipher-4.0-testkey.db"]);
    {
        let c = Connection::open(&e).unwrap();
        c.pragma_update(None, "key", "testkey").unwrap();
        let m: String = c.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).unwrap();
        assert_eq!(m, "wal");
    }
    assert!(!enc.join("sqlcipher-4.0-testkey.db-wal").exists());

    for (d, db, sides) in [
        (&live, "qa_live_wal.db", 1),
        (&clean, "sqliteutils_worldcities.db", 0),
        (&rollback, "chinook.sqlite", 0),
        (&enc, "sqlcipher-4.0-testkey.db", 0),
    ] {
        let before = listing(d);
        assert_eq!(before.len(), 1 + sides, "{before:?}");
        let r = audit(d, Some(Unlock::key(key("testkey"))));
        assert_eq!(listing(d), before, "{db}: the audit wrote beside the database");
        let found = codes(&r, &d.join(db));
        // The content was read (in the -wal for the live one): it holds data.
        assert!(
            !found
                .iter()
                .any(|(c, _)| c.starts_with("db.not-checked") || *c == "db.unreadable"),
            "{db}: {found:?}"
        );
        if db.starts_with("sqlcipher") {
            assert!(!found.iter().any(|(c, _)| *c == "db.plaintext"), "{db}: {found:?}");
        } else {
            assert!(found.iter().any(|(c, _)| *c == "db.plaintext"), "{db}: {found:?}");
        }
    }
    // The -wal's content was seen, not the empty main file: facts say so.
    let f = sqlvault_sqlite::db_facts(&live.join("qa_live_wal.db"), None, Duration::from_secs(5)).unwrap();
    assert!(f.holds_data && f.wal, "{f:?}");
    assert!(f.page_count > 1, "{f:?}");

    // 5. An application (another process: SQLite shares one -shm mapping between the
    // connections of a process) holds a WAL database open, -wal and -shm present:
    // nothing the audit does changes a byte of any of the three files.
    let app = dir.path().join("app");
    std::fs::create_dir(&app).unwrap();
    let a = app.join("app.db");
    let mut holder = sqlvault_testkit::python_ready(
        &format!(
            "import sqlite3, sys\nc = sqlite3.connect({:?}, isolation_level=None)\nc.execute('PRAGMA journal_mode=WAL')\nc.execute('PRAGMA wal_autocheckpoint=0')\nc.execute('CREATE TABLE t(x)')\nc.execute('INSERT INTO t VALUES (randomblob(5000))')\nprint('ready', flush=True)\nsys.stdin.read()",
            a.display().to_string()
        ),
        &[],
    );
    let before = listing(&app);
    assert_eq!(before.len(), 3, "{before:?}");
    let r = audit(&app, None);
    assert_eq!(listing(&app), before, "the audit wrote beside a live database");
    assert!(
        codes(&r, &a).iter().any(|(c, _)| *c == "db.plaintext"),
        "{:?}",
        r.findings
    );
    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());
}

#[test]
fn a_database_key_does_not_hide_the_plaintext_databases_findings() {
    let dir = tempfile::tempdir().unwrap();
    copy(
        dir.path(),
        &[
            "chinook.sqlite",
            "sqlcipher-4.0-testkey.db",
            "debian_sqlcipher3_rawkey.db",
        ],
    );
    for unlock in [None, Some(Unlock::key(key("testkey")))] {
        let keyed = unlock.is_some();
        let r = audit(dir.path(), unlock);
        let plain = codes(&r, &dir.path().join("chinook.sqlite"));
        assert!(
            plain.iter().any(|(c, _)| *c == "db.plaintext"),
            "keyed {keyed}: {plain:?}"
        );
        assert!(!plain.iter().any(|(c, _)| c.starts_with("db.not-checked")), "{plain:?}");
        let enc = codes(&r, &dir.path().join("sqlcipher-4.0-testkey.db"));
        let other = codes(&r, &dir.path().join("debian_sqlcipher3_rawkey.db"));
        if keyed {
            assert!(enc.is_empty(), "{enc:?}");
            // A file the key does not open is reported as such, not dropped.
            let (sev, msg) = r
                .findings
                .iter()
                .find(|f| f.path == dir.path().join("debian_sqlcipher3_rawkey.db"))
                .map(|f| (f.severity, f.message.clone()))
                .unwrap();
            assert_eq!(sev, Severity::Medium, "{other:?}");
            assert!(msg.contains("wrong database key"), "{msg}");
        } else {
            assert!(enc.iter().any(|(c, _)| *c == "db.encrypted"), "{enc:?}");
            assert!(other.iter().any(|(c, _)| *c == "db.encrypted"), "{other:?}");
        }
    }
}

#[test]
fn the_plaintext_advice_warns_about_applications_that_cannot_open_sqlcipher() {
    let dir = tempfile::tempdir().unwrap();
    let db = copy(dir.path(), &["fossil_node_mbtiles.fossil"]);
    let mut a = Auditor::new(AuditOptions::default());
    a.scan(&db).unwrap();
    let r = a.finish();
    let f = r.findings.iter().find(|f| f.code == "db.plaintext").unwrap();
    for word in ["SQLCipher", "Firefox", "Fossil", "GDAL", "Anki", "cannot open"] {
        assert!(f.fix.contains(word), "{word} not in {}", f.fix);
    }
}

#[test]
fn encrypt_and_decrypt_keep_every_page_size() {
    for (name, page) in [
        ("dbfuzz2-seed1.db", 512),
        ("sessionfuzz-data1.db", 512),
        ("mbtiles_plain_1.mbtiles", 1024),
        ("fuzzdata6.db", 8192),
        ("mbtiles_geocoder_data.mbtiles", 65536),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let db = copy(dir.path(), &[name]);
        assert_eq!(page_size_plain(&db), page, "{name}");
        let sum = verify_file(&db).unwrap().logical_checksum;
        let settings = sqlvault_sqlite::CipherSettings::defaults(4).unwrap();
        let kept = if page == 512 {
            // SQLCipher 4 keeps 80 bytes of a page: 512-byte pages cannot hold a page of
            // SQLite. Refused, saying why and what to choose; the file is untouched.
            let bytes = std::fs::read(&db).unwrap();
            let e = encrypt(&db, key("k"), settings.clone(), &ConvertOptions::default()).unwrap_err();
            let SqliteError::PageSize { what, .. } = &e else {
                panic!("{name}: {e}")
            };
            assert!(
                what.contains("--page-size") && what.contains("1024") && what.contains("80"),
                "{what}"
            );
            assert_eq!(std::fs::read(&db).unwrap(), bytes, "{name}");
            let rep = encrypt(
                &db,
                key("k"),
                settings,
                &ConvertOptions::default().with_page_size(Some(1024)),
            )
            .unwrap();
            assert_eq!(rep.page_size, (512, 1024));
            1024
        } else {
            let rep = encrypt(&db, key("k"), settings, &ConvertOptions::default()).unwrap();
            assert_eq!(rep.page_size, (page, page), "{name}");
            page
        };
        assert_eq!(cipher_page_size(&db, "k"), kept, "{name}");
        let r = verify_file_with(&db, Some(&Unlock::key(key("k")))).unwrap();
        assert!(r.problems.is_empty(), "{name}: {:?}", r.problems);
        assert_eq!(r.logical_checksum, sum, "{name}");
        let rep = decrypt(&db, &Unlock::key(key("k")), &ConvertOptions::default()).unwrap();
        assert_eq!(rep.page_size, (kept, kept), "{name}");
        assert_eq!(page_size_plain(&db), kept, "{name}: decrypt keeps the page size");
        assert_eq!(verify_file(&db).unwrap().logical_checksum, sum, "{name}");
        if page == 512 {
            // Back to the original size when asked.
            decrypt_again_to(&db, sum, 512);
        }
    }
}

/// Encrypts `db` (1024-byte pages) and decrypts it back to `page`-byte pages.
fn decrypt_again_to(db: &Path, sum: [u8; 32], page: u32) {
    let settings = sqlvault_sqlite::CipherSettings::defaults(4).unwrap();
    encrypt(db, key("k"), settings, &ConvertOptions::default()).unwrap();
    decrypt(
        db,
        &Unlock::key(key("k")),
        &ConvertOptions::default().with_page_size(Some(page)),
    )
    .unwrap();
    assert_eq!(page_size_plain(db), page);
    assert_eq!(verify_file(db).unwrap().logical_checksum, sum);
}

#[test]
fn legacy_sqlcipher_files_open_back_up_and_migrate_to_sqlcipher_4() {
    for (name, compat) in [("sqlcipher-1.1.8-testkey.db", 1), ("sqlcipher-2.0-le-testkey.db", 2)] {
        let dir = tempfile::tempdir().unwrap();
        let db = copy(dir.path(), &[name]);
        // A wrong key is still a wrong key.
        let e = probe(&db, Some(&Unlock::key(key("not the key")))).unwrap_err();
        assert!(matches!(e, SqliteError::WrongKey { .. }), "{name}: {e}");
        assert!(e.to_string().contains("wrong database key"), "{e}");
        // The right key opens it, with its legacy settings detected.
        let unlock = Unlock::key(key("testkey"));
        let AtRest::Encrypted(Some(s)) = probe(&db, Some(&unlock)).unwrap() else {
            panic!("{name}")
        };
        assert_eq!(
            (s.compatibility, s.page_size, s.kdf_iter),
            (compat, 1024, 4000),
            "{name}"
        );
        let r = verify_file_with(&db, Some(&unlock)).unwrap();
        assert!(r.problems.is_empty(), "{name}: {:?}", r.problems);
        let sum = r.logical_checksum;
        // A snapshot (what a backup streams) reads it.
        let mut src = Source::open(&db, SourceOptions::default().with_unlock(Some(unlock.clone()))).unwrap();
        let mut pages = 0u64;
        let (_, snap_sum, _) = src
            .snapshot(|_, _| {
                pages += 1;
                Ok::<(), std::io::Error>(())
            })
            .unwrap();
        assert_eq!(snap_sum, sum, "{name}");
        assert!(pages > 100, "{name}");
        drop(src);
        // Migrate upgrades it to SQLCipher 4 defaults, same key, same rows.
        let rep = migrate(&db, &unlock, &ConvertOptions::default()).unwrap();
        assert!(!rep.unchanged);
        assert_eq!(rep.before.as_ref().unwrap().compatibility, compat);
        assert_eq!(rep.after, Some(sqlvault_sqlite::CipherSettings::defaults(4).unwrap()));
        let v4 = Unlock::with_compatibility(key("testkey"), 4).unwrap();
        let r = verify_file_with(&db, Some(&v4)).unwrap();
        assert!(r.problems.is_empty(), "{name}: {:?}", r.problems);
        assert_eq!(r.logical_checksum, sum, "{name}");
    }
}

#[test]
fn migrate_leaves_a_file_already_in_sqlcipher_4_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let db = copy(dir.path(), &["sqlcipher-4.0-testkey.db"]);
    // An old mtime, so that a rewrite within the same second would still show.
    let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    std::fs::File::options()
        .write(true)
        .open(&db)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let before = listing(dir.path());
    let ino = std::fs::metadata(&db).unwrap().ino();
    let rep = migrate(&db, &Unlock::key(key("testkey")), &ConvertOptions::default()).unwrap();
    assert!(rep.unchanged);
    assert_eq!(rep.before, rep.after);
    assert_eq!(listing(dir.path()), before);
    assert_eq!(std::fs::metadata(&db).unwrap().ino(), ino);
    // A wrong key is not "already SQLCipher 4".
    let e = migrate(&db, &Unlock::key(key("nope")), &ConvertOptions::default()).unwrap_err();
    assert!(matches!(e, SqliteError::WrongKey { .. }), "{e}");
    assert_eq!(listing(dir.path()), before);
}

#[test]
fn a_hot_journal_is_named_by_every_read_only_open() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crashed.db");
    sqlvault_testkit::crash_a_writer(&db);
    let before = listing(dir.path());
    let check = |e: SqliteError| {
        let SqliteError::HotJournal { journal, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(journal, &dir.path().join("crashed.db-journal"));
        let s = e.to_string();
        assert!(
            s.contains("hot journal") && s.contains("crashed.db-journal") && !s.contains('\n'),
            "{s}"
        );
    };
    check(Source::open(&db, SourceOptions::default()).err().unwrap());
    check(verify_file(&db).unwrap_err());
    assert_eq!(listing(dir.path()), before, "nothing rolled back, nothing removed");
    // Once the application (here: a read-write open) has rolled it back, it reads.
    Connection::open(&db)
        .unwrap()
        .query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
        .unwrap();
    assert!(!dir.path().join("crashed.db-journal").exists());
    Source::open(&db, SourceOptions::default()).unwrap();
}
