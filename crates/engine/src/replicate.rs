//! Continuous replication (`sqlvault replicate`): every committed change of a live
//! WAL-mode database shipped within an interval, as segments of a chain that starts
//! at a base snapshot, to one or several repositories (docs/architecture.md,
//! "Continuous replication"; docs/format.md, "Segments").
//!
//! The SQLite side is [`sqlvault_sqlite::follow::Follower`]: a read pin always held,
//! handed over once an interval (and every 10 ms while another process holds the
//! checkpoint lock: an application's FULL, RESTART or TRUNCATE checkpoint waits for
//! it), the WAL frames between two pins read and checked against SQLite's own
//! checksum chain. Not more often: each move lets the application's autocheckpoint
//! copy (and fsync) the frames since, a cost its commits would pay. Which pages changed is
//! all that is kept per destination between cuts (a set of page numbers, so a slow
//! or unreachable destination costs memory bounded by the database's page count, not
//! by how much was written); at each cut the current content of those pages is read
//! under the newest pin and handed to the destination's shipper, which hashes them
//! under that repository's key, packs what is new, writes one index, one delta map
//! and the segment (create-if-absent, last), then updates its copy of the chain's
//! page table and state checksum. A destination still busy with its previous
//! segment is skipped at a cut and catches up at the next one with everything
//! changed meanwhile: its timeline is coarser for that stretch, never broken.
//!
//! A continuity break (the file replaced, the WAL truncated or overwritten or
//! restarted more than once, a chain mismatch), a change larger than
//! [`ReplicateOptions::max_cut_bytes`], or a destination whose segment write failed
//! starts a new chain: every pin is released, a base snapshot is taken through the
//! ordinary backup path (only changed pages upload), and the new pin is taken inside
//! the base's own read transaction, so the chain follows on from exactly the state
//! the base holds.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use sqlvault_format::{
    ChunkId, FORMAT_VERSION, ObjectId, PageMap, PageMapKind, Segment, StateChecksum, StateKey, layout,
};
use sqlvault_sqlite::follow::{Break, FollowPosition, Follower, WalMark};

use crate::backup::{BackupOptions, backup_to_all};
use crate::error::{Error, ErrorKind, Result};
use crate::packer::{Packer, on_cpu, write_index_for};
use crate::pagetable::PageTable;
use crate::repo::{Repo, now_ms};

mod bases;
mod compact;
mod rollback;

use bases::{PendingBase, back_off, base, finish_base, start_base};
use compact::compact;
use rollback::replicate_rollback;

/// Options of [`replicate`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReplicateOptions {
    /// Longest time between a commit and the cut that ships it.
    pub interval: Duration,
    /// Options of the base snapshots (name, key of a SQLCipher database, busy timeout).
    pub base: BackupOptions,
    /// A cut whose changed pages exceed this many bytes starts a new chain instead (the
    /// base reads the database but uploads only what changed, with bounded memory).
    pub max_cut_bytes: usize,
    /// A chain is compacted after this many segments: a snapshot manifest of its newest
    /// state is written from the maps alone (no database read, no page upload) and the
    /// chain goes on from it, so a restore applies at most this many segments.
    pub compact_segments: u64,
    /// …or once its first segment is this old.
    pub compact_after: Duration,
    /// Stops replication: what is committed is shipped, then [`replicate`] returns.
    /// (Not the session's cancel flag, which would abort that last segment.)
    pub stop: crate::Cancel,
    /// Where the report so far is published while replication runs (a service's
    /// metrics and status read it): updated at every handover.
    pub live: Option<Arc<Mutex<ReplicateReport>>>,
}

impl Default for ReplicateOptions {
    fn default() -> Self {
        ReplicateOptions {
            interval: Duration::from_secs(1),
            base: BackupOptions::default(),
            max_cut_bytes: 64 << 20,
            compact_segments: 300,
            compact_after: Duration::from_secs(300),
            stop: crate::Cancel::default(),
            live: None,
        }
    }
}

impl ReplicateOptions {
    /// Sets the interval.
    pub fn with_interval(mut self, d: Duration) -> Self {
        self.interval = d;
        self
    }
    /// Sets the base snapshots' options.
    pub fn with_base(mut self, b: BackupOptions) -> Self {
        self.base = b;
        self
    }
    /// Sets when chains are compacted (segments, age of the first).
    pub fn with_compaction(mut self, segments: u64, after: Duration) -> Self {
        self.compact_segments = segments.max(1);
        self.compact_after = after;
        self
    }
    /// Sets the stop flag.
    pub fn with_stop(mut self, stop: crate::Cancel) -> Self {
        self.stop = stop;
        self
    }
    /// Publishes the report so far into `live` while replication runs.
    pub fn with_live(mut self, live: Arc<Mutex<ReplicateReport>>) -> Self {
        self.live = Some(live);
        self
    }
    /// Sets the largest cut shipped as a segment.
    pub fn with_max_cut_bytes(mut self, n: usize) -> Self {
        self.max_cut_bytes = n;
        self
    }
}

/// What one destination received.
#[derive(Debug, Clone, Serialize, Default)]
pub struct DestinationReport {
    /// The repository.
    pub repo: String,
    /// The current chain (its base snapshot id).
    pub chain: String,
    /// Segments written, all chains.
    pub segments: u64,
    /// The newest segment of the current chain.
    pub last_seq: u64,
    /// When the newest state it holds was observed (unix ms).
    pub last_observed_ms: i64,
    /// Bytes uploaded by segments.
    pub bytes_new: u64,
    /// Cuts that failed (retried at the next one).
    pub errors: u64,
    /// Chains compacted into a snapshot manifest.
    pub compactions: u64,
    /// The last failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Since when (unix ms) a committed state has been waiting to reach this
    /// destination: its replication lag is now minus this. None: it has everything
    /// observed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_since_ms: Option<i64>,
}

/// What [`replicate`] did until it was stopped.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ReplicateReport {
    /// Database name.
    pub name: String,
    /// Base snapshots taken (the first included).
    pub bases: u64,
    /// Why new chains were started, by reason, with counts.
    pub breaks: BTreeMap<String, u64>,
    /// WAL restarts followed without a break (checkpoints of the application's).
    pub wal_restarts: u64,
    /// Transactions followed.
    pub commits: u64,
    /// Store requests made after the first base snapshot (segments, compactions, later
    /// bases): zero while the database does not change.
    pub requests_following: crate::Requests,
    /// Per destination, in order.
    pub destinations: Vec<DestinationReport>,
    /// Wall time.
    pub seconds: f64,
}

/// A segment's pages, shared by the destinations shipped at one cut.
type CutPages = Arc<Vec<(u32, Bytes)>>;

/// One destination's chain.
struct Dest {
    repo: Repo,
    chain: Option<ObjectId>,
    seq: u64,
    prev: String,
    txid: u64,
    /// The chain's newest page table and its state checksum (away while shipping).
    table: Option<PageTable>,
    state: StateChecksum,
    key: StateKey,
    /// Pages changed since the last segment that landed, transactions and events.
    dirty: BTreeSet<u32>,
    commits: u64,
    events: Vec<String>,
    /// Chunks this destination's segments stored lately (dedup; bounded).
    recent: HashSet<ChunkId>,
    inflight: Option<tokio::task::JoinHandle<Shipped>>,
    needs_base: bool,
    /// A destination whose base failed tries again after this, backing off.
    base_after: Instant,
    base_failures: u32,
    /// When its last segment was cut (or its chain began).
    last_cut: Instant,
    /// Since when a state observed has been waiting for this destination: not yet
    /// cut, and in the cut in flight.
    unshipped_since: Option<i64>,
    inflight_since: Option<i64>,
    /// The manifest compactions extend (the base, or the last compaction that wrote a
    /// full map) and the pages changed since it, one bit each.
    root: Option<sqlvault_format::Manifest>,
    since_root: Vec<u64>,
    /// When the current chain's first segment landed.
    chain_first: Option<Instant>,
    /// The base's name, host and source path, and page size.
    id: Arc<(String, String, String)>,
    page_size: u32,
    report: DestinationReport,
}

/// What a shipper hands back: the table always, and the outcome.
struct Shipped {
    /// The chain it was cut for: a result for an older chain is dropped.
    chain: ObjectId,
    table: PageTable,
    cut: BTreeSet<u32>,
    commits: u64,
    events: Vec<String>,
    outcome: std::result::Result<Landed, (Error, bool)>,
}

struct Landed {
    /// Pages the segment's delta listed.
    listed: Vec<u32>,
    state: StateChecksum,
    seq: u64,
    prev: String,
    txid: u64,
    observed_ms: i64,
    bytes_new: u64,
    stored: Vec<ChunkId>,
}

/// Chunks remembered per destination for dedup before the set is cleared.
const RECENT_MAX: usize = 256 << 10;

/// Replicates the database at `db` to every repository of `repos` until
/// [`ReplicateOptions::stop`] is set (SIGTERM, SIGINT), then ships what is committed
/// and returns (the session's cancel flag aborts at once instead). Fails
/// when the database cannot be followed or no destination takes a base.
pub async fn replicate(repos: &[Repo], db: &Path, opts: ReplicateOptions) -> Result<ReplicateReport> {
    let t0 = Instant::now();
    let Some(first) = repos.first() else {
        return Err(Error::new(ErrorKind::Usage, "usage", "no repository to replicate to"));
    };
    let session = first.session.clone();
    let busy = opts.base.busy_timeout;
    let unlock = opts.base.unlock.clone();
    let mode = {
        let (p, u) = (db.to_path_buf(), unlock.clone());
        on_cpu(move || Ok(sqlvault_sqlite::follow::journal_mode(&p, u.as_ref(), busy)?)).await?
    };
    if mode != "wal" {
        return replicate_rollback(repos, db, &opts, t0).await;
    }
    let db_path: PathBuf = db.to_path_buf();
    let follower = {
        let (p, u) = (db_path.clone(), unlock.clone());
        on_cpu(move || Ok(Follower::open(&p, u.as_ref(), busy)?)).await?
    };
    let follower = Arc::new(Mutex::new(follower));
    let mut dests: Vec<Dest> = repos
        .iter()
        .map(|r| Dest {
            repo: r.clone(),
            chain: None,
            seq: 0,
            prev: String::new(),
            txid: 0,
            table: None,
            state: StateChecksum::default(),
            key: StateKey::new(&r.keys),
            dirty: BTreeSet::new(),
            commits: 0,
            events: Vec::new(),
            recent: HashSet::new(),
            inflight: None,
            needs_base: true,
            base_after: Instant::now(),
            base_failures: 0,
            last_cut: Instant::now(),
            unshipped_since: None,
            inflight_since: None,
            root: None,
            since_root: Vec::new(),
            chain_first: None,
            id: Arc::new(Default::default()),
            page_size: 0,
            report: DestinationReport {
                repo: r.store.describe().to_string(),
                ..Default::default()
            },
        })
        .collect();
    let mut report = ReplicateReport::default();
    let all: Vec<usize> = (0..dests.len()).collect();
    let mut pos = base(&follower, &mut dests, &all, db, &opts, &mut report, "start")
        .await?
        .expect("a first base pins");
    let mut after_stop = 0u32;
    let following_from = session.requests();
    // The cadence of cuts: one every interval, kept on its own clock so that a pin
    // moved in between (an application's checkpoint, a destination freed) does not
    // push the next cut back — a point's staleness is bounded by the interval.
    let mut next_tick = Instant::now() + opts.interval;
    let mut pending_base: Option<PendingBase> = None;
    let mut handed_ms = now_ms();
    let mut last_change = Instant::now();
    let mut last_sig: Option<[u8; 48]> = None;
    let mut mark_pages = 0u32;
    let mut observed_ms = now_ms();
    loop {
        let mut stopping = opts.stop.is_cancelled();
        session.cancel().check()?;
        // The pin moves once an interval, or at once (at most every 10 ms) while a
        // checkpoint of the application's runs: a FULL, RESTART or TRUNCATE one waits
        // for it. Moving it more often would let the application's autocheckpoint
        // copy a few frames (and fsync) at every move: commit latency.
        let mut tick = stopping;
        let mut ckpt = false;
        if !stopping {
            // The checkpoint-lock probe runs every 10 ms while the database is busy (or a
            // checkpoint ran lately); once it has been quiet for 10 s, every half
            // interval (at most 500 ms): an application's checkpoint is seen within
            // half an interval and completes 10 ms later, and a service following
            // hundreds of idle databases stays asleep.
            let quiet = last_change.elapsed() > Duration::from_secs(10);
            let poll = if quiet {
                (opts.interval / 2).clamp(Duration::from_millis(10), Duration::from_millis(500))
            } else {
                Duration::from_millis(10)
            };
            loop {
                tokio::time::sleep(poll).await;
                if opts.stop.is_cancelled() {
                    stopping = true;
                    tick = true;
                    break;
                }
                let now = Instant::now();
                if now >= next_tick {
                    tick = true;
                    next_tick += opts.interval;
                    if next_tick <= now {
                        next_tick = now + opts.interval;
                    }
                    break;
                }
                // A destination that was still shipping at its cut is served as soon
                // as it is free, not at the next tick.
                let freed = dests.iter().any(|d| {
                    d.last_cut.elapsed() >= opts.interval && d.inflight.as_ref().is_some_and(|h| h.is_finished())
                });
                if freed {
                    break;
                }
                let running = follower.lock().unwrap_or_else(|e| e.into_inner()).checkpoint_running();
                if running {
                    ckpt = true;
                    last_change = Instant::now();
                    break;
                }
            }
        }
        // Nothing committed or restarted since the last handover (the WAL-index header
        // is unchanged), no checkpoint waiting, no base to take in, the file not
        // replaced: the pin stays where it is. An idle database costs a 48-byte read
        // per interval.
        let sig = follower.lock().unwrap_or_else(|e| e.into_inner()).signature();
        let unchanged = !stopping
            && !ckpt
            && pending_base.is_none()
            && sig.is_some()
            && sig == last_sig
            && !follower.lock().unwrap_or_else(|e| e.into_inner()).replaced();
        if !unchanged {
            last_sig = sig;
            // Handover: the next pin, the frames since the last one, the older released.
            // A destination's own base is taken in before the pin moves, never after: its
            // read happened before this pin, so the first cut (read under this pin or a
            // later one) is no older than the base, and the pages changed since its read
            // are all in the dirty set. Taken in after the handover, a base read later than
            // the pin would be followed by a segment of older pages: a torn state.
            finish_base(&mut pending_base, stopping, &mut dests, &mut report, db).await;
            let f = follower.clone();
            let from = pos;
            let step = on_cpu(move || {
                let mut f = f.lock().unwrap_or_else(|e| e.into_inner());
                let mark = f.pin()?;
                let seen = now_ms();
                let adv = f.advance(&from, &mark)?;
                if adv.is_ok() {
                    f.release_older();
                }
                Ok((mark, seen, adv))
            })
            .await;
            tracing::trace!(
                "handover: {:?}",
                step.as_ref().map(|(m, _, a)| (m, a.as_ref().map(|a| a.commits)))
            );
            let (mark, seen, adv) = match step {
                Ok(s) => s,
                Err(e) => {
                    // The database went away or cannot be read: a break if it comes back.
                    tracing::warn!("cannot follow {}: {}", db.display(), e.one_line());
                    // The new base covers every destination: a pending one is dropped (a
                    // hung store must not hold up the break).
                    pending_base = None;
                    pos = rebreak(&follower, &mut dests, db, &opts, &mut report, "unreadable", &db_path).await?;
                    handed_ms = now_ms();
                    continue;
                }
            };
            match adv {
                Err(brk) => {
                    let reason = break_code(&brk);
                    tracing::warn!("{}: {brk}; starting a new chain", db.display());
                    // The new base covers every destination: a pending one is dropped (a
                    // hung store must not hold up the break).
                    pending_base = None;
                    pos = rebreak(&follower, &mut dests, db, &opts, &mut report, reason, &db_path).await?;
                    handed_ms = now_ms();
                    continue;
                }
                Ok(a) => {
                    pos = a.position.unwrap_or(pos);
                    report.commits += a.commits;
                    if a.restarted {
                        report.wal_restarts += 1;
                        tracing::debug!("{}: the WAL was restarted by a checkpoint; followed", db.display());
                    }
                    let changed = a.commits > 0 || !a.pages.is_empty();
                    if changed || a.restarted {
                        last_change = Instant::now();
                    }
                    if changed {
                        observed_ms = seen;
                        mark_pages = mark.pages;
                    }
                    for d in dests.iter_mut() {
                        if changed {
                            // Committed after the previous handover: lag counts from there.
                            d.unshipped_since.get_or_insert(handed_ms);
                        }
                        d.dirty.extend(a.pages.iter().copied());
                        d.commits += a.commits;
                        if a.restarted {
                            d.events.push("wal-restarted".into());
                        }
                    }
                    handed_ms = seen;
                }
            }
        }
        collect_finished(&mut dests, false).await;
        // A destination without a chain (its base or a segment's own write failed)
        // gets a base of its own, backing off; the pins stay, the others go on.
        let now = Instant::now();
        let lagging: Vec<usize> = (0..dests.len())
            .filter(|&i| dests[i].needs_base && dests[i].inflight.is_none() && now >= dests[i].base_after)
            .collect();
        if !lagging.is_empty() && !stopping && pending_base.is_none() {
            if lagging.len() == dests.len() {
                // Nobody to hold up: in line, re-pinning the follower inside it.
                if let Some(p) = base(&follower, &mut dests, &lagging, db, &opts, &mut report, "destination").await? {
                    pos = p;
                }
                back_off(&mut dests, &lagging);
            } else {
                pending_base = Some(start_base(&mut dests, lagging, db, &opts));
            }
        }
        // Compaction: between segments, from the maps alone.
        for d in dests.iter_mut() {
            let old = d.chain_first.is_some_and(|t| t.elapsed() >= opts.compact_after);
            if d.inflight.is_none()
                && d.table.is_some()
                && d.seq > 0
                && (d.seq >= opts.compact_segments || old)
                && let Err(e) = compact(d).await
            {
                tracing::warn!("compaction in {} failed: {}", d.report.repo, e.one_line());
                d.report.errors += 1;
                d.report.last_error = Some(e.one_line());
                // Tried again at the next chance; the chain goes on meanwhile.
                d.chain_first = Some(Instant::now());
            }
        }
        {
            // At a tick every free destination with changes is cut; in between, one
            // whose last cut is an interval old (it was shipping at the tick).
            let ready: Vec<usize> = (0..dests.len())
                .filter(|&i| {
                    let d = &dests[i];
                    d.inflight.is_none()
                        && d.table.is_some()
                        && (d.commits > 0 || !d.dirty.is_empty())
                        && (tick || d.last_cut.elapsed() >= opts.interval)
                })
                .collect();
            if !ready.is_empty() {
                let mut want = BTreeSet::new();
                for &i in &ready {
                    let d = &mut dests[i];
                    // Pages a commit added must be listed even if no frame carried
                    // them (the delta map's rule).
                    let old = d.table.as_ref().map_or(0, |t| t.pages());
                    d.dirty.extend(old + 1..=mark_pages);
                    want.extend(d.dirty.iter().copied().filter(|&p| p <= mark_pages));
                }
                let f = follower.clone();
                let pages: Vec<u32> = want.iter().copied().collect();
                let max = opts.max_cut_bytes;
                let cut = on_cpu(move || {
                    let mut f = f.lock().unwrap_or_else(|e| e.into_inner());
                    let mut out = Vec::with_capacity(pages.len());
                    let mut bytes = 0usize;
                    let r = f.read_pages(pages, |pgno, data| {
                        bytes += data.len();
                        if bytes > max {
                            return Err(());
                        }
                        out.push((pgno, Bytes::copy_from_slice(data)));
                        Ok(())
                    })?;
                    Ok(r.map(|()| out).ok())
                })
                .await?;
                let Some(cut) = cut else {
                    tracing::info!(
                        "{}: {} changed pages exceed the segment limit; starting a new chain",
                        db.display(),
                        want.len()
                    );
                    pending_base = None;
                    pos = rebreak(&follower, &mut dests, db, &opts, &mut report, "large-change", &db_path).await?;
                    handed_ms = now_ms();
                    continue;
                };
                tracing::debug!("cut of {} pages for {} destinations", cut.len(), ready.len());
                let cut: CutPages = Arc::new(cut);
                for &i in &ready {
                    ship(&mut dests[i], &cut, mark_pages, observed_ms);
                    dests[i].last_cut = Instant::now();
                }
            }
        }
        publish(&opts, &report, &dests);
        if stopping {
            settle_all(&mut dests).await;
            let pending = dests
                .iter()
                .any(|d| (d.commits > 0 || !d.dirty.is_empty()) && d.table.is_some());
            // What is committed gets a few tries; a destination still failing then
            // is reported (exit 10), with what it lacks.
            after_stop += 1;
            if !pending || after_stop > 5 {
                for d in dests
                    .iter()
                    .filter(|d| d.commits > 0 || !d.dirty.is_empty() || d.needs_base)
                {
                    tracing::warn!(
                        "{}: stopped with {} transactions not shipped there",
                        d.report.repo,
                        d.commits
                    );
                }
                break;
            }
        }
    }
    let mut f = follower.lock().unwrap_or_else(|e| e.into_inner());
    f.release_all();
    report.destinations = dests.into_iter().map(|d| d.report).collect();
    report.requests_following = session.requests().since(following_from);
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

fn break_code(b: &Break) -> &'static str {
    match b {
        Break::Replaced => "file-replaced",
        Break::Truncated { .. } => "wal-truncated",
        Break::Overwritten { .. } => "wal-overwritten",
        Break::Restarts => "wal-restarted-unfollowed",
        Break::Mismatch(_) => "wal-mismatch",
        Break::NotWal => "not-wal",
        _ => "other",
    }
}

/// The report so far into [`ReplicateOptions::live`], when set.
fn publish(opts: &ReplicateOptions, report: &ReplicateReport, dests: &[Dest]) {
    let Some(live) = &opts.live else { return };
    let mut r = report.clone();
    r.destinations = dests
        .iter()
        .map(|d| {
            let mut x = d.report.clone();
            x.pending_since_ms = match (d.unshipped_since, d.inflight_since) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            x
        })
        .collect();
    *live.lock().unwrap_or_else(|e| e.into_inner()) = r;
}

/// Waits for every destination's segment in flight.
async fn settle_all(dests: &mut [Dest]) {
    collect_finished(dests, true).await;
}

/// Takes back what finished shippers hand back (all of them when `wait`).
async fn collect_finished(dests: &mut [Dest], wait: bool) {
    for d in dests.iter_mut() {
        let done = d.inflight.as_ref().is_some_and(|h| wait || h.is_finished());
        if !done {
            continue;
        }
        let h = d.inflight.take().expect("present");
        let shipped = match h.await {
            Ok(s) => s,
            Err(e) => {
                d.report.errors += 1;
                d.report.last_error = Some(format!("shipper panicked: {e}"));
                d.needs_base = true;
                d.table = None;
                d.unshipped_since = match (d.unshipped_since, d.inflight_since.take()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                continue;
            }
        };
        if d.chain != Some(shipped.chain) {
            // Cut for a chain that has since been replaced by a new base (which holds
            // what it carried).
            d.inflight_since = None;
            continue;
        }
        d.table = Some(shipped.table);
        match shipped.outcome {
            Ok(l) => {
                d.state = l.state;
                d.seq = l.seq;
                d.prev = l.prev;
                d.txid = l.txid;
                if d.recent.len() + l.stored.len() > RECENT_MAX {
                    d.recent.clear();
                }
                d.recent.extend(l.stored);
                for p in l.listed {
                    let (w, b) = ((p as usize) / 64, p % 64);
                    if d.since_root.len() <= w {
                        d.since_root.resize(w + 1, 0);
                    }
                    d.since_root[w] |= 1 << b;
                }
                d.chain_first.get_or_insert_with(Instant::now);
                tracing::debug!(
                    "segment {} to {} landed ({} new bytes)",
                    l.seq,
                    d.report.repo,
                    l.bytes_new
                );
                d.report.segments += 1;
                d.report.last_seq = l.seq;
                d.report.last_observed_ms = l.observed_ms;
                d.report.bytes_new += l.bytes_new;
                d.report.last_error = None;
                d.inflight_since = None;
            }
            Err((e, fatal)) => {
                // The pages, transactions and events go back: the next cut ships them
                // with what came since.
                d.dirty.extend(shipped.cut);
                d.commits += shipped.commits;
                d.unshipped_since = match (d.unshipped_since, d.inflight_since.take()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let mut ev = shipped.events;
                ev.append(&mut d.events);
                d.events = ev;
                d.report.errors += 1;
                tracing::warn!("segment to {} failed: {}", d.report.repo, e.one_line());
                d.report.last_error = Some(e.one_line());
                if fatal {
                    d.needs_base = true;
                    d.table = None;
                    d.chain = None;
                }
            }
        }
    }
}

/// Starts shipping the destination's changed pages (from `cut`) as its next segment.
fn ship(d: &mut Dest, cut: &CutPages, page_count: u32, observed_ms: i64) {
    let table = d.table.take().expect("checked by the caller");
    d.inflight_since = d.unshipped_since.take();
    let mine = std::mem::take(&mut d.dirty);
    let commits = std::mem::take(&mut d.commits);
    let events = std::mem::take(&mut d.events);
    let job = Job {
        repo: d.repo.clone(),
        key: d.key.clone(),
        chain: d.chain.expect("a chain"),
        seq: d.seq + 1,
        prev: d.prev.clone(),
        txid: d.txid + commits,
        commits,
        events,
        state: d.state,
        page_count,
        observed_ms,
        recent: d.recent.clone(),
        id: d.id.clone(),
        page_size: d.page_size,
    };
    let cut = cut.clone();
    let chain = job.chain;
    let (c, ev) = (job.commits, job.events.clone());
    d.inflight = Some(tokio::spawn(async move {
        let mut table = table;
        let outcome = job.run(&mut table, &cut, &mine).await;
        Shipped {
            chain,
            table,
            cut: mine,
            commits: c,
            events: ev,
            outcome,
        }
    }));
}

struct Job {
    repo: Repo,
    key: StateKey,
    chain: ObjectId,
    seq: u64,
    prev: String,
    txid: u64,
    commits: u64,
    events: Vec<String>,
    state: StateChecksum,
    page_count: u32,
    observed_ms: i64,
    recent: HashSet<ChunkId>,
    /// Name, host, source path.
    id: Arc<(String, String, String)>,
    page_size: u32,
}

impl Job {
    /// Packs, index, delta map, segment (created if absent, last); then the table.
    /// `Err((_, true))` when the segment's own write failed: whether it landed is not
    /// known, so the chain cannot go on.
    async fn run(
        self,
        table: &mut PageTable,
        cut: &CutPages,
        mine: &BTreeSet<u32>,
    ) -> std::result::Result<Landed, (Error, bool)> {
        let soft = |e: Error| (e, false);
        let started = Instant::now();
        let repo = &self.repo;
        let pages: Vec<(u32, Bytes)> = cut
            .iter()
            .filter(|(p, _)| mine.contains(p) && *p <= self.page_count)
            .cloned()
            .collect();
        let keys = repo.keys.clone();
        let ids = on_cpu(move || {
            Ok(pages
                .into_iter()
                .map(|(p, data)| (p, keys.chunk_id(&data), data))
                .collect::<Vec<_>>())
        })
        .await
        .map_err(soft)?;
        let old_pages = table.pages();
        let mut state = self.state;
        let mut delta: Vec<(u32, ChunkId)> = Vec::new();
        let mut packer: Option<Packer> = None;
        let mut stored = Vec::new();
        let mut seen = HashSet::new();
        for (pgno, id, data) in &ids {
            let old = table.get(*pgno).map_err(soft)?;
            if old.as_ref() == Some(id) {
                continue;
            }
            if let Some(o) = &old {
                state.toggle(&self.key, *pgno, o);
            }
            state.toggle(&self.key, *pgno, id);
            delta.push((*pgno, *id));
            if !self.recent.contains(id) && seen.insert(*id) {
                let p = match packer.as_mut() {
                    Some(p) => p,
                    None => packer.insert(Packer::new(repo, 16 << 20).map_err(soft)?),
                };
                p.add(*id, data).await.map_err(soft)?;
                stored.push(*id);
            }
        }
        // Pages past the new end leave the state.
        for pgno in self.page_count + 1..=old_pages {
            if let Some(o) = table.get(pgno).map_err(soft)? {
                state.toggle(&self.key, pgno, &o);
            }
        }
        let mut bytes_new = 0u64;
        if let Some(p) = packer {
            let packs = p.finish().await.map_err(soft)?;
            bytes_new += packs.iter().map(|p| p.size).sum::<u64>();
            bytes_new += write_index_for(repo, &packs).await.map_err(soft)?;
        }
        let map = PageMap {
            kind: PageMapKind::Delta,
            page_count: self.page_count,
            entries: delta.clone(),
        };
        let pt = map.encode();
        let mac = repo.keys.mac(&pt);
        let ct = repo.encrypt_meta(&pt).map_err(soft)?;
        let (mref, n) = crate::mapparts::put_map(repo, ct, mac).await.map_err(soft)?;
        bytes_new += n;
        let seg = Segment {
            version: FORMAT_VERSION,
            chain: self.chain,
            seq: self.seq,
            prev: self.prev.clone(),
            name: self.id.0.clone(),
            host: self.id.1.clone(),
            source_path: self.id.2.clone(),
            observed_ms: self.observed_ms,
            txid: self.txid,
            commits: self.commits,
            page_size: self.page_size,
            page_count: self.page_count,
            state: state.to_hex(),
            maps: vec![mref],
            pages: delta.len() as u64,
            bytes_new,
            events: self.events.clone(),
        };
        // Prune deletes what no snapshot or segment references once its grace has
        // passed, and the grace is never shorter than MIN_GRACE: a segment that would
        // land later than half of that after its first upload is not written (its
        // packs may be gone); the pages go back and the next cut uploads them again.
        if started.elapsed() > crate::prune::MIN_GRACE / 2 {
            return Err(soft(Error::new(
                ErrorKind::Store,
                "replicate.too-slow",
                "a segment took longer than half of prune's shortest grace; shipped again",
            )));
        }
        let (pt, hash) = seg.encode(&repo.keys);
        let ct = repo.encrypt_meta(&pt).map_err(soft)?;
        // The commit point. A failure here leaves unknown whether it landed.
        repo.store
            .appender()
            .put_if_absent(&layout::segment(&self.chain, self.seq), Bytes::from(ct))
            .await
            .map_err(|e| (Error::from(e), true))?;
        for (pgno, id) in &delta {
            table.set(*pgno, id).map_err(|e| (e, true))?;
        }
        table.set_pages(self.page_count);
        Ok(Landed {
            listed: delta.iter().map(|(p, _)| *p).collect(),
            state,
            seq: self.seq,
            prev: hash,
            txid: self.txid,
            observed_ms: self.observed_ms,
            bytes_new,
            stored,
        })
    }
}

/// A break: pins released, the follower reopened when the file was replaced, a new
/// base for every destination.
async fn rebreak(
    follower: &Arc<Mutex<Follower>>,
    dests: &mut [Dest],
    db: &Path,
    opts: &ReplicateOptions,
    report: &mut ReplicateReport,
    reason: &'static str,
    db_path: &Path,
) -> Result<FollowPosition> {
    *report.breaks.entry(reason.to_string()).or_default() += 1;
    settle_all(dests).await;
    {
        let mut f = follower.lock().unwrap_or_else(|e| e.into_inner());
        f.release_all();
    }
    let replaced = {
        let f = follower.lock().unwrap_or_else(|e| e.into_inner());
        f.replaced()
    };
    if replaced {
        let (p, u, busy) = (db_path.to_path_buf(), opts.base.unlock.clone(), opts.base.busy_timeout);
        let fresh = on_cpu(move || Ok(Follower::open(&p, u.as_ref(), busy)?)).await?;
        *follower.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
    }
    let all: Vec<usize> = (0..dests.len()).collect();
    Ok(base(follower, dests, &all, db, opts, report, reason)
        .await?
        .expect("a base of every destination pins"))
}
