//! Attacks of a local user (docs/security.md, "Local user / stale files"), played as
//! the attacker would: FIFOs, sockets and devices planted where a database, side file
//! or key is expected (a command must refuse them or report them, never hang);
//! signals in the middle of a command that writes plaintext temporary files, and
//! `kill -9` leftovers; a hard link that keeps a database's plaintext after `db
//! encrypt`.
//!
//! Termination is proven by the command returning: each run is a child process waited
//! for with a generous bound, killed and failed if it is still running then.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Run, World, assert_no_leftovers, files, kit};

/// A bound no honest run here comes near; a hang hits it.
const HANG: Duration = Duration::from_secs(120);

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {}", p.display());
}

fn spawn(w: &World, args: &[&str], extra: &[(&str, &str)], stdin: Stdio) -> (Child, PathBuf, PathBuf) {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let i = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (out, err) = (w.path(&format!("run{i}.out")), w.path(&format!("run{i}.err")));
    let mut c = Command::new(env!("CARGO_BIN_EXE_sqlvault"));
    c.args(args)
        .env_remove("SQLVAULT_IDENTITY_FILE")
        .env_remove("SQLVAULT_PASSPHRASE")
        .stdin(stdin)
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap());
    for (k, v) in &w.env {
        c.env(k, v);
    }
    for (k, v) in extra {
        c.env(k, v);
    }
    (c.spawn().expect("run sqlvault"), out, err)
}

/// Waits for `child` at most [`HANG`]; a child still running then is killed and the
/// test fails: the command hung.
#[track_caller]
fn finish(mut child: Child, out: &Path, err: &Path, what: &str) -> Run {
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > HANG {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what}: still running after {HANG:?}: it hangs\nstderr: {}",
                std::fs::read_to_string(err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    use std::os::unix::process::ExitStatusExt;
    Run {
        code: status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
        stdout: std::fs::read_to_string(out).unwrap_or_default(),
        stderr: std::fs::read_to_string(err).unwrap_or_default(),
    }
}

/// Runs a command to its end (or fails the test if it hangs).
#[track_caller]
fn bounded(w: &World, args: &[&str]) -> Run {
    let (c, o, e) = spawn(w, args, &[], Stdio::null());
    finish(c, &o, &e, &args.join(" "))
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: signals our own child, which has not been reaped yet.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
}

/// Polls until a file or directory whose name contains `needle` exists under `dir`
/// (or the child exits). Returns whether it appeared while the child ran.
fn wait_for_temp(child: &mut Child, dir: &Path, needle: &str) -> bool {
    let t = Instant::now();
    while t.elapsed() < HANG {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if std::fs::read_dir(dir)
            .map(|rd| rd.flatten().any(|e| e.file_name().to_string_lossy().contains(needle)))
            .unwrap_or(false)
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

/// A pid that ran and is gone (pids are not reused this quickly).
fn dead_pid() -> u32 {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

fn findings(r: &Run, code: &str) -> Vec<String> {
    r.json()["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["code"] == code)
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn attack_fifos_and_sockets_named_like_databases_do_not_hang_audit() {
    let w = World::new();
    let app = w.path("app");
    std::fs::create_dir(&app).unwrap();
    let db = app.join("app.db");
    kit::generate(
        &db,
        &kit::GenOptions {
            target_bytes: 64 << 10,
            seed: 1,
            wal: false,
        },
    )
    .unwrap();
    // A FIFO where SQLite looks for a hot journal: opening it for reading blocks
    // until a writer comes, in sqlvault's read and in SQLite's hot-journal check.
    mkfifo(&app.join("app.db-journal"));
    // A FIFO named like a database, one like an orphan WAL, a socket like a database.
    mkfifo(&app.join("other.db"));
    mkfifo(&app.join("gone.sqlite-wal"));
    let _sock = std::os::unix::net::UnixListener::bind(app.join("sock.sqlite")).unwrap();

    let r = bounded(&w, &["audit", &w.s("app"), "--json"]);
    assert_eq!(r.code, 13, "high findings: {}\n{}", r.stdout, r.stderr);
    let mut got = findings(&r, "file.not-regular");
    got.sort();
    let want: Vec<String> = ["app.db-journal", "gone.sqlite-wal", "other.db", "sock.sqlite"]
        .iter()
        .map(|n| app.join(n).display().to_string())
        .collect();
    assert_eq!(got, want, "{}", r.stdout);
    let f = r.json()["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "file.not-regular")
        .unwrap()
        .clone();
    assert_eq!(f["severity"], "high");

    // Named explicitly, a FIFO is reported too, and not opened.
    let r = bounded(&w, &["audit", &app.join("other.db").display().to_string(), "--json"]);
    assert_eq!(r.code, 13, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(findings(&r, "file.not-regular").len(), 1);
}

#[test]
fn attack_fifo_given_as_database_dump_or_key_is_refused_not_waited_on() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 256 << 10, true);
    w.run(&["backup", &db, &repo]).ok();
    let fifo = w.s("fifo.db");
    mkfifo(Path::new(&fifo));
    let dest = w.s("out.db");

    // As a database to read: exit 7, one line naming it and what it is.
    for args in [
        vec!["backup", &fifo, &repo],
        vec!["dump", &fifo],
        vec!["dump", &fifo, "-o", &dest],
        vec!["load", &fifo, &dest],
        vec!["db", "encrypt", &fifo, "--key-file", &key],
        vec!["db", "decrypt", &fifo, "--key-file", &key],
    ] {
        let r = bounded(&w, &args).fails(7);
        assert!(
            r.stderr.contains(&fifo) && r.stderr.contains("FIFO"),
            "{args:?}: {}",
            r.stderr
        );
    }
    assert!(!Path::new(&dest).exists());

    // As a key, identity or recipients file: exit 2 (unusable key file).
    for args in [
        vec!["restore", &repo, &dest, "-i", &fifo],
        vec!["verify", &repo, "-i", &fifo, "--all"],
        vec!["backup", &db, &repo, "--db-key-file", &fifo],
        vec!["db", "encrypt", &db, "--key-file", &fifo],
        vec!["init", &w.s("repo2"), "-R", &fifo],
        vec!["audit", &db, "--db-key-file", &fifo],
        // A FIFO as the drill log: opening it for appending would wait for a reader.
        vec!["drill", &repo, "-i", &key, "--log", &fifo],
    ] {
        let r = bounded(&w, &args).fails(2);
        assert!(r.stderr.contains(&fifo), "{args:?}: {}", r.stderr);
    }

    // A FIFO planted as the WAL of a WAL-mode database: SQLite's own open of it is
    // refused instead of blocking, and the backup ends with an error naming the source.
    let wal = format!("{db}-wal");
    let _ = std::fs::remove_file(&wal);
    mkfifo(Path::new(&wal));
    let r = bounded(&w, &["backup", &db, &repo]);
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("app.db"), "{}", r.stderr);
}

#[test]
fn attack_signal_mid_load_removes_the_plaintext_temporary() {
    let w = World::new();
    let db = w.s("src.db");
    kit::generate(
        Path::new(&db),
        &kit::GenOptions {
            target_bytes: 2 << 20,
            seed: 3,
            wal: false,
        },
    )
    .unwrap();
    let sql = w.s("src.sql");
    w.run(&["dump", &db, "-o", &sql]).ok();
    let text = std::fs::read(&sql).unwrap();
    let out = w.path("out");
    std::fs::create_dir(&out).unwrap();
    for (sig, code) in [(libc::SIGTERM, 143), (libc::SIGINT, 130), (libc::SIGHUP, 129)] {
        let dest = out.join("new.db").display().to_string();
        let (mut child, o, e) = spawn(&w, &["load", "-", &dest], &[], Stdio::piped());
        // Half the dump, then the pipe stays open: the load holds its temporary file
        // (the rows so far, in plaintext) and waits for more.
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&text[..text.len() / 2]).unwrap();
        stdin.flush().unwrap();
        assert!(
            wait_for_temp(&mut child, &out, ".sqlvault-"),
            "the load made its temporary file"
        );
        signal(&child, sig);
        let r = finish(child, &o, &e, "load");
        drop(stdin);
        assert_eq!(r.code, code, "signal {sig}: {}", r.stderr);
        assert!(r.stderr.contains("interrupted by"), "{}", r.stderr);
        assert_no_leftovers(&out, "a signalled load");
        assert!(files(&out).is_empty(), "{:?}", files(&out));
    }
}

#[test]
fn attack_sigterm_mid_restore_and_verify_removes_every_temporary() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 24 << 20, false);
    w.run(&["backup", &db, &repo]).ok();
    let out = w.path("out");
    std::fs::create_dir(&out).unwrap();
    let dest = out.join("restored.db").display().to_string();

    // The restore is signalled once its plaintext temporary exists (a fast machine may
    // finish first: try again, a few times).
    let mut signalled = false;
    for _ in 0..5 {
        let (mut child, o, e) = spawn(&w, &["restore", &repo, &dest, "-i", &key], &[], Stdio::null());
        let seen = wait_for_temp(&mut child, &out, ".sqlvault-");
        if seen {
            signal(&child, libc::SIGTERM);
        }
        let r = finish(child, &o, &e, "restore");
        if r.code == 0 {
            std::fs::remove_file(&dest).unwrap();
            continue;
        }
        assert_eq!(r.code, 143, "{}", r.stderr);
        signalled = true;
        break;
    }
    assert!(signalled, "the restore was never caught mid-way");
    assert!(files(&out).is_empty(), "nothing is left: {:?}", files(&out));

    // verify restores into a scratch directory under TMPDIR: gone with its content.
    let tmp = w.path("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let tmps = tmp.display().to_string();
    let mut signalled = false;
    for _ in 0..5 {
        let (mut child, o, e) = spawn(
            &w,
            &["verify", &repo, "-i", &key, "--all", "--no-evidence"],
            &[("TMPDIR", &tmps)],
            Stdio::null(),
        );
        // The directory first, then a file in it: signal once the plaintext is there.
        let t = Instant::now();
        let mut seen = false;
        while t.elapsed() < HANG && child.try_wait().unwrap().is_none() {
            if files(&tmp).iter().any(|p| p.to_string_lossy().contains(".sqlvault-")) {
                seen = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if seen {
            signal(&child, libc::SIGTERM);
        }
        let r = finish(child, &o, &e, "verify");
        if r.code == 0 {
            continue;
        }
        assert_eq!(r.code, 143, "{}", r.stderr);
        signalled = true;
        break;
    }
    assert!(signalled, "the verify was never caught mid-way");
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "nothing is left in TMPDIR: {left:?}");
}

#[test]
fn attack_kill9_leftovers_are_swept_but_a_live_process_files_are_not() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 16 << 20, false);
    w.run(&["backup", &db, &repo]).ok();
    let out = w.path("out");
    std::fs::create_dir(&out).unwrap();
    let dest = out.join("r.db").display().to_string();

    // A real kill -9 mid-restore leaves its plaintext temporary behind.
    let mut left_behind = None;
    for _ in 0..5 {
        let (mut child, o, e) = spawn(&w, &["restore", &repo, &dest, "-i", &key], &[], Stdio::null());
        if wait_for_temp(&mut child, &out, ".sqlvault-") {
            signal(&child, libc::SIGKILL);
        }
        let r = finish(child, &o, &e, "restore");
        if r.code == 0 {
            std::fs::remove_file(&dest).unwrap();
            continue;
        }
        assert_eq!(r.code, 128 + libc::SIGKILL, "{}", r.stderr);
        left_behind = Some(files(&out));
        break;
    }
    let left_behind = left_behind.expect("the restore was never caught mid-way");
    assert!(
        !left_behind.is_empty(),
        "kill -9 leaves the temporary (nothing can remove it)"
    );

    // More leftovers, as a dead pid would leave them; a live process's; a link; files
    // that only look alike.
    let dead = dead_pid();
    let live = std::process::id();
    let dead_tmp = out.join(format!(".r.db.sqlvault-{dead}-AbCdEf.tmp"));
    let dead_journal = out.join(format!(".r.db.sqlvault-{dead}-AbCdEf.tmp-journal"));
    let dead_sql = out.join(format!(".other.db.sqlvault-{dead}-QwErTy.sql.tmp"));
    let live_tmp = out.join(format!(".r.db.sqlvault-{live}-GhIjKl.tmp"));
    let not_ours = [
        out.join(format!("r.db.sqlvault-{dead}-AbCdEf.tmp")),
        out.join(format!(".r.db.sqlvault-{dead}-AbCdEf.bak")),
        out.join(".r.db.tmp"),
    ];
    for p in [&dead_tmp, &dead_journal, &dead_sql, &live_tmp]
        .into_iter()
        .chain(not_ours.iter())
    {
        std::fs::write(p, b"CREATE TABLE secrets(x); -- plaintext").unwrap();
    }
    let target = w.path("precious.db");
    std::fs::write(&target, b"precious").unwrap();
    let dead_link = out.join(format!(".r.db.sqlvault-{dead}-LiNkEd.tmp"));
    std::os::unix::fs::symlink(&target, &dead_link).unwrap();

    // The next restore into the directory sweeps what dead processes left.
    w.run(&["restore", &repo, &dest, "-i", &key]).ok();
    for p in &left_behind {
        assert!(!p.exists(), "the kill -9 leftover {} is swept", p.display());
    }
    for p in [&dead_tmp, &dead_journal, &dead_sql] {
        assert!(!p.exists(), "{} is swept", p.display());
    }
    assert!(live_tmp.exists(), "a live process's temporary is never touched");
    for p in &not_ours {
        assert!(p.exists(), "{} is not a sqlvault temporary", p.display());
    }
    assert!(
        std::fs::symlink_metadata(&dead_link).is_ok(),
        "a symbolic link is never swept"
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
}

#[test]
fn attack_hard_link_keeps_the_plaintext_after_db_encrypt() {
    let w = World::new();
    let db = w.s("app.db");
    kit::generate(
        Path::new(&db),
        &kit::GenOptions {
            target_bytes: 256 << 10,
            seed: 5,
            wal: false,
        },
    )
    .unwrap();
    let kf = w.s("db.key");
    std::fs::write(&kf, "correct horse battery staple\n").unwrap();
    // The attacker (or an old backup script) made a second name for the file.
    let alias = w.path("alias.db");
    std::fs::hard_link(&db, &alias).unwrap();
    let before = std::fs::read(&db).unwrap();

    // Refused: the plaintext would stay readable through the other name.
    let r = w.run(&["db", "encrypt", &db, "--key-file", &kf]).fails(8);
    assert!(
        r.stderr.contains("1 other hard link") && r.stderr.contains("plaintext"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read(&db).unwrap(), before, "unchanged");

    // With --force it converts, says so on stderr and in the report.
    let r = w
        .run(&["db", "encrypt", &db, "--key-file", &kf, "--force", "--json"])
        .ok();
    assert_eq!(r.json()["other_links"], 1, "{}", r.stdout);
    let warning: Vec<&str> = r.stderr.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warning.len(), 1, "{}", r.stderr);
    assert!(
        warning[0].contains(&db) && warning[0].contains("1 other hard link") && warning[0].contains("plaintext"),
        "{}",
        r.stderr
    );
    // What the warning says is true: the other name still holds the plaintext.
    assert!(std::fs::read(&alias).unwrap().starts_with(b"SQLite format 3\0"));
    assert!(!std::fs::read(&db).unwrap().starts_with(b"SQLite format 3\0"));

    // One name only now: no warning, other_links 0.
    let r = w.run(&["db", "decrypt", &db, "--key-file", &kf, "--json"]).ok();
    assert_eq!(r.json()["other_links"], 0);
    assert!(!r.stderr.contains("warning"), "{}", r.stderr);

    // rekey refuses a linked file too (the old key would still open the other name).
    std::fs::remove_file(&alias).unwrap();
    w.run(&["db", "encrypt", &db, "--key-file", &kf]).ok();
    std::fs::hard_link(&db, &alias).unwrap();
    let nk = w.s("new.key");
    std::fs::write(&nk, "another passphrase\n").unwrap();
    let r = w
        .run(&["db", "rekey", &db, "--key-file", &kf, "--new-key-file", &nk])
        .fails(8);
    assert!(r.stderr.contains("old key"), "{}", r.stderr);
}
