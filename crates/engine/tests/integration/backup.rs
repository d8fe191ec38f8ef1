//! Backup through the library: deduplication against the repository, incremental
//! snapshots, request accounting in the session, and the local chunk cache checked
//! against what the store really holds.

use sqlvault_engine::format::layout;

use crate::support::{Bench, checksum, database, restored_checksum, small_dump, small_packs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_database_uploads_no_pack_and_a_changed_one_only_its_new_pages() {
    let b = Bench::new("dedup").await;
    let db = b.path("app.db");
    database(&db, 1 << 20, 1, false);

    let first = sqlvault_engine::backup(&b.writer, &db, small_packs()).await.unwrap();
    assert_eq!(first.chunks_new, first.chunks_total, "{first:?}");
    assert!(first.packs_new > 1, "{first:?}");
    assert_eq!(first.map_kind, "full");
    assert_eq!(first.bytes_read, first.page_size as u64 * first.page_count as u64);
    let packs = b.names(layout::PACKS).await.len();
    assert_eq!(packs as u64, first.packs_new);

    // Nothing changed: no pack, no index; the page map (a delta against the parent)
    // and the manifest are the only uploads.
    let again = sqlvault_engine::backup(&b.writer, &db, small_packs()).await.unwrap();
    assert_eq!((again.chunks_new, again.packs_new), (0, 0), "{again:?}");
    assert_eq!(again.chunks_total, first.chunks_total);
    assert!(again.requests.put <= 2, "{:?}", again.requests);
    assert_eq!(again.parent.as_deref(), Some(first.snapshot_id.as_str()));
    assert_eq!(again.map_kind, "delta");
    assert_eq!(b.names(layout::PACKS).await.len(), packs, "no pack was uploaded");

    // Half a percent of the rows change: far fewer chunks than the first backup.
    sqlvault_testkit::update_random(&db, 0.005, 7).unwrap();
    let incr = sqlvault_engine::backup(&b.writer, &db, small_packs()).await.unwrap();
    assert!(incr.chunks_new > 0, "{incr:?}");
    assert!(
        incr.chunks_new * 4 < first.chunks_new,
        "an incremental backup uploads far fewer chunks: {} vs {}",
        incr.chunks_new,
        first.chunks_new
    );
    assert_eq!(incr.parent.as_deref(), Some(again.snapshot_id.as_str()));

    // Each snapshot restores the state it was taken of.
    let snaps = b.reader.snapshots().await.unwrap();
    assert_eq!(snaps.len(), 3);
    assert_eq!(restored_checksum(&b, &b.reader, &snaps[2]).await, checksum(&db));
    let old = restored_checksum(&b, &b.reader, &snaps[0]).await;
    assert_eq!(old, restored_checksum(&b, &b.reader, &snaps[1]).await);
    assert_ne!(old, checksum(&db), "the update changed the content");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_counts_every_request_of_every_store_opened_through_it() {
    let a = Bench::new("count-a").await;
    let db = a.path("app.db");
    database(&db, 256 << 10, 2, true);
    // A second repository opened through the same session.
    let (_f, other) = sqlvault_testkit::flaky_store("count-b", 0, 3);
    let (_, pk) = sqlvault_engine::crypt::generate_x25519();
    sqlvault_engine::Repo::init(
        &a.session,
        &other,
        sqlvault_engine::InitKeys::Recipients(vec![pk.parse().unwrap()]),
    )
    .await
    .unwrap();
    let w2 = sqlvault_engine::Repo::open_write(&a.session, other.clone())
        .await
        .unwrap();

    assert_eq!(a.session.requests(), a.store.stats() + other.stats());
    let before = a.session.requests();
    let r1 = sqlvault_engine::backup(&a.writer, &db, small_packs()).await.unwrap();
    let mid = a.session.requests();
    assert_eq!(mid.since(before), r1.requests, "the report counts what the session saw");
    let r2 = sqlvault_engine::backup(&w2, &db, small_packs()).await.unwrap();
    assert_eq!(a.session.requests().since(mid), r2.requests);
    assert!(r1.requests.put > 0 && r2.requests.put > 0);
    // The stores' own counters and the session's agree, each store counted once
    // although several repository handles (and clones) share it.
    assert_eq!(a.session.requests(), a.store.stats() + other.stats());

    // A store the session did not open is not counted until it is registered.
    let (_f, loose) = sqlvault_testkit::flaky_store("loose", 0, 3);
    let seen = a.session.requests();
    loose.put("x", bytes::Bytes::from_static(b"1")).await.unwrap();
    assert_eq!(a.session.requests(), seen);
    a.session.register(&loose);
    a.session.register(&loose.clone());
    assert_eq!(a.session.requests().put, seen.put + 1, "registered once, counted once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_cached_packs_are_checked_with_one_list_and_a_deleted_one_is_uploaded_again() {
    let b = Bench::new("cache-list").await;
    // Two databases in one repository: the host's chunk cache holds both's packs.
    let (db, side) = (b.path("app.db"), b.path("side.db"));
    database(&db, 3 << 19, 3, false);
    database(&side, 3 << 19, 30, false);
    let first = sqlvault_engine::backup(&b.writer, &db, small_packs()).await.unwrap();
    let packs_of_db = b.names(layout::PACKS).await;
    let other = sqlvault_engine::backup(&b.writer, &side, small_packs()).await.unwrap();
    assert!(
        first.packs_new + other.packs_new > 12,
        "the test needs more than 12 packs: {first:?} {other:?}"
    );

    // Someone deletes a pack behind the host's back: its chunk cache is now wrong.
    b.store
        .delete(&format!("{}/{}", layout::PACKS, packs_of_db[0]))
        .await
        .unwrap();

    let second = sqlvault_engine::backup(&b.writer, &db, small_packs()).await.unwrap();
    assert_eq!(
        second.requests.list, 1,
        "one LIST checks the cache: {:?}",
        second.requests
    );
    assert!(second.chunks_new > 0, "the lost chunks are uploaded again: {second:?}");
    assert!(second.chunks_new < second.chunks_total, "{second:?}");
    let m = b.reader.find_snapshot(Some(&second.snapshot_id), None).await.unwrap();
    assert_eq!(restored_checksum(&b, &b.reader, &m).await, checksum(&db));

    // The first snapshot's chunks were in the deleted pack: they are found again in
    // the pack the second backup uploaded (restore goes past index entries of packs
    // that are gone).
    let m0 = b.reader.find_snapshot(Some(&first.snapshot_id), None).await.unwrap();
    assert_eq!(restored_checksum(&b, &b.reader, &m0).await, checksum(&db));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn few_cached_packs_are_checked_without_a_list() {
    let b = Bench::new("cache-head").await;
    let db = b.path("app.db");
    database(&db, 256 << 10, 4, false);
    let first = sqlvault_engine::backup(&b.writer, &db, small_packs()).await.unwrap();
    assert!((1..=12).contains(&first.packs_new), "{first:?}");
    let packs = b.names(layout::PACKS).await;
    b.store
        .delete(&format!("{}/{}", layout::PACKS, packs[0]))
        .await
        .unwrap();

    let second = sqlvault_engine::backup(&b.writer, &db, small_packs()).await.unwrap();
    assert_eq!(second.requests.list, 0, "{:?}", second.requests);
    assert!(
        second.requests.head >= first.packs_new,
        "a HEAD per cached pack: {:?}",
        second.requests
    );
    assert!(second.chunks_new > 0, "{second:?}");
    let m = b.reader.find_snapshot(Some(&second.snapshot_id), None).await.unwrap();
    assert_eq!(restored_checksum(&b, &b.reader, &m).await, checksum(&db));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_and_dump_snapshots_of_a_wal_database_restore_its_current_content() {
    let b = Bench::new("wal").await;
    let db = b.path("app.db");
    database(&db, 512 << 10, 5, true);
    // Changes still in the WAL (not checkpointed into the main file).
    sqlvault_testkit::update_random(&db, 0.05, 9).unwrap();
    let want = checksum(&db);
    let pages = sqlvault_engine::backup(&b.writer, &db, small_packs()).await.unwrap();
    let dump = sqlvault_engine::backup(&b.writer, &db, small_dump()).await.unwrap();
    assert_eq!(dump.kind, "dump");
    for id in [&pages.snapshot_id, &dump.snapshot_id] {
        let m = b.reader.find_snapshot(Some(id), None).await.unwrap();
        assert_eq!(m.logical_checksum, hex::encode(want));
        assert_eq!(restored_checksum(&b, &b.reader, &m).await, want, "snapshot {id}");
    }
}

/// A large database's page map is written in parts (a full map as a `Full` part and
/// deltas that extend it; a delta cut anywhere). Forced here with parts of 7 pages:
/// every snapshot of a chain that grows, changes and shrinks restores exactly, and the
/// chain's length counts snapshots, not parts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_maps_in_parts_restore_every_state_of_a_growing_and_shrinking_database() {
    let b = Bench::new("map-parts").await;
    let db = b.path("app.db");
    database(&db, 512 << 10, 3, true);
    let mut opts = small_packs();
    opts.map_part_pages = 7;
    opts.max_chain = 2;

    let mut sums = Vec::new();
    let mut reports = Vec::new();
    let mut step = |r: sqlvault_engine::BackupReport, db: &std::path::Path| {
        sums.push(checksum(db));
        reports.push(r);
    };
    let r = sqlvault_engine::backup(&b.writer, &db, opts.clone()).await.unwrap();
    assert_eq!(r.map_kind, "full");
    step(r, &db);
    // Grows: new pages past the parent's end, plus changed ones.
    sqlvault_testkit::append_rows(&db, 0.3, 11).unwrap();
    sqlvault_testkit::update_random(&db, 0.02, 12).unwrap();
    let r = sqlvault_engine::backup(&b.writer, &db, opts.clone()).await.unwrap();
    // A delta, though the parent's full map was many parts: depth counts snapshots.
    assert_eq!(r.map_kind, "delta");
    step(r, &db);
    // Shrinks: rows deleted, then VACUUM rewrites and truncates the file.
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch("DELETE FROM orders WHERE rowid % 3 = 0; VACUUM;")
            .unwrap();
    }
    // The chain is 2 snapshots deep (max_chain): a full map again.
    let r = sqlvault_engine::backup(&b.writer, &db, opts.clone()).await.unwrap();
    assert_eq!(r.map_kind, "full", "{r:?}");
    step(r, &db);
    sqlvault_testkit::update_random(&db, 0.01, 13).unwrap();
    let r = sqlvault_engine::backup(&b.writer, &db, opts.clone()).await.unwrap();
    assert_eq!(r.map_kind, "delta", "{r:?}");
    step(r, &db);

    let snaps = b.reader.snapshots().await.unwrap();
    assert_eq!(snaps.len(), 4);
    for (i, rep) in reports.iter().enumerate() {
        let m = snaps.iter().find(|m| m.id.to_string() == rep.snapshot_id).unwrap();
        let own = if i == 0 || i == 2 { m.maps.len() } else { 0 };
        if own > 0 {
            assert_eq!(
                own,
                (rep.page_count as usize).div_ceil(7),
                "a full map of {} pages in parts of 7",
                rep.page_count
            );
        }
        assert_eq!(
            restored_checksum(&b, &b.reader, m).await,
            sums[i],
            "snapshot {i} restores its state"
        );
    }
    assert!(snaps.iter().any(|m| m.maps.len() > 7), "the chain holds many parts");
}
