//! What the daemon knows, kept in memory for `/metrics` and `/healthz` and written to
//! a status file (0600, replaced atomically every few seconds and at exit) that
//! `sqlvault status` reads whether the daemon runs or not.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The daemon's state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    /// sqlvault's version.
    pub version: String,
    /// Process id of the daemon that wrote this.
    pub pid: u32,
    /// When it started (unix ms).
    pub started_ms: i64,
    /// When this was written (unix ms).
    pub written_ms: i64,
    /// Whether the daemon was running when it wrote this (false: its last words).
    pub running: bool,
    /// The configuration file, and when it was last loaded.
    pub config: String,
    pub config_loaded_ms: i64,
    /// Reloads that succeeded, and the last one's error if it failed (the previous
    /// configuration then stays in force).
    pub reloads: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload_error: Option<String>,
    /// Per database file.
    pub databases: BTreeMap<String, DbStatus>,
}

/// One database.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DbStatus {
    /// Name in the repositories.
    pub name: String,
    /// When its worker started (unix ms): the grace for a first base counts from it.
    pub since_ms: i64,
    /// Thresholds from the configuration (seconds); no snapshot threshold when
    /// snapshots are off.
    pub max_lag_seconds: f64,
    pub snapshot_stale_seconds: Option<f64>,
    /// Transactions followed, continuity breaks by reason.
    pub commits: u64,
    pub breaks: BTreeMap<String, u64>,
    /// The last error of the database itself (unreadable, not a database, key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Per destination name.
    pub destinations: BTreeMap<String, DestStatus>,
}

/// One destination of one database.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DestStatus {
    /// Repository URL or path.
    pub repo: String,
    /// Last success per kind ("replicate", "snapshot", "verify", "prune"), unix ms.
    pub last_success_ms: BTreeMap<String, i64>,
    /// Failures per kind, and the last one.
    pub failures: BTreeMap<String, u64>,
    /// Kinds whose last run failed, with why (cleared by a success).
    #[serde(default)]
    pub failing: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the newest state it holds was observed (unix ms; 0: none yet).
    pub newest_state_ms: i64,
    /// Since when a committed state has waited for it (None: up to date).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_since_ms: Option<i64>,
    /// Segments shipped, bytes uploaded by them.
    pub segments: u64,
    pub bytes: u64,
    /// Store requests by operation, and failed ones retried.
    pub requests: BTreeMap<String, u64>,
    /// Every shipped state is restorable since this time (unix ms; 0: unknown).
    pub pitr_from_ms: i64,
    /// The last drill's restore and check time, and the bytes it restored: the
    /// measured recovery time.
    #[serde(default)]
    pub drill_seconds: f64,
    #[serde(default)]
    pub drill_bytes: u64,
}

impl DestStatus {
    /// Replication lag in seconds at `now_ms`.
    pub fn lag_seconds(&self, now_ms: i64) -> f64 {
        self.pending_since_ms
            .map_or(0.0, |p| (now_ms - p).max(0) as f64 / 1000.0)
    }
}

impl Status {
    /// Why the service is unhealthy at `now_ms`, if it is:
    /// - a database that cannot be followed;
    /// - a destination lagging more than its database's `max_lag`;
    /// - one that shipped nothing yet, `max_lag` after its worker started, while it
    ///   fails (or after an hour: a first base of a large database takes time);
    /// - its last verify or drill failed;
    /// - no snapshot for longer than `snapshot_stale` (when snapshots are on).
    pub fn unhealthy(&self, now_ms: i64) -> Vec<String> {
        let mut out = Vec::new();
        for (path, d) in &self.databases {
            if let Some(e) = &d.error {
                out.push(format!("{path}: {e}"));
            }
            let up_for = (now_ms - d.since_ms.max(self.started_ms)) as f64 / 1000.0;
            for (name, t) in &d.destinations {
                let why = |t: &DestStatus| t.last_error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default();
                let lag = t.lag_seconds(now_ms);
                if lag > d.max_lag_seconds {
                    out.push(format!(
                        "{path} → {name}: replication lag {lag:.0}s exceeds max_lag {:.0}s{}",
                        d.max_lag_seconds,
                        why(t)
                    ));
                } else if t.newest_state_ms == 0
                    && up_for > d.max_lag_seconds
                    && (!t.failing.is_empty() || up_for > 3600.0)
                {
                    out.push(format!("{path} → {name}: no state shipped yet{}", why(t)));
                }
                for k in ["verify", "drill"] {
                    if let Some(e) = t.failing.get(k) {
                        out.push(format!("{path} → {name}: the last {k} failed: {e}"));
                    }
                }
                if let Some(stale) = d.snapshot_stale_seconds {
                    let newest = t.last_success_ms.get("snapshot").copied().unwrap_or(0);
                    let age = (now_ms - newest.max(d.since_ms).max(self.started_ms)) as f64 / 1000.0;
                    if age > stale {
                        out.push(format!(
                            "{path} → {name}: no snapshot for {age:.0}s (snapshot_stale {stale:.0}s){}",
                            t.failing.get("snapshot").map(|e| format!(": {e}")).unwrap_or_default()
                        ));
                    }
                }
            }
        }
        out
    }

    /// Writes the status to `path` (0600, atomically).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        // A new file (never one planted there, nor a link followed).
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        // Compact, and not synced: it is rewritten every few seconds, and a crash
        // leaves the previous version whole (the rename is atomic).
        f.write_all(&serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
        std::fs::rename(&tmp, path)
    }

    /// Reads a status file.
    pub fn read(path: &Path) -> std::io::Result<Status> {
        let b = std::fs::read(path)?;
        serde_json::from_slice(&b).map_err(std::io::Error::other)
    }
}

/// Where the daemon of state directory `state_dir` writes its status.
pub fn status_path(state_dir: &Path) -> PathBuf {
    state_dir.join("service").join("status.json")
}
