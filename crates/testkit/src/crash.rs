//! A crashed writer, as a real one leaves it.

use std::path::Path;
use std::process::Command;

use rusqlite::Connection;

/// SQLite's rollback-journal magic: the first bytes of a journal whose header is synced.
pub const JOURNAL_MAGIC: [u8; 4] = [0xd9, 0xd5, 0x05, 0xf9];

/// Creates the rollback-mode database `db` and leaves a hot `-journal` beside it, as a
/// writer that crashed mid-transaction does: a child process (python3 and its sqlite3
/// module) spills a small cache in the middle of a transaction — which syncs the
/// journal header and writes into the database — then exits without committing or
/// rolling back. Panics, naming what is missing, when it cannot.
pub fn crash_a_writer(db: &Path) {
    Connection::open(db)
        .unwrap()
        .execute_batch(
            "PRAGMA journal_mode=DELETE; CREATE TABLE t(x); WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 500) INSERT INTO t SELECT randomblob(200) FROM s;",
        )
        .unwrap();
    let st = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sqlite3, os\nc = sqlite3.connect({:?}, isolation_level=None)\nc.execute('PRAGMA cache_size = 10')\nc.execute('BEGIN')\nc.execute('UPDATE t SET x = zeroblob(200)')\nc.execute('PRAGMA cache_spill = 1')\nc.execute('WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 300) INSERT INTO t SELECT randomblob(4000) FROM s')\nos._exit(0)",
            db.display().to_string()
        ))
        .status()
        .expect("python3 (with its sqlite3 module) is needed to crash a writer");
    assert!(st.success());
    let mut j = db.as_os_str().to_os_string();
    j.push("-journal");
    assert_eq!(
        std::fs::read(&j).unwrap()[..4],
        JOURNAL_MAGIC,
        "fixture: a synced journal header"
    );
}

/// Runs `python3 -c script args…` with piped stdin and stdout, and returns once the
/// script has printed its first line, which must be `ready`: a process that holds a
/// database (open, or mid-transaction) for as long as the test needs. Its stdin stays
/// the test's to write to or close.
pub fn python_ready(script: &str, args: &[&str]) -> std::process::Child {
    use std::io::BufRead;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (with its sqlite3 module) is needed to hold a database");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("read the script's first line");
    assert_eq!(line.trim(), "ready", "the script did not start");
    child
}
