//! What real databases bring that generated ones do not: collations only the
//! application has (Anki's `unicase`, Android's `LOCALIZED` and `UNICODE`), sources
//! already damaged before their backup, and backups that fail half-way, which must
//! leave nothing behind in the repository.

use std::path::Path;

use rusqlite::Connection;

use crate::support::{World, files, kit};

/// Anki's and Android's collations, as the applications register them: case-folding
/// orders that a bytewise order disagrees with.
fn app_conn(p: &Path) -> Connection {
    let c = Connection::open(p).unwrap();
    let fold = |a: &str, b: &str| a.to_lowercase().cmp(&b.to_lowercase()).then_with(|| a.cmp(b));
    c.create_collation("unicase", fold).unwrap();
    c.create_collation("LOCALIZED", fold).unwrap();
    c.create_collation("UNICODE", fold).unwrap();
    c
}

/// A database like an Anki collection and an Android app's: a WITHOUT ROWID table
/// keyed by an application collation, unique and plain indexes on such columns, and
/// enough rows that bytewise and application orders disagree all over.
fn make_app_db(p: &Path, wal: bool) {
    let c = app_conn(p);
    if wal {
        c.pragma_update(None, "journal_mode", "wal").unwrap();
    }
    c.execute_batch(
        "CREATE TABLE tags(tag TEXT NOT NULL PRIMARY KEY COLLATE unicase, usn INT) WITHOUT ROWID;
         CREATE TABLE decks(id INTEGER PRIMARY KEY, name TEXT NOT NULL COLLATE unicase, conf BLOB);
         CREATE UNIQUE INDEX idx_decks_name ON decks(name);
         CREATE TABLE android_metadata(locale TEXT);
         INSERT INTO android_metadata VALUES('en_US');
         CREATE TABLE contacts(_id INTEGER PRIMARY KEY, display_name TEXT COLLATE LOCALIZED, sort_key TEXT);
         CREATE INDEX contacts_display ON contacts(display_name);
         CREATE INDEX contacts_sort ON contacts(sort_key COLLATE UNICODE);",
    )
    .unwrap();
    let mut rng = kit::Rng::new(11);
    let tx = c.unchecked_transaction().unwrap();
    for i in 0..3000 {
        let word: String = (0..8)
            .map(|_| ['a', 'B', 'c', 'D', 'é', 'Z', 'x', 'Y'][rng.below(8) as usize])
            .collect();
        let word = format!("{word}{i}");
        tx.execute("INSERT INTO tags VALUES(?1, ?2)", (&word, i)).unwrap();
        tx.execute("INSERT INTO decks(name, conf) VALUES(?1, zeroblob(64))", [&word])
            .unwrap();
        tx.execute(
            "INSERT INTO contacts(display_name, sort_key) VALUES(?1, upper(?1))",
            [&word],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    // Without the application's collation, SQLite cannot even count the tags.
    let plain = Connection::open(p).unwrap();
    assert!(plain.query_row("SELECT count(*) FROM tags", [], |_| Ok(())).is_err());
}

fn repo_objects(repo: &str) -> Vec<std::path::PathBuf> {
    files(Path::new(repo))
        .into_iter()
        .filter(|p| !p.to_string_lossy().contains("/snapshots/") && !p.ends_with("config"))
        .collect()
}

#[test]
fn databases_with_application_collations_back_up_restore_verify_and_drill() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, _) = w.setup(&repo, 64 << 10, false);
    for (file, wal) in [("anki.db", false), ("android.db", true)] {
        let db = w.path(file);
        make_app_db(&db, wal);
        let r = w.run(&["backup", &db.display().to_string(), &repo, "--json"]).ok();
        assert!(r.stdout.contains("\"snapshot_id\""), "{}", r.stdout);

        // Restored byte for byte, and read in the application's order by the
        // application (which has its collation).
        let out = w.path(&format!("restored-{file}"));
        let r = w
            .run(&["restore", &repo, &out.display().to_string(), "--name", file, "-i", &key])
            .ok();
        for idx in [
            "idx_decks_name",
            "contacts_display",
            "contacts_sort",
            "sqlite_autoindex_tags_1",
        ] {
            assert!(
                r.stdout.contains(&format!("index {idx} ")) && r.stdout.contains("not order-checked"),
                "{file}: restore names {idx} as not order-checked: {}",
                r.stdout
            );
        }
        let src = app_conn(&db);
        let _ = src.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        drop(src);
        let app = app_conn(&out);
        let ok: String = app.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(ok, "ok", "{file}: the application's own check passes");
        let firsts: Vec<String> = app
            .prepare("SELECT tag FROM tags ORDER BY tag LIMIT 5")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let want: Vec<String> = app_conn(&db)
            .prepare("SELECT tag FROM tags ORDER BY tag LIMIT 5")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(firsts, want);
        if !wal {
            assert_eq!(
                std::fs::read(&out).unwrap(),
                std::fs::read(&db).unwrap(),
                "{file}: byte-identical"
            );
        }

        // verify says which indexes it could not order-check, and passes.
        let v = w
            .run(&["verify", &repo, "--name", file, "-i", &key, "--json"])
            .ok()
            .json();
        let notes = v["snapshots"][0]["not_checked"].as_array().unwrap();
        assert_eq!(notes.len(), 4, "{v}");
        assert!(
            notes.iter().any(|n| n.as_str().unwrap().contains("collation unicase")),
            "{v}"
        );
    }
    let d = w.run(&["drill", &repo, "-i", &key, "--log", &w.s("drill.jsonl")]).ok();
    assert!(d.stdout.contains("not order-checked"), "{}", d.stdout);

    // audit checks the rest of such a database and names what it could not check.
    let v = w.run(&["audit", &w.s("anki.db"), "--json"]).json();
    let codes: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes.iter().filter(|c| **c == "db.app-collation").count(), 4, "{v}");
    assert!(
        !codes.contains(&"db.not-checked") && !codes.contains(&"db.quick-check"),
        "{v}"
    );
}

#[test]
fn a_dump_of_an_application_collation_is_refused_before_anything_is_uploaded() {
    let w = World::new();
    let repo = w.s("repo");
    w.setup(&repo, 64 << 10, false);
    let db = w.path("anki.db");
    make_app_db(&db, false);
    let before = repo_objects(&repo);
    let r = w
        .run(&["backup", &db.display().to_string(), &repo, "--kind", "dump"])
        .fails(7);
    assert!(
        r.stderr.contains("collation") && r.stderr.contains("unicase") && r.stderr.contains("page snapshot"),
        "{}",
        r.stderr
    );
    assert_eq!(repo_objects(&repo), before, "nothing uploaded");
}

/// A source whose table is damaged fails its logical checksum only after its pages
/// were read and packed: the packs that backup uploaded go with it.
#[test]
fn a_backup_that_fails_half_way_leaves_no_packs_behind() {
    let w = World::new();
    let repo = w.s("repo");
    let (_, db) = w.setup(&repo, 6 << 20, false);
    let before = repo_objects(&repo);
    // Damage the first page whose loss breaks a full read of `orders` (a table leaf
    // somewhere in the middle of the file), keeping everything else intact.
    let bytes = std::fs::read(&db).unwrap();
    let ps = u16::from_be_bytes([bytes[16], bytes[17]]) as usize;
    let pages = bytes.len() / ps;
    let mut broke = false;
    for pgno in (pages / 2)..pages {
        let mut b = bytes.clone();
        let off = (pgno - 1) * ps;
        // A leaf table page: corrupt its cell pointers.
        if b[off] != 0x0d {
            continue;
        }
        for x in &mut b[off + 8..off + 64] {
            *x = 0xff;
        }
        std::fs::write(&db, &b).unwrap();
        let c = Connection::open(&db).unwrap();
        let scan = c
            .prepare("SELECT * FROM orders ORDER BY rowid")
            .unwrap()
            .query_map([], |_| Ok(()))
            .unwrap()
            .collect::<Result<Vec<_>, _>>();
        if scan.is_err() {
            broke = true;
            break;
        }
    }
    assert!(broke, "found a table page to damage");
    let r = w.run(&["backup", &db, &repo, "--pack-size", "1", "-v"]);
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("malformed"), "{}", r.stderr);
    assert!(
        r.stderr.contains("removed the"),
        "the uploaded packs were removed: {}",
        r.stderr
    );
    assert_eq!(repo_objects(&repo), before, "nothing left in the repository");
}

/// `backup --integrity-check` on a source that already fails integrity_check (a
/// GeoPackage whose R*Tree the linked SQLite rejects): the backup is taken, warned
/// about and recorded; restore then names the source, not the backup, as damaged.
#[test]
fn a_damaged_source_is_recorded_at_backup_and_restored_only_on_request() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, healthy) = w.setup(&repo, 64 << 10, true);
    let gpkg = kit::copy_corpus_db("gdal_rtree.gpkg", w.dir.path());
    let gpkgs = gpkg.display().to_string();
    let r = w.run(&["backup", &gpkgs, &repo, "--integrity-check", "--json"]).ok();
    assert!(
        r.stderr.contains("fails integrity_check") && r.stderr.contains("RTree"),
        "{}",
        r.stderr
    );
    assert_eq!(r.json()["source_check"]["ok"], false, "{}", r.stdout);
    let damaged_id = r.json()["snapshot_id"].as_str().unwrap().to_string();
    let r = w.run(&["backup", &healthy, &repo, "--integrity-check", "--json"]).ok();
    assert_eq!(r.json()["source_check"]["ok"], true, "{}", r.stdout);
    assert!(!r.stderr.contains("fails integrity_check"), "{}", r.stderr);
    w.run(&["backup", &healthy, &repo, "--integrity-check", "--kind", "dump"])
        .fails(2);

    let snaps = w.run(&["snapshots", &repo, "--json"]).ok().json();
    let recorded: Vec<bool> = snaps["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["source_check"]["ok"].as_bool().unwrap())
        .collect();
    assert_eq!(recorded.iter().filter(|ok| !**ok).count(), 1, "{snaps}");

    let out = w.s("restored.gpkg");
    let r = w
        .run(&["restore", &repo, &out, "--name", "gdal_rtree.gpkg", "-i", &key])
        .fails(15);
    assert!(r.stderr.contains("recorded it too"), "{}", r.stderr);
    assert!(!Path::new(&out).exists());
    let v = w
        .run(&["verify", &repo, "--name", "gdal_rtree.gpkg", "-i", &key, "--json"])
        .fails(15)
        .json();
    assert_eq!(v["snapshots"][0]["code"], "restore.source-damaged", "{v}");
    w.run(&[
        "restore",
        &repo,
        &out,
        "--name",
        "gdal_rtree.gpkg",
        "-i",
        &key,
        "--accept-damaged-source",
        "--snapshot",
        &damaged_id,
    ])
    .ok();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&gpkg).unwrap());
}

/// A SQLCipher database of an application with its own collation (an Android app
/// using SQLCipher and `LOCALIZED`): restore re-encrypts the verified image page by
/// page, so indexes ordered by that collation come back as they were (a dump and a
/// keyed load could not rebuild them).
#[test]
fn an_encrypted_database_with_an_application_collation_restores() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, _) = w.setup(&repo, 64 << 10, false);
    let db = w.path("secure.db");
    let pass = "android keystore secret";
    let keyed = |p: &Path| {
        let c = Connection::open(p).unwrap();
        c.pragma_update(None, "key", pass).unwrap();
        let fold = |a: &str, b: &str| a.to_lowercase().cmp(&b.to_lowercase()).then_with(|| a.cmp(b));
        c.create_collation("LOCALIZED", fold).unwrap();
        c
    };
    {
        let c = keyed(&db);
        c.execute_batch(
            "CREATE TABLE contacts(_id INTEGER PRIMARY KEY, display_name TEXT COLLATE LOCALIZED);
             CREATE INDEX contacts_display ON contacts(display_name);",
        )
        .unwrap();
        let mut rng = kit::Rng::new(5);
        for i in 0..2000 {
            let n: String = (0..6).map(|_| ['a', 'B', 'c', 'D'][rng.below(4) as usize]).collect();
            c.execute("INSERT INTO contacts(display_name) VALUES(?1)", [format!("{n}{i}")])
                .unwrap();
        }
    }
    let kf = w.s("db.key");
    std::fs::write(&kf, pass).unwrap();
    let dbs = db.display().to_string();
    w.run(&["backup", &dbs, &repo, "--db-key-file", &kf]).ok();
    let out = w.path("restored.db");
    let outs = out.display().to_string();
    let r = w
        .run(&[
            "restore",
            &repo,
            &outs,
            "--name",
            "secure.db",
            "-i",
            &key,
            "--db-key-file",
            &kf,
        ])
        .ok();
    assert!(r.stdout.contains("contacts_display"), "{}", r.stdout);
    let names = |p: &Path| -> Vec<String> {
        keyed(p)
            .prepare("SELECT display_name FROM contacts ORDER BY display_name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert_eq!(names(&out), names(&db));
    let ok: String = keyed(&out)
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    assert_ne!(
        std::fs::read(&out).unwrap()[..16],
        std::fs::read(&db).unwrap()[..16],
        "re-encrypted: a salt of its own"
    );
}

/// By default a page backup of a small database checks its source (`auto`): a damaged
/// one is warned about and recorded without asking; `never` skips the check, and a dump
/// snapshot is never checked at backup (its restore loads and checks it).
#[test]
fn small_sources_are_checked_by_default() {
    let w = World::new();
    let repo = w.s("repo");
    w.setup(&repo, 64 << 10, false);
    let gpkg = kit::copy_corpus_db("gdal_rtree.gpkg", w.dir.path());
    let gpkgs = gpkg.display().to_string();
    let r = w.run(&["backup", &gpkgs, &repo, "--json"]).ok();
    assert!(r.stderr.contains("fails integrity_check"), "{}", r.stderr);
    assert_eq!(r.json()["source_check"]["ok"], false, "{}", r.stdout);
    // stderr is a pipe here (cron mail, journald): plain text, no colour codes.
    assert!(!r.stderr.contains('\u{1b}'), "{:?}", r.stderr);
    let r = w
        .run(&["backup", &gpkgs, &repo, "--integrity-check", "never", "--json"])
        .ok();
    assert!(r.json().get("source_check").is_none(), "{}", r.stdout);
    assert!(!r.stderr.contains("fails integrity_check"), "{}", r.stderr);
    let r = w
        .run(&["backup", &gpkgs, &repo, "--kind", "dump", "--name", "g.sql", "--json"])
        .ok();
    assert!(r.json().get("source_check").is_none(), "{}", r.stdout);
}
