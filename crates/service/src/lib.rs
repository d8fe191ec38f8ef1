//! # sqlvault-service
//!
//! sqlvault as a long-running service: one TOML configuration ([`config`]) declaring
//! the databases to protect (by path, or a glob over a directory of per-tenant
//! databases), their destinations and schedules; a daemon ([`daemon::run`]) that
//! replicates every database continuously and runs snapshots, retention and
//! verification on their schedules, a failing database or destination never stopping
//! the others; Prometheus metrics and a health check served from local state
//! ([`metrics`]), with no store request per scrape; and a status file that `sqlvault
//! status` reads whether the daemon runs or not.
//!
//! The crate reads no environment and installs no signal handler: the binary passes
//! the variables `$VAR` expansion and the store clients may use, and sets
//! [`daemon::DaemonOptions::stop`] and `reload` from SIGTERM and SIGHUP.
//!
//! ```
//! use std::path::Path;
//! let text = r#"
//! [destination.local]
//! repo = "/backups/repo"
//! keep_daily = 30
//! pitr_window = "24h"
//!
//! [[database]]
//! path = "/srv/app.db"
//! destinations = ["local"]
//! "#;
//! let c = sqlvault_service::config::parse(Path::new("/etc/sqlvault.toml"), text, &|_| None).unwrap();
//! assert_eq!(c.databases.len(), 1);
//! assert_eq!(c.databases[0].schedule.interval, std::time::Duration::from_secs(1));
//!
//! // Every error names its line.
//! let e = sqlvault_service::config::parse(Path::new("x.toml"), "[[database]]\npath = 3\n", &|_| None).unwrap_err();
//! assert_eq!(e.line, 2);
//! ```

pub mod config;
pub mod daemon;
pub mod metrics;
pub mod runbook;
pub mod status;

use std::path::{Path, PathBuf};

/// A configuration error, naming the file and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// 1-based line (0: the file as a whole).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(path: &Path, line: usize, message: String) -> ConfigError {
        ConfigError {
            path: path.to_path_buf(),
            line,
            message,
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.path.display(), self.message)
        } else {
            write!(f, "{}:{}: {}", self.path.display(), self.line, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

impl From<ConfigError> for sqlvault_engine::Error {
    fn from(e: ConfigError) -> Self {
        sqlvault_engine::Error::new(sqlvault_engine::ErrorKind::Usage, "config.invalid", e.to_string())
    }
}

/// Unix milliseconds now.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
