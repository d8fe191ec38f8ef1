//! The service end to end, as the issue's proof asks: a configuration with three
//! databases (WAL behind a glob, rollback journal, SQLCipher) to local disk and S3
//! (moto), a writer on each; /metrics and /healthz scraped; SIGHUP with a changed
//! configuration; the S3 destination cut off and seen by both; SIGTERM; every database
//! restored at its newest state and at a point in time; the runbook's own commands run
//! as written; its HTML page opened in headless Chromium and screenshotted.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::service::get;
use crate::support::{World, kit};

const DB_KEY: &str = "correct horse battery staple 4c1d";

/// Per database, every commit: (n, the time it was made).
type CommitLog = Arc<Mutex<Vec<Vec<(i64, f64)>>>>;

/// A TCP forwarder to a server that can be cut off: then every connection, open or
/// new, is closed.
struct Cut {
    port: u16,
    down: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Cut {
    fn start(upstream: u16) -> Cut {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let (down, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let (d, s) = (down.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let Ok((c, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                if d.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(u) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                for (mut a, mut b) in [(c.try_clone().unwrap(), u.try_clone().unwrap()), (u, c)] {
                    let d = d.clone();
                    std::thread::spawn(move || {
                        a.set_nonblocking(false).unwrap();
                        a.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
                        let mut buf = [0u8; 16384];
                        loop {
                            if d.load(Ordering::SeqCst) {
                                let _ = a.shutdown(std::net::Shutdown::Both);
                                let _ = b.shutdown(std::net::Shutdown::Both);
                                return;
                            }
                            match a.read(&mut buf) {
                                Ok(0) => {
                                    let _ = b.shutdown(std::net::Shutdown::Write);
                                    return;
                                }
                                Ok(n) => {
                                    if b.write_all(&buf[..n]).is_err() {
                                        return;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => return,
                            }
                        }
                    });
                }
            }
        });
        Cut { port, down, stop }
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(secs), "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Metric lines starting with `name{` that contain every one of `has`.
fn lines<'a>(body: &'a str, name: &str, has: &[&str]) -> Vec<&'a str> {
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && has.iter().all(|h| l.contains(h)))
        .collect()
}

fn value(line: &str) -> f64 {
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

fn open(db: &Path, keyed: bool) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(db).unwrap();
    if keyed {
        c.pragma_update(None, "key", DB_KEY).unwrap();
    }
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c
}

/// The application: one row per commit with its time, every 60 ms, on each database.
fn writers(dbs: Vec<(PathBuf, bool)>, stop: Arc<AtomicBool>, log: CommitLog) -> Vec<std::thread::JoinHandle<()>> {
    dbs.into_iter()
        .enumerate()
        .map(|(i, (db, keyed))| {
            let (stop, log) = (stop.clone(), log.clone());
            std::thread::spawn(move || {
                let c = open(&db, keyed);
                c.execute_batch("CREATE TABLE IF NOT EXISTS dr(n INTEGER PRIMARY KEY, t REAL)")
                    .unwrap();
                let mut n = 0i64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let t = now();
                    c.execute("INSERT INTO dr VALUES (?1, ?2)", rusqlite::params![n, t])
                        .unwrap();
                    log.lock().unwrap()[i].push((n, t));
                    std::thread::sleep(Duration::from_millis(60));
                }
            })
        })
        .collect()
}

/// The writer's counter in a restored file, checking the state is whole (rows 1..=n).
fn restored_n(p: &Path, keyed: bool) -> i64 {
    let c = open(p, keyed);
    let (count, max): (i64, i64) = c
        .query_row("SELECT count(*), coalesce(max(n), 0) FROM dr", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(count, max, "{}: not a committed state", p.display());
    let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok", "{}", p.display());
    max
}

fn start(w: &World, config: &str, port: u16, extra: &[(&str, &str)]) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sqlvault"));
    c.args([
        "daemon",
        "--config",
        config,
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::from(std::fs::File::create(w.path("daemon.log")).unwrap()));
    for (k, v) in w
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(extra.iter().copied())
    {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

#[test]
fn daemon_to_local_and_s3_then_restores_and_the_runbook_as_written() {
    let w = World::new();
    let key = w.s("key.txt");
    let rcpt = w.run(&["key", "generate", "-o", &key]).ok().stdout.trim().to_string();
    let moto = kit::MotoServer::start().expect("moto_server must be installed: pip install 'moto[server]'");
    moto.create_bucket("drbucket").unwrap();
    let cut = Cut::start(moto.port);

    let (tenants, apps) = (w.path("tenants"), w.path("apps"));
    std::fs::create_dir_all(&tenants).unwrap();
    std::fs::create_dir_all(&apps).unwrap();
    let wal = tenants.join("wal.db");
    let journal = apps.join("journal.db");
    let secret = apps.join("secret.db");
    for (p, is_wal) in [(&wal, true), (&journal, false), (&secret, true)] {
        kit::generate(
            p,
            &kit::GenOptions {
                target_bytes: 96 << 10,
                seed: 9,
                wal: is_wal,
            },
        )
        .unwrap();
    }
    let kf = w.s("db.key");
    std::fs::write(&kf, format!("{DB_KEY}\n")).unwrap();
    w.run(&["db", "encrypt", secret.to_str().unwrap(), "--key-file", &kf])
        .ok();

    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let repo = w.s("repo");
    let config = w.s("sqlvault.toml");
    let moto_env: std::collections::BTreeMap<String, String> = moto.env().into_iter().collect();
    let base = format!(
        r#"[schedule]
interval = "200ms"
max_lag = "4s"
snapshot = "off"
verify = "off"
prune = "off"
drill = "3s"

[destination.local]
repo = "{repo}"
recipients = ["{rcpt}"]
identity_file = "{key}"

[destination.s3]
repo = "s3://drbucket/repo"
recipients = ["{rcpt}"]
identity_file = "{key}"
env = {{ AWS_ENDPOINT = "http://127.0.0.1:{cut}", AWS_ALLOW_HTTP = "true", AWS_ACCESS_KEY_ID = "{id}", AWS_SECRET_ACCESS_KEY = "${{MOTO_SECRET}}", AWS_REGION = "us-east-1", AWS_VIRTUAL_HOSTED_STYLE_REQUEST = "false" }}

[[database]]
glob = "{tenants}/*.db"
destinations = ["local", "s3"]

[[database]]
path = "{journal}"
destinations = ["local", "s3"]

[[database]]
path = "{secret}"
destinations = ["local", "s3"]
db_key_file = "{kf}"
"#,
        cut = cut.port,
        id = moto_env["AWS_ACCESS_KEY_ID"],
        tenants = tenants.display(),
        journal = journal.display(),
        secret = secret.display(),
    );
    std::fs::write(&config, &base).unwrap();
    let secret_env = [("MOTO_SECRET", moto_env["AWS_SECRET_ACCESS_KEY"].as_str())];
    let mut child = start(&w, &config, port, &secret_env);

    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(vec![Vec::new(), Vec::new(), Vec::new()]));
    let dbs = vec![(wal.clone(), false), (journal.clone(), false), (secret.clone(), true)];
    let handles = writers(dbs.clone(), stop.clone(), log.clone());

    // Every database on both destinations, and healthy.
    until("all six shipped", 120, || {
        get(port, "/metrics").is_some_and(|(_, m)| {
            lines(&m, "sqlvault_newest_state_timestamp_seconds", &[])
                .iter()
                .filter(|l| value(l) > 0.0)
                .count()
                == 6
        })
    });
    until("healthy", 60, || get(port, "/healthz").is_some_and(|(c, _)| c == 200));

    // SIGHUP with a changed configuration: people and key custody for the runbook, and
    // a threshold; replication goes on (no new chain for that).
    std::thread::sleep(Duration::from_millis(1100)); // a new mtime, whatever the filesystem
    let with_people = format!(
        "{}\n[identity.ops]\nrecipient = \"{rcpt}\"\nlocation = \"the ops safe\"\n\n[[person]]\nname = \"Dana Ops\"\nrole = \"on-call DBA\"\ncontact = \"+1 555 0100\"\nholds = [\"ops\"]\nmay_restore = true\n",
        base.replace("max_lag = \"4s\"", "max_lag = \"5s\"")
    );
    std::fs::write(&config, &with_people).unwrap();
    // SAFETY: a signal to a child this test spawned and still owns.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    until("reloaded", 30, || {
        get(port, "/metrics").is_some_and(|(_, m)| m.contains("sqlvault_config_reloads_total 1"))
    });

    // The S3 destination cut off: health and metrics say so; the local one goes on.
    cut.down.store(true, Ordering::SeqCst);
    until("unhealthy without S3", 60, || {
        get(port, "/healthz").is_some_and(|(c, b)| c == 503 && b.contains("→ s3"))
    });
    // Its lag grows past max_lag while the local destination keeps up.
    until("S3 lagging, local not", 60, || {
        get(port, "/metrics").is_some_and(|(_, m)| {
            let s3 = lines(&m, "sqlvault_replication_lag_seconds", &["destination=\"s3\""]);
            let local = lines(&m, "sqlvault_replication_lag_seconds", &["destination=\"local\""]);
            s3.iter().filter(|l| value(l) > 4.0).count() >= 2 && local.iter().all(|l| value(l) < 4.0)
        })
    });
    cut.down.store(false, Ordering::SeqCst);
    until("healthy again", 120, || {
        get(port, "/healthz").is_some_and(|(c, _)| c == 200)
    });

    // A drill after the last configuration change on every pair (the runbook's stamp).
    let changed = std::fs::metadata(&config).unwrap().modified().unwrap();
    let changed = changed.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    until(
        "a drill of every database on every destination after the change",
        180,
        || {
            get(port, "/metrics").is_some_and(|(_, m)| {
                let d = lines(&m, "sqlvault_last_success_timestamp_seconds", &["kind=\"drill\""]);
                d.len() == 6 && d.iter().all(|l| value(l) > changed)
            })
        },
    );

    stop.store(true, Ordering::SeqCst);
    for h in handles {
        h.join().unwrap();
    }
    let last: Vec<i64> = log.lock().unwrap().iter().map(|l| l.last().unwrap().0).collect();
    until("everything shipped", 60, || {
        get(port, "/metrics").is_some_and(|(_, m)| {
            lines(&m, "sqlvault_replication_lag_seconds", &[])
                .iter()
                .all(|l| value(l) == 0.0)
        })
    });
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = child.wait().unwrap();
    assert_eq!(
        st.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(w.path("daemon.log")).unwrap()
    );

    // Every database, both destinations: the newest state is the last commit; a point
    // in time is a whole committed state made at or before it.
    let senv: Vec<(&str, &str)> = moto_env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for (i, (db, keyed)) in dbs.iter().enumerate() {
        let name = db.file_name().unwrap().to_str().unwrap();
        let commits = log.lock().unwrap()[i].clone();
        for r in [repo.as_str(), "s3://drbucket/repo"] {
            let out = w.s(&format!("{name}.{}.newest", if r == repo { "local" } else { "s3" }));
            let mut a = vec!["restore", r, &out, "-i", &key, "--name", name, "--at", "-0s"];
            if *keyed {
                a.extend(["--db-key-file", &kf]);
            }
            w.run_env(&a, &senv).ok();
            assert_eq!(restored_n(Path::new(&out), *keyed), last[i], "{name} from {r}");
        }
        let mid = commits[commits.len() / 2].1 + 0.5;
        let at = {
            let ms = (mid * 1000.0) as i64;
            let s = sqlvault_engine::retention::iso_time(ms - ms % 1000);
            format!("{}.{:03}Z", s.trim_end_matches('Z'), ms % 1000)
        };
        let out = w.s(&format!("{name}.point"));
        let mut a = vec!["restore", &repo, &out, "-i", &key, "--name", name, "--at", &at];
        if *keyed {
            a.extend(["--db-key-file", &kf]);
        }
        w.run(&a).ok();
        let n = restored_n(Path::new(&out), *keyed);
        let t = commits.iter().find(|c| c.0 == n).map(|c| c.1).unwrap_or(0.0);
        assert!(n > 0 && t <= mid + 0.001, "{name} --at {at}: commit {n} made at {t}");
    }

    // One chain started by the daemon's start per replicated database: the reload did
    // not restart replication (other chains are compactions and the S3 cut's bases).
    let t = w
        .run(&["--json", "snapshots", &repo, "--timeline", "-i", &key])
        .ok()
        .json();
    for tl in t["timeline"].as_array().unwrap() {
        let starts = tl["chains"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["started_by"] == "start")
            .count();
        assert!(starts <= 1, "a reload restarted replication: {tl}");
    }

    // The runbook: VERIFIED (a drill passed on every pair after the last change),
    // and its commands, run as written, restore.
    let restore_dir = w.path("restore");
    let md = w.s("DR.md");
    let html = w.s("DR.html");
    let r = w
        .run_env(
            &[
                "--json",
                "runbook",
                "--config",
                &config,
                "-o",
                &md,
                "--html",
                &html,
                "--restore-dir",
                restore_dir.to_str().unwrap(),
            ],
            &[secret_env[0]],
        )
        .ok()
        .json();
    assert_eq!(r["verified"], true, "{r}");
    let text = std::fs::read_to_string(&md).unwrap();
    assert!(
        text.contains("**VERIFIED**") && text.contains("Dana Ops") && text.contains("the ops safe"),
        "{text}"
    );
    assert!(!text.contains(&moto_env["AWS_SECRET_ACCESS_KEY"]) || moto_env["AWS_SECRET_ACCESS_KEY"].len() < 8);
    assert!(!text.contains(DB_KEY), "the database key in the runbook");
    let cmds = sqlvault_service::runbook::commands(&text);
    let kinds: Vec<&str> = cmds.iter().map(|(n, _)| n.split(' ').next().unwrap()).collect();
    for k in ["newest", "point", "in-place", "stock-tools"] {
        assert!(kinds.contains(&k), "no {k} command: {kinds:?}");
    }
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_sqlvault"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for (name, script) in &cmds {
        let mut c = Command::new("sh");
        c.args(["-e", "-c", script]).current_dir(&root).env("PATH", &path);
        for (k, v) in w.env.iter().map(|(k, v)| (k, v)).chain(moto_env.iter()) {
            c.env(k, v);
        }
        c.env("MOTO_SECRET", &moto_env["AWS_SECRET_ACCESS_KEY"]);
        let o = c.output().unwrap();
        assert!(
            o.status.success(),
            "runbook command {name} failed:\n{script}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // What the commands restored is what the database held.
    for (i, (db, keyed)) in dbs.iter().enumerate() {
        let name = db.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            restored_n(&restore_dir.join(name), *keyed),
            last[i],
            "{name}: the runbook's newest"
        );
        restored_n(&restore_dir.join(format!("{name}.at")), *keyed);
        // In place: the database file itself now holds the restored state.
        assert_eq!(restored_n(db, *keyed), last[i], "{name}: in place");
        // Stock tools: plaintext pages (a SQLCipher database comes back unencrypted).
        let stock = restore_dir.join(format!("{name}.stock"));
        if stock.exists() {
            assert_eq!(restored_n(&stock, false), last[i], "{name}: stock tools");
        }
    }

    // The HTML page in a real browser: its sections are there, and a screenshot is
    // kept for CI (target/runbook/DR.png).
    let shots = root.join("target/runbook");
    std::fs::create_dir_all(&shots).unwrap();
    let chromium = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("chromium must be installed (Debian package chromium): .ci/run installs it");
    let profile = w.path("chromium-profile");
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        &format!("--user-data-dir={}", profile.display()),
    ];
    let dom = Command::new(chromium)
        .args(common)
        .args(["--dump-dom", &format!("file://{html}")])
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout);
    for s in [
        "Disaster-recovery runbook",
        "What is protected, where",
        "Key custody",
        "Restore",
        "Without sqlvault",
        "Roles and contacts",
        "Verification checklist",
        "VERIFIED",
    ] {
        assert!(dom.contains(s), "the rendered page lacks {s:?}");
    }
    let png = shots.join("DR.png");
    let _ = std::fs::remove_file(&png);
    let o = Command::new(chromium)
        .args(common)
        .args([
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,4000",
            &format!("file://{html}"),
        ])
        .output()
        .unwrap();
    assert!(
        png.metadata().is_ok_and(|m| m.len() > 10_000),
        "no screenshot: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    drop(cut);
    drop(moto);
}
