//! Attacks from the trust model (docs/security.md), each played as the attacker would:
//! a local user planting files beside a restore destination, and a backup host that
//! uses its write key to commit snapshots made to mislead restore, retention and the
//! terminal of whoever lists them.

use std::path::{Path, PathBuf};
use std::process::Command;

use sqlvault_engine::format::{Manifest, ObjectId, decode_manifest, encode_manifest};

use crate::support::{World, WriteKeyView, assert_no_leftovers, content};

const YEAR_MS: i64 = 365 * 24 * 3_600_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Commits a new snapshot as a backup host holding the write key can: it takes the
/// manifest of snapshot `from` (an id prefix), lets `edit` change it, gives it a fresh
/// id, MACs it with the repository secret from the write key in SQLVAULT_HOME, encrypts
/// it to the write key's recipients and the metadata key, and stores it under
/// `snapshots/` of the local repository `repo`. Returns the new snapshot's id.
pub(crate) fn forge_snapshot(w: &World, repo: &Path, from: &str, edit: impl FnOnce(&mut Manifest)) -> String {
    let wk = WriteKeyView::of(w);
    let snaps = repo.join("snapshots");
    let src: PathBuf = std::fs::read_dir(&snaps)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(from))
        .unwrap_or_else(|| panic!("no snapshot {from}"));
    let id: ObjectId = src.file_name().unwrap().to_string_lossy().parse().unwrap();
    let mut m = decode_manifest(&wk.keys, &wk.open(&src), &id).unwrap();
    edit(&mut m);
    m.id = ObjectId::random();
    std::fs::write(snaps.join(m.id.to_string()), wk.seal(&encode_manifest(&wk.keys, &m))).unwrap();
    m.id.to_string()
}

fn snapshot_ids(w: &World, repo: &str) -> Vec<String> {
    let j = w.run(&["snapshots", repo, "--json"]).ok().json();
    j["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// Names of the files in `dir`, sorted: what `ls` shows.
fn ls(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// One value through the stock `sqlite3` shell, as a user would open the file.
fn sqlite3(db: &Path, sql: &str) -> String {
    let o = Command::new("sqlite3").arg(db).arg(sql).output().expect("sqlite3 CLI");
    assert!(o.status.success(), "sqlite3: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// A WAL written by another database: a copy of `base` in which every order's note
/// was rewritten to 'PLANTED', committed to the WAL and never checkpointed.
fn foreign_wal(w: &World, base: &Path) -> Vec<u8> {
    let other = w.path("other.db");
    std::fs::copy(base, &other).unwrap();
    let wal = w.path("other.db-wal.copy");
    let st = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sqlite3, shutil, os\nc = sqlite3.connect({:?}, isolation_level=None)\nassert c.execute('PRAGMA journal_mode=WAL').fetchone()[0] == 'wal'\nc.execute('PRAGMA wal_autocheckpoint=0')\nc.execute(\"UPDATE orders SET note = 'PLANTED'\")\nshutil.copy({:?}, {:?})\nos._exit(0)",
            other.display().to_string(),
            format!("{}-wal", other.display()),
            wal.display().to_string()
        ))
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::read(&wal).unwrap()
}

/// Local attacker: a `-wal` (or `-shm`, or journal) planted beside a restore
/// destination would be applied to the restored file on its first open, replacing the
/// verified content. Restore refuses it (exit 8, nothing written, the planted file
/// untouched); with --force the file goes and the destination holds the snapshot.
#[test]
fn attack_stale_wal_beside_restore_destination_is_refused_not_replayed() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 1 << 20, true);
    w.run(&["backup", &db, &repo]).ok();
    let base = w.path("base.db");
    w.run(&["restore", &repo, base.to_str().unwrap(), "-i", &key]).ok();
    let planted = foreign_wal(&w, &base);

    // The threat is real: the stock shell applies such a WAL to a restored file.
    let probe = w.path("probe.db");
    std::fs::copy(&base, &probe).unwrap();
    std::fs::write(w.path("probe.db-wal"), &planted).unwrap();
    assert_ne!(
        sqlite3(&probe, "SELECT count(*) FROM orders WHERE note = 'PLANTED'"),
        "0",
        "the planted WAL replays onto a copy of the snapshot"
    );

    let dir = w.path("dest");
    std::fs::create_dir(&dir).unwrap();
    let dest = dir.join("restored.db");
    let d = dest.to_str().unwrap();
    for suffix in ["-wal", "-shm", "-journal"] {
        let side = PathBuf::from(format!("{d}{suffix}"));
        std::fs::write(&side, &planted).unwrap();
        let before = ls(&dir);
        let r = w.run(&["restore", &repo, d, "-i", &key, "--json"]).fails(8);
        assert_eq!(r.json()["error"]["code"], "restore.stale-side-files", "{suffix}");
        assert!(r.stderr.contains(&format!("restored.db{suffix}")), "{}", r.stderr);
        assert_eq!(ls(&dir), before, "{suffix}: refusal leaves the directory as it was");
        assert!(!dest.exists());
        assert_eq!(
            std::fs::read(&side).unwrap(),
            planted,
            "{suffix}: planted file untouched"
        );
        std::fs::remove_file(&side).unwrap();
    }

    std::fs::write(format!("{d}-wal"), &planted).unwrap();
    std::fs::write(format!("{d}-shm"), b"stale").unwrap();
    w.run(&["restore", &repo, d, "-i", &key, "--force"]).ok();
    assert_eq!(
        ls(&dir),
        vec!["restored.db".to_string()],
        "--force removes the side files"
    );
    assert_eq!(
        sqlite3(&dest, "SELECT count(*) FROM orders WHERE note = 'PLANTED'"),
        "0"
    );
    assert_eq!(sqlite3(&dest, "PRAGMA integrity_check"), "ok");
    assert_eq!(content(&dest), content(Path::new(&db)));
    assert_no_leftovers(w.dir.path(), "after --force");
}

/// The same attack on the other paths that install a database: restoring a dump
/// snapshot, and `sqlvault load`.
#[test]
fn attack_stale_side_files_beside_dump_restore_and_load_are_refused() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 1 << 20, true);
    let dump = w.run(&["backup", &db, &repo, "--kind", "dump", "--json"]).ok().json();
    let id = dump["snapshot_id"].as_str().unwrap().to_string();
    let base = w.path("base.db");
    w.run(&["restore", &repo, base.to_str().unwrap(), "-i", &key]).ok();
    let planted = foreign_wal(&w, &base);

    let dir = w.path("dest");
    std::fs::create_dir(&dir).unwrap();
    let dest = dir.join("from-dump.db");
    let d = dest.to_str().unwrap();
    let wal = PathBuf::from(format!("{d}-wal"));
    std::fs::write(&wal, &planted).unwrap();
    let r = w
        .run(&["restore", &repo, d, "-i", &key, "--snapshot", &id, "--json"])
        .fails(8);
    assert_eq!(r.json()["error"]["code"], "restore.stale-side-files");
    assert_eq!(ls(&dir), vec!["from-dump.db-wal".to_string()]);
    assert_eq!(std::fs::read(&wal).unwrap(), planted);
    w.run(&["restore", &repo, d, "-i", &key, "--snapshot", &id, "--force"])
        .ok();
    assert_eq!(ls(&dir), vec!["from-dump.db".to_string()]);
    assert_eq!(
        sqlite3(&dest, "SELECT count(*) FROM orders WHERE note = 'PLANTED'"),
        "0"
    );
    assert_eq!(content(&dest), content(Path::new(&db)));

    let sql = w.s("app.sql");
    w.run(&["dump", &db, "-o", &sql]).ok();
    let loaded = dir.join("loaded.db");
    let l = loaded.to_str().unwrap();
    let journal = PathBuf::from(format!("{l}-journal"));
    std::fs::write(&journal, b"a hot journal from elsewhere").unwrap();
    let before = ls(&dir);
    let r = w.run(&["load", &sql, l, "--json"]).fails(8);
    assert_eq!(r.json()["error"]["code"], "load.stale-side-files");
    assert!(r.stderr.contains("loaded.db-journal"), "{}", r.stderr);
    assert_eq!(ls(&dir), before);
    w.run(&["load", &sql, l, "--force"]).ok();
    assert!(!journal.exists());
    assert_eq!(content(&loaded), content(Path::new(&db)));
    assert_no_leftovers(w.dir.path(), "dump restore and load");
}

/// Backup-host attacker: a snapshot dated five years ahead (of an old state) would be
/// the newest for restore, verify and drill, and would fill `--keep-last` and every
/// calendar bucket so forget removes the real snapshots. It is flagged, never the
/// default choice, kept by no rule and not deleted by forget either; named by id it
/// still restores.
#[test]
fn attack_future_dated_snapshot_is_never_the_newest_nor_fills_retention() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 1 << 20, true);
    let old = w.run(&["backup", &db, &repo, "--json"]).ok().json()["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    sqlvault_testkit::update_random(Path::new(&db), 0.05, 1).unwrap();
    let real = w.run(&["backup", &db, &repo, "--json"]).ok().json()["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let forged = forge_snapshot(&w, Path::new(&repo), &old, |m| m.created_ms = now_ms() + 5 * YEAR_MS);

    let dest = w.s("restored.db");
    let r = w.run(&["restore", &repo, &dest, "-i", &key, "--json"]).ok().json();
    assert_eq!(
        r["snapshot_id"],
        real.as_str(),
        "restore picks the newest real snapshot"
    );
    assert_eq!(content(Path::new(&dest)), content(Path::new(&db)));
    let v = w.run(&["verify", &repo, "-i", &key, "--json"]).ok().json();
    assert_eq!(v["snapshots"][0]["snapshot_id"], real.as_str());
    let d = w
        .run(&["drill", &repo, "-i", &key, "--log", &w.s("drill.jsonl"), "--json"])
        .ok()
        .json();
    assert_eq!(d["records"].as_array().unwrap().len(), 1, "{d}");
    assert_eq!(d["records"][0]["snapshot_id"], real.as_str(), "{d}");
    let audit = w.run(&["audit", &db, "--repo", &repo, "-i", &key, "--json"]).stdout;
    assert!(audit.contains("repo.future-dated-snapshot"), "{audit}");

    let list = w.run(&["snapshots", &repo, "--json"]).ok().json();
    for s in list["snapshots"].as_array().unwrap() {
        assert_eq!(s["future_dated"], s["id"] == forged.as_str(), "{s}");
    }
    let text = w.run(&["snapshots", &repo]).ok().stdout;
    let flagged: Vec<&str> = text.lines().filter(|l| l.contains("FUTURE-DATED")).collect();
    assert_eq!(flagged.len(), 1, "{text}");
    assert!(flagged[0].starts_with(&forged[..8]), "{text}");

    // Retention: the forged snapshot would be the one --keep-last 1 and --keep-daily 1
    // keep. It keeps nothing; the real newest is kept, the old one goes, and the forged
    // one stays, marked, for an operator.
    let plan = w
        .run(&["forget", &repo, "--keep-last", "1", "--keep-daily", "1", "--json"])
        .ok()
        .json();
    assert_eq!(plan["future_dated"], 1, "{plan}");
    let entries = plan["groups"][0]["snapshots"].as_array().unwrap();
    let of = |id: &str| entries.iter().find(|e| e["id"] == id).unwrap().clone();
    assert_eq!(of(&forged)["keep"], true);
    assert_eq!(of(&forged)["future_dated"], true);
    assert_eq!(of(&forged)["reasons"], serde_json::json!(["future-dated"]));
    assert_eq!(of(&real)["keep"], true);
    assert_eq!(
        of(&real)["reasons"],
        serde_json::json!(["last snapshot", "daily snapshot"])
    );
    assert_eq!(of(&old)["keep"], false);
    let mut left = snapshot_ids(&w, &repo);
    left.sort();
    let mut want = vec![real.clone(), forged.clone()];
    want.sort();
    assert_eq!(left, want);

    // --keep-within counts back from the newest real snapshot, not from the forgery.
    w.run(&["forget", &repo, "--keep-within", "1h"]).ok();
    assert_eq!(snapshot_ids(&w, &repo).len(), 2);

    // Named explicitly, the forged snapshot still restores (to its own, old, state).
    let explicit = w.s("explicit.db");
    let r = w
        .run(&["restore", &repo, &explicit, "-i", &key, "--snapshot", &forged, "--json"])
        .ok()
        .json();
    assert_eq!(r["snapshot_id"], forged.as_str());
}

/// Backup-host attacker: a database name chosen to drive the terminal of whoever lists
/// snapshots (set the title, clear the screen) or to forge output lines. Every text
/// output prints it escaped; no raw ESC or BEL reaches stdout or stderr.
#[test]
fn attack_terminal_escapes_in_snapshot_names_are_printed_escaped() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 1 << 20, true);
    let real = w.run(&["backup", &db, &repo, "--json"]).ok().json()["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let evil = "app\x1b]0;pwned\x07\x1b[2J\nFORGED LINE\r\u{202e}";
    let forged = forge_snapshot(&w, Path::new(&repo), &real, |m| {
        m.name = evil.into();
        m.host = "host\x1b[31m".into();
        m.source_path = "/srv/\x1b[2J.db".into();
    });
    let log = w.s("drill.jsonl");
    let runs = [
        w.run(&["snapshots", &repo]).ok(),
        w.run(&["drill", &repo, "-i", &key, "--log", &log]).ok(),
        w.run(&["restore", &repo, &w.s("a.db"), "-i", &key, "--snapshot", &forged])
            .ok(),
        w.run(&["restore", &repo, &w.s("b.db"), "-i", &key, "--name", evil])
            .ok(),
        w.run(&["verify", &repo, "-i", &key, "--all"]).ok(),
        w.run(&["forget", &repo, "--keep-last", "1", "--dry-run"]).ok(),
        w.run(&["audit", &db, "--repo", &repo, "-i", &key]),
        // Error messages quote names too.
        w.run(&[
            "restore",
            &repo,
            &w.s("c.db"),
            "-i",
            &key,
            "--name",
            &format!("{evil}x"),
        ])
        .fails(4),
    ];
    for r in &runs {
        for out in [&r.stdout, &r.stderr] {
            assert!(
                !out.contains(['\x1b', '\x07', '\r', '\u{202e}']),
                "raw control character in output: {out:?}"
            );
            assert!(!out.lines().any(|l| l.starts_with("FORGED LINE")), "{out:?}");
        }
    }
    let listing = &runs[0].stdout;
    assert!(
        listing.contains("app\\u{1b}]0;pwned\\u{7}\\u{1b}[2J\\u{a}FORGED LINE"),
        "{listing}"
    );
    // JSON keeps the name exactly, escaped by JSON's own rules.
    let j = w.run(&["snapshots", &repo, "--json"]).ok();
    assert!(!j.stdout.contains(['\x1b', '\x07', '\u{202e}']), "{:?}", j.stdout);
    let names: Vec<String> = j.json()["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert!(names.contains(&evil.to_string()), "{names:?}");
}
