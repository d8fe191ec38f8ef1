//! Continuous replication (`sqlvault replicate`) and point-in-time restore
//! (`restore --at/--txid`), with the application a separate process (python3's
//! sqlite3) so that its locks and checkpoints are real: every restored state must be
//! the state right after one of the writer's logged commits, recent enough, and the
//! application's own checkpoints of every mode must complete without a break.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::World;

/// The application: one transaction per row (a log row and a counter), its time taken
/// right before COMMIT (so a state that holds commit n was observed after t_n), and
/// every `ck_every` commits a checkpoint of the next mode in `modes`, its result and
/// how long it took logged.
const WRITER: &str = r#"
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
db.execute("PRAGMA journal_mode=%s" % (sys.argv[6] if len(sys.argv) > 6 else "WAL"))
db.execute("CREATE TABLE IF NOT EXISTS wlog(n INTEGER PRIMARY KEY, pad TEXT)")
db.execute("CREATE TABLE IF NOT EXISTS wc(k INTEGER PRIMARY KEY, n INTEGER)")
db.execute("INSERT OR IGNORE INTO wc VALUES(1, 0)")
log = open(sys.argv[2], "a")
# With "2": commits alternate between two connections and checkpoints run on the one
# that did not commit last (a pool: SQLite draws random salts for a connection that
# never restarted the WAL itself).
conns = [db] + ([sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)] if len(sys.argv) > 7 and sys.argv[7] == "2" else [])
dur, ck_every = float(sys.argv[3]), int(sys.argv[4])
modes = sys.argv[5].split(",") if len(sys.argv) > 5 and sys.argv[5] else []
end = time.time() + dur
n = db.execute("SELECT n FROM wc").fetchone()[0]
k = 0
while time.time() < end:
    n += 1
    db = conns[n % len(conns)]
    db.execute("BEGIN")
    db.execute("INSERT INTO wlog VALUES(?, ?)", (n, "p" * (50 + n % 400)))
    db.execute("UPDATE wc SET n=?", (n,))
    t = time.time()
    db.execute("COMMIT")
    db = conns[(n + 1) % len(conns)]
    log.write("c %d %.4f\n" % (n, t))
    if modes and n % ck_every == 0:
        m = modes[k % len(modes)]; k += 1
        t0 = time.time()
        if m == "VACUUM":
            # In WAL mode an ordinary (large) transaction: every page rewritten.
            db.execute("VACUUM")
            r = (0,)
        else:
            r = db.execute("PRAGMA wal_checkpoint(%s)" % m).fetchone()
        log.write("k %s %d %.4f\n" % (m, r[0], time.time() - t0))
    log.flush()
    time.sleep(0.004)
"#;

struct Log {
    commits: Vec<(i64, f64)>,
    checkpoints: Vec<(String, i64, f64)>,
}

fn read_log(p: &Path) -> Log {
    let text = std::fs::read_to_string(p).unwrap();
    let mut l = Log {
        commits: Vec::new(),
        checkpoints: Vec::new(),
    };
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        match f[0] {
            "c" => l.commits.push((f[1].parse().unwrap(), f[2].parse().unwrap())),
            "k" => l
                .checkpoints
                .push((f[1].to_string(), f[2].parse().unwrap(), f[3].parse().unwrap())),
            _ => panic!("{line}"),
        }
    }
    l
}

fn write(w: &World, db: &str, log: &str, secs: f64, ck_every: u32, modes: &str) {
    write_mode(w, db, log, secs, ck_every, modes, "WAL")
}

fn write_mode(w: &World, db: &str, log: &str, secs: f64, ck_every: u32, modes: &str, journal: &str) {
    write_with(w, db, log, secs, ck_every, modes, journal, "1")
}

#[allow(clippy::too_many_arguments)]
fn write_with(w: &World, db: &str, log: &str, secs: f64, ck_every: u32, modes: &str, journal: &str, conns: &str) {
    let script = w.path("writer.py");
    std::fs::write(&script, WRITER).unwrap();
    let out = Command::new("python3")
        .arg(&script)
        .args([db, log, &secs.to_string(), &ck_every.to_string(), modes, journal, conns])
        .output()
        .expect("python3");
    assert!(out.status.success(), "writer: {}", String::from_utf8_lossy(&out.stderr));
}

fn start(w: &World, db: &str, repos: &[&str], interval: &str) -> Child {
    start_env(w, db, repos, interval, &[])
}

fn start_env(w: &World, db: &str, repos: &[&str], interval: &str, extra: &[(&str, &str)]) -> Child {
    start_full(w, db, repos, interval, extra, &[])
}

fn start_full(w: &World, db: &str, repos: &[&str], interval: &str, extra: &[(&str, &str)], args: &[&str]) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sqlvault"));
    for (k, v) in extra {
        c.env(k, v);
    }
    c.args(["--json", "replicate", db])
        .args(repos)
        .args(["--interval", interval])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in &w.env {
        c.env(k, v);
    }
    c.spawn().expect("replicate")
}

/// Waits for the first base snapshot in a local repository.
fn wait_base(repo: &Path, child: &mut Child) {
    let t0 = Instant::now();
    loop {
        let n = std::fs::read_dir(repo.join("snapshots")).map_or(0, |d| d.count());
        if n > 0 {
            return;
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!("replicate exited early: {st}");
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "no base snapshot after 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM, then the report (exit 0 required).
fn stop(child: Child) -> serde_json::Value {
    stop_err(child).0
}

fn stop_err(child: Child) -> (serde_json::Value, String) {
    // SAFETY: a signal to a child this test spawned and still owns.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "replicate after SIGTERM: {stderr}");
    let v =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    (v, stderr.into_owned())
}

/// The recipient of an identity file `key generate` wrote.
fn recipient(key: &str) -> String {
    std::fs::read_to_string(key)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("# public key: ").map(str::to_string))
        .unwrap()
}

/// RFC 3339 with milliseconds.
fn iso(t: f64) -> String {
    let ms = (t * 1000.0).floor() as i64;
    let secs = sqlvault_engine::retention::iso_time(ms - ms % 1000);
    format!("{}.{:03}Z", secs.trim_end_matches('Z'), ms % 1000)
}

/// Restores at `at` and returns the writer's counter there, checking that the state
/// is a whole commit's (the log rows and the counter agree).
fn restored_n(w: &World, repo: &str, key: &str, args: &[&str], n0: i64) -> i64 {
    let dest = w.path("pitr.db");
    let _ = std::fs::remove_file(&dest);
    let mut a = vec!["restore", repo, dest.to_str().unwrap(), "-i", key, "--name", "app.db"];
    a.extend_from_slice(args);
    w.run(&a).ok();
    let c = rusqlite::Connection::open(&dest).unwrap();
    let n: i64 = c.query_row("SELECT n FROM wc", [], |r| r.get(0)).unwrap();
    let rows: i64 = c.query_row("SELECT count(*) FROM wlog", [], |r| r.get(0)).unwrap();
    assert_eq!(
        rows,
        n - n0,
        "a restored state must be one commit's: counter {n}, {rows} log rows"
    );
    let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok");
    n
}

#[test]
fn replication_follows_every_commit_through_checkpoints_of_every_mode() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 256 << 10, true);
    let log = w.s("writes.log");
    // The counter starts at 0 in a fresh table: n0 = 0.
    write(&w, &db, &log, 0.05, 1000, "");
    let n0 = 0;
    let interval = 0.4;
    let warm = read_log(Path::new(&log)).commits.last().unwrap().0;
    // Compacted every 4 segments: the points below span several chains and their
    // compaction snapshots.
    let mut child = start_full(&w, &db, &[&repo], "400ms", &[], &["--compact-segments", "4"]);
    wait_base(Path::new(&repo), &mut child);
    write_with(
        &w,
        &db,
        &log,
        5.0,
        60,
        "PASSIVE,FULL,RESTART,TRUNCATE,VACUUM",
        "WAL",
        "2",
    );
    std::thread::sleep(Duration::from_millis(1200));
    // Idle: nothing more is written to the repository.
    let count = |p: &str| crate::support::files(Path::new(p)).len();
    let before = count(&repo);
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(count(&repo), before, "an idle database must cost nothing");
    let report = stop(child);
    let l = read_log(Path::new(&log));

    // The application's checkpoints all completed, none waited out its busy timeout:
    // the replicator's pins are handed over every quarter interval.
    assert!(l.checkpoints.len() >= 8, "{:?}", l.checkpoints);
    for (mode, busy, secs) in l.checkpoints.iter().filter(|c| c.0 != "VACUUM") {
        assert_eq!(*busy, 0, "wal_checkpoint({mode}) reported busy");
        assert!(*secs < interval, "wal_checkpoint({mode}) took {secs:.3}s");
    }
    assert!(report["breaks"].as_object().unwrap().is_empty(), "{report}");
    assert!(report["wal_restarts"].as_u64().unwrap() >= 2, "{report}");
    let dest = &report["destinations"][0];
    assert!(dest["segments"].as_u64().unwrap() >= 5, "{report}");
    assert_eq!(dest["errors"], 0, "{report}");

    let t = w
        .run(&["--json", "snapshots", &repo, "--timeline", "-i", &key])
        .ok()
        .json();
    let chains = t["timeline"][0]["chains"].as_array().unwrap();
    let total: u64 = chains.iter().map(|c| c["segments"].as_u64().unwrap()).sum();
    assert_eq!(total, dest["segments"].as_u64().unwrap(), "{t}");
    assert!(dest["compactions"].as_u64().unwrap() >= 2, "{report}");
    assert_eq!(chains.len() as u64, 1 + dest["compactions"].as_u64().unwrap(), "{t}");
    assert!(
        chains[1..]
            .iter()
            .all(|c| c["segments"] == 0 || c["started_by"] == "compaction"),
        "{t}"
    );
    assert_eq!(chains[0]["segments"], 4, "{t}");
    let res = chains[0]["resolution_ms"].as_i64().unwrap();
    assert!(
        (100..=700).contains(&res),
        "one segment every {res} ms at a 400 ms interval: {t}"
    );

    // The newest state is the final commit exactly.
    let last = l.commits.last().unwrap().0;
    assert_eq!(restored_n(&w, &repo, &key, &["--at", "-0s"], n0), last);

    // Random times: the state of a logged commit within [T − interval − 0.2 s, T].
    // (From the replicated run's first commit: the setup's few came long before.)
    let first = l.commits.iter().find(|c| c.0 > warm).unwrap();
    let (t_first, t_last) = (first.1, l.commits.last().unwrap().1);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let t = t_first + 0.6 + (x % 10_000) as f64 / 10_000.0 * (t_last - t_first - 0.6);
        let at = iso(t);
        let t = (t * 1000.0).floor() / 1000.0;
        let n = restored_n(&w, &repo, &key, &["--at", &at], n0);
        let tn = l.commits.iter().find(|c| c.0 == n).map(|c| c.1).unwrap();
        assert!(
            tn <= t + 0.001,
            "--at {at}: commit {n} was made at {tn:.3}, after {t:.3}"
        );
        // A little slack for a loaded CI machine on top of the bound.
        assert!(
            tn >= t - interval - 0.2 - 0.3,
            "--at {at}: commit {n} at {tn:.3} is {:.3}s old",
            t - tn
        );
    }

    // --txid: a segment's own transaction count restores exactly; --dry-run plans.
    let plan = w
        .run(&[
            "--json",
            "restore",
            &repo,
            &w.s("x.db"),
            "-i",
            &key,
            "--at",
            "-0s",
            "--dry-run",
        ])
        .ok()
        .json();
    assert!(plan["segments"].as_u64().unwrap() <= 4, "compacted: {plan}");
    assert!(!w.path("x.db").exists());
    let txid = plan["txid"].as_u64().unwrap();
    assert_eq!(
        restored_n(&w, &repo, &key, &["--txid", &txid.to_string()], n0),
        last,
        "the newest segment's transaction"
    );

    // Before the first state: a named error, nothing written.
    let r = w
        .run(&[
            "restore",
            &repo,
            &w.s("y.db"),
            "-i",
            &key,
            "--at",
            "2001-01-01T00:00:00Z",
        ])
        .fails(4);
    assert!(r.stderr.contains("no state of app.db at or before"), "{}", r.stderr);
    assert!(!w.path("y.db").exists());

    // A missing segment: every later point of its chain fails, naming it. (Just before
    // the first chain's last segment, so that its compaction does not stand in.)
    let chain = chains[0]["base"].as_str().unwrap();
    let before_compaction = (chains[0]["to_ms"].as_i64().unwrap() - 1) as f64 / 1000.0;
    let at0 = iso(before_compaction);
    assert!(restored_n(&w, &repo, &key, &["--at", &at0], n0) > 0);
    let segs = w.path("repo").join("segments").join(chain);
    let seg2 = segs.join(format!("{:020}", 2));
    std::fs::rename(&seg2, w.path("seg2")).unwrap();
    let r = w
        .run(&["restore", &repo, &w.s("y.db"), "-i", &key, "--at", &at0])
        .fails(6);
    assert!(r.stderr.contains("segment 2 of chain"), "{}", r.stderr);
    assert!(!w.path("y.db").exists());
    std::fs::rename(w.path("seg2"), &seg2).unwrap();
    // A segment from another place in the chain under this name: refused.
    let seg3 = segs.join(format!("{:020}", 3));
    std::fs::copy(&seg3, w.path("seg3")).unwrap();
    std::fs::copy(segs.join(format!("{:020}", 4)), &seg3).unwrap();
    w.run(&["restore", &repo, &w.s("y.db"), "-i", &key, "--at", &at0])
        .fails(6);
    std::fs::copy(w.path("seg3"), &seg3).unwrap();
    assert!(restored_n(&w, &repo, &key, &["--at", &at0], n0) > 0);
    assert_eq!(restored_n(&w, &repo, &key, &["--at", "-0s"], n0), last);

    // A plain backup after the chain: forget --keep-last 1 keeps it *and* the chain's
    // base (segments follow it), and prune marks nothing the segments reference.
    w.run(&["backup", &db, &repo]).ok();
    let f = w.run(&["--json", "forget", &repo, "--keep-last", "1"]).ok().json();
    assert_eq!(f["removed"], 0, "{f}");
    let p = w.run(&["--json", "prune", &repo]).ok().json();
    assert_eq!(p["marked"]["packs"], 0, "{p}");
    assert_eq!(p["marked"]["maps"], 0, "{p}");
    let mid = iso(t_first + (t_last - t_first) / 2.0);
    let plan = w
        .run(&[
            "--json",
            "restore",
            &repo,
            &w.s("z.db"),
            "-i",
            &key,
            "--at",
            &mid,
            "--dry-run",
        ])
        .ok()
        .json();
    // Still a point of the chain there (a segment or a compaction of one): a second
    // at most before the time asked, where the plain backup alone would be far after.
    let mid_ms = sqlvault_engine::parse_time(&mid, 0).unwrap();
    let observed = plan["observed_ms"].as_i64().unwrap();
    assert!(observed <= mid_ms && observed >= mid_ms - 1000, "{plan}");
    assert!(restored_n(&w, &repo, &key, &["--at", &mid], n0) > 0);
    assert_eq!(restored_n(&w, &repo, &key, &["--at", "-0s"], n0), last);
    // The stock-tool path (age, zstd, docs/recover.py) rebuilds the same points byte
    // for byte: one inside a chain, one at its newest state.
    for at in [at0.as_str(), mid.as_str()] {
        let ours = w.path("ours.db");
        let _ = std::fs::remove_file(&ours);
        w.run(&["restore", &repo, ours.to_str().unwrap(), "-i", &key, "--at", at])
            .ok();
        let theirs = w.s("theirs.db");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/recover.py");
        let o = Command::new("python3")
            .args([script, &repo, &key, &theirs, "--at", at])
            .output()
            .expect("python3");
        assert!(o.status.success(), "recover.py: {}", String::from_utf8_lossy(&o.stderr));
        assert!(
            std::fs::read(&ours).unwrap() == std::fs::read(&theirs).unwrap(),
            "--at {at}"
        );
    }
    // Compaction snapshots verify by their state checksum; the whole repository checks.
    w.run(&["verify", &repo, "-i", &key, "--all"]).ok();
    w.run(&["drill", &repo, "-i", &key, "--all-databases"]).ok();
    w.run(&["check", &repo, "-i", &key, "--read-data"]).ok();
    let v = w
        .run(&["--json", "verify", &repo, "-i", &key, "--points", "5"])
        .ok()
        .json();
    let points = v["points"].as_array().unwrap();
    assert_eq!(points.len(), 5, "{v}");
    assert!(
        points.iter().all(|p| p["ok"] == true && p["evidence"].is_string()),
        "{v}"
    );
    w.run(&["verify", &repo, "-i", &key, "--at", &at0]).ok();
    // Copied elsewhere, compaction points carry a state checksum for their new home.
    let rcpt = recipient(&key);
    let other = w.s("other");
    w.run(&["init", &other, "-r", &rcpt]).ok();
    w.run(&["copy", &repo, &other, "-i", &key]).ok();
    w.run(&["verify", &other, "-i", &key, "--all"]).ok();
}

#[test]
fn replication_starts_a_new_chain_when_the_file_is_replaced() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 128 << 10, true);
    let log = w.s("writes.log");
    write(&w, &db, &log, 0.05, 1000, "");
    let mut child = start(&w, &db, &[&repo], "300ms");
    wait_base(Path::new(&repo), &mut child);
    write(&w, &db, &log, 1.0, 1000, "");
    // Replaced behind the replicator's back: a compacted copy renamed over it, the
    // careful way (the WAL checkpointed and truncated first: a rename over a database
    // whose WAL still holds frames corrupts it for whoever opens it next, replicator or
    // not, as SQLite documents).
    let new = w.s("new.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute("VACUUM INTO ?1", [&new]).unwrap();
    let busy: i64 = c
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
        .unwrap();
    assert_eq!(busy, 0);
    drop(c);
    let c = rusqlite::Connection::open(&new).unwrap();
    c.execute_batch("PRAGMA journal_mode=WAL").unwrap();
    drop(c);
    std::fs::rename(&new, &db).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    write(&w, &db, &log, 1.0, 1000, "");
    std::thread::sleep(Duration::from_millis(900));
    let report = stop(child);
    assert_eq!(report["breaks"]["file-replaced"], 1, "{report}");
    assert_eq!(report["bases"], 2, "{report}");
    let t = w
        .run(&["--json", "snapshots", &repo, "--timeline", "-i", &key])
        .ok()
        .json();
    let chains = t["timeline"][0]["chains"].as_array().unwrap();
    assert_eq!(chains.len(), 2, "{t}");
    assert_eq!(chains[0]["started_by"], "start", "{t}");
    assert_eq!(chains[1]["started_by"], "file-replaced", "{t}");
    let l = read_log(Path::new(&log));
    let last = l.commits.last().unwrap().0;
    assert_eq!(restored_n(&w, &repo, &key, &["--at", "-0s"], 0), last);
}

#[test]
fn replication_of_a_rollback_journal_database_snapshots_each_changed_interval() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 128 << 10, false);
    let log = w.s("writes.log");
    write_mode(&w, &db, &log, 0.05, 1000, "", "DELETE");
    let warm = read_log(Path::new(&log)).commits.last().unwrap().0;
    let mut child = start(&w, &db, &[&repo], "500ms");
    wait_base(Path::new(&repo), &mut child);
    write_mode(&w, &db, &log, 3.0, 1000, "", "DELETE");
    std::thread::sleep(Duration::from_millis(1200));
    let snaps = || std::fs::read_dir(w.path("repo").join("snapshots")).unwrap().count();
    let idle = snaps();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(snaps(), idle, "no snapshot while nothing changes");
    let report = stop(child);
    assert!(report["bases"].as_u64().unwrap() >= 4, "{report}");
    let l = read_log(Path::new(&log));
    let last = l.commits.last().unwrap().0;
    assert_eq!(restored_n(&w, &repo, &key, &["--at", "-0s"], 0), last);
    let first = l.commits.iter().find(|c| c.0 > warm).unwrap().1;
    for k in 1..=4 {
        let t = first + 0.7 * k as f64;
        let at = iso(t);
        let t = (t * 1000.0).floor() / 1000.0;
        let n = restored_n(&w, &repo, &key, &["--at", &at], 0);
        let tn = l.commits.iter().find(|c| c.0 == n).map(|c| c.1).unwrap();
        assert!(tn <= t + 0.001 && tn >= t - 2.0, "--at {at}: commit {n} at {tn:.3}");
    }
}

/// A SQLCipher database replicates with its pages stored in plaintext inside age (as
/// its backups are) and restores encrypted under its key at any point; the key never
/// shows in the replicator's output.
#[test]
fn replication_of_a_sqlcipher_database_restores_encrypted_at_a_point() {
    const PASS: &str = "replica-key 7f3e horse battery";
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 64 << 10, true);
    w.run_env(&["db", "encrypt", &db], &[("SQLVAULT_DB_KEY", PASS)]).ok();
    let app = rusqlite::Connection::open(&db).unwrap();
    app.pragma_update(None, "key", PASS).unwrap();
    app.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE wlog(n INTEGER PRIMARY KEY, pad TEXT); \
         CREATE TABLE wc(k INTEGER PRIMARY KEY, n INTEGER); INSERT INTO wc VALUES(1, 0);",
    )
    .unwrap();
    let child = start_env(&w, &db, &[&repo], "300ms", &[("SQLVAULT_DB_KEY", PASS)]);
    let mut child = child;
    wait_base(Path::new(&repo), &mut child);
    let mut times = Vec::new();
    for n in 1..=300i64 {
        let tx = app.unchecked_transaction().unwrap();
        tx.execute("INSERT INTO wlog VALUES(?1, ?2)", rusqlite::params![n, "q".repeat(100)])
            .unwrap();
        tx.execute("UPDATE wc SET n = ?1", [n]).unwrap();
        times.push((n, std::time::SystemTime::now()));
        tx.commit().unwrap();
        if n == 150 {
            app.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(6));
    }
    std::thread::sleep(Duration::from_millis(800));
    // SAFETY: a signal to the child this test spawned.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains(PASS) && !String::from_utf8_lossy(&out.stdout).contains(PASS));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["breaks"].as_object().unwrap().is_empty(), "{report}");
    let restore = |at: &str| -> i64 {
        let dest = w.s("enc-out.db");
        let _ = std::fs::remove_file(&dest);
        w.run_env(
            &["restore", &repo, &dest, "-i", &key, "--name", "app.db", "--at", at],
            &[("SQLVAULT_DB_KEY", PASS)],
        )
        .ok();
        // Encrypted: unreadable without the key, the whole commit's state with it.
        let plain = rusqlite::Connection::open(&dest).unwrap();
        assert!(
            plain
                .query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
                .is_err()
        );
        let c = rusqlite::Connection::open(&dest).unwrap();
        c.pragma_update(None, "key", PASS).unwrap();
        let n: i64 = c.query_row("SELECT n FROM wc", [], |r| r.get(0)).unwrap();
        let rows: i64 = c.query_row("SELECT count(*) FROM wlog", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, n);
        n
    };
    assert_eq!(restore("-0s"), 300, "{report}");
    let (_, mid) = times[140];
    let t = mid.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let n = restore(&iso(t));
    assert!((100..=141).contains(&n), "the state at commit 141's time holds {n}");
}

/// Three destinations at once, each its own chain: S3 (moto), Azure (azurite) and a
/// local disk that refuses writes for a while. The failing one falls behind and catches
/// up without a break; the others never notice; every one restores the final commit.
#[test]
fn replication_to_s3_azure_and_a_failing_disk_keeps_each_chain() {
    let moto =
        crate::support::kit::MotoServer::start().expect("moto_server must be installed: pip install 'moto[server]'");
    moto.create_bucket("backups").unwrap();
    let az = crate::support::kit::AzuriteServer::start().expect("azurite must be installed: npm install -g azurite");
    az.create_container("backups").unwrap();
    let mut env: Vec<(String, String)> = moto.env();
    env.extend(az.env());
    let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let w = World::new();
    let local = w.s("repo");
    let (key, db) = w.setup(&local, 96 << 10, true);
    let rcpt = recipient(&key);
    let (s3, azr) = ("s3://backups/app", "az://backups/app");
    for r in [s3, azr] {
        w.run_env(&["init", r, "-r", &rcpt], &envs).ok();
    }
    let log = w.s("writes.log");
    write(&w, &db, &log, 0.05, 1000, "");
    let mut envs2 = envs.clone();
    envs2.push(("SQLVAULT_LOG", "sqlvault_engine=info"));
    let mut child = start_env(&w, &db, &[&local, s3, azr], "400ms", &envs2);
    wait_base(Path::new(&local), &mut child);
    write(&w, &db, &log, 1.5, 1000, "");
    // The disk "fails": a file where the packs directory was (permissions would not
    // stop root).
    let packs = w.path("repo").join("packs");
    std::fs::rename(&packs, w.path("packs.away")).unwrap();
    std::fs::write(&packs, b"in the way").unwrap();
    write(&w, &db, &log, 1.5, 1000, "");
    std::fs::remove_file(&packs).unwrap();
    std::fs::rename(w.path("packs.away"), &packs).unwrap();
    write(&w, &db, &log, 1.0, 1000, "");
    std::thread::sleep(Duration::from_millis(900));
    let (report, log_lines) = stop_err(child);
    assert!(report["breaks"].as_object().unwrap().is_empty(), "{report}");
    let d = report["destinations"].as_array().unwrap();
    // The disk's segment waited out its failures (retried, or failed and shipped again
    // with what came since): fewer, larger segments; the others went on at their pace.
    let segs = |i: usize| d[i]["segments"].as_u64().unwrap();
    assert!(
        segs(0) + 2 <= segs(1).min(segs(2)),
        "the disk fell behind: {report}\n{log_lines}"
    );
    assert!(segs(1) >= 7 && segs(2) >= 7, "{report}");
    assert!(d[0]["last_error"].is_null(), "and recovered: {report}");
    assert_eq!(d[1]["errors"], 0, "{report}");
    assert_eq!(d[2]["errors"], 0, "{report}");
    let last = read_log(Path::new(&log)).commits.last().unwrap().0;
    for r in [local.as_str(), s3, azr] {
        let dest = w.path("multi.db");
        let _ = std::fs::remove_file(&dest);
        w.run_env(
            &[
                "restore",
                r,
                dest.to_str().unwrap(),
                "-i",
                &key,
                "--name",
                "app.db",
                "--at",
                "-0s",
            ],
            &envs,
        )
        .ok();
        let c = rusqlite::Connection::open(&dest).unwrap();
        let n: i64 = c.query_row("SELECT n FROM wc", [], |r| r.get(0)).unwrap();
        assert_eq!(n, last, "{r}");
    }
}

/// kill -9 of the replicator at any moment loses no shipped state: a restart begins a
/// new chain (its base uploads only what changed), every point of both chains still
/// restores to a whole commit's state, and the newest equals the final commit.
#[test]
fn replication_survives_kill_9_and_a_restart() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 128 << 10, true);
    let log = w.s("writes.log");
    write(&w, &db, &log, 0.05, 1000, "");
    let mut child = start(&w, &db, &[&repo], "300ms");
    wait_base(Path::new(&repo), &mut child);
    let script = w.path("writer.py");
    let mut writer = Command::new("python3")
        .arg(&script)
        .args([db.as_str(), log.as_str(), "3.0", "1000", "", "WAL"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1300));
    child.kill().unwrap();
    child.wait().unwrap();
    let child = start(&w, &db, &[&repo], "300ms");
    assert!(writer.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(1500));
    let report = stop(child);
    assert_eq!(report["bases"], 1, "{report}");
    let l = read_log(Path::new(&log));
    let last = l.commits.last().unwrap().0;
    assert_eq!(restored_n(&w, &repo, &key, &["--at", "-0s"], 0), last);
    let t = w
        .run(&["--json", "snapshots", &repo, "--timeline", "-i", &key])
        .ok()
        .json();
    let chains = t["timeline"][0]["chains"].as_array().unwrap();
    assert_eq!(chains.len(), 2, "{t}");
    // Points across both chains, the kill's moment included.
    let (t0, t1) = (l.commits[2].1 + 0.5, l.commits.last().unwrap().1);
    for k in 0..8 {
        let at_t = t0 + (t1 - t0) * k as f64 / 7.0;
        let n = restored_n(&w, &repo, &key, &["--at", &iso(at_t)], 0);
        let tn = l.commits.iter().find(|c| c.0 == n).map(|c| c.1).unwrap();
        assert!(
            tn <= (at_t * 1000.0).floor() / 1000.0 + 0.001,
            "--at {}: commit {n}",
            iso(at_t)
        );
    }
}

/// `forget --pitr-window`: every state in the window stays restorable as before; the
/// segments of chains that ended before it go, and prune may then collect their maps.
#[test]
fn replication_retention_keeps_every_point_of_the_window() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 96 << 10, true);
    let log = w.s("writes.log");
    write(&w, &db, &log, 0.05, 1000, "");
    let warm = read_log(Path::new(&log)).commits.last().unwrap().0;
    let mut child = start_full(&w, &db, &[&repo], "300ms", &[], &["--compact-segments", "3"]);
    wait_base(Path::new(&repo), &mut child);
    write(&w, &db, &log, 4.0, 1000, "");
    std::thread::sleep(Duration::from_millis(800));
    let report = stop(child);
    assert!(
        report["destinations"][0]["compactions"].as_u64().unwrap() >= 3,
        "{report}"
    );
    let l = read_log(Path::new(&log));
    let first = l.commits.iter().find(|c| c.0 > warm).unwrap().1;
    let last = l.commits.last().unwrap();
    let start = first + 2.0;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let window = format!("{}ms", ((now - start) * 1000.0) as u64);
    let plan = w
        .run(&["--json", "forget", &repo, "--pitr-window", &window, "--dry-run"])
        .ok()
        .json();
    let to_remove = plan["segments_removed"].as_u64().unwrap();
    assert!(to_remove >= 3, "{plan}");
    let before = crate::support::files(&w.path("repo").join("segments")).len();
    let f = w
        .run(&["--json", "forget", &repo, "--pitr-window", &window])
        .ok()
        .json();
    assert_eq!(f["segments_removed"].as_u64().unwrap(), to_remove, "{f}");
    assert_eq!(
        crate::support::files(&w.path("repo").join("segments")).len() as u64,
        before as u64 - to_remove
    );
    // Every point of the window as before: a logged commit within the bound.
    for k in 0..6 {
        let t = start + 0.3 + (last.1 - start - 0.3) * k as f64 / 5.0;
        let at = iso(t);
        let t = (t * 1000.0).floor() / 1000.0;
        let n = restored_n(&w, &repo, &key, &["--at", &at], 0);
        let tn = l.commits.iter().find(|c| c.0 == n).map(|c| c.1).unwrap();
        assert!(
            tn <= t + 0.001 && tn >= t - 0.3 - 0.2 - 0.3,
            "--at {at}: commit {n} at {tn:.3}"
        );
    }
    assert_eq!(restored_n(&w, &repo, &key, &["--at", "-0s"], 0), last.0);
    let p = w.run(&["--json", "prune", &repo]).ok().json();
    assert!(p["marked"]["maps"].as_u64().unwrap() >= to_remove, "{p}");
}

/// A bucket writer (write, list and delete on the bucket, the public recipients) cannot
/// make a point-in-time restore return a wrong state without an error: a segment it
/// forges (sealed to the recipients, MAC'd under a key of its own) in place of a real
/// one is junk, so the real one is missing and named; junk past the chain's end is
/// ignored and stops neither restore nor prune.
#[test]
fn attack_bw_forged_and_junk_segments_never_pass_for_a_state() {
    use sqlvault_engine::crypt::{Recipient, encrypt_to_vec};
    use sqlvault_engine::format::{ObjectId, RepoSecret, Segment, StateChecksum};
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 64 << 10, true);
    let rcpt = recipient(&key);
    let log = w.s("writes.log");
    write(&w, &db, &log, 0.05, 1000, "");
    let mut child = start(&w, &db, &[&repo], "300ms");
    wait_base(Path::new(&repo), &mut child);
    write(&w, &db, &log, 1.5, 1000, "");
    std::thread::sleep(Duration::from_millis(700));
    let report = stop(child);
    let chain: ObjectId = report["destinations"][0]["chain"].as_str().unwrap().parse().unwrap();
    let n = report["destinations"][0]["last_seq"].as_u64().unwrap();
    assert!(n >= 3, "{report}");
    let last = read_log(Path::new(&log)).commits.last().unwrap().0;
    let forge = |seq: u64| -> Vec<u8> {
        let keys = RepoSecret::generate().keys();
        let s = Segment {
            version: 1,
            chain,
            seq,
            prev: Segment::first_prev(&chain),
            name: "app.db".into(),
            host: "h".into(),
            source_path: db.clone(),
            observed_ms: 0,
            txid: 1,
            commits: 1,
            page_size: 4096,
            page_count: 1,
            state: StateChecksum::default().to_hex(),
            maps: vec![],
            pages: 0,
            bytes_new: 0,
            events: vec![],
        };
        let r: Recipient = rcpt.parse().unwrap();
        encrypt_to_vec(std::iter::once(&r), &s.encode(&keys).0).unwrap()
    };
    let dir = w.path("repo").join("segments").join(chain.to_string());
    // Junk past the end: ignored.
    std::fs::write(dir.join(format!("{:020}", n + 1)), forge(n + 1)).unwrap();
    std::fs::write(dir.join(format!("{:020}", n + 7)), b"not even age").unwrap();
    assert_eq!(restored_n(&w, &repo, &key, &["--at", "-0s"], 0), last);
    w.run(&["prune", &repo, "--dry-run"]).ok();
    // A forgery in place of segment 2: the real one is missing, and said so.
    let real = std::fs::read(dir.join(format!("{:020}", 2))).unwrap();
    std::fs::write(dir.join(format!("{:020}", 2)), forge(2)).unwrap();
    let r = w
        .run(&["restore", &repo, &w.s("f.db"), "-i", &key, "--at", "-0s"])
        .fails(6);
    assert!(r.stderr.contains("segment 2 of chain"), "{}", r.stderr);
    assert!(!w.path("f.db").exists());
    std::fs::write(dir.join(format!("{:020}", 2)), real).unwrap();
    assert_eq!(restored_n(&w, &repo, &key, &["--at", "-0s"], 0), last);
}

/// An idle database costs nothing: after its base, a replicator that saw no commit for
/// seconds made no store request of any kind (the report counts them).
#[test]
fn an_idle_database_makes_no_request() {
    let w = World::new();
    let repo = w.s("repo");
    let (_key, db) = w.setup(&repo, 64 << 10, true);
    let mut child = start(&w, &db, &[&repo], "200ms");
    wait_base(Path::new(&repo), &mut child);
    std::thread::sleep(Duration::from_millis(3000));
    let report = stop(child);
    let r = &report["requests_following"];
    for k in ["get", "put", "list", "delete", "head"] {
        assert_eq!(r[k], 0, "{k}: {report}");
    }
    assert_eq!(report["destinations"][0]["segments"], 0, "{report}");
}
