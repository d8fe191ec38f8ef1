//! SQLCipher at rest: conversions, detection, keyed snapshots.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;
use sqlvault_sqlite::{
    AtRest, CipherSettings, ConvertOptions, DbKey, Source, SourceOptions, SqliteError, Unlock, decrypt, encrypt,
    logical_checksum, migrate, probe, rekey, verify_file, verify_file_with,
};
use sqlvault_testkit::{TrickyOptions, tricky};

const PASS: &str = "correct horse battery staple";
const RAW: &str = "x'2DD29CA851E7B56E4697B0E1F08507293D761A05CE4D1B628663F411A8086D99'";

fn key(s: &str) -> DbKey {
    DbKey::from_text(s).unwrap()
}

fn plain_sum(p: &Path) -> [u8; 32] {
    let rep = verify_file(p).unwrap();
    assert!(rep.problems.is_empty(), "{:?}", rep.problems);
    rep.logical_checksum
}

fn keyed_sum(p: &Path, k: &str) -> [u8; 32] {
    let rep = verify_file_with(p, Some(&Unlock::key(key(k)))).unwrap();
    assert!(rep.problems.is_empty(), "{:?}", rep.problems);
    rep.logical_checksum
}

/// Every file in `dir` other than the ones named.
fn others(dir: &Path, keep: &[&str]) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !keep.iter().any(|k| p.file_name().unwrap() == *k))
        .collect()
}

fn head16(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()[..16].to_vec()
}

#[test]
fn encrypt_decrypt_rekey_keep_every_row_mode_and_owner() {
    for wal in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        tricky(
            &db,
            &TrickyOptions {
                wal,
                page_size: 8192,
                auto_vacuum: 1,
                ..TrickyOptions::default()
            },
        )
        .unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o640)).unwrap();
        let sum = plain_sum(&db);
        let opts = ConvertOptions::default();

        let rep = encrypt(&db, key(PASS), CipherSettings::defaults(4).unwrap(), &opts).unwrap();
        assert_eq!(rep.logical_checksum, sum);
        assert!(rep.before.is_none());
        assert_eq!(rep.after.as_ref().unwrap().compatibility, 4);
        assert_ne!(head16(&db), b"SQLite format 3\0");
        assert_eq!(std::fs::metadata(&db).unwrap().permissions().mode() & 0o777, 0o640);
        assert!(
            others(dir.path(), &["app.db"]).is_empty(),
            "{:?}",
            others(dir.path(), &["app.db"])
        );
        // Without the key, or with a wrong one: named, one line, nothing changed.
        assert!(matches!(verify_file(&db), Err(SqliteError::Encrypted { .. })));
        let before = std::fs::read(&db).unwrap();
        let e = decrypt(&db, &Unlock::key(key("wrong")), &opts).unwrap_err();
        assert!(matches!(e, SqliteError::WrongKey { .. }), "{e}");
        assert!(!e.to_string().contains("wrong\""));
        assert_eq!(std::fs::read(&db).unwrap(), before);
        assert_eq!(keyed_sum(&db, PASS), sum);
        // The journal mode comes back with the new file, and the page size is kept (a
        // client must be told it: it is not SQLCipher 4's default).
        let (c, _) = (Connection::open(&db).unwrap(), ());
        c.pragma_update(None, "key", PASS).unwrap();
        c.pragma_update(None, "cipher_page_size", 8192).unwrap();
        let mode: String = c.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, if wal { "wal" } else { "delete" });
        drop(c);

        rekey(&db, &Unlock::key(key(PASS)), key(RAW), &opts).unwrap();
        assert!(matches!(
            verify_file_with(&db, Some(&Unlock::key(key(PASS)))),
            Err(SqliteError::WrongKey { .. })
        ));
        assert_eq!(keyed_sum(&db, RAW), sum);

        let rep = decrypt(&db, &Unlock::key(key(RAW)), &opts).unwrap();
        assert!(rep.after.is_none());
        assert_eq!(head16(&db), b"SQLite format 3\0");
        assert_eq!(plain_sum(&db), sum);
        let c = Connection::open(&db).unwrap();
        let ps: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
        let av: i64 = c.query_row("PRAGMA auto_vacuum", [], |r| r.get(0)).unwrap();
        assert_eq!((av, ps), (1, 8192), "auto_vacuum and page size kept");
        assert!(others(dir.path(), &["app.db", "app.db-wal", "app.db-shm"]).is_empty());
    }
}

#[test]
fn sqlcipher3_files_are_detected_and_migrate_to_4() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("legacy.db");
    tricky(&db, &TrickyOptions::default()).unwrap();
    let sum = plain_sum(&db);
    let opts = ConvertOptions::default();
    // SQLCipher 3's defaults, its 1024-byte pages included (otherwise the page size of
    // the original is kept).
    encrypt(
        &db,
        key(PASS),
        CipherSettings::defaults(3).unwrap(),
        &opts.clone().with_page_size(Some(1024)),
    )
    .unwrap();
    // A SQLCipher 4 client with defaults cannot read it; detection finds version 3.
    let c = Connection::open(&db).unwrap();
    c.pragma_update(None, "key", PASS).unwrap();
    assert!(
        c.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
            .is_err()
    );
    drop(c);
    match probe(&db, Some(&Unlock::key(key(PASS)))).unwrap() {
        AtRest::Encrypted(Some(s)) => assert_eq!(s, CipherSettings::defaults(3).unwrap()),
        other => panic!("{other:?}"),
    }
    assert_eq!(probe(&db, None).unwrap(), AtRest::Encrypted(None));
    // An explicit compatibility that does not match is a wrong key, not a guess.
    assert!(matches!(
        probe(&db, Some(&Unlock::with_compatibility(key(PASS), 4).unwrap())),
        Err(SqliteError::WrongKey { .. })
    ));
    let rep = migrate(&db, &Unlock::key(key(PASS)), &opts).unwrap();
    assert_eq!(rep.before.unwrap().compatibility, 3);
    assert_eq!(rep.after.unwrap(), CipherSettings::defaults(4).unwrap());
    let c = Connection::open(&db).unwrap();
    c.pragma_update(None, "key", PASS).unwrap();
    assert_eq!(logical_checksum(&c).unwrap(), sum);
}

#[test]
fn conversion_refuses_a_database_in_use_and_leaves_it_untouched() {
    let dir = tempfile::tempdir().unwrap();
    for wal in [true, false] {
        let db = dir.path().join(format!("busy{wal}.db"));
        tricky(
            &db,
            &TrickyOptions {
                wal,
                ..TrickyOptions::default()
            },
        )
        .unwrap();
        let app = Connection::open(&db).unwrap();
        // A reader in the middle of a transaction (rollback mode holds a lock; WAL
        // mode refuses to leave WAL while another connection is open).
        app.execute_batch("BEGIN; SELECT count(*) FROM sqlite_schema;").unwrap();
        let before = std::fs::read(&db).unwrap();
        let e = encrypt(
            &db,
            key(PASS),
            CipherSettings::defaults(4).unwrap(),
            &ConvertOptions::default().with_busy_timeout(Duration::from_millis(200)),
        )
        .unwrap_err();
        assert!(matches!(e, SqliteError::InUse { .. }), "{e}");
        assert_eq!(std::fs::read(&db).unwrap(), before);
        app.execute_batch("COMMIT").unwrap();
        let mode: String = app.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, if wal { "wal" } else { "delete" });
        drop(app);
    }
    let left: Vec<_> = others(
        dir.path(),
        &["busytrue.db", "busyfalse.db", "busytrue.db-wal", "busytrue.db-shm"],
    );
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn keys_parse_like_sqlcipher_and_never_print() {
    assert!(DbKey::from_text(RAW).unwrap().is_raw());
    assert!(
        !DbKey::from_text(&RAW[2..66]).unwrap().is_raw(),
        "bare hex is a passphrase"
    );
    assert!(DbKey::from_text("\n").is_err());
    let e = DbKey::from_text("x'abc'").unwrap_err().to_string();
    assert!(!e.contains("abc"), "{e}");
    let k = DbKey::from_text("hunter2\n").unwrap();
    assert_eq!(format!("{k:?}"), "DbKey(<redacted>)");
    let salt = [7u8; 16];
    assert_eq!(k.check_value(&salt), key("hunter2").check_value(&salt));
    assert_ne!(k.check_value(&salt), key("hunter3").check_value(&salt));
    // A key for a plaintext file is refused, not ignored.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("p.db");
    tricky(&db, &TrickyOptions::default()).unwrap();
    assert!(matches!(
        Source::open(&db, SourceOptions::default().with_unlock(Some(Unlock::key(k)))),
        Err(SqliteError::NotEncrypted { .. })
    ));
}

#[test]
fn snapshots_of_an_encrypted_database_are_its_plaintext_pages() {
    for wal in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("enc.db");
        tricky(
            &db,
            &TrickyOptions {
                wal,
                ..TrickyOptions::default()
            },
        )
        .unwrap();
        let sum = plain_sum(&db);
        encrypt(
            &db,
            key(PASS),
            CipherSettings::defaults(4).unwrap(),
            &ConvertOptions::default(),
        )
        .unwrap();
        // The application keeps a connection open so a WAL stays in use.
        let app = Connection::open(&db).unwrap();
        app.pragma_update(None, "key", PASS).unwrap();
        app.execute_batch("CREATE TABLE extra(x); INSERT INTO extra VALUES (1);")
            .unwrap();
        let sum2 = logical_checksum(&app).unwrap();
        assert_ne!(sum, sum2);
        for force in [false, true] {
            let mut src = Source::open(
                &db,
                SourceOptions::default()
                    .with_force_backup_copy(force)
                    .with_unlock(Some(Unlock::key(key(PASS)))),
            )
            .unwrap();
            assert_eq!(src.cipher().unwrap().compatibility, 4);
            let mut bytes = Vec::new();
            let (info, s, _) = src
                .snapshot(|_, p| {
                    bytes.extend_from_slice(p);
                    Ok::<(), ()>(())
                })
                .unwrap();
            assert_eq!(s, sum2);
            assert_eq!(bytes.len(), info.page_size as usize * info.page_count as usize);
            let out = dir.path().join(format!("plain-{force}.db"));
            std::fs::write(&out, &bytes).unwrap();
            // The pages are plaintext: stock SQLite reads them, content equal.
            assert_eq!(plain_sum(&out), sum2);
        }
        let e = Source::open(&db, SourceOptions::default()).unwrap_err();
        assert!(matches!(e, SqliteError::Encrypted { .. }), "{e}");
    }
}
