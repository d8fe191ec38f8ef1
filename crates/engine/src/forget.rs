//! `forget`: removes snapshot manifests by a retention policy ([`crate::retention`]).
//! Only manifests go; the data they referenced becomes garbage for `prune`.
//! Future-dated snapshots ([`retention::is_future_dated`]) take part in no rule and are
//! kept, marked `future-dated` in the plan: removing one is an operator's decision.
//!
//! A group is one database: its name *and* the host and source path its manifests
//! record ([`SourceId`]), so the snapshots of an unrelated file that happened to share
//! the name can never fill another's `--keep-*` buckets nor evict its history.
//! Manifests that record no source (older versions) form a group of their own per name.

use serde::Serialize;
use sqlvault_format::{Manifest, layout};

use crate::error::{Error, ErrorKind, Result};
use crate::names::SourceId;
use crate::repo::{Repo, now_ms};
use crate::retention::{self, Policy};

/// Options for [`forget`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ForgetOptions {
    /// The policy, applied to each database (name, host and source path) separately.
    pub policy: Policy,
    /// Only snapshots of this database name.
    pub name: Option<String>,
    /// Plan only.
    pub dry_run: bool,
    /// Allow a plan that removes every snapshot of a database name.
    pub allow_remove_all: bool,
    /// Point-in-time window: every state shipped by `replicate` within this long before
    /// now stays restorable (snapshots in it are kept, and the segments of every chain
    /// that reaches into it); the segments of chains that ended before it are removed,
    /// leaving their bases to the policy.
    pub pitr_window: Option<std::time::Duration>,
}

impl ForgetOptions {
    /// Options with `policy`.
    pub fn new(policy: Policy) -> Self {
        ForgetOptions {
            policy,
            ..Default::default()
        }
    }
    /// Restricts to one database name.
    pub fn with_name(mut self, name: Option<String>) -> Self {
        self.name = name;
        self
    }
    /// Plans without removing.
    pub fn with_dry_run(mut self, yes: bool) -> Self {
        self.dry_run = yes;
        self
    }
    /// Sets the point-in-time window.
    pub fn with_pitr_window(mut self, w: Option<std::time::Duration>) -> Self {
        self.pitr_window = w;
        self
    }
    /// Allows removing every snapshot of a name.
    pub fn with_allow_remove_all(mut self, yes: bool) -> Self {
        self.allow_remove_all = yes;
        self
    }
}

/// One snapshot in a forget plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlanEntry {
    /// Snapshot id.
    pub id: String,
    /// Creation time recorded in the manifest (ms since the epoch).
    pub created_ms: i64,
    /// Whether it stays.
    pub keep: bool,
    /// The rules that kept it (`"future-dated"` for a future-dated snapshot).
    pub reasons: Vec<String>,
    /// Its creation time is more than [`retention::CLOCK_SKEW`] ahead of this host's
    /// clock: kept, by no rule, for an operator to look at.
    pub future_dated: bool,
    /// Due to go, but its manifest is still under S3 Object Lock until then (ms): left
    /// in place, to be removed by a forget after that time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locked_until_ms: Option<i64>,
}

/// The plan for one database (name, host, source path), newest first.
#[derive(Debug, Clone, Serialize)]
pub struct GroupPlan {
    /// Database name.
    pub name: String,
    /// Host its snapshots were made on (empty: not recorded by the version that made them).
    pub host: String,
    /// Canonical source path on that host (empty: not recorded).
    pub source_path: String,
    /// Every snapshot of the name, newest first.
    pub snapshots: Vec<PlanEntry>,
}

/// What [`forget`] did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Serialize)]
pub struct ForgetReport {
    /// Nothing was removed.
    pub dry_run: bool,
    /// The policy applied.
    pub policy: Policy,
    /// Plans by database name.
    pub groups: Vec<GroupPlan>,
    /// Snapshots kept.
    pub kept: usize,
    /// Snapshots removed (or to remove).
    pub removed: usize,
    /// Snapshots the policy removes but S3 Object Lock still holds (counted in `kept`;
    /// each plan entry says until when).
    pub locked: usize,
    /// Future-dated snapshots (counted in `kept`).
    pub future_dated: usize,
    /// Replication segments removed (or to remove): those of chains that ended before
    /// the point-in-time window, and of chains whose base is gone.
    pub segments_removed: usize,
}

/// Applies the policy to the repository's snapshots, by database name, and deletes the
/// manifests of the snapshots it does not keep. Refuses a plan that removes every
/// snapshot of a name (an empty policy does) unless `allow_remove_all`.
pub async fn forget(repo: &Repo, opts: &ForgetOptions) -> Result<ForgetReport> {
    let snaps = repo.snapshots().await?;
    let mut names: Vec<(String, SourceId)> = snaps
        .iter()
        .filter(|m| opts.name.as_ref().is_none_or(|w| w == &m.name))
        .map(|m| (m.name.clone(), SourceId::of(m)))
        .collect();
    names.sort();
    names.dedup();
    if let Some(n) = &opts.name
        && names.is_empty()
    {
        return Err(Error::new(
            ErrorKind::NotFound,
            "snapshot.not-found",
            format!("no snapshot of {n} in {}", repo.store.describe()),
        ));
    }
    let now = now_ms();
    let mut groups = Vec::new();
    let mut doomed: Vec<&Manifest> = Vec::new();
    for (name, source) in names {
        let group: Vec<&Manifest> = snaps
            .iter()
            .filter(|m| m.name == name && SourceId::of(m) == source)
            .collect();
        let times: Vec<i64> = group.iter().map(|m| m.created_ms).collect();
        let mut verdicts = retention::apply(&times, now, &opts.policy, retention::local_civil);
        if let Some(w) = opts.pitr_window {
            let start = now - w.as_millis() as i64;
            for v in verdicts
                .iter_mut()
                .filter(|v| times[v.index] >= start && !v.future_dated)
            {
                v.keep = true;
                v.reasons
                    .push(format!("within the point-in-time window ({})", retention::describe(w)));
            }
        }
        // Future-dated snapshots are kept by no rule: they do not make a policy that
        // removes every real snapshot of the name acceptable.
        if verdicts.iter().any(|v| !v.future_dated)
            && !verdicts.iter().any(|v| v.keep && !v.future_dated)
            && !opts.allow_remove_all
        {
            return Err(Error::new(
                ErrorKind::Usage,
                "forget.would-remove-all",
                format!(
                    "the policy keeps none of the {} snapshots of {name} from {}: refusing (a keep rule must keep one, unless removing them all is asked for)",
                    verdicts.iter().filter(|v| !v.future_dated).count(),
                    source.describe()
                ),
            ));
        }
        doomed.extend(verdicts.iter().filter(|v| !v.keep).map(|v| group[v.index]));
        groups.push(GroupPlan {
            name,
            host: source.host,
            source_path: source.path,
            snapshots: verdicts
                .into_iter()
                .map(|v| PlanEntry {
                    id: group[v.index].id.to_string(),
                    created_ms: group[v.index].created_ms,
                    keep: v.keep,
                    reasons: v.reasons,
                    future_dated: v.future_dated,
                    locked_until_ms: None,
                })
                .collect(),
        });
    }
    // A replication chain's base stays while segments follow it: they are restorable
    // points only on top of it (point-in-time retention, which would remove chains as
    // a whole, is not there yet).
    // Chains that ended before the window: their segments go (first, so that a kill
    // leaves bases without segments, never segments without their base).
    let expired = match opts.pitr_window {
        Some(w) => crate::pitr::expired_chains(repo, &snaps, opts.name.as_deref(), now - w.as_millis() as i64).await?,
        None => Vec::new(),
    };
    let expired_ids: std::collections::HashSet<sqlvault_format::ObjectId> = expired.iter().map(|(c, _)| *c).collect();
    let mut chained = std::collections::HashSet::new();
    // The newest base of each database is kept even before its first segment: a
    // replicator may be appending to it right now.
    let mut newest: std::collections::HashMap<(String, SourceId), (i64, sqlvault_format::ObjectId)> =
        std::collections::HashMap::new();
    for m in snaps.iter().filter(|m| m.replicated) {
        let e = newest
            .entry((m.name.clone(), SourceId::of(m)))
            .or_insert((m.created_ms, m.id));
        if (m.created_ms, m.id) > *e {
            *e = (m.created_ms, m.id);
        }
    }
    chained.extend(newest.values().map(|(_, id)| *id));
    let candidates: Vec<sqlvault_format::ObjectId> = doomed
        .iter()
        .filter(|m| m.replicated && !chained.contains(&m.id) && !expired_ids.contains(&m.id))
        .map(|m| m.id)
        .collect();
    for id in candidates {
        if !repo.store.list(&layout::chain(&id)).await?.is_empty() {
            chained.insert(id);
        }
    }
    if !chained.is_empty() {
        doomed.retain(|m| !chained.contains(&m.id));
        for e in groups.iter_mut().flat_map(|g| g.snapshots.iter_mut()) {
            if !e.keep && chained.iter().any(|id| id.to_string() == e.id) {
                e.keep = true;
                e.reasons.push("replication chain".into());
            }
        }
    }
    // Under Object Lock, a manifest still locked is not deleted: the DELETE would only
    // hide it behind a delete marker while its locked version stays (immutable.rs).
    let mut locked = 0usize;
    if !doomed.is_empty()
        && let Some(lock) = crate::immutable::lock_state(repo).await?
    {
        let listed: std::collections::HashMap<String, i64> = repo
            .store
            .list_versions(layout::SNAPSHOTS)
            .await?
            .into_iter()
            .map(|o| (format!("{}/{}", layout::SNAPSHOTS, o.name), o.modified_ms))
            .collect();
        let candidates: Vec<(String, i64)> = doomed
            .iter()
            .map(|m| {
                let k = layout::snapshot(&m.id);
                let modified = listed.get(&k).copied().unwrap_or(m.created_ms);
                (k, modified)
            })
            .collect();
        let until = crate::immutable::still_locked(repo, &lock, &candidates).await?;
        doomed.retain(|m| !until.contains_key(&layout::snapshot(&m.id)));
        for e in groups.iter_mut().flat_map(|g| g.snapshots.iter_mut()) {
            if let Some(u) = until.get(&format!("{}/{}", layout::SNAPSHOTS, e.id)) {
                e.locked_until_ms = Some(*u);
                locked += 1;
            }
        }
        if locked > 0 {
            tracing::warn!(
                "{locked} snapshot(s) due to go are under S3 Object Lock until as late as {}: kept for now; a forget after that removes them",
                crate::retention::iso_time(until.values().copied().max().unwrap_or(0))
            );
        }
    }
    let removed = doomed.len();
    let kept = groups.iter().map(|g| g.snapshots.len()).sum::<usize>() - removed;
    let future_dated = groups
        .iter()
        .flat_map(|g| &g.snapshots)
        .filter(|e| e.future_dated)
        .count();
    if future_dated > 0 {
        tracing::warn!(
            "{future_dated} snapshot(s) are dated more than {} ahead of this host's clock: kept by no rule and not removed; see README, Retention",
            retention::describe(retention::CLOCK_SKEW)
        );
    }
    let mut segments_removed = 0usize;
    let mut segment_keys: Vec<(String, i64)> = expired.into_iter().flat_map(|(_, keys)| keys).collect();
    if !segment_keys.is_empty()
        && let Some(lock) = crate::immutable::lock_state(repo).await?
    {
        let until = crate::immutable::still_locked(repo, &lock, &segment_keys).await?;
        segment_keys.retain(|(k, _)| !until.contains_key(k));
    }
    if !opts.dry_run {
        for (k, _) in &segment_keys {
            repo.store.delete(k).await?;
            segments_removed += 1;
        }
    } else {
        segments_removed = segment_keys.len();
    }
    if !opts.dry_run {
        // One manifest at a time: a kill leaves some forgotten and the rest intact, and
        // running forget again applies the policy to what is left.
        for m in &doomed {
            tracing::info!(snapshot = %m.id, name = %m.name, "forgetting snapshot");
            repo.store.delete(&layout::snapshot(&m.id)).await?;
        }
    }
    Ok(ForgetReport {
        dry_run: opts.dry_run,
        policy: opts.policy,
        groups,
        kept,
        removed,
        locked,
        future_dated,
        segments_removed,
    })
}
