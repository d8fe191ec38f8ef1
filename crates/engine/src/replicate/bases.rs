//! Base snapshots of a replication run: in line for every destination (a start, a
//! break), and as a task of their own for destinations that lost their chain.

use super::*;

/// Takes a base snapshot into the destinations `which` through the backup path.
/// When they are all of them, every pin is released first and the follower pinned
/// again inside the base's read transaction: the returned position is where the
/// chains start from. For some of them only (a destination that lost its chain), the
/// pins stay held and the follower's position stands: the base holds everything up
/// to it, and the next handover marks every page changed since as dirty for them too
/// (some already in the base: harmless). Destinations whose base fails stay without a
/// chain (`needs_base`); a first base that reaches none is an error.
pub(super) async fn base(
    follower: &Arc<Mutex<Follower>>,
    dests: &mut [Dest],
    which: &[usize],
    db: &Path,
    opts: &ReplicateOptions,
    report: &mut ReplicateReport,
    reason: &str,
) -> Result<Option<FollowPosition>> {
    let repin = which.len() == dests.len();
    for &i in which {
        if let Some(h) = dests[i].inflight.take() {
            let _ = h.await;
        }
    }
    let captured: Arc<Mutex<Option<std::result::Result<FollowPosition, String>>>> = Arc::new(Mutex::new(None));
    let hook = {
        let (f, c) = (follower.clone(), captured.clone());
        sqlvault_sqlite::ReadHook(Arc::new(move |mark: Option<WalMark>| {
            if !repin {
                *c.lock().unwrap_or_else(|e| e.into_inner()) = Some(Ok(FollowPosition {
                    salt: [0; 2],
                    checkpoint_seq: 0,
                    frame: 0,
                    checksum: [0; 2],
                }));
                return Ok(());
            }
            let mut f = f.lock().unwrap_or_else(|e| e.into_inner());
            let r = (|| {
                f.release_all();
                f.pin().map_err(|e| e.to_string())?;
                let m = mark.unwrap_or(WalMark {
                    frames: 0,
                    pages: 0,
                    checksum: [0; 2],
                    salt: [0; 2],
                });
                f.position_of(&m).map_err(|e| e.to_string())
            })();
            let ok = r.as_ref().map(|_| ()).map_err(Clone::clone);
            *c.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
            ok
        }))
    };
    let mut bopts = opts.base.clone();
    bopts.on_read = Some(hook);
    bopts.replicated = true;
    let repos: Vec<Repo> = which.iter().map(|&i| dests[i].repo.clone()).collect();
    let results = backup_to_all(&repos, db, bopts).await?;
    let first = reason == "start";
    let captured = captured.lock().unwrap_or_else(|e| e.into_inner()).take();
    let pos = match captured {
        Some(Ok(p)) => p,
        Some(Err(detail)) => {
            return Err(Error::new(
                ErrorKind::Source,
                "replicate.cannot-follow",
                format!("cannot follow {}: {detail}", db.display()),
            ));
        }
        // The database was never read: every destination failed before (a store
        // down, its configuration unreadable). Their errors are counted below; the
        // follower is pinned again where the database is now (a break released its
        // pins), and they get a base of their own later.
        None if !first && repin => {
            let (f, p) = (follower.clone(), db.to_path_buf());
            on_cpu(move || {
                let mut f = f.lock().unwrap_or_else(|e| e.into_inner());
                f.release_all();
                let mark = f.pin()?;
                f.position_of(&mark).map_err(|e| {
                    Error::new(
                        ErrorKind::Source,
                        "replicate.cannot-follow",
                        format!("cannot follow {}: {e}", p.display()),
                    )
                })
            })
            .await?
        }
        None if !first => FollowPosition {
            salt: [0; 2],
            checkpoint_seq: 0,
            frame: 0,
            checksum: [0; 2],
        },
        None => {
            let why = results
                .iter()
                .find_map(|r| r.as_ref().err().map(|e| e.one_line()))
                .unwrap_or_else(|| "its base snapshot was not read in one WAL read transaction".into());
            return Err(Error::new(
                ErrorKind::Store,
                "replicate.no-destination",
                format!("no destination took a base snapshot of {}: {why}", db.display()),
            ));
        }
    };
    for &i in which {
        let d = &mut dests[i];
        d.dirty.clear();
        d.commits = 0;
        d.events.clear();
    }
    let any = adopt_bases(dests, which, results, report, reason, db, now_ms()).await;
    if !any && first {
        return Err(Error::new(
            ErrorKind::Store,
            "replicate.no-destination",
            format!("no destination took a base snapshot of {}", db.display()),
        ));
    }
    Ok(repin.then_some(pos))
}

/// A base snapshot of some destinations (those that lost their chain) taken while the
/// others go on: a task of its own, so that a destination that is down or slow holds
/// up nobody. Their changed pages were cleared when it began, before its read
/// transaction: every page changed after that read is marked again by the handovers
/// meanwhile, and goes in the first segment after the base.
pub(super) struct PendingBase {
    which: Vec<usize>,
    started_ms: i64,
    task: tokio::task::JoinHandle<Result<Vec<Result<crate::BackupReport>>>>,
}

impl Drop for PendingBase {
    /// Dropped unfinished (a break, replication ending on an error): stopped. Its
    /// leases expire and its packs are garbage for prune, as after a kill.
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(super) fn start_base(dests: &mut [Dest], which: Vec<usize>, db: &Path, opts: &ReplicateOptions) -> PendingBase {
    for &i in &which {
        let d = &mut dests[i];
        d.dirty.clear();
        d.commits = 0;
        d.events.clear();
    }
    let mut bopts = opts.base.clone();
    bopts.on_read = None;
    bopts.replicated = true;
    let repos: Vec<Repo> = which.iter().map(|&i| dests[i].repo.clone()).collect();
    let db = db.to_path_buf();
    let task = tokio::spawn(async move { backup_to_all(&repos, &db, bopts).await });
    PendingBase {
        which,
        started_ms: now_ms(),
        task,
    }
}

/// Takes in a finished (or, with `wait`, any) pending base: the destinations that got
/// it start their chains, the others back off.
pub(super) async fn finish_base(
    pending: &mut Option<PendingBase>,
    wait: bool,
    dests: &mut [Dest],
    report: &mut ReplicateReport,
    db: &Path,
) {
    if !pending.as_ref().is_some_and(|p| wait || p.task.is_finished()) {
        return;
    }
    let mut p = pending.take().expect("checked");
    let which = p.which.clone();
    let failed = |kind, code, msg: String| which.iter().map(|_| Err(Error::new(kind, code, msg.clone()))).collect();
    let results = match (&mut p.task).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => failed(e.kind(), e.code(), e.one_line()),
        Err(e) => failed(ErrorKind::Internal, "replicate.base-panicked", e.to_string()),
    };
    adopt_bases(dests, &p.which, results, report, "destination", db, p.started_ms).await;
    back_off(dests, &p.which);
}

/// After a base of `which`: those still without a chain try again later, backing off
/// up to 16 s (a store back after an outage is served soon).
pub(super) fn back_off(dests: &mut [Dest], which: &[usize]) {
    for &i in which {
        let d = &mut dests[i];
        if d.needs_base {
            d.base_failures += 1;
            d.base_after = Instant::now() + Duration::from_secs(1 << d.base_failures.min(4));
        } else {
            d.base_failures = 0;
        }
    }
}

/// Starts the chains of the destinations `which` from their base snapshots' results;
/// whether any did.
async fn adopt_bases(
    dests: &mut [Dest],
    which: &[usize],
    results: Vec<Result<crate::BackupReport>>,
    report: &mut ReplicateReport,
    reason: &str,
    db: &Path,
    started_ms: i64,
) -> bool {
    report.bases += 1;
    let mut any = false;
    for (&i, r) in which.iter().zip(results) {
        let d = &mut dests[i];
        d.table = None;
        d.chain = None;
        d.needs_base = true;
        let rep = match r {
            Ok(rep) => rep,
            Err(e) => {
                tracing::warn!("base snapshot to {} failed: {}", d.report.repo, e.one_line());
                d.report.errors += 1;
                d.report.last_error = Some(e.one_line());
                // It lacks at least what changed since the base began.
                d.unshipped_since.get_or_insert(started_ms);
                continue;
            }
        };
        let id: ObjectId = match rep.snapshot_id.parse() {
            Ok(id) => id,
            Err(_) => continue,
        };
        let built = async {
            let m = d.repo.load_manifest(&id).await?;
            let table = PageTable::build(&d.repo, &m).await?;
            let state = table.state(&d.key)?;
            Ok::<_, Error>((m, table, state))
        }
        .await;
        let (m, table, state) = match built {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(
                    "base snapshot in {} cannot be read back: {}",
                    d.report.repo,
                    e.one_line()
                );
                d.report.errors += 1;
                d.report.last_error = Some(e.one_line());
                continue;
            }
        };
        d.state = state;
        d.table = Some(table);
        d.chain = Some(id);
        d.seq = 0;
        d.prev = Segment::first_prev(&id);
        d.txid = 0;
        d.needs_base = false;
        d.events.push(format!("chain-started:{reason}"));
        d.root = Some(m.clone());
        d.since_root.clear();
        d.chain_first = None;
        d.id = Arc::new((m.name.clone(), m.host.clone(), m.source_path.clone()));
        d.page_size = m.page_size;
        report.name = m.name.clone();
        d.report.chain = id.to_string();
        d.report.last_seq = 0;
        d.report.last_observed_ms = m.created_ms;
        // What committed while the base was taken waits for the next segment.
        d.unshipped_since = (d.commits > 0 || !d.dirty.is_empty()).then_some(started_ms);
        d.inflight_since = None;
        any = true;
        tracing::info!(
            "{}: chain {} started in {} ({reason})",
            db.display(),
            id.short(),
            d.report.repo
        );
    }
    any
}
