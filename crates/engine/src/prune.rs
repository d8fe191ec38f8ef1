//! `prune`: deletes what no snapshot references, repacks mostly-unused packs, and never
//! deletes anything a concurrent backup may still be using.
//!
//! # Why two phases and a grace period, not locks
//!
//! Backups take no lock: a backup host may hold append-only credentials (it cannot
//! delete a lock it made), a killed backup must not block the next one, and restic's
//! history shows what stale locks cost people. Instead deletion is split in two:
//!
//! 1. **Mark.** A prune run computes what is unreferenced and records it, with the time,
//!    in `prune/pending` (one object, sealed with the repository MAC). Nothing is deleted.
//! 2. **Delete.** A later run deletes a marked object only when the mark is older than
//!    the grace period (plus a tenth of it, at most 10 minutes, for clock differences
//!    between prune hosts and the time the state PUT took) *and* the object is still unreferenced in
//!    that run's fresh view of every snapshot.
//!
//! Every backup GETs `prune/pending` when it starts and never dedups against a marked
//! pack (nor builds on a marked page map), and refuses to commit its manifest if more
//! than the grace period (read from the same object) has passed since then. So a
//! backup that started before a mark commits before the mark ripens, and the deleting
//! run sees its snapshot; a backup that started after a mark does not use the marked
//! object. Packs a running backup has uploaded but not yet referenced are marked like
//! any garbage, and are referenced by the time the mark ripens. Lowering the grace
//! period cannot shorten it for backups already running: marks made within the old
//! period after the change keep the old one.
//!
//! Prune runs exclude each other with `prune/lock` (create-if-absent, refreshed while
//! the run works): two prunes would overwrite each other's state. A lock is stale, and
//! taken over, when it was not refreshed for 30 minutes, or at once when it names this
//! host and a process that no longer exists (a killed prune does not block the next).
//!
//! # Crash safety
//!
//! Order inside a run: new packs (repack) → their index → consolidated index → delete
//! ripe indexes → delete ripe packs and maps → write the new state. Killed anywhere,
//! every snapshot still restores: a chunk is only ever deleted after another pack that
//! holds it is indexed, and restore ignores index entries of packs that are gone.

// (tidy: long file — the plan and the apply phase share the prune state, its lock and
// the repacking; the design notes above are half of it.)

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use sqlvault_format::{ChunkId, IndexEntry, ObjectId, layout};
use sqlvault_store::StoreError;

use crate::error::{Error, ErrorKind, Result, corrupt};
use crate::packer::{self, Packer};
use crate::repo::{Repo, Skipped, now_ms};

/// Default grace period: longer than any backup of a SQLite database should take.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);
/// The shortest grace a user may record ([`check_grace`]). The grace is also the
/// longest a backup or copy may run and still commit, on every host that uses the
/// repository: below the time a backup takes, every backup fails (exit 14) and what it
/// uploaded becomes garbage. One hour covers a full backup of tens of GiB over a slow
/// uplink (a 100 GiB database at 30 MB/s); quicker deletion is what
/// `--no-running-backups` is for, not a short grace.
pub const MIN_GRACE: Duration = Duration::from_secs(3600);

/// Refuses (`prune.grace-too-short`, usage) a grace below [`MIN_GRACE`], before it can
/// be recorded in the repository and make every backup fail.
pub fn check_grace(grace: Duration) -> Result<()> {
    if grace < MIN_GRACE {
        return Err(Error::new(
            ErrorKind::Usage,
            "prune.grace-too-short",
            format!(
                "--grace {} is below the minimum of {}: every backup or copy that runs longer than the grace fails, on every host (marked data can be deleted at once only while no backup runs)",
                crate::retention::describe(grace),
                crate::retention::describe(MIN_GRACE)
            ),
        ));
    }
    Ok(())
}
/// Added to the grace before a mark ripens, for clock differences between prune hosts
/// and the time the state PUT takes: a tenth of the grace, at most 10 minutes.
const SKEW_MS: i64 = 10 * 60 * 1000;

fn ripens_at(m: &Mark) -> i64 {
    m.at_ms + m.grace_ms + (m.grace_ms / 10).min(SKEW_MS)
}
/// A prune lock not refreshed for this long belongs to a dead prune.
const LOCK_STALE_MS: i64 = 30 * 60 * 1000;

/// One object marked for deletion.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Mark {
    /// Object key (`packs/<id>`, `maps/<id>`, `index/<id>`).
    pub key: String,
    /// When it was marked (prune host's clock).
    pub at_ms: i64,
    /// The grace that applies to this mark.
    pub grace_ms: i64,
}

/// `prune/pending`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PruneState {
    pub version: u32,
    /// The grace period backups must commit within.
    pub grace_ms: i64,
    /// A grace in force before the last change, and until when it still binds marks.
    #[serde(default)]
    pub prev_grace_ms: i64,
    #[serde(default)]
    pub prev_grace_until_ms: i64,
    pub marks: Vec<Mark>,
}

impl Default for PruneState {
    fn default() -> Self {
        PruneState {
            version: 1,
            grace_ms: DEFAULT_GRACE.as_millis() as i64,
            prev_grace_ms: 0,
            prev_grace_until_ms: 0,
            marks: Vec::new(),
        }
    }
}

impl PruneState {
    /// Ids of the packs marked for deletion.
    pub(crate) fn marked_packs(&self) -> HashSet<ObjectId> {
        self.marked_ids(layout::PACKS)
    }

    /// Ids of the page maps marked for deletion.
    pub(crate) fn marked_maps(&self) -> HashSet<ObjectId> {
        self.marked_ids(layout::MAPS)
    }

    fn marked_ids(&self, dir: &str) -> HashSet<ObjectId> {
        self.marks
            .iter()
            .filter_map(|m| m.key.strip_prefix(dir)?.strip_prefix('/')?.parse().ok())
            .collect()
    }

    /// The grace as a duration.
    pub(crate) fn grace(&self) -> Duration {
        Duration::from_millis(self.grace_ms.max(0) as u64)
    }
}

/// Reads `prune/pending` (the default state when no prune ever ran).
pub(crate) async fn load_state(repo: &Repo) -> Result<PruneState> {
    match repo.store.get(layout::PRUNE_PENDING).await {
        Ok(ct) => {
            // Named with its key and repository: a damaged state stops every prune of
            // that repository, so the error must say where to look.
            let what = format!("prune state ({} of {})", layout::PRUNE_PENDING, repo.store.describe());
            let body = repo.unseal_meta(&what, &ct)?;
            let st: PruneState = serde_json::from_str(&body).map_err(|e| corrupt(what, e))?;
            if st.version != 1 {
                return Err(Error::new(
                    ErrorKind::Integrity,
                    "repo.unknown-version",
                    format!("prune state version {} is not known to this sqlvault", st.version),
                ));
            }
            Ok(st)
        }
        Err(e) if e.is_not_found() => Ok(PruneState::default()),
        Err(e) => Err(e.into()),
    }
}

/// The prune state a backup or copy dedups against, read before any dedup decision.
/// `None` (after a warning) when it cannot be read for another reason than the store:
/// then nothing stored can be trusted to stay, and everything is uploaded.
pub(crate) async fn state_for_dedup(repo: &Repo) -> Result<Option<PruneState>> {
    match load_state(repo).await {
        Ok(st) => Ok(Some(st)),
        Err(e) if e.kind() == ErrorKind::Store => Err(e),
        Err(e) => {
            tracing::warn!(
                "prune state of {} unreadable ({}); uploading everything",
                repo.store.describe(),
                e.one_line()
            );
            Ok(None)
        }
    }
}

/// The commit rule of backups and copies: refused (`code`, exit 14) once `grace` has
/// passed since `read`, the prune-state read its dedup decisions were checked against,
/// as a prune may since have marked and deleted a pack the snapshot relies on.
pub(crate) fn within_grace(
    repo: &Repo,
    read: Instant,
    grace: Duration,
    code: &'static str,
    subject: &str,
) -> Result<()> {
    if read.elapsed() >= grace {
        return Err(Error::new(
            ErrorKind::Busy,
            code,
            format!(
                "{subject} took longer than the prune grace period of {} ({}): not committing it, as prune may have deleted data it relies on: run it again, or raise the grace period",
                repo.store.describe(),
                crate::retention::describe(grace)
            ),
        ));
    }
    Ok(())
}

async fn save_state(repo: &Repo, st: &PruneState) -> Result<()> {
    let ct = repo.seal_meta(&serde_json::to_string(st).expect("serialises"))?;
    repo.store.put(layout::PRUNE_PENDING, Bytes::from(ct)).await?;
    Ok(())
}

/// Options for [`prune`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PruneOptions {
    /// Plan only: no lock, no writes.
    pub dry_run: bool,
    /// Grace period to record (default: keep the repository's, 24 h at first).
    pub grace: Option<Duration>,
    /// Repack a pack when less than this fraction of its chunk bytes is referenced.
    pub repack_below: f64,
    /// Size of repacked packs.
    pub pack_target: usize,
    /// The caller asserts that no backup or copy is running against the repository:
    /// nothing unreferenced can then be about to be referenced, so every mark already
    /// made is ripe in this run (deleted if still unreferenced) and a lowered grace
    /// binds at once instead of after the old grace has passed. Objects this run finds
    /// unreferenced for the first time are only marked, as always.
    pub no_running_backups: bool,
    /// Start afresh when the stored state cannot be read (damaged, or sealed by another
    /// key), instead of refusing. Its marks are lost: unreferenced objects are marked
    /// again and wait a new grace period, packs an earlier repack made redundant (their
    /// chunks are held by the new packs too) stay unreclaimed, and a grace once raised
    /// above this run's must be given again.
    pub reset_damaged_state: bool,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            dry_run: false,
            grace: None,
            repack_below: 0.5,
            pack_target: 16 << 20,
            no_running_backups: false,
            reset_damaged_state: false,
        }
    }
}

impl PruneOptions {
    /// Plans without changing anything.
    pub fn with_dry_run(mut self, yes: bool) -> Self {
        self.dry_run = yes;
        self
    }
    /// Sets the grace period recorded in the repository.
    pub fn with_grace(mut self, g: Option<Duration>) -> Self {
        self.grace = g;
        self
    }
    /// Asserts that no backup is running (see the field).
    pub fn with_no_running_backups(mut self, yes: bool) -> Self {
        self.no_running_backups = yes;
        self
    }
    /// Replaces a state that cannot be read (see the field).
    pub fn with_reset_damaged_state(mut self, yes: bool) -> Self {
        self.reset_damaged_state = yes;
        self
    }
    /// Sets the repack threshold (0 disables repacking).
    pub fn with_repack_below(mut self, f: f64) -> Self {
        self.repack_below = f;
        self
    }
}

/// Objects and bytes.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Tally {
    /// Packs.
    pub packs: usize,
    /// Page maps and chunk sequences.
    pub maps: usize,
    /// Index objects.
    pub indexes: usize,
    /// Bytes stored in them.
    pub bytes: u64,
}

impl Tally {
    /// Counts one object by its key (`packs/…`, `maps/…`, `index/…`).
    fn count(&mut self, key: &str, size: u64) {
        match key.split('/').next() {
            Some(d) if d == layout::PACKS => self.packs += 1,
            Some(d) if d == layout::MAPS => self.maps += 1,
            _ => self.indexes += 1,
        }
        self.bytes += size;
    }
}

/// What prune did about S3 Object Lock ([`crate::immutable`]).
#[derive(Debug, Clone, Default, Serialize)]
pub struct LockReport {
    /// Ripe objects not deleted because their lock has not ended (their marks stay).
    pub held: Tally,
    /// When the last of those locks ends (ms).
    pub held_until_ms: Option<i64>,
    /// Locks of objects kept snapshots reference, extended (nothing in a dry run).
    pub extended: crate::immutable::Extended,
}

/// What [`prune`] did (or would do).
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    /// Ripe packs kept because nothing proved their referenced chunks are held by a
    /// pack that stays (no identity to read pack trailers, a trailer that disagrees
    /// with the indexes), or because an index could not be read.
    pub kept_in_doubt: usize,
    /// Objects that are not sealed by this repository, skipped (never deleted).
    pub skipped: Vec<Skipped>,
    /// Nothing was changed.
    pub dry_run: bool,
    /// Snapshots whose references were kept.
    pub snapshots: usize,
    /// Packs in the repository before the run.
    pub packs: usize,
    /// Their bytes.
    pub pack_bytes: u64,
    /// Deleted now: marked by an earlier run at least the grace period ago and still
    /// unreferenced.
    pub deleted: Tally,
    /// Newly marked for deletion by a later run.
    pub marked: Tally,
    /// Marked earlier and still waiting for the grace period.
    pub waiting: Tally,
    /// Marks dropped because the object is referenced again.
    pub unmarked: usize,
    /// Under S3 Object Lock: what the lock held back and what was extended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<LockReport>,
    /// Packs whose live chunks were rewritten into new packs (the old ones are marked).
    pub repacked: usize,
    /// Chunks rewritten.
    pub repacked_chunks: usize,
    /// New packs written by repacking.
    pub repack_packs_written: usize,
    /// Why repacking was skipped, if it was.
    pub repack_skipped: Option<String>,
    /// Consolidated index objects written.
    pub indexes_written: usize,
    /// The grace period, seconds.
    pub grace_seconds: u64,
    /// When the earliest waiting mark ripens (ms since the epoch).
    pub next_deletion_ms: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct LockBody {
    host: String,
    pid: u32,
    token: String,
    started_ms: i64,
    refreshed_ms: i64,
}

/// A lock object's body; `None` when it does not decrypt, authenticate or parse (a
/// lock nobody can read is treated as stale).
fn decode_lock(repo: &Repo, ct: &[u8]) -> Option<LockBody> {
    let body = repo.unseal_meta("prune lock", ct).ok()?;
    serde_json::from_str(&body).ok()
}

/// The lock names this host and a process that is not running.
fn dead_here(h: &LockBody) -> bool {
    if h.host != crate::session::machine_hostname() || h.pid == 0 {
        return false;
    }
    crate::session::process_gone(h.pid)
}

struct PruneLock {
    repo: Repo,
    body: LockBody,
}

impl PruneLock {
    async fn acquire(repo: &Repo) -> Result<PruneLock> {
        let now = now_ms();
        let body = LockBody {
            host: crate::session::machine_hostname(),
            pid: std::process::id(),
            token: ObjectId::random().to_string(),
            started_ms: now,
            refreshed_ms: now,
        };
        let lock = PruneLock {
            repo: repo.clone(),
            body,
        };
        for attempt in 0..2 {
            match repo.store.put_if_absent(layout::PRUNE_LOCK, lock.encode()?).await {
                Ok(()) => return Ok(lock),
                Err(StoreError::AlreadyExists { .. }) if attempt == 0 => {
                    let held = match repo.store.get(layout::PRUNE_LOCK).await {
                        Ok(ct) => decode_lock(repo, &ct),
                        Err(e) if e.is_not_found() => continue,
                        Err(e) => return Err(e.into()),
                    };
                    match held {
                        Some(h) if now_ms() - h.refreshed_ms < LOCK_STALE_MS && !dead_here(&h) => {
                            return Err(Error::new(
                                ErrorKind::Busy,
                                "prune.locked",
                                format!(
                                    "another prune holds {} (host {}, pid {}, started {} s ago); a lock not refreshed for 30 minutes is taken over",
                                    repo.store.describe(),
                                    h.host,
                                    h.pid,
                                    (now_ms() - h.started_ms) / 1000
                                ),
                            ));
                        }
                        Some(h) => tracing::warn!(
                            "taking over the prune lock of {} left by host {} pid {} (process gone, or not refreshed for {} min)",
                            repo.store.describe(),
                            h.host,
                            h.pid,
                            (now_ms() - h.refreshed_ms) / 60_000
                        ),
                        None => tracing::warn!("replacing an unreadable prune lock in {}", repo.store.describe()),
                    }
                    repo.store.delete(layout::PRUNE_LOCK).await?;
                }
                Err(StoreError::AlreadyExists { .. }) => {
                    return Err(Error::new(
                        ErrorKind::Busy,
                        "prune.locked",
                        format!("another prune took the lock of {} first", repo.store.describe()),
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    fn encode(&self) -> Result<Bytes> {
        Ok(Bytes::from(
            self.repo
                .seal_meta(&serde_json::to_string(&self.body).expect("serialises"))?,
        ))
    }

    /// Confirms the lock is still ours and extends it. A prune whose lock was taken
    /// over (it stalled for 30 minutes) stops before changing anything else.
    async fn refresh(&mut self) -> Result<()> {
        let ct = self.repo.store.get(layout::PRUNE_LOCK).await;
        let ours = match ct {
            Ok(ct) => decode_lock(&self.repo, &ct).is_some_and(|h| h.token == self.body.token),
            Err(e) if e.is_not_found() => false,
            Err(e) => return Err(e.into()),
        };
        if !ours {
            return Err(Error::new(
                ErrorKind::Busy,
                "prune.lock-lost",
                format!(
                    "this prune's lock on {} was taken over by another prune; stopping",
                    self.repo.store.describe()
                ),
            ));
        }
        self.body.refreshed_ms = now_ms();
        self.repo.store.put(layout::PRUNE_LOCK, self.encode()?).await?;
        Ok(())
    }

    async fn release(self) {
        if let Err(e) = self.repo.store.delete(layout::PRUNE_LOCK).await {
            tracing::warn!("could not release the prune lock: {e}");
        }
    }
}

/// Prunes the repository (see the module documentation for the protocol).
/// Deleting and marking need only the write key (metadata); repacking needs an
/// identity and is skipped, with the reason in the report, without one.
pub async fn prune(repo: &Repo, opts: &PruneOptions) -> Result<PruneReport> {
    // Cancelled: stops before the lock, before each deletion and between repacked packs;
    // a prune stopped there is a prune killed there (its crash contract holds).
    repo.session.cancel().check()?;
    if opts.dry_run {
        return run(repo, opts, None).await;
    }
    let mut lock = PruneLock::acquire(repo).await?;
    let r = run(repo, opts, Some(&mut lock)).await;
    lock.release().await;
    r
}

/// Every surviving pack that a doomed index lists, to go into one new index.
fn surviving_packs(v: &View, delete_indexes: &[String], gone: &HashSet<ObjectId>) -> Vec<packer::SealedPack> {
    let doomed: HashSet<&String> = delete_indexes.iter().collect();
    let mut keep: Vec<packer::SealedPack> = Vec::new();
    let mut seen = HashSet::new();
    for (n, ps) in &v.index_packs {
        if !doomed.contains(n) {
            continue;
        }
        for p in ps {
            if !gone.contains(p)
                && seen.insert(*p)
                && let Some(es) = v.entries.get(p)
            {
                keep.push(packer::SealedPack {
                    id: *p,
                    entries: sqlvault_format::encode_entries(es),
                    chunks: es.len() as u64,
                    size: object_size(v, &key(layout::PACKS, p)).unwrap_or(0),
                });
            }
        }
    }
    keep
}

/// What the repository holds and what its snapshots reference, at one moment.
struct View {
    snapshots: usize,
    /// Under Object Lock: what the snapshots of the protection period reference.
    young: Option<Young>,
    referenced: HashSet<ChunkId>,
    referenced_maps: HashSet<ObjectId>,
    packs: HashMap<ObjectId, u64>,
    maps: HashMap<ObjectId, u64>,
    indexes: HashMap<String, u64>,
    /// Entries of each pack that exists: the union over every index that lists it (a
    /// chunk any index places in a pack counts as held there for keeping it, so an
    /// index that omits or misplaces chunks cannot make a pack look unused).
    entries: HashMap<ObjectId, Vec<IndexEntry>>,
    /// Packs each index lists.
    index_packs: HashMap<String, Vec<ObjectId>>,
    /// Objects under `snapshots/` and `index/` not sealed with the repository's
    /// secret: skipped, reported, never deleted.
    skipped: Vec<Skipped>,
}

fn ids_of(list: Vec<(String, u64)>) -> HashMap<ObjectId, u64> {
    // Names that are not ids (strays) are never touched.
    list.into_iter()
        .filter_map(|(n, s)| n.parse().ok().map(|id| (id, s)))
        .collect()
}

/// Whether prune may go on without this object: one the repository's metadata key
/// cannot open was written by someone without the secret (a bucket writer's junk) and
/// references nothing a reader would restore. Anything else unreadable (damage to an
/// object sealed by the repository) stops prune: never delete on partial knowledge.
fn foreign(e: &Error) -> bool {
    e.code() == "repo.foreign-object"
}

/// What the snapshots made since a time reference: under Object Lock, what prune keeps
/// locked (immutable.rs).
#[derive(Default)]
struct Young {
    chunks: HashSet<ChunkId>,
    maps: HashSet<ObjectId>,
    manifests: Vec<ObjectId>,
}

async fn view(repo: &Repo, young_since: Option<i64>) -> Result<View> {
    let (snaps, mut skipped) = repo.snapshots_checked().await?;
    if let Some(s) = skipped.iter().find(|s| s.code != "repo.foreign-object") {
        return Err(Error::new(
            ErrorKind::Integrity,
            "prune.refused",
            format!(
                "prune refused: snapshot object {} cannot be read (run `sqlvault check`): {}",
                s.key, s.message
            ),
        ));
    }
    let mut referenced = HashSet::new();
    let mut referenced_maps = HashSet::new();
    let mut young = young_since.map(|_| Young::default());
    for m in &snaps {
        referenced_maps.extend(m.maps.iter().map(|r| r.id));
        let ids = repo
            .chunk_ids(m)
            .await
            .map_err(|e| refuse(&format!("snapshot {} cannot be read", m.id.short()), e))?;
        if let (Some(y), Some(since)) = (young.as_mut(), young_since)
            && m.created_ms >= since
        {
            y.chunks.extend(ids.iter().copied());
            y.maps.extend(m.maps.iter().map(|r| r.id));
            y.manifests.push(m.id);
        }
        referenced.extend(ids);
    }
    // Replication segments are roots as manifests are: their delta maps and every
    // chunk those list stay (forget keeps a chain's base while it has segments).
    for seg in crate::pitr::all_segments(repo)
        .await
        .map_err(|e| refuse("a replication segment cannot be read", e))?
    {
        referenced_maps.extend(seg.maps.iter().map(|r| r.id));
        let what = format!("segment {} of chain {}", seg.seq, seg.chain.short());
        let mut ids = Vec::new();
        repo.each_map_of(&seg.maps, &what, |r, pt| {
            sqlvault_format::PageMap::decode_with(pt, |_, id| ids.push(id))
                .map(|_| ())
                .map_err(|e| crate::error::corrupt(format!("page map {}", r.id.short()), e))
        })
        .await
        .map_err(|e| refuse(&format!("{what} cannot be read"), e))?;
        if let (Some(y), Some(since)) = (young.as_mut(), young_since)
            && seg.observed_ms >= since
        {
            y.chunks.extend(ids.iter().copied());
            y.maps.extend(seg.maps.iter().map(|r| r.id));
        }
        referenced.extend(ids);
    }
    let packs = ids_of(repo.store.list(layout::PACKS).await?);
    let maps = ids_of(repo.store.list(layout::MAPS).await?);
    let indexes: HashMap<String, u64> = repo.store.list(layout::INDEX).await?.into_iter().collect();
    let names: Vec<String> = indexes.keys().cloned().collect();
    let loaded: Vec<(String, Option<sqlvault_format::IndexFile>)> =
        futures::stream::iter(names.into_iter().map(|n| async move {
            match repo.load_index(&n).await {
                Ok((idx, _)) => Ok((n, Some(idx))),
                Err(e) if foreign(&e) => Ok((n, None)),
                Err(e) => Err(refuse(
                    &format!("index {} cannot be read", crate::repo::escape_name(&n)),
                    e,
                )),
            }
        }))
        .buffer_unordered(8)
        .try_collect()
        .await?;
    let mut entries: HashMap<ObjectId, Vec<IndexEntry>> = HashMap::new();
    let mut index_packs: HashMap<String, Vec<ObjectId>> = HashMap::new();
    for (n, idx) in loaded {
        let Some(idx) = idx else {
            skipped.push(Skipped {
                key: format!("{}/{}", layout::INDEX, crate::repo::escape_name(&n)),
                code: "repo.foreign-object",
                message: "not sealed by this repository".into(),
            });
            continue;
        };
        let list = index_packs.entry(n).or_default();
        for sec in idx.packs {
            list.push(sec.pack);
            if packs.contains_key(&sec.pack) {
                entries.entry(sec.pack).or_default().extend(sec.entries);
            }
        }
    }
    for es in entries.values_mut() {
        es.sort_by_key(|e| (e.frame_offset, e.offset, e.id));
        es.dedup();
    }
    for s in &skipped {
        tracing::warn!("prune skips {}: {}", s.key, s.message);
    }
    Ok(View {
        snapshots: snaps.len(),
        young,
        referenced,
        referenced_maps,
        packs,
        maps,
        indexes,
        entries,
        index_packs,
        skipped,
    })
}

/// Prune never deletes on partial knowledge: an unreadable snapshot or index stops it.
fn refuse(what: &str, e: Error) -> Error {
    if e.kind() == ErrorKind::Store {
        return e;
    }
    Error::new(
        e.kind(),
        "prune.refused",
        format!("prune refused: {what} (run `sqlvault check`): {}", e.one_line()),
    )
}

async fn run(repo: &Repo, opts: &PruneOptions, mut lock: Option<&mut PruneLock>) -> Result<PruneReport> {
    // A state that cannot be read stops prune (it may hold marks about to ripen) until
    // the operator says to start afresh. Forgetting marks is safe: an unreferenced
    // object is marked again and waits a whole new grace period (a pack a repack made
    // redundant is not: it stays, costing space, not data), and backups that met the
    // damaged state trusted no stored data meanwhile. The state of a newer sqlvault and
    // the store's own errors are never replaced.
    let mut st = match load_state(repo).await {
        Ok(st) => st,
        Err(e) if matches!(e.kind(), ErrorKind::Integrity | ErrorKind::Auth) && e.code() != "repo.unknown-version" => {
            if !opts.reset_damaged_state {
                return Err(Error::new(
                    ErrorKind::Integrity,
                    "prune.state-damaged",
                    format!(
                        "the prune state of {} cannot be trusted; starting it afresh loses its marks (docs/format.md#prune)",
                        repo.store.describe()
                    ),
                )
                .with_source(e));
            }
            tracing::warn!(
                "replacing the unreadable prune state of {} ({}): marks restart their grace period",
                repo.store.describe(),
                e.one_line()
            );
            PruneState::default()
        }
        Err(e) => return Err(e),
    };
    // "now" is taken before the view: a mark is ripe only if it was ripe before we
    // looked, so every backup that could have used the object has committed by then.
    let now = now_ms();
    if let Some(g) = opts.grace {
        let g = g.as_millis() as i64;
        if opts.no_running_backups {
            st.prev_grace_until_ms = 0;
        } else if g < st.grace_ms && !opts.dry_run {
            // Backups running now read the old grace: marks made within it keep it.
            st.prev_grace_ms = st.grace_ms;
            st.prev_grace_until_ms = now + st.grace_ms + SKEW_MS;
        }
        st.grace_ms = g;
    }
    if st.grace_ms < MIN_GRACE.as_millis() as i64 {
        // Recorded by an earlier sqlvault, which accepted any grace: every backup that
        // runs longer than it fails, on every host.
        tracing::warn!(
            "the recorded grace period of {} is {}, below the minimum of {}: backups running longer fail; raise it",
            repo.store.describe(),
            crate::retention::describe(Duration::from_millis(st.grace_ms.max(0) as u64)),
            crate::retention::describe(MIN_GRACE)
        );
    }
    let mark_grace = if now < st.prev_grace_until_ms {
        st.grace_ms.max(st.prev_grace_ms)
    } else {
        st.grace_ms
    };
    // Under Object Lock: what is still locked is not deleted (its mark stays), and what
    // the snapshots of the protection period reference keeps a lock far enough ahead.
    let object_lock = crate::immutable::lock_state(repo).await?;
    let v = view(repo, object_lock.as_ref().map(|l| now - l.protect_ms())).await?;

    // Marks of objects that are gone are dropped (an earlier run was killed after
    // deleting them, or someone else did).
    st.marks.retain(|m| object_size(&v, &m.key).is_some());
    // The grace exists for backups (and copies) that may be running: one that read the
    // state before a mark may still reference the object until it commits. The caller
    // asserting that none runs removes that reason, so every earlier mark is ripe now;
    // the checks below (still unreferenced, held elsewhere) apply as always.
    let ripe: HashSet<String> = st
        .marks
        .iter()
        .filter(|m| opts.no_running_backups || now >= ripens_at(m))
        .map(|m| m.key.clone())
        .collect();

    // Which packs may go: ripe, and every referenced chunk they hold — by any index,
    // and by their own trailer when this run can read packs — is in the trailer of a
    // pack that stays. An index alone is never proof that data lives elsewhere: a
    // pack that holds a referenced chunk is kept when this run cannot read trailers
    // (no identity), and a pack no index lists is kept while an index is unreadable.
    let index_doubt = v.skipped.iter().any(|s| s.key.starts_with(layout::INDEX));
    let mut ripe_packs: Vec<ObjectId> = v
        .packs
        .keys()
        .filter(|p| ripe.contains(&key(layout::PACKS, p)))
        .copied()
        .collect();
    ripe_packs.sort();
    let ripe_set: HashSet<ObjectId> = ripe_packs.iter().copied().collect();
    let mut holders: HashMap<ChunkId, Vec<ObjectId>> = HashMap::new();
    for (p, es) in &v.entries {
        if !ripe_set.contains(p) {
            for e in es.iter().filter(|e| v.referenced.contains(&e.id)) {
                holders.entry(e.id).or_default().push(*p);
            }
        }
    }
    let mut trailers = Trailers::default();
    let mut delete_packs: Vec<ObjectId> = Vec::new();
    let mut kept_in_doubt = 0usize;
    for p in &ripe_packs {
        let listed = v.entries.get(p);
        if listed.is_none() && index_doubt {
            kept_in_doubt += 1;
            continue;
        }
        let mut needed: Vec<ChunkId> = listed
            .into_iter()
            .flatten()
            .map(|e| e.id)
            .filter(|id| v.referenced.contains(id))
            .collect();
        if repo.can_read_data
            && let Some(own) = trailers.get(repo, p).await?
        {
            needed.extend(own.iter().filter(|id| v.referenced.contains(id)));
        }
        needed.sort();
        needed.dedup();
        let mut proven = repo.can_read_data || needed.is_empty();
        for c in &needed {
            if !proven {
                break;
            }
            proven = false;
            for z in holders.get(c).into_iter().flatten() {
                if trailers.get(repo, z).await?.is_some_and(|t| t.contains(c)) {
                    proven = true;
                    break;
                }
            }
        }
        if proven {
            delete_packs.push(*p);
        } else {
            kept_in_doubt += 1;
        }
    }
    let mut held_keys: HashSet<String> = HashSet::new();
    let mut delete_maps: Vec<ObjectId> = v
        .maps
        .keys()
        .filter(|m| ripe.contains(&key(layout::MAPS, m)) && !v.referenced_maps.contains(m))
        .copied()
        .collect();
    let mut delete_indexes: Vec<String> = v
        .indexes
        .keys()
        .filter(|n| ripe.contains(&key(layout::INDEX, n)))
        .cloned()
        .collect();
    let mut lock_rep = None;
    let mut listed_ms: HashMap<String, i64> = HashMap::new();
    if let Some(ol) = &object_lock {
        listed_ms = repo
            .store
            .list_versions("")
            .await?
            .into_iter()
            .map(|o| (o.name, o.modified_ms))
            .collect();
        let candidates: Vec<(String, i64)> = delete_packs
            .iter()
            .map(|p| key(layout::PACKS, p))
            .chain(delete_maps.iter().map(|m| key(layout::MAPS, m)))
            .chain(delete_indexes.iter().map(|n| key(layout::INDEX, n)))
            .filter_map(|k| listed_ms.get(&k).map(|m| (k, *m)))
            .collect();
        let held = crate::immutable::still_locked(repo, ol, &candidates).await?;
        let mut r = LockReport::default();
        for (k, u) in &held {
            r.held.count(k, object_size(&v, k).unwrap_or(0));
            r.held_until_ms = Some(r.held_until_ms.unwrap_or(0).max(*u));
        }
        delete_packs.retain(|p| !held.contains_key(&key(layout::PACKS, p)));
        delete_maps.retain(|m| !held.contains_key(&key(layout::MAPS, m)));
        delete_indexes.retain(|n| !held.contains_key(&key(layout::INDEX, n)));
        held_keys = held.into_keys().collect();
        lock_rep = Some(r);
    }
    let gone: HashSet<ObjectId> = delete_packs.iter().copied().collect();
    // Packs and maps go after the indexes (which need a consolidated index first).
    let doomed: Vec<String> = delete_packs
        .iter()
        .map(|p| key(layout::PACKS, p))
        .chain(delete_maps.iter().map(|m| key(layout::MAPS, m)))
        .collect();
    let deleted_keys: HashSet<String> = doomed
        .iter()
        .cloned()
        .chain(delete_indexes.iter().map(|n| key(layout::INDEX, n)))
        .collect();
    let mut deleted = Tally::default();
    for k in &deleted_keys {
        deleted.count(k, object_size(&v, k).unwrap_or(0));
    }

    let mut rep = PruneReport {
        kept_in_doubt,
        skipped: v.skipped.clone(),
        dry_run: opts.dry_run,
        snapshots: v.snapshots,
        packs: v.packs.len(),
        pack_bytes: v.packs.values().sum(),
        deleted,
        marked: Tally::default(),
        waiting: Tally::default(),
        unmarked: 0,
        repacked: 0,
        repacked_chunks: 0,
        repack_packs_written: 0,
        repack_skipped: None,
        indexes_written: 0,
        grace_seconds: (st.grace_ms / 1000) as u64,
        next_deletion_ms: None,
        object_lock: lock_rep,
    };

    // Phase 2 of earlier marks: consolidated index first, then deletions.
    if !opts.dry_run {
        if !delete_indexes.is_empty() {
            let keep = surviving_packs(&v, &delete_indexes, &gone);
            if !keep.is_empty() {
                packer::write_index_for(repo, &keep).await?;
                rep.indexes_written += 1;
            }
            if let Some(l) = lock.as_deref_mut() {
                l.refresh().await?;
            }
            repo.session.cancel().check()?;
            for n in &delete_indexes {
                repo.store.delete(&key(layout::INDEX, n)).await?;
            }
        }
        if let Some(l) = lock.as_deref_mut() {
            l.refresh().await?;
        }
        repo.session.cancel().check()?;
        // Owned keys: a lazy map over borrowed ones would make prune's future not
        // `Send` (rust-lang/rust#102211), and a service spawns it.
        let store = &repo.store;
        futures::stream::iter(doomed.iter().cloned().map(|k| async move { store.delete(&k).await }))
            .buffer_unordered(8)
            .try_collect::<Vec<()>>()
            .await?;
    }
    // Every ripe mark goes: deleted, or referenced again (unmarked; deleted ⊆ ripe);
    // one held by Object Lock stays, to be deleted by a run after the lock ends.
    st.marks
        .retain(|m| !ripe.contains(&m.key) || held_keys.contains(&m.key));
    rep.unmarked = ripe.len() - deleted_keys.len() - held_keys.len();
    let marked: HashSet<String> = st.marks.iter().map(|m| m.key.clone()).collect();

    // Repack: live chunks of mostly-unused packs (not marked) into new packs.
    let mut repacked: Vec<ObjectId> = Vec::new();
    let candidates: Vec<ObjectId> = {
        // In a block of its own: a closure over a borrowed argument alive across an
        // await makes this future not `Send` (rust-lang/rust#102211).
        let live_fraction = |es: &Vec<IndexEntry>| -> (u64, u64) {
            let total: u64 = es.iter().map(|e| e.len as u64).sum();
            let live: u64 = es
                .iter()
                .filter(|e| v.referenced.contains(&e.id))
                .map(|e| e.len as u64)
                .sum();
            (live, total)
        };
        v.entries
            .iter()
            .filter(|(p, _)| !gone.contains(p) && !marked.contains(&key(layout::PACKS, p)))
            .filter(|(_, es)| {
                let (live, total) = live_fraction(es);
                live > 0 && (live as f64) < opts.repack_below * total as f64
            })
            .map(|(p, _)| *p)
            .collect()
    };
    if !candidates.is_empty() {
        if !repo.can_read_data {
            rep.repack_skipped = Some(format!(
                "{} mostly-unused packs need an identity (-i) to be repacked",
                candidates.len()
            ));
        } else if opts.dry_run {
            rep.repacked = candidates.len();
        } else {
            // Chunks held by packs that stay need not be copied again.
            let mut staying: HashSet<ChunkId> = HashSet::new();
            let cand: HashSet<ObjectId> = candidates.iter().copied().collect();
            for (p, es) in &v.entries {
                if !gone.contains(p) && !cand.contains(p) && !marked.contains(&key(layout::PACKS, p)) {
                    staying.extend(es.iter().map(|e| e.id));
                }
            }
            let mut pk = Packer::new(repo, opts.pack_target)?;
            repo.session.progress().start("repacking", None);
            for p in &candidates {
                let wanted: Vec<IndexEntry> = v.entries[p]
                    .iter()
                    .filter(|e| v.referenced.contains(&e.id) && !staying.contains(&e.id))
                    .copied()
                    .collect();
                repo.session.cancel().check()?;
                let chunks = match packer::read_chunks(repo, p, wanted).await {
                    Ok(c) => c,
                    Err(e) if e.kind() == ErrorKind::Store => return Err(e),
                    // An index entry that does not match the pack (damage, or an index
                    // written with a stolen write key): the pack stays as it is.
                    Err(e) => {
                        tracing::warn!("not repacking pack {}: {}", p.short(), e.one_line());
                        continue;
                    }
                };
                for (id, data) in chunks {
                    if staying.insert(id) {
                        pk.add(id, &data).await?;
                        repo.session.progress().advance(data.len() as u64);
                        rep.repacked_chunks += 1;
                    }
                }
                repacked.push(*p);
                if let Some(l) = lock.as_deref_mut() {
                    l.refresh().await?;
                }
            }
            let written = pk.finish().await?;
            repo.session.progress().finish();
            // Index the new packs before the old ones are marked.
            packer::write_index_for(repo, &written).await?;
            rep.repack_packs_written = written.len();
            rep.repacked = repacked.len();
        }
    }

    // Phase 1: new marks.
    let mark_at = now_ms();
    let mut new_marks: Vec<Mark> = Vec::new();
    // In a block of its own: a closure over a borrowed argument alive across an await
    // makes this future not `Send` (rust-lang/rust#102211).
    {
        let mut add = |key: String, size: u64, rep: &mut PruneReport| {
            if marked.contains(&key) || deleted_keys.contains(&key) {
                return;
            }
            rep.marked.count(&key, size);
            new_marks.push(Mark {
                key,
                at_ms: mark_at,
                grace_ms: mark_grace,
            });
        };
        let repacked_set: HashSet<ObjectId> = repacked.iter().copied().collect();
        let mut dead_packs: HashSet<ObjectId> = HashSet::new();
        for (p, size) in &v.packs {
            if gone.contains(p) {
                continue;
            }
            let unused = match v.entries.get(p) {
                // Not in any index: a backup still running, or one that died — unless an
                // index could not be read, which may be the one that lists it.
                None => !index_doubt,
                Some(es) => !es.iter().any(|e| v.referenced.contains(&e.id)),
            };
            if unused || repacked_set.contains(p) {
                dead_packs.insert(*p);
                add(key(layout::PACKS, p), *size, &mut rep);
            }
        }
        for (m, size) in &v.maps {
            if !v.referenced_maps.contains(m) {
                add(key(layout::MAPS, m), *size, &mut rep);
            }
        }
        // An index is consolidated (marked, then rewritten without its dead packs) when
        // it lists a pack that is gone or marked, or when there are many small ones.
        let many = v.indexes.len() > 32;
        for (n, size) in &v.indexes {
            let dead = v.index_packs.get(n).is_some_and(|ps| {
                ps.iter().any(|p| {
                    !v.packs.contains_key(p) || dead_packs.contains(p) || marked.contains(&key(layout::PACKS, p))
                })
            });
            if dead || many {
                add(key(layout::INDEX, n), *size, &mut rep);
            }
        }
    }
    // Marks of earlier runs still waiting for their grace period.
    for m in &st.marks {
        rep.waiting.count(&m.key, object_size(&v, &m.key).unwrap_or(0));
    }
    st.marks.extend(new_marks);
    rep.next_deletion_ms = st.marks.iter().map(ripens_at).min();
    if let (Some(ol), false) = (&object_lock, opts.dry_run) {
        let referenced = lock_referenced(&v, &listed_ms, repo.generation);
        let ext = crate::immutable::extend(repo, ol, &referenced).await?;
        if let Some(r) = rep.object_lock.as_mut() {
            r.extended = ext;
        }
    }
    if !opts.dry_run {
        if let Some(l) = lock {
            l.refresh().await?;
        }
        save_state(repo, &st).await?;
    }
    Ok(rep)
}

/// The chunk ids packs' own trailers list, read once per pack and run.
#[derive(Default)]
struct Trailers(HashMap<ObjectId, Option<HashSet<ChunkId>>>);

impl Trailers {
    /// `None` when the pack cannot be read (damaged, or not ours): it proves nothing.
    async fn get(&mut self, repo: &Repo, pack: &ObjectId) -> Result<Option<&HashSet<ChunkId>>> {
        if !self.0.contains_key(pack) {
            let t = match packer::read_trailer(repo, pack).await {
                Ok(es) => Some(es.into_iter().map(|e| e.id).collect()),
                Err(e) if e.kind() == ErrorKind::Store => return Err(e),
                Err(e) => {
                    tracing::warn!(
                        "prune cannot read the trailer of pack {}: {}",
                        pack.short(),
                        e.one_line()
                    );
                    None
                }
            };
            self.0.insert(*pack, t);
        }
        Ok(self.0[pack].as_ref())
    }
}

/// What the snapshots of the protection period need, with each object's listed
/// modification time: their manifests and page maps, the packs holding a chunk they
/// reference, the indexes listing those packs, and what opens the repository (marker,
/// config, the recipient sets up to the current generation). Only authenticated
/// manifests count: junk a bucket writer lists under `snapshots/` is never locked, and
/// a snapshot older than the period (one forget is waiting to remove) stops being
/// extended, so its lock runs out.
fn lock_referenced(v: &View, listed_ms: &HashMap<String, i64>, generation: u64) -> Vec<(String, i64)> {
    let Some(y) = &v.young else {
        return Vec::new();
    };
    let live_packs: HashSet<ObjectId> = v
        .entries
        .iter()
        .filter(|(_, es)| es.iter().any(|e| y.chunks.contains(&e.id)))
        .map(|(p, _)| *p)
        .collect();
    let mut keys: Vec<String> = live_packs.iter().map(|p| key(layout::PACKS, p)).collect();
    keys.extend(y.maps.iter().map(|m| key(layout::MAPS, m)));
    keys.extend(y.manifests.iter().map(layout::snapshot));
    keys.extend(
        v.index_packs
            .iter()
            .filter(|(_, ps)| ps.iter().any(|p| live_packs.contains(p)))
            .map(|(n, _)| key(layout::INDEX, n)),
    );
    keys.push(layout::MARKER.to_string());
    keys.push(layout::CONFIG.to_string());
    keys.extend((0..=generation).map(layout::recipient_set));
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| listed_ms.get(&k).map(|m| (k, *m)))
        .collect()
}

/// An object key under the repository prefix: `packs/<id>`, `maps/<id>`, `index/<name>`.
fn key(dir: &str, name: impl std::fmt::Display) -> String {
    format!("{dir}/{name}")
}

/// The size of the object `key` names in the view, `None` when it does not exist.
fn object_size(v: &View, key: &str) -> Option<u64> {
    let (dir, name) = key.split_once('/')?;
    match dir {
        d if d == layout::PACKS => v.packs.get(&name.parse().ok()?).copied(),
        d if d == layout::MAPS => v.maps.get(&name.parse().ok()?).copied(),
        d if d == layout::INDEX => v.indexes.get(name).copied(),
        _ => None,
    }
}
