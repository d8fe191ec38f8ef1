//! Lifecycle under faults: prune killed at every request, backups that must not reuse
//! what prune has marked, append-only credentials. Runs against the real engine over a
//! fault-injecting in-memory store.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sqlvault_engine::crypt::{Identities, Recipient, generate_x25519};
use sqlvault_engine::retention::Policy;
use sqlvault_engine::store::Store;
use sqlvault_engine::{
    Access, BackupOptions, CheckOptions, ErrorKind, ForgetOptions, InitKeys, PruneOptions, Repo, RestoreOptions,
    Session,
};
use sqlvault_testkit::{FlakyStore, flaky_store};

struct Bench {
    dir: tempfile::TempDir,
    flaky: Arc<FlakyStore>,
    store: Store,
    reader: Repo,
    writer: Repo,
    session: Session,
}

async fn bench() -> Bench {
    let dir = tempfile::tempdir().unwrap();
    let session = Session::new(dir.path().join("home"));
    let (flaky, store) = flaky_store("lifecycle", 0, 3);
    let (sk, pk) = generate_x25519();
    let rcpt: Recipient = pk.parse().unwrap();
    Repo::init(&session, &store, InitKeys::Recipients(vec![rcpt]))
        .await
        .unwrap();
    let writer = Repo::open_write(&session, store.clone()).await.unwrap();
    let reader = Repo::open_read(
        &session,
        store.clone(),
        Access::Identities(Identities::from_secret_string(&sk).unwrap()),
    )
    .await
    .unwrap();
    Bench {
        dir,
        flaky,
        store,
        reader,
        writer,
        session,
    }
}

/// Every snapshot restores, passes integrity_check and matches its logical checksum.
async fn all_restore(b: &Bench, what: &str) -> usize {
    let snaps = b.reader.snapshots().await.unwrap();
    for m in &snaps {
        let out = b.dir.path().join("check.db");
        let _ = std::fs::remove_file(&out);
        sqlvault_engine::restore_snapshot(&b.reader, m, &out, &RestoreOptions::default().with_force(true))
            .await
            .unwrap_or_else(|e| panic!("{what}: snapshot {} does not restore: {}", m.id.short(), e.one_line()));
    }
    snaps.len()
}

fn opts() -> BackupOptions {
    BackupOptions::default().with_pack_target(64 << 10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_and_backups_keep_every_snapshot_restorable_under_crashes() {
    let b = bench().await;
    let db = b.dir.path().join("app.db");
    sqlvault_testkit::generate(
        &db,
        &sqlvault_testkit::GenOptions {
            target_bytes: 1 << 20,
            seed: 5,
            wal: false,
        },
    )
    .unwrap();
    let original = b.dir.path().join("original.db");
    std::fs::copy(&db, &original).unwrap();

    // Append-only credentials: backups need no delete.
    b.flaky.deny_deletes(true);
    for seed in 0..4 {
        sqlvault_engine::backup(&b.writer, &db, opts()).await.unwrap();
        sqlvault_testkit::update_random(&db, 0.05, seed).unwrap();
    }
    let e = sqlvault_engine::forget(&b.writer, &ForgetOptions::new(Policy::new().with_last(1)))
        .await
        .unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::Store,
        "forget needs delete permission: {}",
        e.one_line()
    );
    b.flaky.deny_deletes(false);
    assert_eq!(all_restore(&b, "before forget").await, 4);

    // Keep the newest; everything else becomes garbage.
    let f = sqlvault_engine::forget(&b.writer, &ForgetOptions::new(Policy::new().with_last(1)))
        .await
        .unwrap();
    assert_eq!((f.kept, f.removed), (1, 3));

    // First run marks only: the grace period has not passed, nothing is deleted.
    let two = PruneOptions::default()
        .with_grace(Some(Duration::from_secs(2)))
        .with_no_running_backups(true)
        .with_repack_below(0.99);
    let first = sqlvault_engine::prune(&b.reader, &two).await.unwrap();
    assert_eq!(first.deleted.packs + first.deleted.maps + first.deleted.indexes, 0);
    assert!(first.marked.packs + first.marked.maps > 0, "{first:?}");
    assert!(first.repacked > 0, "the first full pack is mostly dead: {first:?}");
    let marked_packs = first.marked.packs;

    // The backup host's cache knows the marked packs' chunks. Bring back the original
    // content: its old pages exist only in marked packs, so the backup must upload them
    // again rather than point at packs the next prune deletes.
    std::fs::copy(&original, &db).unwrap();
    let revived = sqlvault_engine::backup(&b.writer, &db, opts()).await.unwrap();
    assert!(revived.chunks_new > 0, "pages only in marked packs are uploaded again");
    assert_eq!(all_restore(&b, "after marking").await, 2);
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // Second run deletes what is still unreferenced; crash it after every request in
    // turn, each crash followed by a full restore of every snapshot.
    let zero = PruneOptions::default()
        .with_grace(Some(Duration::ZERO))
        .with_repack_below(0.99);
    let packs_before = b.store.list("packs").await.unwrap().len();
    let mut crashed = 0;
    for budget in 0.. {
        b.flaky.crash_after(Some(budget));
        let r = sqlvault_engine::prune(&b.reader, &zero).await;
        b.flaky.crash_after(None);
        match r {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Store, "{}", e.one_line());
                crashed += 1;
                // A killed prune leaves its lock; this process is alive, so take it over
                // by hand, as an operator would after 30 minutes.
                b.store.delete("prune/lock").await.unwrap();
                all_restore(&b, &format!("prune crashed after {budget} requests")).await;
            }
        }
        assert!(budget < 2000, "prune never completed");
    }
    assert!(crashed > 5, "the sweep crashed prune at many points ({crashed})");
    let packs_after = b.store.list("packs").await.unwrap().len();
    assert!(
        packs_after < packs_before,
        "ripe marks were deleted: {packs_before} → {packs_after}"
    );
    // Marks made by the crashed runs keep the old grace (it was lowered while backups
    // that read it might run); once it has passed, two runs settle everything.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for _ in 0..2 {
        sqlvault_engine::prune(&b.reader, &zero).await.unwrap();
    }
    let last = sqlvault_engine::prune(&b.reader, &zero).await.unwrap();
    assert_eq!(last.deleted.packs + last.marked.packs, 0, "{last:?}");
    assert!(marked_packs > 0);
    assert_eq!(all_restore(&b, "after pruning").await, 2);
    let check = sqlvault_engine::check(&b.reader, CheckOptions::default().with_read_data(true))
        .await
        .unwrap();
    assert!(check.problems.is_empty(), "{:?}", check.problems);
    // Only live data is left: every pack holds a chunk some snapshot references.
    assert!(check.packs < 4 * 20, "{check:?}");

    // The grace recorded is now zero: a backup can never commit within it, and it
    // takes back the packs it uploaded (no index names them yet).
    sqlvault_testkit::update_random(&db, 0.2, 99).unwrap();
    std::fs::copy(&db, &original).unwrap();
    let packs_before = b.store.list("packs").await.unwrap().len();
    let e = sqlvault_engine::backup(&b.writer, &db, opts()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{}", e.one_line());
    assert_eq!(e.code(), "backup.outlived-grace");
    assert_eq!(
        b.store.list("packs").await.unwrap().len(),
        packs_before,
        "no packs left behind"
    );

    // A prune of a live process that lost its store right after taking the lock leaves
    // it behind: another prune refuses while it is fresh.
    b.flaky.crash_after(Some(1));
    let e = sqlvault_engine::prune(&b.reader, &zero).await.unwrap_err();
    b.flaky.crash_after(None);
    assert_eq!(e.kind(), ErrorKind::Store, "{}", e.one_line());
    let e = sqlvault_engine::prune(&b.reader, &zero).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{}", e.one_line());
    assert_eq!(e.code(), "prune.locked");
    assert_eq!(checksum(&db), checksum(&original));

    // Several destinations from one read: one with 20% transient failures succeeds
    // through retries, one whose store dies mid-backup fails alone, and the database
    // is not read again for either.
    let (_f1, s1) = flaky_store("dest-5", 5, 6);
    let (f2, s2) = flaky_store("dest-0", 0, 6);
    let (_, pk) = generate_x25519();
    for s in [&s1, &s2] {
        Repo::init(&b.session, s, InitKeys::Recipients(vec![pk.parse().unwrap()]))
            .await
            .unwrap();
    }
    let (w1, w2) = (
        Repo::open_write(&b.session, s1.clone()).await.unwrap(),
        Repo::open_write(&b.session, s2.clone()).await.unwrap(),
    );
    // The prune state GET and the first pack PUT get through; the second pack fails.
    f2.crash_after(Some(2));
    let all = sqlvault_engine::backup_to_all(&[w1.clone(), w2.clone()], &db, opts())
        .await
        .unwrap();
    f2.crash_after(None);
    let ok = all[0].as_ref().unwrap();
    assert!(ok.requests.retries > 0, "{:?}", ok.requests);
    let e = all[1].as_ref().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Store, "{}", e.one_line());
    assert!(e.one_line().contains("flaky://dest-0"), "{}", e.one_line());
    assert_eq!(w1.snapshots().await.unwrap().len(), 1);
    assert_eq!(
        w2.snapshots().await.unwrap().len(),
        0,
        "nothing committed where it failed"
    );
}

fn checksum(p: &Path) -> [u8; 32] {
    sqlvault_sqlite::verify_file(p).unwrap().logical_checksum
}
