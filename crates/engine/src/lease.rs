//! One writer per database name, when asked: a lease object per name, taken with
//! create-if-absent and renewed in place with a conditional update (the version read),
//! so that a second host backing up the same name fails closed, naming the holder.
//!
//! # The protocol
//!
//! `leases/<id>` (the id keyed like a name claim's, so the bucket learns no name) holds
//! a sealed body (metadata key, MAC'd): the name, the holder's host identity, machine
//! and pid, a random token, when it was taken and last renewed, its time to live, and
//! whether it was released.
//!
//! - **Take**: no object → create it if absent. An object that is released, expired
//!   (`renewed + ttl` passed, by this host's clock), unreadable, or left by a process of
//!   this machine that no longer runs → replace it *only if it is still the version
//!   read*. Anything else → refused (`lease.held`, exit 14) naming the holder and when
//!   the lease runs out. Two hosts racing for an expired lease: one conditional update
//!   wins, the other is refused.
//! - **Renew**: every third of the time to live, a conditional update on the version
//!   this holder last wrote. A failed condition means another host took the lease over
//!   (it expired): the holder has lost it.
//! - **Confirm**: right before a snapshot's manifest, the lease is renewed once more; a
//!   holder that lost it commits nothing (`lease.lost`, exit 14).
//! - **Release**: a conditional update marking it released (never a DELETE, which is
//!   unconditional: it could remove the lease of a host that took it over).
//!
//! Leases keep honest writers apart; they are not a defence against a bucket writer,
//! who can delete or replace any object. Expiry compares the holder's clock (it wrote
//! `renewed`) with the reader's: hosts whose clocks differ by more than a fraction of
//! the time to live see expiry early or late by that much.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sqlvault_format::ObjectId;
use sqlvault_store::{ObjectVersion, StoreError};

use crate::error::{Error, ErrorKind, Result};
use crate::repo::{Repo, now_ms};

/// Directory of leases.
pub const LEASES: &str = "leases";

/// The default time to live: a holder that stops renewing (killed, partitioned) blocks
/// others this long at most.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// Shorter than this, renewals (a third of it) would be most of the traffic.
pub const MIN_TTL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct LeaseBody {
    version: u32,
    /// `"lease"`: a sealed object of another kind moved here is not a lease.
    kind: String,
    name: String,
    /// The holder's host identity (`--host`, else its host name).
    host: String,
    /// The machine's own host name: whether `pid` can be checked here.
    machine: String,
    pid: u32,
    token: String,
    acquired_ms: i64,
    renewed_ms: i64,
    ttl_ms: u64,
    released: bool,
}

impl LeaseBody {
    fn expires_ms(&self) -> i64 {
        self.renewed_ms.saturating_add(self.ttl_ms.min(i64::MAX as u64) as i64)
    }
}

/// The key of `name`'s lease.
fn lease_key(repo: &Repo, name: &str) -> String {
    let mut input = b"sqlvault v1 lease\0".to_vec();
    input.extend_from_slice(name.as_bytes());
    let h = repo.keys.mac(&input);
    format!("{LEASES}/{}", hex::encode(&h[..16]))
}

/// The body of a lease object, if it opens, authenticates, parses and is `name`'s.
fn decode(repo: &Repo, name: &str, ct: &[u8]) -> Option<LeaseBody> {
    let body = repo.unseal_meta("lease", ct).ok()?;
    let b: LeaseBody = serde_json::from_str(&body).ok()?;
    (b.kind == "lease" && b.name == name).then_some(b)
}

/// The lease was left by a process of this machine that is not running.
fn dead_here(b: &LeaseBody) -> bool {
    if b.machine != crate::session::machine_hostname() || b.pid == 0 {
        return false;
    }
    crate::session::process_gone(b.pid)
}

fn held(repo: &Repo, b: &LeaseBody) -> Error {
    let now = now_ms();
    Error::new(
        ErrorKind::Busy,
        "lease.held",
        format!(
            "database name {} in {} is leased by host {} (pid {}) since {} s ago, renewed {} s ago; it expires in {} s unless renewed: another writer is at work (stop it, or wait)",
            b.name,
            repo.store.describe(),
            b.host,
            b.pid,
            (now - b.acquired_ms).max(0) / 1000,
            (now - b.renewed_ms).max(0) / 1000,
            ((b.expires_ms() - now).max(0) + 999) / 1000
        ),
    )
}

fn lost(repo: &Repo, name: &str) -> Error {
    Error::new(
        ErrorKind::Busy,
        "lease.lost",
        format!(
            "this host's lease on database name {name} in {} was taken over by another host (it was not renewed in time); nothing was committed",
            repo.store.describe()
        ),
    )
}

struct State {
    body: LeaseBody,
    version: ObjectVersion,
    lost: bool,
}

/// A lease this process holds on one database name of one repository. Renewed in the
/// background while held; [`Lease::confirm`] before committing, [`Lease::release`]
/// when done (a lease dropped unreleased simply expires).
#[derive(Clone)]
pub struct Lease {
    repo: Repo,
    key: String,
    name: String,
    state: Arc<tokio::sync::Mutex<State>>,
    renewer: Arc<Renewer>,
}

/// Stops the renewals when the last handle on a lease goes (released or not).
struct Renewer(tokio::task::AbortHandle);

impl Drop for Renewer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.key)
            .field("name", &self.name)
            .finish()
    }
}

impl Lease {
    /// Takes the lease of database name `name` in `repo` for `ttl` (at least
    /// [`MIN_TTL`]), or fails with `lease.held` naming the holder.
    pub async fn acquire(repo: &Repo, name: &str, ttl: Duration) -> Result<Lease> {
        let ttl = ttl.max(MIN_TTL);
        let key = lease_key(repo, name);
        let now = now_ms();
        let mut body = LeaseBody {
            version: 1,
            kind: "lease".into(),
            name: name.to_string(),
            host: repo.session.host().to_string(),
            machine: crate::session::machine_hostname(),
            pid: std::process::id(),
            token: ObjectId::random().to_string(),
            acquired_ms: now,
            renewed_ms: now,
            ttl_ms: ttl.as_millis() as u64,
            released: false,
        };
        let mut last_holder = None;
        for _ in 0..3 {
            let version = match repo.store.get_versioned(&key).await? {
                None => match repo.store.create_versioned(&key, seal(repo, &body)?).await {
                    Ok(v) => v,
                    Err(StoreError::AlreadyExists { .. }) => continue,
                    Err(e) => return Err(e.into()),
                },
                Some((ct, version)) => {
                    let current = decode(repo, name, &ct);
                    match &current {
                        Some(h) if !h.released && now_ms() < h.expires_ms() && !dead_here(h) => {
                            return Err(held(repo, h));
                        }
                        Some(h) if !h.released => tracing::warn!(
                            "taking over the lease of {name} in {} left by host {} pid {} (expired {} s ago, or its process is gone)",
                            repo.store.describe(),
                            h.host,
                            h.pid,
                            (now_ms() - h.expires_ms()).max(0) / 1000
                        ),
                        Some(_) => {}
                        None => tracing::warn!(
                            "replacing an unreadable lease object {key} in {}",
                            repo.store.describe()
                        ),
                    }
                    body.acquired_ms = now_ms();
                    body.renewed_ms = body.acquired_ms;
                    match repo.store.put_if_version(&key, seal(repo, &body)?, &version).await {
                        Ok(v) => v,
                        Err(StoreError::Conflict { .. }) => {
                            last_holder = current;
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            };
            return Ok(Lease::start(repo, key, body, version, ttl));
        }
        // Lost every race: whoever won holds it now.
        match repo
            .store
            .get(&key)
            .await
            .ok()
            .and_then(|ct| decode(repo, name, &ct))
            .or(last_holder)
        {
            Some(h) => Err(held(repo, &h)),
            None => Err(Error::new(
                ErrorKind::Busy,
                "lease.held",
                format!(
                    "another writer took the lease of database name {name} in {} first",
                    repo.store.describe()
                ),
            )),
        }
    }

    fn start(repo: &Repo, key: String, body: LeaseBody, version: ObjectVersion, ttl: Duration) -> Lease {
        let name = body.name.clone();
        let state = Arc::new(tokio::sync::Mutex::new(State {
            body,
            version,
            lost: false,
        }));
        let task = {
            let (repo, key, state) = (repo.clone(), key.clone(), state.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    let mut s = state.lock().await;
                    match renew(&repo, &key, &mut s).await {
                        Ok(()) => {}
                        Err(e) if s.lost => {
                            tracing::error!("{}", e.one_line());
                            return;
                        }
                        // Transient: the next round (or the confirmation) tries again.
                        Err(e) => tracing::warn!("could not renew the lease {key}: {}", e.one_line()),
                    }
                }
            })
        };
        Lease {
            repo: repo.clone(),
            key,
            name,
            state,
            renewer: Arc::new(Renewer(task.abort_handle())),
        }
    }

    /// The lease's object key in the repository.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Renews the lease now and fails with `lease.lost` if another host took it over:
    /// called right before a commit, so that a writer that lost its lease commits
    /// nothing.
    pub async fn confirm(&self) -> Result<()> {
        let mut s = self.state.lock().await;
        if s.lost {
            return Err(lost(&self.repo, &self.name));
        }
        renew(&self.repo, &self.key, &mut s).await
    }

    /// Stops renewing and marks the lease released (a conditional update: a lease
    /// another host took over is left alone). Failures are logged: an unreleased lease
    /// expires by itself.
    pub async fn release(self) {
        self.renewer.0.abort();
        let mut s = self.state.lock().await;
        if s.lost {
            return;
        }
        s.body.released = true;
        s.body.renewed_ms = now_ms();
        let r = match seal(&self.repo, &s.body) {
            Ok(ct) => self
                .repo
                .store
                .put_if_version(&self.key, ct, &s.version)
                .await
                .map_err(Error::from),
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            tracing::warn!(
                "could not release the lease of {} (it expires by itself): {}",
                self.name,
                e.one_line()
            );
        }
    }
}

/// One renewal: a conditional update on the version last written.
async fn renew(repo: &Repo, key: &str, s: &mut State) -> Result<()> {
    let mut body = s.body.clone();
    body.renewed_ms = now_ms();
    match repo.store.put_if_version(key, seal(repo, &body)?, &s.version).await {
        Ok(v) => {
            s.version = v;
            s.body = body;
            Ok(())
        }
        Err(StoreError::Conflict { .. }) => {
            s.lost = true;
            Err(lost(repo, &body.name))
        }
        Err(e) => Err(e.into()),
    }
}

fn seal(repo: &Repo, body: &LeaseBody) -> Result<Bytes> {
    Ok(Bytes::from(
        repo.seal_meta(&serde_json::to_string(body).expect("serialises"))?,
    ))
}
