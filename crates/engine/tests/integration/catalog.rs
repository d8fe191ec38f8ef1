//! Listing snapshots: the local catalog saves a GET per known manifest, a prefix reads
//! only what it names, and nothing a bucket writer puts under `snapshots/` (junk, a
//! real manifest replayed under another name, an object sealed to the public
//! recipients, an enormous object) becomes a snapshot or hides the real ones.

use sqlvault_engine::crypt::Recipient;
use sqlvault_engine::format::{ObjectId, layout};
use sqlvault_engine::{ErrorKind, Repo};

use crate::support::{Bench, database, restored_checksum, small_packs};

async fn three_snapshots(b: &Bench) -> Vec<String> {
    let db = b.path("app.db");
    database(&db, 128 << 10, 1, false);
    let mut ids = Vec::new();
    for seed in 0..3 {
        ids.push(
            sqlvault_engine::backup(&b.writer, &db, small_packs())
                .await
                .unwrap()
                .snapshot_id,
        );
        sqlvault_testkit::update_random(&db, 0.05, seed).unwrap();
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_again_reads_no_manifest_already_seen() {
    let b = Bench::new("catalog").await;
    let ids = three_snapshots(&b).await;

    let before = b.session.requests();
    let first = b.reader.snapshots().await.unwrap();
    let d = b.session.requests().since(before);
    assert_eq!(first.len(), 3);
    assert_eq!((d.list, d.get), (1, 3), "{d:?}");

    // Another handle in the same session (same state directory): one LIST, no GET.
    let again = b.reader_in(&b.session).await;
    let before = b.session.requests();
    let listed = again.snapshots().await.unwrap();
    let d = b.session.requests().since(before);
    assert_eq!((d.list, d.get), (1, 0), "{d:?}");
    assert_eq!(
        listed.iter().map(|m| m.id.to_string()).collect::<Vec<_>>(),
        ids,
        "oldest first"
    );

    // A new snapshot costs one GET; a forgotten one disappears from the listing.
    let db = b.path("app.db");
    let newest = sqlvault_engine::backup(&b.writer, &db, small_packs()).await.unwrap();
    b.store
        .delete(&format!("{}/{}", layout::SNAPSHOTS, ids[0]))
        .await
        .unwrap();
    let before = b.session.requests();
    let listed = again.snapshots().await.unwrap();
    let d = b.session.requests().since(before);
    assert_eq!((d.list, d.get), (1, 1), "{d:?}");
    let got: Vec<String> = listed.iter().map(|m| m.id.to_string()).collect();
    assert_eq!(got, vec![ids[1].clone(), ids[2].clone(), newest.snapshot_id]);

    // A catalogued copy that was damaged locally is not trusted: fetched again.
    let catalog = std::fs::read_dir(b.session.state_dir())
        .unwrap()
        .flatten()
        .flat_map(|e| walk(&e.path()))
        .find(|p| p.ends_with(&ids[1]) && p.to_string_lossy().contains("manifests"))
        .expect("the manifest is catalogued");
    let mut bytes = std::fs::read(&catalog).unwrap();
    let i = bytes.iter().position(|&c| c == b':').unwrap();
    bytes[i + 1] ^= 1;
    std::fs::write(&catalog, bytes).unwrap();
    let before = b.session.requests();
    let listed = again.snapshots().await.unwrap();
    let d = b.session.requests().since(before);
    assert_eq!((d.list, d.get), (1, 1), "{d:?}");
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0].id.to_string(), ids[1]);
}

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    if p.is_dir() {
        std::fs::read_dir(p)
            .unwrap()
            .flatten()
            .flat_map(|e| walk(&e.path()))
            .collect()
    } else {
        vec![p.to_path_buf()]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_by_prefix_reads_only_the_manifest_it_names() {
    let b = Bench::new("prefix").await;
    let ids = three_snapshots(&b).await;
    // A host that has never listed the repository.
    let s = b.fresh_session("other-home");
    let r = b.reader_in(&s).await;
    let before = s.requests();
    let m = r.find_snapshot(Some(&ids[1][..8]), None).await.unwrap();
    let d = s.requests().since(before);
    assert_eq!(m.id.to_string(), ids[1]);
    assert_eq!((d.list, d.get), (1, 1), "{d:?}");

    // Upper case is the same prefix; an unknown one is not found.
    let m = r.find_snapshot(Some(&ids[2][..10].to_uppercase()), None).await.unwrap();
    assert_eq!(m.id.to_string(), ids[2]);
    let unknown = if ids.iter().any(|i| i.starts_with("ffff")) {
        "eeee"
    } else {
        "ffff"
    };
    let e = r.find_snapshot(Some(unknown), None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{}", e.one_line());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_a_bucket_writer_puts_under_snapshots_are_skipped() {
    let b = Bench::new("junk").await;
    let ids = three_snapshots(&b).await;
    let real = b.store.get(&format!("{}/{}", layout::SNAPSHOTS, ids[2])).await.unwrap();

    // Junk under a snapshot name; junk under a name that is no id; a real manifest
    // replayed under a new id; a manifest-like object sealed to the repository's
    // public recipient (all a bucket writer knows); an object far too large.
    let put = |name: String, bytes: Vec<u8>| {
        let store = b.store.clone();
        async move {
            store
                .put(&format!("{}/{name}", layout::SNAPSHOTS), bytes::Bytes::from(bytes))
                .await
                .unwrap()
        }
    };
    let junk_id = ObjectId::random().to_string();
    let replay_id = ObjectId::random().to_string();
    let forged_id = ObjectId::random().to_string();
    let huge_id = ObjectId::random().to_string();
    put(junk_id.clone(), b"not a manifest".to_vec()).await;
    put("not-an-id".into(), b"{}".to_vec()).await;
    put(replay_id.clone(), real.to_vec()).await;
    let rcpt: Recipient = b.public.parse().unwrap();
    let forged = sqlvault_engine::crypt::encrypt_to_vec(
        [&rcpt],
        format!(
            "{{\"version\":1,\"id\":\"{forged_id}\",\"name\":\"app.db\"}}\n{}\n",
            "0".repeat(64)
        )
        .as_bytes(),
    )
    .unwrap();
    put(forged_id.clone(), forged).await;
    put(huge_id.clone(), vec![0u8; 17 << 20]).await;

    // A host that has never listed the repository reads every small object with a
    // snapshot name once, and the huge one never.
    let s = b.fresh_session("other-home");
    let r = b.reader_in(&s).await;
    let before = s.requests();
    let (snaps, skipped) = r.snapshots_checked().await.unwrap();
    let d = s.requests().since(before);
    assert_eq!((d.list, d.get), (1, 3 + 3), "{d:?}");
    assert_eq!(
        snaps.iter().map(|m| m.id.to_string()).collect::<Vec<_>>(),
        ids,
        "exactly the real snapshots"
    );
    let mut keys: Vec<&str> = skipped.iter().map(|s| s.key.as_str()).collect();
    keys.sort();
    let mut want: Vec<String> = [&junk_id, &replay_id, &forged_id, &huge_id]
        .iter()
        .map(|n| format!("snapshots/{n}"))
        .chain(["snapshots/not-an-id".to_string()])
        .collect();
    want.sort();
    assert_eq!(keys, want, "{skipped:?}");
    assert!(skipped.iter().all(|s| !s.code.is_empty() && !s.message.is_empty()));

    // The newest real snapshot is still found, and restores.
    let m = r.find_snapshot(None, None).await.unwrap();
    assert_eq!(m.id.to_string(), ids[2]);
    assert_eq!(hex::encode(restored_checksum(&b, &r, &m).await), m.logical_checksum);
    // Asked for by id, the replayed manifest is an integrity failure, not a snapshot.
    let e = r.find_snapshot(Some(&replay_id), None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Integrity, "{}", e.one_line());
    let e = r.find_snapshot(Some(&forged_id), None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Integrity, "{}", e.one_line());

    // The write key's view is the same.
    let w = Repo::open_write(&b.session, b.store.clone()).await.unwrap();
    assert_eq!(w.snapshots().await.unwrap().len(), 3);
}
