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
    /// The path names a FIFO, socket, device (or, where links are not followed, a
    /// symbolic link): sqlvault reads only regular files, as opening or reading the
    /// others can block forever.
    #[error("{path} is a {kind}, not a regular file: refused")]
    NotRegular {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
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
    /// Something in the database cannot be reproduced by a SQL dump (an unknown
    /// collation or virtual-table module, rowids that cannot be named); reported before
    /// anything is written.
    #[error("{path} cannot be dumped losslessly: {what}")]
    Unreproducible {
        /// The database.
        path: PathBuf,
        /// The object and the reason (without SQLite's own message, which is `source`).
        what: String,
        /// SQLite's refusal to rebuild the object (no such module, no such collation
        /// sequence), when that is how it was found.
        #[source]
        source: Option<rusqlite::Error>,
    },
    /// Writing the dump to its destination failed.
    #[error("cannot write the dump")]
    Output {
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A statement of a dump failed to load.
    #[error("{path} line {line}: {statement}")]
    Load {
        /// The dump.
        path: PathBuf,
        /// First line of the statement.
        line: u64,
        /// The statement, shortened.
        statement: String,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// A statement of a dump or SQL file was refused before or while it ran: it reaches
    /// beyond the one database a load builds (another schema or file, a function or
    /// pragma a dump never uses, a write to the schema outside the shapes a dump
    /// writes), or it needed more work or text than a dump of its size ever does.
    /// Nothing of the load is kept.
    #[error("{path} line {line}: refused {statement}: {why}")]
    Refused {
        /// The dump.
        path: PathBuf,
        /// First line of the statement.
        line: u64,
        /// The statement, shortened.
        statement: String,
        /// Why it was refused.
        why: String,
    },
    /// The input is not a complete sqlvault or SQL dump.
    #[error("{path}: {what}")]
    BadDump {
        /// The dump.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The destination of a load exists and is not empty.
    #[error("{path} exists and is not empty; pass --force to replace it")]
    Exists {
        /// The destination.
        path: PathBuf,
    },
    /// A file SQLite would replay onto a new database (`-wal`, `-shm`, `-journal`) lies
    /// beside the destination, and replacing was not asked for.
    #[error(
        "{path} lies beside the destination and SQLite would apply it to the new database; remove it, or pass --force to have it removed"
    )]
    StaleSideFile {
        /// The side file.
        path: PathBuf,
    },
    /// A loaded database failed `integrity_check` or its logical checksum differs from
    /// the one the dump recorded.
    #[error("{path}: {what}")]
    Verify {
        /// The dump.
        path: PathBuf,
        /// What failed.
        what: String,
    },
    /// A loaded database is exactly what the dump recorded (its logical checksum
    /// matches) and fails `integrity_check` all the same: the source was already
    /// damaged when it was dumped.
    #[error(
        "{path}: the loaded database has exactly the content the dump recorded (its logical checksum matches), but fails integrity_check, so the database it was dumped from most likely did too: {what}; pass --accept-damaged-source to keep these exact contents"
    )]
    SourceDamaged {
        /// The dump.
        path: PathBuf,
        /// The first integrity_check lines.
        what: String,
    },
    /// The file has no plaintext SQLite header: it is encrypted, or not a database,
    /// and no key was given.
    #[error("{path} is encrypted or not an SQLite database: it needs its database key")]
    Encrypted {
        /// The file.
        path: PathBuf,
    },
    /// The key given does not decrypt the file with the settings of any SQLCipher
    /// version (4, 3, 2 or 1), or with the settings given.
    #[error("cannot decrypt {path}: wrong database key, or not an SQLCipher database")]
    WrongKey {
        /// The file.
        path: PathBuf,
    },
    /// A crashed writer's rollback journal lies beside the database and nobody has
    /// it open: SQLite must roll it back (a read-write open does) before the database
    /// can be read consistently, and a read-only reader cannot.
    #[error(
        "{path} has a hot journal {journal}: a writer crashed mid-transaction and its rollback has not run; open the database once read-write with its application (or sqlite3) to roll it back, then retry; never delete the journal"
    )]
    HotJournal {
        /// The database.
        path: PathBuf,
        /// Its `-journal`.
        journal: PathBuf,
    },
    /// The page size asked for (or kept) cannot be used with the SQLCipher settings.
    #[error("{path}: {what}")]
    PageSize {
        /// The database.
        path: PathBuf,
        /// Why, and what to choose instead.
        what: String,
    },
    /// A key was given for a plaintext database.
    #[error("{path} is not encrypted, but a database key was given")]
    NotEncrypted {
        /// The file.
        path: PathBuf,
    },
    /// A database key or SQLCipher setting that cannot be used (the key is never
    /// quoted).
    #[error("{what}")]
    BadKey {
        /// What is wrong.
        what: String,
    },
    /// A conversion needs the database to itself.
    #[error("{path} is in use: {detail}")]
    InUse {
        /// The file.
        path: PathBuf,
        /// Who holds it.
        detail: String,
    },
    /// A conversion of a file that has other hard links: the other names would keep the
    /// old bytes (the plaintext, for `encrypt`) and the application would see two
    /// databases. Refused unless allowed.
    #[error(
        "{path} has {links} other hard link(s): they would keep the old bytes{what} and stop being the same database; remove them first, or allow it (--force)"
    )]
    OtherLinks {
        /// The file.
        path: PathBuf,
        /// Names besides this one.
        links: u64,
        /// What the old bytes are, for the message (", the plaintext" for encrypt).
        what: &'static str,
    },
    /// A destination that `--force` does not replace: not a regular file reached
    /// without a symbolic link, or a file other than the one checked by the time it
    /// would have been replaced.
    #[error("{path} is not replaced: {why}")]
    NotReplaceable {
        /// The destination.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The operation needs SQLCipher (a database key, an encrypted source or target)
    /// and this build links plain SQLite: the `sqlcipher` feature of
    /// `sqlvault-sqlite` is off. Nothing was read or written.
    #[error("{op}: built without SQLCipher support (the sqlcipher feature of sqlvault-sqlite is off)")]
    NoSqlcipher {
        /// What was asked.
        op: &'static str,
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
    /// A filesystem error on `path`; a missing file is [`SqliteError::Missing`].
    pub(crate) fn io_at(path: &std::path::Path, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            SqliteError::Missing {
                path: path.to_path_buf(),
            }
        } else {
            SqliteError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }

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
            // SQLITE_READONLY_ROLLBACK: a hot journal appeared after the open's check.
            Some(ErrorCode::ReadOnly) if matches!(&e, rusqlite::Error::SqliteFailure(f, _) if f.extended_code == 8 | (3 << 8)) =>
            {
                let mut j = path.as_os_str().to_os_string();
                j.push("-journal");
                SqliteError::HotJournal {
                    path: path.to_path_buf(),
                    journal: PathBuf::from(j),
                }
            }
            _ => SqliteError::Sqlite {
                path: path.to_path_buf(),
                source: e,
            },
        }
    }
}
