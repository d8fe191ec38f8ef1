//! `check --cost`: what a repository costs to keep and to feed — its objects and bytes
//! by kind (one listing), and the requests a typical incremental backup makes (from what
//! recent manifests recorded, so it costs no backup to find out).
//!
//! Needs the metadata key only (a write key will do): it reads listings and manifests,
//! never a pack.

use serde::Serialize;
use sqlvault_format::{Manifest, StoredRequests};

use crate::error::Result;
use crate::repo::Repo;
use crate::session::Requests;

/// Incremental snapshots the typical backup is taken from: the newest ones, as a
/// repository's recent past is what its next month looks like.
pub const TYPICAL_SAMPLE: usize = 10;

/// Objects and bytes of one kind (the first component of their key: `packs`, `index`,
/// `maps`, `snapshots`, …).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct KindUsage {
    /// The kind.
    pub kind: String,
    /// Objects of it.
    pub objects: u64,
    /// Their bytes, as stored (encrypted).
    pub bytes: u64,
}

/// The requests and bytes of a typical incremental backup: per field, the median over
/// the newest incremental snapshots that recorded them. Opening the repository is not
/// in them (see [`CostReport::open_requests`]).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TypicalBackup {
    /// Snapshots the medians are taken over.
    pub sampled: usize,
    /// Median requests per kind.
    pub requests: StoredRequests,
    /// Median bytes uploaded.
    pub bytes_new: u64,
    /// Median bytes of database read.
    pub bytes_read: u64,
}

/// What [`cost`] found.
#[derive(Debug, Clone, Serialize)]
pub struct CostReport {
    /// Usage by kind, largest first.
    pub kinds: Vec<KindUsage>,
    /// Objects in the repository.
    pub objects: u64,
    /// Bytes in the repository.
    pub bytes: u64,
    /// Snapshots.
    pub snapshots: usize,
    /// Incremental snapshots (made against a parent).
    pub incremental_snapshots: usize,
    /// The typical incremental backup; `None` when no incremental snapshot recorded its
    /// requests (all were made before sqlvault recorded them, or there is none yet).
    pub typical_incremental: Option<TypicalBackup>,
    /// The requests opening the repository took in this command: a backup run as its own
    /// command (cron) pays them besides the typical figures, a long-lived process once.
    pub open_requests: Requests,
    /// This command's own requests (opening excluded).
    pub requests: Requests,
}

/// Lists the repository once and reads its manifests (from the local catalog where this
/// host has seen them).
pub async fn cost(repo: &Repo) -> Result<CostReport> {
    let before = repo.store.stats();
    let listed = repo.store.list_versions("").await?;
    let mut kinds: Vec<KindUsage> = Vec::new();
    for o in &listed {
        let kind = o.name.split('/').next().unwrap_or_default();
        match kinds.iter_mut().find(|k| k.kind == kind) {
            Some(k) => {
                k.objects += 1;
                k.bytes += o.size;
            }
            None => kinds.push(KindUsage {
                kind: kind.to_string(),
                objects: 1,
                bytes: o.size,
            }),
        }
    }
    kinds.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.kind.cmp(&b.kind)));
    let snapshots = repo.snapshots().await?;
    let incremental: Vec<&Manifest> = snapshots.iter().filter(|m| m.parent.is_some()).collect();
    Ok(CostReport {
        objects: kinds.iter().map(|k| k.objects).sum(),
        bytes: kinds.iter().map(|k| k.bytes).sum(),
        kinds,
        snapshots: snapshots.len(),
        incremental_snapshots: incremental.len(),
        typical_incremental: typical(&incremental),
        open_requests: repo.open_requests(),
        requests: repo.store.stats().since(before),
    })
}

/// Medians over the newest [`TYPICAL_SAMPLE`] of `incremental` (oldest first) that
/// recorded their requests.
fn typical(incremental: &[&Manifest]) -> Option<TypicalBackup> {
    let sample: Vec<(&Manifest, StoredRequests)> = incremental
        .iter()
        .rev()
        .filter_map(|m| m.stats.requests.map(|r| (*m, r)))
        .take(TYPICAL_SAMPLE)
        .collect();
    if sample.is_empty() {
        return None;
    }
    let med = |f: &dyn Fn(&(&Manifest, StoredRequests)) -> u64| median(sample.iter().map(f).collect());
    Some(TypicalBackup {
        sampled: sample.len(),
        requests: StoredRequests {
            get: med(&|s| s.1.get),
            put: med(&|s| s.1.put),
            list: med(&|s| s.1.list),
            delete: med(&|s| s.1.delete),
            head: med(&|s| s.1.head),
        },
        bytes_new: med(&|s| s.0.stats.bytes_new),
        bytes_read: med(&|s| s.0.stats.bytes_read),
    })
}

/// The median (the upper one of an even count: a figure some backup really had).
fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn the_median_is_a_value_some_sample_had() {
        assert_eq!(median(vec![5, 1, 9]), 5);
        assert_eq!(median(vec![4, 1, 9, 7]), 7);
        assert_eq!(median(vec![]), 0);
    }
}
