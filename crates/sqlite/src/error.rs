use std::path::PathBuf;
use std::time::Duration;

/// Errors touching a database file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqliteError {
    /// The path does not exist.
    #[error("database {path} does not exist")]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// The file is not an SQLite database (bad header).
    #[error("{path} is not an SQLite database")]
    NotADatabase {
        /// The file.
        path: PathBuf,
    },
    /// Another connection held a lock longer than the busy timeout.
    #[error("database {path} stayed locked for more than {timeout:?}")]
    Busy {
        /// The file.
        path: PathBuf,
        /// The bound that was exceeded.
        timeout: Duration,
    },
    /// Any other SQLite failure.
    #[error("sqlite error on {path}")]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// SQLite returned something that contradicts itself.
    #[error("inconsistent snapshot of {path}: {detail}")]
    Inconsistent {
        /// The file.
        path: PathBuf,
        /// What did not add up.
        detail: String,
    },
    /// Filesystem error.
    #[error("io error on {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl SqliteError {
    pub(crate) fn from_sqlite(path: &std::path::Path, timeout: Duration, e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => SqliteError::Busy {
                path: path.to_path_buf(),
                timeout,
            },
            Some(ErrorCode::NotADatabase) => SqliteError::NotADatabase {
                path: path.to_path_buf(),
            },
            _ => SqliteError::Sqlite {
                path: path.to_path_buf(),
                source: e,
            },
        }
    }
}
