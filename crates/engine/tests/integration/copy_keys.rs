//! Copy into a repository with other keys: the copy is the destination's own (its
//! identity reads it, the source's cannot), restores the same content under the same
//! ids, and a second copy sends nothing.

use sqlvault_engine::crypt::Identities;
use sqlvault_engine::{Access, CheckOptions, CopyOptions, ErrorKind, Repo};

use crate::support::{Bench, database, restored_checksum, small_dump, small_packs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_to_other_keys_restores_with_the_destination_identity_only() {
    let src = Bench::new("copy-src").await;
    let dst = Bench::new("copy-dst").await;
    let db = src.path("app.db");
    database(&db, 512 << 10, 1, true);
    sqlvault_engine::backup(&src.writer, &db, small_packs()).await.unwrap();
    sqlvault_testkit::update_random(&db, 0.1, 1).unwrap();
    sqlvault_engine::backup(&src.writer, &db, small_packs()).await.unwrap();
    sqlvault_engine::backup(&src.writer, &db, small_dump()).await.unwrap();
    let src_snaps = src.reader.snapshots().await.unwrap();

    let opts = CopyOptions::default().with_pack_target(64 << 10);
    let rep = sqlvault_engine::copy(&src.reader, &dst.writer, &opts).await.unwrap();
    assert_eq!((rep.copied.len(), rep.already_present.len()), (3, 0), "{rep:?}");
    assert!(rep.packs_written > 0);
    // The second snapshot shares most pages with the first: they are sent once.
    let sent: u64 = rep.copied.iter().map(|c| c.chunks_sent).sum();
    let total: u64 = rep.copied.iter().map(|c| c.chunks_total).sum();
    assert!(sent < total, "{rep:?}");

    let dst_snaps = dst.reader.snapshots().await.unwrap();
    assert_eq!(
        dst_snaps
            .iter()
            .map(|m| (m.id, &m.name, &m.logical_checksum))
            .collect::<Vec<_>>(),
        src_snaps
            .iter()
            .map(|m| (m.id, &m.name, &m.logical_checksum))
            .collect::<Vec<_>>()
    );
    for m in &dst_snaps {
        assert_eq!(
            hex::encode(restored_checksum(&dst, &dst.reader, m).await),
            m.logical_checksum
        );
    }
    let c = sqlvault_engine::check(&dst.reader, CheckOptions::default().with_read_data(true))
        .await
        .unwrap();
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    assert_eq!(c.snapshots, 3);

    // The source's identity does not open the destination.
    let e = Repo::open_read(
        &src.session,
        dst.store.clone(),
        Access::Identities(Identities::from_secret_string(&src.secret).unwrap()),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth, "{}", e.one_line());

    // Again: everything is there, nothing is written.
    let again = sqlvault_engine::copy(&src.reader, &dst.writer, &opts).await.unwrap();
    assert_eq!((again.copied.len(), again.already_present.len()), (0, 3), "{again:?}");
    assert_eq!(
        (again.destination_requests.put, again.destination_requests.delete),
        (0, 0),
        "{again:?}"
    );
    assert_eq!(again.source_requests.get, 0, "no source data read: {again:?}");

    // A write key cannot read what it would copy.
    let e = sqlvault_engine::copy(&dst.writer, &src.writer, &opts)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth, "{}", e.one_line());
}
