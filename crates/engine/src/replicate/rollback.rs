//! Replication of a rollback-journal database: a snapshot per changed interval.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{DestinationReport, ReplicateOptions, ReplicateReport};
use crate::backup::backup_to_all;
use crate::error::Result;
use crate::repo::{Repo, now_ms};

/// A rollback-journal database has no WAL to follow: its header's file change counter
/// (offset 24, bumped by every committing transaction; in a SQLCipher database the
/// ciphertext there, which changes whenever page 1 is rewritten, as every commit does)
/// is read once per interval, and
/// when it moved, an ordinary incremental snapshot is taken (only changed pages
/// upload). Each is a point `restore --at` can pick. The counter is read through the
/// process's held descriptor of the file ([`sqlvault_sqlite::hold_file`]), which the
/// snapshots' own reads of the file go through, so no POSIX lock of SQLite's is
/// dropped by a close; a torn read only costs an extra snapshot.
pub(super) async fn replicate_rollback(
    repos: &[Repo],
    db: &Path,
    opts: &ReplicateOptions,
    t0: Instant,
) -> Result<ReplicateReport> {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let mut report = ReplicateReport {
        destinations: repos
            .iter()
            .map(|r| DestinationReport {
                repo: r.store.describe().to_string(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let session = repos[0].session.clone();
    let mut fd = sqlvault_sqlite::hold_file(db)?;
    let counter = |fd: &std::fs::File| -> Option<u32> {
        let mut b = [0u8; 4];
        fd.read_exact_at(&mut b, 24).ok()?;
        Some(u32::from_be_bytes(b))
    };
    // Per destination: the change counter its newest snapshot holds, since when it has
    // lacked a change (its lag), and its snapshot in flight. Each destination takes
    // its snapshots in a task of its own: one that is slow or down holds up nobody,
    // and one that failed is tried again at the next interval, alone, even when the
    // database has not changed since.
    type Snap = tokio::task::JoinHandle<Result<Vec<Result<crate::BackupReport>>>>;
    let n = repos.len();
    let mut last: Vec<Option<u32>> = vec![None; n];
    let mut since: Vec<Option<i64>> = vec![None; n];
    let mut inflight: Vec<Option<(Option<u32>, Snap)>> = (0..n).map(|_| None).collect();
    loop {
        let stopping = opts.stop.is_cancelled();
        session.cancel().check()?;
        // A file renamed over the path: follow the new one.
        if let (Ok(now), Ok(ours)) = (std::fs::metadata(db), fd.metadata())
            && (now.dev(), now.ino()) != (ours.dev(), ours.ino())
        {
            fd = sqlvault_sqlite::hold_file(db)?;
            last.iter_mut().for_each(|l| *l = None);
            *report.breaks.entry("file-replaced".into()).or_default() += 1;
        }
        let c = counter(&fd);
        let t = now_ms();
        for i in 0..n {
            if inflight[i].is_none() && (c.is_none() || c != last[i]) {
                since[i].get_or_insert(t);
                let (r, p, o) = (repos[i].clone(), db.to_path_buf(), opts.base.clone());
                inflight[i] = Some((c, tokio::spawn(async move { backup_to_all(&[r], &p, o).await })));
                report.bases += 1;
            }
        }
        // What finished (everything, when stopping: what is committed is shipped).
        for i in 0..n {
            if !inflight[i].as_ref().is_some_and(|(_, h)| stopping || h.is_finished()) {
                continue;
            }
            let (taken, h) = inflight[i].take().expect("checked");
            let d = &mut report.destinations[i];
            let r = match h.await {
                Ok(Ok(mut v)) => v.pop().unwrap_or_else(|| {
                    Err(crate::Error::new(
                        crate::ErrorKind::Internal,
                        "replicate.no-result",
                        "no result",
                    ))
                }),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(crate::Error::new(
                    crate::ErrorKind::Internal,
                    "replicate.snapshot-panicked",
                    e.to_string(),
                )),
            };
            match r {
                Ok(rep) => {
                    last[i] = taken;
                    since[i] = None;
                    report.name = rep.name.clone();
                    d.chain = rep.snapshot_id.clone();
                    d.segments += 1;
                    d.bytes_new += rep.bytes_new;
                    d.last_observed_ms = now_ms();
                    d.last_error = None;
                }
                Err(e) => {
                    tracing::warn!("snapshot to {} failed: {}", d.repo, e.one_line());
                    d.errors += 1;
                    d.last_error = Some(e.one_line());
                }
            }
        }
        for (d, s) in report.destinations.iter_mut().zip(&since) {
            d.pending_since_ms = *s;
        }
        if let Some(l) = &opts.live {
            *l.lock().unwrap_or_else(|e| e.into_inner()) = report.clone();
        }
        if stopping {
            break;
        }
        let until = Instant::now() + opts.interval;
        while Instant::now() < until && !opts.stop.is_cancelled() {
            tokio::time::sleep(Duration::from_millis(20).min(opts.interval)).await;
        }
    }
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}
