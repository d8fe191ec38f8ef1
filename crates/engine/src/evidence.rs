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

/// The host identity set for this process ([`set_host`]).
static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The longest host identity (a DNS name's limit).
pub const MAX_HOST_LEN: usize = 253;

/// Checks a host identity (`--host`, `SQLVAULT_HOST`): 1 to [`MAX_HOST_LEN`] printable
/// ASCII characters, no spaces.
pub fn check_host(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_HOST_LEN || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(crate::error::Error::new(
            ErrorKind::Usage,
            "usage.bad-host",
            format!(
                "host identity {:?} (--host or SQLVAULT_HOST) must be 1 to {MAX_HOST_LEN} printable ASCII characters without spaces",
                name.chars().take(80).collect::<String>()
            ),
        ));
    }
    Ok(())
}

/// Sets the host identity this process records in manifests, name claims and
/// evidence (instead of the machine's host name): for hosts whose name changes at
/// every run, such as a container or a Kubernetes CronJob's pods. Checked by
/// [`check_host`]; the first identity set stays.
pub fn set_host(name: &str) -> Result<()> {
    check_host(name)?;
    let _ = HOST.set(name.to_string());
    Ok(())
}

/// This host's identity, as manifests, name claims, retention groups and evidence
/// record it: the one set by [`set_host`], else a valid `SQLVAULT_HOST`, else the
/// machine's host name.
pub(crate) fn hostname() -> String {
    if let Some(h) = HOST.get() {
        return h.clone();
    }
    match std::env::var("SQLVAULT_HOST") {
        Ok(h) if check_host(&h).is_ok() => h,
        _ => machine_hostname(),
    }
}

/// The machine's host name (`gethostname`): what a prune lock records, whose process
/// id only means something on this machine.
pub(crate) fn machine_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
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
