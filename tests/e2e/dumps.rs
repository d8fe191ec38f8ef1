//! SQL dumps as a user meets them: `sqlvault dump`, `sqlvault load`, the stock shell,
//! and dump snapshots in a repository.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::{World, assert_no_leftovers, content, files, kit, mode};

#[test]
fn dump_and_load_round_trip_through_the_cli_and_the_stock_shell() {
    let w = World::new();
    let repo = w.s("repo");
    let (_key, db) = w.setup(&repo, 2 << 20, true);
    let sql = w.s("dump.sql");
    let r = w.run(&["dump", &db, "-o", &sql, "--json"]).ok();
    let j = r.json();
    assert!(j["rows"].as_u64().unwrap() > 1000, "{j}");
    assert_eq!(mode(Path::new(&sql)), 0o600);
    // The same dump on stdout, byte for byte.
    let streamed = w.run(&["dump", &db]).ok();
    assert_eq!(streamed.stdout.as_bytes(), std::fs::read(&sql).unwrap());
    assert!(streamed.stdout.contains(&format!(
        "-- sqlvault logical checksum {}",
        j["logical_checksum"].as_str().unwrap()
    )));

    let loaded = w.s("loaded.db");
    let r = w.run(&["load", &sql, &loaded, "--json"]).ok();
    assert_eq!(r.json()["checksum_verified"], true);
    assert_eq!(r.json()["logical_checksum"], j["logical_checksum"]);
    assert_eq!(content(Path::new(&loaded)), content(Path::new(&db)));
    assert_eq!(mode(Path::new(&loaded)), 0o600);

    // The stock shell reads the same file.
    let stock = w.s("stock.db");
    let mut child = Command::new("sqlite3")
        .arg(&stock)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("sqlite3 is installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&std::fs::read(&sql).unwrap())
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(content(Path::new(&stock)), content(Path::new(&db)));
    // …and sqlvault proves it equal to the source.
    let again = w.s("again.sql");
    let j2 = w.run(&["dump", &stock, "-o", &again, "--json"]).ok().json();
    assert_eq!(j2["logical_checksum"], j["logical_checksum"]);

    // Refusals: existing outputs, bad inputs, each with its exit code and one line.
    w.run(&["dump", &db, "-o", &sql]).fails(8);
    w.run(&["dump", &db, "-o", &sql, "--force"]).ok();
    w.run(&["load", &sql, &loaded]).fails(8);
    w.run(&["load", &sql, &loaded, "--force"]).ok();
    w.run(&["dump", &w.s("missing.db")]).fails(4);
    std::fs::write(w.path("junk.db"), b"this is not a database at all, sorry").unwrap();
    w.run(&["dump", &w.s("junk.db")]).fails(7);
    w.run(&["load", &w.s("missing.sql"), &w.s("x.db")]).fails(4);
    w.run(&["load", &sql, &w.s("no/such/dir/x.db")]).fails(4);
    let bytes = std::fs::read(&sql).unwrap();
    std::fs::write(w.path("cut.sql"), &bytes[..bytes.len() * 2 / 3]).unwrap();
    let r = w.run(&["load", &w.s("cut.sql"), &w.s("cut.db")]).fails(6);
    assert!(r.stderr.contains("cut.sql"), "names the dump: {}", r.stderr);
    assert!(!w.path("cut.db").exists());
    assert_no_leftovers(w.dir.path(), "failed load");
}

#[test]
fn dump_snapshots_back_up_incrementally_and_restore_verify_and_check() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 4 << 20, true);
    let first = w.run(&["backup", &db, &repo, "--kind", "dump", "--json"]).ok().json();
    assert_eq!(first["kind"], "dump");
    assert_eq!(first["map_kind"], "full");
    let before = content(Path::new(&db));
    kit::update_random(Path::new(&db), 0.01, 5).unwrap();
    let second = w.run(&["backup", &db, &repo, "--kind", "dump", "--json"]).ok().json();
    assert_eq!(second["map_kind"], "delta", "{second}");
    let (a, b) = (
        first["bytes_new"].as_u64().unwrap(),
        second["bytes_new"].as_u64().unwrap(),
    );
    // 1% of one table's rows changed: content-defined chunks keep the rest.
    assert!(b * 100 <= a * 20, "second dump stored {b} of the first's {a} bytes");
    // A physical snapshot shares the repository.
    w.run(&["backup", &db, &repo]).ok();
    let snaps = w.run(&["snapshots", &repo, "--json"]).ok().json()["snapshots"].clone();
    let kinds: Vec<&str> = snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["dump", "dump", "pages"]);

    let id1 = first["snapshot_id"].as_str().unwrap();
    let out1 = w.s("first.db");
    w.run(&["restore", &repo, &out1, "-i", &key, "--snapshot", id1]).ok();
    assert_eq!(content(Path::new(&out1)), before);
    let out2 = w.s("second.db");
    let id2 = second["snapshot_id"].as_str().unwrap();
    w.run(&["restore", &repo, &out2, "-i", &key, "--snapshot", id2]).ok();
    assert_eq!(content(Path::new(&out2)), content(Path::new(&db)));
    assert_eq!(mode(Path::new(&out2)), 0o600);
    w.run(&["restore", &repo, &out2, "-i", &key, "--snapshot", id2])
        .fails(8);
    let v = w.run(&["verify", &repo, "-i", &key, "--all", "--json"]).ok().json();
    assert_eq!(v["ok"], true, "{v}");
    w.run(&["check", &repo, "-i", &key, "--read-data"]).ok();
    // Restore needs the identity; the backup host cannot read a dump either.
    w.run(&["restore", &repo, &w.s("nokey.db"), "--snapshot", id2])
        .fails(16);
    assert_no_leftovers(w.dir.path(), "dump restores");
}

#[test]
fn a_damaged_dump_snapshot_fails_restore_without_leftovers() {
    for damage in ["maps", "packs"] {
        let w = World::new();
        let repo = w.s("repo");
        let (key, db) = w.setup(&repo, 1 << 20, false);
        w.run(&["backup", &db, &repo, "--kind", "dump"]).ok();
        for o in files(&w.path(&format!("repo/{damage}"))) {
            let mut b = std::fs::read(&o).unwrap();
            let i = b.len() * 3 / 5;
            b[i] ^= 0x40;
            std::fs::write(&o, b).unwrap();
        }
        let dest = w.s("out.db");
        w.run(&["restore", &repo, &dest, "-i", &key]).fails(6);
        assert!(!Path::new(&dest).exists(), "{damage}");
        w.run(&["verify", &repo, "-i", &key]).fails(6);
        w.run(&["check", &repo, "-i", &key, "--read-data"]).fails(6);
        assert_no_leftovers(w.dir.path(), damage);
    }
}
