//! Restore through the library: the right snapshot, the exact content, and nothing
//! installed when the repository's data is damaged or the destination is not free.

use std::sync::Arc;

use sqlvault_engine::format::layout;
use sqlvault_engine::{Cancel, ErrorKind, RestoreOptions};

use crate::support::{Bench, Recorder, checksum, database, files_in, small_packs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_picks_the_asked_snapshot_and_never_guesses_between_databases() {
    let b = Bench::new("pick").await;
    let (one, two) = (b.path("one.db"), b.path("two.db"));
    database(&one, 256 << 10, 1, false);
    database(&two, 256 << 10, 2, true);
    let old_one = checksum(&one);
    let first = sqlvault_engine::backup(&b.writer, &one, small_packs()).await.unwrap();
    sqlvault_testkit::update_random(&one, 0.1, 3).unwrap();
    sqlvault_engine::backup(&b.writer, &one, small_packs()).await.unwrap();
    sqlvault_engine::backup(&b.writer, &two, small_packs()).await.unwrap();
    let out_dir = b.path("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("r.db");

    // Two databases: "the newest snapshot" would be a guess.
    let e = sqlvault_engine::restore(&b.reader, &out, RestoreOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Usage, "{}", e.one_line());
    assert_eq!(e.code(), "snapshot.name-required");
    assert!(!out.exists());

    for (name, want) in [("one.db", checksum(&one)), ("two.db", checksum(&two))] {
        let rep = sqlvault_engine::restore(
            &b.reader,
            &out,
            RestoreOptions::default().with_name(Some(name.into())).with_force(true),
        )
        .await
        .unwrap();
        assert_eq!(rep.name, name);
        assert_eq!(checksum(&out), want, "{name}");
    }

    // An older snapshot by id prefix.
    let rep = sqlvault_engine::restore(
        &b.reader,
        &out,
        RestoreOptions::default()
            .with_snapshot(Some(first.snapshot_id[..8].to_string()))
            .with_force(true),
    )
    .await
    .unwrap();
    assert_eq!(rep.snapshot_id, first.snapshot_id);
    assert_eq!(checksum(&out), old_one);
    assert_eq!(files_in(&out_dir), vec!["r.db".to_string()]);

    // A write key cannot restore.
    let e = sqlvault_engine::restore(&b.writer, &out_dir.join("w.db"), RestoreOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth, "{}", e.one_line());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_or_a_missing_pack_fails_restore_with_integrity_and_installs_nothing() {
    let b = Bench::new("damage").await;
    let db = b.path("app.db");
    database(&db, 512 << 10, 4, false);
    sqlvault_engine::backup(&b.writer, &db, small_packs()).await.unwrap();
    let packs = b.names(layout::PACKS).await;
    assert!(packs.len() >= 2, "{packs:?}");
    let out_dir = b.path("out");
    std::fs::create_dir(&out_dir).unwrap();
    let dest = out_dir.join("app.db");

    // A bucket writer flips one byte in the middle of a pack.
    let key = format!("{}/{}", layout::PACKS, packs[0]);
    b.tamper(&key, |v| {
        let mid = v.len() / 2;
        v[mid] ^= 0x40;
    })
    .await;
    let e = sqlvault_engine::restore(&b.reader, &dest, RestoreOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Integrity, "{}", e.one_line());
    assert!(files_in(&out_dir).is_empty(), "{:?}", files_in(&out_dir));

    // Over an existing destination with force: it stays as it was.
    std::fs::copy(&db, &dest).unwrap();
    sqlvault_testkit::update_random(&dest, 0.1, 5).unwrap();
    let before = std::fs::read(&dest).unwrap();
    let e = sqlvault_engine::restore(&b.reader, &dest, RestoreOptions::default().with_force(true))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Integrity, "{}", e.one_line());
    assert_eq!(std::fs::read(&dest).unwrap(), before);
    assert_eq!(files_in(&out_dir), vec!["app.db".to_string()]);

    // The pack is gone altogether.
    b.store.delete(&key).await.unwrap();
    let fresh = out_dir.join("fresh.db");
    let e = sqlvault_engine::restore(&b.reader, &fresh, RestoreOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Integrity, "{}", e.one_line());
    assert!(!fresh.exists());
    assert_eq!(files_in(&out_dir), vec!["app.db".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_an_existing_destination_and_stale_side_files_without_force() {
    let b = Bench::new("dest").await;
    let db = b.path("app.db");
    database(&db, 256 << 10, 6, false);
    sqlvault_engine::backup(&b.writer, &db, small_packs()).await.unwrap();
    let want = checksum(&db);
    let out_dir = b.path("out");
    std::fs::create_dir(&out_dir).unwrap();

    // An existing file is not replaced without force.
    let dest = out_dir.join("taken.db");
    std::fs::write(&dest, b"precious").unwrap();
    let e = sqlvault_engine::restore(&b.reader, &dest, RestoreOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Exists, "{}", e.one_line());
    assert_eq!(e.code(), "restore.destination-exists");
    assert_eq!(std::fs::read(&dest).unwrap(), b"precious");

    // A stale WAL beside a new destination would be applied by SQLite to the restored
    // database on its first open: refused, and with force removed, never replayed.
    let dest = out_dir.join("new.db");
    let wal = out_dir.join("new.db-wal");
    std::fs::write(&wal, vec![0x37; 4096]).unwrap();
    let e = sqlvault_engine::restore(&b.reader, &dest, RestoreOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Exists, "{}", e.one_line());
    assert_eq!(e.code(), "restore.stale-side-files");
    assert!(!dest.exists() && wal.exists());
    sqlvault_engine::restore(&b.reader, &dest, RestoreOptions::default().with_force(true))
        .await
        .unwrap();
    assert!(!wal.exists(), "the stale WAL was removed");
    assert_eq!(checksum(&dest), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_never_writes_through_a_symlink_planted_at_the_destination() {
    let b = Bench::new("symlink").await;
    let db = b.path("app.db");
    database(&db, 128 << 10, 7, false);
    sqlvault_engine::backup(&b.writer, &db, small_packs()).await.unwrap();
    let out_dir = b.path("out");
    std::fs::create_dir(&out_dir).unwrap();
    let precious = b.path("precious.db");
    database(&precious, 64 << 10, 8, false);
    let precious_bytes = std::fs::read(&precious).unwrap();

    // A link at the destination is refused, with force too: what it points to is
    // never written, and the link stays.
    let dest = out_dir.join("app.db");
    std::os::unix::fs::symlink(&precious, &dest).unwrap();
    for force in [false, true] {
        let e = sqlvault_engine::restore(&b.reader, &dest, RestoreOptions::default().with_force(force))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Exists, "force {force}: {}", e.one_line());
        assert!(std::fs::symlink_metadata(&dest).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(&precious).unwrap(), precious_bytes);
    }

    // A dangling link is not a free destination either, and is not followed.
    let dangling = out_dir.join("dangling.db");
    std::os::unix::fs::symlink(b.path("nowhere.db"), &dangling).unwrap();
    for force in [false, true] {
        let e = sqlvault_engine::restore(&b.reader, &dangling, RestoreOptions::default().with_force(force))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Exists, "force {force}: {}", e.one_line());
        assert!(!b.path("nowhere.db").exists(), "the link was not followed");
    }
    let mut left = files_in(&out_dir);
    left.sort();
    assert_eq!(left, vec!["app.db".to_string(), "dangling.db".to_string()]);
}

/// Adds rows whose blobs repeat (each blob several times, in overflow pages of the
/// same bytes), so that many pages of the database are the same chunk.
fn add_duplicate_pages(path: &std::path::Path) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch("CREATE TABLE IF NOT EXISTS dup(k INTEGER PRIMARY KEY, v BLOB)")
        .unwrap();
    for i in 0..60 {
        let fill = (i % 3) as u8 + 1;
        c.execute("INSERT INTO dup(v) VALUES (?1)", [vec![fill; 9 * 4096]])
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_in_many_passes_is_the_restore_in_one_byte_for_byte() {
    let rec = Arc::new(Recorder::default());
    let b = Bench::with("passes", rec.clone(), Cancel::default()).await;
    let db = b.path("app.db");
    database(&db, 1 << 20, 11, true);
    add_duplicate_pages(&db);
    sqlvault_engine::backup(&b.writer, &db, small_packs()).await.unwrap();
    // A delta chain: the newest snapshot's pages come from three maps.
    for seed in [12, 13] {
        sqlvault_testkit::update_random(&db, 0.05, seed).unwrap();
        add_duplicate_pages(&db);
        sqlvault_engine::backup(&b.writer, &db, small_packs()).await.unwrap();
    }
    let want = checksum(&db);
    let out_dir = b.path("out");
    std::fs::create_dir(&out_dir).unwrap();

    let one = out_dir.join("one.db");
    let rep = sqlvault_engine::restore(&b.reader, &one, RestoreOptions::default())
        .await
        .unwrap();
    // Requests of a one-pass restore once the manifests are in the local catalog.
    let before = b.session.requests();
    sqlvault_engine::restore(&b.reader, &one, RestoreOptions::default().with_force(true))
        .await
        .unwrap();
    let one_pass = b.session.requests().since(before);
    let pages = rep.bytes / 4096;
    assert!(pages > 300, "{pages} pages");
    assert_eq!(checksum(&one), want);
    let image = std::fs::read(&one).unwrap();
    {
        // Duplicates, so that a pass holds chunks that fill several of its pages.
        let mut distinct: Vec<&[u8]> = image.chunks(4096).collect();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() + 100 < image.len() / 4096, "{} distinct", distinct.len());
    }

    // Passes of 1, 7 and 64 pages, and one of exactly the database: the same bytes,
    // progress announced once over the whole file and advanced to it.
    for per in [1, 7, 64, pages as usize] {
        rec.reset();
        let dest = out_dir.join(format!("p{per}.db"));
        let before = b.session.requests();
        let rep = sqlvault_engine::restore(&b.reader, &dest, RestoreOptions::default().with_pass_pages(per))
            .await
            .unwrap_or_else(|e| panic!("{per} pages a pass: {}", e.one_line()));
        let d = b.session.requests().since(before);
        assert!(std::fs::read(&dest).unwrap() == image, "{per} pages a pass");
        assert_eq!(rec.totals("restoring"), vec![Some(rep.bytes)], "{per}");
        assert_eq!(rec.advanced("restoring"), rep.bytes, "{per}");
        // Each pass lists and reads the indexes again; one pass costs what it did.
        let passes = pages.div_ceil(per as u64);
        if passes == 1 {
            assert_eq!((d.get, d.list), (one_pass.get, one_pass.list));
        } else {
            assert!(d.list >= one_pass.list + passes - 1, "{per}: {d:?} vs {one_pass:?}");
        }
    }

    // verify in passes too.
    let reports = sqlvault_engine::verify(
        &b.reader,
        b.reader.snapshots().await.unwrap(),
        &RestoreOptions::default().with_pass_pages(5),
    )
    .await
    .unwrap();
    assert_eq!(reports.len(), 3);
    assert!(reports.iter().all(|r| r.ok), "{reports:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_pack_fails_a_restore_in_passes_and_installs_nothing() {
    let b = Bench::new("passes-damage").await;
    let db = b.path("app.db");
    database(&db, 512 << 10, 14, false);
    sqlvault_engine::backup(&b.writer, &db, small_packs()).await.unwrap();
    let packs = b.names(layout::PACKS).await;
    let key = format!("{}/{}", layout::PACKS, packs[packs.len() / 2]);
    b.tamper(&key, |v| {
        let mid = v.len() / 2;
        v[mid] ^= 0x40;
    })
    .await;
    let out_dir = b.path("out");
    std::fs::create_dir(&out_dir).unwrap();
    let e = sqlvault_engine::restore(
        &b.reader,
        &out_dir.join("app.db"),
        RestoreOptions::default().with_pass_pages(16),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Integrity, "{}", e.one_line());
    assert!(files_in(&out_dir).is_empty(), "{:?}", files_in(&out_dir));
}
