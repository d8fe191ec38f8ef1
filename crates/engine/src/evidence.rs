//! Evidence: a record in the repository of each verification, so that anyone with
//! the repository (an auditor, a drill, another host) can tell when each database was
//! last proven restorable, not just when it was last backed up.
//!
//! Each record is its own small object `evidence/<random id>` (never rewritten, so
//! concurrent writers cannot lose each other's records), encrypted like other metadata
//! and carrying a MAC under the repository key so that a bucket writer cannot forge a
//! successful verification. Records are ordered by the time written inside them.

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sqlvault_format::{ObjectId, layout};

use crate::error::{ErrorKind, Result, corrupt};
use crate::repo::{MAX_SMALL_OBJECT, Repo, Skipped, escape_name, too_large};
pub use crate::session::{MAX_HOST_LEN, check_host};

/// One verification of one snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Evidence {
    /// What produced it: `verify` or `drill`.
    pub kind: String,
    /// When it was written, unix milliseconds.
    pub at_ms: i64,
    /// Snapshot checked.
    pub snapshot_id: String,
    /// Its database name.
    pub name: String,
    /// When that snapshot was taken (its age at `at_ms` is the RPO then).
    pub snapshot_created_ms: i64,
    /// Whether every check passed.
    pub ok: bool,
    /// Checks run, in order.
    pub checks: Vec<String>,
    /// Error code when not ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Seconds to restore (the RTO measured).
    pub restore_seconds: f64,
    /// Seconds for the checks.
    pub check_seconds: f64,
    /// Host that ran it.
    pub host: String,
}

/// Writes one evidence record; returns its object key.
pub async fn record(repo: &Repo, e: Evidence) -> Result<String> {
    let ct = repo.seal_meta(&serde_json::to_string(&e).expect("serialises"))?;
    let key = layout::evidence(&ObjectId::random());
    repo.store.put_if_absent(&key, Bytes::from(ct)).await?;
    Ok(key)
}

/// Every evidence record that authenticates, oldest first by the time recorded
/// inside, and the objects under `evidence/` that do not (junk a bucket writer left,
/// or damage): reported by the caller, never trusted, and never a reason to stop.
pub async fn load_all(repo: &Repo) -> Result<(Vec<Evidence>, Vec<Skipped>)> {
    let names = repo.store.list(layout::EVIDENCE).await?;
    let results: Vec<(String, Result<Evidence>)> =
        futures::stream::iter(names.into_iter().map(|(n, size)| async move {
            let key = format!("{}/{n}", layout::EVIDENCE);
            let what = format!("evidence {}", escape_name(&n));
            let r = async {
                if size > MAX_SMALL_OBJECT {
                    return Err(too_large(&repo.store, layout::EVIDENCE, &n, size));
                }
                let ct = repo.store.get(&key).await?;
                let body = repo.unseal_meta(&what, &ct)?;
                serde_json::from_str::<Evidence>(&body).map_err(|e| corrupt(&what, e))
            }
            .await;
            (n, r)
        }))
        .buffer_unordered(16)
        .collect()
        .await;
    let (mut out, mut skipped) = (Vec::new(), Vec::new());
    for (n, r) in results {
        match r {
            Ok(e) => out.push(e),
            Err(e) if e.code() == "store.not-found" => {}
            Err(e) if e.kind() == ErrorKind::Store => return Err(e),
            Err(e) => skipped.push(Skipped::new(format!("{}/{}", layout::EVIDENCE, escape_name(&n)), &e)),
        }
    }
    out.sort_by_key(|e| e.at_ms);
    skipped.sort_by(|a, b| a.key.cmp(&b.key));
    Ok((out, skipped))
}
