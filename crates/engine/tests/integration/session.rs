//! What a caller controls through the session: cancellation (before and in the middle
//! of an operation: nothing committed, nothing half-installed, nothing learned) and the
//! progress sink (phases and byte totals that add up).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use sqlvault_engine::format::layout;
use sqlvault_engine::{Cancel, ErrorKind, Repo, RestoreOptions, Session};

use crate::support::{Bench, Recorder, checksum, database, files_in, restored_checksum, small_dump, small_packs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_cancelled_before_it_starts_commits_nothing() {
    let cancel = Cancel::default();
    let b = Bench::with("cancel-early", Arc::new(Recorder::default()), cancel.clone()).await;
    let db = b.path("app.db");
    database(&db, 256 << 10, 1, false);
    sqlvault_engine::backup(&b.writer, &db, small_packs()).await.unwrap();
    sqlvault_testkit::update_random(&db, 0.1, 1).unwrap();
    let snaps = b.reader.snapshots().await.unwrap();
    let packs = b.names(layout::PACKS).await;

    b.session.cancel().cancel();
    assert!(cancel.is_cancelled(), "the session holds the caller's flag");
    let e = sqlvault_engine::backup(&b.writer, &db, small_packs())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cancelled, "{}", e.one_line());
    assert_eq!(e.code(), "cancelled");
    let after = b.reader.snapshots().await.unwrap();
    assert_eq!(
        after.iter().map(|m| m.id).collect::<Vec<_>>(),
        snaps.iter().map(|m| m.id).collect::<Vec<_>>()
    );
    assert_eq!(b.names(layout::PACKS).await, packs, "nothing uploaded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_cancelled_midway_leaves_no_snapshot_no_packs_and_no_cached_chunks() {
    let cancel = Cancel::default();
    // Cancelled once a fifth of the database has been read.
    let rec = Arc::new(Recorder::cancelling(cancel.clone(), "reading", 200 << 10));
    let b = Bench::with("cancel-mid", rec.clone(), cancel.clone()).await;
    let db = b.path("app.db");
    database(&db, 1 << 20, 2, false);

    let before = b.session.requests();
    let e = sqlvault_engine::backup(&b.writer, &db, small_packs())
        .await
        .unwrap_err();
    let d = b.session.requests().since(before);
    assert_eq!(e.kind(), ErrorKind::Cancelled, "{}", e.one_line());
    // What was read before the cancel was packed and uploaded, then deleted again.
    assert!(d.put > 0 && d.delete == d.put, "{d:?}");
    let read = rec.advanced("reading");
    assert!(
        (200 << 10..std::fs::metadata(&db).unwrap().len()).contains(&read),
        "stopped soon after the cancel: {read}"
    );
    assert!(b.reader.snapshots().await.unwrap().is_empty());
    assert!(
        b.names(layout::PACKS).await.is_empty(),
        "the packs of a cancelled backup are taken back"
    );
    assert!(b.names(layout::INDEX).await.is_empty());

    // The same host, in a session that is not cancelled: its chunk cache learned
    // nothing from the cancelled run, so everything is uploaded and restores.
    let s2 = Session::new(b.session.state_dir());
    let w2 = Repo::open_write(&s2, b.store.clone()).await.unwrap();
    let r = sqlvault_engine::backup(&w2, &db, small_packs()).await.unwrap();
    assert_eq!(r.chunks_new, r.chunks_total, "{r:?}");
    let reader = b.reader_in(&s2).await;
    let m = reader.find_snapshot(None, None).await.unwrap();
    assert_eq!(restored_checksum(&b, &reader, &m).await, checksum(&db));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_cancelled_before_or_midway_leaves_no_file_and_keeps_the_old_one() {
    let cancel = Cancel::default();
    let rec = Arc::new(Recorder::cancelling(cancel.clone(), "restoring", 128 << 10));
    let b = Bench::with("cancel-restore", rec.clone(), cancel.clone()).await;
    let db = b.path("app.db");
    database(&db, 1 << 20, 3, false);
    sqlvault_engine::backup(&b.writer, &db, small_packs()).await.unwrap();
    let out_dir = b.path("out");
    std::fs::create_dir(&out_dir).unwrap();

    // Midway, over an existing destination: the old file stays as it was.
    let dest = out_dir.join("app.db");
    database(&dest, 64 << 10, 99, false);
    let old = checksum(&dest);
    let e = sqlvault_engine::restore(&b.reader, &dest, RestoreOptions::default().with_force(true))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cancelled, "{}", e.one_line());
    assert!(rec.advanced("restoring") >= 128 << 10, "cancelled after some progress");
    assert_eq!(checksum(&dest), old, "the destination was not touched");
    assert_eq!(files_in(&out_dir), vec!["app.db".to_string()], "no temporary file left");

    // Already cancelled: nothing appears.
    let fresh = out_dir.join("new.db");
    let e = sqlvault_engine::restore(&b.reader, &fresh, RestoreOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cancelled, "{}", e.one_line());
    assert!(!fresh.exists());
    assert_eq!(files_in(&out_dir), vec!["app.db".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_of_backup_and_restore_adds_up_to_the_database() {
    let rec = Arc::new(Recorder::default());
    let b = Bench::with("progress", rec.clone(), Cancel::default()).await;
    let db = b.path("app.db");
    database(&db, 1 << 20, 4, false);
    let size = std::fs::metadata(&db).unwrap().len();

    let r = sqlvault_engine::backup(&b.writer, &db, small_packs()).await.unwrap();
    let pages = r.page_size as u64 * r.page_count as u64;
    assert_eq!(pages, size, "a checkpointed rollback-journal database is its pages");
    assert_eq!(rec.totals("reading"), vec![Some(size)]);
    assert_eq!(rec.advanced("reading"), pages);
    assert!(rec.finished.load(Ordering::SeqCst) >= 1);

    rec.reset();
    let out = b.path("out.db");
    let rep = sqlvault_engine::restore(&b.reader, &out, RestoreOptions::default())
        .await
        .unwrap();
    let out_size = std::fs::metadata(&out).unwrap().len();
    assert_eq!((rep.bytes, out_size), (size, size));
    assert_eq!(rec.totals("restoring"), vec![Some(out_size)]);
    assert_eq!(rec.advanced("restoring"), out_size);
    assert!(rec.finished.load(Ordering::SeqCst) >= 1);

    // A dump reports the SQL it produced.
    rec.reset();
    let d = sqlvault_engine::backup(&b.writer, &db, small_dump()).await.unwrap();
    assert_eq!(rec.totals("dumping"), vec![None]);
    assert_eq!(rec.advanced("dumping"), d.bytes_read, "{d:?}");
    assert!(d.bytes_read > 0);

    // Rewrap reports the ciphertext it re-encrypted, of a total known up front.
    rec.reset();
    let rw = sqlvault_engine::rewrap(&b.reader).await.unwrap();
    assert!(rw.rewrapped > 0 && rw.rewrapped == rw.objects, "{rw:?}");
    let total = rec.totals("rewrapping");
    assert_eq!(total.len(), 1);
    assert_eq!(Some(rec.advanced("rewrapping")), total[0]);
    assert!(total[0].unwrap() > size / 4, "every object counted: {total:?}");
}
