//! Copy and prune in a cancelled session. `Cancel`'s contract (session.rs): cancelling
//! makes the next check point of every running operation fail with
//! `ErrorKind::Cancelled`, and nothing is committed after it: a cancelled copy commits
//! no snapshot, a cancelled prune deletes nothing.

use std::sync::Arc;

use sqlvault_engine::format::layout;
use sqlvault_engine::retention::Policy;
use sqlvault_engine::{Cancel, CopyOptions, ErrorKind, ForgetOptions, InitKeys, PruneOptions, Repo};

use crate::support::{Bench, Recorder, database, small_packs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_a_cancelled_session_commits_nothing() {
    let cancel = Cancel::default();
    let b = Bench::with("cancel-copy", Arc::new(Recorder::default()), cancel.clone()).await;
    let db = b.path("app.db");
    database(&db, 256 << 10, 1, false);
    sqlvault_engine::backup(&b.writer, &db, small_packs()).await.unwrap();
    let (_f, other) = sqlvault_testkit::flaky_store("cancel-copy-dst", 0, 3);
    let (_, pk) = sqlvault_engine::crypt::generate_x25519();
    Repo::init(&b.session, &other, InitKeys::Recipients(vec![pk.parse().unwrap()]))
        .await
        .unwrap();
    let dst = Repo::open_write(&b.session, other.clone()).await.unwrap();

    cancel.cancel();
    let r = sqlvault_engine::copy(&b.reader, &dst, &CopyOptions::default()).await;
    let snaps = other.list(layout::SNAPSHOTS).await.unwrap();
    let packs = other.list(layout::PACKS).await.unwrap();
    match r {
        Ok(rep) => panic!(
            "a copy in a cancelled session ran to the end: {} snapshots copied, {} snapshots and {} packs in the destination",
            rep.copied.len(),
            snaps.len(),
            packs.len()
        ),
        Err(e) => assert_eq!(e.kind(), ErrorKind::Cancelled, "{}", e.one_line()),
    }
    assert!(snaps.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_in_a_cancelled_session_deletes_nothing() {
    let cancel = Cancel::default();
    let b = Bench::with("cancel-prune", Arc::new(Recorder::default()), cancel.clone()).await;
    let db = b.path("app.db");
    database(&db, 256 << 10, 1, false);
    for seed in 0..3 {
        sqlvault_engine::backup(&b.writer, &db, small_packs()).await.unwrap();
        sqlvault_testkit::update_random(&db, 0.3, seed).unwrap();
    }
    sqlvault_engine::forget(&b.writer, &ForgetOptions::new(Policy::new().with_last(1)))
        .await
        .unwrap();
    let quick = PruneOptions::default().with_no_running_backups(true);
    sqlvault_engine::prune(&b.reader, &quick).await.unwrap();
    let before = b.names(layout::PACKS).await;
    cancel.cancel();
    let r = sqlvault_engine::prune(&b.reader, &quick).await;
    let after = b.names(layout::PACKS).await;
    match r {
        Ok(rep) => panic!(
            "a prune in a cancelled session ran to the end: deleted {:?}, packs {} -> {}",
            rep.deleted,
            before.len(),
            after.len()
        ),
        Err(e) => assert_eq!(e.kind(), ErrorKind::Cancelled, "{}", e.one_line()),
    }
}
