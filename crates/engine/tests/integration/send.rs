//! A service runs the engine's operations as tasks on a multi-threaded runtime
//! (`tokio::spawn`, one per database and schedule), so their futures must be `Send`.
//! A closure over borrowed items that builds futures lazily (`iter().map(|r| async …)`)
//! silently loses that (rust-lang/rust#102211): these tests spawn each operation.

use std::time::Duration;

use sqlvault_engine::{
    BackupOptions, Cancel, DrillOptions, ForgetOptions, PointSpec, PruneOptions, ReplicateOptions, RestoreOptions,
};

use crate::support::{Bench, database};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_replication_retention_and_restore_run_as_spawned_tasks() {
    let b = Bench::new("send").await;
    let db = b.path("app.db");
    database(&db, 256 << 10, 11, true);

    let (w, p) = (b.writer.clone(), db.clone());
    let r = tokio::spawn(async move { sqlvault_engine::backup_to_all(&[w], &p, BackupOptions::default()).await })
        .await
        .unwrap()
        .unwrap();
    assert!(r[0].is_ok(), "{:?}", r[0].as_ref().err());

    // Replication as a task, stopped by its flag once it has followed a commit.
    let stop = Cancel::default();
    let opts = ReplicateOptions::default()
        .with_interval(Duration::from_millis(100))
        .with_stop(stop.clone());
    let (w, p) = (b.writer.clone(), db.clone());
    let task = tokio::spawn(async move { sqlvault_engine::replicate(&[w], &p, opts).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE spawned(x); INSERT INTO spawned VALUES (1);")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let rep = task.await.unwrap().unwrap();
    assert!(rep.commits >= 1, "{rep:?}");

    let (r, out) = (b.reader.clone(), b.path("point.db"));
    let o = out.clone();
    tokio::spawn(async move {
        let plan = sqlvault_engine::plan_point(&r, None, PointSpec::At(i64::MAX)).await?;
        sqlvault_engine::restore_point(&r, &plan, &o, RestoreOptions::default()).await?;
        let t = sqlvault_engine::timeline(&r, None).await?;
        assert_eq!(t.len(), 1);
        sqlvault_engine::verify_points(&r, vec![plan], &RestoreOptions::default()).await
    })
    .await
    .unwrap()
    .unwrap();
    let n: i64 = rusqlite::Connection::open(&out)
        .unwrap()
        .query_row("SELECT count(*) FROM spawned", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1, "the newest point holds the commit replicated");

    let r = b.reader.clone();
    let d = tokio::spawn(async move { sqlvault_engine::drill(&r, &DrillOptions::default()).await })
        .await
        .unwrap();
    assert!(d.is_ok(), "{:?}", d.err());
    let r = b.writer.clone();
    let policy = sqlvault_engine::retention::Policy::new().with_last(1);
    let f = tokio::spawn(async move {
        sqlvault_engine::forget(
            &r,
            &ForgetOptions::new(policy).with_pitr_window(Some(Duration::from_secs(3600))),
        )
        .await
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(f.removed, 0, "the window keeps every point: {f:?}");
    let r = b.reader.clone();
    tokio::spawn(async move { sqlvault_engine::prune(&r, &PruneOptions::default()).await })
        .await
        .unwrap()
        .unwrap();
}
