//! Object storage for sqlvault, on top of [`object_store`]: one repository location
//! (a backend plus a key prefix) behind one small async API.
//!
//! What it adds to `object_store`:
//! - [`Store::put_if_absent`], the create-if-absent write that is the commit point of
//!   every snapshot (a retried create whose first attempt landed is recognised);
//! - retries of transient failures with jittered exponential backoff
//!   ([`RetryPolicy`]);
//! - one error type, [`StoreError`], with [`StoreError::is_not_found`] and
//!   [`StoreError::is_transient`] for callers to branch on (never on message text);
//! - per-kind request counters ([`Store::stats`], [`RequestCounts`]) so that commands
//!   report what they cost;
//! - handles by capability: [`Store::reader`] gives a [`ReadStore`] (GET, ranged GET,
//!   HEAD, LIST) and [`Store::appender`] an [`AppendStore`] (those plus PUT and
//!   create-if-absent, no DELETE). Code that must never delete — backups, copies —
//!   takes an `AppendStore`, and the compiler keeps the promise.
//!
//! # Opening a location
//!
//! [`Store::open_url`] opens an existing repository and never creates anything;
//! [`Store::create_url`] also creates a missing local directory (for `init` only).
//! [`Store::new`] wraps any [`object_store::ObjectStore`] (a fault-injecting one in
//! tests). URLs:
//!
//! | URL | backend | cargo feature |
//! |---|---|---|
//! | `/abs/path`, `rel/path`, `file:///abs/path` | local disk | always |
//! | `memory://` | in memory, empty, private to the returned `Store` | always |
//! | `s3://bucket/prefix` | S3 and S3-compatible servers (`AWS_*` variables, including `AWS_ENDPOINT` and `AWS_ALLOW_HTTP`) | `s3` |
//! | `gs://bucket/prefix` | Google Cloud Storage (`GOOGLE_*`) | `gcs` |
//! | `az://container/prefix` | Azure Blob Storage (`AZURE_*`, `AZURE_STORAGE_USE_EMULATOR`) | `azure` |
//!
//! The cloud features are off by default, so a crate that reuses this one for local
//! disk compiles no HTTP client; a cloud URL whose feature is off fails with
//! [`StoreError::BackendNotBuilt`], which names the feature. The `sqlvault` binary
//! enables all three.
//!
//! The cloud clients are configured by the variables of a [`StoreEnv`] the caller
//! hands over (the names above, as object_store's builders know them): this crate never
//! reads the process environment, so a service can open stores with different
//! credentials side by side. A binary passes `StoreEnv::from_vars(std::env::vars_os())`.
//!
//! # Example
//!
//! A commit the way a backup makes one: the data object first, then the object that
//! makes it visible, created only if absent, then read back through a read-only
//! handle.
//!
//! ```
//! use sqlvault_store::{bytes::Bytes, Store, StoreEnv, StoreError};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! rt.block_on(async {
//!     let dir = tempfile::tempdir()?;
//!     // Only `init` creates the directory; every later command opens it.
//!     Store::create_url(dir.path().to_str().unwrap(), &StoreEnv::default())?;
//!     let store = Store::open_url(dir.path().to_str().unwrap(), &StoreEnv::default())?;
//!
//!     let writer = store.appender(); // no delete on this handle
//!     writer.put("packs/p1", Bytes::from_static(b"pack bytes")).await?;
//!     writer.put_if_absent("snapshots/s1", Bytes::from_static(b"manifest")).await?;
//!     // A second commit under the same name is refused, not overwritten.
//!     let again = writer.put_if_absent("snapshots/s1", Bytes::from_static(b"other")).await;
//!     assert!(matches!(again, Err(StoreError::AlreadyExists { .. })));
//!
//!     let reader = store.reader();
//!     assert_eq!(reader.get("snapshots/s1").await?, Bytes::from_static(b"manifest"));
//!     assert_eq!(reader.get_range("packs/p1", 0..4).await?, Bytes::from_static(b"pack"));
//!     assert_eq!(reader.list("snapshots").await?, vec![("s1".to_string(), 8)]);
//!     assert!(reader.get("snapshots/s2").await.unwrap_err().is_not_found());
//!     assert_eq!(store.stats().put, 3);
//!     Ok::<(), Box<dyn std::error::Error>>(())
//! })
//! # }
//! ```
//!
//! `Store` itself keeps the full API (including [`Store::delete`]) for the code that
//! deletes by design: retention and prune.

// (tidy: long file — one type and its contract tests; the conformance suite is kept
// beside what it checks.)

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![deny(rustdoc::broken_intra_doc_links)]

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use bytes;
use bytes::Bytes;
use futures::TryStreamExt;
pub use object_store;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

/// Errors from a [`Store`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The repository URL cannot be used: malformed, an unknown scheme, or a backend
    /// that refuses its configuration. `source` is the underlying parser's, builder's
    /// or filesystem's error when there is one; `reason` never repeats it.
    #[error("invalid repository url {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given (credentials are never part of it).
        url: String,
        /// What is wrong, in words, without the cause's own text.
        reason: String,
        /// The cause, when another library reported it.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    },
    /// The cloud client of a well-formed URL cannot be built from the variables
    /// given: its credentials (a service-account file that is missing or not JSON, a
    /// key that is not base64) or a setting are unusable. `source` says which.
    #[error("cannot configure the {backend} client for {url:?} from {vars} (credentials or settings)")]
    BadConfig {
        /// The URL as given.
        url: String,
        /// The backend's name.
        backend: &'static str,
        /// The variables it is configured from.
        vars: &'static str,
        /// The client builder's error.
        #[source]
        source: Cause,
    },
    /// The URL names a cloud backend that this build of `sqlvault-store` was compiled
    /// without: enable the named cargo feature (`s3`, `gcs` or `azure`). Reported
    /// before any network access; the `sqlvault` binary has all three.
    #[error(
        "{scheme}:// repositories need the `{feature}` feature of sqlvault-store, which this build was compiled without"
    )]
    BackendNotBuilt {
        /// The URL scheme (`s3`, `gs` or `az`).
        scheme: String,
        /// The cargo feature that adds it.
        feature: &'static str,
    },
    /// The object does not exist.
    #[error("object {key} not found in {repo}")]
    NotFound {
        /// Key relative to the repository.
        key: String,
        /// Repository description.
        repo: String,
    },
    /// A local repository directory that does not exist (only `init` creates one:
    /// a mistyped path must not leave directories behind).
    #[error("no sqlvault repository at {}: no such directory", path.display())]
    MissingDirectory {
        /// The directory.
        path: std::path::PathBuf,
    },
    /// The bucket (or Azure container) of a cloud URL does not exist: a PUT or a LIST
    /// answered "not found", which no object can cause. sqlvault never creates
    /// buckets (their region, lock and access policy are the owner's decisions).
    #[error("bucket {bucket:?} does not exist at {repo} (create it first; sqlvault never creates buckets)")]
    MissingBucket {
        /// The bucket or container name.
        bucket: String,
        /// Repository description.
        repo: String,
    },
    /// No credentials are configured for the cloud (variables, the AWS shared files,
    /// gcloud's application default credentials) and the instance metadata service,
    /// the client's last resort, did not give any.
    #[error("no {backend} credentials for {repo}: {looked}, and {service} gave none")]
    NoCredentials {
        /// Repository description.
        repo: String,
        /// The cloud (`AWS`, `Google Cloud`, `Azure`).
        backend: &'static str,
        /// Where credentials were looked for, in words (names, never values).
        looked: String,
        /// The metadata service asked last.
        service: &'static str,
        /// Whether the metadata service's failure may pass (retried as such: on EC2
        /// the role is the credential, and its endpoint can have a bad moment).
        transient: bool,
        /// What the last attempt reported.
        #[source]
        source: Box<object_store::Error>,
    },
    /// A create-if-absent put found an object already there.
    #[error("object {key} already exists in {repo}")]
    AlreadyExists {
        /// Key relative to the repository.
        key: String,
        /// Repository description.
        repo: String,
    },
    /// A conditional update ([`Store::put_if_version`]) found the object replaced or
    /// removed since it was read: another writer got there first.
    #[error("object {key} in {repo} was changed by another writer")]
    Conflict {
        /// Key relative to the repository.
        key: String,
        /// Repository description.
        repo: String,
    },
    /// The backend refused or failed, after retries if the failure looked transient.
    #[error("{op} {key} on {repo} failed")]
    Backend {
        /// Operation (GET, PUT, …).
        op: &'static str,
        /// Key relative to the repository.
        key: String,
        /// Repository description.
        repo: String,
        /// Whether retrying later might help.
        transient: bool,
        /// Backend error.
        #[source]
        source: Box<object_store::Error>,
    },
}

impl StoreError {
    /// The object is missing.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }

    /// Retrying may succeed (network, throttling, server errors).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Backend { transient: true, .. } | StoreError::NoCredentials { transient: true, .. }
        )
    }
}

fn is_transient(e: &object_store::Error) -> bool {
    use object_store::Error as E;
    // A client error the server answered (a GCS 400, say) arrives untyped, as a generic
    // error whose text carries the status: retrying cannot change the answer.
    if final_client_status(e).is_some() {
        return false;
    }
    !matches!(
        e,
        E::NotFound { .. }
            | E::AlreadyExists { .. }
            | E::Precondition { .. }
            | E::NotModified { .. }
            | E::NotSupported { .. }
            | E::NotImplemented { .. }
            | E::InvalidPath { .. }
            | E::PermissionDenied { .. }
            | E::Unauthenticated { .. }
            | E::UnknownConfigurationKey { .. }
    )
}

/// The 4xx status (but 408 and 429, which may pass) an HTTP answer gave, as object_store
/// words it in an error's text (`… status code: 400 Bad Request …`) when it has no typed
/// variant for it.
fn final_client_status(e: &(dyn std::error::Error + 'static)) -> Option<u16> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if let Some(i) = text.find("status code: ") {
            let code: u16 = text[i + 13..].get(..3)?.parse().ok()?;
            return ((400..500).contains(&code) && code != 408 && code != 429).then_some(code);
        }
        cur = err.source();
    }
    None
}

/// Whether a cloud client's error comes from the EC2 instance metadata service at
/// `host` (object_store's last resort for S3 credentials). object_store gives no typed
/// way to tell a credential lookup's failure from the bucket's, but its request errors
/// name the URL they were sending to.
fn from_metadata_service(e: &object_store::Error, host: &str) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.to_string().contains(host) {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Live request counters by kind (attempts, retries included), shared by a store
/// and its clones; read them as a [`RequestCounts`].
#[derive(Debug, Default)]
pub struct RequestStats {
    get: AtomicU64,
    put: AtomicU64,
    list: AtomicU64,
    delete: AtomicU64,
    head: AtomicU64,
    retries: AtomicU64,
}

/// A snapshot of [`RequestStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RequestCounts {
    /// GET requests (whole or ranged).
    pub get: u64,
    /// PUT requests.
    pub put: u64,
    /// LIST requests (one per listing call).
    pub list: u64,
    /// DELETE requests.
    pub delete: u64,
    /// HEAD requests.
    pub head: u64,
    /// Attempts that were retries of an earlier failed attempt.
    pub retries: u64,
}

impl std::ops::Add for RequestCounts {
    type Output = RequestCounts;
    fn add(self, o: RequestCounts) -> RequestCounts {
        RequestCounts {
            get: self.get + o.get,
            put: self.put + o.put,
            list: self.list + o.list,
            delete: self.delete + o.delete,
            head: self.head + o.head,
            retries: self.retries + o.retries,
        }
    }
}

impl std::iter::Sum for RequestCounts {
    fn sum<I: Iterator<Item = RequestCounts>>(iter: I) -> RequestCounts {
        iter.fold(RequestCounts::default(), |a, b| a + b)
    }
}

impl RequestCounts {
    /// Requests made since `before` (an earlier snapshot of the same counters).
    pub fn since(&self, before: RequestCounts) -> RequestCounts {
        RequestCounts {
            get: self.get - before.get,
            put: self.put - before.put,
            list: self.list - before.list,
            delete: self.delete - before.delete,
            head: self.head - before.head,
            retries: self.retries - before.retries,
        }
    }
}

impl RequestStats {
    fn counter(&self, op: &'static str) -> &AtomicU64 {
        match op {
            "GET" => &self.get,
            "PUT" => &self.put,
            "LIST" => &self.list,
            "DELETE" => &self.delete,
            _ => &self.head,
        }
    }

    /// Current counts.
    pub fn counts(&self) -> RequestCounts {
        RequestCounts {
            get: self.get.load(Ordering::Relaxed),
            put: self.put.load(Ordering::Relaxed),
            list: self.list.load(Ordering::Relaxed),
            delete: self.delete.load(Ordering::Relaxed),
            head: self.head.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }
}

/// One object of a listing ([`Store::list_versions`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its name under the listed directory.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// The store's version of it (entity tag and modification time), when the store
    /// reports one: a new object under the same name has another.
    pub version: Option<String>,
    /// When the store last wrote it, unix milliseconds (the store's clock). Object Lock
    /// retention by a bucket default runs from here.
    pub modified_ms: i64,
}

/// Retry policy for transient failures: `attempts` tries in all, sleeping
/// `base × 4^n` with ±50% jitter between them.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Total tries including the first.
    pub attempts: u32,
    /// First backoff.
    pub base: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            base: Duration::from_millis(100),
        }
    }
}

impl RetryPolicy {
    /// Sets the number of tries.
    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }
    /// Sets the first backoff.
    pub fn with_base(mut self, base: Duration) -> Self {
        self.base = base;
        self
    }
}

/// One repository location: a backend and a key prefix, with the retry policy and
/// the request counters every operation goes through. Clones share the backend and
/// the counters. Keys are `/`-separated and relative to the prefix.
///
/// `Store` has the whole API, DELETE included; hand code that must not delete a
/// [`Store::appender`] or [`Store::reader`] instead.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    repo: String,
    location: String,
    stats: Arc<RequestStats>,
    retry: RetryPolicy,
    local: Option<std::path::PathBuf>,
    /// The bucket or container of a cloud URL.
    bucket: Option<String>,
    /// With no credentials configured, the metadata service the cloud client asks
    /// instead: its failures are reported as [`StoreError::NoCredentials`].
    fallback: Option<Arc<Fallback>>,
    /// For S3: what the Object Lock requests object_store has no API for need.
    s3_admin: Option<Arc<s3lock::S3Admin>>,
}

/// The configuration of the cloud clients: the `AWS_*`, `GOOGLE_*`, `AZURE_*`,
/// `SERVICE_ACCOUNT` and `IDENTITY_ENDPOINT` variables object_store's builders would
/// read, and `HOME` (where the AWS shared files `~/.aws/credentials` and
/// `~/.aws/config` are, read for `s3://` as every AWS tool reads them: `AWS_PROFILE`,
/// static keys, the region, `endpoint_url`; variables win over the files), handed over
/// by the caller. The library never reads the process environment:
/// a binary passes `StoreEnv::from_vars(std::env::vars_os())`, a service or a test
/// passes exactly what it means.
#[derive(Clone, Default)]
pub struct StoreEnv {
    vars: std::collections::BTreeMap<String, String>,
}

impl fmt::Debug for StoreEnv {
    // Values are credentials: only the names are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.vars.keys()).finish()
    }
}

impl StoreEnv {
    /// The variables of `vars` that configure a cloud client (others, and names or
    /// values that are not UTF-8, are left out).
    pub fn from_vars<K, V>(vars: impl IntoIterator<Item = (K, V)>) -> StoreEnv
    where
        K: AsRef<std::ffi::OsStr>,
        V: AsRef<std::ffi::OsStr>,
    {
        let mut env = StoreEnv::default();
        for (k, v) in vars {
            if let (Some(k), Some(v)) = (k.as_ref().to_str(), v.as_ref().to_str())
                && (["AWS_", "GOOGLE_", "AZURE_"].iter().any(|p| k.starts_with(p))
                    || k == "SERVICE_ACCOUNT"
                    || k == "IDENTITY_ENDPOINT"
                    // The GCE metadata server's address (object_store reads these itself).
                    || k.starts_with("GCE_METADATA_")
                    // Azurite's URL (with AZURE_STORAGE_USE_EMULATOR).
                    || k == "AZURITE_BLOB_STORAGE_URL"
                    // Where `~/.aws/credentials` and `~/.aws/config` are.
                    || k == "HOME")
            {
                env.vars.insert(k.to_string(), v.to_string());
            }
        }
        env
    }

    /// Sets one variable.
    pub fn with(mut self, name: &str, value: &str) -> StoreEnv {
        self.vars.insert(name.to_string(), value.to_string());
        self
    }

    /// A variable's value, when set and not empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// The variables whose names start with `prefix`.
    #[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
    fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.vars
            .iter()
            .filter(move |(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// `scheme://bucket/prefix`, with the endpoint or account the configuration selects: a
/// bucket name alone does not say which service holds it.
fn cloud_location(scheme: &str, bucket: &str, prefix: &str, vars: &StoreEnv) -> String {
    let env = |names: &[&str]| names.iter().find_map(|n| vars.get(n).map(str::to_string));
    let service = match scheme {
        "s3" => env(&["AWS_ENDPOINT", "AWS_ENDPOINT_URL"]).map(|e| e.trim_end_matches('/').to_string()),
        "az" => env(&["AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT"]).map(|a| {
            if env(&["AZURE_STORAGE_USE_EMULATOR"]).is_some_and(|v| v == "true" || v == "1") {
                format!("{a}@emulator")
            } else {
                a
            }
        }),
        _ => None,
    };
    match service {
        Some(s) => format!("{scheme}://{bucket}/{prefix}?service={s}"),
        None => format!("{scheme}://{bucket}/{prefix}"),
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Store({})", self.repo)
    }
}

/// Retries inside object_store's HTTP clients: short, so an unreachable server gives a
/// clear error in seconds; our own layer retries whole operations on top.
#[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
fn client_retry() -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 2,
        retry_timeout: Duration::from_secs(20),
    }
}

/// `base` with every variable of `env` under `prefix` whose lowercased name is one of
/// the builder's configuration keys (what object_store's `from_env` does with the
/// process environment).
#[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
fn configured<B, K: std::str::FromStr>(env: &StoreEnv, prefix: &str, base: B, set: impl Fn(B, K, &str) -> B) -> B {
    env.with_prefix(prefix)
        .filter_map(|(k, v)| Some((k.to_ascii_lowercase().parse::<K>().ok()?, v)))
        .fold(base, |b, (k, v)| set(b, k, v))
}

/// `%XX` sequences decoded; `None` when the result is not UTF-8. A `%` not followed by
/// two hex digits stays as it is.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, ..) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A cloud client, the metadata service it falls back to when no credentials are
/// configured, the variables it was built from, and for S3 what its Object Lock
/// requests need.
type Cloud = (
    Arc<dyn ObjectStore>,
    Option<Fallback>,
    StoreEnv,
    Option<Arc<s3lock::S3Admin>>,
);

/// A cloud client left to its instance metadata service for credentials: where that
/// service is (URL prefixes: scheme, host and port, never a bare host an endpoint could
/// share) and what to tell the user when it gives none.
#[derive(Debug)]
struct Fallback {
    urls: Vec<String>,
    backend: &'static str,
    looked: String,
    service: &'static str,
}

impl Fallback {
    #[allow(dead_code)]
    fn new(backend: &'static str, service: &'static str, looked: String, urls: &[&str]) -> Fallback {
        Fallback {
            // The origin alone (an IDENTITY_ENDPOINT has a path the request extends).
            urls: urls
                .iter()
                .map(|u| match url::Url::parse(u) {
                    Ok(p) => p.origin().ascii_serialization() + "/",
                    Err(_) => u.trim_end_matches('/').to_string() + "/",
                })
                .collect(),
            backend,
            looked,
            service,
        }
    }
}

/// A builder's error, boxed as the cause of [`StoreError::InvalidUrl`] or [`StoreError::BadConfig`].
type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The object_store client for a cloud scheme (`s3`, `gs`, `az`), configured from
/// `env` as object_store's `from_env` would from the process environment (for S3, with
/// the AWS shared files added: [`aws_files`]), or [`StoreError::BackendNotBuilt`] when
/// this build lacks its feature. Also whether any credentials are configured (`false`
/// only for S3 left to the instance metadata service).
#[allow(unused_variables)]
fn cloud_store(scheme: &str, bucket: &str, env: &StoreEnv, url: &str) -> Result<Cloud, StoreError> {
    let not_built = |feature: &'static str| StoreError::BackendNotBuilt {
        scheme: scheme.to_string(),
        feature,
    };
    let invalid = |reason: String, source: Option<Cause>| StoreError::InvalidUrl {
        url: url.to_string(),
        reason,
        source,
    };
    let bad = |backend: &'static str, vars: &'static str, source: Cause| StoreError::BadConfig {
        url: url.to_string(),
        backend,
        vars,
        source,
    };
    match scheme {
        #[cfg(feature = "s3")]
        "s3" => {
            let files = aws_files::resolve(env).map_err(|r| invalid(r, None))?;
            let mut env = env.clone();
            if files.clear_token {
                env.vars.remove("AWS_SESSION_TOKEN");
            }
            for (k, v) in &files.vars {
                env = env.with(k, v);
            }
            if let Some(e) = env.get("AWS_ENDPOINT_URL_S3").map(str::to_string)
                && env.get("AWS_ENDPOINT").is_none()
                && env.get("AWS_ENDPOINT_URL").is_none()
            {
                env = env.with("AWS_ENDPOINT", &e);
            }
            plain_http_allowed(&env, &["AWS_ENDPOINT", "AWS_ENDPOINT_URL"], "AWS_ALLOW_HTTP")
                .map_err(|r| invalid(r, None))?;
            // Checksums on every upload (the SHA-256 object_store computes anyway to
            // sign the payload): S3 verifies the body, and a bucket with Object Lock
            // refuses uploads without one (s3lock.rs). AWS_CHECKSUM_ALGORITHM=none turns
            // them off for an S3-compatible store that refuses them.
            let algorithm = env.get("AWS_CHECKSUM_ALGORITHM").map(str::to_ascii_uppercase);
            let mut base = object_store::aws::AmazonS3Builder::new();
            match algorithm.as_deref() {
                Some("NONE" | "OFF") => {
                    env.vars.remove("AWS_CHECKSUM_ALGORITHM");
                }
                other => {
                    // The header names the algorithm the checksum is made with.
                    let (name, algo) = match other {
                        Some("CRC64NVME") => ("CRC64NVME", object_store::aws::Checksum::CRC64NVME),
                        _ => ("SHA256", object_store::aws::Checksum::SHA256),
                    };
                    let mut headers = object_store::HeaderMap::new();
                    headers.insert(
                        "x-amz-sdk-checksum-algorithm",
                        object_store::HeaderValue::from_static(name),
                    );
                    base = base
                        .with_client_options(object_store::ClientOptions::new().with_default_headers(headers))
                        .with_checksum_algorithm(algo);
                }
            }
            let builder = configured(&env, "AWS_", base, |b, k, v| b.with_config(k, v))
                .with_bucket_name(bucket)
                .with_retry(client_retry());
            let admin = s3_admin(&builder, bucket);
            let store = builder
                .build()
                .map_err(|e| bad("S3", "AWS_* variables and the AWS shared files", e.into()))?;
            let admin = admin.map(|(bucket_url, region, client)| {
                Arc::new(s3lock::S3Admin {
                    s3: store.clone(),
                    bucket_url,
                    region,
                    client,
                })
            });
            let fallback = (!files.has_credentials).then(|| {
                let profile = env
                    .get("AWS_PROFILE")
                    .or_else(|| env.get("AWS_DEFAULT_PROFILE"))
                    .unwrap_or("default");
                Fallback::new(
                    "AWS",
                    "the EC2 instance metadata service",
                    format!(
                        "none in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, none for profile {profile:?} in ~/.aws/credentials or ~/.aws/config"
                    ),
                    &[env.get("AWS_METADATA_ENDPOINT").unwrap_or("http://169.254.169.254")],
                )
            });
            Ok((Arc::new(store), fallback, env, admin))
        }
        #[cfg(not(feature = "s3"))]
        "s3" => Err(not_built("s3")),
        #[cfg(feature = "gcs")]
        "gs" => {
            let store = configured(
                env,
                "GOOGLE_",
                match env.get("SERVICE_ACCOUNT") {
                    Some(p) => object_store::gcp::GoogleCloudStorageBuilder::new().with_service_account_path(p),
                    None => object_store::gcp::GoogleCloudStorageBuilder::new(),
                },
                |b, k, v| b.with_config(k, v),
            )
            .with_bucket_name(bucket)
            .with_retry(client_retry())
            .build()
            .map_err(|e| bad("Google Cloud Storage", "GOOGLE_* and SERVICE_ACCOUNT", e.into()))?;
            // object_store's order: a service account (file or key), then gcloud's
            // application default credentials, then the GCE metadata server.
            let adc = env
                .get("HOME")
                .map(|h| std::path::Path::new(h).join(".config/gcloud/application_default_credentials.json"))
                .is_some_and(|p| p.is_file());
            let configured = adc
                || env.get("SERVICE_ACCOUNT").is_some()
                || env.vars.keys().any(|k| {
                    k.starts_with("GOOGLE_")
                        && (k.contains("SERVICE_ACCOUNT") || k.contains("CREDENTIALS") || k == "GOOGLE_SKIP_SIGNATURE")
                });
            let fallback = (!configured).then(|| {
                let ip = env.get("GCE_METADATA_IP").unwrap_or("169.254.169.254");
                let host = env.get("GCE_METADATA_HOST").unwrap_or("metadata.google.internal");
                Fallback::new(
                    "Google Cloud",
                    "the GCE metadata server",
                    "none in GOOGLE_SERVICE_ACCOUNT, GOOGLE_SERVICE_ACCOUNT_KEY or GOOGLE_APPLICATION_CREDENTIALS, no ~/.config/gcloud/application_default_credentials.json (gcloud auth application-default login)".into(),
                    &[&format!("http://{ip}"), &format!("http://{host}")],
                )
            });
            Ok((Arc::new(store), fallback, env.clone(), None))
        }
        #[cfg(not(feature = "gcs"))]
        "gs" => Err(not_built("gcs")),
        #[cfg(feature = "azure")]
        "az" => {
            let emulator = env
                .get("AZURE_STORAGE_USE_EMULATOR")
                .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
            if !emulator {
                plain_http_allowed(env, &["AZURE_STORAGE_ENDPOINT", "AZURE_ENDPOINT"], "AZURE_ALLOW_HTTP")
                    .map_err(|r| invalid(r, None))?;
            }
            let store = configured(
                env,
                "AZURE_",
                match env.get("IDENTITY_ENDPOINT") {
                    Some(e) => object_store::azure::MicrosoftAzureBuilder::new().with_msi_endpoint(e),
                    None => object_store::azure::MicrosoftAzureBuilder::new(),
                },
                |b, k, v| b.with_config(k, v),
            );
            // object_store's emulator mode reads AZURITE_BLOB_STORAGE_URL from the
            // process environment, which this library never relies on: the emulator's
            // URL given here is configured as the account's endpoint instead (the very
            // same path-style requests and signatures).
            let store = match env.get("AZURITE_BLOB_STORAGE_URL").filter(|_| emulator) {
                Some(url) => {
                    let account = env
                        .get("AZURE_STORAGE_ACCOUNT_NAME")
                        .unwrap_or(AZURITE_ACCOUNT)
                        .to_string();
                    let has_key = [
                        "AZURE_STORAGE_ACCOUNT_KEY",
                        "AZURE_STORAGE_ACCESS_KEY",
                        "AZURE_STORAGE_MASTER_KEY",
                    ]
                    .iter()
                    .any(|k| env.get(k).is_some());
                    let b = store
                        .with_use_emulator(false)
                        .with_allow_http(true)
                        .with_endpoint(format!("{}/{account}", url.trim_end_matches('/')))
                        .with_account(account);
                    if has_key { b } else { b.with_access_key(AZURITE_KEY) }
                }
                None => store,
            }
            .with_container_name(bucket)
            .with_retry(client_retry())
            .build()
            .map_err(|e| bad("Azure", "AZURE_* and IDENTITY_ENDPOINT", e.into()))?;
            // object_store's order: a bearer token, an access key, workload identity, a
            // client secret, a SAS, the Azure CLI, then managed identity (IMDS).
            let configured = emulator
                || env.vars.keys().any(|k| {
                    k.starts_with("AZURE_")
                        && ["KEY", "SAS", "TOKEN", "SECRET", "USE_AZURE_CLI", "SKIP_SIGNATURE"]
                            .iter()
                            .any(|w| k.contains(w))
                });
            let fallback = (!configured).then(|| {
                Fallback::new(
                    "Azure",
                    "managed identity (the instance metadata service)",
                    "none in AZURE_STORAGE_ACCOUNT_KEY, AZURE_STORAGE_SAS_KEY, AZURE_STORAGE_TOKEN, AZURE_CLIENT_SECRET or AZURE_FEDERATED_TOKEN_FILE, and AZURE_USE_AZURE_CLI is not set".into(),
                    &[env.get("IDENTITY_ENDPOINT").unwrap_or("http://169.254.169.254")],
                )
            });
            Ok((Arc::new(store), fallback, env.clone(), None))
        }
        #[cfg(not(feature = "azure"))]
        "az" => Err(not_built("azure")),
        _ => unreachable!("only s3, gs and az reach cloud_store"),
    }
}

/// Where the S3 bucket is, as the client built by `builder` addresses it (path style
/// `endpoint/bucket` unless virtual-hosted requests are asked for), its region, and an
/// HTTP client with its transport settings: for the signed Object Lock requests.
#[cfg(feature = "s3")]
fn s3_admin(
    builder: &object_store::aws::AmazonS3Builder,
    bucket: &str,
) -> Option<(String, String, object_store::client::HttpClient)> {
    use object_store::ClientConfigKey;
    use object_store::aws::AmazonS3ConfigKey as K;
    use object_store::client::HttpConnector;
    let region = builder
        .get_config_value(&K::Region)
        .unwrap_or_else(|| "us-east-1".into());
    let endpoint = builder.get_config_value(&K::Endpoint);
    let vhost = builder
        .get_config_value(&K::VirtualHostedStyleRequest)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let bucket_url = match (vhost, endpoint) {
        (true, Some(e)) => e.trim_end_matches('/').to_string(),
        (true, None) => format!("https://{bucket}.s3.{region}.amazonaws.com"),
        (false, Some(e)) => format!("{}/{bucket}", e.trim_end_matches('/')),
        (false, None) => format!("https://s3.{region}.amazonaws.com/{bucket}"),
    };
    // The same transport as the client's: proxy, certificates, timeouts, plain HTTP.
    let options = [
        ClientConfigKey::AllowHttp,
        ClientConfigKey::AllowInvalidCertificates,
        ClientConfigKey::NoSystemCertificates,
        ClientConfigKey::ConnectTimeout,
        ClientConfigKey::Http1Only,
        ClientConfigKey::Http2Only,
        ClientConfigKey::ProxyUrl,
        ClientConfigKey::ProxyCaCertificate,
        ClientConfigKey::ProxyExcludes,
        ClientConfigKey::Timeout,
        ClientConfigKey::UserAgent,
    ]
    .into_iter()
    .fold(object_store::ClientOptions::new(), |o, k| {
        match builder.get_config_value(&K::Client(k)) {
            Some(v) => o.with_config(k, v),
            None => o,
        }
    });
    let client = object_store::client::ReqwestConnector::default()
        .connect(&options)
        .ok()?;
    Some((bucket_url, region, client))
}

/// Azurite's account and its well-known key (published in Azurite's documentation: it
/// guards nothing).
#[cfg(feature = "azure")]
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
#[cfg(feature = "azure")]
const AZURITE_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Refuses an `http://` endpoint unless `allow` is set to true: object_store would
/// refuse it at the first request, as a failure our retries would repeat, without
/// naming the variable that allows it.
#[cfg(any(feature = "s3", feature = "azure"))]
fn plain_http_allowed(env: &StoreEnv, endpoints: &[&str], allow: &str) -> Result<(), String> {
    let Some((name, endpoint)) = endpoints.iter().find_map(|n| env.get(n).map(|v| (*n, v))) else {
        return Ok(());
    };
    let allowed = env
        .get(allow)
        .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    if endpoint.to_ascii_lowercase().starts_with("http://") && !allowed {
        return Err(format!(
            "{name} is a plain http:// endpoint; set {allow}=true to allow unencrypted HTTP (a local test server), or use https://"
        ));
    }
    Ok(())
}

impl Store {
    /// Opens an existing repository at `url` for reading or writing; never creates
    /// anything. A local directory that does not exist is
    /// [`StoreError::MissingDirectory`] (a mistyped path must not leave directories
    /// behind); object stores are not contacted until the first request. This is the
    /// open for every command but `init`, which uses [`Store::create_url`].
    ///
    /// Schemes: a plain path or `file:///abs/path`, `memory://` (a fresh, empty
    /// in-memory store per call), and, with their cargo features, `s3://bucket/prefix`
    /// (`s3`), `gs://bucket/prefix` (`gcs`) and `az://container/prefix` (`azure`),
    /// configured from `env` ([`StoreEnv`]) as described in the crate docs. A cloud scheme
    /// whose feature is off is [`StoreError::BackendNotBuilt`].
    pub fn open_url(url: &str, env: &StoreEnv) -> Result<Store, StoreError> {
        Self::open_with(url, env, false)
    }

    /// The same as [`Store::open_url`] (never creates anything); kept under its older
    /// name.
    pub fn from_url(url: &str, env: &StoreEnv) -> Result<Store, StoreError> {
        Self::open_with(url, env, false)
    }

    /// Like [`Store::open_url`], but creates a local directory (and its parents) that
    /// does not exist yet: for `init` only, so that every other command fails on a
    /// mistyped path instead of starting an empty repository there. Object stores
    /// behave as with [`Store::open_url`] (buckets are never created).
    pub fn create_url(url: &str, env: &StoreEnv) -> Result<Store, StoreError> {
        Self::open_with(url, env, true)
    }

    fn open_with(url: &str, env: &StoreEnv, create: bool) -> Result<Store, StoreError> {
        let invalid = |reason: &str| StoreError::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
            source: None,
        };
        let caused = |reason: &'static str| {
            move |e: Box<dyn std::error::Error + Send + Sync + 'static>| StoreError::InvalidUrl {
                url: url.to_string(),
                reason: reason.to_string(),
                source: Some(e),
            }
        };
        let mut local = None;
        let mut s3_admin = None;
        let mut cloud_bucket = None;
        let mut fallback = None;
        let location;
        let (inner, prefix): (Arc<dyn ObjectStore>, ObjPath) = if url.starts_with("memory://") {
            location = url.to_string();
            (Arc::new(object_store::memory::InMemory::new()), ObjPath::default())
        } else if url.starts_with("s3://") || url.starts_with("gs://") || url.starts_with("az://") {
            let parsed = url::Url::parse(url).map_err(|e| caused("not a URL")(e.into()))?;
            let bucket = parsed.host_str().unwrap_or_default();
            if bucket.is_empty() {
                return Err(invalid("missing bucket or container name"));
            }
            // The URL's path is percent-encoded (`my backups` arrives as `my%20backups`):
            // the prefix is what it encodes, so that the objects are where the user
            // wrote, not under a literal `%20`.
            let decoded = percent_decode(parsed.path().trim_matches('/'))
                .ok_or_else(|| invalid("the prefix is not valid UTF-8 once percent-decoded"))?;
            // `parse` keeps it as written (`from` would percent-encode every non-ASCII
            // byte into the key); what `parse` refuses (`..`, empty parts, control
            // characters) is encoded as object_store does.
            let prefix = ObjPath::parse(decoded.as_str()).unwrap_or_else(|_| ObjPath::from(decoded.as_str()));
            cloud_bucket = Some(bucket.to_string());
            // The location (what pins are keyed by) comes from the configuration the
            // client uses, the AWS shared files included.
            let (store, fb, used, admin) = cloud_store(parsed.scheme(), bucket, env, url)?;
            fallback = fb;
            s3_admin = admin;
            location = cloud_location(parsed.scheme(), bucket, prefix.as_ref(), &used);
            (store, prefix)
        } else {
            let path = match url.strip_prefix("file://") {
                Some(p) if p.starts_with('/') => std::path::PathBuf::from(p),
                Some(_) => return Err(invalid("file:// URLs need an absolute path")),
                None if url.contains("://") => return Err(invalid("unknown scheme")),
                None => std::path::PathBuf::from(url),
            };
            if create {
                std::fs::create_dir_all(&path).map_err(|e| caused("cannot create the directory")(e.into()))?;
            } else if !path.is_dir() {
                return Err(StoreError::MissingDirectory { path });
            }
            let canonical =
                std::fs::canonicalize(&path).map_err(|e| caused("cannot resolve the directory")(e.into()))?;
            location = format!("file://{}", canonical.display());
            let fs = object_store::local::LocalFileSystem::new_with_prefix(&path)
                .map_err(|e| caused("cannot open the directory")(e.into()))?
                .with_automatic_cleanup(true);
            local = Some(path);
            (Arc::new(fs), ObjPath::default())
        };
        let mut store = Store::new(inner, prefix, url.to_string());
        store.local = local;
        store.s3_admin = s3_admin;
        store.bucket = cloud_bucket;
        store.fallback = fallback.map(Arc::new);
        store.location = location;
        Ok(store)
    }

    /// Wraps an existing object store (e.g. a fault-injecting one in tests) under
    /// `prefix`; `description` names it in messages and is its [`Store::location`].
    /// Nothing is checked or contacted.
    pub fn new(inner: Arc<dyn ObjectStore>, prefix: ObjPath, description: String) -> Store {
        Store {
            inner,
            prefix,
            location: description.clone(),
            repo: description,
            stats: Arc::new(RequestStats::default()),
            retry: RetryPolicy::default(),
            local: None,
            bucket: None,
            fallback: None,
            s3_admin: None,
        }
    }

    /// The directory of a local-disk repository (`None` for object stores), so that
    /// its permissions can be audited.
    pub fn local_root(&self) -> Option<&std::path::Path> {
        self.local.as_deref()
    }

    /// Replaces the retry policy (the default is [`RetryPolicy::default`]); tests use it
    /// to make transient failures fail fast.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The canonical name of this location: what a restore host pins a repository's
    /// identity to. Two spellings of one place give one name (a relative and an
    /// absolute path, a trailing slash), and the same bucket name on another endpoint
    /// or account gives another.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// What this store is, for messages.
    pub fn describe(&self) -> &str {
        &self.repo
    }

    /// Requests made so far through this store and every clone and handle of it
    /// (attempts, retries included); subtract an earlier value with
    /// [`RequestCounts::since`] to cost one operation.
    pub fn stats(&self) -> RequestCounts {
        self.stats.counts()
    }

    /// Whether `other` counts its requests in the same counters (it is a clone of this
    /// store): a caller summing several stores' requests counts each once.
    pub fn same_counters(&self, other: &Store) -> bool {
        Arc::ptr_eq(&self.stats, &other.stats)
    }

    fn path(&self, key: &str) -> ObjPath {
        // The prefix's parts as they are (re-encoding its text would turn a non-ASCII
        // prefix into another key), then the key's.
        ObjPath::from_iter(
            self.prefix.parts().chain(
                key.split('/')
                    .filter(|p| !p.is_empty())
                    .map(object_store::path::PathPart::from),
            ),
        )
    }

    fn map_err(&self, op: &'static str, key: &str, e: object_store::Error) -> StoreError {
        match e {
            // No object makes a PUT or a LIST "not found": the bucket is missing.
            object_store::Error::NotFound { .. } if matches!(op, "PUT" | "LIST") && self.bucket.is_some() => {
                StoreError::MissingBucket {
                    bucket: self.bucket.clone().unwrap_or_default(),
                    repo: self.repo.clone(),
                }
            }
            object_store::Error::NotFound { .. } => StoreError::NotFound {
                key: key.to_string(),
                repo: self.repo.clone(),
            },
            object_store::Error::AlreadyExists { .. } => StoreError::AlreadyExists {
                key: key.to_string(),
                repo: self.repo.clone(),
            },
            // With no credentials configured, object_store asks the cloud's instance
            // metadata service before it signs a request; when that fails (not on such
            // a machine, no role), say so instead of its raw error (retried only if
            // transient).
            e if self
                .fallback
                .as_deref()
                .is_some_and(|f| f.urls.iter().any(|h| from_metadata_service(&e, h))) =>
            {
                let f = self.fallback.as_deref().expect("matched above");
                StoreError::NoCredentials {
                    repo: self.repo.clone(),
                    backend: f.backend,
                    looked: f.looked.clone(),
                    service: f.service,
                    transient: is_transient(&e),
                    source: Box::new(e),
                }
            }
            e => StoreError::Backend {
                op,
                key: key.to_string(),
                repo: self.repo.clone(),
                transient: is_transient(&e),
                source: Box::new(e),
            },
        }
    }

    async fn retrying<T, F, Fut>(&self, op: &'static str, key: &str, mut f: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = object_store::Result<T>>,
    {
        let mut attempt = 0;
        loop {
            self.stats.counter(op).fetch_add(1, Ordering::Relaxed);
            if attempt > 0 {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
            }
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let err = self.map_err(op, key, e);
                    attempt += 1;
                    if !err.is_transient() || attempt >= self.retry.attempts {
                        return Err(err);
                    }
                    let base = self.retry.base.as_secs_f64() * 4f64.powi(attempt as i32 - 1);
                    let sleep = base * rand::random_range(0.5..1.5);
                    tracing::debug!(op, key, attempt, "transient store error, retrying in {sleep:.2}s");
                    tokio::time::sleep(Duration::from_secs_f64(sleep)).await;
                }
            }
        }
    }

    /// Writes `key`, replacing any existing object.
    pub async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let path = self.path(key);
        self.retrying("PUT", key, || self.inner.put(&path, PutPayload::from(data.clone())))
            .await
            .map(|_| ())
    }

    /// Writes `key` only if no object exists there ([`StoreError::AlreadyExists`]
    /// otherwise). This is the commit point of every snapshot.
    pub async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        match self.create(key, &data).await {
            Ok(_) => Ok(()),
            // A retried create whose first attempt landed reports AlreadyExists; the
            // caller's random names make a foreign object at the same key implausible,
            // so compare content to tell the two apart.
            Err(StoreError::AlreadyExists { .. }) if self.stats.retries.load(Ordering::Relaxed) > 0 => {
                match self.get(key).await {
                    Ok(existing) if existing == data => Ok(()),
                    _ => Err(StoreError::AlreadyExists {
                        key: key.to_string(),
                        repo: self.repo.clone(),
                    }),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// One create-if-absent PUT (retried if transient), as the store answered it.
    async fn create(&self, key: &str, data: &Bytes) -> Result<object_store::PutResult, StoreError> {
        let path = self.path(key);
        let opts = || PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        self.retrying("PUT", key, || {
            self.inner.put_opts(&path, PutPayload::from(data.clone()), opts())
        })
        .await
    }

    /// Reads the whole object.
    pub async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let path = self.path(key);
        self.retrying("GET", key, || async { self.inner.get(&path).await?.bytes().await })
            .await
    }

    /// Reads a byte range.
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        let path = self.path(key);
        self.retrying("GET", key, || self.inner.get_range(&path, range.clone()))
            .await
    }

    /// Size of the object, or `None` if it does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let path = self.path(key);
        match self.retrying("HEAD", key, || self.inner.head(&path)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Lists the objects under directory `dir` as `(name, size)`, names relative to `dir`.
    pub async fn list(&self, dir: &str) -> Result<Vec<(String, u64)>, StoreError> {
        Ok(self
            .list_versions(dir)
            .await?
            .into_iter()
            .map(|o| (o.name, o.size))
            .collect())
    }

    /// [`Store::list`] with each object's version as the store reports it: what tells
    /// the object listed now from another object listed under the same name before.
    pub async fn list_versions(&self, dir: &str) -> Result<Vec<Listed>, StoreError> {
        let path = self.path(dir);
        let metas: Vec<object_store::ObjectMeta> = self
            .retrying("LIST", dir, || self.inner.list(Some(&path)).try_collect())
            .await?;
        // The repository root ("") of a store without a prefix lists from the bucket's
        // top: names are then already relative.
        let base = if path.as_ref().is_empty() {
            String::new()
        } else {
            format!("{path}/")
        };
        let mut out: Vec<Listed> = metas
            .into_iter()
            .filter_map(|m| {
                let full = m.location.to_string();
                let name = full.strip_prefix(&base)?.to_string();
                Some(Listed {
                    name,
                    size: m.size,
                    modified_ms: m.last_modified.timestamp_millis(),
                    version: m
                        .e_tag
                        .map(|t| format!("{t}@{}", m.last_modified.timestamp_nanos_opt().unwrap_or(0))),
                })
            })
            // Leftover temporary files of the local backend are not objects.
            .filter(|o| !o.name.contains('#') && !o.name.starts_with('.'))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Deletes `key`; deleting a missing object succeeds.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key);
        match self.retrying("DELETE", key, || self.inner.delete(&path)).await {
            Err(e) if e.is_not_found() => Ok(()),
            r => r,
        }
    }
}

/// A read-only handle on a repository location: GET, ranged GET, HEAD and LIST, and
/// nothing that writes. Made with [`Store::reader`] (or [`AppendStore::reader`]).
///
/// Code that only reads a repository — restore, verify, check — takes a `ReadStore`,
/// so that it cannot write or delete by construction, not by review. It shares the
/// [`Store`]'s backend, retry policy and request counters (clones are cheap).
#[derive(Clone, Debug)]
pub struct ReadStore {
    store: Store,
}

/// An append-only handle on a repository location: everything a [`ReadStore`] does,
/// plus [`put`](AppendStore::put) and [`put_if_absent`](AppendStore::put_if_absent),
/// and no DELETE. Made with [`Store::appender`].
///
/// This is how "backups never delete" holds by type: a backup or copy that is handed
/// an `AppendStore` has no method that removes an object, so only code holding the
/// full [`Store`] (forget, prune) can. It shares the [`Store`]'s backend, retry policy
/// and request counters (clones are cheap).
#[derive(Clone, Debug)]
pub struct AppendStore {
    store: Store,
}

/// The read methods, identical on [`ReadStore`] and [`AppendStore`]; each forwards to
/// the [`Store`] method of the same name.
macro_rules! read_methods {
    () => {
        /// Reads the whole object; see [`Store::get`].
        pub async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
            self.store.get(key).await
        }

        /// Reads a byte range of the object; see [`Store::get_range`].
        pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
            self.store.get_range(key, range).await
        }

        /// Size of the object, or `None` if it does not exist; see [`Store::head`].
        pub async fn head(&self, key: &str) -> Result<Option<u64>, StoreError> {
            self.store.head(key).await
        }

        /// Lists the objects under directory `dir`; see [`Store::list`].
        pub async fn list(&self, dir: &str) -> Result<Vec<(String, u64)>, StoreError> {
            self.store.list(dir).await
        }

        /// The canonical name of the location; see [`Store::location`].
        pub fn location(&self) -> &str {
            self.store.location()
        }

        /// What the location is, for messages; see [`Store::describe`].
        pub fn describe(&self) -> &str {
            self.store.describe()
        }

        /// Requests made so far through every handle on this store; see [`Store::stats`].
        pub fn stats(&self) -> RequestCounts {
            self.store.stats()
        }

        /// The directory of a local-disk repository; see [`Store::local_root`].
        pub fn local_root(&self) -> Option<&std::path::Path> {
            self.store.local_root()
        }
    };
}

impl ReadStore {
    read_methods!();
}

impl AppendStore {
    read_methods!();

    /// Writes `key`; see [`Store::put`]. Meant for keys the caller makes unique (a
    /// content hash, a random id), where a second write is the same object again; a
    /// key that may already be taken by other content goes through
    /// [`AppendStore::put_if_absent`].
    pub async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.store.put(key, data).await
    }

    /// Writes `key` only if no object exists there; see [`Store::put_if_absent`].
    pub async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.store.put_if_absent(key, data).await
    }

    /// A read-only handle on the same location.
    pub fn reader(&self) -> ReadStore {
        ReadStore {
            store: self.store.clone(),
        }
    }
}

impl Store {
    /// A read-only handle on this location ([`ReadStore`]), sharing its counters.
    pub fn reader(&self) -> ReadStore {
        ReadStore { store: self.clone() }
    }

    /// An append-only handle on this location ([`AppendStore`]: reads and puts, no
    /// delete), sharing its counters.
    pub fn appender(&self) -> AppendStore {
        AppendStore { store: self.clone() }
    }
}

// Pure parsing, compiled (and tested) whatever the features; used by `s3`.
#[cfg_attr(not(feature = "s3"), allow(dead_code))]
mod aws_files;
mod cas;
mod s3lock;

pub use cas::ObjectVersion;
pub use s3lock::{BucketLock, LockMode};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_untyped_client_error_is_final_and_throttling_is_not() {
        let generic = |msg: &str| object_store::Error::Generic {
            store: "GCS",
            source: msg.to_string().into(),
        };
        let bad = generic(
            "Error performing PUT http://x/y - Server returned non-2xx status code: 400 Bad Request: invalid uploadType",
        );
        assert!(!is_transient(&bad));
        assert!(is_transient(&generic(
            "Server returned non-2xx status code: 429 Too Many Requests"
        )));
        assert!(is_transient(&generic(
            "Server returned non-2xx status code: 503 Service Unavailable"
        )));
        assert!(is_transient(&generic("connection reset by peer")));
    }

    #[test]
    fn url_prefixes_are_what_their_percent_encoding_says() {
        assert_eq!(
            percent_decode("my%20backups/%C3%A9quipe").as_deref(),
            Some("my backups/équipe")
        );
        assert_eq!(percent_decode("plain/prefix").as_deref(), Some("plain/prefix"));
        assert_eq!(percent_decode("100%").as_deref(), Some("100%"));
        assert_eq!(percent_decode("%zz%4").as_deref(), Some("%zz%4"));
        assert_eq!(percent_decode("%FF%FE"), None);
    }

    async fn contract(store: &Store) {
        store.put("a/x", Bytes::from_static(b"1")).await.unwrap();
        assert_eq!(store.get("a/x").await.unwrap(), Bytes::from_static(b"1"));
        assert_eq!(store.get_range("a/x", 0..1).await.unwrap(), Bytes::from_static(b"1"));
        assert_eq!(store.head("a/x").await.unwrap(), Some(1));
        assert_eq!(store.head("a/missing").await.unwrap(), None);
        assert!(store.get("a/missing").await.unwrap_err().is_not_found());
        store.put_if_absent("a/y", Bytes::from_static(b"2")).await.unwrap();
        let e = store.put_if_absent("a/y", Bytes::from_static(b"3")).await.unwrap_err();
        assert!(matches!(e, StoreError::AlreadyExists { .. }), "{e}");
        assert_eq!(store.get("a/y").await.unwrap(), Bytes::from_static(b"2"));
        let names: Vec<_> = store.list("a").await.unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec!["x", "y"]);
        store.delete("a/x").await.unwrap();
        store.delete("a/x").await.unwrap();
        assert_eq!(store.list("a").await.unwrap().len(), 1);
        let c = store.stats();
        assert!(c.put >= 3 && c.get >= 3 && c.list == 2 && c.delete == 2);
    }

    #[tokio::test]
    async fn memory_store_contract() {
        contract(&Store::from_url("memory://", &StoreEnv::default()).unwrap()).await;
    }

    #[tokio::test]
    async fn local_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().join("repo").display());
        contract(&Store::create_url(&url, &StoreEnv::default()).unwrap()).await;
        contract(&Store::create_url(dir.path().join("plain").to_str().unwrap(), &StoreEnv::default()).unwrap()).await;
    }

    #[test]
    fn opening_a_missing_local_directory_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let typo = dir.path().join("reop").join("deeper");
        let e = Store::from_url(typo.to_str().unwrap(), &StoreEnv::default()).unwrap_err();
        assert!(matches!(e, StoreError::MissingDirectory { .. }), "{e}");
        assert!(!dir.path().join("reop").exists(), "a read must not create the path");
    }

    #[test]
    fn one_place_has_one_location_name() {
        let dir = tempfile::tempdir().unwrap();
        let abs = dir.path().join("repo");
        let a = Store::create_url(abs.to_str().unwrap(), &StoreEnv::default()).unwrap();
        let b = Store::from_url(&format!("file://{}/", abs.display()), &StoreEnv::default()).unwrap();
        let c = Store::from_url(&format!("{}/../repo", abs.display()), &StoreEnv::default()).unwrap();
        assert_eq!(a.location(), b.location());
        assert_eq!(a.location(), c.location());
        let other = Store::create_url(dir.path().join("other").to_str().unwrap(), &StoreEnv::default()).unwrap();
        assert_ne!(a.location(), other.location());
        assert_eq!(cloud_location("gs", "b", "p/q", &StoreEnv::default()), "gs://b/p/q");
    }

    #[tokio::test]
    async fn views_share_the_store_and_counters() {
        let store = Store::open_url("memory://", &StoreEnv::default()).unwrap();
        let append = store.appender();
        append.put_if_absent("a/x", Bytes::from_static(b"1")).await.unwrap();
        append.put("a/y", Bytes::from_static(b"2")).await.unwrap();
        let e = append.put_if_absent("a/x", Bytes::from_static(b"3")).await.unwrap_err();
        assert!(matches!(e, StoreError::AlreadyExists { .. }), "{e}");
        let read = append.reader();
        assert_eq!(read.get("a/x").await.unwrap(), Bytes::from_static(b"1"));
        assert_eq!(read.get_range("a/y", 0..1).await.unwrap(), Bytes::from_static(b"2"));
        assert_eq!(read.head("a/z").await.unwrap(), None);
        assert_eq!(read.list("a").await.unwrap().len(), 2);
        assert_eq!(store.reader().location(), store.location());
        assert_eq!(store.stats(), read.stats());
        assert_eq!(store.stats().put, 3);
    }

    #[test]
    fn a_cloud_url_without_its_feature_names_the_feature() {
        for (url, feature, built) in [
            ("s3://bucket/p", "s3", cfg!(feature = "s3")),
            ("gs://bucket/p", "gcs", cfg!(feature = "gcs")),
            ("az://container/p", "azure", cfg!(feature = "azure")),
        ] {
            if built {
                continue;
            }
            let e = Store::open_url(url, &StoreEnv::default()).unwrap_err();
            assert!(
                matches!(&e, StoreError::BackendNotBuilt { feature: f, .. } if *f == feature),
                "{e}"
            );
            assert!(e.to_string().contains(&format!("`{feature}` feature")), "{e}");
        }
    }

    #[test]
    fn invalid_url_messages_do_not_repeat_their_cause() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"").unwrap();
        // A directory cannot be created below a regular file.
        let e = Store::create_url(file.join("repo").to_str().unwrap(), &StoreEnv::default()).unwrap_err();
        let cause = std::error::Error::source(&e)
            .expect("the io error is attached")
            .to_string();
        assert!(!e.to_string().contains(&cause), "{e} repeats {cause}");
    }

    #[test]
    fn bad_urls_are_rejected() {
        assert!(Store::from_url("ftp://x/y", &StoreEnv::default()).is_err());
        assert!(Store::from_url("file://relative", &StoreEnv::default()).is_err());
        assert!(Store::from_url("s3:///nobucket", &StoreEnv::default()).is_err());
    }
}
