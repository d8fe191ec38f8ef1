//! Immutable repositories: S3 Object Lock.
//!
//! # The choice
//!
//! object_store 0.14 has no Object Lock API. sqlvault therefore relies on the **bucket's
//! default retention** for everything it writes (S3 locks each new object version for
//! the default's days, with no request of ours; uploads carry the checksum such buckets
//! require), and signs three requests itself (`sqlvault_store::Store::object_lock`,
//! `retained_until`, `extend_lock`) for what defaults cannot do:
//!
//! - **Dedup keeps old objects alive.** A snapshot made today may reference a pack
//!   written a year ago, whose default lock ran out long since. `prune` (which already
//!   computes what snapshots reference) extends the lock of every object the snapshots
//!   of the last `P` reference — their manifests, page maps, packs and indexes, and the
//!   config, the marker and the recipient sets — whose lock ends within `P + P/4` to
//!   `now + P + P/2`, where `P` is the bucket's default retention (set by its owner;
//!   the days the cleartext marker declares are only checked by audit, as a bucket
//!   writer can rewrite them). As long as prune runs at least every `P/4`, every
//!   snapshot stays locked, with all it needs, at least `P` after it was made; older
//!   ones stop being extended, so forget can remove them once their locks end.
//!   Extensions are recorded on this host (`repos/<id>/locks`) so that each object is
//!   extended once per `P/4`, not at every run.
//! - **Deleting a locked object does not delete it**: in a versioned bucket a DELETE
//!   without a version adds a delete marker — the object vanishes from listings while
//!   its locked version stays, billed, until the lock ends. `forget` and `prune`
//!   therefore never delete what is still locked: an object whose default lock
//!   (`modified + days`) or recorded extension has not ended is skipped without a
//!   request; one that looks unlocked is confirmed with a HEAD of its retain-until date
//!   first. What was skipped is reported, with when it can go.
//!
//! Limits: a lock protects object *versions*; someone with delete rights can still hide
//! objects behind delete markers (recoverable: remove the markers), and sqlvault never
//! deletes versions, so freeing the space of what it deleted needs a lifecycle rule that
//! expires noncurrent versions and delete markers. GOVERNANCE locks can be lifted by a
//! principal with `s3:BypassGovernanceRetention`; COMPLIANCE locks by nobody. Lock
//! times compare this host's clock with S3's.

use std::collections::HashMap;
use std::path::PathBuf;

use futures::StreamExt;
use serde::Serialize;
use sqlvault_store::{BucketLock, LockMode};

use crate::error::{Error, ErrorKind, Result};
use crate::repo::{Repo, now_ms};

const DAY_MS: i64 = 86_400_000;

/// What a repository's bucket locks, and what the repository declared at `init`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockState {
    /// The bucket's configuration.
    pub bucket: BucketLock,
    /// The days `init --immutable-days` declared (recorded in the marker).
    pub declared_days: Option<u32>,
}

impl LockState {
    /// The protection period in ms: the bucket's default retention, which only the
    /// bucket's owner sets (the days declared in the cleartext marker are a claim
    /// audit checks, never a length sqlvault locks anything for).
    pub fn protect_ms(&self) -> i64 {
        i64::from(self.bucket.days.unwrap_or(0).min(36_500)) * DAY_MS
    }

    /// When the bucket's default lock on an object written at `modified_ms` ends.
    fn default_until(&self, modified_ms: i64) -> i64 {
        modified_ms + i64::from(self.bucket.days.unwrap_or(0)) * DAY_MS
    }

    /// The mode extensions use: the bucket default's, else GOVERNANCE.
    fn mode(&self) -> LockMode {
        self.bucket.mode.unwrap_or(LockMode::Governance)
    }
}

/// The repository's Object Lock state: `None` when the store is not S3 or its bucket
/// has no Object Lock (one signed GET).
pub async fn lock_state(repo: &Repo) -> Result<Option<LockState>> {
    match repo.store.object_lock().await? {
        Some(bucket) if bucket.enabled => Ok(Some(LockState {
            bucket,
            declared_days: repo.declared_lock_days,
        })),
        // Not allowed to read it (or a store without the API): fine for a repository
        // that never asked for a lock; one declared immutable must not go on blind.
        Some(BucketLock {
            unreadable: Some(why), ..
        }) => match repo.declared_lock_days {
            Some(d) => Err(Error::new(
                ErrorKind::Auth,
                "repo.lock-unreadable",
                format!(
                    "{} was declared immutable for {d} days, but its bucket's Object Lock configuration cannot be read ({why}): grant s3:GetBucketObjectLockConfiguration and s3:GetObjectRetention",
                    repo.store.describe()
                ),
            )),
            None => {
                tracing::debug!("the bucket's Object Lock configuration cannot be read ({why}): taken as none");
                Ok(None)
            }
        },
        _ => Ok(None),
    }
}

/// Refuses `init --immutable-days days` where the bucket cannot hold it: not S3, no
/// Object Lock, or a default retention shorter than `days` (or none).
fn check_init(lock: Option<BucketLock>, days: u32, place: &str) -> Result<()> {
    let refuse = |why: String| {
        Err(Error::new(
            ErrorKind::Usage,
            "init.lock-unavailable",
            format!("cannot make {place} immutable for {days} days: {why}"),
        ))
    };
    match lock {
        None => refuse("immutability needs an s3:// bucket with S3 Object Lock (for GCS use a bucket retention policy, for Azure an immutability policy, outside sqlvault)".into()),
        Some(b) if !b.enabled => refuse("the bucket does not have Object Lock enabled (it can only be enabled when the bucket is created, or by AWS support)".into()),
        Some(BucketLock { days: None, .. }) => refuse(
            "the bucket has Object Lock but no default retention; set one of at least that many days (aws s3api put-object-lock-configuration)".into(),
        ),
        Some(BucketLock { days: Some(d), .. }) if d < days => refuse(format!(
            "the bucket's default retention is {d} days, shorter than that; raise it (aws s3api put-object-lock-configuration) or declare fewer days"
        )),
        Some(_) => Ok(()),
    }
}

impl Repo {
    /// [`Repo::init`], declaring the repository immutable for `days` days when given:
    /// refused (`init.lock-unavailable`, before anything is written) unless the store
    /// is an S3 bucket with Object Lock and a default retention of at least that long.
    pub async fn init_immutable(
        session: &crate::Session,
        store: &sqlvault_store::Store,
        keys: crate::InitKeys,
        days: Option<u32>,
    ) -> Result<crate::InitReport> {
        if let Some(d) = days {
            session.register(store);
            check_init(store.object_lock().await?, d, store.describe())?;
        }
        Repo::init_declaring(session, store, keys, days).await
    }
}

/// The extensions this host made: key → until (ms).
struct Record {
    path: PathBuf,
    until: HashMap<String, i64>,
}

impl Record {
    fn load(repo: &Repo) -> Record {
        let path = crate::local::repo_dir(repo.session.state_dir(), &repo.repo_id).join("locks");
        let until = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (k, u) = l.split_once(' ')?;
                Some((k.to_string(), u.parse().ok()?))
            })
            .collect();
        Record { path, until }
    }

    fn save(&self) -> Result<()> {
        let mut keys: Vec<_> = self.until.iter().collect();
        keys.sort();
        let text: String = keys.into_iter().map(|(k, u)| format!("{k} {u}\n")).collect();
        crate::local::write_private(&self.path, text.as_bytes())
    }
}

/// When the lock of an object listed as written at `modified_ms` ends, as far as this
/// host knows without a request.
fn known_until(lock: &LockState, rec: &Record, key: &str, modified_ms: i64) -> i64 {
    lock.default_until(modified_ms)
        .max(rec.until.get(key).copied().unwrap_or(0))
}

/// Of `candidates` (key, listed modification time), those still locked now, with when
/// their lock ends. An object that looks unlocked is asked (a HEAD) before it is called
/// so: an extension by another host shows there.
pub(crate) async fn still_locked(
    repo: &Repo,
    lock: &LockState,
    candidates: &[(String, i64)],
) -> Result<HashMap<String, i64>> {
    let rec = Record::load(repo);
    let now = now_ms();
    let mut out = HashMap::new();
    let mut ask = Vec::new();
    for (k, m) in candidates {
        let u = known_until(lock, &rec, k, *m);
        if u > now {
            out.insert(k.clone(), u);
        } else {
            ask.push(k.clone());
        }
    }
    let asked: Vec<(String, std::result::Result<Option<i64>, sqlvault_store::StoreError>)> =
        futures::stream::iter(ask.into_iter().map(|k| async move {
            let u = repo.store.retained_until(&k).await;
            (k, u)
        }))
        .buffer_unordered(8)
        .collect()
        .await;
    let mut unknown = 0usize;
    for (k, u) in asked {
        match u {
            Ok(Some(u)) if u > now => {
                out.insert(k, u);
            }
            Ok(_) => {}
            // Whether it is locked cannot be told: kept, as if locked for a period.
            Err(e) => {
                if unknown == 0 {
                    tracing::warn!("cannot read the lock of {k}, kept: {e}");
                }
                unknown += 1;
                out.insert(k, now + lock.protect_ms().max(DAY_MS));
            }
        }
    }
    if unknown > 1 {
        tracing::warn!("{unknown} objects whose lock cannot be read were kept");
    }
    Ok(out)
}

/// What `extend` did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Extended {
    /// Objects whose lock was extended.
    pub objects: usize,
    /// Referenced objects whose lock already reached far enough.
    pub already: usize,
    /// Extensions S3 refused (no `s3:PutObjectRetention`, or a longer lock another host
    /// set in COMPLIANCE mode): the first error, for the report.
    pub failed: usize,
    /// The lock end the extended objects got (ms).
    pub until_ms: Option<i64>,
    /// The first refusal, as a one-line message.
    pub first_failure: Option<String>,
}

/// Extends the locks of `referenced` (key, listed modification time), the objects kept
/// snapshots need, so that each is locked at least the protection period ahead (module
/// docs).
pub(crate) async fn extend(repo: &Repo, lock: &LockState, referenced: &[(String, i64)]) -> Result<Extended> {
    let p = lock.protect_ms();
    let mut rep = Extended::default();
    if p == 0 {
        return Ok(rep);
    }
    let mut rec = Record::load(repo);
    let now = now_ms();
    let (threshold, target) = (now + p + p / 4, now + p + p / 2);
    // Owned keys: futures made by a closure over borrowed ones would make prune's
    // future not `Send` (rust-lang/rust#102211), and a service spawns it.
    let todo: Vec<String> = referenced
        .iter()
        .filter(|(k, m)| known_until(lock, &rec, k, *m) < threshold)
        .map(|(k, _)| k.clone())
        .collect();
    rep.already = referenced.len() - todo.len();
    let mode = lock.mode();
    let results: Vec<(String, Result<()>)> = futures::stream::iter(todo.into_iter().map(|k| async move {
        let r = repo.store.extend_lock(&k, mode, target).await.map_err(Error::from);
        (k, r)
    }))
    .buffer_unordered(8)
    .collect()
    .await;
    for (k, r) in results {
        match r {
            Ok(()) => {
                rep.objects += 1;
                rec.until.insert(k, target);
            }
            Err(e) => {
                rep.failed += 1;
                rep.first_failure.get_or_insert_with(|| e.one_line());
            }
        }
    }
    if rep.objects > 0 {
        rep.until_ms = Some(target);
        // Entries of objects no longer referenced are dropped with the next save.
        let live: std::collections::HashSet<&str> = referenced.iter().map(|(k, _)| k.as_str()).collect();
        rec.until.retain(|k, _| live.contains(k.as_str()));
        rec.save()?;
    }
    if let Some(f) = &rep.first_failure {
        tracing::warn!(
            "{} lock extension(s) refused in {}; first: {f}",
            rep.failed,
            repo.store.describe()
        );
    }
    Ok(rep)
}
