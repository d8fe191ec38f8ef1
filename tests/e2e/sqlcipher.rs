//! SQLCipher databases end to end: conversions through the CLI, backups of encrypted
//! databases, interoperability with independent SQLCipher clients, and secrets that
//! never show up in output or logs.

use std::path::Path;
use std::process::Command;

use rusqlite::Connection;

use crate::support::{World, assert_no_secret, kit};

const PASS: &str = "Tr0ub4dor&3 sqlvault secret";
const NEW_PASS: &str = "second-secret-0b5e2a";

fn keyed(p: &str, key: &str) -> Connection {
    let c = Connection::open(p).unwrap();
    c.pragma_update(None, "key", key).unwrap();
    c
}

fn sum_keyed(p: &str, key: &str) -> [u8; 32] {
    sqlvault_sqlite::verify_file_with(
        Path::new(p),
        Some(&sqlvault_sqlite::Unlock::key(
            sqlvault_sqlite::DbKey::from_text(key).unwrap(),
        )),
    )
    .unwrap()
    .logical_checksum
}

fn sum_plain(p: &str) -> [u8; 32] {
    sqlvault_sqlite::verify_file(Path::new(p)).unwrap().logical_checksum
}

fn write_secret(w: &World, name: &str, secret: &str) -> String {
    let p = w.s(name);
    std::fs::write(&p, format!("{secret}\n")).unwrap();
    p
}

#[test]
fn db_commands_convert_in_place_and_never_show_the_key() {
    let w = World::new();
    let db = w.s("app.db");
    kit::generate(
        Path::new(&db),
        &kit::GenOptions {
            target_bytes: 1 << 20,
            seed: 3,
            wal: true,
        },
    )
    .unwrap();
    let sum = sum_plain(&db);
    let kf = write_secret(&w, "db.key", PASS);
    let trace = [("SQLVAULT_LOG", "trace")];
    let r = w
        .run_env(&["db", "encrypt", &db, "--key-file", &kf, "--json"], &trace)
        .ok();
    assert_no_secret(&r, &[PASS]);
    assert_eq!(r.json()["after"]["compatibility"], 4);
    assert_eq!(sum_keyed(&db, PASS), sum);
    // Plain SQLite tools see noise now.
    assert_ne!(&std::fs::read(&db).unwrap()[..16], b"SQLite format 3\0");

    // A wrong key: exit 5, one line naming the file, the file untouched.
    let bad = write_secret(&w, "bad.key", "not-the-key-77");
    let before = std::fs::read(&db).unwrap();
    let r = w.run_env(&["db", "decrypt", &db, "--key-file", &bad], &trace).fails(5);
    assert!(r.stderr.contains("app.db"), "{}", r.stderr);
    assert_no_secret(&r, &["not-the-key-77"]);
    assert_eq!(std::fs::read(&db).unwrap(), before);
    // No key at all, no terminal: a usage error, not a prompt.
    w.run(&["db", "decrypt", &db]).fails(2);

    // Rekey with the old key in the environment, the new one from a file.
    let nf = write_secret(&w, "new.key", NEW_PASS);
    let r = w
        .run_env(
            &["db", "rekey", &db, "--new-key-file", &nf],
            &[("SQLVAULT_DB_KEY", PASS), ("SQLVAULT_LOG", "trace")],
        )
        .ok();
    assert_no_secret(&r, &[PASS, NEW_PASS]);
    assert_eq!(sum_keyed(&db, NEW_PASS), sum);
    let r = w
        .run_env(
            &["db", "decrypt", &db],
            &[("SQLVAULT_DB_KEY", NEW_PASS), ("SQLVAULT_LOG", "trace")],
        )
        .ok();
    assert_no_secret(&r, &[NEW_PASS]);
    assert_eq!(sum_plain(&db), sum);
    // Decrypting a plaintext file is refused by name.
    w.run_env(&["db", "decrypt", &db], &[("SQLVAULT_DB_KEY", NEW_PASS)])
        .fails(2);
}

#[test]
fn encrypted_databases_back_up_incrementally_and_restore_encrypted() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 4 << 20, true);
    let kf = write_secret(&w, "db.key", PASS);
    w.run(&["db", "encrypt", &db, "--key-file", &kf]).ok();
    let trace = [("SQLVAULT_LOG", "trace")];

    // Without the key the backup says what it needs.
    let r = w.run(&["backup", &db, &repo, "--json"]).fails(5);
    assert_eq!(r.json()["error"]["code"], "source.key-required");

    let first = w
        .run_env(&["backup", &db, &repo, "--db-key-file", &kf, "--json"], &trace)
        .ok();
    assert_no_secret(&first, &[PASS]);
    let first = first.json();
    // The application changes a few rows through its own keyed connection.
    {
        let c = keyed(&db, PASS);
        c.execute_batch("UPDATE orders SET status = 'refunded' WHERE id % 97 = 0")
            .unwrap();
    }
    let sum = sum_keyed(&db, PASS);
    let second = w
        .run_env(&["backup", &db, &repo, "--json"], &[("SQLVAULT_DB_KEY", PASS)])
        .ok()
        .json();
    let (b1, b2) = (
        first["bytes_new"].as_u64().unwrap(),
        second["bytes_new"].as_u64().unwrap(),
    );
    assert!(
        b2 * 5 < b1,
        "an incremental of an encrypted database stores only what changed: {b2} vs {b1}"
    );

    // Restore needs the key, refuses a wrong one, and leaves nothing behind.
    let out = w.s("restored.db");
    let r = w.run(&["restore", &repo, &out, "-i", &key, "--json"]).fails(5);
    assert_eq!(r.json()["error"]["code"], "restore.db-key-required");
    let bad = write_secret(&w, "bad.key", "wrong-key-123");
    let r = w
        .run(&["restore", &repo, &out, "-i", &key, "--db-key-file", &bad, "--json"])
        .fails(5);
    assert_eq!(r.json()["error"]["code"], "restore.wrong-db-key");
    assert!(!Path::new(&out).exists());
    let r = w
        .run_env(
            &["restore", &repo, &out, "-i", &key, "--db-key-file", &kf, "--json"],
            &trace,
        )
        .ok();
    assert_no_secret(&r, &[PASS]);
    assert_eq!(r.json()["encrypted"], true);
    assert_ne!(&std::fs::read(&out).unwrap()[..16], b"SQLite format 3\0");
    assert_eq!(sum_keyed(&out, PASS), sum);
    let mode: String = keyed(&out, PASS)
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    assert_eq!(crate::support::mode(Path::new(&out)), 0o600);

    // verify restores every snapshot encrypted and checks it with the key.
    let v = w
        .run_env(
            &["verify", &repo, "-i", &key, "--all", "--json"],
            &[("SQLVAULT_DB_KEY", PASS)],
        )
        .ok()
        .json();
    assert_eq!(v["ok"], true);
    assert_eq!(v["snapshots"].as_array().unwrap().len(), 2);
    w.run(&["verify", &repo, "-i", &key]).fails(5);

    // A dump snapshot of the encrypted database restores encrypted too.
    w.run_env(&["backup", &db, &repo, "--kind", "dump"], &[("SQLVAULT_DB_KEY", PASS)])
        .ok();
    let out2 = w.s("from-dump.db");
    w.run_env(&["restore", &repo, &out2, "-i", &key], &[("SQLVAULT_DB_KEY", PASS)])
        .ok();
    assert_eq!(sum_keyed(&out2, PASS), sum);
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs the Debian `sqlcipher` CLI (SQLCipher 3.4.1) with `sql` on stdin.
fn sqlcipher3(db: &str, sql: &str) -> String {
    assert!(
        have("sqlcipher"),
        "the sqlcipher CLI (Debian package sqlcipher) is required; .ci/run installs it"
    );
    let mut child = Command::new("sqlcipher")
        .arg(db)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(sql.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "sqlcipher failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn sqlcipher3_files_from_the_debian_cli_back_up_restore_and_migrate() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, _) = w.setup(&repo, 64 << 10, true);
    let legacy = w.s("legacy.db");
    sqlcipher3(
        &legacy,
        &format!(
            "PRAGMA key = '{PASS}';
             CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT, n REAL);
             WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM k WHERE i < 500)
             INSERT INTO notes(body, n) SELECT 'note ' || i || ' ' || hex(randomblob(20)), i / 7.0 FROM k;
             CREATE TABLE plain(x, y);
             INSERT INTO plain VALUES (1, 'a'), (2, x'00ff'), (NULL, 3.5);
             DELETE FROM plain WHERE x = 1;
             PRAGMA user_version = 9;"
        ),
    );
    let rows = |db: &str| {
        sqlcipher3(
            db,
            &format!(
                "PRAGMA key = '{PASS}';
                 SELECT count(*), sum(length(body)), sum(n) FROM notes;
                 SELECT rowid, quote(x), quote(y) FROM plain;
                 PRAGMA user_version;"
            ),
        )
    };
    let want = rows(&legacy);
    assert!(want.contains("500|"), "{want}");

    // Detected as SQLCipher 3, backed up, restored in the same format.
    let b = w
        .run_env(&["backup", &legacy, &repo, "--json"], &[("SQLVAULT_DB_KEY", PASS)])
        .ok();
    assert!(b.stdout.contains("\"snapshot_id\""), "{}", b.stdout);
    let out = w.s("legacy-restored.db");
    w.run_env(&["restore", &repo, &out, "-i", &key], &[("SQLVAULT_DB_KEY", PASS)])
        .ok();
    assert_eq!(rows(&out), want, "the Debian SQLCipher 3 CLI reads the restored file");

    // Migrate to SQLCipher 4: the same key opens it with SQLCipher 4 defaults.
    let r = w
        .run_env(&["db", "migrate", &legacy, "--json"], &[("SQLVAULT_DB_KEY", PASS)])
        .ok()
        .json();
    assert_eq!(r["before"]["compatibility"], 3);
    assert_eq!(r["after"]["compatibility"], 4);
    let c = keyed(&legacy, PASS);
    let n: i64 = c.query_row("SELECT count(*) FROM notes", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 500);
}

/// Runs Python with the independent SQLCipher 4.12 client (PyPI `sqlcipher3-binary`).
fn py_sqlcipher(script: &str) -> String {
    let o = Command::new("python3").args(["-c", script]).output().unwrap();
    assert!(
        o.status.success(),
        "python sqlcipher3 failed (PyPI sqlcipher3-binary is required; .ci/run installs it): {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn sqlcipher4_files_interoperate_with_an_independent_client() {
    let w = World::new();
    // A file sqlvault encrypts opens in the other client with the key alone.
    let db = w.s("ours.db");
    kit::generate(
        Path::new(&db),
        &kit::GenOptions {
            target_bytes: 256 << 10,
            seed: 5,
            wal: false,
        },
    )
    .unwrap();
    let n: i64 = Connection::open(&db)
        .unwrap()
        .query_row("SELECT count(*) FROM orders", [], |r| r.get(0))
        .unwrap();
    w.run_env(&["db", "encrypt", &db], &[("SQLVAULT_DB_KEY", PASS)]).ok();
    let got = py_sqlcipher(&format!(
        "import sqlcipher3; c = sqlcipher3.connect({db:?}); c.execute(\"PRAGMA key = '{PASS}'\"); \
         print(c.execute('SELECT count(*) FROM orders').fetchone()[0]); \
         print(c.execute('PRAGMA cipher_version').fetchone()[0])"
    ));
    let mut lines = got.lines();
    assert_eq!(lines.next().unwrap(), n.to_string());
    assert!(lines.next().unwrap().starts_with("4."), "{got}");

    // A file that client creates, with a raw key, opens in sqlvault.
    let theirs = w.s("theirs.db");
    let raw = "x'2DD29CA851E7B56E4697B0E1F08507293D761A05CE4D1B628663F411A8086D99'";
    py_sqlcipher(&format!(
        "import sqlcipher3; c = sqlcipher3.connect({theirs:?}); c.execute(\"PRAGMA key = \\\"{raw}\\\"\"); \
         c.execute('CREATE TABLE t(a, b)'); c.executemany('INSERT INTO t VALUES (?, ?)', [(i, 'v%d' % i) for i in range(300)]); \
         c.commit()"
    ));
    let kf = write_secret(&w, "raw.key", raw);
    let r = w.run(&["dump", &theirs, "--db-key-file", &kf]).ok();
    assert!(
        r.stdout.contains("INSERT INTO \"t\""),
        "{}",
        &r.stdout[..r.stdout.len().min(400)]
    );
    assert_eq!(r.stdout.matches("INSERT INTO \"t\"").count(), 300);
    assert_no_secret(&r, &[&raw[2..66]]);
}
