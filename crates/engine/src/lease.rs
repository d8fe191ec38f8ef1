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

/// Shorter than this, renewals (a third of it) would be most of the traffic, and the
/// time between a holder's last confirmation and its commit (`Lease::check_fresh`
/// allows half of it) would be too short for a slow store.
pub const MIN_TTL: Duration = Duration::from_secs(5);

/// The longest time to live a lease is taken for, or honoured with.
pub const MAX_TTL: Duration = Duration::from_secs(86_400);

/// A lease object is a few hundred bytes; one larger is junk, never read into memory.
const LEASE_MAX: u64 = 64 << 10;

/// A `renewed_ms` this far past the reader's clock (beyond the lease's own time to live)
/// comes from a holder whose clock is wrong: the lease is treated as stale rather than
/// held for as long as that clock says.
const SKEW_MS: i64 = 60_000;

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
    /// When it runs out: a time to live beyond [`MAX_TTL`] (which no sqlvault writes)
    /// counts as that.
    fn expires_ms(&self) -> i64 {
        self.renewed_ms
            .saturating_add(self.ttl_ms.min(MAX_TTL.as_millis() as u64) as i64)
    }

    /// Held now, by this reader's clock: not released, not expired, not written by a
    /// clock far ahead of this one, and not left by a dead process of this machine.
    fn is_held(&self, now: i64) -> bool {
        let ttl = self.ttl_ms.min(MAX_TTL.as_millis() as u64) as i64;
        !self.released
            && now < self.expires_ms()
            && self.expires_ms() <= now.saturating_add(SKEW_MS + ttl * 2)
            && !dead_here(self)
    }
}

/// This machine: its host name and boot id, so that a pid is only judged dead by the
/// machine (and boot) that ran it, not by a clone sharing the host name.
fn this_machine() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    format!("{} {}", crate::session::machine_hostname(), boot.trim())
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
    if b.machine != this_machine() || b.pid == 0 {
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
            "database name {} in {} is leased by host {} (pid {}) since {} s ago, renewed {} s ago; it expires in {} s unless renewed: another writer is at work (stop it, or wait; the lease is {})",
            b.name,
            repo.store.describe(),
            b.host,
            b.pid,
            (now - b.acquired_ms).max(0) / 1000,
            (now - b.renewed_ms).max(0) / 1000,
            ((b.expires_ms() - now).max(0) + 999) / 1000,
            lease_key(repo, &b.name)
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
    released: bool,
    /// When the store last confirmed the lease (monotonic): a commit later than half
    /// the time to live after it is refused.
    confirmed: std::time::Instant,
}

/// A lease this process holds on one database name of one repository. Renewed in the
/// background while held; [`Lease::confirm`] before committing, [`Lease::release`]
/// when done (a lease dropped unreleased simply expires).
#[derive(Clone)]
pub struct Lease {
    repo: Repo,
    key: String,
    name: String,
    ttl: Duration,
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
        let ttl = ttl.clamp(MIN_TTL, MAX_TTL);
        let key = lease_key(repo, name);
        let now = now_ms();
        let mut body = LeaseBody {
            version: 1,
            kind: "lease".into(),
            name: name.to_string(),
            host: repo.session.host().to_string(),
            machine: this_machine(),
            pid: std::process::id(),
            token: ObjectId::random().to_string(),
            acquired_ms: now,
            renewed_ms: now,
            ttl_ms: ttl.as_millis() as u64,
            released: false,
        };
        let mut last_holder = None;
        for _ in 0..3 {
            let version = match repo.store.get_versioned(&key, LEASE_MAX).await? {
                None => match repo.store.create_versioned(&key, seal(repo, &body)?).await {
                    Ok(v) => v,
                    // A retried create whose first attempt landed finds itself.
                    Err(StoreError::AlreadyExists { .. }) => match ours(repo, &key, &body).await? {
                        Some(v) => v,
                        None => continue,
                    },
                    Err(e) => return Err(e.into()),
                },
                Some((ct, version)) => {
                    let current = decode(repo, name, &ct);
                    match &current {
                        Some(h) if h.is_held(now_ms()) => {
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
                        Err(StoreError::Conflict { .. }) => match ours(repo, &key, &body).await? {
                            Some(v) => v,
                            None => {
                                last_holder = current;
                                continue;
                            }
                        },
                        Err(e) => return Err(e.into()),
                    }
                }
            };
            return Ok(Lease::start(repo, key, body, version, ttl));
        }
        // Lost every race: whoever won holds it now.
        match repo
            .store
            .get_versioned(&key, LEASE_MAX)
            .await
            .ok()
            .flatten()
            .and_then(|(ct, _)| decode(repo, name, &ct))
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
            released: false,
            confirmed: std::time::Instant::now(),
        }));
        let task = {
            let (repo, key, state) = (repo.clone(), key.clone(), state.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    let mut s = state.lock().await;
                    if s.released || s.lost {
                        return;
                    }
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
            ttl,
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
        if s.lost || s.released {
            return Err(lost(&self.repo, &self.name));
        }
        renew(&self.repo, &self.key, &mut s).await
    }

    /// Fails (`lease.lost`) when more than half the time to live has passed since the
    /// store last confirmed the lease (a process suspended between its confirmation and
    /// its commit): checked right before the manifest is written, so that a commit
    /// never lands long after another host could have taken the lease over. What it
    /// cannot fence: a PUT already sent that the store applies later.
    pub async fn check_fresh(&self) -> Result<()> {
        let s = self.state.lock().await;
        if s.lost || s.released || s.confirmed.elapsed() > self.ttl / 2 {
            return Err(lost(&self.repo, &self.name));
        }
        Ok(())
    }

    /// Stops renewing and marks the lease released (a conditional update: a lease
    /// another host took over is left alone). Failures are logged: an unreleased lease
    /// expires by itself.
    pub async fn release(self) {
        // The lock first: a renewal in flight finishes (its version is then the one
        // to release) before the renewer stops.
        let mut s = self.state.lock().await;
        self.renewer.0.abort();
        if s.lost || s.released {
            return;
        }
        s.released = true;
        let mut body = s.body.clone();
        body.released = true;
        body.renewed_ms = now_ms();
        let r = match seal(&self.repo, &body) {
            Ok(ct) => match self.repo.store.put_if_version(&self.key, ct, &s.version).await {
                Ok(_) => Ok(()),
                Err(StoreError::Conflict { .. })
                    if ours(&self.repo, &self.key, &body).await.ok().flatten().is_some() =>
                {
                    Ok(())
                }
                Err(e) => Err(Error::from(e)),
            },
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
    let r = match repo.store.put_if_version(key, seal(repo, &body)?, &s.version).await {
        Ok(v) => Ok(v),
        // A retried update whose first attempt landed finds its own body there.
        Err(StoreError::Conflict { .. }) => match ours(repo, key, &body).await? {
            Some(v) => Ok(v),
            None => {
                s.lost = true;
                return Err(lost(repo, &body.name));
            }
        },
        Err(e) => Err(e),
    };
    let v = r?;
    s.version = v;
    s.body = body;
    s.confirmed = std::time::Instant::now();
    Ok(())
}

/// The version of the lease object if it holds exactly `body` (this holder's write
/// landed, though the answer said otherwise).
async fn ours(repo: &Repo, key: &str, body: &LeaseBody) -> Result<Option<ObjectVersion>> {
    Ok(match repo.store.get_versioned(key, LEASE_MAX).await? {
        Some((ct, v)) if decode(repo, &body.name, &ct).as_ref() == Some(body) => Some(v),
        _ => None,
    })
}

fn seal(repo: &Repo, body: &LeaseBody) -> Result<Bytes> {
    Ok(Bytes::from(
        repo.seal_meta(&serde_json::to_string(body).expect("serialises"))?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(renewed_ms: i64, ttl_ms: u64, released: bool) -> LeaseBody {
        LeaseBody {
            version: 1,
            kind: "lease".into(),
            name: "app.db".into(),
            host: "blue".into(),
            machine: "another machine".into(),
            pid: 1,
            token: "t".into(),
            acquired_ms: renewed_ms,
            renewed_ms,
            ttl_ms,
            released,
        }
    }

    #[test]
    fn a_lease_is_held_until_it_expires_and_not_by_a_clock_far_ahead() {
        let now = 1_800_000_000_000;
        let ttl = 300_000;
        assert!(body(now - 1_000, ttl, false).is_held(now));
        assert!(!body(now - 1_000, ttl, true).is_held(now), "released");
        assert!(!body(now - ttl as i64 - 1, ttl, false).is_held(now), "expired");
        // A holder a little ahead (clock skew within a minute): still held.
        assert!(body(now + 30_000, ttl, false).is_held(now));
        // A holder whose clock is a year ahead does not block the name for a year.
        assert!(!body(now + 365 * 86_400_000, ttl, false).is_held(now));
        // A time to live beyond reason is no way around that either.
        assert!(!body(now + 365 * 86_400_000, u64::MAX, false).is_held(now));
        assert!(!body(now + 365 * 86_400_000, 1 << 62, false).is_held(now));
        // Nor a ten-year time to live written now: it counts as a day.
        assert!(!body(now - 86_400_001, 10 * 365 * 86_400_000, false).is_held(now));
    }
}
