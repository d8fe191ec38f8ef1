//! `check` reports what is wrong with a repository as problems (never a panic, never
//! an early stop at the first bad pack): a sound repository has none; a truncated, a
//! flipped or a missing pack is named.

use sqlvault_engine::format::{ObjectId, layout};
use sqlvault_engine::{CheckOptions, ErrorKind};

use crate::support::{Bench, database, small_packs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_a_sound_repository_and_names_each_damaged_pack() {
    let b = Bench::new("check").await;
    let db = b.path("app.db");
    database(&db, 512 << 10, 1, false);
    sqlvault_engine::backup(&b.writer, &db, small_packs()).await.unwrap();
    sqlvault_testkit::update_random(&db, 0.05, 1).unwrap();
    sqlvault_engine::backup(&b.writer, &db, small_packs()).await.unwrap();
    let packs = b.names(layout::PACKS).await;
    assert!(packs.len() >= 3, "{packs:?}");

    let read = CheckOptions::default().with_read_data(true);
    let sound = sqlvault_engine::check(&b.reader, read.clone()).await.unwrap();
    assert!(sound.problems.is_empty(), "{:?}", sound.problems);
    assert_eq!(
        (sound.snapshots, sound.packs, sound.packs_read),
        (2, packs.len(), packs.len())
    );
    assert!(sound.chunks_referenced > 0);
    assert!(sound.requests.get as usize >= packs.len(), "{:?}", sound.requests);

    // Truncate one pack, flip a byte in another.
    let short = |n: &str| n.parse::<ObjectId>().unwrap().short();
    let truncated = &packs[0];
    b.tamper(&format!("{}/{truncated}", layout::PACKS), |v| v.truncate(v.len() / 2))
        .await;
    let flipped = &packs[1];
    b.tamper(&format!("{}/{flipped}", layout::PACKS), |v| {
        let i = v.len() / 3;
        v[i] ^= 0x01;
    })
    .await;
    let r = sqlvault_engine::check(&b.reader, read.clone()).await.unwrap();
    assert_eq!(r.packs_read, packs.len(), "every pack is read despite the damage");
    assert_eq!(r.problems.len(), 2, "{:?}", r.problems);
    for p in [truncated, flipped] {
        assert!(
            r.problems.iter().any(|x| x.message.contains(&short(p))),
            "pack {p} is named: {:?}",
            r.problems
        );
    }
    // Structure alone does not read packs.
    let quick = sqlvault_engine::check(&b.reader, CheckOptions::default())
        .await
        .unwrap();
    assert_eq!(quick.packs_read, 0);

    // A missing pack is found without reading data.
    let gone = &packs[2];
    b.store.delete(&format!("{}/{gone}", layout::PACKS)).await.unwrap();
    let r = sqlvault_engine::check(&b.reader, CheckOptions::default())
        .await
        .unwrap();
    assert!(!r.problems.is_empty());
    assert!(
        r.problems.iter().any(|x| x.message.contains(&short(gone))),
        "{:?}",
        r.problems
    );

    // A write key cannot check data.
    let e = sqlvault_engine::check(&b.writer, read).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth, "{}", e.one_line());
}
