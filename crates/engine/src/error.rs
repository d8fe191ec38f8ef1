use std::fmt;

/// Broad class of a failure; the CLI maps each to a documented exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Bad arguments or configuration.
    Usage,
    /// A snapshot, file, repository or key that does not exist.
    NotFound,
    /// The destination exists and `--force` was not given.
    Exists,
    /// Wrong identity or passphrase, or the host lacks the key the operation needs.
    Auth,
    /// Data failed authentication or verification: corrupt, truncated or forged.
    Integrity,
    /// The source database cannot be read (not a database, locked, unreadable).
    Source,
    /// The object store is unreachable or refused the request.
    Store,
    /// Local filesystem failure.
    Io,
    /// Concurrent work: another prune holds the lock, another host holds a database's
    /// lease, or a backup ran longer than the prune grace period and did not commit.
    Busy,
    /// Some destinations of a multi-destination command succeeded and others failed.
    Partial,
    /// The snapshot is intact — every page hash and the logical checksum match what
    /// was backed up — but the database it holds fails SQLite's integrity_check: the
    /// source was already damaged (or is judged by a stricter SQLite) when it was
    /// backed up.
    SourceDamaged,
    /// The session's [`crate::Cancel`] flag was raised; nothing was committed after it.
    Cancelled,
    /// A bug: an invariant of sqlvault itself did not hold.
    Internal,
}

/// An engine error: a stable machine code (`"crypt.no-matching-identity"`), a kind for
/// exit codes, a one-line message naming the thing that failed, and the cause.
///
/// The message never repeats the cause's text: [`Error::one_line`] appends each cause
/// once. An error of a lower crate that already says everything is wrapped
/// transparently ([`Error::wrap`]): its text is the message, and its own causes follow.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    code: &'static str,
    /// `None`: transparent, the source's text is the message.
    message: Option<String>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    /// The snapshot the failure concerns, when one does: what a caller names to act on
    /// it (a CLI hint, a retry).
    snapshot: Option<String>,
}

impl Error {
    /// A new error.
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        Error {
            kind,
            code,
            message: Some(message.into()),
            source: None,
            snapshot: None,
        }
    }

    /// Records the snapshot (its full id) the failure concerns.
    pub fn with_snapshot(mut self, id: impl Into<String>) -> Self {
        self.snapshot = Some(id.into());
        self
    }

    /// The snapshot the failure concerns, if it names one.
    pub fn snapshot(&self) -> Option<&str> {
        self.snapshot.as_deref()
    }

    /// `source` classified as `kind`/`code`, its own text as the message (for errors of
    /// the sqlite and store crates, which name what failed themselves).
    pub fn wrap(kind: ErrorKind, code: &'static str, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error {
            kind,
            code,
            message: None,
            source: Some(Box::new(source)),
            snapshot: None,
        }
    }

    /// Attaches the cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The class of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Stable code for `--json` and drills; never match on message text.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The message with every cause, on one line: `message: cause: cause's cause`.
    /// Errors of this workspace never repeat their cause; some of object_store's and
    /// the OS's do (`Generic S3 error: <cause>`, then the cause again as the source),
    /// so a cause whose text its parent's already holds is left out.
    pub fn one_line(&self) -> String {
        let mut s = self.to_string();
        let mut parent = s.clone();
        let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(self);
        while let Some(e) = cur {
            let m = e.to_string();
            if !m.is_empty() && !parent.contains(&m) {
                s.push_str(": ");
                s.push_str(&m);
            }
            parent = m;
            cur = e.source();
        }
        s.replace('\n', " ")
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.message, &self.source) {
            (Some(m), _) => f.write_str(m),
            (None, Some(s)) => fmt::Display::fmt(s, f),
            (None, None) => f.write_str(self.code),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.message {
            Some(_) => self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static)),
            // Transparent: the wrapped error is the message, its cause comes next.
            None => self.source.as_deref().and_then(|e| e.source()),
        }
    }
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<sqlvault_store::StoreError> for Error {
    fn from(e: sqlvault_store::StoreError) -> Self {
        use sqlvault_store::StoreError as S;
        let (kind, code) = match &e {
            S::NotFound { .. } => (ErrorKind::NotFound, "store.not-found"),
            S::AlreadyExists { .. } => (ErrorKind::Store, "store.already-exists"),
            S::Conflict { .. } => (ErrorKind::Busy, "store.conflict"),
            S::InvalidUrl { .. } => (ErrorKind::Usage, "store.invalid-url"),
            S::MissingDirectory { .. } => (ErrorKind::NotFound, "repo.not-found"),
            S::MissingBucket { .. } => (ErrorKind::NotFound, "store.missing-bucket"),
            S::NoCredentials { .. } => (ErrorKind::Usage, "store.no-credentials"),
            S::BadConfig { .. } => (ErrorKind::Usage, "store.bad-config"),
            _ => (ErrorKind::Store, "store.unavailable"),
        };
        Error::wrap(kind, code, e)
    }
}

impl From<sqlvault_sqlite::SqliteError> for Error {
    fn from(e: sqlvault_sqlite::SqliteError) -> Self {
        use sqlvault_sqlite::SqliteError as S;
        let (kind, code) = match &e {
            S::Missing { .. } => (ErrorKind::NotFound, "source.missing"),
            S::NotADatabase { .. } => (ErrorKind::Source, "source.not-a-database"),
            S::Busy { .. } => (ErrorKind::Source, "source.busy"),
            S::Io { .. } => (ErrorKind::Io, "source.io"),
            S::Unreproducible { .. } => (ErrorKind::Source, "dump.unreproducible"),
            S::Output { .. } => (ErrorKind::Io, "dump.write-failed"),
            S::Load { .. } => (ErrorKind::Integrity, "load.statement-failed"),
            S::Refused { .. } => (ErrorKind::Integrity, "load.statement-refused"),
            S::BadDump { .. } => (ErrorKind::Integrity, "load.bad-dump"),
            S::Verify { .. } => (ErrorKind::Integrity, "load.verify-failed"),
            S::SourceDamaged { .. } => (ErrorKind::SourceDamaged, "restore.source-damaged"),
            S::Exists { .. } => (ErrorKind::Exists, "load.destination-exists"),
            S::StaleSideFile { .. } => (ErrorKind::Exists, "load.stale-side-files"),
            S::Encrypted { .. } => (ErrorKind::Auth, "source.key-required"),
            S::WrongKey { .. } => (ErrorKind::Auth, "source.wrong-key"),
            S::NotEncrypted { .. } => (ErrorKind::Usage, "source.not-encrypted"),
            S::BadKey { .. } => (ErrorKind::Usage, "source.bad-key"),
            S::InUse { .. } => (ErrorKind::Source, "db.in-use"),
            S::NotReplaceable { .. } => (ErrorKind::Exists, "destination.not-replaceable"),
            S::OtherLinks { .. } => (ErrorKind::Exists, "db.other-links"),
            S::NotRegular { .. } => (ErrorKind::Source, "source.not-regular"),
            S::HotJournal { .. } => (ErrorKind::Source, "source.hot-journal"),
            S::PageSize { .. } => (ErrorKind::Usage, "db.page-size"),
            _ => (ErrorKind::Source, "source.sqlite"),
        };
        Error::wrap(kind, code, e)
    }
}

pub(crate) fn io_err(what: impl fmt::Display, e: std::io::Error) -> Error {
    Error::new(ErrorKind::Io, "io", format!("{what}")).with_source(e)
}

pub(crate) fn corrupt(what: impl fmt::Display, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::new(
        ErrorKind::Integrity,
        "repo.corrupt-object",
        format!("{what} is corrupt or was tampered with"),
    )
    .with_source(e)
}

pub(crate) fn crypt_err(what: impl fmt::Display, e: sqlvault_crypt::CryptError) -> Error {
    use sqlvault_crypt::CryptError as C;
    match e {
        C::NoMatchingIdentity => Error::new(
            ErrorKind::Auth,
            "crypt.no-matching-identity",
            format!(
                "cannot decrypt {what}: no identity given matches it (wrong key or passphrase, or its recipient header is damaged)"
            ),
        ),
        C::Corrupt => corrupt(what, e),
        C::IdentityFile { .. } | C::InvalidRecipient { .. } => {
            Error::new(ErrorKind::Usage, "crypt.bad-key", e.to_string())
        }
        other => Error::new(
            ErrorKind::Internal,
            "crypt.failed",
            format!("encryption of {what} failed"),
        )
        .with_source(other),
    }
}

/// The page maps of `m` give `got` pages, not the manifest's count.
pub(crate) fn map_count_mismatch(m: &sqlvault_format::Manifest, got: usize) -> Error {
    Error::new(
        ErrorKind::Integrity,
        "repo.corrupt-object",
        format!(
            "page maps of snapshot {} give {got} pages, manifest says {}",
            m.id.short(),
            m.page_count
        ),
    )
}

/// The page maps of `m` leave page `pgno` without a chunk.
pub(crate) fn map_unmapped(m: &sqlvault_format::Manifest, pgno: usize) -> Error {
    Error::new(
        ErrorKind::Integrity,
        "repo.corrupt-object",
        format!("page maps of snapshot {} leave page {pgno} unmapped", m.id.short()),
    )
}
