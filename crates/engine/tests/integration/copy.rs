//! `copy` between repositories with different keys: killed at every request of the
//! destination and run again, it leaves every copied snapshot restorable and finishes
//! without storing a chunk twice; it survives 20% transient failures; later copies read
//! only what changed; it never reuses what the destination's prune has marked.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use sqlvault_engine::crypt::{Identities, generate_x25519};
use sqlvault_engine::format::Manifest;
use sqlvault_engine::retention::Policy;
use sqlvault_engine::store::Store;
use sqlvault_engine::{
    Access, BackupKind, BackupOptions, CheckOptions, CopyOptions, ErrorKind, ForgetOptions, InitKeys, PruneOptions,
    Repo, RestoreOptions, Session,
};
use sqlvault_testkit::{FlakyStore, flaky_store};

/// A repository over a fault-injecting in-memory store, with its own key: its write
/// handle (this host's write key) and a reader.
struct Side {
    flaky: Arc<FlakyStore>,
    store: Store,
    writer: Repo,
    reader: Repo,
    /// The identity that reads it.
    secret: sqlvault_engine::crypt::secrecy::SecretString,
}

async fn side(session: &Session, name: &str, every: u64) -> Side {
    let (flaky, store) = flaky_store(name, every, 6);
    let (sk, pk) = generate_x25519();
    Repo::init(session, &store, InitKeys::Recipients(vec![pk.parse().unwrap()]))
        .await
        .unwrap();
    let writer = Repo::open_write(session, store.clone()).await.unwrap();
    let reader = Repo::open_read(
        session,
        store.clone(),
        Access::Identities(Identities::from_secret_string(&sk).unwrap()),
    )
    .await
    .unwrap();
    Side {
        flaky,
        store,
        writer,
        reader,
        secret: sk.clone(),
    }
}

/// Every snapshot of `dst` restores (integrity_check and logical checksum) and has the
/// id, name, time and checksum of its source snapshot.
async fn all_restore(dst: &Side, src: &[Manifest], dir: &std::path::Path, what: &str) -> usize {
    let by_id: HashMap<_, _> = src.iter().map(|m| (m.id, m)).collect();
    let snaps = dst.reader.snapshots().await.unwrap();
    for m in &snaps {
        let s = by_id[&m.id];
        assert_eq!(
            (&m.name, m.created_ms, &m.logical_checksum, &m.kind),
            (&s.name, s.created_ms, &s.logical_checksum, &s.kind),
            "{what}"
        );
        let out = dir.join("check.db");
        sqlvault_engine::restore_snapshot(&dst.reader, m, &out, &RestoreOptions::default().with_force(true))
            .await
            .unwrap_or_else(|e| panic!("{what}: snapshot {} does not restore: {}", m.id.short(), e.one_line()));
    }
    snaps.len()
}

/// Chunks listed by more than one indexed, existing pack; packs no index lists.
async fn duplicates_and_orphans(s: &Side) -> (usize, usize) {
    let packs: HashSet<String> = s
        .store
        .list("packs")
        .await
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let mut seen = HashSet::new();
    let mut indexed = HashSet::new();
    let mut dup = 0;
    let (indexes, skipped) = s.reader.load_indexes_checked().await.unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
    for (_, idx) in indexes {
        for sec in idx.packs {
            let name = sec.pack.to_string();
            if !packs.contains(&name) || !indexed.insert(name) {
                continue;
            }
            for e in sec.entries {
                if !seen.insert(e.id) {
                    dup += 1;
                }
            }
        }
    }
    (dup, packs.len() - indexed.len())
}

fn small_packs() -> CopyOptions {
    // Passes of a few pages: every copy here crosses pass boundaries.
    CopyOptions::default().with_pack_target(64 << 10).with_pass_chunks(7)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_resumes_after_crashes_and_sends_only_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let session = Session::new(dir.path().join("home"));
    let src = side(&session, "src", 0).await;
    let dst = side(&session, "dst", 0).await;

    let db = dir.path().join("app.db");
    sqlvault_testkit::generate(
        &db,
        &sqlvault_testkit::GenOptions {
            target_bytes: 1 << 20,
            seed: 11,
            wal: true,
        },
    )
    .unwrap();
    let opts = BackupOptions::default().with_pack_target(64 << 10);
    for seed in 0..3 {
        sqlvault_engine::backup(&src.writer, &db, opts.clone()).await.unwrap();
        sqlvault_testkit::update_random(&db, 0.05, seed).unwrap();
    }
    sqlvault_engine::backup(
        &src.writer,
        &db,
        opts.clone()
            .with_kind(BackupKind::Dump)
            .with_name(Some("app.sql".into())),
    )
    .await
    .unwrap();
    let src_snaps = src.reader.snapshots().await.unwrap();
    assert_eq!(src_snaps.len(), 4);

    // A write key cannot read the source's data.
    let e = sqlvault_engine::copy(&src.writer, &dst.writer, &small_packs())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth, "{}", e.one_line());

    // Kill the copy after every request to the destination in turn; after each, every
    // snapshot that made it restores.
    let mut crashed = 0;
    for budget in 0.. {
        dst.flaky.crash_after(Some(budget));
        let r = sqlvault_engine::copy(&src.reader, &dst.writer, &small_packs()).await;
        dst.flaky.crash_after(None);
        match r {
            Ok(rep) => {
                assert_eq!(rep.copied.len() + rep.already_present.len(), 4, "{rep:?}");
                break;
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Store, "{}", e.one_line());
                crashed += 1;
                all_restore(
                    &dst,
                    &src_snaps,
                    dir.path(),
                    &format!("copy crashed after {budget} requests"),
                )
                .await;
            }
        }
        assert!(budget < 2000, "copy never completed");
    }
    assert!(crashed > 10, "the sweep crashed copy at many points ({crashed})");
    assert_eq!(all_restore(&dst, &src_snaps, dir.path(), "after the copy").await, 4);
    let (dup, orphans) = duplicates_and_orphans(&dst).await;
    assert_eq!(dup, 0, "no chunk is stored twice in indexed packs");
    // A crash between a pack and its index orphans that one pack (prune removes it).
    assert!(orphans <= crashed, "{orphans} orphaned packs after {crashed} crashes");
    let check = sqlvault_engine::check(&dst.reader, CheckOptions::default().with_read_data(true))
        .await
        .unwrap();
    assert!(check.problems.is_empty(), "{:?}", check.problems);

    // Again: nothing to do, and no source pack is read.
    let again = sqlvault_engine::copy(&src.reader, &dst.writer, &small_packs())
        .await
        .unwrap();
    assert_eq!((again.copied.len(), again.already_present.len()), (0, 4), "{again:?}");
    assert_eq!(again.destination_requests.put, 0, "{again:?}");

    // A new snapshot of a slightly changed database: the copy map knows the chunks
    // seen before, so only changed pages are read from the source, and sent.
    sqlvault_testkit::update_random(&db, 0.02, 99).unwrap();
    let newest = sqlvault_engine::backup(&src.writer, &db, opts.clone()).await.unwrap();
    let rep = sqlvault_engine::copy(
        &src.reader,
        &dst.writer,
        &small_packs().with_snapshots(vec![newest.snapshot_id[..10].to_string()]),
    )
    .await
    .unwrap();
    assert_eq!(rep.copied.len(), 1, "{rep:?}");
    let c = &rep.copied[0];
    // Every chunk read was one the destination lacked: nothing was fetched needlessly.
    assert!(c.chunks_read > 0 && c.chunks_read < c.chunks_total, "{c:?}");
    assert_eq!(c.chunks_sent, c.chunks_read, "{c:?}");
    let src_snaps = src.reader.snapshots().await.unwrap();
    assert_eq!(
        all_restore(&dst, &src_snaps, dir.path(), "after the incremental copy").await,
        5
    );

    // Prune in the destination marks the data only forgotten snapshots used (and
    // repacks what is mostly dead); a copy that brings them back sends that data again
    // instead of pointing at packs the next prune deletes.
    sqlvault_engine::forget(
        &dst.writer,
        &ForgetOptions::new(Policy::new().with_last(1)).with_name(Some("app.db".into())),
    )
    .await
    .unwrap();
    let marked = sqlvault_engine::prune(
        &dst.reader,
        &PruneOptions::default()
            .with_grace(Some(Duration::from_secs(3)))
            .with_no_running_backups(true),
    )
    .await
    .unwrap();
    assert!(marked.marked.packs > 0, "{marked:?}");
    let back = sqlvault_engine::copy(&src.reader, &dst.writer, &small_packs())
        .await
        .unwrap();
    assert_eq!((back.copied.len(), back.already_present.len()), (3, 2), "{back:?}");
    assert!(back.copied.iter().map(|c| c.chunks_sent).sum::<u64>() > 0, "{back:?}");
    tokio::time::sleep(Duration::from_millis(3600)).await;
    let gone = sqlvault_engine::prune(
        &dst.reader,
        &PruneOptions::default()
            .with_grace(Some(Duration::ZERO))
            .with_no_running_backups(true),
    )
    .await
    .unwrap();
    assert!(gone.deleted.packs > 0, "{gone:?}");
    assert_eq!(
        all_restore(&dst, &src_snaps, dir.path(), "after pruning the destination").await,
        5
    );

    // 20% of requests to the destination fail transiently: retries carry the copy.
    let noisy = side(&session, "noisy", 5).await;
    let rep = sqlvault_engine::copy(&src.reader, &noisy.writer, &small_packs())
        .await
        .unwrap();
    assert_eq!(rep.copied.len(), 5);
    assert!(rep.destination_requests.retries > 0, "{:?}", rep.destination_requests);
    assert!(noisy.flaky.injected() > 0);
    assert_eq!(
        all_restore(&noisy, &src_snaps, dir.path(), "after a noisy copy").await,
        5
    );

    // Copying into itself is refused.
    let e = sqlvault_engine::copy(&src.reader, &src.writer, &small_packs())
        .await
        .unwrap_err();
    assert_eq!(e.code(), "copy.same-repository");
}

/// A copy in passes fetches each source pack once, however many passes its chunks
/// span (an incremental's pack holds pages from all over the database): the same
/// source GETs as a copy in one pass, and the same restorable result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_in_many_passes_fetches_each_source_pack_once() {
    let dir = tempfile::tempdir().unwrap();
    let session = Session::new(dir.path().join("home"));
    let src = side(&session, "src", 0).await;
    let db = dir.path().join("app.db");
    sqlvault_testkit::generate(
        &db,
        &sqlvault_testkit::GenOptions {
            target_bytes: 1 << 20,
            seed: 12,
            wal: false,
        },
    )
    .unwrap();
    let opts = BackupOptions::default().with_pack_target(64 << 10);
    sqlvault_engine::backup(&src.writer, &db, opts.clone()).await.unwrap();
    sqlvault_testkit::update_random(&db, 0.2, 3).unwrap();
    sqlvault_engine::backup(&src.writer, &db, opts).await.unwrap();
    let src_snaps = src.reader.snapshots().await.unwrap();
    let newest = src_snaps.iter().max_by_key(|m| m.created_ms).unwrap().id.to_string();
    let packs = src.store.list("packs").await.unwrap().len() as u64;

    let mut gets = Vec::new();
    for (name, pass) in [("one", 1 << 20), ("many", 7)] {
        // A session of its own: no copy map learned by the other run.
        let s = Session::new(dir.path().join(format!("home-{name}")));
        let reader = Repo::open_read(
            &s,
            src.store.clone(),
            Access::Identities(Identities::from_secret_string(&src.secret).unwrap()),
        )
        .await
        .unwrap();
        let dst = side(&s, name, 0).await;
        let o = CopyOptions::default()
            .with_pack_target(64 << 10)
            .with_pass_chunks(pass)
            .with_snapshots(vec![newest.clone()]);
        let rep = sqlvault_engine::copy(&reader, &dst.writer, &o).await.unwrap();
        assert_eq!(rep.copied.len(), 1);
        gets.push(rep.source_requests.get);
        assert_eq!(all_restore(&dst, &src_snaps, dir.path(), name).await, 1);
    }
    assert_eq!(gets[0], gets[1], "passes of 7 pages fetched packs again: {gets:?}");
    assert!(gets[1] <= packs + 20, "{gets:?} GETs for {packs} packs");
}
