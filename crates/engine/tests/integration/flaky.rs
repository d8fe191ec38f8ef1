//! Engine integration tests against a fault-injecting store.

use sqlvault_engine::crypt::{Identities, Recipient, generate_x25519};
use sqlvault_engine::{Access, BackupOptions, CheckOptions, ErrorKind, InitKeys, Repo, RestoreOptions, Session};
use sqlvault_testkit::flaky_store;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_and_permanent_ones_end_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let session = Session::new(dir.path().join("home"));
    let db = dir.path().join("app.db");
    sqlvault_testkit::generate(
        &db,
        &sqlvault_testkit::GenOptions {
            target_bytes: 3 << 20,
            seed: 11,
            wal: true,
        },
    )
    .unwrap();

    // Every 5th request fails: 20% transient failures.
    let (flaky, store) = flaky_store("test", 5, 6);
    let (sk, pk) = generate_x25519();
    let rcpt: Recipient = pk.parse().unwrap();
    Repo::init(&session, &store, InitKeys::Recipients(vec![rcpt]))
        .await
        .unwrap();
    let w = Repo::open_write(&session, store.clone()).await.unwrap();
    let opts = BackupOptions::default().with_pack_target(256 << 10);
    let first = sqlvault_engine::backup(&w, &db, opts.clone()).await.unwrap();
    sqlvault_testkit::update_random(&db, 0.01, 1).unwrap();
    let second = sqlvault_engine::backup(&w, &db, opts.clone()).await.unwrap();
    assert!(
        first.requests.retries + second.requests.retries > 0,
        "failures were injected and retried"
    );
    assert!(flaky.injected() > 3);

    let r = Repo::open_read(
        &session,
        store.clone(),
        Access::Identities(Identities::from_secret_string(&sk).unwrap()),
    )
    .await
    .unwrap();
    let out = dir.path().join("out.db");
    sqlvault_engine::restore(&r, &out, RestoreOptions::default())
        .await
        .unwrap();
    assert_eq!(logical_checksum(&out), logical_checksum(&db));

    // A permanent failure ends the backup with a store error and no snapshot.
    flaky.set_permanent(true);
    sqlvault_testkit::update_random(&db, 0.01, 2).unwrap();
    let e = sqlvault_engine::backup(&w, &db, opts).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Store, "{}", e.one_line());
    assert!(e.one_line().contains("flaky://test"), "{}", e.one_line());
    flaky.set_permanent(false);
    // The repository is still valid and holds exactly the two committed snapshots.
    let snaps = r.snapshots().await.unwrap();
    assert_eq!(snaps.len(), 2);
    let report = sqlvault_engine::check(&r, CheckOptions::default().with_read_data(true))
        .await
        .unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

fn logical_checksum(p: &std::path::Path) -> [u8; 32] {
    sqlvault_sqlite::verify_file(p).unwrap().logical_checksum
}

/// Continuous replication through a store failing one request in five: every failure is
/// retried (or the segment shipped again), no chain breaks, and the newest state is the
/// writer's last commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_rides_out_one_failed_request_in_five() {
    let dir = tempfile::tempdir().unwrap();
    let session = Session::new(dir.path().join("home"));
    let db = dir.path().join("app.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE t(n INTEGER PRIMARY KEY, v BLOB); INSERT INTO t VALUES(0, x'00');",
    )
    .unwrap();
    let (flaky, store) = flaky_store("repl", 5, 8);
    let (sk, pk) = generate_x25519();
    let rcpt: Recipient = pk.parse().unwrap();
    Repo::init(&session, &store, InitKeys::Recipients(vec![rcpt]))
        .await
        .unwrap();
    let w = Repo::open_write(&session, store.clone()).await.unwrap();
    let stop = sqlvault_engine::Cancel::default();
    let opts = sqlvault_engine::ReplicateOptions::default()
        .with_interval(std::time::Duration::from_millis(100))
        .with_stop(stop.clone());
    // The application: 200 commits over about two seconds, then the replicator stops.
    let writer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        for n in 1..=200i64 {
            c.execute("INSERT INTO t VALUES(?1, randomblob(500))", [n]).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    });
    let stopper = async {
        tokio::task::spawn_blocking(move || writer.join().unwrap())
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        stop.cancel();
    };
    let (report, ()) = tokio::join!(sqlvault_engine::replicate(std::slice::from_ref(&w), &db, opts), stopper);
    let report = report.unwrap();
    assert!(report.breaks.is_empty(), "{report:?}");
    assert!(report.destinations[0].segments >= 5, "{report:?}");
    assert!(flaky.injected() > 5, "failures were injected");

    let r = Repo::open_read(
        &session,
        store,
        Access::Identities(Identities::from_secret_string(&sk).unwrap()),
    )
    .await
    .unwrap();
    let plan = sqlvault_engine::plan_point(&r, None, sqlvault_engine::PointSpec::At(i64::MAX / 2))
        .await
        .unwrap();
    assert!(plan.segments >= 1);
    let out = dir.path().join("out.db");
    sqlvault_engine::restore_point(&r, &plan, &out, RestoreOptions::default())
        .await
        .unwrap();
    let o = rusqlite::Connection::open(&out).unwrap();
    let max: i64 = o.query_row("SELECT max(n) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(max, 200);
}
