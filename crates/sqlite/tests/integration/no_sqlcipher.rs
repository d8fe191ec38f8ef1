//! Without the `sqlcipher` feature (plain bundled SQLite), every operation that needs
//! SQLCipher fails with `SqliteError::NoSqlcipher` before touching a file, and an
//! encrypted database is still recognised as one.

use sqlvault_sqlite::{
    AtRest, CipherSettings, ConvertOptions, DbKey, LoadOptions, SqliteError, Unlock, encrypt, encrypt_image,
    has_sqlcipher, load, probe, verify_file_with,
};

fn unlock() -> Unlock {
    Unlock {
        key: DbKey::from_text("k").unwrap(),
        settings: Some(CipherSettings::defaults(4).unwrap()),
    }
}

fn plain_db(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("plain.db");
    let c = rusqlite::Connection::open(&p).unwrap();
    c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);").unwrap();
    p
}

fn assert_no_sqlcipher<T: std::fmt::Debug>(r: Result<T, SqliteError>) {
    match r {
        Err(e @ SqliteError::NoSqlcipher { .. }) => {
            assert!(e.to_string().contains("built without SQLCipher support"), "{e}")
        }
        other => panic!("expected NoSqlcipher, got {other:?}"),
    }
}

#[test]
fn sqlcipher_operations_fail_with_a_typed_error_when_sqlcipher_is_not_built_in() {
    assert!(!has_sqlcipher());
    let dir = sqlvault_sqlite::tempfile::tempdir().unwrap();
    let db = plain_db(dir.path());
    let before = std::fs::read(&db).unwrap();
    assert_no_sqlcipher(encrypt(
        &db,
        DbKey::from_text("k").unwrap(),
        CipherSettings::defaults(4).unwrap(),
        &ConvertOptions::default(),
    ));
    assert_eq!(std::fs::read(&db).unwrap(), before, "the original is untouched");
    assert_no_sqlcipher(encrypt_image(&db, &dir.path().join("out.db"), &unlock()));
    let dump = format!("{}\n", sqlvault_sqlite::DUMP_HEADER);
    let opts = LoadOptions::default().with_encrypt(Some(unlock()));
    assert_no_sqlcipher(load(
        dump.as_bytes(),
        "dump.sql".as_ref(),
        &dir.path().join("new.db"),
        &opts,
    ));
    assert!(!dir.path().join("new.db").exists());
}

#[test]
fn an_encrypted_file_is_recognised_but_not_opened_without_sqlcipher() {
    let dir = sqlvault_sqlite::tempfile::tempdir().unwrap();
    // Whole pages without the plaintext header: what a SQLCipher file looks like.
    let enc = dir.path().join("enc.db");
    std::fs::write(&enc, vec![0x5au8; 4096]).unwrap();
    assert_eq!(probe(&enc, None).unwrap(), AtRest::Encrypted(None));
    assert_no_sqlcipher(probe(&enc, Some(&unlock())));
    assert_no_sqlcipher(verify_file_with(&enc, Some(&unlock())));
}
