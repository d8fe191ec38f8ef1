//! Forget and prune through the library: two phases (mark, then delete what is still
//! unreferenced), nothing deleted while backups may be running, junk a bucket writer
//! left never deleted nor trusted, and no deletion at all when a snapshot cannot be read.

use sqlvault_engine::format::layout;
use sqlvault_engine::retention::Policy;
use sqlvault_engine::{CheckOptions, ErrorKind, ForgetOptions, PruneOptions};

use crate::support::{Bench, database, restored_checksum, small_packs};

/// Four snapshots of a database a quarter of whose rows change between them.
async fn history(b: &Bench) {
    let db = b.path("app.db");
    database(&db, 512 << 10, 1, false);
    for seed in 0..4 {
        sqlvault_engine::backup(&b.writer, &db, small_packs()).await.unwrap();
        sqlvault_testkit::update_random(&db, 0.25, seed).unwrap();
    }
}

/// Bytes of the packs (objects with a pack id for a name).
async fn pack_bytes(b: &Bench) -> u64 {
    let list = b.store.list(layout::PACKS).await.unwrap();
    list.iter()
        .filter(|(n, _)| n.parse::<sqlvault_engine::format::ObjectId>().is_ok())
        .map(|(_, s)| s)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_then_prune_marks_then_frees_and_every_kept_snapshot_restores() {
    let b = Bench::new("prune").await;
    history(&b).await;
    let all = b.reader.snapshots().await.unwrap();
    assert_eq!(all.len(), 4);
    let packs0 = b.names(layout::PACKS).await;
    let bytes0 = pack_bytes(&b).await;

    let f = sqlvault_engine::forget(&b.writer, &ForgetOptions::new(Policy::new().with_last(2)))
        .await
        .unwrap();
    assert_eq!((f.kept, f.removed), (2, 2));
    let kept = b.reader.snapshots().await.unwrap();
    assert_eq!(
        kept.iter().map(|m| m.id).collect::<Vec<_>>(),
        all[2..].iter().map(|m| m.id).collect::<Vec<_>>(),
        "the newest two are kept"
    );

    // Junk a bucket writer left: prune neither deletes nor trusts it.
    let stray_pack = format!("{}/not-a-pack", layout::PACKS);
    let stray_snap = format!("{}/{}", layout::SNAPSHOTS, sqlvault_engine::format::ObjectId::random());
    b.store
        .put(&stray_pack, bytes::Bytes::from_static(b"junk"))
        .await
        .unwrap();
    b.store
        .put(&stray_snap, bytes::Bytes::from_static(b"junk"))
        .await
        .unwrap();

    // Backups may be running (the default): the first run marks, the second deletes
    // nothing either (a day's grace has not passed).
    for _ in 0..2 {
        let p = sqlvault_engine::prune(&b.reader, &PruneOptions::default())
            .await
            .unwrap();
        assert_eq!((p.deleted.packs, p.deleted.maps, p.deleted.indexes), (0, 0, 0), "{p:?}");
        assert!(p.marked.packs + p.waiting.packs > 0, "{p:?}");
    }
    let packs = b.names(layout::PACKS).await;
    assert!(packs0.iter().all(|p| packs.contains(p)), "no pack was deleted");

    // None is running: every earlier mark is ripe now.
    let quick = PruneOptions::default().with_no_running_backups(true);
    let p = sqlvault_engine::prune(&b.reader, &quick).await.unwrap();
    assert!(p.deleted.packs > 0, "{p:?}");
    assert!(p.deleted.bytes > 0, "{p:?}");
    // What the deleting run newly marked (repack leftovers) goes on the next one.
    let p = sqlvault_engine::prune(&b.reader, &quick).await.unwrap();
    let settled = sqlvault_engine::prune(&b.reader, &quick).await.unwrap();
    assert_eq!(
        (settled.deleted.packs, settled.marked.packs, settled.marked.maps),
        (0, 0, 0),
        "{p:?} then {settled:?}"
    );
    let packs1 = b.names(layout::PACKS).await;
    let bytes1 = pack_bytes(&b).await;
    assert!(bytes1 < bytes0, "space was freed: {bytes0} → {bytes1}");
    assert!(
        packs0.iter().any(|p| !packs1.contains(p)),
        "packs of the forgotten snapshots are gone"
    );
    assert!(packs1.contains(&"not-a-pack".to_string()), "strays are never deleted");
    assert!(b.store.head(&stray_snap).await.unwrap().is_some());

    // Every kept snapshot restores the content it was taken of.
    for m in &kept {
        assert_eq!(
            hex::encode(restored_checksum(&b, &b.reader, m).await),
            m.logical_checksum
        );
    }
    b.store.delete(&stray_pack).await.unwrap();
    b.store.delete(&stray_snap).await.unwrap();
    let c = sqlvault_engine::check(&b.reader, CheckOptions::default().with_read_data(true))
        .await
        .unwrap();
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    assert_eq!(c.snapshots, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_deletes_nothing_when_a_snapshot_of_the_repository_cannot_be_read() {
    let b = Bench::new("prune-damaged").await;
    history(&b).await;
    let all = b.reader.snapshots().await.unwrap();
    // Damage the payload (not the header) of the oldest manifest: the repository
    // wrote it, so it is damage, not a stranger's junk. Its packs would look
    // unreferenced to a prune that skipped it.
    let key = format!("{}/{}", layout::SNAPSHOTS, all[0].id);
    b.tamper(&key, |v| {
        let last = v.len() - 1;
        v[last] ^= 1;
    })
    .await;
    let objects = |b: &Bench| {
        let store = b.store.clone();
        async move {
            let mut v = Vec::new();
            for d in [layout::PACKS, layout::MAPS, layout::INDEX, layout::SNAPSHOTS] {
                v.extend(
                    store
                        .list(d)
                        .await
                        .unwrap()
                        .into_iter()
                        .map(|(n, _)| format!("{d}/{n}")),
                );
            }
            v
        }
    };
    let before = objects(&b).await;

    // A host with no catalogue of the manifests (it reads the damaged one).
    let s = b.fresh_session("pruner");
    let r = b.reader_in(&s).await;
    let quick = PruneOptions::default().with_no_running_backups(true);
    for _ in 0..2 {
        let e = sqlvault_engine::prune(&r, &quick).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Integrity, "{}", e.one_line());
        assert_eq!(e.code(), "prune.refused");
    }
    assert_eq!(objects(&b).await, before, "nothing was deleted");
    assert!(
        b.store.head(layout::PRUNE_LOCK).await.unwrap().is_none(),
        "the refused prune released its lock"
    );

    // The snapshots that are intact still restore.
    for m in &all[1..] {
        assert_eq!(hex::encode(restored_checksum(&b, &r, m).await), m.logical_checksum);
    }
}
