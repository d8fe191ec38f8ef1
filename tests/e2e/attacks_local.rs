//! Attacks of a local user (docs/security.md, "Local user / stale files"), played as
//! the attacker would: FIFOs, sockets and devices planted where a database, side file
//! or key is expected (a command must refuse them or report them, never hang).
//!
//! Termination is proven by the command returning: each run is a child process waited
//! for with a generous bound, killed and failed if it is still running then.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Run, World, kit};

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
