//! The whole corpus of real databases nobody on the project wrote
//! (`../shared/corpus`, see its SOURCES.md) through sqlvault as a user runs it: every
//! file is copied first, never opened in place.
//!
//! - Plaintext files: a page snapshot restores byte for byte (or, for the file whose
//!   content still lies in its `-wal`, to the same content as the stock `sqlite3` sees);
//!   a source that already fails integrity_check restores only on request, exit 15.
//! - Dumps: `sqlvault dump` loads back through `sqlvault load` and through the stock
//!   `sqlite3 <` to the same logical checksum, and a dump snapshot restores to it.
//! - SQLCipher files: restored in their own format, opened by the stock `sqlcipher`
//!   CLI (SQLCipher 3 files) or the independent Python client (SQLCipher 4), and a
//!   second backup of an unchanged file stores no page again, in rollback-journal
//!   and in WAL mode.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::{Run, World, kit};

fn stock(tool: &str, db: &Path, sql: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(tool)
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool} is required (.ci/run installs it): {e}"));
    child.stdin.take().unwrap().write_all(sql.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "{tool} {}: {}",
        db.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn checksum(db: &Path) -> [u8; 32] {
    sqlvault_sqlite::verify_file(db)
        .unwrap_or_else(|e| panic!("{}: {e}", db.display()))
        .logical_checksum
}

fn plaintext() -> Vec<kit::CorpusDb> {
    let all: Vec<kit::CorpusDb> = kit::corpus().into_iter().filter(|d| !d.encrypted()).collect();
    assert!(all.len() >= 18, "{} plaintext corpus files", all.len());
    all
}

/// A source that fails SQLite's integrity_check (with the SQLite sqlvault links):
/// `gdal_rtree.gpkg`'s R*Tree, which rtreecheck() rejects since SQLite 3.44.
const DAMAGED: &str = "gdal_rtree.gpkg";

fn new_chunks(r: &Run) -> u64 {
    r.json()["chunks_new"]
        .as_u64()
        .unwrap_or_else(|| panic!("chunks_new in {}", r.stdout))
}

#[test]
fn every_plaintext_corpus_database_restores_from_pages_byte_for_byte() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, _) = w.setup(&repo, 16 << 10, false);
    let src_dir = w.path("src");
    std::fs::create_dir(&src_dir).unwrap();
    for d in plaintext() {
        let src = kit::copy_corpus_db(&d.file, &src_dir);
        let has_wal = src_dir.join(format!("{}-wal", d.file)).exists();
        let b = w.run(&["backup", &src.display().to_string(), &repo, "--json"]).ok();
        let id = b.json()["snapshot_id"].as_str().unwrap().to_string();
        let out = w.path(&format!("pages-{}", d.file));
        let outs = out.display().to_string();
        let args = ["restore", &repo, &outs, "--name", &d.file, "-i", &key];
        if d.file == DAMAGED {
            let r = w.run(&args).fails(15);
            assert!(
                r.stderr.contains("intact") && r.stderr.contains("--accept-damaged-source"),
                "{}",
                r.stderr
            );
            assert!(!out.exists(), "nothing installed without the flag");
            // The acceptance names the snapshot: never a blanket flag.
            w.run(&[&args[..], &["--accept-damaged-source"]].concat()).fails(2);
            w.run(&[&args[..], &["--accept-damaged-source", "--snapshot", &id]].concat())
                .ok();
        } else {
            w.run(&args).ok();
        }
        if has_wal {
            // The content lies in the uncheckpointed -wal: the stock sqlite3 (on a
            // copy) must see exactly what the restored file holds.
            let seen = kit::copy_corpus_db(&d.file, &w.path("."));
            assert_eq!(
                stock("sqlite3", &out, ".dump"),
                stock("sqlite3", &seen, ".dump"),
                "{}: content",
                d.file
            );
        } else {
            assert!(
                std::fs::read(&out).unwrap() == std::fs::read(&src).unwrap(),
                "{}: restored byte for byte",
                d.file
            );
        }
    }
}

#[test]
fn every_plaintext_corpus_database_dumps_and_loads_to_the_same_content() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, _) = w.setup(&repo, 16 << 10, false);
    let src_dir = w.path("src");
    std::fs::create_dir(&src_dir).unwrap();
    for d in plaintext() {
        let src = kit::copy_corpus_db(&d.file, &src_dir);
        let srcs = src.display().to_string();
        let sql = w.s(&format!("{}.sql", d.file));
        w.run(&["dump", &srcs, "-o", &sql]).ok();

        // sqlvault load proves the dump's recorded checksum; the stock sqlite3 loads
        // the same file to the same content.
        let ours = w.path(&format!("ours-{}", d.file));
        let ourss = ours.display().to_string();
        if d.file == DAMAGED {
            w.run(&["load", &sql, &ourss]).fails(15);
            assert!(!ours.exists());
            w.run(&["load", &sql, &ourss, "--accept-damaged-source"]).ok();
        } else {
            w.run(&["load", &sql, &ourss]).ok();
        }
        let theirs = w.path(&format!("stock-{}", d.file));
        let sql_text = std::fs::read_to_string(&sql).unwrap();
        stock("sqlite3", &theirs, &sql_text);
        let want = checksum(&ours);
        assert_eq!(checksum(&theirs), want, "{}: stock sqlite3 load", d.file);

        // A dump snapshot restores to that content too.
        w.run(&[
            "backup",
            &srcs,
            &repo,
            "--kind",
            "dump",
            "--name",
            &format!("dump-{}", d.file),
        ])
        .ok();
        let out = w.path(&format!("restored-{}", d.file));
        let outs = out.display().to_string();
        let name = format!("dump-{}", d.file);
        let mut args = vec!["restore", &repo, &outs, "--name", &name, "-i", &key];
        let id;
        if d.file == DAMAGED {
            let r = w.run(&args).fails(15);
            // The hint names the snapshot to accept, ready to paste.
            let at = r.stderr.find("--snapshot ").expect("the hint names the snapshot") + 11;
            id = r.stderr[at..].split(' ').next().unwrap().to_string();
            assert!(
                id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()),
                "{}",
                r.stderr
            );
            args.extend(["--accept-damaged-source", "--snapshot", &id]);
        }
        w.run(&args).ok();
        assert_eq!(checksum(&out), want, "{}: dump snapshot", d.file);
    }
}

fn key_file(w: &World, d: &kit::CorpusDb) -> String {
    let p = w.s(&format!("{}.key", d.file));
    std::fs::write(&p, d.key.as_deref().expect("an encrypted corpus file has a key")).unwrap();
    p
}

/// SQL that keys a connection with a corpus key (a passphrase or `x'…'`).
fn key_pragma(d: &kit::CorpusDb) -> String {
    let k = d.key.as_deref().unwrap();
    if k.starts_with("x'") {
        format!("PRAGMA key = \"{k}\";")
    } else {
        format!("PRAGMA key = '{k}';")
    }
}

fn py(script: &str) -> String {
    let o = Command::new("python3").args(["-c", script]).output().unwrap();
    assert!(
        o.status.success(),
        "python sqlcipher3 (PyPI sqlcipher3-binary; .ci/run installs it): {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Counts every table's rows with an independent SQLCipher client: the Debian
/// `sqlcipher` CLI (SQLCipher 3.4.1) for SQLCipher 3 files, Python's `sqlcipher3`
/// (SQLCipher 4) for SQLCipher 4 files.
fn independent_counts(d: &kit::CorpusDb, db: &Path) -> String {
    let tables = "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name";
    match d.cipher.as_str() {
        "3" | "legacy" => {
            let setup = format!(
                "{}\n{};",
                key_pragma(d),
                d.stock_cli_pragmas.as_deref().expect("the stock CLI opens it")
            );
            let names = stock("sqlcipher", db, &format!("{setup}\n{tables};"));
            let mut out = String::new();
            for n in names.lines().filter(|l| !l.is_empty() && *l != "ok") {
                out += &stock(
                    "sqlcipher",
                    db,
                    &format!("{setup}\nSELECT '{n}', count(*) FROM \"{n}\";"),
                );
            }
            out
        }
        "4" => py(&format!(
            "import sqlcipher3\nc = sqlcipher3.connect({:?})\nc.execute({:?})\n\
             for (n,) in c.execute({tables:?}).fetchall():\n    print(n, c.execute('SELECT count(*) FROM \"%s\"' % n).fetchone()[0])",
            db.display().to_string(),
            key_pragma(d)
        )),
        other => panic!("no independent client for cipher {other}"),
    }
}

#[test]
fn sqlcipher_corpus_files_restore_in_their_own_format_and_deduplicate() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, _) = w.setup(&repo, 16 << 10, false);
    let src_dir = w.path("src");
    std::fs::create_dir(&src_dir).unwrap();
    let ciphered: Vec<kit::CorpusDb> = kit::corpus().into_iter().filter(|d| d.encrypted()).collect();
    assert_eq!(ciphered.len(), 5, "{ciphered:?}");
    for d in &ciphered {
        let src = kit::copy_corpus_db(&d.file, &src_dir);
        let srcs = src.display().to_string();
        let kf = key_file(&w, d);
        let want = independent_counts(d, &src);
        assert!(want.lines().count() >= 1, "{}: {want}", d.file);

        // Rollback-journal mode (as the corpus has them): a second backup of the
        // unchanged file stores no page again.
        let first = w.run(&["backup", &srcs, &repo, "--db-key-file", &kf, "--json"]).ok();
        assert!(new_chunks(&first) > 0);
        let again = w.run(&["backup", &srcs, &repo, "--db-key-file", &kf, "--json"]).ok();
        assert_eq!(
            new_chunks(&again),
            0,
            "{}: rollback mode dedup: {}",
            d.file,
            again.stdout
        );

        let out = w.path(&format!("restored-{}", d.file));
        let outs = out.display().to_string();
        w.run(&[
            "restore",
            &repo,
            &outs,
            "--name",
            &d.file,
            "-i",
            &key,
            "--db-key-file",
            &kf,
        ])
        .ok();
        assert_eq!(
            independent_counts(d, &out),
            want,
            "{}: the independent client reads it",
            d.file
        );

        // A dump snapshot of it restores in its own format too.
        let name = format!("dump-{}", d.file);
        w.run(&[
            "backup",
            &srcs,
            &repo,
            "--db-key-file",
            &kf,
            "--kind",
            "dump",
            "--name",
            &name,
        ])
        .ok();
        let out = w.path(&format!("dump-restored-{}", d.file));
        let outs = out.display().to_string();
        w.run(&[
            "restore",
            &repo,
            &outs,
            "--name",
            &name,
            "-i",
            &key,
            "--db-key-file",
            &kf,
        ])
        .ok();
        assert_eq!(independent_counts(d, &out), want, "{}: dump snapshot", d.file);

        // WAL mode: the same file switched to WAL, backed up twice.
        let wal = w.path(&format!("wal-{}", d.file));
        std::fs::copy(&src, &wal).unwrap();
        let walk = {
            let c = rusqlite::Connection::open(&wal).unwrap();
            c.execute_batch(&format!("{}\n{};", key_pragma(d), d.sqlcipher4_pragmas))
                .unwrap();
            let m: String = c.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).unwrap();
            assert_eq!(m, "wal");
            c
        };
        let wals = wal.display().to_string();
        let name = format!("wal-{}", d.file);
        let first = w
            .run(&["backup", &wals, &repo, "--db-key-file", &kf, "--name", &name, "--json"])
            .ok();
        // Only page 1 (its journal-mode bytes) differs from the rollback-mode snapshot.
        assert!(new_chunks(&first) <= 1, "{}", first.stdout);
        let again = w
            .run(&["backup", &wals, &repo, "--db-key-file", &kf, "--name", &name, "--json"])
            .ok();
        assert_eq!(new_chunks(&again), 0, "{}: WAL mode dedup: {}", d.file, again.stdout);
        drop(walk);
    }
}
