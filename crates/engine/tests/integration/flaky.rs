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
