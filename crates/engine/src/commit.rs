//! The one commit path of a snapshot, shared by backup and copy (and the replication
//! that builds on them): after its packs and the index that locates their chunks, the
//! page map (uploaded in parts by the caller, [`crate::mapparts`]), then the manifest,
//! created if absent and written last. A snapshot exists
//! if and only if its manifest does; anything before it that a crash leaves behind is
//! garbage prune collects.

use std::time::{Duration, Instant};

use bytes::Bytes;
use sqlvault_format::{Manifest, MapRef, StoredRequests, encode_manifest, layout};
use sqlvault_store::RequestCounts;

use crate::error::Result;
use crate::names::ClaimPlan;
use crate::repo::Repo;

/// What to commit.
pub(crate) struct Commit<'a> {
    pub repo: &'a Repo,
    /// The snapshot's new map objects, already uploaded, in order.
    pub new_maps: Vec<MapRef>,
    /// The manifest, with the maps before the new ones (a delta chain's) in `maps`;
    /// the new maps are appended and `stats.bytes_new` set here.
    pub manifest: Manifest,
    /// Bytes uploaded for the snapshot before its manifest (packs, indexes, maps).
    pub bytes_before: u64,
    /// When the operation read prune's marks and the grace it has: a commit after the
    /// grace is refused (`grace_code`), as prune may have deleted what it relied on.
    pub pending_read: Instant,
    pub grace: Duration,
    pub grace_code: &'static str,
    pub what: &'a str,
    /// A database name claim to write right before the manifest.
    pub claim: Option<&'a ClaimPlan>,
    /// The store's request counts when the operation began: the manifest records what
    /// it took (`stats.requests`), counting the claim and the manifest PUTs to come.
    pub requests_at_start: RequestCounts,
    /// The database name's lease, confirmed (renewed) right before the manifest: a
    /// writer that lost it commits nothing.
    pub lease: Option<&'a crate::lease::Lease>,
}

/// What a commit did.
pub(crate) enum Committed {
    /// The manifest was written; its encrypted size.
    Written { manifest: Box<Manifest>, manifest_len: u64 },
    /// A manifest with this id already exists (another run committed it first).
    AlreadyThere,
}

/// Map → manifest, create-if-absent, last. The manifest records the bytes uploaded
/// before it (`bytes_new`); it cannot hold its own encrypted size without being
/// encrypted twice, so the caller adds `manifest_len` to what it reports.
pub(crate) async fn commit(c: Commit<'_>) -> Result<Committed> {
    let Commit {
        repo,
        new_maps,
        mut manifest,
        bytes_before,
        pending_read,
        grace,
        grace_code,
        what,
        claim,
        requests_at_start,
        lease,
    } = c;
    // Append-only: the commit path has no way to delete (the manifest is created only
    // if absent).
    let store = repo.store.appender();
    manifest.maps.extend(new_maps);
    manifest.stats.bytes_new = bytes_before;
    let so_far = repo.store.stats().since(requests_at_start);
    let claim_put = matches!(claim, Some(ClaimPlan::Create { .. } | ClaimPlan::Adopt { .. }));
    manifest.stats.requests = Some(StoredRequests {
        get: so_far.get,
        put: so_far.put + 1 + u64::from(claim_put),
        list: so_far.list,
        delete: so_far.delete,
        head: so_far.head,
    });
    let ct = repo.encrypt_meta(&encode_manifest(&repo.keys, &manifest))?;
    let manifest_len = ct.len() as u64;
    crate::prune::within_grace(repo, pending_read, grace, grace_code, what)?;
    // A cancelled operation commits nothing, however far it got.
    repo.session.cancel().check()?;
    if let Some(l) = lease {
        l.confirm().await?;
    }
    if let Some(plan) = claim {
        // Right before the manifest: a refused commit claims nothing.
        crate::names::commit(repo, plan).await?;
    }
    if let Some(l) = lease {
        l.check_fresh().await?;
    }
    match store
        .put_if_absent(&layout::snapshot(&manifest.id), Bytes::from(ct))
        .await
    {
        Ok(()) => Ok(Committed::Written {
            manifest: Box::new(manifest),
            manifest_len,
        }),
        Err(sqlvault_store::StoreError::AlreadyExists { .. }) => Ok(Committed::AlreadyThere),
        Err(e) => Err(e.into()),
    }
}
