//! Issue 16: a careful user must not lose data with documented flags. Two databases that
//! share a file name, restore and verify without a name, `restore --force` onto a
//! database in use, and prune's grace period.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Child;

use crate::support::*;

fn make_db(path: &Path, seed: u64, bytes: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    kit::generate(
        path,
        &kit::GenOptions {
            target_bytes: bytes,
            seed,
            wal: true,
        },
    )
    .unwrap();
}

fn canonical(p: &str) -> String {
    std::fs::canonicalize(p).unwrap().display().to_string()
}

fn snapshots(w: &World, repo: &str) -> Vec<serde_json::Value> {
    w.run(&["snapshots", repo, "--json"]).ok().json()["snapshots"]
        .as_array()
        .unwrap()
        .clone()
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn a_name_that_belongs_to_another_source_is_refused_until_adopted() {
    let w = World::new();
    let repo = w.s("repo");
    let (_key, db) = w.setup(&repo, 1 << 20, true);
    w.run(&["backup", &db, &repo]).ok();
    // An unrelated database with the same file name, in another directory.
    let stranger = w.s("elsewhere/app.db");
    make_db(Path::new(&stranger), 99, 64 << 10);
    let packs = count(&w.path("repo/packs"));

    let r = w.run(&["backup", &stranger, &repo, "--json"]).fails(8);
    assert_eq!(r.json()["error"]["code"], "backup.name-taken", "{}", r.stdout);
    assert!(
        r.stderr.contains(&canonical(&db)) && r.stderr.contains(&canonical(&stranger)),
        "both sources named: {}",
        r.stderr
    );
    assert!(
        r.stderr.contains("--name") && r.stderr.contains("--adopt-name"),
        "{}",
        r.stderr
    );
    // Refused before anything was uploaded or committed.
    assert_eq!(snapshots(&w, &repo).len(), 1);
    assert_eq!(count(&w.path("repo/packs")), packs, "a refused backup uploads nothing");

    // Under a name of its own it is backed up.
    w.run(&["backup", &stranger, &repo, "--name", "stranger.db"]).ok();
    // The owner keeps backing up under its name.
    w.run(&["backup", &db, &repo]).ok();

    // The database moved: --adopt-name takes the name over, and the old place is then
    // the stranger.
    let moved = w.s("moved/app.db");
    std::fs::create_dir_all(w.path("moved")).unwrap();
    std::fs::copy(&db, &moved).unwrap();
    w.run(&["backup", &moved, &repo]).fails(8);
    w.run(&["backup", &moved, &repo, "--adopt-name"]).ok();
    w.run(&["backup", &moved, &repo]).ok();
    let r = w.run(&["backup", &db, &repo]).fails(8);
    assert!(
        r.stderr.contains("backup.name-taken") || r.stderr.contains("belongs to"),
        "{}",
        r.stderr
    );

    // `snapshots` shows where each came from (JSON and text).
    let snaps = snapshots(&w, &repo);
    assert_eq!(snaps.len(), 5);
    let host = snaps[0]["host"].as_str().unwrap().to_string();
    assert!(!host.is_empty());
    let paths: Vec<&str> = snaps.iter().map(|s| s["source_path"].as_str().unwrap()).collect();
    let (db_c, stranger_c, moved_c) = (canonical(&db), canonical(&stranger), canonical(&moved));
    assert_eq!(
        paths,
        vec![
            db_c.as_str(),
            stranger_c.as_str(),
            db_c.as_str(),
            moved_c.as_str(),
            moved_c.as_str()
        ]
    );
    let text = w.run(&["snapshots", &repo]).ok().stdout;
    assert!(text.contains("SOURCE"), "{text}");
    assert!(text.contains(&format!("{host}:{moved_c}")), "{text}");
}

#[test]
fn forget_keeps_the_snapshots_of_each_source_of_a_name_apart() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 1 << 20, true);
    w.run(&["backup", &db, &repo]).ok();
    kit::update_random(Path::new(&db), 0.05, 1).unwrap();
    w.run(&["backup", &db, &repo]).ok();
    let real = snapshots(&w, &repo);
    // Another file takes the name over (deliberately), once.
    let other = w.s("other/app.db");
    make_db(Path::new(&other), 5, 64 << 10);
    w.run(&["backup", &other, &repo, "--adopt-name"]).ok();

    // --keep-last 1 keeps the newest of *each* database: the real one's newest is not
    // evicted by the other file's snapshot, and the other's is not counted for it.
    let plan = w
        .run(&["forget", &repo, "--keep-last", "1", "--dry-run", "--json"])
        .ok()
        .json();
    let groups = plan["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{plan}");
    assert!(
        groups.iter().all(|g| g["name"] == "app.db" && g["host"] != ""),
        "{plan}"
    );
    let real_group = groups
        .iter()
        .find(|g| g["source_path"] == canonical(&db).as_str())
        .unwrap_or_else(|| panic!("{plan}"));
    let kept: Vec<&str> = real_group["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["keep"] == true)
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(kept, vec![real[1]["id"].as_str().unwrap()], "{plan}");
    assert_eq!(
        (plan["kept"].as_u64(), plan["removed"].as_u64()),
        (Some(2), Some(1)),
        "{plan}"
    );
    let text = w.run(&["forget", &repo, "--keep-last", "1", "--dry-run"]).ok().stdout;
    assert!(text.contains(&canonical(&other)), "{text}");

    // For real: the newest real snapshot is still there and restores the real content.
    w.run(&["forget", &repo, "--keep-last", "1"]).ok();
    let out = w.s("out.db");
    w.run(&[
        "restore",
        &repo,
        &out,
        "-i",
        &key,
        "--snapshot",
        real[1]["id"].as_str().unwrap(),
    ])
    .ok();
    assert_eq!(content(Path::new(&out)), content(Path::new(&db)));
}

#[test]
fn restore_verify_and_drill_without_a_name_never_guess_the_database() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 1 << 20, true);
    w.run(&["backup", &db, &repo]).ok();
    let out = w.s("out.db");
    // One database: restore and verify need no name.
    w.run(&["restore", &repo, &out, "-i", &key]).ok();
    w.run(&["verify", &repo, "-i", &key]).ok();
    std::fs::remove_file(&out).unwrap();

    // A second database, backed up last.
    let other = w.s("other.db");
    make_db(Path::new(&other), 3, 64 << 10);
    w.run(&["backup", &other, &repo]).ok();
    let r = w.run(&["restore", &repo, &out, "-i", &key, "--json"]).fails(2);
    assert_eq!(r.json()["error"]["code"], "snapshot.name-required", "{}", r.stdout);
    assert!(
        r.stderr.contains("app.db") && r.stderr.contains("other.db") && r.stderr.contains("--name"),
        "{}",
        r.stderr
    );
    assert!(!Path::new(&out).exists(), "nothing restored");
    let r = w.run(&["verify", &repo, "-i", &key]).fails(2);
    assert!(
        r.stderr.contains("app.db") && r.stderr.contains("other.db"),
        "{}",
        r.stderr
    );
    // Named, each restores its own database.
    w.run(&["restore", &repo, &out, "-i", &key, "--name", "app.db"]).ok();
    assert_eq!(content(Path::new(&out)), content(Path::new(&db)));
    w.run(&["verify", &repo, "-i", &key, "--name", "other.db"]).ok();
    w.run(&["verify", &repo, "-i", &key, "--all"]).ok();

    // Two sources under one name: the name alone does not say which either.
    let moved = w.s("moved/other.db");
    make_db(Path::new(&moved), 4, 64 << 10);
    w.run(&["backup", &moved, &repo, "--adopt-name"]).ok();
    let r = w.run(&[
        "restore",
        &repo,
        w.s("o2.db").as_str(),
        "-i",
        &key,
        "--name",
        "other.db",
    ]);
    r.ok();
    std::fs::remove_file(&out).unwrap();
    w.run(&["forget", &repo, "--name", "app.db", "--remove-all"]).ok();
    let r = w.run(&["restore", &repo, &out, "-i", &key]).fails(2);
    assert!(
        r.stderr.contains(&canonical(&other)) && r.stderr.contains(&canonical(&moved)),
        "both sources named: {}",
        r.stderr
    );

    // drill checks the newest snapshot of every database: each source of a name.
    let log = w.s("drill.jsonl");
    let j = w
        .run(&["drill", &repo, "-i", &key, "--log", &log, "--json"])
        .ok()
        .json();
    let recs = j["records"].as_array().unwrap();
    let mut sources: Vec<&str> = recs.iter().map(|r| r["source_path"].as_str().unwrap()).collect();
    sources.sort();
    let mut want = vec![canonical(&other), canonical(&moved)];
    want.sort();
    assert_eq!(sources, want, "{j}");
    assert!(recs.iter().all(|r| r["ok"] == true), "{j}");
}

/// A process that holds `db` open, as an application does, until killed.
struct Holder(Child);

impl Holder {
    fn open(db: &str) -> Holder {
        Holder(kit::python_ready(
            "import sqlite3,sys,time\nc=sqlite3.connect(sys.argv[1])\nc.execute('select count(*) from sqlite_master').fetchall()\nprint('ready',flush=True)\ntime.sleep(600)",
            &[db],
        ))
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn restore_and_load_force_refuse_a_destination_an_application_holds_open() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 1 << 20, true);
    w.run(&["backup", &db, &repo]).ok();
    w.run(&["backup", &db, &repo, "--kind", "dump", "--name", "app.sql"])
        .ok();
    let live = w.s("live/app.db");
    make_db(Path::new(&live), 11, 64 << 10);
    let before = std::fs::read(&live).unwrap();
    let sql = w.s("app.sql");
    w.run(&["dump", &db, "-o", &sql]).ok();

    {
        let app = Holder::open(&live);
        for (args, code) in [
            (
                vec![
                    "restore", &repo, &live, "-i", &key, "--name", "app.db", "--force", "--json",
                ],
                "restore.destination-in-use",
            ),
            (
                vec![
                    "restore", &repo, &live, "-i", &key, "--name", "app.sql", "--force", "--json",
                ],
                "restore.destination-in-use",
            ),
            (
                vec!["load", &sql, &live, "--force", "--json"],
                "load.destination-in-use",
            ),
        ] {
            let r = w.run(&args).fails(7);
            assert_eq!(r.json()["error"]["code"], code, "{args:?}: {}", r.stdout);
            assert!(
                r.stderr.contains(&live) && r.stderr.contains(&app.pid().to_string()),
                "names the file and the pid: {}",
                r.stderr
            );
            assert_eq!(std::fs::read(&live).unwrap(), before, "{args:?} replaced the file");
        }
        assert_no_leftovers(&w.path("live"), "refused restores");
    }
    // Once the application is stopped, the same command replaces it.
    w.run(&["restore", &repo, &live, "-i", &key, "--name", "app.db", "--force"])
        .ok();
    assert_eq!(content(Path::new(&live)), content(Path::new(&db)));
}

#[test]
fn a_replaced_database_keeps_its_owner_group_and_mode_and_a_new_one_is_private() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 1 << 20, true);
    w.run(&["backup", &db, &repo]).ok();
    let sql = w.s("app.sql");
    w.run(&["dump", &db, "-o", &sql]).ok();
    let root = unsafe { libc::geteuid() } == 0;
    let (uid, gid) = if root {
        (1234, 1235)
    } else {
        (unsafe { libc::geteuid() }, unsafe { libc::getegid() })
    };

    for (i, cmd) in ["restore", "load"].iter().enumerate() {
        let dest = w.s(&format!("srv{i}/app.db"));
        make_db(Path::new(&dest), 20 + i as u64, 64 << 10);
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::chown(&dest, Some(uid), Some(gid)).unwrap();
        let args: Vec<&str> = match *cmd {
            "restore" => vec!["restore", &repo, &dest, "-i", &key, "--force"],
            _ => vec!["load", &sql, &dest, "--force"],
        };
        w.run(&args).ok();
        let m = std::fs::metadata(&dest).unwrap();
        assert_eq!(
            (m.mode() & 0o7777, m.uid(), m.gid()),
            (0o640, uid, gid),
            "{cmd} --force keeps the replaced file's mode and owner"
        );
        assert_eq!(content(Path::new(&dest)), content(Path::new(&db)));

        // A new destination stays private to the user running sqlvault.
        let fresh = w.s(&format!("srv{i}/fresh.db"));
        let args: Vec<&str> = match *cmd {
            "restore" => vec!["restore", &repo, &fresh, "-i", &key],
            _ => vec!["load", &sql, &fresh],
        };
        w.run(&args).ok();
        let m = std::fs::metadata(&fresh).unwrap();
        assert_eq!(
            (m.mode() & 0o7777, m.uid()),
            (0o600, unsafe { libc::geteuid() }),
            "{cmd} to a new file"
        );
    }
}

#[test]
fn a_grace_below_the_minimum_is_refused_before_anything_changes() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 1 << 20, true);
    w.run(&["backup", &db, &repo]).ok();
    kit::update_random(Path::new(&db), 0.05, 1).unwrap();
    w.run(&["backup", &db, &repo]).ok();
    for g in ["0s", "59m"] {
        let r = w.run(&["prune", &repo, "-i", &key, "--grace", g, "--json"]).fails(2);
        assert_eq!(r.json()["error"]["code"], "prune.grace-too-short", "{}", r.stdout);
        assert!(r.stderr.contains("1h"), "names the minimum: {}", r.stderr);
        // forget --prune refuses before forgetting anything.
        w.run(&["forget", &repo, "--keep-last", "1", "--prune", "--grace", g])
            .fails(2);
        assert_eq!(snapshots(&w, &repo).len(), 2);
    }
    assert!(!w.path("repo/prune/pending").exists(), "no state was recorded");
    // Backups go on, and the minimum itself is accepted.
    w.run(&["backup", &db, &repo]).ok();
    let p = w
        .run(&["prune", &repo, "-i", &key, "--grace", "1h", "--json"])
        .ok()
        .json();
    assert_eq!(p["grace_seconds"], 3600, "{p}");
    w.run(&["backup", &db, &repo]).ok();
}

#[test]
fn no_running_backups_deletes_the_marks_already_made_in_the_same_run() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 1 << 20, true);
    w.run(&["backup", &db, &repo]).ok();
    // Another database, then forgotten: its pack and map are garbage.
    let other = w.s("other.db");
    make_db(Path::new(&other), 8, 256 << 10);
    w.run(&["backup", &other, &repo]).ok();
    w.run(&["forget", &repo, "--name", "other.db", "--remove-all"]).ok();

    // The first run marks; with the default grace nothing is ripe.
    let first = w.run(&["prune", &repo, "-i", &key, "--json"]).ok().json();
    assert_eq!(
        first["deleted"]["packs"].as_u64().unwrap() + first["deleted"]["maps"].as_u64().unwrap(),
        0
    );
    let marked = first["marked"]["maps"].as_u64().unwrap() + first["marked"]["packs"].as_u64().unwrap();
    assert!(marked > 0, "{first}");
    let dry = w.run(&["prune", &repo, "-i", &key, "--dry-run", "--json"]).ok().json();
    assert_eq!(dry["deleted"]["maps"], 0, "without the flag the marks wait: {dry}");

    // No backup runs: the marks are deleted now, in this run.
    let maps = count(&w.path("repo/maps"));
    let p = w
        .run(&["prune", &repo, "-i", &key, "--no-running-backups", "--json"])
        .ok()
        .json();
    let deleted = p["deleted"]["maps"].as_u64().unwrap() + p["deleted"]["packs"].as_u64().unwrap();
    assert_eq!(deleted, marked, "{p}");
    assert_eq!(
        p["waiting"]["maps"].as_u64().unwrap() + p["waiting"]["packs"].as_u64().unwrap(),
        0,
        "{p}"
    );
    assert!(count(&w.path("repo/maps")) < maps);
    // What is left restores and checks.
    let out = w.s("out.db");
    w.run(&["restore", &repo, &out, "-i", &key]).ok();
    assert_eq!(content(Path::new(&out)), content(Path::new(&db)));
    w.run(&["check", &repo, "-i", &key, "--read-data"]).ok();
}

/// Local attacker: a file planted at the destination of a `--force` restore or load
/// (in a directory others may write to, or as a link) is never how the restored
/// database gets its owner and mode, nor a way to redirect the rename.
#[test]
fn attack_local_a_planted_destination_is_not_handed_the_restored_database() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 1 << 20, true);
    w.run(&["backup", &db, &repo]).ok();
    let sql = w.s("app.sql");
    w.run(&["dump", &db, "-o", &sql]).ok();
    let me = unsafe { libc::geteuid() };
    let root = me == 0;
    let (uid, gid) = if root {
        (1234, 1235)
    } else {
        (me, unsafe { libc::getegid() })
    };
    let args_for = |cmd: &str, dest: &str| -> Vec<String> {
        match cmd {
            "restore" => vec!["restore", &repo, dest, "-i", &key, "--force"],
            _ => vec!["load", &sql, dest, "--force"],
        }
        .into_iter()
        .map(String::from)
        .collect()
    };
    for (i, cmd) in ["restore", "load"].iter().enumerate() {
        // A sticky, world-writable directory (/tmp): the planted file's owner and its
        // world-writable mode are not carried over.
        let shared = w.path(&format!("shared{i}"));
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let dest = shared.join("x.db").display().to_string();
        make_db(Path::new(&dest), 30 + i as u64, 64 << 10);
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o666)).unwrap();
        std::os::unix::fs::chown(&dest, Some(uid), Some(gid)).unwrap();
        let a = args_for(cmd, &dest);
        let r = w.run(&a.iter().map(String::as_str).collect::<Vec<_>>()).ok();
        let m = std::fs::metadata(&dest).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid()), (0o600, me), "{cmd} in a shared directory");
        assert!(r.stderr.contains("others may write"), "says why: {}", r.stderr);
        assert_eq!(content(Path::new(&dest)), content(Path::new(&db)));

        // A directory only its owner writes: the owner is kept, but never group or
        // other write, execute or set-id bits.
        let own = w.path(&format!("own{i}"));
        let dest = own.join("app.db").display().to_string();
        make_db(Path::new(&dest), 40 + i as u64, 64 << 10);
        std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&dest, Some(uid), Some(gid)).unwrap();
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o6777)).unwrap();
        let a = args_for(cmd, &dest);
        let r = w.run(&a.iter().map(String::as_str).collect::<Vec<_>>()).ok();
        let m = std::fs::metadata(&dest).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o744, uid, gid), "{cmd}");
        assert!(!r.stderr.contains("others may write"), "{}", r.stderr);

        // A link at the destination: refused before any work, and again at the
        // rename; neither the link nor what it points to changes.
        let target = own.join("target.db");
        make_db(&target, 50 + i as u64, 64 << 10);
        let before = std::fs::read(&target).unwrap();
        let link = own.join("link.db");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let mut a = args_for(cmd, &link.display().to_string());
        a.push("--json".into());
        let r = w.run(&a.iter().map(String::as_str).collect::<Vec<_>>()).fails(8);
        assert_eq!(r.json()["error"]["code"], "destination.not-replaceable", "{}", r.stdout);
        assert!(r.stderr.contains("symbolic link"), "{}", r.stderr);
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), before);
        assert_no_leftovers(&own, "a refused link");
    }
}

/// A Kubernetes CronJob runs every backup in a new pod with a new host name: the host
/// identity comes from SQLVAULT_HOST (or --host) instead, and is what the name claim,
/// the manifest and `snapshots` record.
#[test]
fn the_host_identity_comes_from_sqlvault_host_or_host() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 256 << 10, true);
    w.run_env(&["backup", &db, &repo], &[("SQLVAULT_HOST", "app-cron")])
        .ok();
    // The same identity on the next run (another pod): accepted, by either spelling.
    w.run_env(&["backup", &db, &repo], &[("SQLVAULT_HOST", "app-cron")])
        .ok();
    w.run(&["backup", &db, &repo, "--host", "app-cron"]).ok();
    // Another identity at the same path is another source: refused.
    let r = w
        .run_env(&["backup", &db, &repo, "--json"], &[("SQLVAULT_HOST", "other-host")])
        .fails(8);
    assert_eq!(r.json()["error"]["code"], "backup.name-taken", "{}", r.stdout);
    assert!(
        r.stderr.contains("app-cron:") && r.stderr.contains("other-host:"),
        "{}",
        r.stderr
    );
    let snaps = snapshots(&w, &repo);
    assert_eq!(snaps.len(), 3);
    assert!(snaps.iter().all(|s| s["host"] == "app-cron"), "{snaps:?}");
    // The flag wins over the environment.
    w.run_env(
        &["backup", &db, &repo, "--host", "app-cron"],
        &[("SQLVAULT_HOST", "other-host")],
    )
    .ok();
    // verify takes it too (its evidence records it).
    w.run_env(&["verify", &repo, "-i", &key], &[("SQLVAULT_HOST", "verifier-1")])
        .ok();
    // Not a usable identity: refused before anything is done.
    for bad in ["", "a b", "tab\there", &"x".repeat(254)] {
        let r = w.run(&["backup", &db, &repo, "--host", bad, "--json"]).fails(2);
        assert!(r.stderr.contains("host identity"), "{bad:?}: {}", r.stderr);
    }
    assert_eq!(snapshots(&w, &repo).len(), 4);
}
