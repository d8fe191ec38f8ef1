//! Where a snapshot's database lived, below the repository and the name claims that
//! both group snapshots by it.

use serde::{Deserialize, Serialize};
use sqlvault_format::Manifest;

/// Where a snapshot's database lived: the host that backed it up and the canonical
/// path of the file there. Empty in manifests that do not record them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SourceId {
    /// Host name.
    pub host: String,
    /// Canonical source path on that host.
    pub path: String,
}

impl SourceId {
    /// The source a manifest records (both empty for a manifest without them).
    pub fn of(m: &Manifest) -> SourceId {
        SourceId {
            host: m.host.clone(),
            path: m.source_path.clone(),
        }
    }

    /// This host and the canonical form of `db` (as given when it cannot be resolved).
    pub fn local(host: &str, db: &std::path::Path) -> SourceId {
        SourceId {
            host: host.to_string(),
            path: db.canonicalize().unwrap_or(db.to_path_buf()).display().to_string(),
        }
    }

    /// `host:path`, or `(source not recorded)` for a manifest of an older version.
    pub fn describe(&self) -> String {
        if self.host.is_empty() && self.path.is_empty() {
            "(source not recorded)".into()
        } else {
            format!("{}:{}", self.host, self.path)
        }
    }
}
