//! `sqlvault snapshot` and `sqlvault freeze` on live databases: a writer thread of
//! this test process commits one known row per transaction all along (~200 per
//! second), so every copy must hold exactly a committed state — rows 1..n, each with
//! its known content, nothing else — and a freeze must hold that writer (and every
//! checkpointer) for exactly as long as its command runs.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

use crate::support::{Run, World, assert_no_leftovers, assert_no_secret, mode};

/// Rows every test database starts with (ids 1..=PRELOAD).
const PRELOAD: i64 = 3000;

/// The content of row `id`: known to every check, different in length row to row.
fn body(id: i64) -> String {
    format!("row {id}: {}", "abcdefghij".repeat((id % 40) as usize + 5))
}

fn open(db: &Path, key: Option<&str>) -> Connection {
    let c = Connection::open(db).unwrap();
    if let Some(k) = key {
        c.pragma_update(None, "key", k).unwrap();
    }
    c
}

/// A database of PRELOAD rows, in WAL or rollback-journal (delete) mode.
fn create(db: &Path, wal: bool, key: Option<&str>) {
    let c = open(db, key);
    let mode: String = c
        .query_row(
            &format!("PRAGMA journal_mode = {}", if wal { "WAL" } else { "DELETE" }),
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(mode, if wal { "wal" } else { "delete" });
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        .unwrap();
    let tx = c.unchecked_transaction().unwrap();
    for id in 1..=PRELOAD {
        tx.execute("INSERT INTO t(id, body) VALUES (?1, ?2)", (id, body(id)))
            .unwrap();
    }
    tx.commit().unwrap();
}

/// Checks `db` passes integrity_check and holds exactly rows 1..=n with their known
/// contents; returns n.
#[track_caller]
fn committed_state(db: &Path, key: Option<&str>) -> i64 {
    let c = open(db, key);
    let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok", "{}", db.display());
    let mut stmt = c.prepare("SELECT id, body FROM t ORDER BY id").unwrap();
    let mut rows = stmt.query([]).unwrap();
    let mut n = 0;
    while let Some(r) = rows.next().unwrap() {
        let (id, b): (i64, String) = (r.get(0).unwrap(), r.get(1).unwrap());
        n += 1;
        assert_eq!(id, n, "{}: rows must be 1..n without a gap", db.display());
        assert_eq!(b, body(id), "{}: row {id} holds other content", db.display());
    }
    n
}

/// [`committed_state`] of a file with SQLCipher 3 settings (and the 4096-byte page
/// size `db encrypt` keeps).
#[track_caller]
fn committed_state_v3(db: &Path, key: &str) -> i64 {
    let copy = db.with_extension("v3-check.db");
    std::fs::copy(db, &copy).unwrap();
    let c = open(&copy, Some(key));
    c.execute_batch("PRAGMA cipher_compatibility = 3; PRAGMA cipher_page_size = 4096;")
        .unwrap();
    let n: i64 = c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok");
    drop(c);
    std::fs::remove_file(&copy).unwrap();
    n
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// One committed transaction of the writer: its row, when its commit returned (Unix
/// seconds) and how long the statement took, waits for locks included.
#[derive(Debug, Clone, Copy)]
struct Commit {
    id: i64,
    at: f64,
    wait: Duration,
}

/// A thread committing one row per transaction, about 200 per second, with a busy
/// handler that sleeps 1 ms (so the waits it measures are precise).
struct Writer {
    stop: Arc<AtomicBool>,
    last: Arc<AtomicI64>,
    handle: std::thread::JoinHandle<Vec<Commit>>,
}

impl Writer {
    fn start(db: &Path, key: Option<&str>) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let last = Arc::new(AtomicI64::new(PRELOAD));
        let (db, key) = (db.to_path_buf(), key.map(str::to_string));
        let (s, l) = (stop.clone(), last.clone());
        let handle = std::thread::spawn(move || {
            let mut c = open(&db, key.as_deref());
            // Commits, not fsyncs, are what this writer is about.
            c.execute_batch("PRAGMA synchronous = OFF").unwrap();
            c.busy_handler(Some(|n: i32| {
                std::thread::sleep(Duration::from_millis(1));
                n < 60_000
            }))
            .unwrap();
            let mut commits = Vec::new();
            let mut id = PRELOAD + 1;
            while !s.load(Ordering::SeqCst) {
                let t = Instant::now();
                c.execute("INSERT INTO t(id, body) VALUES (?1, ?2)", (id, body(id)))
                    .unwrap_or_else(|e| panic!("the writer could not commit row {id}: {e}"));
                let wait = t.elapsed();
                commits.push(Commit {
                    id,
                    at: unix_now(),
                    wait,
                });
                l.store(id, Ordering::SeqCst);
                id += 1;
                std::thread::sleep(Duration::from_millis(5).saturating_sub(t.elapsed()));
            }
            commits
        });
        Writer { stop, last, handle }
    }

    /// Rows committed so far.
    fn committed(&self) -> i64 {
        self.last.load(Ordering::SeqCst)
    }

    fn finish(self) -> Vec<Commit> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().expect("writer thread")
    }
}

fn digest(p: &Path) -> Vec<u8> {
    blake3::hash(&std::fs::read(p).unwrap()).as_bytes().to_vec()
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).filter(|w| *w == needle).count()
}

fn hex_sum(p: &Path, key: Option<&str>) -> String {
    let unlock = key.map(|k| sqlvault_sqlite::Unlock::key(sqlvault_sqlite::DbKey::from_text(k).unwrap()));
    let r = sqlvault_sqlite::verify_file_with(p, unlock.as_ref()).unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    r.logical_checksum.iter().map(|b| format!("{b:02x}")).collect()
}

#[track_caller]
fn names_file(r: &Run, file: &Path) {
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let line = r.stderr.lines().find(|l| l.starts_with("sqlvault: error:")).unwrap();
    assert!(line.contains(&name), "the error names {name}: {line}");
}

#[test]
fn snapshot_under_a_writer_holds_exactly_a_committed_state() {
    for wal in [true, false] {
        let w = World::new();
        let db = w.path("live.db");
        create(&db, wal, None);
        let writer = Writer::start(&db, None);
        std::thread::sleep(Duration::from_millis(300));
        let mut copies = Vec::new();
        for i in 0..3 {
            let out = w.path(&format!("copy{i}.db"));
            let before = writer.committed();
            let t = Instant::now();
            let j = w
                .run(&["snapshot", &w.s("live.db"), &w.s(&format!("copy{i}.db")), "--json"])
                .ok()
                .json();
            let took = t.elapsed();
            let after = writer.committed();
            assert_eq!(j["journal_mode"], if wal { "wal" } else { "delete" }, "{j}");
            assert_eq!(j["integrity_check"], "ok");
            assert_eq!(j["encrypted"], false);
            copies.push((out, before, after, j, took));
            std::thread::sleep(Duration::from_millis(150));
        }
        let commits = writer.finish();
        let last = commits.last().unwrap().id;
        assert!(commits.len() > 100, "the writer committed {} rows", commits.len());
        for (out, before, after, j, took) in copies {
            assert_eq!(mode(&out), 0o600);
            // The checksum the command reports is the copy's own.
            assert_eq!(j["logical_checksum"].as_str().unwrap(), hex_sum(&out, None));
            let n = committed_state(&out, None);
            // A state committed while the command ran: everything committed before it
            // started, nothing that was never committed.
            assert!(before <= n && n <= after && n <= last, "{before} <= {n} <= {after}");
            eprintln!(
                "snapshot ({}): {n} rows, {:.3}s, read transaction {:.4}s",
                if wal { "wal" } else { "delete" },
                took.as_secs_f64(),
                j["read_seconds"].as_f64().unwrap()
            );
        }
        assert_no_leftovers(w.dir.path(), "snapshots");
        if !wal {
            assert!(!w.path("live.db-wal").exists(), "a rollback database stays one");
        }
    }
}

#[test]
fn snapshot_vacuum_drops_what_was_deleted() {
    const MARKER: &[u8] = b"DELETED-SECRET-7f3a9c";
    let w = World::new();
    let db = w.path("live.db");
    create(&db, false, None);
    {
        let c = open(&db, None);
        c.execute_batch("PRAGMA secure_delete = OFF").unwrap();
        let tx = c.unchecked_transaction().unwrap();
        for i in 0..400 {
            tx.execute(
                "INSERT INTO t(id, body) VALUES (?1, ?2)",
                (
                    100_000 + i,
                    format!("{}-{i}-{}", String::from_utf8_lossy(MARKER), "z".repeat(300)),
                ),
            )
            .unwrap();
        }
        tx.commit().unwrap();
        c.execute("DELETE FROM t WHERE id >= 100000", []).unwrap();
    }
    // The residue is there to drop: on the freelist of the source.
    assert!(
        count(&std::fs::read(&db).unwrap(), MARKER) > 0,
        "the source keeps the deleted rows' bytes"
    );
    let source_sum = hex_sum(&db, None);

    let out = w.path("packed.db");
    let j = w
        .run(&["snapshot", &w.s("live.db"), &w.s("packed.db"), "--vacuum", "--json"])
        .ok()
        .json();
    assert_eq!(j["vacuumed"], true);
    assert!(j["freelist_before"].as_u64().unwrap() > 0, "{j}");
    assert_eq!(j["freelist_after"], 0);
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(count(&bytes, MARKER), 0, "deleted data survived in the vacuumed copy");
    assert_eq!(mode(&out), 0o600);
    assert_eq!(hex_sum(&out, None), source_sum);
    assert_eq!(committed_state(&out, None), PRELOAD);
    let free: i64 = open(&out, None)
        .query_row("PRAGMA freelist_count", [], |r| r.get(0))
        .unwrap();
    assert_eq!(free, 0);

    // Without --vacuum the copy is page for page: verified, free pages and all.
    let plain = w.path("plain.db");
    let j = w
        .run(&["snapshot", &w.s("live.db"), &w.s("plain.db"), "--json"])
        .ok()
        .json();
    assert_eq!(j["vacuumed"], false);
    assert_eq!(j["freelist_after"], j["freelist_before"]);
    assert!(std::fs::metadata(&plain).unwrap().len() > bytes.len() as u64);
    assert!(
        count(&std::fs::read(&plain).unwrap(), MARKER) > 0,
        "a page-for-page copy keeps the freelist's residue: what --vacuum is for"
    );
    assert_eq!(hex_sum(&plain, None), source_sum);
    assert_eq!(committed_state(&plain, None), PRELOAD);
    assert_no_leftovers(w.dir.path(), "vacuum");
}

#[test]
fn snapshot_refuses_an_existing_output_and_bad_sources_leaving_nothing() {
    let w = World::new();
    let db = w.path("live.db");
    create(&db, true, None);
    let out = w.path("out/copy.db");
    std::fs::create_dir(w.path("out")).unwrap();
    std::fs::write(&out, b"precious bytes").unwrap();
    let r = w
        .run(&["snapshot", &w.s("live.db"), &w.s("out/copy.db"), "--json"])
        .fails(8);
    assert_eq!(r.json()["error"]["code"], "snapshot.output-exists");
    names_file(&r, &out);
    assert!(r.stderr.contains("--force"), "{}", r.stderr);
    assert_eq!(std::fs::read(&out).unwrap(), b"precious bytes");
    w.run(&["snapshot", &w.s("live.db"), &w.s("out/copy.db"), "--force"])
        .ok();
    assert_eq!(committed_state(&out, None), PRELOAD);
    std::fs::remove_file(&out).unwrap();

    // Not a database, missing, a missing directory: one line naming the file, nothing
    // at OUT, no scratch file beside it.
    std::fs::write(w.path("junk.db"), vec![b'x'; 5000]).unwrap();
    let r = w.run(&["snapshot", &w.s("junk.db"), &w.s("out/copy.db")]).fails(7);
    names_file(&r, &w.path("junk.db"));
    let r = w.run(&["snapshot", &w.s("missing.db"), &w.s("out/copy.db")]).fails(4);
    names_file(&r, &w.path("missing.db"));
    let r = w.run(&["snapshot", &w.s("live.db"), &w.s("nowhere/copy.db")]).fails(4);
    assert!(r.stderr.contains("nowhere"), "{}", r.stderr);
    // The database itself is not a destination, even with --force.
    w.run(&["snapshot", &w.s("live.db"), &w.s("live.db"), "--force"])
        .fails(8);
    assert_eq!(committed_state(&db, None), PRELOAD);
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(w.path("out")).unwrap().count(),
        0,
        "nothing left in OUT's directory"
    );
    assert_no_leftovers(w.dir.path(), "refusals");
}

#[test]
fn snapshot_of_a_sqlcipher_database_opens_only_with_its_key() {
    const PASS: &str = "snapshot key 4e1f";
    let w = World::new();
    let db = w.path("secret.db");
    create(&db, true, Some(PASS));
    let kf = w.path("db.key");
    std::fs::write(&kf, format!("{PASS}\n")).unwrap();
    let writer = Writer::start(&db, Some(PASS));
    std::thread::sleep(Duration::from_millis(200));
    let r = w.run(&[
        "snapshot",
        &w.s("secret.db"),
        &w.s("copy.db"),
        "--db-key-file",
        &w.s("db.key"),
        "--json",
    ]);
    let r = r.ok();
    assert_no_secret(&r, &[PASS]);
    let j = r.json();
    assert_eq!(j["encrypted"], true);
    assert_eq!(j["cipher_compatibility"], 4);
    // Vacuumed too (SQLCipher 4 settings): still encrypted with the same key.
    w.run(&[
        "snapshot",
        &w.s("secret.db"),
        &w.s("packed.db"),
        "--vacuum",
        "--db-key-file",
        &w.s("db.key"),
    ])
    .ok();
    let commits = writer.finish();
    for p in [w.path("copy.db"), w.path("packed.db")] {
        assert_eq!(mode(&p), 0o600);
        let head = std::fs::read(&p).unwrap();
        assert_ne!(&head[..16], b"SQLite format 3\0", "{} is plaintext", p.display());
        // Without the key it is not a database; with it, a committed state.
        let e = Connection::open(&p)
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0));
        assert!(e.is_err(), "{} opened without the key", p.display());
        let n = committed_state(&p, Some(PASS));
        assert!(n >= PRELOAD && n <= commits.last().unwrap().id);
    }
    assert_eq!(
        j["logical_checksum"].as_str().unwrap(),
        hex_sum(&w.path("copy.db"), Some(PASS))
    );

    // Without the key (no terminal to ask on), or with a wrong one: exit 5, one line,
    // nothing written.
    let r = w.run(&["snapshot", &w.s("secret.db"), &w.s("nokey.db")]).fails(5);
    names_file(&r, &db);
    std::fs::write(w.path("bad.key"), "not the key 99\n").unwrap();
    let r = w
        .run(&[
            "snapshot",
            &w.s("secret.db"),
            &w.s("bad.db"),
            "--db-key-file",
            &w.s("bad.key"),
        ])
        .fails(5);
    names_file(&r, &db);
    assert_no_secret(&r, &["not the key 99", PASS]);
    assert!(!w.path("nokey.db").exists() && !w.path("bad.db").exists());

    // SQLCipher 3 settings: copied as they are; a vacuum (whose output SQLCipher
    // writes with its defaults) is refused before anything is read.
    let old = w.path("old.db");
    create(&old, false, None);
    w.run(&[
        "db",
        "encrypt",
        &w.s("old.db"),
        "--key-file",
        &w.s("db.key"),
        "--cipher-compat",
        "3",
    ])
    .ok();
    let j = w
        .run(&[
            "snapshot",
            &w.s("old.db"),
            &w.s("old-copy.db"),
            "--db-key-file",
            &w.s("db.key"),
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(j["cipher_compatibility"], 3);
    assert_eq!(committed_state_v3(&w.path("old-copy.db"), PASS), PRELOAD);
    let r = w
        .run(&[
            "snapshot",
            &w.s("old.db"),
            &w.s("old-packed.db"),
            "--vacuum",
            "--db-key-file",
            &w.s("db.key"),
        ])
        .fails(2);
    assert!(r.stderr.contains("without vacuuming"), "{}", r.stderr);
    assert!(!w.path("old-packed.db").exists());
    assert_no_leftovers(w.dir.path(), "sqlcipher snapshots");
}

/// A process that runs `PRAGMA wal_checkpoint(PASSIVE)` on `db` in a loop.
fn checkpointer(db: &Path) -> std::process::Child {
    Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys, time\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
             while True:\n    c.execute('PRAGMA wal_checkpoint(PASSIVE)').fetchall()\n    time.sleep(0.002)\n",
        )
        .arg(db)
        .stdin(Stdio::null())
        .spawn()
        .expect("python3 runs")
}

fn read_f64(p: &Path) -> f64 {
    std::fs::read_to_string(p)
        .unwrap()
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[track_caller]
fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn freeze_holds_writers_and_checkpoints_while_the_command_copies() {
    let w = World::new();
    let db = w.path("live.db");
    create(&db, true, None);
    // A reader holding an old state keeps checkpoints from catching up until it ends,
    // which it does in the middle of the freeze: from then on the checkpointer has
    // frames to copy into the main file, and only the freeze's checkpoint lock stops it.
    let reader = open(&db, None);
    reader.execute_batch("BEGIN; SELECT count(*) FROM t;").unwrap();
    let writer = Writer::start(&db, None);
    let mut ckpt = checkpointer(&db);
    std::thread::sleep(Duration::from_millis(400));

    let q = |p: &str| format!("'{}'", w.s(p));
    let script = format!(
        "date +%s.%N > {t0}; sha256sum {db} > {h1}; sleep 0.5; cp {db} {copy}; \
         [ -f {db}-wal ] && cp {db}-wal {copy}-wal; sha256sum {db} > {h2}; date +%s.%N > {t1}; true",
        t0 = q("t0"),
        t1 = q("t1"),
        h1 = q("h1"),
        h2 = q("h2"),
        db = q("live.db"),
        copy = q("snap/copy.db"),
    );
    std::fs::create_dir(w.path("snap")).unwrap();
    let run = std::thread::scope(|s| {
        let frozen = s.spawn(|| {
            w.run(&[
                "freeze",
                &w.s("live.db"),
                "--timeout",
                "30",
                "--json",
                "--",
                "sh",
                "-c",
                &script,
            ])
        });
        wait_for("the command's first hash", Duration::from_secs(20), || {
            std::fs::read_to_string(w.path("h1")).is_ok_and(|h| h.len() >= 64)
        });
        reader.execute_batch("COMMIT").unwrap();
        frozen.join().unwrap()
    });
    let j = run.ok().json();
    assert!(ckpt.try_wait().unwrap().is_none(), "the checkpointer died");
    let (t0, t1) = (read_f64(&w.path("t0")), read_f64(&w.path("t1")));
    let h2_main = digest(&db);
    // The checkpointer was live all along: once the freeze ends it copies the frames.
    wait_for("a checkpoint after the freeze", Duration::from_secs(5), || {
        digest(&db) != h2_main
    });
    let commits = writer.finish();
    ckpt.kill().unwrap();
    ckpt.wait().unwrap();

    // The main file did not change while the command read it.
    let h1 = std::fs::read_to_string(w.path("h1")).unwrap();
    let h2 = std::fs::read_to_string(w.path("h2")).unwrap();
    assert_eq!(
        h1.split_whitespace().next(),
        h2.split_whitespace().next(),
        "a checkpoint ran during the freeze"
    );
    // No commit while the command ran, and none of the writer's waits longer than it.
    let during: Vec<&Commit> = commits.iter().filter(|c| c.at > t0 && c.at < t1).collect();
    assert!(
        during.is_empty(),
        "{} commits during the freeze, the first: {:?}",
        during.len(),
        during.first()
    );
    let longest = commits.iter().map(|c| c.wait).max().unwrap().as_secs_f64();
    let command = t1 - t0;
    let held = j["held_seconds"].as_f64().unwrap();
    eprintln!(
        "freeze: command {command:.4}s, held {held:.4}s, writer's longest wait {longest:.4}s, lock taken in {:.4}s",
        j["acquire_seconds"].as_f64().unwrap()
    );
    assert!(
        longest >= command,
        "the writer never waited for the freeze ({longest} < {command})"
    );
    assert!(
        longest <= command + 0.05,
        "writer waited {longest}s for a {command}s command"
    );
    assert!(
        held >= command && longest <= held + 0.02,
        "held {held}s, writer waited {longest}s"
    );
    assert_eq!(j["exit_code"], 0);
    assert_eq!(j["journal_mode"], "wal");

    // The copy is the state committed when the freeze began: every commit before it.
    let n = committed_state(&w.path("snap/copy.db"), None);
    let before = commits.iter().filter(|c| c.at < t0).count() as i64;
    assert_eq!(n, PRELOAD + before, "the copy holds the state at the freeze");
}

#[test]
fn freeze_times_out_kills_the_command_and_lets_writers_go() {
    let w = World::new();
    let db = w.path("live.db");
    create(&db, true, None);
    let commit_now = |id: i64| {
        let c = open(&db, None);
        c.busy_timeout(Duration::ZERO).unwrap();
        c.execute("INSERT INTO t(id, body) VALUES (?1, ?2)", (id, body(id)))
            .unwrap();
    };
    let gone = |pid_file: &str| {
        let pid = std::fs::read_to_string(w.path(pid_file)).unwrap();
        !Path::new(&format!("/proc/{}", pid.trim())).exists()
    };

    let t = Instant::now();
    let script = format!("echo $$ > '{}'; exec sleep 30", w.s("pid1"));
    let r = w
        .run(&[
            "freeze",
            &w.s("live.db"),
            "--timeout",
            "1",
            "--json",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .fails(19);
    let took = t.elapsed();
    assert!(took < Duration::from_secs(4), "took {took:?}");
    let j = r.json();
    assert_eq!(j["error"]["code"], "freeze.timeout");
    assert_eq!(j["timed_out"], true);
    assert_eq!(j["signal"], 15);
    assert!(r.stderr.contains("inconsistent"), "{}", r.stderr);
    assert!(gone("pid1"), "the command still runs");
    commit_now(PRELOAD + 1);

    // A command that ignores SIGTERM gets SIGKILL two seconds later.
    let t = Instant::now();
    let script = format!("trap '' TERM; echo $$ > '{}'; while :; do sleep 0.2; done", w.s("pid2"));
    let r = w
        .run(&["freeze", &w.s("live.db"), "--timeout", "1", "--", "sh", "-c", &script])
        .fails(19);
    let took = t.elapsed();
    assert!(took < Duration::from_secs(6), "took {took:?}");
    assert!(r.stderr.contains("SIGKILL"), "{}", r.stderr);
    assert!(gone("pid2"), "the command still runs");
    commit_now(PRELOAD + 2);

    // A failing command: exit 19, its status reported.
    let r = w.run(&["freeze", &w.s("live.db"), "--json", "--", "false"]).fails(19);
    assert_eq!(r.json()["error"]["code"], "freeze.command-failed");
    assert_eq!(r.json()["exit_code"], 1);
    let r = w.run(&["freeze", &w.s("live.db"), "--", "/no/such/program"]).fails(19);
    assert!(r.stderr.contains("/no/such/program"), "{}", r.stderr);
    commit_now(PRELOAD + 3);

    // SIGTERM to sqlvault while frozen: the command is stopped, not orphaned.
    let mut c = Command::new(env!("CARGO_BIN_EXE_sqlvault"));
    let script = format!("echo $$ > '{}'; exec sleep 30", w.s("pid3"));
    c.args(["freeze", &w.s("live.db"), "--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in &w.env {
        c.env(k, v);
    }
    let child = c.spawn().unwrap();
    wait_for("the command's pid", Duration::from_secs(10), || {
        std::fs::read_to_string(w.path("pid3")).is_ok_and(|p| p.ends_with('\n'))
    });
    let t = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(t.elapsed() < Duration::from_secs(4));
    assert!(gone("pid3"), "the command was orphaned");
    commit_now(PRELOAD + 4);
    assert_eq!(committed_state(&db, None), PRELOAD + 4);
}

#[test]
fn freeze_blocks_writes_and_checkpoints_of_other_processes_but_not_reads() {
    for wal in [false, true] {
        let w = World::new();
        let db = w.path("live.db");
        create(&db, wal, None);
        let live = w.s("live.db");
        // Another process's write fails at once (no busy wait) while frozen.
        let insert = "INSERT INTO t(id, body) VALUES (999999, 'x')";
        let r = w
            .run(&["freeze", &live, "--", "sqlite3", "-cmd", ".timeout 0", &live, insert])
            .fails(19);
        assert!(r.stderr.contains("database is locked"), "{}", r.stderr);
        assert!(r.stderr.contains("sqlite3 exited"), "{}", r.stderr);
        assert_eq!(committed_state(&db, None), PRELOAD);
        // Reads go on; the command's output is its own.
        let r = w
            .run(&["freeze", &live, "--", "sqlite3", &live, "SELECT count(*) FROM t"])
            .ok();
        assert_eq!(r.stdout.trim(), PRELOAD.to_string());
        assert!(r.stderr.contains("froze"), "{}", r.stderr);
        if wal {
            // Another process's checkpoint is refused (busy = 1).
            let r = w
                .run(&[
                    "freeze",
                    &live,
                    "--",
                    "sqlite3",
                    &live,
                    "PRAGMA wal_checkpoint(PASSIVE)",
                ])
                .ok();
            assert!(r.stdout.starts_with("1|"), "{}", r.stdout);
        } else {
            assert!(!w.path("live.db-wal").exists(), "a -wal beside a rollback database");
            assert!(!w.path("live.db-journal").exists());
        }
        // With --json the command's output goes to stderr: stdout is the document.
        let r = w
            .run(&[
                "freeze",
                &live,
                "--json",
                "--",
                "sqlite3",
                &live,
                "SELECT 'from-the-command'",
            ])
            .ok();
        assert_eq!(r.json()["journal_mode"], if wal { "wal" } else { "delete" });
        assert!(r.stderr.contains("from-the-command"));
        // Missing, not a database: one line naming it, the command never run.
        let ran = w.s("ran");
        let r = w.run(&["freeze", &w.s("missing.db"), "--", "touch", &ran]).fails(4);
        names_file(&r, &w.path("missing.db"));
        std::fs::write(w.path("junk.db"), b"not a database, just text").unwrap();
        let r = w.run(&["freeze", &w.s("junk.db"), "--", "touch", &ran]).fails(7);
        names_file(&r, &w.path("junk.db"));
        assert!(!Path::new(&ran).exists());
        assert!(!w.path("missing.db").exists(), "freeze created the database");
    }
}
